"""The result of `tb.evaluate`: the frozen `Report`, its JSON form and the data fingerprint.

`Report` holds the summary, the per-perturbation tables and the curves; it
saves itself (`report.json`, `per_perturbation.csv`, plots) and plots itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from twinbench_jax._src.core import auc as auc_lib


def curve_to_numpy(curve: auc_lib.AucF1Result) -> auc_lib.AucF1Result:
  return auc_lib.AucF1Result(*(np.asarray(x, np.float64) for x in curve))


def json_safe(x: Any) -> Any:
  """Numbers as plain floats/ints (NaN and inf as None), containers recursively."""
  if isinstance(x, Mapping):
    return {str(k): json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  if isinstance(x, np.ndarray):
    return json_safe(x.tolist())
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(x) if np.isfinite(x) else None
  return x


def _from_summary(key: str, doc: str) -> property:
  # a read-only view of one `summary` field, so the field is written in one place
  return property(lambda self: self.summary[key], doc=doc)


@dataclasses.dataclass(frozen=True)
class Report:
  """Result of `tb.evaluate`: summary, per-perturbation table, curves, plots.

  Attributes:
    summary: JSON-ready mapping with the SPEC §8 fields (``auc_f1``,
      ``hit_at_1``, ``mrr``, ``n_queries``, ``n_null``, ``null``,
      ``baselines`` name → AUC-F1) plus ``twinbench_version``,
      ``metric_version``, settings, per-baseline details and notes.
    per_perturbation: one row per query (perturbation): ``rank`` of the truth,
      ``pvalue``, ``pvalue_bh`` (Benjamini–Hochberg), ``called``
      (``pvalue <= 0.05``), ``correct`` (``rank <= k``), ``own_score``,
      ``top1`` (the real perturbation ranked first), ``n_cells_pred``,
      ``n_cells_real``; with `target_genes`, also ``excluded_genes`` (the
      genes left out of that row's distances, joined by ``;``); ``direction``
      (the rank direction, the same in every row).
    curves: name (``"model"`` and each baseline) → `AucF1Result` of numpy
      arrays: the F1(α) step curve and its area (SPEC §4).
    baseline_tables: baseline name → its per-perturbation table (same columns).
    popularity: one row per real candidate: ``n_cells`` and ``top1_count``
      (how many queries rank it first, SPEC §2), for the model.
    genes: the genes the profiles were compared on.
    candidate_curve: with `candidate_level=True`, the model's candidate-level
      F1(α) curve and area (SPEC §4; ``summary["candidate_auc_f1"]``), else None.

  With ``direction="real_to_pred"`` (``summary["settings"]["direction"]``)
  every rank is that of a real perturbation's own prediction among the
  predictions: ``top1`` and ``popularity`` then name predictions.
  """

  summary: Mapping[str, Any]
  per_perturbation: pd.DataFrame
  curves: Mapping[str, auc_lib.AucF1Result]
  baseline_tables: Mapping[str, pd.DataFrame]
  popularity: pd.DataFrame
  genes: tuple[str, ...]
  candidate_curve: Optional[auc_lib.AucF1Result] = None

  def __repr__(self) -> str:
    s = self.summary
    base = ", ".join(f"{k}={v:.3f}" for k, v in s["baselines"].items())
    return (f"Report(auc_f1={s['auc_f1']:.3f}, hit_at_1={s['hit_at_1']:.3f}, "
            f"mrr={s['mrr']:.3f}, n_queries={s['n_queries']}, null={s['null']!r}, "
            f"n_null={s['n_null']}, baselines: {base or 'none'})")

  auc_f1 = _from_summary("auc_f1", "The model's AUC-F1 (SPEC §4), a float.")
  hit_at_1 = _from_summary("hit_at_1", "Fraction of queries whose truth ranks first, a float.")
  mrr = _from_summary("mrr", "Mean reciprocal rank of the truth, a float.")
  n_queries = _from_summary("n_queries", "Number of queries (perturbations), an int.")
  baselines = _from_summary("baselines", "Baseline name → AUC-F1.")

  @property
  def notes(self) -> tuple[str, ...]:
    return tuple(self.summary["notes"])

  def to_dict(self) -> dict:
    """The content of `report.json`: the summary, the per-perturbation rows and the curves."""
    out = dict(self.summary)
    out["per_perturbation"] = self.per_perturbation.to_dict(orient="records")
    out["curves"] = {name: {"alphas": c.alphas, "f1": c.f1, "precision": c.precision,
                            "recall": c.recall} for name, c in self.curves.items()}
    if self.candidate_curve is not None:
      c = self.candidate_curve
      out["candidate_curve"] = {"alphas": c.alphas, "f1": c.f1, "precision": c.precision,
                                "recall": c.recall}
    return json_safe(out)

  def to_json(self, indent: Optional[int] = 2) -> str:
    """`report.json` as a string (NaN written as null)."""
    return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

  def save(self, directory, *, plots: bool = True) -> list[str]:
    """Writes `report.json`, `per_perturbation.csv` and (optionally) the PNG plots.

    `directory` is replaced all-or-nothing: the files are written into a
    hidden staging folder beside it (`.NAME.tmp-*`), which then takes its
    place in one step, with a manifest `.twinbench-manifest.json` listing the
    files written. A reader sees the old set or the new one, never a mix; on
    any error or interrupt `directory` is left as it was.

    `directory` must be new, empty, or a previous twinbench output (its
    manifest lists every file in it; a folder saved before the manifest
    existed counts when it holds only twinbench's file names, as plain
    files, with a twinbench `report.json`). Anything else is refused before
    anything is written, naming the entry: a file or folder twinbench did
    not write, the current or home folder, a filesystem root, an empty path.
    Only files twinbench wrote are ever removed.

    Args:
      directory: the output folder (created with its parents if needed).
      plots: also write the four PNG plots.

    Returns:
      The paths written (inside `directory`; the manifest not included).

    Raises:
      ValueError: an unsafe `directory` (`output_dir.OutputDirError`).
      OSError: the folder could not be written or replaced (e.g. an old
        file there is immutable); nothing was changed.
    """
    from twinbench_jax._src.evaluate import output_dir

    directory = os.fspath(directory)
    names = ["report.json", "per_perturbation.csv"]
    with output_dir.staged(directory) as tmp:
      with open(os.path.join(tmp, names[0]), "w") as f:
        f.write(self.to_json())
        f.write("\n")
      self.per_perturbation.to_csv(os.path.join(tmp, names[1]), index=False)
      if plots:
        from twinbench_jax._src.evaluate import plots as plots_lib

        names += [os.path.basename(p) for p in plots_lib.save_plots(self, tmp)]
    return [os.path.join(directory, n) for n in names]

  # Plots (matplotlib, imported on first use).
  def plot_f1_curves(self, ax=None):
    """F1 versus α for the model and every baseline; returns the axes."""
    from twinbench_jax._src.evaluate import plots as plots_lib

    return plots_lib.plot_f1_curves(self, ax=ax)

  def plot_rank_histogram(self, ax=None):
    """Histogram of the truth's rank over queries; returns the axes."""
    from twinbench_jax._src.evaluate import plots as plots_lib

    return plots_lib.plot_rank_histogram(self, ax=ax)

  def plot_pvalue_histogram(self, ax=None):
    """Histogram of the per-query p-values; returns the axes."""
    from twinbench_jax._src.evaluate import plots as plots_lib

    return plots_lib.plot_pvalue_histogram(self, ax=ax)

  def plot_popularity(self, ax=None):
    """How often each real perturbation is ranked first; returns the axes."""
    from twinbench_jax._src.evaluate import plots as plots_lib

    return plots_lib.plot_popularity(self, ax=ax)

  def summary_table(self) -> pd.DataFrame:
    """One row per scored predictor (model, then baselines) with the headline numbers."""
    rows = [{"name": "model", **{k: self.summary[k] for k in _HEADLINE}}]
    for name, d in self.summary["baseline_details"].items():
      rows.append({"name": f"{name} baseline", **{k: d[k] for k in _HEADLINE}})
    return pd.DataFrame(rows).set_index("name")


def data_fingerprint(genes, candidates, n_cells) -> dict:
  """SHA-256 digests of what the scores were computed on, so saved reports can be compared.

  ``genes``: the gene list in order; ``real``: each real candidate with its
  cell count. Two reports with equal digests ranked against the same profiles.
  """
  genes_text = "\n".join(str(g) for g in genes)
  real_text = "\n".join(f"{c}\t{int(n)}" for c, n in zip(candidates, n_cells))
  return {"genes": hashlib.sha256(genes_text.encode()).hexdigest(),
          "real": hashlib.sha256(real_text.encode()).hexdigest()}


_HEADLINE = ("auc_f1", "hit_at_1", "mrr", "mean_rank", "fraction_called", "n_queries")

"""End-to-end evaluation of predicted against real AnnData: `tb.evaluate` (SPEC §4, §6–8).

Orchestration only: profiles come from `profiles`, baselines from
`baselines`, every number from the array core. The steps:

1. pseudobulk profiles of both files (streamed; optional per-cell
   normalisation), aligned on shared genes and perturbation labels;
2. optional deltas to a reference and a gene subset;
3. similarities, truth ranks and own scores of the model's predictions;
4. the null step (`_query_pvalues`): the exact label-permutation null, a
   model-in-the-loop null, or precomputed null predictions;
5. the same for each calibration baseline (`_baseline_null`: the label null,
   or p = 1 by construction for the input-agnostic ones under a sampled null);
6. a frozen `Report`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import types
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from twinbench_jax._src.core import auc as auc_lib
from twinbench_jax._src.data import baselines as baselines_lib
from twinbench_jax._src.core import native
from twinbench_jax._src.data import profiles as profiles_lib
from twinbench_jax._src.core import pvalues as pvalues_lib
from twinbench_jax._src.core import ranking
from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.core import validation
from twinbench_jax._src import version

DELTAS = ("none", "control", "pred_control", "mean")
# Rank directions: each prediction among the real profiles (default), or each
# real profile's own prediction among the predictions (PerturBench's direction).
DIRECTIONS = ("pred_to_real", "real_to_pred")
# p-value threshold of the `called` column and of `fraction_called`.
ALPHA = 0.05


def _float():
  """JAX's default float: float32, or float64 under `jax_enable_x64` (profiles are float64)."""
  return jnp.result_type(float)


# ----------------------------------------------------------------------------- report


def _curve_to_numpy(curve: auc_lib.AucF1Result) -> auc_lib.AucF1Result:
  return auc_lib.AucF1Result(*(np.asarray(x, np.float64) for x in curve))


def _json_safe(x: Any) -> Any:
  """Numbers as plain floats/ints (NaN and inf as None), containers recursively."""
  if isinstance(x, Mapping):
    return {str(k): _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, np.ndarray):
    return _json_safe(x.tolist())
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(x) if np.isfinite(x) else None
  return x


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

  @property
  def auc_f1(self) -> float:
    return self.summary["auc_f1"]

  @property
  def hit_at_1(self) -> float:
    return self.summary["hit_at_1"]

  @property
  def mrr(self) -> float:
    return self.summary["mrr"]

  @property
  def n_queries(self) -> int:
    return self.summary["n_queries"]

  @property
  def baselines(self) -> Mapping[str, float]:
    """Baseline name → AUC-F1."""
    return self.summary["baselines"]

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
    return _json_safe(out)

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


def _data_fingerprint(genes, candidates, n_cells) -> dict:
  """SHA-256 digests of what the scores were computed on, so saved reports can be compared.

  ``genes``: the gene list in order; ``real``: each real candidate with its
  cell count. Two reports with equal digests ranked against the same profiles.
  """
  genes_text = "\n".join(str(g) for g in genes)
  real_text = "\n".join(f"{c}\t{int(n)}" for c, n in zip(candidates, n_cells))
  return {"genes": hashlib.sha256(genes_text.encode()).hexdigest(),
          "real": hashlib.sha256(real_text.encode()).hexdigest()}


_HEADLINE = ("auc_f1", "hit_at_1", "mrr", "mean_rank", "fraction_called", "n_queries")


# ----------------------------------------------------------------------------- scoring


def _score_kernel(x, y, truth, rows, exclude, l1, *, metric, k, ties,
                  direction="pred_to_real"):
  """Every number of one predictor in a single compiled kernel.

  Similarities, truth ranks, own scores, label-null p-values, popularity,
  the AUC-F1 curve and Benjamini–Hochberg p-values. One kernel compiles once
  (about a second on a CPU) where separate ones would each pay a compile.

  Args:
    x: `[R, G]` predicted profiles.
    y: `[C, G]` real candidate profiles.
    truth: `[Q]` index of each query's real candidate (labels are unique on
      both sides, so each query has exactly one relevant candidate).
    rows: `[Q]` row of `x` each query predicts with. A baseline that predicts
      one profile for every query points every query at row 0, so its queries
      get bitwise identical scores (a batched matmul may round identical rows
      differently) and the label null gives p = 1, AUC-F1 = 0 exactly.
    exclude: None, or `[Q, T]` int32 indices of each query's target genes
      (padded with -1), left out of that query's similarities (SPEC §7). Query
      `q`'s row of `s` is compared on its kept genes; so is every own score
      against its truth in the label null (`cross[:, j]` uses query `j`'s kept
      genes), so a predictor that says the same for every query still gets
      p = 1.
    l1: None, or (metric "l1" only) the `[Q, C]` all-gene L1 distances of
      `x[rows]` to `y`, computed outside the kernel by the compiled CPU loop
      (`_host_l1`); with at most one excluded gene per query the kernel then
      never reads all of `[Q, C, G]` itself.
    direction: ``"pred_to_real"`` ranks each query's truth among the real
      candidates (rows of `s`); ``"real_to_pred"`` ranks each query's own
      prediction among the `Q` predictions against its truth (columns of
      `cross`, so query `j`'s excluded genes apply), and `top1`/`popularity`
      then index predictions. The label null is the same in both directions.

  Returns:
    The numbers above, then `trusted`: False when `l1` less the excluded genes
    could not stand in for the masked sums (the results are then not to be
    used: run the kernel again without `l1`).
  """
  # Whether the distances `l1` less each excluded gene stand in for the masked sums
  # (`_l1_less_one_gene`); when not, the caller runs the kernel again without `l1`.
  trusted = jnp.asarray(True)
  if exclude is None:
    s = -l1 if l1 is not None else similarity_lib._similarity(x, y, metric=metric)[rows]
    cross = s[:, truth]  # [i, j]: own score of prediction i against the truth of query j
  elif metric == "l1" and exclude.shape[1] == 1 and l1 is not None:
    s, cross, trusted = _l1_less_one_gene(x, y, truth, rows, exclude[:, 0], l1)
  elif metric == "l1" and exclude.shape[1] == 1:
    s, cross = _l1_one_gene_excluded(x, y, truth, rows, exclude[:, 0])
  else:
    s, cross = _excluded_scores(x, y, truth, rows, exclude, metric)
  if direction == "real_to_pred":
    s = cross.T  # [j, i]: the truth of query j against prediction i
    rel = jnp.arange(s.shape[1])[None, :] == jnp.arange(s.shape[0])[:, None]
  else:
    rel = jnp.arange(s.shape[1])[None, :] == truth[:, None]
  ranks = ranking._truth_ranks(s, rel, ties=ties)
  p_label = pvalues_lib._label_permutation_pvalues(cross)
  top1 = jnp.argmax(validation.nan_to_neg_inf(s), axis=1)
  popularity = ranking.top1_counts(s)
  curve, bh = _finish(p_label, ranks, k)
  return (ranks, jnp.diagonal(cross), p_label, top1, popularity, ranking.gini(popularity), curve,
          bh, trusted)


def _excluded_scores(x, y, truth, rows, exclude, metric):
  """`(s, cross)` of `_score_kernel` with per-query excluded genes, two masked passes."""
  s = similarity_lib._similarity_excluded(x[rows], y, exclude, None, metric=metric)
  # Truth j against every prediction on query j's kept genes (the metrics are symmetric).
  cross = similarity_lib._similarity_excluded(y[truth], x, exclude, None,
                                              metric=metric)[:, rows].T
  return s, cross


def _l1_one_gene_excluded(x, y, truth, rows, gene):
  """`(s, cross)` for L1 with one excluded gene per query (`gene`, -1 = none): one L1 pass.

  Both matrices are the all-gene distances `d = |x_r - y_c|_1` less the
  excluded gene's term (`_l1_less_one_gene`), where the masked passes of
  `_excluded_scores` read all of `[Q, C, G]` twice. The exclusion of
  cell-eval's discrimination score (each perturbation's own gene) has this
  form. The masked passes run instead when the subtraction cannot be trusted.
  """
  d = similarity_lib.l1_distances(x, y)[rows]  # [Q, C]
  s, cross, trusted = _l1_less_one_gene(x, y, truth, rows, gene, d)
  return jax.lax.cond(trusted, lambda: (s, cross),
                      lambda: _excluded_scores(x, y, truth, rows, gene[:, None], "l1"))


def _l1_less_one_gene(x, y, truth, rows, gene, d):
  """`(s, cross, trusted)`: the L1 scores less each query's excluded gene, from `d`.

  `d` (`[Q, C]`) holds the all-gene distances of `x[rows]` to `y`. `trusted`
  is False when the subtraction cannot stand in for the masked sum: a
  non-finite value at an excluded gene (`d` minus its term would be NaN), or
  a term more than `_MAX_TERM_RATIO` times the distance left after it (the
  rounding of `d` would then outweigh the rounding of a masked sum). A
  difference of exactly 0 is exact either way and is always trusted.
  """
  q = rows.shape[0]
  ok = (gene >= 0) & (gene < x.shape[1])
  g = jnp.where(ok, gene, 0)
  x_q = x[rows]  # [Q, G]: the prediction each query is scored with
  own = (d, x_q[jnp.arange(q), g][:, None], y[:, g].T, ok[:, None])  # query q's gene
  cross = (d[:, truth], x_q[:, g], y[truth, g][None, :], ok[None, :])  # [i, j]: query j's gene

  def trusted(d, x_at, y_at, valid):
    term = jnp.abs(x_at - y_at)
    rest = d - term
    return jnp.all(~valid | (jnp.isfinite(term) & ~((rest > 0) & (term > _MAX_TERM_RATIO * rest))))

  return (-similarity_lib.l1_minus_gene(*own), -similarity_lib.l1_minus_gene(*cross),
          trusted(*own) & trusted(*cross))


# Largest excluded term, relative to the distance over the other genes, for which
# the all-gene L1 less that term stands in for the masked sum (4 bits of rounding).
_MAX_TERM_RATIO = 16.0


_STATIC = ("metric", "k", "ties", "direction")
_score_jit = jax.jit(_score_kernel, static_argnames=_STATIC)
# Small problems: compilation is nearly all of the time, and XLA's backend
# optimisation (LLVM) is most of the compilation; skipping it halves the first
# call at a runtime cost that is negligible at this size.
_score_jit_small = jax.jit(_score_kernel, static_argnames=_STATIC,
                           compiler_options={"xla_backend_optimization_level": 0})
# Entries of `x` and `y` (rows x genes), and of the `[Q, C]` score matrix, up to which
# the small-problem kernel is used.
_SMALL = 1 << 21
_SMALL_SCORES = 1 << 18


def _run_score_kernel(x, y, truth, rows, exclude, l1=None, **kwargs):
  small = ((x.shape[0] + y.shape[0]) * x.shape[1] <= _SMALL
           and rows.shape[0] * y.shape[0] <= _SMALL_SCORES)
  return (_score_jit_small if small else _score_jit)(x, y, truth, rows, exclude, l1, **kwargs)


def _uses_host_l1(metric: str, exclude) -> bool:
  """Whether `_host_l1` computes the distances for this metric and exclusion."""
  return (metric == "l1" and (exclude is None or np.shape(exclude)[1] == 1)
          and jax.default_backend() == "cpu" and native.available())


def _host_l1(x: np.ndarray, y: np.ndarray, rows: np.ndarray, metric: str, exclude
             ) -> Optional[np.ndarray]:
  """`[Q, C]` L1 distances of `x[rows]` to `y` from the compiled CPU loop, or None.

  Used where it is faster than XLA's reduction (about 5x on 2 cores): the L1
  metric with at most one excluded gene per query, on the CPU backend, with
  the loops available (`native.available()`). Each distinct row of `x` is
  computed once, so a baseline that predicts one profile for every query
  costs one row and gets bitwise identical rows.
  """
  if not _uses_host_l1(metric, exclude):
    return None
  dtype = _float()
  used, inverse = np.unique(np.asarray(rows), return_inverse=True)
  d = native.l1_distances(np.asarray(np.asarray(x)[used], dtype), np.asarray(y, dtype))
  return d if used.size == rows.shape[0] and np.array_equal(used, rows) else d[inverse]


def _finish(p, ranks, k):
  correct = ranks <= k
  return auc_lib._auc_f1(p, correct, jnp.ones_like(correct)), pvalues_lib._benjamini_hochberg(p)


# The AUC-F1 curve and BH p-values for p-values from another null.
_finish_kernel = jax.jit(_finish, static_argnames=("k",))


@dataclasses.dataclass(frozen=True)
class _Scored:
  """Numpy results of one predictor (the model or a baseline)."""

  labels: np.ndarray
  ranks: np.ndarray
  own: np.ndarray
  pvalues: np.ndarray
  pvalues_bh: np.ndarray
  top1: np.ndarray
  popularity: np.ndarray
  gini: float
  curve: auc_lib.AucF1Result

  def with_pvalues(self, pvalues: np.ndarray, k: int) -> "_Scored":
    """The same ranks with p-values from another null."""
    curve, bh = _finish_kernel(jnp.asarray(pvalues, _float()),
                               jnp.asarray(self.ranks, _float()), k)
    return dataclasses.replace(self, pvalues=np.asarray(pvalues, np.float64),
                               pvalues_bh=np.asarray(bh, np.float64),
                               curve=_curve_to_numpy(curve))

  def table(self, candidates, k, n_cells_pred, n_cells_real) -> pd.DataFrame:
    return pd.DataFrame({
        "perturbation": self.labels,
        "rank": self.ranks,
        "pvalue": self.pvalues,
        "pvalue_bh": self.pvalues_bh,
        "called": self.pvalues <= ALPHA,
        "correct": self.ranks <= k,
        "own_score": self.own,
        "top1": np.asarray(candidates)[self.top1],
        "n_cells_pred": n_cells_pred,
        "n_cells_real": n_cells_real,
    })

  def stats(self, k, n_null) -> dict:
    return {
        "auc_f1": float(self.curve.auc),
        "hit_at_1": float(np.mean(self.ranks <= 1)),
        f"hit_at_{k}": float(np.mean(self.ranks <= k)),
        "mrr": float(np.mean(1.0 / self.ranks)),
        "mean_rank": float(np.mean(self.ranks)),
        "fraction_called": float(np.mean(self.pvalues <= ALPHA)),
        "fraction_called_bh": float(np.mean(self.pvalues_bh <= ALPHA)),
        "n_queries": int(self.ranks.shape[0]),
        "n_null": int(n_null),
    }


def _score(labels, x, y, truth, rows, *, metric, k, ties, exclude=None,
           direction="pred_to_real") -> _Scored:
  """Scores predictions `x[rows]` against references `y` with the label null.

  `exclude`: None or `[Q, T]` target gene indices per query; `direction`: the
  rank direction (see `_score_kernel`).
  """
  l1 = _host_l1(x, y, np.asarray(rows, np.int64), metric, exclude)
  args = (jnp.asarray(x, _float()), jnp.asarray(y, _float()), jnp.asarray(truth, jnp.int32),
          jnp.asarray(rows, jnp.int32), None if exclude is None else jnp.asarray(exclude, jnp.int32))
  # The default direction is not passed, so the default compiles exactly as before.
  opts = {} if direction == "pred_to_real" else {"direction": direction}
  out = _run_score_kernel(*args, None if l1 is None else jnp.asarray(l1), metric=metric, k=k,
                          ties=ties, **opts)
  if not bool(out[-1]):  # the subtraction of an excluded gene was not trusted: masked passes
    out = _run_score_kernel(*args, None, metric=metric, k=k, ties=ties, **opts)
  ranks, own, p, top1, pop, g, curve, bh, _ = out
  return _Scored(np.asarray(labels), np.asarray(ranks, np.float64), np.asarray(own, np.float64),
                 np.asarray(p, np.float64), np.asarray(bh, np.float64), np.asarray(top1),
                 np.asarray(pop, np.float64), float(g), _curve_to_numpy(curve))


# ----------------------------------------------------------------------------- null step


def _is_item(x) -> bool:
  """One precomputed null replicate file or AnnData (not an array)."""
  return isinstance(x, (str, os.PathLike)) or hasattr(x, "obs")


def _check_null(null, n_null, predict_fn) -> str:
  """The kind of null: ``"label"``, ``"model"`` or ``"precomputed"``."""
  if n_null is not None and (isinstance(n_null, bool) or not isinstance(n_null, (int, np.integer))
                             or n_null < 1):
    raise ValueError(f"`n_null` must be a positive number of null replicates, got {n_null!r}")
  if isinstance(null, str) and null in ("label", "model"):
    if null == "model" and predict_fn is None:
      raise ValueError("null='model' needs `predict_fn` (and `inputs`): the model is run again "
                       "on randomised inputs")
    return null
  if isinstance(null, str) and not os.path.exists(null):
    raise ValueError(f"unknown `null` {null!r} (and no such file); use 'label', 'model', null "
                     "predictions (a [B, Q, G] array), or AnnData/.h5ad paths")
  if isinstance(null, (list, tuple)) and len(null) == 0:
    raise ValueError("`null` is an empty list: give at least one null replicate")
  if isinstance(null, Mapping) and len(null) == 0:
    raise ValueError("`null` is an empty mapping: give each queried perturbation label its "
                     "[B, G] null predictions")
  return "precomputed"


class _LazyNullProfiles:
  """`[B, Q, G]` precomputed null predictions, made into evaluated profiles on demand.

  The null engine (`tb.precomputed_null`) reads replicates in chunks through
  `shape` and slicing; each slice runs the same pipeline as `adata_pred`
  (pseudobulk per query, normalisation, genes, delta), so only the replicates
  of one file are held at a time.
  """

  def __init__(self, null, ctx: "_Context", n_null: Optional[int]):
    self._ctx = ctx
    nq, ng = len(ctx.queries), len(ctx.genes)
    self._array = self._by_label = None
    self._cache: tuple = (None, None)
    if isinstance(null, Mapping):
      self._by_label = _null_by_label(null, ctx.queries, len(ctx.pred_var_names))
      available = int(self._by_label[0].shape[0])
    elif not _is_item(null) and not (isinstance(null, (list, tuple)) and all(map(_is_item, null))):
      arr = null if hasattr(null, "shape") and hasattr(null, "__getitem__") else np.asarray(null)
      n_pred_genes = len(ctx.pred_var_names)
      if len(arr.shape) != 3 or tuple(arr.shape[1:]) != (nq, n_pred_genes):
        raise ValueError(
            f"null predictions must have shape (B, Q, G) = (B, {nq}, {n_pred_genes}): rows in "
            "query order, the order in which the perturbations first appear in adata_pred (as "
            f"in report.per_perturbation: {profiles_lib._show(ctx.queries, 5)}), and columns "
            f"in the order of adata_pred.var_names; got {tuple(arr.shape)}. A mapping "
            "perturbation label -> [B, G] array needs no order.")
      self._array, available = arr, int(arr.shape[0])
    else:
      self._plan = []  # (item, name, replicate labels or None), one per file
      for i, item in enumerate([null] if _is_item(null) else list(null)):
        self._plan.append(self._inspect(item, i))
      self._offsets = np.cumsum([0] + [len(reps) for _, _, reps in self._plan])
      available = int(self._offsets[-1])
    if n_null is not None and n_null > available:
      raise ValueError(f"`n_null`={n_null} but the precomputed null holds only {available} "
                       "replicate(s)")
    self.shape = (available if n_null is None else int(n_null), nq, ng)

  def _inspect(self, item, i):
    """Checks one replicate file's genes and labels (metadata only)."""
    ctx = self._ctx
    path = isinstance(item, (str, os.PathLike))
    name = os.fspath(item) if path else f"null[{i}]"
    src = profiles_lib.open_source(item, name)
    try:
      profiles_lib.check_unique_genes(src)
      missing = [g for g in ctx.genes if g not in set(src.var_names)]
      if missing:
        raise ValueError(f"null replicate `{name}` lacks {len(missing)} of the evaluated genes: "
                         f"{profiles_lib._show(missing)}")
      labels = src.obs_labels(ctx.pred_key)
      reps = (profiles_lib.factorize(src.obs_labels(ctx.null_replicate_key))[0]
              if ctx.null_replicate_key in src.obs_keys else np.array(["0"]))
      absent = sorted(set(ctx.queries) - set(labels))
      if absent:
        raise ValueError(f"null replicate `{name}` has no prediction for {len(absent)} queried "
                         f"perturbation(s): {profiles_lib._show(absent)}")
    finally:
      if path:
        src.close()
    return item, name, reps

  def _file_profiles(self, i: int) -> np.ndarray:
    """`[R, Q, G]` evaluated profiles of every replicate in file `i` (cached)."""
    if self._cache[0] == i:
      return self._cache[1]
    ctx = self._ctx
    item, name, reps = self._plan[i]
    path = isinstance(item, (str, os.PathLike))
    src = profiles_lib.open_source(item, name)
    try:
      lab_idx = pd.Index(ctx.queries).get_indexer(src.obs_labels(ctx.pred_key))
      rep = (pd.Index(reps).get_indexer(src.obs_labels(ctx.null_replicate_key))
             if len(reps) > 1 or ctx.null_replicate_key in src.obs_keys
             else np.zeros(len(lab_idx), np.int64))
      nq = len(ctx.queries)
      codes = np.where(lab_idx >= 0, rep * nq + lab_idx, -1)
      sums, counts = profiles_lib.group_sums(
          src, codes, len(reps) * nq, layer=ctx.pred_layer, normalize=ctx.pred_normalize,
          chunk_size=ctx.chunk_size)
      gidx = src.var_names.get_indexer(ctx.genes)
    finally:
      if path:
        src.close()
    counts = counts.reshape(len(reps), nq)
    empty = np.argwhere(counts == 0)
    if empty.size:
      r, q = empty[0]
      what = f"replicate {reps[r]!r} of " if len(reps) > 1 else ""
      raise ValueError(f"null {what}`{name}` has no prediction for {ctx.queries[q]!r}")
    out = sums[:, gidx].reshape(len(reps), nq, -1) / counts[:, :, None]
    out = ctx.fill_excluded(ctx.transform_pred(out)).astype(_float())
    self._cache = (i, out)
    return out

  def _one(self, b: int) -> np.ndarray:
    if self._array is not None or self._by_label is not None:
      rows = (self._array[b] if self._array is not None
              else np.stack([np.asarray(a[b]) for a in self._by_label]))
      x = np.asarray(rows, np.float64)[:, self._ctx.pred_gene_idx]
      return self._ctx.fill_excluded(self._ctx.transform_pred(x)).astype(_float())
    i = int(np.searchsorted(self._offsets, b, side="right") - 1)
    return self._file_profiles(i)[b - self._offsets[i]]

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    if isinstance(index, slice):
      return np.stack([self._one(b) for b in range(*index.indices(self.shape[0]))])
    return self._one(int(index))


def _null_by_label(null: Mapping, queries: Sequence[str], n_genes: int) -> list:
  """The `[B, G]` null predictions of each query, in query order, from a label mapping.

  Labels that are not queries (e.g. the control) are ignored; `G` counts the
  genes of `adata_pred`, in its `var_names` order.
  """
  by_label = {str(label): value for label, value in null.items()}
  missing = [q for q in queries if q not in by_label]
  if missing:
    raise ValueError(f"the `null` mapping has no null predictions for {len(missing)} queried "
                     f"perturbation(s): {profiles_lib._show(missing)}; its keys must be the "
                     f"labels of adata_pred (e.g. {profiles_lib._show(queries, 3)})")
  out = []
  for q in queries:
    value = by_label[q]
    arr = value if hasattr(value, "shape") and hasattr(value, "__getitem__") else np.asarray(value)
    if len(arr.shape) != 2 or arr.shape[1] != n_genes:
      raise ValueError(f"`null`[{q!r}] must have shape (B, G) = (B, {n_genes}): one row per "
                       "null replicate, columns in the order of adata_pred.var_names; got "
                       f"{tuple(arr.shape)}")
    if out and arr.shape[0] != out[0].shape[0]:
      raise ValueError(f"`null`[{q!r}] holds {arr.shape[0]} null replicate(s) but "
                       f"`null`[{queries[0]!r}] holds {out[0].shape[0]}; every perturbation "
                       "needs the same number B")
    if arr.shape[0] == 0:
      raise ValueError(f"`null`[{q!r}] holds 0 null replicates; give at least one")
    out.append(arr)
  return out


def _transformed_call(func, gene_idx, reference, keep, metric, args, kwargs, inputs):
  """`func(*args, inputs, **kwargs)` on the evaluated genes, minus the delta reference.

  With `keep` (`[Q, G]`, target genes excluded) the excluded genes are filled
  as in `_fill_excluded`.
  """
  out = jnp.asarray(func(*args, inputs, **kwargs))[:, gene_idx]
  out = out if reference is None else out - reference
  return out if keep is None else _fill_excluded(out, keep, metric, jnp)


def _model_pvalues(ctx: "_Context", predictions, *, predict_fn, inputs, n_null, key, randomize,
                   progress, notes, candidate_level=False) -> tuple:
  """The model-in-the-loop null through the null engine (`tb.model_null`, SPEC §3).

  Returns `(pvalues [Q], n_null, candidate p-values [Q, C] or None)`.
  """
  from twinbench_jax._src.nulls import engine as nulls

  gene_idx = jnp.asarray(ctx.pred_gene_idx, jnp.int32)
  ref = None if ctx.pred_reference is None else jnp.asarray(ctx.pred_reference, _float())
  keep = None if ctx.null_keep is None else jnp.asarray(ctx.null_keep)
  # A partial keeps the model's own partial arguments (its parameters) traced, not constants.
  if isinstance(predict_fn, functools.partial):
    predict = functools.partial(_transformed_call, predict_fn.func, gene_idx, ref, keep,
                                ctx.metric, predict_fn.args, predict_fn.keywords or {})
  else:
    predict = functools.partial(_transformed_call, predict_fn, gene_idx, ref, keep, ctx.metric,
                                (), {})
  predictions = ctx.fill_excluded(predictions)
  res = nulls.model_null(predict, inputs, ctx.null_references(), ctx.relevance, key=key,
                         n_null=n_null, randomize=randomize, metric=ctx.metric,
                         candidate_level=candidate_level, progress=progress)
  observed = np.asarray(predict(inputs))
  if observed.shape != predictions.shape or not np.allclose(observed, predictions, rtol=1e-4,
                                                            atol=1e-5):
    notes.append("predict_fn(inputs) does not reproduce the predictions of adata_pred; the "
                 "model null tests predict_fn(inputs)")
  return np.asarray(res.pvalues, np.float64), res.n_null, res.candidate_pvalues


def _query_pvalues(kind, null, ctx, predictions, model, *, n_null, predict_fn, inputs, key,
                   randomize, progress, notes, candidate_level=False) -> tuple:
  """The null step: `(p-values [Q], n_null, candidate p-values [Q, C] or None)` (SPEC §3).

  ``"label"`` keeps the exact label-permutation p-values of the scoring
  kernel (`n_null = Q - 1`: the predictions for the other perturbations);
  ``"model"`` reruns the model on randomised inputs and ``"precomputed"``
  scores given null predictions, both through the null engine (`tb.model_null`,
  `tb.precomputed_null`), which streams replicates in chunks. With
  `candidate_level`, the sampled nulls also count the `[Q, C]` entry-wise
  exceedances; the label null's are made by `_candidate_pvalues`.
  """
  if kind == "label":
    return model.pvalues, len(model.labels) - 1, None
  if kind == "model":
    return _model_pvalues(ctx, predictions, predict_fn=predict_fn, inputs=inputs,
                          n_null=1000 if n_null is None else int(n_null), key=key,
                          randomize=randomize, progress=progress, notes=notes,
                          candidate_level=candidate_level)
  from twinbench_jax._src.nulls import engine as nulls

  lazy = _LazyNullProfiles(null, ctx, n_null)
  res = nulls.precomputed_null(np.asarray(ctx.fill_excluded(predictions), _float()), lazy,
                               ctx.null_references(), ctx.relevance, metric=ctx.metric,
                               candidate_level=candidate_level, progress=progress)
  return np.asarray(res.pvalues, np.float64), res.n_null, res.candidate_pvalues


# ----------------------------------------------------------------------------- report views


def _check_direction(direction: Any) -> str:
  if direction not in DIRECTIONS:
    raise ValueError(f"unknown `direction` {direction!r}; choose one of {DIRECTIONS}")
  return direction


def _check_candidate_level(candidate_level: Any, null_kind: str, target_spec: Any) -> bool:
  """`candidate_level` as a bool; refused for the label null with `target_genes`."""
  if not isinstance(candidate_level, (bool, np.bool_)):
    raise ValueError(f"`candidate_level` must be True or False, got {candidate_level!r}")
  if candidate_level and null_kind == "label" and target_spec is not None:
    raise ValueError(
        "candidate_level=True with the label null cannot use `target_genes`: the label null's "
        "entry p-value compares the similarities of every prediction to one real profile, and "
        "with per-perturbation excluded genes those are computed on different genes; use a "
        "model or precomputed null (`null=`), or leave out `target_genes`")
  return bool(candidate_level)


def _candidate_pvalues(kind: str, sampled, ctx: "_Context", predictions) -> jax.Array:
  """`[Q, C]` entry-wise p-values `p[q, c]` (SPEC §3) for the candidate-level AUC-F1.

  The sampled nulls counted them while streaming (`sampled`); for the label
  null they are those of `tb.label_null(..., candidate_level=True)`: the share
  of predictions at least as similar to real profile `c` as prediction `q` is.
  """
  if kind != "label":
    return jnp.asarray(sampled)
  from twinbench_jax._src.nulls import engine as nulls

  res = nulls.label_null(jnp.asarray(predictions, _float()), ctx.references, ctx.relevance,
                         metric=ctx.metric, candidate_level=True)
  return res.candidate_pvalues


def _candidate_view(pvalues, ctx: "_Context", direction: str) -> auc_lib.AucF1Result:
  """The candidate-level AUC-F1 curve (SPEC §4) of `[Q, C]` p-values, in the rank direction.

  ``"pred_to_real"``: query `q` retrieves the real profiles `c` with
  `p[q, c] <= α`. ``"real_to_pred"``: the real profile of query `j` retrieves
  the predictions `i` with `p[i, truth_j] <= α`. An entry's p-value belongs to
  the pair, so the two directions group the same pairs by a different side.
  """
  p, rel = jnp.asarray(pvalues), ctx.relevance
  if direction == "real_to_pred":
    p = p[:, ctx.truth].T
    rel = jnp.arange(p.shape[1])[None, :] == jnp.arange(p.shape[0])[:, None]
  return _curve_to_numpy(auc_lib.candidate_auc_f1(p, rel))


def _baseline_null(scored: _Scored, name: str, null_kind: str, n_null: int, k: int) -> tuple:
  """`(scored, null kind, n_null)` of a baseline under the model's null kind (SPEC §6).

  The mean and control baselines predict one profile whatever their input, so
  rerunning them on randomised inputs gives the same profile: every replicate
  ties, and their p-values under a model or precomputed null are 1 by
  construction (SPEC §3), which is set directly. The split-half baseline has
  no model to rerun and no null predictions: it keeps the label null.
  """
  if null_kind == "label" or name == "split_half":
    return scored, "label", len(scored.labels) - 1
  return scored.with_pvalues(np.ones(len(scored.labels)), k), null_kind, n_null


def _baseline_null_note(null_kind: str, names) -> list[str]:
  if null_kind == "label" or not names:
    return []
  notes = []
  if set(names) & {"mean", "control"}:
    notes.append(f"the mean and control baselines ignore their input: under the {null_kind} "
                 "null every replicate ties with them, so their p-values are 1 and their "
                 "AUC-F1 is 0 by construction")
  if "split_half" in names:
    notes.append("the split-half baseline is scored with the label null: it has no model to "
                 f"rerun on randomised inputs and no null predictions for a {null_kind} null")
  return notes


# ----------------------------------------------------------------------------- evaluate


@dataclasses.dataclass
class _Context:
  """Resolved settings and aligned data shared by the steps of one evaluation."""

  queries: list
  candidates: list
  genes: np.ndarray
  pred_var_names: pd.Index
  pred_gene_idx: np.ndarray
  pred_key: str
  pred_layer: Optional[str]
  pred_normalize: Optional[str]
  pred_reference: Optional[np.ndarray]  # subtracted from prediction profiles (delta)
  real_reference: Optional[np.ndarray]  # subtracted from real-side profiles (delta)
  references: Any  # [C, G] jax array of the real candidate profiles (after delta)
  truth: Any  # [Q] jax int32 index of each query's candidate
  relevance: Any  # [Q, C] jax bool
  metric: str
  chunk_size: Optional[int]
  null_replicate_key: str
  targets: Optional["_Targets"] = None  # each query's target genes (target_genes)

  @functools.cached_property
  def null_keep(self) -> Optional[np.ndarray]:
    """`[Q, G]` bool: the genes each query keeps; built when a sampled null first needs it."""
    return None if self.targets is None else self.targets.keep(self.queries, len(self.genes))

  def transform_pred(self, x: np.ndarray) -> np.ndarray:
    return x if self.pred_reference is None else x - self.pred_reference

  def transform_real(self, x: np.ndarray) -> np.ndarray:
    return x if self.real_reference is None else x - self.real_reference

  def fill_excluded(self, x: np.ndarray) -> np.ndarray:
    """`[..., Q, G]` predictions for the sampled nulls, target genes filled (`_fill_excluded`)."""
    return x if self.null_keep is None else _fill_excluded(x, self.null_keep, self.metric, np)

  def null_references(self):
    """The references for the sampled nulls: each query's truth filled like its prediction."""
    if self.null_keep is None:
      return self.references
    y = np.array(self.references)
    truth = np.asarray(self.truth)
    y[truth] = _fill_excluded(y[truth], self.null_keep, self.metric, np)
    return jnp.asarray(y)


def _fill_excluded(x, keep, metric: str, xp):
  """`x` `[..., Q, G]` with the genes query `q` excludes (`~keep[q]`) set to a neutral value.

  The sampled nulls (`tb.model_null`, `tb.precomputed_null`) score a replicate
  by its own score against its query's truth only. Giving the excluded genes
  the same neutral value in a prediction and in its truth makes that own score
  over all genes equal the own score over the kept genes (SPEC §7), so the null
  engine needs no exclusion of its own: 0 for the distances and cosine (the
  terms vanish), and for Pearson each vector's mean over its kept genes (the
  mean is unchanged and the centred values there are 0). `xp` is `np` or `jnp`.
  """
  if metric == "pearson":
    n_kept = xp.maximum(keep.sum(axis=-1, keepdims=True), 1)
    fill = xp.where(keep, x, 0.0).sum(axis=-1, keepdims=True) / n_kept
  else:
    fill = 0.0
  return xp.where(keep, x, fill)


def _named(source: profiles_lib.Source) -> str:
  """How messages name a whole file or object: 'pred.h5ad' or `adata_pred`."""
  return repr(source.name) if source.is_file else f"`{source.name}`"


def _normalize_notes(source: profiles_lib.Source, layer: Optional[str], norm: Optional[str],
                     option: str, *, pred: bool) -> list[str]:
  """A note when `normalize=` is applied to values that are not counts (SPEC §7).

  Non-integer values are not raw counts; values below log1p(10^6) besides look
  log-normalised already, and normalising them again compresses every profile
  towards the same shape (the AUC-F1 of a good model can fall from 0.5 to 0.1).
  A note, not an error: model predictions of expected counts are legitimately
  non-integer.
  """
  if norm is None:
    return []
  found = profiles_lib.count_like(source, layer)
  if found is None:
    return []
  largest, n = found
  where = source.where("X" if layer is None else f"layers[{layer!r}]")
  fix = ("pred_normalize='none' (CLI: --pred-normalize none)" if pred else
         "normalize=None (CLI: --normalize none), and pred_normalize= for the predictions")
  looks = (", the range of log-normalised data" if largest <= profiles_lib._LOG_MAX else "")
  return [f"{option}={norm!r} expects raw counts, but {where} holds non-integer values "
          f"(largest {largest:.4g} in its first {n} cells{looks}); if it is already "
          f"normalised, pass {fix}"]


def _check_sizes(queries: Sequence[str], candidates: Sequence[str], k: int, null_kind: str
                 ) -> None:
  """Raises for label sets and `k` under which every number is a foregone conclusion."""
  n_c = len(candidates)
  if n_c < 2:
    raise ValueError(
        f"only {n_c} real perturbation ({profiles_lib._show(candidates)}) to rank against: its "
        "rank is always 1 (hit@1 = 1) and there is no null; evaluate at least 2 perturbations "
        "(is `perturbation_key` (CLI: --perturbation-key) the right column?)")
  if len(queries) < 2 and null_kind == "label":
    raise ValueError(
        f"only 1 predicted perturbation ({queries[0]!r}) is scored: the label null compares "
        "each prediction with the predictions for the other perturbations, so it would have 0 "
        "replicates (p = 1 for any model); predict at least 2 perturbations, or give null "
        "predictions (`null=`, CLI: --null)")
  if k >= n_c:
    raise ValueError(
        f"`k`={k} (CLI: --k) is at least the number of candidates ({n_c} real perturbations): "
        f"every truth ranks within the top {k}, so every query would count as correct; "
        f"choose k < {n_c}")


def _check_magnitude(x: np.ndarray, who: str, metric: str) -> None:
  """Raises when distances between `[n, G]` profiles this large could overflow the kernel's float.

  Overflow makes every distance inf: every candidate ties and the AUC-F1 is 0
  with no sign of trouble. The bound is loose (`4 G max|x|^2` for the squared
  norms, `2 G max|x|` for L1) but only fails for values no expression data holds.
  """
  if x.size == 0:
    return
  dtype = np.dtype(_float())
  biggest = max(float(np.max(x)), -float(np.min(x)))
  g = x.shape[-1]
  limit = float(np.finfo(dtype).max) / 64
  bound = 2 * g * biggest if metric == "l1" else 4 * g * biggest * biggest
  if not bound <= limit:
    raise ValueError(
        f"{who} holds values up to {biggest:.3g}: {metric} distances over {g} genes could "
        f"overflow {dtype.name} (every candidate would tie); rescale the data first (raw "
        "counts: normalize='log1p_cp10k', CLI: --normalize log1p_cp10k), or enable float64 "
        "(jax.config.update('jax_enable_x64', True)).")


def _check_delta(delta) -> Optional[str]:
  if delta is None or delta is False or delta == "none":
    return None
  if delta is True:
    return "control"
  if delta not in DELTAS:
    raise ValueError(f"unknown `delta` {delta!r}; choose one of {DELTAS} (True = 'control')")
  return delta


# ----------------------------------------------------------------------------- target genes


def _check_target_genes(target_genes: Any) -> Any:
  """`target_genes` checked before any data is read (SPEC §7).

  Returns:
    None, an `obs` column name (str), or a dict label -> tuple of gene names.
  """
  if target_genes is None:
    return None
  if isinstance(target_genes, str):
    column = target_genes[len("obs:"):] if target_genes.startswith("obs:") else target_genes
    if not column:
      raise ValueError("`target_genes` names an empty obs column; give 'COLUMN' or "
                       "'obs:COLUMN', or a mapping perturbation -> gene(s)")
    return column
  if isinstance(target_genes, pd.Series):
    items = list(target_genes.items())  # a label may repeat: one row per target
  elif isinstance(target_genes, Mapping):
    items = list(target_genes.items())
  else:
    raise TypeError(
        "`target_genes` must be None, a mapping perturbation label -> gene name(s), or the name "
        f"of an obs column of adata_real holding each cell's target gene; got "
        f"{type(target_genes).__name__}")
  out: dict[str, list[str]] = {}
  for label, value in items:
    if value is None:
      value = []
    elif isinstance(value, str):
      value = [value]
    elif isinstance(value, Mapping) or not hasattr(value, "__iter__"):
      raise TypeError(f"`target_genes`[{label!r}] must be a gene name or a list of gene names, "
                      f"got {type(value).__name__}")
    value = list(value)
    bad = [g for g in value if not isinstance(g, str)]
    if bad:
      raise TypeError(f"`target_genes`[{label!r}] must hold gene names (str), got {bad[0]!r}")
    out.setdefault(str(label), []).extend(value)
  return {label: tuple(dict.fromkeys(g)) for label, g in out.items()}


def _describe_target_spec(spec: Any) -> Optional[str]:
  """How the report's settings record `target_genes`."""
  if spec is None:
    return None
  if isinstance(spec, str):
    return f"obs:{spec}"
  return f"mapping of {len(spec)} perturbation(s)"


def _target_map(spec, real, real_key, real_labels, pred, pred_key, known) -> Optional[dict]:
  """Perturbation label -> target gene names, from the checked `target_genes`.

  `real_labels`: the `profiles.Labels` of the real cells.
  """
  if spec is None:
    return None
  if isinstance(spec, str):
    per_cell = real.obs_strings(
        spec, hint="Pass the obs column of adata_real that holds each cell's target gene as "
        "`target_genes` (CLI: --target-genes obs:COLUMN), or a mapping perturbation -> gene(s).")
    return {label: tuple(g) for label, g in
            profiles_lib.targets_by_label(real_labels.per_cell(), per_cell).items()}
  unknown = [label for label in spec if label not in known]
  if unknown:
    where = f"{real.where(f'obs[{real_key!r}]')} or {pred.where(f'obs[{pred_key!r}]')}"
    raise ValueError(
        f"`target_genes` names {len(unknown)} perturbation label(s) found in neither file: "
        f"{profiles_lib._show(unknown)}; keys must be labels of {where} "
        f"(labels: {profiles_lib._show(sorted(known))})")
  return dict(spec)


@dataclasses.dataclass(frozen=True)
class _Targets:
  """Each perturbation's target genes among the evaluated genes (SPEC §7).

  Attributes:
    index_of: label -> positions of its targets in the evaluated genes.
    gene_names: the evaluated gene names.
    width: `T`, the most targets of one ranked perturbation (at least 1).
  """

  index_of: Mapping[str, tuple[int, ...]]
  gene_names: np.ndarray
  width: int

  @classmethod
  def build(cls, mapping: Mapping[str, Sequence[str]], queries, candidates, genes,
            notes: list) -> Optional["_Targets"]:
    """The targets of the ranked perturbations; notes the ignored genes. None: nothing left."""
    genes = np.asarray(genes)
    pos = {str(g): i for i, g in enumerate(genes.tolist())}
    used = list(dict.fromkeys([*queries, *candidates]))
    index_of, ignored = {}, []
    for label in used:
      found = [pos[g] for g in mapping.get(label, ()) if g in pos]
      ignored += [g for g in mapping.get(label, ()) if g not in pos]
      if found:
        index_of[label] = tuple(found)
    if ignored:
      ignored = list(dict.fromkeys(ignored))
      notes.append(f"target_genes: {len(ignored)} target gene(s) of the ranked perturbations are "
                   f"not among the {len(genes)} evaluated genes and are ignored: "
                   f"{profiles_lib._show(ignored, 5)}")
    with_targets = [q for q in queries if q in index_of]
    bare = [label for label in index_of if len(set(index_of[label])) >= len(genes)]
    if bare:  # all of its distances would be over 0 genes: every candidate ties
      raise ValueError(
          f"target_genes leaves no gene to compare {profiles_lib._show(bare, 5)} on: their "
          f"target gene(s) are all {len(genes)} evaluated gene(s); evaluate on more genes "
          "(`genes`, `n_top_genes`) or leave out `target_genes`")
    if not index_of:
      notes.append("target_genes: no target gene of a ranked perturbation is among the "
                   "evaluated genes; nothing is excluded")
      return None
    n_genes = len({g for q in with_targets for g in index_of[q]})
    notes.append(f"target_genes: {len(with_targets)} of the {len(queries)} queried "
                 f"perturbations have their target gene(s) left out of their distances "
                 f"({n_genes} gene(s) in all)")
    return cls(index_of, genes, max(len(v) for v in index_of.values()))

  def index(self, labels) -> np.ndarray:
    """`[n, T]` int32 target gene positions of each label, padded with -1."""
    out = np.full((len(labels), self.width), -1, np.int32)
    for i, label in enumerate(labels):
      idx = self.index_of.get(str(label), ())
      out[i, :len(idx)] = idx
    return out

  def keep(self, labels, n_genes: int) -> np.ndarray:
    """`[n, G]` bool: False at each label's target genes."""
    idx = self.index(labels)
    keep = np.ones((len(labels), n_genes), bool)
    rows, cols = np.nonzero(idx >= 0)
    keep[rows, idx[rows, cols]] = False
    return keep

  def names(self, labels) -> list[str]:
    """Each label's excluded genes, joined by ``;`` (empty when none)."""
    genes = self.gene_names.tolist()
    return [";".join([genes[i] for i in self.index_of.get(str(label), ())]) for label in labels]


def _split_seed(key: Optional[jax.Array], seed: int) -> int:
  """Seed of the split halves: `seed`, or derived from the bits of `key` (no device work)."""
  if key is None:
    return int(seed)
  data = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                    else key).ravel()
  return int(np.random.SeedSequence([int(v) for v in data] + [1]).generate_state(1)[0])


def evaluate(
    adata_pred: Any,
    adata_real: Any,
    *,
    perturbation_key: Optional[str] = None,
    pred_perturbation_key: Optional[str] = None,
    control: Any = None,
    include_control: bool = False,
    layer: Optional[str] = None,
    pred_layer: Optional[str] = None,
    normalize: Optional[str] = None,
    pred_normalize: Optional[str] = None,
    genes: Optional[Sequence[str]] = None,
    n_top_genes: Optional[int] = None,
    strict_genes: bool = False,
    target_genes: Any = None,
    delta: Any = False,
    unmatched: str = "error",
    metric: str = "sqeuclidean",
    k: int = 1,
    ties: str = "average",
    null: Any = "label",
    n_null: Optional[int] = None,
    predict_fn: Optional[Callable] = None,
    inputs: Any = None,
    randomize: Any = "shuffle_features",
    null_replicate_key: str = "null_replicate",
    key: Optional[jax.Array] = None,
    seed: int = 0,
    baselines: Sequence[str] = baselines_lib.BASELINES,
    chunk_size: Optional[int] = None,
    progress: bool = False,
    name: str = "model",
    direction: str = "pred_to_real",
    candidate_level: bool = False,
) -> Report:
  """Scores predicted against real perturbation profiles, with baselines (SPEC §4, §6–8).

  Each predicted perturbation (pseudobulk of `adata_pred`) is a query; the
  real perturbation profiles (pseudobulks of `adata_real`) are the candidates.
  The report gives the rank of the truth, a p-value per query, the AUC-F1,
  and the same for the calibration baselines computed from `adata_real`.

  On a CPU the two loops that dominate, the per-perturbation sums of the
  cells and (``metric="l1"``) the all-pairs distances, run as compiled loops
  on every core (numba, compiled once and cached); the environment variable
  ``TWINBENCH_NUMBA=0`` turns them off, for the same numbers from numpy,
  scipy and XLA (the sums bit for bit, the distances up to float rounding).

  Args:
    adata_pred: predictions: an AnnData (in memory or backed) or an `.h5ad`
      path; one row per perturbation or many cells per perturbation (averaged).
    adata_real: the real data, same forms. Paths are opened read-only and
      streamed, so a file larger than memory works.
    perturbation_key: `obs` column of the perturbation label; default
      `adata_real.uns['perturbation_key']`, else ``"perturbation"``.
    pred_perturbation_key: the column in `adata_pred` (default: the same).
    control: the control label; default `adata_real.uns['control_label']`,
      else ``"control"``. ``False``: the data has no control cells (no control
      baseline, no control delta). The control is never a query or a
      candidate unless `include_control`.
    include_control: rank the control like a perturbation.
    layer: layer to read instead of `X` (both files).
    pred_layer: layer of `adata_pred` when it differs (``"X"`` for `X`).
    normalize: per-cell normalisation before averaging: `None` (default: both
      files are taken to be in the same expression space as stored),
      ``"log1p"``, ``"log1p_cp10k"`` (log1p of counts per 10,000; for raw
      counts) or ``"log1p_cpm"`` (per million). A file whose first cells hold
      non-integer values is not raw counts: the report then carries a note
      (values already log-normalised would be normalised twice).
    pred_normalize: normalisation of `adata_pred` when it differs
      (``"none"`` for none); default: `normalize`.
    genes: evaluate on these genes only (all must be shared).
    n_top_genes: evaluate on the N genes whose real profiles vary most across
      perturbations (after normalisation).
    strict_genes: error when the files' gene sets differ (default: use the
      shared genes, with a note).
    target_genes: leave each perturbation's own target gene(s) out of its
      comparisons (SPEC §7: a knockout trivially lowers its target, which says
      nothing about the rest of the response). Either a mapping perturbation
      label -> gene name or list of gene names, or the name of an `obs`
      column of `adata_real` holding each cell's target gene (e.g.
      ``"grna_target"``, or the perturbation column itself when labels are
      gene symbols; ``"obs:COLUMN"`` works too). Query `q`'s similarities to
      every candidate, and the own scores against its truth in the null, are
      computed without `q`'s targets (`tb.similarity(..., exclude=...)`); the
      model and every baseline are treated the same. Target genes outside the
      evaluated genes are ignored (with a note); a mapping label that is in
      neither file is an error. Default: no exclusion.
    delta: compare changes instead of levels: `False`/``"none"``;
      ``"control"`` (or `True`): both files minus the *real* control profile;
      ``"pred_control"``: predictions minus the prediction file's own control
      (opt-in: a prediction file could move its score through its control);
      ``"mean"``: both minus the mean real perturbation profile. A shared
      reference changes nothing for Euclidean and L1 distances.
    unmatched: perturbations on one side only: ``"error"`` (default),
      ``"intersect"`` (score the shared ones), or ``"keep_real"`` (score the
      shared ones; unpredicted real ones remain candidates).
    metric: similarity (``"sqeuclidean"``, ``"euclidean"``, ``"l1"``,
      ``"cosine"``, ``"pearson"``).
    k: a query is correct when its truth ranks within the top `k`; must be
      below the number of candidates (with `k >= C` every query is correct).
    ties: tie rule of the ranks (``"average"``, ``"optimistic"``, ``"pessimistic"``).
    null: ``"label"`` (exact label permutation, no model needed),
      ``"model"`` (rerun `predict_fn` on randomised `inputs`), or precomputed
      null predictions: a mapping perturbation label -> `[B, G]` array (no
      order to get wrong; labels that are not queries are ignored), a
      `[B, Q, G]` array (rows in query order: as the perturbations first
      appear in `adata_pred`, the order of `report.per_perturbation`; columns
      in `adata_pred.var_names` order), or an AnnData/`.h5ad` path or a list
      of them shaped like `adata_pred` (cells matched by their labels), one
      replicate each (or several, labelled by `obs[null_replicate_key]`).
    n_null: null replicates: the model null's B (default 1000); for
      precomputed nulls the first `n_null` replicates (default all). Not used
      by the label null.
    predict_fn: for ``null="model"``: `inputs -> [Q, G]` profiles in query
      order and `adata_pred.var_names` order, in the evaluated expression space.
    inputs: the model inputs (a pytree) for ``null="model"``.
    randomize: randomiser of the model null (see `tb.resolve_randomizer`).
    null_replicate_key: `obs` column that splits a null file into replicates.
    key: PRNG key for the model null and the split halves; default
      `jax.random.key(seed)`.
    seed: used when `key` is None.
    baselines: any of ``"mean"``, ``"control"``, ``"split_half"`` (SPEC §6).
      Under the label null all are scored with it; under a model or
      precomputed null the mean and control baselines, which ignore their
      input, get p = 1 by construction (every replicate ties), and the
      split-half, which has no model to rerun, keeps the label null (with a
      note; ``summary["baseline_details"][name]["null"]`` says which).
      Perturbations with fewer than 2 real cells are left out of the
      split-half (with a note).
    chunk_size: cells read at a time (default: about 4 million entries).
    progress: show progress bars while reading.
    name: what to call the predictions in the report and its plots.
    direction: the rank direction (SPEC §2). ``"pred_to_real"`` (default):
      each prediction ranks the real perturbation profiles, the truth's rank
      is reported. ``"real_to_pred"`` (PerturBench's direction): each real
      perturbation that has a prediction ranks the predictions, its own
      prediction's rank is reported (its target genes excluded under
      `target_genes`); `top1` and `popularity` then name predictions. The
      p-values are the same in both directions (an own score is one pair);
      only the ranks, and so what counts as correct, change.
    candidate_level: also report the candidate-level AUC-F1 (SPEC §4) of the
      entry-wise p-values `p[q, c]` in ``summary["candidate_auc_f1"]`` and
      `Report.candidate_curve`. Sampled nulls (model, precomputed) count them
      while streaming (costing a `[Q, G] x [G, C]` product per replicate); the
      label null uses those of `tb.label_null(..., candidate_level=True)`
      (refused with `target_genes`, whose per-query genes make an entry's
      null incomparable).

  Returns:
    A `Report`. Queries (rows of `per_perturbation`) come in the order the
    perturbations first appear in `adata_pred`; candidates are sorted.

  Raises:
    ValueError: naming the file, key or option, for unreadable or corrupt
      data (0 cells, non-finite values, corrupt sparse row pointers or
      categorical codes) and for settings under which the numbers would mean
      nothing: fewer than 2 candidates, a single query under the label null,
      `k >= C`, target genes that leave a perturbation no gene, or profiles
      so large that the distances overflow the float type.

  Example:
    >>> report = tb.evaluate("pred.h5ad", "real.h5ad", normalize="log1p_cp10k")
    >>> report.auc_f1, report.baselines
    >>> report.save("out/")
  """
  # --- arguments, checked before any data is read.
  if metric not in similarity_lib.METRICS:
    raise ValueError(f"unknown `metric` {metric!r}; choose one of {similarity_lib.METRICS}")
  if ties not in ranking.TIES:
    raise ValueError(f"unknown `ties` {ties!r}; choose one of {ranking.TIES}")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"`k` must be an integer >= 1, got {k!r}")
  seed = baselines_lib.check_seed(seed)
  norm_real = profiles_lib.check_normalize(normalize)
  norm_pred = (norm_real if pred_normalize is None
               else profiles_lib.check_normalize(pred_normalize, "pred_normalize"))
  delta = _check_delta(delta)
  wanted = baselines_lib.check_baselines(baselines)
  null_kind = _check_null(null, n_null, predict_fn)
  if genes is not None and n_top_genes is not None:
    raise ValueError("give either `genes` or `n_top_genes`, not both")
  if isinstance(genes, str):  # iterating would give its letters
    raise TypeError(f"`genes` must be a list of gene names, got the string {genes!r}; pass "
                    f"[{genes!r}] for one gene")
  if n_top_genes is not None and (isinstance(n_top_genes, bool) or not isinstance(
      n_top_genes, (int, np.integer)) or n_top_genes < 1):
    raise ValueError(f"`n_top_genes` must be an integer >= 1, got {n_top_genes!r}")
  if unmatched not in profiles_lib.UNMATCHED:
    raise ValueError(f"unknown `unmatched` {unmatched!r}; choose one of {profiles_lib.UNMATCHED}")
  target_spec = _check_target_genes(target_genes)
  direction = _check_direction(direction)
  candidate_level = _check_candidate_level(candidate_level, null_kind, target_spec)
  notes: list[str] = []

  owned = []
  try:
    real = profiles_lib.open_source(adata_real, "adata_real")
    if isinstance(adata_real, (str, os.PathLike)):
      owned.append(real)
    pred = profiles_lib.open_source(adata_pred, "adata_pred")
    if isinstance(adata_pred, (str, os.PathLike)):
      owned.append(pred)
    real.check_has_cells()
    pred.check_has_cells()
    pred_layer = layer if pred_layer is None else (None if pred_layer == "X" else pred_layer)
    notes += _normalize_notes(real, layer, norm_real, "normalize", pred=False)
    notes += _normalize_notes(pred, pred_layer, norm_pred,
                              "normalize" if pred_normalize is None else "pred_normalize",
                              pred=True)
    report = _evaluate(
        pred, real, perturbation_key=perturbation_key, pred_perturbation_key=pred_perturbation_key,
        control=control, include_control=include_control, layer=layer,
        pred_layer=pred_layer, norm_real=norm_real, norm_pred=norm_pred, genes=genes,
        n_top_genes=n_top_genes, strict_genes=strict_genes, target_spec=target_spec, delta=delta,
        unmatched=unmatched,
        metric=metric, k=int(k), ties=ties, null=null, null_kind=null_kind, n_null=n_null,
        predict_fn=predict_fn, inputs=inputs, randomize=randomize,
        null_replicate_key=null_replicate_key, key=key, seed=seed, baselines=wanted,
        chunk_size=chunk_size, progress=progress, model_name=str(name), notes=notes,
        direction=direction, candidate_level=candidate_level)
  finally:
    for src in owned:
      src.close()
  return report


def _columns(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """`a[:, idx]`, without the copy when `idx` takes every column in order (the usual case)."""
  if idx.shape[0] == a.shape[1] and np.array_equal(idx, np.arange(a.shape[1])):
    return a
  return a[:, idx]


def _one_profile_rows(profile: np.ndarray, n_q: int, n_c: int, *, host_l1: bool = False
                      ) -> np.ndarray:
  """The rows a baseline that predicts `profile` for all `n_q` queries is scored with.

  Every query points at row 0 (`_score`'s `rows`). A small problem passes the
  model's `[Q, G]` shape, so the kernel compiled for the model is reused
  (a compile costs about a second; its Q identical similarity rows cost
  little); a large one passes the single row, compiled once for all such
  baselines, where Q identical rows would cost more than the compile. With
  the distances from `_host_l1` (`host_l1`), the one row is all that is
  computed anyway, so the model's shape is always passed.
  """
  if host_l1 or n_q * n_c * profile.shape[0] < _ONE_ROW_ELEMENTS:
    return np.broadcast_to(profile, (n_q, profile.shape[0]))
  return profile[None, :]


# Q x C x G from which a one-profile baseline is scored as a single row.
_ONE_ROW_ELEMENTS = 1 << 30


def _evaluate(pred, real, *, perturbation_key, pred_perturbation_key, control, include_control,
              layer, pred_layer, norm_real, norm_pred, genes, n_top_genes, strict_genes,
              target_spec, delta, unmatched, metric, k, ties, null, null_kind, n_null, predict_fn,
              inputs, randomize, null_replicate_key, key, seed, baselines, chunk_size, progress,
              model_name, notes, direction="pred_to_real", candidate_level=False) -> Report:
  # --- keys, labels, genes.
  real_key, control = profiles_lib.resolve_keys(real, perturbation_key, control)
  pred_key = pred_perturbation_key or real_key
  profiles_lib.check_unique_genes(pred)
  profiles_lib.check_unique_genes(real)
  shared, gene_notes = profiles_lib.align_genes(pred.var_names, real.var_names,
                                                strict=strict_genes, pred_name=pred.name,
                                                real_name=real.name)
  notes += gene_notes
  if genes is not None:
    genes = [str(g) for g in genes]
    if not genes:
      raise ValueError("`genes` is empty; pass None to use all shared genes")
    missing = [g for g in genes if g not in set(shared)]
    if missing:
      raise ValueError(f"{len(missing)} requested gene(s) are not in both files: "
                       f"{profiles_lib._show(missing)}")
    if len(set(genes)) != len(genes):
      raise ValueError("`genes` lists a gene more than once")
    shared = np.asarray(genes)
  real_labels = real.obs_codes(real_key)
  pred_labels = pred.obs_codes(pred_key)
  real_uniq = real_labels.sorted_unique()
  pred_uniq = pred_labels.in_order_of_appearance()
  if control is not None and control not in set(real_uniq):
    raise ValueError(
        f"control label {control!r} not found in {real.where(f'obs[{real_key!r}]')} (labels: "
        f"{profiles_lib._show(real_uniq.tolist())}); pass the control label as `control` "
        "(CLI: --control), or control=False (--no-control) if the data has no control cells.")
  if control is None:
    if delta == "control" or delta == "pred_control":
      raise ValueError(f"delta={delta!r} needs control cells, but control=False")
    if "control" in baselines:
      baselines = tuple(b for b in baselines if b != "control")
      notes.append("no control: the control baseline is skipped")
  if delta == "pred_control" and control not in set(pred_uniq):
    raise ValueError(f"delta='pred_control' needs control cells labelled {control!r} in "
                     f"{pred.where(f'obs[{pred_key!r}]')}; found none. Use delta='control' to "
                     "subtract the real control from both files.")

  def drop_control(labels):
    return [x for x in labels.tolist() if include_control or x != control]

  queries, candidates, label_notes = profiles_lib.align_perturbations(
      drop_control(pred_uniq), drop_control(real_uniq), unmatched=unmatched,
      pred_name=pred.name, real_name=real.name)
  notes += label_notes
  _check_sizes(queries, candidates, k, null_kind)
  target_map = _target_map(target_spec, real, real_key, real_labels, pred, pred_key,
                           set(real_uniq) | set(pred_uniq))

  # --- one streamed pass per file.
  real_groups = list(candidates) + ([control] if control is not None and control not in
                                    candidates else [])
  real_idx = real_labels.index_in(real_groups)
  half = baselines_lib.split_halves(real_idx, seed=_split_seed(key, seed))
  real_codes = np.where(real_idx >= 0, 2 * real_idx + half, -1)
  sums, counts = profiles_lib.group_sums(real, real_codes, 2 * len(real_groups), layer=layer,
                                         normalize=norm_real, chunk_size=chunk_size,
                                         progress=progress, desc="real cells")
  real_gidx = real.var_names.get_indexer(shared)
  sums = _columns(sums, real_gidx)
  n_real = counts[0::2] + counts[1::2]
  real_full = sums[0::2] + sums[1::2]
  real_full /= n_real[:, None]
  pred_groups = list(queries) + ([control] if delta == "pred_control" else [])
  pred_idx = pred_labels.index_in(pred_groups)
  psums, pcounts = profiles_lib.group_sums(pred, pred_idx, len(pred_groups), layer=pred_layer,
                                           normalize=norm_pred, chunk_size=chunk_size,
                                           progress=progress, desc="predictions")
  pred_gidx = pred.var_names.get_indexer(shared)
  pred_full = _columns(psums, pred_gidx) / pcounts[:, None]

  n_cand = len(candidates)
  cand_profiles = real_full[:n_cand]
  if n_top_genes is not None:
    if n_top_genes >= len(shared):
      notes.append(f"n_top_genes={n_top_genes} >= {len(shared)} shared genes: all are used")
    else:
      top = profiles_lib.top_variable_genes(cand_profiles, shared, n_top_genes)
      keep = pd.Index(shared).get_indexer(top)
      shared, sums = top, sums[:, keep]
      real_full, pred_full = real_full[:, keep], pred_full[:, keep]
      real_gidx, pred_gidx = real_gidx[keep], pred_gidx[keep]
      cand_profiles = real_full[:n_cand]
      notes.append(f"{n_top_genes} most variable genes across the real profiles")
  control_real = real_full[real_groups.index(control)] if control is not None else None
  targets = (None if target_map is None else
             _Targets.build(target_map, queries, candidates, shared, notes))

  # --- deltas (SPEC §7: the real control is the default reference for both files).
  real_ref = pred_ref = None
  if delta == "control":
    real_ref = pred_ref = control_real
  elif delta == "pred_control":
    real_ref, pred_ref = control_real, pred_full[len(queries)]
  elif delta == "mean":
    real_ref = pred_ref = baselines_lib.mean_profile(cand_profiles)
  references = jnp.asarray(cand_profiles if real_ref is None else cand_profiles - real_ref,
                           _float())
  truth = pd.Index(candidates).get_indexer(queries)
  rel = jnp.asarray(np.arange(len(candidates))[None, :] == truth[:, None])
  ctx = _Context(
      queries=list(queries), candidates=list(candidates), genes=np.asarray(shared),
      pred_var_names=pred.var_names, pred_gene_idx=pred_gidx, pred_key=pred_key,
      pred_layer=pred_layer, pred_normalize=norm_pred, pred_reference=pred_ref,
      real_reference=real_ref, references=references, truth=jnp.asarray(truth, jnp.int32),
      relevance=rel, metric=metric, chunk_size=chunk_size,
      null_replicate_key=null_replicate_key,
      targets=targets)
  q_exclude = None if targets is None else targets.index(queries)
  predictions = ctx.transform_pred(pred_full[:len(queries)])
  _check_magnitude(predictions, _named(pred), metric)
  _check_magnitude(ctx.transform_real(real_full), _named(real), metric)
  cand_n = n_real[:n_cand]
  query_n_real = cand_n[pd.Index(candidates).get_indexer(queries)]
  baseline_tables: dict[str, pd.DataFrame] = {}

  # --- the model.
  n_q = len(queries)
  model = _score(queries, predictions, references, truth, np.arange(n_q), metric=metric, k=k,
                 ties=ties, exclude=q_exclude, direction=direction)
  # What the ranks are over: the real candidates, or (real_to_pred) the predictions.
  ranked = queries if direction == "real_to_pred" else candidates
  if direction == "real_to_pred" and n_cand > n_q:
    notes.append(f"real_to_pred: the {n_cand - n_q} real perturbation(s) without a prediction "
                 "have no own prediction to rank and are not scored")
  if null_kind == "model":
    null_key = jax.random.fold_in(jax.random.key(seed) if key is None else key, 2)
  else:
    null_key = None
  pvals, b, cand_p = _query_pvalues(null_kind, null, ctx, predictions, model, n_null=n_null,
                                    predict_fn=predict_fn, inputs=inputs, key=null_key,
                                    randomize=randomize, progress=progress, notes=notes,
                                    candidate_level=candidate_level)
  cand_curve = (_candidate_view(_candidate_pvalues(null_kind, cand_p, ctx, predictions), ctx,
                                direction) if candidate_level else None)
  if null_kind == "label":
    notes.append(f"label null: exact, over the {n_q} predictions (n_null = Q - 1)")
    if n_null is not None:
      notes.append(f"n_null={n_null} is not used by the exact label null")
  else:
    model = model.with_pvalues(pvals, k)

  # --- baselines (the model's null kind where it has a meaning: `_baseline_null`).
  scored, baseline_null = {}, {}
  if n_q < 2 and any(name != "split_half" for name in baselines):
    notes.append("the mean and control baselines are skipped: their label null needs at least "
                 "2 queries")
    baselines = tuple(name for name in baselines if name == "split_half")
  for name in baselines:
    if name in ("mean", "control"):
      profile = (baselines_lib.mean_profile(cand_profiles) if name == "mean" else control_real)
      x = _one_profile_rows(ctx.transform_real(profile), n_q, len(candidates),
                            host_l1=_uses_host_l1(metric, q_exclude))
      n_pred = int(cand_n.sum()) if name == "mean" else int(n_real[real_groups.index(control)])
      scored[name] = _score(queries, x, references, truth, np.zeros(n_q), metric=metric, k=k,
                            ties=ties, exclude=q_exclude, direction=direction)
      scored[name], *baseline_null[name] = _baseline_null(scored[name], name, null_kind, b, k)
      baseline_tables[name] = scored[name].table(ranked, k, np.full(n_q, n_pred),
                                                 query_n_real)
    elif name == "split_half":
      n_a, n_b = counts[0::2][:n_cand], counts[1::2][:n_cand]
      ok = n_a > 0
      if ok.sum() < 2:  # its label null needs 2 queries
        notes.append(f"split-half skipped: {int(ok.sum())} perturbation(s) have 2 or more real "
                     "cells, and it needs at least 2")
        continue
      if not ok.all():
        left = [c for c, o in zip(candidates, ok) if not o]
        notes.append(f"split-half leaves out {len(left)} perturbation(s) with fewer than 2 real "
                     f"cells: {profiles_lib._show(left, 5)}")
      half_a = sums[0::2][:n_cand][ok] / n_a[ok, None]
      half_b = sums[1::2][:n_cand] / n_b[:, None]
      _check_magnitude(ctx.transform_real(np.concatenate([half_a, half_b])), _named(real), metric)
      sh_q = np.asarray(candidates)[ok]
      scored[name] = _score(sh_q, ctx.transform_real(half_a), ctx.transform_real(half_b),
                            np.flatnonzero(ok), np.arange(len(sh_q)), metric=metric, k=k,
                            ties=ties, exclude=None if targets is None else targets.index(sh_q),
                            direction=direction)
      scored[name], *baseline_null[name] = _baseline_null(scored[name], name, null_kind, b, k)
      baseline_tables[name] = scored[name].table(
          sh_q if direction == "real_to_pred" else candidates, k, n_a[ok], n_b[ok])
  notes += _baseline_null_note(null_kind, tuple(scored))

  # --- report.
  table = model.table(ranked, k, pcounts[:n_q], query_n_real)
  for t in (table, *baseline_tables.values()):
    if targets is not None:
      t["excluded_genes"] = targets.names(t["perturbation"])
    t["direction"] = direction  # the CSV says what each rank is among
  popularity = pd.DataFrame({"perturbation": ranked, "n_cells": (
      pcounts[:n_q] if direction == "real_to_pred" else cand_n), "top1_count": model.popularity})
  stats = model.stats(k, b)

  summary = {
      "twinbench_version": version.__version__,
      "metric_version": version.METRIC_VERSION,
      **stats,
      "k": k,
      "normalized_rank": float(np.mean((model.ranks - 1.0) / np.maximum(
          len(ranked) - 1 if direction == "real_to_pred" else np.sum(~np.asarray(rel), axis=1),
          1))),
      "null": null_kind,
      "alpha": ALPHA,
      "n_candidates": len(ranked),
      "n_genes": int(len(shared)),
      "popularity_gini": model.gini,
      "data_fingerprint": _data_fingerprint(shared, candidates, cand_n),
      "baselines": {name: float(sc.curve.auc) for name, sc in scored.items()},
      "baseline_details": {name: {**sc.stats(k, baseline_null[name][1]),
                                  "null": baseline_null[name][0]}
                           for name, sc in scored.items()},
      **({"candidate_auc_f1": float(cand_curve.auc)} if candidate_level else {}),
      "settings": {
          "perturbation_key": real_key, "pred_perturbation_key": pred_key, "control": control,
          "include_control": include_control, "layer": layer, "pred_layer": pred_layer,
          "normalize": norm_real, "pred_normalize": norm_pred,
          "genes": "given" if genes is not None else (
              f"top {n_top_genes} variable" if n_top_genes is not None else "all shared"),
          "target_genes": _describe_target_spec(target_spec),
          "delta": delta, "unmatched": unmatched, "metric": metric, "ties": ties,
          "seed": seed, "pred": pred.name, "real": real.name, "name": model_name,
          "direction": direction,
      },
      "notes": list(notes),
  }
  return Report(
      summary=types.MappingProxyType(_json_safe(summary)),
      per_perturbation=table,
      curves=types.MappingProxyType(
          {"model": model.curve, **{name: sc.curve for name, sc in scored.items()}}),
      baseline_tables=types.MappingProxyType(baseline_tables),
      popularity=popularity,
      genes=tuple(str(g) for g in shared),
      candidate_curve=cand_curve,
  )

"""Several saved reports side by side: one table, one figure (`tb.compare`).

Reports are comparable only when every number in them means the same thing:
the same metric definition, the same real profiles and genes, the same null
and the same scoring settings. `compare` checks each of these and refuses a
mismatch, naming the field and the two values; only what describes the
prediction file itself (its path, key, layer, normalisation and name) may
differ.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

# Summary fields that must be equal for two reports to be compared.
_SAME_FIELDS = ("metric_version", "null", "n_null", "k", "alpha", "n_queries", "n_candidates",
                "n_genes")
# Settings that describe the prediction file only; everything else must agree.
_PER_MODEL_SETTINGS = frozenset({"pred", "pred_perturbation_key", "pred_layer", "pred_normalize",
                                 "name", "real"})
# Settings added after reports were first saved: a report without one used this value.
_SETTING_DEFAULTS = {"direction": "pred_to_real"}
# Columns of the table, in order.
# Row names of the calibration baselines (SPEC §6).
BASELINE_LABELS = {"split_half": "split-half baseline", "mean": "mean baseline",
                   "control": "control baseline"}
COLUMNS = ("auc_f1", "hit_at_1", "mrr", "mean_rank", "fraction_called", "fraction_called_bh",
           "n_queries")

ReportLike = Union[str, os.PathLike, Mapping[str, Any], Any]


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Result of `tb.compare`.

  Attributes:
    table: one row per model (in the order given), then one per baseline;
      columns ``kind`` (``"model"`` or ``"baseline"``) and the headline numbers
      `COLUMNS`.
    curves: row name → ``{"alphas": [n], "f1": [n]}``, the F1(α) step curve
      (SPEC §4) of each model and baseline.
    shared: the fields every report agrees on (``metric_version``, ``null``,
      ``n_null``, ``k``, the settings, ...).
    sources: model name → where its report came from (a path, or ``None``).
    notes: what could not be checked (e.g. reports without a data fingerprint).
  """

  table: pd.DataFrame
  curves: Mapping[str, Mapping[str, np.ndarray]]
  shared: Mapping[str, Any]
  sources: Mapping[str, Optional[str]]
  notes: tuple[str, ...] = ()

  def to_dict(self) -> dict:
    """The content of `comparison.json`."""
    rows = [{"name": name, **{k: _plain(v) for k, v in row.items()}}
            for name, row in self.table.to_dict(orient="index").items()]
    curves = {name: {k: np.asarray(v).tolist() for k, v in c.items()}
              for name, c in self.curves.items()}
    return {"rows": rows, "curves": curves, "shared": dict(self.shared),
            "sources": dict(self.sources), "notes": list(self.notes)}

  def save(self, directory, *, plots: bool = True) -> list[str]:
    """Writes `comparison.csv`, `comparison.json` and (optionally) `comparison.png`.

    `directory` is replaced all-or-nothing under the same rules as
    `Report.save`: it must be new, empty or a previous twinbench output, and
    only files twinbench wrote are ever removed.

    Returns:
      The paths written (inside `directory`).

    Raises:
      ValueError: an unsafe `directory` (`output_dir.OutputDirError`).
      OSError: the folder could not be written or replaced; nothing changed.
    """
    from twinbench_jax._src.evaluate import output_dir

    directory = os.fspath(directory)
    names = ["comparison.csv", "comparison.json"]
    with output_dir.staged(directory) as tmp:
      self.table.to_csv(os.path.join(tmp, names[0]), index_label="name")
      with open(os.path.join(tmp, names[1]), "w") as f:
        json.dump(self.to_dict(), f, indent=2, allow_nan=False)
        f.write("\n")
      if plots:
        from twinbench_jax._src.evaluate import plots as plots_lib

        names.append(os.path.basename(plots_lib.save_comparison_plot(self, tmp)))
    return [os.path.join(directory, n) for n in names]


def _plain(v: Any) -> Any:
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, (np.floating, float)):
    return None if not np.isfinite(v) else float(v)
  return v


def _load(report: ReportLike) -> tuple[dict, Optional[str]]:
  """A report as the dict of its `report.json`, and where it came from."""
  if isinstance(report, Mapping):
    return dict(report), None
  if hasattr(report, "to_dict") and hasattr(report, "summary"):
    return report.to_dict(), None
  path = os.fspath(report)
  file = os.path.join(path, "report.json") if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise FileNotFoundError(f"no report at {path!r}: expected a folder written by "
                            "`twinbench evaluate` (with a report.json) or a report.json file")
  try:
    with open(file) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{file!r} is not a readable report.json: {e}") from None
  missing = [k for k in ("metric_version", "auc_f1", "per_perturbation", "curves", "settings")
             if k not in data]
  if missing:
    raise ValueError(f"{file!r} is not a twinbench report: missing {missing}")
  return data, path


def _model_name(data: dict, source: Optional[str], index: int) -> str:
  name = data.get("settings", {}).get("name")
  if name:
    return str(name)
  if source is not None:
    return os.path.basename(os.path.normpath(source)) or f"model {index + 1}"
  return f"model {index + 1}"


def _unique(names: list[str]) -> list[str]:
  out, seen = [], {}
  for n in names:
    seen[n] = seen.get(n, 0) + 1
    out.append(n if names.count(n) == 1 else f"{n} ({seen[n]})")
  return out


def _check_same(field: str, values: list, names: list[str]) -> None:
  first = values[0]
  for v, n in zip(values[1:], names[1:]):
    if v != first:
      raise ValueError(
          f"cannot compare the reports: `{field}` differs ({names[0]!r}: {first!r}, "
          f"{n!r}: {v!r}); numbers from different {field} do not mean the same thing")


def _perturbations(data: dict) -> list:
  return sorted(str(row["perturbation"]) for row in data["per_perturbation"])


def _check_comparable(datas: list[dict], names: list[str]) -> tuple[dict, list[str]]:
  """Raises on the first field that differs; returns the shared fields and notes."""
  notes = []
  for field in _SAME_FIELDS:
    _check_same(field, [d.get(field) for d in datas], names)
  settings = [{k: v for k, v in {**_SETTING_DEFAULTS, **d["settings"]}.items()
               if k not in _PER_MODEL_SETTINGS} for d in datas]
  for key in sorted(set().union(*settings)):
    _check_same(f"settings.{key}", [s.get(key) for s in settings], names)
  _check_same("perturbations", [_perturbations(d) for d in datas], names)
  prints = [d.get("data_fingerprint") for d in datas]
  if all(p is not None for p in prints):
    for part in ("genes", "real"):
      _check_same(f"data_fingerprint.{part}", [p.get(part) for p in prints], names)
  else:
    old = [n for n, p in zip(names, prints) if p is None]
    notes.append(f"reports without a data fingerprint ({', '.join(old)}): the gene set and the "
                 "real cells could not be checked, only their counts")
  common = sorted(set.intersection(*(set(d.get("baselines", {})) for d in datas)))
  for base in common:
    _check_same(f"baselines.{base}", [d["baselines"][base] for d in datas], names)
  shared = {field: datas[0].get(field) for field in _SAME_FIELDS}
  shared["settings"] = settings[0]
  if prints[0] is not None and not notes:
    shared["data_fingerprint"] = prints[0]
  return shared, notes


def _row(data: dict) -> dict:
  return {k: data.get(k) for k in COLUMNS}


def _curve(c: Mapping[str, Any]) -> dict:
  return {"alphas": np.asarray(c["alphas"], np.float64),
          "f1": np.asarray([np.nan if v is None else v for v in c["f1"]], np.float64)}


def compare(*reports: ReportLike, names: Optional[Sequence[str]] = None) -> Comparison:
  """Puts several reports of the same data side by side.

  Args:
    *reports: at least two reports: `tb.Report` objects, folders written by
      `twinbench evaluate` / `Report.save`, `report.json` paths, or the dicts
      of `Report.to_dict()`.
    names: one row name per report; default: the report's model name
      (``settings.name``), else its folder name (made unique).

  Returns:
    A `Comparison`: the table (models, then the baselines of the first report),
    the F1(α) curves, and the fields all reports share.

  Raises:
    ValueError: fewer than two reports, or reports that differ in
      `metric_version`, the null (kind, `n_null`), `k`, the perturbations, the
      genes or real cells (their fingerprint), or a scoring setting; the
      message names the field and both values.
    FileNotFoundError: a path that holds no report.
  """
  if len(reports) == 1 and isinstance(reports[0], (list, tuple)):
    reports = tuple(reports[0])
  if len(reports) < 2:
    raise ValueError(f"`compare` needs at least two reports, got {len(reports)}")
  loaded = [_load(r) for r in reports]
  datas = [d for d, _ in loaded]
  if names is None:
    names = _unique([_model_name(d, src, i) for i, (d, src) in enumerate(loaded)])
  else:
    names = [str(n) for n in names]
    if len(names) != len(datas) or len(set(names)) != len(names):
      raise ValueError(f"`names` must hold {len(datas)} distinct names, got {names!r}")
  shared, notes = _check_comparable(datas, names)
  rows = {n: {"kind": "model", **_row(d)} for n, d in zip(names, datas)}
  curves = {n: _curve(d["curves"]["model"]) for n, d in zip(names, datas)}
  details = datas[0].get("baseline_details", {})
  for base, d in details.items():
    label = BASELINE_LABELS.get(base, f"{base} baseline")
    rows[label] = {"kind": "baseline", **{k: d.get(k) for k in COLUMNS}}
    if base in datas[0]["curves"]:
      curves[label] = _curve(datas[0]["curves"][base])
  table = pd.DataFrame.from_dict(rows, orient="index")
  table.index.name = "name"
  sources = {n: src for n, (_, src) in zip(names, loaded)}
  return Comparison(table=table, curves=curves, shared=shared, sources=sources,
                    notes=tuple(notes))

"""Argument checks of `tb.evaluate` that raise, naming the option (and its CLI flag).

Also the checks made once the data is read (label counts, `k`, magnitudes)
and the note on `normalize=` applied to values that are not counts.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.data import profiles as profiles_lib
from twinbench_jax._src.evaluate import scoring

DELTAS = ("none", "control", "pred_control", "mean")
# Rank directions: each prediction among the real profiles (default), or each
# real profile's own prediction among the predictions (PerturBench's direction).
DIRECTIONS = ("pred_to_real", "real_to_pred")


def check_null(null, n_null, predict_fn) -> str:
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



def check_direction(direction: Any) -> str:
  if direction not in DIRECTIONS:
    raise ValueError(f"unknown `direction` {direction!r}; choose one of {DIRECTIONS}")
  return direction


def check_candidate_level(candidate_level: Any, null_kind: str, target_spec: Any) -> bool:
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



def check_sizes(queries: Sequence[str], candidates: Sequence[str], k: int, null_kind: str
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


def check_magnitude(x: np.ndarray, who: str, metric: str) -> None:
  """Raises when distances between `[n, G]` profiles this large could overflow the kernel's float.

  Overflow makes every distance inf: every candidate ties and the AUC-F1 is 0
  with no sign of trouble. The bound is loose (`4 G max|x|^2` for the squared
  norms, `2 G max|x|` for L1) but only fails for values no expression data holds.
  """
  if x.size == 0:
    return
  dtype = np.dtype(scoring.default_float())
  biggest = max(float(np.max(x)), -float(np.min(x)))
  g = x.shape[-1]
  limit = float(np.finfo(dtype).max) / 64
  bound = similarity_lib.get_metric(metric).magnitude_bound(g, biggest)
  if not bound <= limit:
    raise ValueError(
        f"{who} holds values up to {biggest:.3g}: {metric} distances over {g} genes could "
        f"overflow {dtype.name} (every candidate would tie); rescale the data first (raw "
        "counts: normalize='log1p_cp10k', CLI: --normalize log1p_cp10k), or enable float64 "
        "(jax.config.update('jax_enable_x64', True)).")


def check_delta(delta) -> Optional[str]:
  if delta is None or delta is False or delta == "none":
    return None
  if delta is True:
    return "control"
  if delta not in DELTAS:
    raise ValueError(f"unknown `delta` {delta!r}; choose one of {DELTAS} (True = 'control')")
  return delta



def named(source: profiles_lib.Source) -> str:
  """How messages name a whole file or object: 'pred.h5ad' or `adata_pred`."""
  return repr(source.name) if source.is_file else f"`{source.name}`"


def normalize_notes(source: profiles_lib.Source, layer: Optional[str], norm: Optional[str],
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

"""Calibration baselines computed from the real data (SPEC §6).

- ``"mean"``: predict the mean of all perturbation profiles, the same for
  every perturbation (a negative control: it ignores its input, AUC-F1 = 0).
- ``"control"``: predict the control profile for every perturbation (also a
  negative control, AUC-F1 = 0).
- ``"split_half"``: half of the real cells of each perturbation predict the
  other half: the best score the noise in the data allows (a positive
  control). Halves are drawn with a seed, so the score is reproducible.

The first two are one profile broadcast to every query; the split-half needs
per-cell half assignments, made here before the matrix is read, so that one
pass over the data gives both halves of every perturbation. `REGISTRY` holds
each baseline's spec (name -> `Baseline`); `BASELINES` its names, in order.
"""

from __future__ import annotations

import dataclasses
import os
import types
from typing import Any, Callable, Mapping, Optional

import numpy as np

from twinbench_jax._src.data import profiles as profiles_lib


@dataclasses.dataclass(frozen=True)
class Baseline:
  """A calibration baseline of `tb.evaluate` (SPEC §6).

  Attributes:
    name: its name in `baselines=` and in the report.
    label: how tables and plots name it.
    needs_control: scored only when the data has control cells.
    predict: for a baseline that predicts one profile whatever its input:
      `(candidate profiles [C, G], their cell counts [C], control profile [G]
      or None, control cell count or None) -> (profile [G], cells averaged)`.
      None for the split-half, which predicts each perturbation from half of
      its own real cells.
  """

  name: str
  label: str
  needs_control: bool = False
  predict: Optional[Callable[..., tuple[np.ndarray, int]]] = None

  @property
  def input_agnostic(self) -> bool:
    """Whether it predicts the same profile for every query (p = 1 under a sampled null)."""
    return self.predict is not None


def mean_profile(profiles: np.ndarray) -> np.ndarray:
  """`[G]` the mean-baseline prediction: the unweighted mean of `[P, G]` profiles."""
  return np.asarray(profiles, np.float64).mean(axis=0)


def _predict_mean(candidates, n_cells, control, n_control) -> tuple[np.ndarray, int]:
  del control, n_control  # the mean of the perturbation profiles only
  return mean_profile(candidates), int(n_cells.sum())


def _predict_control(candidates, n_cells, control, n_control) -> tuple[np.ndarray, int]:
  del candidates, n_cells
  return control, int(n_control)


REGISTRY: Mapping[str, Baseline] = types.MappingProxyType({
    "mean": Baseline("mean", "mean baseline", predict=_predict_mean),
    "control": Baseline("control", "control baseline", needs_control=True,
                        predict=_predict_control),
    "split_half": Baseline("split_half", "split-half baseline"),
})
BASELINES = tuple(REGISTRY)


def check_baselines(baselines) -> tuple[str, ...]:
  """Validates a sequence of baseline names (a single string is one name)."""
  if baselines is None:
    return ()
  names = (baselines,) if isinstance(baselines, str) else tuple(baselines)
  unknown = [b for b in names if b not in BASELINES]
  if unknown:
    raise ValueError(f"unknown baseline(s) {unknown}; choose from {BASELINES}")
  return tuple(dict.fromkeys(names))


def check_seed(seed) -> int:
  """A seed as an int in [0, 2^63) (numpy's and JAX's seeds); an error names `seed` otherwise."""
  if (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0
      or seed >= 2**63):
    raise ValueError(f"`seed` must be an integer in [0, 2**63), got {seed!r}")
  return int(seed)


def split_halves(codes: np.ndarray, *, seed: int = 0) -> np.ndarray:
  """Assigns every cell to half 0 ("predicting") or 1 ("held out") within its group.

  A group of `n` cells puts a uniformly random `floor(n / 2)` of them in half 0
  and the rest in half 1, so a group with a single cell has no half 0 (it
  cannot predict itself) and keeps its cell as the held-out profile.

  Args:
    codes: `[n]` int group of each cell; `-1` cells get `-1`.
    seed: seed of the assignment (numpy `default_rng`).

  Returns:
    `[n]` int8 half of each cell (0, 1, or -1 for skipped cells).
  """
  codes = np.asarray(codes)
  rng = np.random.default_rng(seed)
  u = rng.random(codes.shape[0])
  order = np.lexsort((u, codes))  # by group, random inside each group
  sorted_codes = codes[order]
  starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
  sizes = np.diff(np.r_[starts, codes.shape[0]])
  pos = np.arange(codes.shape[0]) - np.repeat(starts, sizes)
  half_sorted = (pos >= np.repeat(sizes // 2, sizes)).astype(np.int8)
  half = np.empty(codes.shape[0], np.int8)
  half[order] = half_sorted
  half[codes < 0] = -1
  return half


def split_half(
    adata: Any,
    *,
    perturbation_key: Optional[str] = None,
    layer: Optional[str] = None,
    normalize: Optional[str] = None,
    seed: int = 0,
    chunk_size: Optional[int] = None,
) -> tuple[profiles_lib.Pseudobulk, profiles_lib.Pseudobulk]:
  """Pseudobulks of two random halves of the cells of every perturbation (SPEC §6).

  Args:
    adata: an AnnData (in memory or backed) or a path to an `.h5ad` file.
    perturbation_key: `obs` column of the labels (default from
      `uns['perturbation_key']`, else ``"perturbation"``).
    layer, normalize, chunk_size: as in `tb.pseudobulk`.
    seed: seed of the random halves.

  Returns:
    `(predicting, held_out)` `Pseudobulk`s. Perturbations with fewer than 2
    cells are missing from `predicting` and keep their cell in `held_out`.
  """
  seed = check_seed(seed)
  owned = isinstance(adata, (str, os.PathLike))
  src = profiles_lib.open_source(adata, "adata")
  try:
    key, _ = profiles_lib.resolve_keys(src, perturbation_key, False)
    norm = profiles_lib.check_normalize(normalize)
    uniq, codes = profiles_lib.factorize(src.obs_labels(key))
    half = split_halves(codes, seed=seed)
    sums, counts = profiles_lib.group_sums(src, 2 * codes + half, 2 * len(uniq), layer=layer,
                                           normalize=norm, chunk_size=chunk_size)
  finally:
    if owned:
      src.close()
  genes = np.asarray(src.var_names)
  out = []
  for h in (0, 1):
    n = counts[h::2]
    ok = n > 0
    out.append(profiles_lib.Pseudobulk(uniq[ok], sums[h::2][ok] / n[ok, None], n[ok], genes))
  return out[0], out[1]

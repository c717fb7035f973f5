"""The aligned data the steps of one evaluation share (`Context`).

With per-query target genes, the sampled nulls see the excluded genes filled
with a neutral value (`fill_excluded`, SPEC §7).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np
import pandas as pd

from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.evaluate import settings as settings_lib
from twinbench_jax._src.evaluate import target_genes as targets_lib


@dataclasses.dataclass
class Context:
  """The settings and the aligned data shared by the steps of one evaluation."""

  settings: settings_lib.Settings
  queries: list
  candidates: list
  genes: np.ndarray
  pred_var_names: pd.Index
  pred_gene_idx: np.ndarray
  pred_key: str  # the label column of adata_pred (and of precomputed null files)
  pred_reference: Optional[np.ndarray]  # subtracted from prediction profiles (delta)
  real_reference: Optional[np.ndarray]  # subtracted from real-side profiles (delta)
  references: Any  # [C, G] jax array of the real candidate profiles (after delta)
  truth: Any  # [Q] jax int32 index of each query's candidate
  relevance: Any  # [Q, C] jax bool
  targets: Optional[targets_lib.Targets] = None  # each query's target genes (target_genes)

  @property
  def metric(self) -> str:
    return self.settings.scoring.metric

  @functools.cached_property
  def null_keep(self) -> Optional[np.ndarray]:
    """`[Q, G]` bool: the genes each query keeps; built when a sampled null first needs it."""
    return None if self.targets is None else self.targets.keep(self.queries, len(self.genes))

  def transform_pred(self, x: np.ndarray) -> np.ndarray:
    return x if self.pred_reference is None else x - self.pred_reference

  def transform_real(self, x: np.ndarray) -> np.ndarray:
    return x if self.real_reference is None else x - self.real_reference

  def fill_excluded(self, x: np.ndarray) -> np.ndarray:
    """`[..., Q, G]` predictions for the sampled nulls, target genes filled (`fill_excluded`)."""
    return x if self.null_keep is None else fill_excluded(x, self.null_keep, self.metric, np)

  def null_references(self):
    """The references for the sampled nulls: each query's truth filled like its prediction."""
    if self.null_keep is None:
      return self.references
    y = np.array(self.references)
    truth = np.asarray(self.truth)
    y[truth] = fill_excluded(y[truth], self.null_keep, self.metric, np)
    return jnp.asarray(y)


def fill_excluded(x, keep, metric: str, xp):
  """`x` `[..., Q, G]` with the genes query `q` excludes (`~keep[q]`) set to a neutral value.

  The sampled nulls (`tb.model_null`, `tb.precomputed_null`) score a replicate
  by its own score against its query's truth only. Giving the excluded genes
  the same neutral value in a prediction and in its truth makes that own score
  over all genes equal the own score over the kept genes (SPEC §7), so the null
  engine needs no exclusion of its own: 0 for the distances and cosine (the
  terms vanish), and for Pearson each vector's mean over its kept genes (the
  mean is unchanged and the centred values there are 0). `xp` is `np` or `jnp`.
  """
  return similarity_lib.get_metric(metric).fill_excluded(x, keep, xp)

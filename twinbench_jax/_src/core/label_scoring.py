"""The label-null scoring chain, written once (SPEC §2–4).

similarities and own scores -> truth ranks -> label-permutation p-values ->
correct calls -> AUC-F1. `evaluate_arrays`, `label_null` and `evaluate` each
compute their similarities and own scores their own way (all genes, excluded
genes, other own scores), then hand them to `label_null_scores`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from twinbench_jax._src.core import auc as auc_lib
from twinbench_jax._src.core import identity_pass
from twinbench_jax._src.core import pvalues as pvalues_lib
from twinbench_jax._src.core import ranking


class LabelNullScores(NamedTuple):
  """Per-query results of `label_null_scores`.

  Attributes:
    ranks: `[Q]` rank of the truth among the candidates (1 = best, SPEC §2).
    own_scores: `[Q]` own score `m_q`, the diagonal of `cross`.
    pvalues: `[Q]` label-permutation p-values (SPEC §3).
    correct: `[Q]` bool, `ranks <= k`.
    curve: the `AucF1Result` of `pvalues` and `correct` (SPEC §4).
  """

  ranks: jax.Array
  own_scores: jax.Array
  pvalues: jax.Array
  correct: jax.Array
  curve: auc_lib.AucF1Result


def label_null_scores(s: jax.Array, cross: jax.Array, rel: Optional[jax.Array], *, k: int,
                      ties: str, single: Optional[object] = None) -> LabelNullScores:
  """Ranks, own scores, label-null p-values and AUC-F1 from similarities (SPEC §2–4).

  Unchecked and jit-friendly: the callers validate their inputs and trace this
  inside their own compiled kernel (so XLA drops what they do not use). NaN
  scores count as -inf, as in `tb.truth_ranks` and `tb.label_permutation_pvalues`.

  Args:
    s: `[Q, C]` similarities of every query's prediction to every candidate,
      in at least float32.
    cross: `[Q, Q]` own scores: `cross[i, j]` is the own score of prediction
      `i` against the truth of query `j` (its diagonal is `m_q`). With
      ``single="identity"`` it must be `s` itself.
    rel: `[Q, C]` bool relevance; None (unused) when ``single="identity"``.
    k: a query is correct when its truth ranks within the top `k`.
    ties: tie rule of `tb.truth_ranks` (``"average"``, ``"optimistic"``,
      ``"pessimistic"``).
    single: ``"identity"`` when the truth of query `q` is candidate `q`
      (`Q == C`): ranks and p-values then come from one fused pass over `s`
      (`identity_pass`); anything else reads `rel` (see
      `own_scores.single_relevant`).

  Returns:
    A `LabelNullScores`.
  """
  if single == "identity":
    ranks, pvalues = identity_pass.ranks_and_label_pvalues(s, ties=ties)
  else:
    ranks = ranking._truth_ranks(s, rel, ties=ties)
    pvalues = pvalues_lib._label_permutation_pvalues(cross)
  correct = ranks <= k
  curve = auc_lib._auc_f1(pvalues, correct, jnp.ones_like(correct))
  return LabelNullScores(ranks=ranks, own_scores=jnp.diagonal(cross), pvalues=pvalues,
                         correct=correct, curve=curve)

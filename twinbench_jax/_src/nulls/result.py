"""The result of a permutation null (SPEC §3): `NullResult`, and its assembly."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from twinbench_jax._src.core import auc as auc_lib
from twinbench_jax._src.core import checks
from twinbench_jax._src.core import pvalues as pvalues_lib
from twinbench_jax._src.core import ranking

NULL_KINDS = ("model", "precomputed", "label")


@dataclasses.dataclass(frozen=True)
class NullResult:
  """Observed scores, the null and the p-values of one permutation null (SPEC §3).

  A frozen dataclass registered as a pytree (the arrays are its leaves; `kind`,
  `n_null`, `metric` and `own_score` are static), so it passes through
  `jax.jit` and `jax.tree_util`.

  Attributes:
    own_scores: `[Q]` observed own score `m_q` of every prediction.
    null_own_scores: `[B, Q]` own scores of the null replicates: predictions
      from randomised inputs (model, precomputed), or for the label null the
      predictions of the other queries against query `q`'s truth
      (`null_own_scores[b, q]` = own score of prediction `(q + 1 + b) mod Q`).
    pvalues: `[Q]` `(1 + #{b : null_own_scores[b, q] >= own_scores[q]}) / (B + 1)`.
    scores: `[Q, C]` observed similarities (for ranks and candidate-level use).
    relevance: `[Q, C]` boolean relevance the scores were made with.
    candidate_pvalues: `[Q, C]` entry-wise p-values
      `(1 + #{b : s^b[q, c] >= s[q, c]}) / (B + 1)` when the null was run with
      `candidate_level=True`, else None.
    kind: ``"model"``, ``"precomputed"`` or ``"label"``.
    n_null: number of null replicates `B` (`Q - 1` for the label null).
    metric: the similarity metric.
    own_score: ``"similarity"``, ``"r2"`` or ``"pearson"``.
  """

  own_scores: jax.Array
  null_own_scores: jax.Array
  pvalues: jax.Array
  scores: jax.Array
  relevance: jax.Array
  candidate_pvalues: Optional[jax.Array]
  kind: str
  n_null: int
  metric: str
  own_score: str

  def __repr__(self) -> str:
    q, c = self.scores.shape
    return (f"NullResult(kind={self.kind!r}, n_null={self.n_null}, Q={q}, C={c}, "
            f"metric={self.metric!r}, own_score={self.own_score!r}, "
            f"candidate_level={self.candidate_pvalues is not None})")

  def ranks(self, *, ties: str = "average") -> jax.Array:
    """`[Q]` rank of the truth of every query (SPEC §2), see `tb.truth_ranks`."""
    return ranking.truth_ranks(self.scores, self.relevance, ties=ties)

  def auc_f1(self, *, k: int = 1, ties: str = "average") -> auc_lib.AucF1Result:
    """Query-level AUC-F1 (SPEC §4): called at α when `p_q <= α`, correct when rank <= `k`."""
    checks.check_k(k)
    return auc_lib.auc_f1(self.pvalues, self.ranks(ties=ties) <= k)

  def candidate_auc_f1(self) -> auc_lib.AucF1Result:
    """Candidate-level AUC-F1 (SPEC §4) from `candidate_pvalues`."""
    if self.candidate_pvalues is None:
      raise ValueError("this null was run without candidate-level p-values; run it again "
                       "with `candidate_level=True`")
    return auc_lib.candidate_auc_f1(self.candidate_pvalues, self.relevance)


jax.tree_util.register_dataclass(
    NullResult,
    data_fields=["own_scores", "null_own_scores", "pvalues", "scores", "relevance",
                 "candidate_pvalues"],
    meta_fields=["kind", "n_null", "metric", "own_score"])



def finish(kind, own_obs, null_own, counts, s_obs, rel, n_null, metric, own_score) -> NullResult:
  """A sampled null's `NullResult` from its streamed outputs (see `streaming.stream`)."""
  null_own = null_own[:n_null]
  pvalues = pvalues_lib.empirical_pvalues(own_obs, null_own)
  candidate_pvalues = None
  if counts is not None:
    candidate_pvalues = pvalues_lib.pvalues_from_counts(counts, n_null).astype(s_obs.dtype)
  return NullResult(own_scores=own_obs, null_own_scores=null_own, pvalues=pvalues, scores=s_obs,
                    relevance=rel, candidate_pvalues=candidate_pvalues, kind=kind,
                    n_null=n_null, metric=metric, own_score=own_score)


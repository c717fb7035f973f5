"""The array pipeline with the exact label-permutation null (SPEC §2–4).

similarity -> truth ranks -> own scores -> label-permutation p-values -> AUC-F1,
one jitted kernel. No model is needed: the null asks whether each prediction
is closer to its own truth than the predictions for the other perturbations.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from twinbench_jax._src.core import auc as auc_lib
from twinbench_jax._src.core import checks
from twinbench_jax._src.core import label_scoring
from twinbench_jax._src.core import own_scores as own_lib
from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.core import validation
from twinbench_jax._src.nulls import query_sharding


class ArrayEvaluation(NamedTuple):
  """Per-query results and summary of `tb.evaluate_arrays`.

  Attributes:
    ranks: `[Q]` rank of the truth (1 = best).
    own_scores: `[Q]` own score `m_q` (mean similarity to the relevant candidates).
    pvalues: `[Q]` label-permutation p-values.
    correct: `[Q]` `ranks <= k`.
    curve: the `AucF1Result` (area and F1(α) curve).
    auc_f1: scalar AUC-F1.
    hit_at_k: scalar mean of `correct`.
    mrr: scalar mean reciprocal rank.
    mean_rank: scalar mean rank.
    normalized_rank: scalar mean normalised rank (0 = best).
  """

  ranks: jax.Array
  own_scores: jax.Array
  pvalues: jax.Array
  correct: jax.Array
  curve: auc_lib.AucF1Result
  auc_f1: jax.Array
  hit_at_k: jax.Array
  mrr: jax.Array
  mean_rank: jax.Array
  normalized_rank: jax.Array


def evaluate_arrays(
    predictions: jax.Array,
    references: jax.Array,
    relevance: Optional[jax.Array] = None,
    *,
    metric: str = "sqeuclidean",
    k: int = 1,
    ties: str = "average",
    mesh: Optional[Any] = None,
) -> ArrayEvaluation:
  """Scores predictions against references with the exact label-permutation null.

  Args:
    predictions: `[Q, G]` predicted profiles, one per query.
    references: `[C, G]` real profiles.
    relevance: `[Q, C]` boolean; default: the identity (requires `Q == C`,
      prediction `q` belongs to reference `q`).
    metric: similarity metric (see `tb.similarity`).
    k: a query is correct when its truth ranks within the top `k`.
    ties: tie rule of `tb.truth_ranks`.
    mesh: None (default): one device holds the `[Q, C]` similarities. A
      `jax.sharding.Mesh` with a ``"queries"`` axis (`tb.query_mesh()`):
      the queries are split over that axis, so each device holds `Q/n` rows
      of the similarities (memory O(Q C / n)); the label-null counts are
      summed over devices as integers, so the results equal the unsharded
      ones (bit for bit where XLA rounds a row block as the whole matrix,
      see `query_sharding`). In a `jax.distributed` job every process passes
      the same full inputs and gets the whole result.

  Returns:
    An `ArrayEvaluation`. Ranks, p-values and every summary are in at least
    float32 (bfloat16 inputs: the similarities run in bfloat16, then are
    counted in float32).

  Raises:
    ValueError: for non-finite predictions or references (as `tb.label_null`),
      a query without a relevant candidate, or mismatched shapes. Under
      `jit`, where values cannot be checked, such a query gets NaN in
      `ranks`, `own_scores` and `pvalues` (`correct` is False), and the
      curve and every summary are NaN; a non-finite reference poisons all.
  """
  x, y = checks.check_profile_pair(predictions, references)
  if relevance is None:
    if x.shape[0] != y.shape[0]:
      raise ValueError(
          f"without `relevance`, prediction q must belong to reference q, so both need the same "
          f"number of rows; got predictions {tuple(x.shape)} and references {tuple(y.shape)}")
    # The identity is known without building it: no [Q, Q] mask to make, copy to the
    # host and check (costly for large Q on an accelerator).
    rel, single = None, "identity"
  else:
    rel = validation.as_bool_array(relevance, "relevance", ndim=2)
    if rel.shape != (x.shape[0], y.shape[0]):
      raise ValueError(f"`relevance` must have shape (Q, C) = {(x.shape[0], y.shape[0])}, "
                       f"got {tuple(rel.shape)}")
    validation.check_every_query_has_relevant(rel)
    single = own_lib.single_relevant(rel)
  checks.check_metric(metric)
  checks.check_ties(ties)
  checks.check_k(k)
  if mesh is None:
    res, any_bad = _evaluate_arrays(x, y, rel, metric=metric, k=k, ties=ties, single=single)
  else:
    out = query_sharding.score_queries(x, y, rel, mesh=query_sharding.check_query_mesh(mesh),
                                       metric=metric, single=single, ties=ties)
    res, any_bad = _summary(out["ranks"], out["own"], out["pvalues"], x, y, rel, k=k)
  if not validation.any_traced(x, y) and bool(any_bad):
    # One NaN policy with `tb.label_null`: a non-finite profile is refused, not ranked
    # last. The kernel's fused flag spares a host copy of the inputs when all is well.
    validation.check_no_nan(x, "predictions")
    validation.check_no_nan(y, "references")
  return res


def _poisoned(res: ArrayEvaluation, x, y, rel):
  """`(res poisoned, any query invalid)`: the traced counterpart of the value checks.

  A query is invalid when its prediction is not finite or it has no relevant
  candidate; every query is when a reference is not finite.
  """
  bad = ~jnp.all(jnp.isfinite(x), axis=1) | ~jnp.all(jnp.isfinite(y))
  if rel is not None:
    bad = bad | ~jnp.any(rel, axis=1)
  any_bad = jnp.any(bad)
  per_query = validation.poison((res.ranks, res.own_scores, res.pvalues), bad)
  summary = validation.poison(
      (res.curve, res.auc_f1, res.hit_at_k, res.mrr, res.mean_rank, res.normalized_rank),
      any_bad)
  return ArrayEvaluation(*per_query, res.correct & ~bad, *summary), any_bad


@functools.partial(jax.jit, static_argnames=("metric", "k", "ties", "single"))
def _evaluate_arrays(x, y, rel, *, metric, k, ties, single=None):
  """The jitted pipeline; `rel` may be None when `single` is ``"identity"``.

  Returns `(ArrayEvaluation, scalar bool: some query is invalid)`; invalid
  queries are poisoned (NaN).
  """
  # similarities in the input precision; ranks and counts in at least float32
  s = validation.at_least_float32(similarity_lib._similarity(x, y, metric=metric))
  cross = own_lib._cross(s, rel, single=single)
  scored = label_scoring.label_null_scores(s, cross, rel, k=k, ties=ties, single=single)
  return _summary(scored.ranks, scored.own_scores, scored.pvalues, x, y, rel, k=k)


@functools.partial(jax.jit, static_argnames=("k",))
def _summary(ranks, own_scores, pvalues, x, y, rel, *, k):
  """`(ArrayEvaluation, some query invalid)` from the per-query ranks, own scores, p-values."""
  correct = ranks <= k
  curve = auc_lib._auc_f1(pvalues, correct, jnp.ones_like(correct))
  if rel is None:
    n_other = jnp.full(ranks.shape, max(y.shape[0] - 1, 1), ranks.dtype)
  else:
    n_other = jnp.maximum(jnp.sum(~rel, axis=1), 1)
  res = ArrayEvaluation(
      ranks=ranks,
      own_scores=own_scores,
      pvalues=pvalues,
      correct=correct,
      curve=curve,
      auc_f1=curve.auc,
      hit_at_k=jnp.mean(correct.astype(ranks.dtype)),
      mrr=jnp.mean(1.0 / ranks),
      mean_rank=jnp.mean(ranks),
      normalized_rank=jnp.mean((ranks - 1.0) / n_other),
  )
  return _poisoned(res, x, y, rel)

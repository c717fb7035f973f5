"""Exact ranking metrics: the rank of the truth and the "at K" family (SPEC §2).

`truth_ranks` is the one primitive; hit@K, MRR and normalised rank are
functions of its output. recall/precision/F1@K count how many relevant
candidates reach the top K, which needs the position of every relevant
candidate, not only the best one.

NaN scores are treated as -inf: a NaN never ranks above a real score, and two
NaNs tie. Ranks and every metric here come out in at least float32 (scores in
bfloat16/float16 are upcast exactly before counting). Under `jit`, a query
without a relevant candidate, or an invalid rank (below 1, above its number
of non-relevant candidates plus one, or NaN) gives NaN for that query, and so a
NaN mean; eagerly these are `ValueError`s.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src import types
from twinbench_jax._src.core import checks
from twinbench_jax._src.core import validation

TIES = checks.TIES

_TIE_WEIGHT = {"average": 0.5, "optimistic": 0.0, "pessimistic": 1.0}

ReduceFn = types.ReduceFn


def _check_ranks(ranks: jax.Array, where: Optional[jax.Array], high: object = np.inf):
  """`([Q] ranks in at least float32, [Q] invalidity or None)`.

  Eagerly a rank below 1, above `high` (scalar or `[Q]`) or NaN among the
  queries in `where` is a `ValueError`; when anything is traced, the
  invalidity comes back to poison those queries.
  """
  r = validation.at_least_float32(validation.as_float_array(ranks, "ranks", ndim=1))
  mask = None if where is None else validation.as_bool_array(where, "where", ndim=1)
  if mask is not None:
    validation.check_same_shape(r, mask, "ranks", "where")
  if validation.any_traced(r, mask, high):
    return r, validation.out_of_range(r, 1.0, jnp.inf) | (r > high)
  arr, hi = np.asarray(r), np.broadcast_to(np.asarray(high), r.shape)
  bad = validation.out_of_range(arr, 1.0, np.inf, xp=np) | (arr > hi)
  if mask is not None:
    bad &= np.asarray(mask)
  if bad.any():
    q = int(np.flatnonzero(bad)[0])
    limit = ("finite" if np.ndim(high) == 0 else
             f"at most 1 + its number of non-relevant candidates ({hi[q]:g})")
    raise ValueError(f"`ranks` must be at least 1 (1 = best) and {limit}; found {arr[q]!r} at "
                     f"query {q} ({int(bad.sum())} bad value(s)).")
  return r, None


def truth_ranks(scores: types.ArrayLike, relevance: types.ArrayLike, *,
                ties: types.Ties = "average", where: Optional[jax.Array] = None,
                reduce_fn: ReduceFn = None) -> jax.Array:
  r"""Rank of the truth for every query (1 = best), SPEC §2.

  .. math::
     r_q = 1 + \#\{c \notin \mathrm{rel}_q : s_{qc} > s_{qc^*}\}
             + w \cdot \#\{c \notin \mathrm{rel}_q : s_{qc} = s_{qc^*}\}

  where :math:`c^*` is the best-scored relevant candidate (other relevant
  candidates never push the truth down) and the tie weight `w` is 1/2 for
  ``ties="average"`` (the expected rank under random tie-breaking), 0 for
  ``"optimistic"`` and 1 for ``"pessimistic"``.

  Args:
    scores: `[Q, C]` similarities, larger = closer. NaN counts as -inf.
    relevance: `[Q, C]` boolean; `True` where candidate `c` comes from the
      perturbation of query `q`. Every query needs at least one `True`
      (checked when the array is concrete; under `jit` such a query gets NaN).
    ties: ``"average"``, ``"optimistic"`` or ``"pessimistic"``.
    where: optional `[Q]` boolean mask of the queries that enter `reduce_fn`.
    reduce_fn: `None` (default) keeps the `[Q]` ranks; e.g. `jnp.mean` for the
      mean rank (over the queries in `where`).

  Returns:
    `[Q]` float ranks in `[1, 1 + #non-relevant]`, in at least float32 (the
    ranks of bfloat16 scores are those of the same values in float32), or
    their reduction.
  """
  s, rel = checks.check_scores_relevance(scores, relevance)
  checks.check_ties(ties)
  return reduce_queries(_truth_ranks(s, rel, ties=ties), where, reduce_fn)


@functools.partial(jax.jit, static_argnames=("ties",))
def _truth_ranks(s: jax.Array, rel: jax.Array, *, ties: str) -> jax.Array:
  # NaN counts as -inf. It is handled in the comparisons rather than by
  # rewriting `s` first, which XLA's CPU fusion makes several times slower.
  nan = jnp.isnan(s)
  best = jnp.max(jnp.where(rel & ~nan, s, -jnp.inf), axis=1, keepdims=True)
  # One float reduction of per-candidate weights (0, w or 1; exact in float32 up
  # to 2^24 candidates) runs several times faster on CPU than two boolean counts.
  tie = (s == best) | (nan & (best == -jnp.inf))
  weight = jnp.where(s > best, 1.0, jnp.where(tie, _TIE_WEIGHT[ties], 0.0))
  ranks = 1.0 + jnp.sum(jnp.where(rel, 0.0, weight).astype(s.dtype), axis=1)
  return jnp.where(jnp.any(rel, axis=1), ranks, jnp.nan)


@functools.partial(jax.jit, static_argnames=("ties",))
def _truth_ranks_identity(s: jax.Array, *, ties: str) -> jax.Array:
  """`_truth_ranks` for the identity relevance (truth of query q = candidate q, `Q == C`).

  The truth's score is the diagonal, so no masked maximum is needed: one pass
  over `s`, then the diagonal's own tie weight is taken back out.
  """
  nan = jnp.isnan(s)
  own = jnp.diagonal(s)
  own = jnp.where(jnp.isnan(own), -jnp.inf, own)[:, None]
  tie = (s == own) | (nan & (own == -jnp.inf))
  w = _TIE_WEIGHT[ties]
  weight = jnp.where(s > own, 1.0, jnp.where(tie, w, 0.0)).astype(s.dtype)
  return 1.0 - w + jnp.sum(weight, axis=1)


def reduce_queries(values: jax.Array, where: Optional[jax.Array], reduce_fn: ReduceFn
                   ) -> jax.Array:
  """`reduce_fn` of the `[Q]` per-query `values` over the queries in `where` (rax's convention).

  `reduce_fn=None` returns `values` as they are; a mean over no query is 0.
  `where` must be a `[Q]` boolean mask.
  """
  if where is not None:
    where = validation.as_bool_array(where, "where", ndim=1)
    if where.shape[0] != values.shape[0]:
      raise ValueError(f"`where` masks queries: it must have shape (Q,) = ({values.shape[0]},), "
                       f"got {tuple(where.shape)}")
  if reduce_fn is None:
    return values
  if where is None:
    return reduce_fn(values)
  if reduce_fn is jnp.mean:
    # A fully masked input gives 0, never NaN.
    n = jnp.sum(where)
    return jnp.where(n > 0, jnp.sum(jnp.where(where, values, 0.0)) / jnp.maximum(n, 1), 0.0)
  return reduce_fn(values[where])


def _poisoned(values: jax.Array, invalid: Optional[jax.Array]) -> jax.Array:
  return values if invalid is None else validation.poison(values, invalid)


@checks.keyword_k
def hit_at_k(ranks: types.ArrayLike, *, k: types.K, where: Optional[jax.Array] = None,
             reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """`1[r_q <= k]` per query, reduced by `reduce_fn` (mean; `None` keeps `[Q]`). SPEC §2.

  Ranks must be at least 1 and not NaN, and `k >= 1` (`ValueError`); under
  `jit` an invalid rank gives NaN for its query (and the mean).
  """
  checks.check_k(k)
  ranks, invalid = _check_ranks(ranks, where)
  if validation.any_traced(k):
    invalid = checks.k_invalid(k) if invalid is None else invalid | checks.k_invalid(k)
  return reduce_queries(_poisoned((ranks <= k).astype(ranks.dtype), invalid), where, reduce_fn)


def reciprocal_rank(ranks: jax.Array, *, where: Optional[jax.Array] = None,
                    reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """`1 / r_q` per query; its mean is the MRR. SPEC §2.

  Ranks must be at least 1 and not NaN (`ValueError`; NaN for that query under `jit`).
  """
  ranks, invalid = _check_ranks(ranks, where)
  return reduce_queries(_poisoned(1.0 / ranks, invalid), where, reduce_fn)


def normalized_rank(ranks: jax.Array, relevance: jax.Array, *,
                    where: Optional[jax.Array] = None,
                    reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """`(r_q - 1) / #non-relevant_q` in [0, 1], 0 = best (0 when nothing is non-relevant).

  Ranks must lie in `[1, 1 + #non-relevant_q]` (`ValueError`; NaN for that
  query under `jit`).
  """
  rel = validation.as_bool_array(relevance, "relevance", ndim=2)
  n_ranks = jnp.shape(ranks)[0] if jnp.ndim(ranks) == 1 else None
  if n_ranks is not None and rel.shape[0] != n_ranks:
    raise ValueError(f"`ranks` {tuple(jnp.shape(ranks))} and `relevance` {tuple(rel.shape)} "
                     "disagree on the number of queries")
  n_other_int = jnp.sum(~rel, axis=1)
  ranks, invalid = _check_ranks(ranks, where, high=1 + n_other_int)
  n_other = n_other_int.astype(ranks.dtype)
  values = jnp.where(n_other > 0, (ranks - 1.0) / jnp.maximum(n_other, 1), 0.0)
  return reduce_queries(_poisoned(values, invalid), where, reduce_fn)


@checks.keyword_k
def relevant_in_top_k(scores: types.ArrayLike, relevance: types.ArrayLike, *, k: types.K,
                      ties: types.Ties = "average", where: Optional[jax.Array] = None,
                      reduce_fn: ReduceFn = None) -> jax.Array:
  r"""`|top-K ∩ rel_q|` per query, `[Q]` float.

  Candidates scored strictly higher than a block of `m` tied candidates fill
  the first `g` places, so the block gets `t = clip(K - g, 0, m)` of the K
  places. With `r` relevant candidates in the block, it contributes
  `r t / m` with ``ties="average"`` (the expectation under random
  tie-breaking), `min(r, t)` with ``"optimistic"`` (relevant ones first) and
  `max(0, t - (m - r))` with ``"pessimistic"`` (relevant ones last). Without
  ties this is the number of relevant candidates among the K best, and it
  never exceeds `min(K, R_q)`.

  Under `jit` a query without a relevant candidate (eagerly a `ValueError`)
  gets NaN, and so does every query when a traced `k` is below 1.
  `reduce_fn=None` (default) returns the `[Q]` counts; otherwise their
  reduction over the queries in `where` (`[Q]` boolean).
  """
  return reduce_queries(_hits(scores, relevance, k, ties), where, reduce_fn)


def _hits(scores, relevance, k, ties):
  """`[Q]` checked `relevant_in_top_k` counts (poisoned where invalid under `jit`)."""
  s, rel = checks.check_scores_relevance(scores, relevance)
  checks.check_ties(ties)
  checks.check_k(k)
  hits = _relevant_in_top_k(s, rel, k=k, ties=ties)
  if validation.any_traced(rel, k):
    hits = validation.poison(hits, ~jnp.any(rel, axis=1) | checks.k_invalid(k))
  return hits


@functools.partial(jax.jit, static_argnames=("ties",))
def _relevant_in_top_k(s, rel, k, *, ties):
  s = validation.nan_to_neg_inf(s)
  dtype = s.dtype
  order = jnp.argsort(s, axis=1)
  sorted_s = jnp.take_along_axis(s, order, axis=1)
  sorted_rel = jnp.take_along_axis(rel, order, axis=1).astype(dtype)
  # cum_rel[i] = relevant candidates among the i lowest scores
  cum_rel = jnp.concatenate([jnp.zeros((s.shape[0], 1), dtype),
                             jnp.cumsum(sorted_rel, axis=1)], axis=1)
  c = s.shape[1]

  def block_share(row_sorted, row, cum):
    # per candidate: its tie block's contribution divided by the block's relevant count
    left = jnp.searchsorted(row_sorted, row, side="left")
    right = jnp.searchsorted(row_sorted, row, side="right")
    greater = (c - right).astype(dtype)
    m = (right - left).astype(dtype)
    r = cum[right] - cum[left]
    t = jnp.clip(k - greater, 0.0, m)
    if ties == "average":
      total = r * t / m
    elif ties == "optimistic":
      total = jnp.minimum(r, t)
    else:
      total = jnp.maximum(0.0, t - (m - r))
    return total / jnp.maximum(r, 1.0)

  share = jax.vmap(block_share)(sorted_s, s, cum_rel)
  return jnp.sum(jnp.where(rel, share, 0.0), axis=1)


@checks.keyword_k
def recall_at_k(scores: jax.Array, relevance: jax.Array, *, k: types.K,
                ties: types.Ties = "average", where: Optional[jax.Array] = None,
                reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """`|top-K ∩ rel_q| / R_q`, SPEC §2."""
  hits = _hits(scores, relevance, k, ties)
  n_rel = jnp.sum(jnp.asarray(relevance), axis=1)
  return reduce_queries(hits / jnp.maximum(n_rel, 1), where, reduce_fn)


@checks.keyword_k
def precision_at_k(scores: jax.Array, relevance: jax.Array, *, k: types.K,
                   ties: types.Ties = "average", where: Optional[jax.Array] = None,
                   reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """`|top-K ∩ rel_q| / K`, SPEC §2."""
  hits = _hits(scores, relevance, k, ties)
  return reduce_queries(hits / k, where, reduce_fn)


@checks.keyword_k
def f1_at_k(scores: jax.Array, relevance: jax.Array, *, k: types.K, ties: types.Ties = "average",
            where: Optional[jax.Array] = None, reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  """Harmonic mean of precision@K and recall@K per query, `2 h / (K + R_q)`. SPEC §2."""
  hits = _hits(scores, relevance, k, ties)
  n_rel = jnp.sum(jnp.asarray(relevance), axis=1)
  return reduce_queries(2.0 * hits / (k + n_rel), where, reduce_fn)


def top1_counts(scores: jax.Array, *, where: Optional[jax.Array] = None) -> jax.Array:
  """How often each candidate is ranked first across queries, `[C]` float.

  A query whose top score is shared by `n` candidates gives each of them `1/n`,
  so the counts always sum to the number of (unmasked) queries. A collapsed
  model sends every query to the same few "popular" candidates (SPEC §2).

  Args:
    scores: `[Q, C]` similarities.
    where: optional `[Q]` boolean mask of the queries to count.

  Returns:
    `[C]` counts in the dtype of `scores`, at least float32. There is no
    value to check (NaN scores count as -inf), so they never hold NaN.
  """
  s = validation.as_float_array(scores, "scores", ndim=2)
  dtype = jnp.promote_types(s.dtype, jnp.float32)  # counts in at least float32
  s = validation.nan_to_neg_inf(s)
  top = s == jnp.max(s, axis=1, keepdims=True)
  share = (top / jnp.sum(top, axis=1, keepdims=True)).astype(dtype)
  if where is not None:
    share = jnp.where(jnp.asarray(where)[:, None], share, 0.0)
  return jnp.sum(share, axis=0)


def gini(counts: jax.Array) -> jax.Array:
  r"""Gini coefficient of non-negative counts: 0 = spread evenly, `1 - 1/n` = all on one.

  .. math:: G = \frac{\sum_i \sum_j |x_i - x_j|}{2 n \sum_i x_i}

  computed from the sorted values in O(n log n), in at least float32. All-zero
  counts give 0. A negative or non-finite count is a `ValueError`; under
  `jit` it makes the result NaN.
  """
  c = validation.at_least_float32(validation.as_float_array(counts, "counts", ndim=1))
  validation.check_range(c, "counts", 0.0, np.inf)
  g = _gini(c)
  if validation.any_traced(c):
    g = validation.poison(g, jnp.any(validation.out_of_range(c, 0.0, jnp.inf)))
  return g


def _gini(c: jax.Array) -> jax.Array:
  x = jnp.sort(c)
  n = x.shape[0]
  total = jnp.sum(x)
  i = jnp.arange(1, n + 1, dtype=x.dtype)
  g = jnp.sum((2.0 * i - n - 1.0) * x) / jnp.maximum(n * total, jnp.finfo(x.dtype).tiny)
  return jnp.where(total > 0, g, 0.0)

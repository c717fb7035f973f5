"""Own scores: how well each prediction matches its own truth (SPEC §1, §3)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src.core import validation


def _relevance_weights(rel: jax.Array, dtype) -> jax.Array:
  # Row j: 1/R_j on the relevant candidates of query j, so `s @ w.T` averages them.
  rel = rel.astype(dtype)
  return rel / jnp.maximum(jnp.sum(rel, axis=1, keepdims=True), 1.0)


def _relevant_counts(rel: jax.Array, dtype) -> jax.Array:
  # `[Q]` R_q (at least 1, so an empty row gives 0 rather than NaN).
  return jnp.maximum(jnp.sum(rel, axis=-1), 1).astype(dtype)


def own_scores(scores: jax.Array, relevance: jax.Array) -> jax.Array:
  """`m_q`: mean similarity of prediction `q` to its relevant candidates, `[Q]`.

  The default own score of SPEC §1 (the similarity to the relevant candidate,
  averaged when there are several), in the precision of `scores`. A query
  without a relevant candidate is a `ValueError`; under `jit` its own score is NaN.
  """
  s = validation.as_float_array(scores, "scores", ndim=2)
  rel = validation.as_bool_array(relevance, "relevance", ndim=2)
  validation.check_same_shape(s, rel, "scores", "relevance")
  validation.check_every_query_has_relevant(rel)
  # `where` first: a NaN/inf score at a non-relevant candidate must not leak in (NaN * 0 = NaN).
  # Sum, then divide: equal sums stay exactly equal means (ties count in p-values).
  own = jnp.sum(jnp.where(rel, s, 0.0), axis=1) / _relevant_counts(rel, s.dtype)
  if validation.any_traced(rel):
    own = validation.poison(own, ~jnp.any(rel, axis=1))
  return own


def cross_own_scores(scores: jax.Array, relevance: jax.Array) -> jax.Array:
  """`[Q, Q]` own scores of every prediction against every query's truth.

  `out[i, j]` = mean similarity of prediction `i` to the relevant candidates of
  query `j`; its diagonal is `own_scores`. The input of
  `tb.label_permutation_pvalues`. A query without a relevant candidate is a
  `ValueError`; under `jit` its column is NaN.
  """
  s = validation.as_float_array(scores, "scores", ndim=2)
  rel = validation.as_bool_array(relevance, "relevance", ndim=2)
  validation.check_same_shape(s, rel, "scores", "relevance")
  validation.check_every_query_has_relevant(rel)
  cross = _cross(s, rel, single=single_relevant(rel))
  if validation.any_traced(rel):
    cross = validation.poison(cross, ~jnp.any(rel, axis=1)[None, :])
  return cross


def single_relevant(rel: jax.Array):
  """How a concrete `rel` relates queries to truths, as a static kernel option.

  ``"identity"``: query `q`'s only relevant candidate is `q`; True: exactly one
  relevant candidate per query; False: otherwise; None: `rel` is traced.
  """
  if not validation.is_concrete(rel):
    return None
  r = np.asarray(rel)
  if r.shape[0] == r.shape[1] and np.array_equal(r, np.eye(r.shape[0], dtype=bool)):
    return "identity"
  return bool(np.all(r.sum(axis=1) == 1))


@functools.partial(jax.jit, static_argnames=("single",))
def _cross(s, rel, single=None):
  gather = lambda: s[:, jnp.argmax(rel, axis=1)]
  average = lambda: _mean_over_truths(s, rel)
  # One relevant candidate per query (pseudobulk) is a gather, not a (Q, C, Q) matmul.
  if single == "identity":
    return s
  if single is None:
    return jax.lax.cond(jnp.all(jnp.sum(rel, axis=1) == 1), gather, average)
  return gather() if single else average()


def _mean_over_truths(s, rel):
  """`out[i, j]`: mean of `s[i]` over the relevant candidates of query `j`; a non-finite
  score only enters the means of the truths it belongs to."""
  def matmul(a, b):
    return jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)

  finite = jnp.isfinite(s)
  # NaN * 0 = NaN, so non-finite scores are zeroed here and put back below. Sum, then
  # divide (not a sum of s / R_j): equal sums stay exactly equal means, whatever the order.
  out = matmul(jnp.where(finite, s, 0.0), rel.astype(s.dtype)) / _relevant_counts(rel, s.dtype)

  def with_non_finite():
    relf = rel.astype(s.dtype)
    touches = lambda m: matmul(m.astype(s.dtype), relf) > 0  # noqa: E731
    pos, neg, nan = touches(s == jnp.inf), touches(s == -jnp.inf), touches(jnp.isnan(s))
    o = jnp.where(pos, jnp.inf, jnp.where(neg, -jnp.inf, out))
    return jnp.where(nan | (pos & neg), jnp.nan, o)

  return jax.lax.cond(jnp.all(finite), lambda: out, with_non_finite)

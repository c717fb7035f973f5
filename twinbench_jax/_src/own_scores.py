"""Own scores: how well each prediction matches its own truth (SPEC §1, §3)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src import validation


def _relevance_weights(rel: jax.Array, dtype) -> jax.Array:
  # Row j: 1/R_j on the relevant candidates of query j, so `s @ w.T` averages them.
  rel = rel.astype(dtype)
  return rel / jnp.maximum(jnp.sum(rel, axis=1, keepdims=True), 1.0)


def own_scores(scores: jax.Array, relevance: jax.Array) -> jax.Array:
  """`m_q`: mean similarity of prediction `q` to its relevant candidates, `[Q]`.

  The default own score of SPEC §1 (the similarity to the relevant candidate,
  averaged when there are several).
  """
  s = validation.as_float_array(scores, "scores", ndim=2)
  rel = validation.as_bool_array(relevance, "relevance", ndim=2)
  validation.check_same_shape(s, rel, "scores", "relevance")
  # `where` first: a NaN/inf score at a non-relevant candidate must not leak in (NaN * 0 = NaN).
  return jnp.sum(jnp.where(rel, s, 0.0) * _relevance_weights(rel, s.dtype), axis=1)


def cross_own_scores(scores: jax.Array, relevance: jax.Array) -> jax.Array:
  """`[Q, Q]` own scores of every prediction against every query's truth.

  `out[i, j]` = mean similarity of prediction `i` to the relevant candidates of
  query `j`; its diagonal is `own_scores`. The input of
  `tb.label_permutation_pvalues`.
  """
  s = validation.as_float_array(scores, "scores", ndim=2)
  rel = validation.as_bool_array(relevance, "relevance", ndim=2)
  validation.check_same_shape(s, rel, "scores", "relevance")
  return _cross(s, rel, single=single_relevant(rel))


def single_relevant(rel: jax.Array):
  """True/False when a concrete `rel` has exactly one relevant candidate per row; None if traced."""
  if not validation.is_concrete(rel):
    return None
  return bool(np.all(np.asarray(rel).sum(axis=1) == 1))


@functools.partial(jax.jit, static_argnames=("single",))
def _cross(s, rel, single=None):
  gather = lambda: s[:, jnp.argmax(rel, axis=1)]
  average = lambda: jnp.matmul(s, _relevance_weights(rel, s.dtype).T,
                               precision=jax.lax.Precision.HIGHEST)
  # One relevant candidate per query (pseudobulk) is a gather, not a (Q, C, Q) matmul.
  if single is None:
    return jax.lax.cond(jnp.all(jnp.sum(rel, axis=1) == 1), gather, average)
  return gather() if single else average()

"""Empirical and label-permutation p-values, and the Benjamini–Hochberg adjustment (SPEC §3).

A null score that equals the observed score counts as an exceedance (`>=`),
so a model whose output ignores its input gets `p = 1`. NaN counts as -inf on
both sides: a NaN observed score is beaten by every null score (p = 1), and a
NaN null score beats only another NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from twinbench_jax._src import validation


def exceedance_counts(scores: jax.Array, null_scores: jax.Array) -> jax.Array:
  """`#{b : null_scores[b] >= scores}`, int32 with the shape of `scores`.

  The building block of streamed nulls: counts from chunks of replicates add
  up, so the `[B, ...]` null never has to be held at once.
  """
  s = validation.nan_to_neg_inf(scores)
  n = validation.nan_to_neg_inf(null_scores)
  return jnp.sum(n >= s[None], axis=0, dtype=jnp.int32)


def pvalues_from_counts(counts: jax.Array, n_null: int) -> jax.Array:
  """`(1 + counts) / (n_null + 1)`: the empirical p-value, never zero (SPEC §3)."""
  return (1.0 + jnp.asarray(counts, jnp.result_type(float))) / (n_null + 1.0)


def empirical_pvalues(scores: jax.Array, null_scores: jax.Array) -> jax.Array:
  r"""Empirical p-values of observed scores against a replicate null (SPEC §3).

  .. math:: p = \frac{1 + \#\{b : s^b \ge s\}}{B + 1}

  Args:
    scores: observed scores of any shape `S`: own scores `[Q]` (query level)
      or similarities `[Q, C]` (candidate level).
    null_scores: `[B, *S]` scores of the same entries from `B >= 1` replicates
      with randomised inputs.

  Returns:
    p-values of shape `S`, in `[1/(B+1), 1]`.
  """
  s = validation.as_float_array(scores, "scores")
  n = validation.as_float_array(null_scores, "null_scores")
  if n.ndim != s.ndim + 1 or tuple(n.shape[1:]) != tuple(s.shape):
    raise ValueError(
        f"`null_scores` must have shape (B, *scores.shape) = (B, {', '.join(map(str, s.shape))})"
        f", got {tuple(n.shape)}")
  if n.shape[0] < 1:
    raise ValueError("`null_scores` has zero null replicates (B = 0); need B >= 1")
  return _empirical_pvalues(s, n)


@jax.jit
def _empirical_pvalues(s, n):
  return pvalues_from_counts(exceedance_counts(s, n), n.shape[0]).astype(s.dtype)


def label_permutation_pvalues(own_scores: jax.Array) -> jax.Array:
  r"""Exact label-permutation p-values, no model and no sampling (SPEC §3).

  Is prediction `q` closer to its own truth than the predictions made for
  the other perturbations are?

  .. math:: p_q = \#\{q' : m(x_{q'}, t_q) \ge m(x_q, t_q)\} / Q

  (q' runs over all queries, q included, so `p_q >= 1/Q`).

  Args:
    own_scores: `[Q, Q]`, `own_scores[i, j]` = own score of prediction `i`
      against the truth of query `j` (see `tb.cross_own_scores`).

  Returns:
    `[Q]` p-values in `[1/Q, 1]`.
  """
  m = validation.as_float_array(own_scores, "own_scores", ndim=2)
  if m.shape[0] != m.shape[1]:
    raise ValueError(f"`own_scores` must be square (Q, Q), got {tuple(m.shape)}")
  if m.shape[0] == 0:
    raise ValueError("`own_scores` is empty: need at least one query")
  return _label_permutation_pvalues(m)


@jax.jit
def _label_permutation_pvalues(m):
  # NaN counts as -inf, handled in the comparison rather than by rewriting `m`
  # first (a separate pass that XLA's CPU fusion does not fold in).
  own = validation.nan_to_neg_inf(jnp.diagonal(m))[None, :]
  exceed = (m >= own) | (jnp.isnan(m) & (own == -jnp.inf))
  return (jnp.sum(exceed.astype(m.dtype), axis=0) / m.shape[0]).astype(m.dtype)


def benjamini_hochberg(pvalues: jax.Array) -> jax.Array:
  r"""Benjamini–Hochberg adjusted p-values (q-values) of a 1-D vector.

  :math:`\tilde p_{(i)} = \min_{j \ge i} \min(1, n\, p_{(j)} / j)`, returned in
  the input order. A query is called at FDR level α when `\tilde p <= α`.
  """
  p = validation.as_float_array(pvalues, "pvalues", ndim=1)
  return _benjamini_hochberg(p)


@jax.jit
def _benjamini_hochberg(p):
  n = p.shape[0]
  order = jnp.argsort(p)
  ranked = p[order] * n / jnp.arange(1, n + 1, dtype=p.dtype)
  # running minimum from the largest p-value down keeps the adjustment monotone
  adjusted = jnp.minimum(jax.lax.cummin(ranked, reverse=True), 1.0)
  return jnp.empty_like(p).at[order].set(adjusted)


def fraction_called(pvalues: jax.Array, alpha: float = 0.05, *, adjust: str | None = None
                    ) -> jax.Array:
  """Fraction of p-values at or below `alpha` (``adjust="bh"``: after Benjamini–Hochberg)."""
  p = validation.as_float_array(pvalues, "pvalues")
  if adjust == "bh":
    p = benjamini_hochberg(p.reshape(-1))
  elif adjust is not None:
    raise ValueError(f"unknown `adjust` {adjust!r}; use None or 'bh'")
  return jnp.mean(p <= alpha)

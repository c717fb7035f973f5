"""Empirical and label-permutation p-values, and the Benjamini–Hochberg adjustment (SPEC §3).

A null score that equals the observed score counts as an exceedance (`>=`),
so a model whose output ignores its input gets `p = 1`. NaN is a failure to
score and always counts against the observed score (conservative): a NaN
observed score is beaten by every null score, NaN ones included (p = 1), and
a NaN null score beats every observed score, so a failed null (all NaN) gives
p = 1 everywhere and never makes a query significant. In the exact label
null (`label_permutation_pvalues`) the competitors are the model's own other
predictions, and a NaN among them counts as -inf (beats only a NaN own
score); `tb.evaluate_arrays` and `tb.label_null` refuse NaN predictions.

p-values, counts turned into p-values and adjusted p-values come out in at
least float32, whatever the precision of the scores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src.core import checks
from twinbench_jax._src.core import validation


def exceedance_counts(scores: jax.Array, null_scores: jax.Array) -> jax.Array:
  """`#{b : null_scores[b] >= scores}`, int32 with the shape of `scores`.

  The building block of streamed nulls: counts from chunks of replicates add
  up, so the `[B, ...]` null never has to be held at once. A NaN null score
  counts as an exceedance, and a NaN observed score is exceeded by every
  replicate (see the module docstring), so the counts have no invalid values
  and stay integers under `jit`.

  Args:
    scores: observed scores of any shape `S`.
    null_scores: `[B, *S]` null scores.
  """
  s, n = checks.check_scores_null(scores, null_scores, min_replicates=0)
  return _exceedance_counts(s, n)


def _exceedance_counts(s, n):
  s = validation.nan_to_neg_inf(s)
  return jnp.sum((n >= s[None]) | jnp.isnan(n), axis=0, dtype=jnp.int32)


def pvalues_from_counts(counts: jax.Array, n_null: int) -> jax.Array:
  """`(1 + counts) / (n_null + 1)`: the empirical p-value, never zero (SPEC §3).

  Args:
    counts: exceedance counts in `[0, n_null]` (any shape).
    n_null: the number of null replicates `B >= 1`.

  Returns:
    p-values of the shape of `counts`, float32 (float64 under x64). Eagerly a
    count outside `[0, n_null]` or `n_null < 1` is a `ValueError`; under `jit`
    those entries (all of them for a bad `n_null`) are NaN.
  """
  validation.check_scalar_range(n_null, "n_null", 1, np.inf)
  c = counts if isinstance(counts, (jax.Array, jax.core.Tracer)) else np.asarray(counts)
  if not (jnp.issubdtype(c.dtype, jnp.integer) or jnp.issubdtype(c.dtype, jnp.floating)):
    raise TypeError(f"`counts` must be numeric, got dtype {c.dtype}")
  c = jnp.asarray(c)
  validation.check_range(counts, "counts", 0, n_null if validation.is_concrete(n_null)
                         else np.inf)
  p = (1.0 + jnp.asarray(c, jnp.result_type(float))) / (n_null + 1.0)
  if validation.any_traced(c, n_null):
    p = validation.poison(p, validation.out_of_range(c, 0, n_null) | (jnp.asarray(n_null) < 1))
  return p


def empirical_pvalues(scores: jax.Array, null_scores: jax.Array) -> jax.Array:
  r"""Empirical p-values of observed scores against a replicate null (SPEC §3).

  .. math:: p = \frac{1 + \#\{b : s^b \ge s\}}{B + 1}

  Args:
    scores: observed scores of any shape `S`: own scores `[Q]` (query level)
      or similarities `[Q, C]` (candidate level).
    null_scores: `[B, *S]` scores of the same entries from `B >= 1` replicates
      with randomised inputs.

  Returns:
    p-values of shape `S`, in `[1/(B+1), 1]`, in at least float32. A NaN on
    either side counts against the observed score: a replicate with a NaN
    null score counts as an exceedance (an all-NaN null gives p = 1).
  """
  s, n = checks.check_scores_null(scores, null_scores)
  return _empirical_pvalues(s, n)


@jax.jit
def _empirical_pvalues(s, n):
  p = (1.0 + _exceedance_counts(s, n).astype(jnp.result_type(float))) / (n.shape[0] + 1.0)
  return p.astype(jnp.promote_types(s.dtype, jnp.float32))


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
    `[Q]` p-values in `[1/Q, 1]`, in at least float32.
  """
  m = validation.at_least_float32(validation.as_float_array(own_scores, "own_scores", ndim=2))
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

  A NaN p-value (a query that could not be tested) stays NaN, and the others
  are adjusted among themselves (`n` counts the non-NaN ones), as R's
  `p.adjust` does. A p-value outside [0, 1] is a `ValueError`; under `jit` it
  makes every output NaN. The result is in at least float32.
  """
  p = validation.at_least_float32(validation.as_float_array(pvalues, "pvalues", ndim=1))
  validation.check_range(p, "pvalues", 0.0, 1.0, nan_ok=True)
  q = _benjamini_hochberg(p)
  if validation.any_traced(p):
    q = validation.poison(q, jnp.any(validation.out_of_range(p, 0.0, 1.0, nan_ok=True)))
  return q


@jax.jit
def _benjamini_hochberg(p):
  n = p.shape[0]
  nan = jnp.isnan(p)
  n_tested = (n - jnp.sum(nan)).astype(p.dtype)
  order = jnp.argsort(p)  # NaN last
  ranked = p[order] * n_tested / jnp.arange(1, n + 1, dtype=p.dtype)
  # running minimum from the largest p-value down keeps the adjustment monotone;
  # the NaN entries (all after the others) must not enter it
  ranked = jnp.where(nan[order], jnp.inf, ranked)
  adjusted = jnp.minimum(jax.lax.cummin(ranked, reverse=True), 1.0)
  adjusted = jnp.where(nan[order], jnp.nan, adjusted)
  return jnp.empty_like(p).at[order].set(adjusted)


def fraction_called(pvalues: jax.Array, alpha: float = 0.05, *, adjust: str | None = None
                    ) -> jax.Array:
  """Fraction of p-values at or below `alpha` (``adjust="bh"``: after Benjamini–Hochberg).

  `alpha` must lie in [0, 1] and the p-values in [0, 1] (`ValueError`; under
  `jit` the result is NaN). A NaN p-value (an untested query) is never called
  but counts in the denominator.
  """
  p = validation.as_float_array(pvalues, "pvalues")
  if adjust not in (None, "bh"):
    raise ValueError(f"unknown `adjust` {adjust!r}; use None or 'bh'")
  validation.check_scalar_range(alpha, "alpha", 0.0, 1.0)
  validation.check_range(p, "pvalues", 0.0, 1.0, nan_ok=True)
  called = benjamini_hochberg(p.reshape(-1)) if adjust == "bh" else p
  frac = jnp.mean((called <= alpha).astype(jnp.promote_types(p.dtype, jnp.float32)))
  if validation.any_traced(p, alpha):
    alpha = jnp.asarray(alpha)
    invalid = (jnp.any(validation.out_of_range(p, 0.0, 1.0, nan_ok=True))
               | ~((alpha >= 0) & (alpha <= 1)))
    frac = validation.poison(frac, invalid)
  return frac

"""AUC-F1 "at p-value": the exact area under the F1(α) step curve (SPEC §4).

F1(α) only changes at observed p-values, so the integral over α in [0, 1] is a
finite sum over the sorted p-values. Under `jit` the shapes stay static:
duplicated p-values become zero-width steps instead of being deduplicated.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from twinbench_jax._src.core import sorting
from twinbench_jax._src.core import validation


class AucF1Result(NamedTuple):
  """The F1(α) curve and its area.

  The curve is a right-continuous step function: on `[alphas[i], alphas[i+1])`
  (the last step ends at α = 1) it equals `f1[i]`, and it is 0 below
  `alphas[0]`. Duplicated p-values give zero-width steps, so a value only
  "counts" at the last entry of a run of equal alphas.

  Attributes:
    auc: scalar, `∫_0^1 F1(α) dα`.
    alphas: `[N]` sorted p-values where the curve steps (N = Q for the query
      level, Q·C for the candidate level); masked entries sit at 1 with zero width.
    f1: `[N]` F1 at each step.
    precision: `[N]` precision at each step.
    recall: `[N]` recall at each step.
  """

  auc: jax.Array
  alphas: jax.Array
  f1: jax.Array
  precision: jax.Array
  recall: jax.Array


def _step_area(alphas_sorted: jax.Array, values: jax.Array) -> jax.Array:
  """`Σ_i values[i] (a_{i+1} - a_i)` with `a_{N} = 1`; alphas above 1 are clipped."""
  a = jnp.minimum(alphas_sorted, 1.0)
  nxt = jnp.concatenate([a[1:], jnp.ones((1,), a.dtype)])
  return jnp.sum(values * jnp.maximum(nxt - a, 0.0))


def _checked_pvalues(pvalues, labels, labels_name, where, ndim):
  """`(p-values in at least float32, boolean labels, boolean mask)` of one `ndim`-D shape.

  `labels` is `correct` `[Q]` or `relevance` `[Q, C]`; p-values under a False
  of `where` are not checked (they are left out).
  """
  p = validation.at_least_float32(validation.as_float_array(pvalues, "pvalues", ndim=ndim))
  lab = validation.as_bool_array(labels, labels_name, ndim=ndim)
  validation.check_same_shape(p, lab, "pvalues", labels_name)
  mask = jnp.ones(p.shape, bool) if where is None else validation.as_bool_array(
      where, "where", ndim=ndim)
  validation.check_same_shape(p, mask, "pvalues", "where")
  validation.check_pvalues(p if where is None else jnp.where(mask, p, 1.0))
  return p, lab, mask


def auc_f1(pvalues: jax.Array, correct: jax.Array, *,
           where: Optional[jax.Array] = None) -> AucF1Result:
  r"""Query-level AUC-F1 (SPEC §4).

  A query is *called* at α when `p_q <= α` and *correct* when its truth is
  ranked within the top k (`correct = tb.truth_ranks(...) <= k`). Every query
  is a positive, so with `Q` queries:

  .. math::
     TP(α) = \#\{q : p_q \le α,\ \mathrm{correct}_q\}, \quad
     F1(α) = \frac{2\,TP(α)}{\#\{q : p_q \le α\} + Q}, \quad
     \mathrm{AUC} = \int_0^1 F1(α)\,dα .

  Computed exactly from the sorted p-values (no α grid). With `B` null
  replicates the area lies in `[0, 1 - 1/(B+1)]`; a model whose output
  ignores its input (all `p = 1`) scores 0.

  Args:
    pvalues: `[Q]` p-values in (0, 1].
    correct: `[Q]` boolean.
    where: optional `[Q]` boolean mask; masked queries are left out entirely
      (not called, not counted in `Q`).

  Returns:
    An `AucF1Result` with curves of length `Q`, in at least float32. Under
    `jit`, a p-value outside (0, 1] (or NaN) among the unmasked queries makes
    every field NaN (eagerly it is a `ValueError`).
  """
  # masked queries are left out entirely, placeholder p-values included
  p, ok, mask = _checked_pvalues(pvalues, correct, "correct", where, 1)
  result = _auc_f1(p, ok, mask)
  if validation.any_traced(p, mask):
    result = validation.poison(result, jnp.any(validation.out_of_range(p, 0.0, 1.0, low_open=True)
                                               & mask))
  return result


@jax.jit
def _auc_f1(p, ok, mask):
  dtype = p.dtype
  p = jnp.where(mask, p, jnp.inf)  # masked queries sort last and are never called
  order = sorting.stable_argsort(p)
  alphas = p[order]
  valid = mask[order]
  n_pos = jnp.sum(mask).astype(dtype)
  called = jnp.cumsum(valid).astype(dtype)
  tp = jnp.cumsum(ok[order] & valid).astype(dtype)
  f1 = jnp.where(n_pos > 0, 2.0 * tp / (called + n_pos), 0.0)
  precision = tp / jnp.maximum(called, 1.0)
  recall = jnp.where(n_pos > 0, tp / jnp.maximum(n_pos, 1.0), 0.0)
  alphas = jnp.minimum(alphas, 1.0)
  return AucF1Result(_step_area(alphas, f1), alphas, f1, precision, recall)


def candidate_auc_f1(pvalues: jax.Array, relevance: jax.Array, *,
                     where: Optional[jax.Array] = None) -> AucF1Result:
  r"""Candidate-level AUC-F1 for ready score matrices (SPEC §4).

  For query `q` the retrieved list at α is `{c : p[q, c] <= α}` and

  .. math::
     F1_q(α) = \frac{2\,|\mathrm{retrieved} \cap \mathrm{rel}_q|}{|\mathrm{retrieved}| + R_q},
     \qquad F1(α) = \frac{1}{Q}\sum_q F1_q(α).

  The area is exact: each query's curve changes at its own sorted p-values,
  and the mean curve is rebuilt by merging the per-query steps in global
  α order. precision_q(α) is 0 while nothing is retrieved for query `q`.

  Args:
    pvalues: `[Q, C]` entry-wise p-values in (0, 1].
    relevance: `[Q, C]` boolean; every query needs a relevant candidate.
    where: optional `[Q, C]` boolean mask of the candidates that exist for each
      query (masked entries are never retrieved and never relevant).

  Returns:
    An `AucF1Result` with curves of length `Q * C`, in at least float32. Under
    `jit`, an unmasked p-value outside (0, 1] or a query without a relevant
    (unmasked) candidate makes every field NaN (eagerly a `ValueError`).
  """
  p, rel, mask = _checked_pvalues(pvalues, relevance, "relevance", where, 2)
  validation.check_every_query_has_relevant(rel & mask, "relevance (after `where`)")
  result = _candidate_auc_f1(p, rel, mask)
  if validation.any_traced(p, rel, mask):
    bad_p = validation.out_of_range(p, 0.0, 1.0, low_open=True) & mask
    result = validation.poison(result, jnp.any(bad_p) | ~jnp.all(jnp.any(rel & mask, axis=1)))
  return result


@jax.jit
def _candidate_auc_f1(p, rel, mask):
  dtype = p.dtype
  n_q, n_c = p.shape
  rel = rel & mask
  p = jnp.where(mask, p, jnp.inf)
  n_rel = jnp.sum(rel, axis=1).astype(dtype)[:, None]

  # Per query: the curves at each of its own sorted p-values ...
  order = jnp.argsort(p, axis=1)
  p_sorted = jnp.take_along_axis(p, order, axis=1)
  rel_sorted = jnp.take_along_axis(rel, order, axis=1)
  valid = jnp.take_along_axis(mask, order, axis=1)
  retrieved = jnp.cumsum(valid, axis=1).astype(dtype)
  tp = jnp.cumsum(rel_sorted & valid, axis=1).astype(dtype)
  f1 = 2.0 * tp / (retrieved + n_rel)
  precision = tp / jnp.maximum(retrieved, 1.0)
  recall = tp / jnp.maximum(n_rel, 1.0)

  # ... turned into increments, merged over queries in global α order.
  def increments(curve):
    return jnp.diff(curve, axis=1, prepend=jnp.zeros((n_q, 1), dtype)).reshape(-1)

  flat_alpha = p_sorted.reshape(-1)
  glob = jnp.argsort(flat_alpha)
  alphas = jnp.minimum(flat_alpha[glob], 1.0)
  curves = [jnp.cumsum(increments(c)[glob]) / n_q for c in (f1, precision, recall)]
  # The area is linear in the curve: the mean of per-query areas avoids the
  # rounding drift of a cumulative sum over Q·C increments.
  auc = jnp.mean(jax.vmap(_step_area)(p_sorted, f1))
  return AucF1Result(auc, alphas, *curves)

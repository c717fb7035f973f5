"""Soft F1 curve and soft AUC-F1 (SPEC §4–5): the smooth area under the F1-at-p-value curve."""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from twinbench_jax._src import types
from twinbench_jax._src.core import checks
from twinbench_jax._src.core import validation
from twinbench_jax._src.soft import pvalues as soft_pvalues
from twinbench_jax._src.soft import ranks as soft_ranks
from twinbench_jax._src.soft import temperatures

# Breakpoints whose soft F1 is computed at once in the sorted-step area.
DEFAULT_ALPHA_CHUNK = 1024


def soft_f1_curve(alphas: jax.Array, pvalues: jax.Array, hits: jax.Array, *, n_null: int,
                  temperature: Any = temperatures.DEFAULT_TEMPERATURE,
                  alpha_chunk: int = DEFAULT_ALPHA_CHUNK) -> jax.Array:
  r"""Soft query-level F1(α) at each α (SPEC §4–5).

  .. math::
     \tilde F_1(\alpha) = \frac{2 \sum_q \tilde c_q(\alpha)\, \tilde h_q}
                               {\sum_q \tilde c_q(\alpha) + Q}

  with the soft calls :math:`\tilde c_q(\alpha)` of `soft_called` and the soft
  hits :math:`\tilde h_q`.

  Args:
    alphas: `[A]` levels.
    pvalues: `[Q]` (soft) p-values.
    hits: `[Q]` (soft) hits in [0, 1].
    n_null: `B` (sets the p-value resolution, see `soft_called`).
    temperature: τ_α in units of `1/(B+1)`.
    alpha_chunk: levels processed at a time (memory `alpha_chunk · Q`).

  Returns:
    `[A]` soft F1 values; under `jit`, all NaN when an input holds a
    non-finite value.
  """
  a = validation.as_float_array(alphas, "alphas", ndim=1)
  p = validation.as_float_array(pvalues, "pvalues", ndim=1)
  h = validation.as_float_array(hits, "hits", ndim=1)
  validation.check_same_shape(p, h, "pvalues", "hits")
  for x, name in ((a, "alphas"), (p, "pvalues"), (h, "hits")):
    validation.check_no_nan(x, name)
  checks.check_positive_int(n_null, "n_null")
  checks.check_positive_int(alpha_chunk, "alpha_chunk")
  tau = checks.check_positive(temperature, "temperature")
  out = _soft_f1_curve(a, p, h, 1.0 / (n_null + 1.0), tau, alpha_chunk)
  if validation.any_traced(a, p, h):
    out = validation.poison(out, ~(_all_finite(a) & _all_finite(p) & _all_finite(h)))
  return out


def _soft_f1_curve(alphas, p, hits, h, tau, chunk):
  n_q = p.shape[0]

  def f1(a):  # [n] levels -> [n] F1
    called = soft_pvalues.called_ramp(p[None, :], a[:, None], h, tau)
    tp = jnp.sum(called * hits[None, :], axis=1)
    return 2.0 * tp / (jnp.sum(called, axis=1) + n_q)

  n_a = alphas.shape[0]
  if n_a <= chunk:
    return f1(alphas)
  n_blocks = -(-n_a // chunk)
  padded = jnp.pad(alphas, (0, n_blocks * chunk - n_a), constant_values=1.0)
  # checkpoint: the backward pass recomputes each block's [chunk, Q] calls
  # instead of storing all Q x Q of them.
  out = jax.lax.map(jax.checkpoint(f1), padded.reshape(n_blocks, chunk))
  return out.reshape(-1)[:n_a]


def soft_auc_f1(scores: jax.Array, relevance: jax.Array, own_scores: jax.Array,
                null_own_scores: jax.Array, *, k: float = 1,
                temperature: temperatures.Temperature = temperatures.DEFAULT_TEMPERATURE,
                relative: types.Relative = True, alpha_grid: Optional[int] = None,
                alpha_chunk: int = DEFAULT_ALPHA_CHUNK) -> jax.Array:
  r"""Differentiable query-level AUC-F1 (SPEC §5, §8).

  Soft rank → soft hit, soft p-value, soft calls, soft F1(α), and the area

  .. math::
     \widetilde{AUC} = \sum_{j=1}^{Q} \tilde F_1(a_j)\,(a_{j+1} - a_j),
     \qquad a_1 \le \dots \le a_Q \text{ the sorted soft p-values},\ a_{Q+1} = 1 .

  As every temperature goes to 0 this equals
  ``tb.auc_f1(tb.empirical_pvalues(own_scores, null_own_scores),
  tb.truth_ranks(scores, relevance) <= k).auc``. The temperature units and
  the limits at exact ties: ``docs/soft_relaxation.md``. Gradients flow into
  `scores`, `own_scores` and `null_own_scores` (the model's predictions on real
  and on randomised inputs); they are finite everywhere and vanish as the
  temperatures go to 0. At the default temperatures the value tracks the hard
  metric (``docs/soft_relaxation.md``).

  Args:
    scores: `[Q, C]` similarities of the predictions to the candidates.
    relevance: `[Q, C]` boolean; every query needs a relevant candidate.
    own_scores: `[Q]` own scores `m_q` of the predictions.
    null_own_scores: `[B, Q]` own scores of the predictions from randomised
      inputs, `B >= 1`.
    k: a query is correct when its truth ranks within the top `k`.
    temperature: a positive scalar for every step, or per step as a
      `SoftTemperatures`, a `(rank, hit, p, alpha)` tuple or a dict.
    relative: True or ``"local"`` (default): τ_rank and τ_p are fractions of
      each query's local gaps (under `stop_gradient`); ``"global"``: of the
      score spreads over all candidates and replicates; False: score units.
    alpha_grid: `None` (default) for the sorted-step area; an integer `n` for
      the midpoint rule on the fixed grid `α_i = (i + 1/2)/n` instead (does not
      converge to the exact area; for comparison).
    alpha_chunk: with `alpha_grid`, grid levels whose F1 is evaluated at a time
      (memory `alpha_chunk · Q`); the sorted-step area needs no chunks.

  Returns:
    A scalar in `[0, 1)`. Under `jit`, NaN when a query has no relevant
    candidate or an input holds a non-finite value.

  Example:
    >>> import jax, twinbench_jax as tb
    >>> s = jax.random.normal(jax.random.key(0), (8, 8))
    >>> rel = jax.numpy.eye(8, dtype=bool)
    >>> m, mb = jax.numpy.diagonal(s), jax.random.normal(jax.random.key(1), (20, 8))
    >>> soft = tb.soft_auc_f1(s, rel, m, mb, temperature=1e-5)
    >>> hard = tb.auc_f1(tb.empirical_pvalues(m, mb), tb.truth_ranks(s, rel) <= 1).auc
    >>> bool(abs(soft - hard) < 1e-4)
    True
  """
  s, rel = checks.check_scores_relevance(scores, relevance, upcast=False)
  m, mb = checks.check_scores_null(own_scores, null_own_scores, "own_scores", "null_own_scores")
  if m.ndim != 1 or m.shape[0] != s.shape[0]:
    raise ValueError(f"`own_scores` must have shape (Q,) = ({s.shape[0]},), got {tuple(m.shape)}")
  checks.check_k(k)
  checks.check_positive_int(alpha_chunk, "alpha_chunk")
  if alpha_grid is not None and (int(alpha_grid) != alpha_grid or alpha_grid < 1):
    raise ValueError(f"`alpha_grid` must be None or a positive integer, got {alpha_grid!r}")
  for x, name in ((s, "scores"), (m, "own_scores"), (mb, "null_own_scores")):
    validation.check_no_nan(x, name)
  checks.check_relative(relative)
  dtype = jnp.result_type(s.dtype, m.dtype, mb.dtype)
  # In the scores' precision: float32 inputs stay float32 under jax_enable_x64.
  temps = temperatures.SoftTemperatures(
      *(t.astype(dtype) for t in temperatures.resolve_temperatures(temperature)))
  out = soft_auc_f1_kernel(s.astype(dtype), rel, m.astype(dtype), mb.astype(dtype), temps,
                           jnp.asarray(k, dtype), relative=relative, alpha_grid=alpha_grid,
                     alpha_chunk=alpha_chunk)
  if validation.any_traced(s, rel, m, mb):
    out = validation.poison(out, invalid_inputs(s, rel, m, mb))
  return out


def invalid_inputs(s, rel, m, mb):
  """Scalar: a query without a relevant candidate, or a non-finite score (the traced check)."""
  return ~(jnp.all(jnp.any(rel, axis=1)) & _all_finite(s) & _all_finite(m) & _all_finite(mb))


def _all_finite(x):
  return jnp.all(jnp.isfinite(x))


@functools.partial(jax.jit, static_argnames=("relative", "alpha_grid", "alpha_chunk"))
def soft_auc_f1_kernel(s, rel, m, mb, temps, k, *, relative, alpha_grid, alpha_chunk):
  """Unchecked kernel of `soft_auc_f1`; also the core of the training loss."""
  return soft_auc_f1_in_units(s, rel, m, mb, temps, k, temperatures.rank_unit(s, rel, relative),
                              temperatures.p_unit(m, mb, relative), alpha_grid=alpha_grid,
                              alpha_chunk=alpha_chunk)


def soft_auc_f1_in_units(s, rel, m, mb, temps, k, rank_unit, p_unit, *, alpha_grid=None,
                         alpha_chunk=DEFAULT_ALPHA_CHUNK):
  """`soft_auc_f1_kernel` with the temperature units given (constants: what `grad` sees)."""
  r = soft_ranks.soft_ranks_at(s, rel, temps.rank * rank_unit)
  hits = soft_ranks.soft_hit(r, k, temps.hit)
  p = soft_pvalues.soft_pvalues_at(m, mb, temps.p * p_unit)
  h = 1.0 / (mb.shape[0] + 1.0)
  if alpha_grid is not None:
    grid = (jnp.arange(alpha_grid, dtype=p.dtype) + 0.5) / alpha_grid
    return jnp.mean(_soft_f1_curve(grid, p, hits, h, temps.alpha, alpha_chunk))
  return sorted_step_area(p, hits, h, temps.alpha)


def sorted_step_area(p, hits, h, tau):
  """`Σ_j F̃1(a_j)(a_{j+1} - a_j)` over the sorted soft p-values `a`, in `O(Q log Q)`.

  Hard order, soft values: the breakpoints move with the p-values. The ramp
  call of breakpoint `a_j` is 1 below `lo_j = a_j + h/2 - τh`, 0 above
  `hi_j = lo_j + 2τh` and `(hi_j - p)/(2τh)` between, so its sums over the
  queries are prefix sums of `1`, `x`, `p` and `p·x` (x = hits) in sorted order
  between two `searchsorted` positions: the same values as the dense `[Q, Q]`
  calls of `soft_f1_curve`.
  """
  order = jnp.argsort(jax.lax.stop_gradient(p))
  a, x = p[order], hits[order]
  width = jnp.concatenate([a[1:], jnp.ones((1,), a.dtype)]) - a
  prefix = lambda v: jnp.concatenate([jnp.zeros((1,), v.dtype), jnp.cumsum(v)])
  ones, px = prefix(jnp.ones_like(a)), prefix(a * x)
  xs, ps = prefix(x), prefix(a)
  lo, hi = a + (0.5 - tau) * h, a + (0.5 + tau) * h
  a_const = jax.lax.stop_gradient(a)
  i_lo = jnp.searchsorted(a_const, jax.lax.stop_gradient(lo), side="right")
  i_hi = jnp.maximum(jnp.searchsorted(a_const, jax.lax.stop_gradient(hi), side="left"), i_lo)

  def called_sum(c, cp):  # Σ_q call_jq v_q, from prefix sums c of v and cp of p·v
    return c[i_lo] + (hi * (c[i_hi] - c[i_lo]) - (cp[i_hi] - cp[i_lo])) / (2.0 * tau * h)

  f1 = 2.0 * called_sum(xs, px) / (called_sum(ones, ps) + p.shape[0])
  return jnp.sum(f1 * width)

"""Soft empirical p-values and soft calls at α (SPEC §5): smooth p-values and `p <= α`."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from twinbench_jax._src import types
from twinbench_jax._src.core import checks
from twinbench_jax._src.core import validation
from twinbench_jax._src.soft import temperatures

def soft_empirical_pvalues(scores: jax.Array, null_scores: jax.Array, *,
                           temperature: Any = temperatures.DEFAULT_TEMPERATURE,
                           relative: types.Relative = True) -> jax.Array:
  r"""Soft empirical p-values (SPEC §5), the smooth `tb.empirical_pvalues`.

  .. math::
     \tilde p = \frac{1 + \sum_b \sigma\!\left(\frac{m^b - m}{\tau}\right)}{B + 1},
     \qquad \tau = \tau_p \cdot g

  with :math:`g` the local gap: the mean distance from `m` to its nearest
  null score above and below (under `stop_gradient`). An exact
  tie `m^b = m` counts 1, as the hard `>=` does (a plain sigmoid would count
  1/2), with the sigmoid's slope as its gradient: a model that ignores its
  input ties every replicate and gets `p = 1` exactly, and still a gradient
  away from that collapse. As τ_p → 0 this is `tb.empirical_pvalues`.

  Args:
    scores: observed scores `m` of any shape `S` (own scores `[Q]`).
    null_scores: `[B, *S]` null scores, `B >= 1`.
    temperature: τ_p, a positive scalar.
    relative: True or ``"local"`` (default): τ_p is a fraction of each
      observed score's local gap; ``"global"``: of
      `own_score_spread(scores, null_scores)`; False: in score units.

  Returns:
    Soft p-values of shape `S` in `(1/(B+1), 1)`. Under `jit`, NaN where the
    observed score or one of its null scores is not finite.
  """
  m, mb = checks.check_scores_null(scores, null_scores, "scores", "null_scores")
  validation.check_no_nan(m, "scores")
  validation.check_no_nan(mb, "null_scores")
  tau = checks.check_positive(temperature, "temperature")
  checks.check_relative(relative)
  out = _soft_pvalues(m, mb, tau, relative=relative)
  if validation.any_traced(m, mb):
    out = validation.poison(out, ~jnp.isfinite(m) | ~jnp.all(jnp.isfinite(mb), axis=0))
  return out


@functools.partial(jax.jit, static_argnames=("relative",))
def _soft_pvalues(m, mb, tau_p, *, relative):
  return soft_pvalues_at(m, mb, tau_p * temperatures.p_unit(m, mb, relative))


def soft_pvalues_at(m, mb, tau):
  """Soft p-values at a temperature `tau` in score units."""
  d = mb - m[None]
  exceed = jax.nn.sigmoid(d / tau)
  # an exact tie is an exceedance (`>=`): value 1, the sigmoid's gradient
  exceed = jnp.where(d == 0, exceed + jax.lax.stop_gradient(1.0 - exceed), exceed)
  return (1.0 + jnp.sum(exceed, axis=0)) / (mb.shape[0] + 1.0)


def soft_called(pvalues: jax.Array, alpha: Any, *, n_null: int,
                temperature: Any = temperatures.DEFAULT_TEMPERATURE) -> jax.Array:
  r"""Soft `1[p <= α]`: a linear ramp from 1 to 0 over `p ∈ α + h/2 ± τ_α h`, `h = 1/(B+1)`.

  :math:`\mathrm{clip}((\alpha + h/2 - \tilde p) / (2 \tau_\alpha h) + 1/2, 0, 1)`.
  The half-step shift `h/2` counts a p-value that sits exactly at α as called
  (the hard `<=`) while still rejecting the next p-value on the grid, `h` above;
  with τ_α < 1/2 both are exact. Piecewise linear, so that the sorted-step area
  sums the calls of all breakpoints with prefix sums in `O(Q log Q)`.

  Args:
    pvalues: (soft) p-values, any shape.
    alpha: the level(s), broadcastable against `pvalues`.
    n_null: `B`, the number of null replicates behind the p-values (use `Q - 1`
      for label-permutation p-values, whose resolution is `1/Q`).
    temperature: τ_α in units of `h`.

  Returns:
    Values in [0, 1] of the broadcast shape.
  """
  p = validation.as_float_array(pvalues, "pvalues")
  checks.check_positive_int(n_null, "n_null")
  tau = checks.check_positive(temperature, "temperature")
  return called_ramp(p, jnp.asarray(alpha, p.dtype), 1.0 / (n_null + 1.0), tau)


def called_ramp(p, alpha, h, tau):
  return jnp.clip((alpha + 0.5 * h - p) / (2.0 * tau * h) + 0.5, 0.0, 1.0)

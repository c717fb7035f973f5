"""Temperatures of the soft AUC-F1 (SPEC §5): one per smooth step, and the units they scale.

A relative temperature is a fraction of a unit measured on the data under
`stop_gradient`: the local gap around each truth (ranks) or each own score
(p-values) by default, a spread over all scores with ``relative="global"``
(``docs/soft_relaxation.md``).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from twinbench_jax._src import types
from twinbench_jax._src.core import checks
from twinbench_jax._src.core import validation

DEFAULT_TEMPERATURE = 0.1


class SoftTemperatures(NamedTuple):
  """One temperature per smooth step (SPEC §5); units in ``docs/soft_relaxation.md``.

  Attributes:
    rank: soft rank of the truth; a fraction of the local gap around each
      truth (``relative=True``).
    hit: soft hit at k; in rank units.
    p: soft empirical p-value; a fraction of the local gap between each
      observed own score and its nearest null scores (``relative=True``).
    alpha: soft call at α; in units of the p-value resolution `1/(B+1)`.
  """

  rank: Any = DEFAULT_TEMPERATURE
  hit: Any = DEFAULT_TEMPERATURE
  p: Any = DEFAULT_TEMPERATURE
  alpha: Any = DEFAULT_TEMPERATURE


Temperature = types.Temperature  # or a `SoftTemperatures`


def resolve_temperatures(temperature: Temperature) -> SoftTemperatures:
  """Turns a temperature spec into a `SoftTemperatures` of scalar arrays.

  Args:
    temperature: a positive scalar (every step), a `SoftTemperatures`, a
      4-sequence `(rank, hit, p, alpha)`, or a mapping with any of the keys
      ``"rank"``, ``"hit"``, ``"p"``, ``"alpha"`` (missing keys take the default
      0.1). Values may be traced, so an annealing schedule does not recompile.

  Returns:
    A `SoftTemperatures` whose fields are positive scalar arrays.
  """
  if isinstance(temperature, SoftTemperatures):
    temps = temperature
  elif isinstance(temperature, Mapping):
    unknown = sorted(set(temperature) - set(SoftTemperatures._fields))
    if unknown:
      raise ValueError(f"unknown `temperature` keys {unknown}; use "
                       f"{list(SoftTemperatures._fields)}")
    temps = SoftTemperatures(**temperature)
  elif isinstance(temperature, (tuple, list)):
    if len(temperature) != 4:
      raise ValueError("`temperature` as a sequence needs 4 values (rank, hit, p, alpha), got "
                       f"{len(temperature)}")
    temps = SoftTemperatures(*temperature)
  else:
    temps = SoftTemperatures(*(temperature,) * 4)
  return SoftTemperatures(*(checks.check_positive(v, f"temperature.{name}")
                            for name, v in zip(SoftTemperatures._fields, temps)))


def _mean_abs_dev(x: jax.Array, axis=None) -> jax.Array:
  return jnp.mean(jnp.abs(x - jnp.mean(x, axis=axis, keepdims=True)), axis=axis)


def _nonzero_or_one(spread: jax.Array) -> jax.Array:
  spread = jax.lax.stop_gradient(spread)
  return jnp.where(spread > 0, spread, jnp.ones_like(spread))


def score_spread(scores: jax.Array) -> jax.Array:
  """The unit of a relative τ_rank: per-query mean absolute deviation, averaged.

  `mean_q mean_c |s_qc - mean_c' s_qc'|` of a `[Q, C]` score matrix, under
  `stop_gradient`; 1 when every row is constant.
  """
  s = validation.as_float_array(scores, "scores", ndim=2)
  return _score_spread(s)


def _score_spread(s):
  return _nonzero_or_one(jnp.mean(_mean_abs_dev(s, axis=1)))


def _mode(relative):
  """'local' (True), 'global' or None (False): what a relative temperature is a fraction of."""
  return "local" if relative is True else (relative or None)


def _local_gap(d, valid, axis=1):
  """Local gap along `axis` of `d` (differences to a reference value).

  The mean of the smallest positive `d` and the smallest `|d|` among `d <= 0`
  over the valid entries (one of them when the other side is empty; 0 when
  both are): the distance to the nearest neighbour above and below, two
  reductions (a top-k selection costs 10x more on CPU)."""
  d = jax.lax.stop_gradient(d)
  above = jnp.min(jnp.where(valid & (d > 0), d, jnp.inf), axis=axis)
  below = jnp.min(jnp.where(valid & (d <= 0), -d, jnp.inf), axis=axis)
  has_above, has_below = jnp.isfinite(above), jnp.isfinite(below)
  total = jnp.where(has_above, above, 0.0) + jnp.where(has_below, below, 0.0)
  return total / jnp.maximum(has_above.astype(d.dtype) + has_below, 1.0)


def rank_unit(s, rel, relative):
  """Unit of τ_rank: `[Q, 1]` local gaps around each truth, or a scalar."""
  mode = _mode(relative)
  if mode is None:
    return jnp.ones((), s.dtype)
  if mode == "global":
    return _score_spread(s)
  best = jnp.max(jnp.where(rel, s, -jnp.inf), axis=1, keepdims=True)
  gap = _local_gap(s - best, ~rel)
  # a truth tied with its nearest neighbours: the mean positive gap (O(Q), no [Q, C] pass)
  return _fill_zero_gaps(gap, jnp.ones((), s.dtype))[:, None]


def _fill_zero_gaps(gap, fallback):
  """Zero gaps replaced by the mean positive gap, or by `fallback` when there is none."""
  positive = gap > 0
  n = jnp.sum(positive)
  mean = jnp.sum(jnp.where(positive, gap, 0.0)) / jnp.maximum(n, 1)
  return jnp.where(positive, gap, jnp.where(n > 0, mean, fallback))


def own_score_spread(own_scores: jax.Array, null_own_scores: jax.Array) -> jax.Array:
  """The unit of a relative τ_p: mean absolute deviation of all own scores, observed and null.

  Pooled over queries and replicates (a per-query spread would vanish for a
  model that ignores its input, exactly where a gradient is needed); under
  `stop_gradient`; 1 when every value is equal.
  """
  m = validation.as_float_array(own_scores, "own_scores")
  mb = validation.as_float_array(null_own_scores, "null_own_scores")
  return _own_score_spread(m, mb)


def _own_score_spread(m, mb):
  pooled = jnp.concatenate([m.reshape(-1), mb.reshape(-1)])
  return _nonzero_or_one(_mean_abs_dev(pooled))


def p_unit(m, mb, relative):
  """Unit of τ_p: local gaps between each observed score and its nearest nulls, or a scalar."""
  mode = _mode(relative)
  if mode is None:
    return jnp.ones((), m.dtype)
  spread = _own_score_spread(m, mb)
  if mode == "global":
    return spread
  gap = _local_gap(mb - m[None], True, axis=0)
  # every replicate tied (a model that ignores its input): the pooled spread
  return jnp.where(gap > 0, gap, spread)

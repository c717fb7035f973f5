"""Soft rank of the truth and soft hit at k (SPEC §5): the smooth `truth_ranks` and `hit_at_k`."""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from twinbench_jax._src import types
from twinbench_jax._src.core import checks
from twinbench_jax._src.core import ranking
from twinbench_jax._src.core import validation
from twinbench_jax._src.soft import temperatures

# The soft rank's cubic step reaches 0 and 1 at ±RANK_SUPPORT·τ_rank, where the
# logistic σ(d/τ) is within σ(-6) = 0.25% of the step (docs/soft_relaxation.md).
RANK_SUPPORT = 6.0


def soft_truth_ranks(scores: types.ArrayLike, relevance: types.ArrayLike, *,
                     temperature: Any = temperatures.DEFAULT_TEMPERATURE,
                     relative: types.Relative = True, where: Optional[jax.Array] = None,
                     reduce_fn: types.ReduceFn = None) -> jax.Array:
  r"""Soft rank of the truth for every query (SPEC §5), the smooth `tb.truth_ranks`.

  .. math::
     \tilde r_q = 1 + \sum_{c \notin \mathrm{rel}_q}
                      S\!\left(\frac{s_{qc} - s_{qc^*}}{6 \tau_q}\right),
     \qquad \tau_q = \tau_{rank} \cdot g_q

  with :math:`c^*` the best-scored relevant candidate, :math:`S` the C¹ cubic
  step (`S(x) = 0` for `x <= -1`, 1 for `x >= 1`, `t²(3 - 2t)` with
  `t = (x + 1)/2` between: within 0.25% of the logistic `σ(d/τ)` and free of
  transcendentals) and :math:`g_q` the local gap: the mean distance from the
  truth's score to the nearest non-relevant score above and below it (under
  `stop_gradient`). An exact tie counts 1/2, as in ``ties="average"``; as
  τ → 0 this is `tb.truth_ranks(scores, relevance)`. O(Q·C): only the
  truth's rank is needed, not a soft sort of every candidate. A query gets a
  rank gradient from the candidates within `6 τ_q` of its truth.

  Args:
    scores: `[Q, C]` similarities, larger = closer (finite).
    relevance: `[Q, C]` boolean; every query needs a relevant candidate.
    temperature: τ_rank, a positive scalar.
    relative: True or ``"local"`` (default): τ_rank is a fraction of each
      query's local gap; ``"global"``: of `score_spread(scores)`; False: in
      score units.
    where: optional `[Q]` boolean mask of the queries that enter `reduce_fn`.
    reduce_fn: `None` (default) keeps the `[Q]` ranks; e.g. `jnp.mean`.

  Returns:
    `[Q]` soft ranks in `[1, 1 + #non-relevant]`, or their reduction. Under
    `jit`, NaN for a query without a relevant candidate or with a non-finite score.
  """
  s, rel = checks.check_scores_relevance(scores, relevance, upcast=False)
  validation.check_no_nan(s, "scores")
  tau = checks.check_positive(temperature, "temperature")
  checks.check_relative(relative)
  out = _soft_truth_ranks(s, rel, tau, relative=relative)
  if validation.any_traced(s, rel):
    out = validation.poison(out, ~jnp.any(rel, axis=1) | ~jnp.all(jnp.isfinite(s), axis=1))
  return ranking.reduce_queries(out, where, reduce_fn)


@functools.partial(jax.jit, static_argnames=("relative",))
def _soft_truth_ranks(s, rel, tau, *, relative):
  return soft_ranks_at(s, rel, tau * temperatures.rank_unit(s, rel, relative))


def _smooth_step(x):
  """C¹ cubic step: 0 for x <= -1, 1 for x >= 1, 1/2 at 0; no transcendental to evaluate."""
  t = jnp.clip(0.5 * x + 0.5, 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def soft_ranks_at(s, rel, tau):
  """Soft ranks at a temperature `tau` in score units (scalar or `[Q, 1]`)."""
  best = jnp.max(jnp.where(rel, s, -jnp.inf), axis=1, keepdims=True)
  z = jnp.where(rel, 0.0, (s - best) / (RANK_SUPPORT * tau))  # relevant entries masked first
  return 1.0 + jnp.sum(jnp.where(rel, 0.0, _smooth_step(z)), axis=1)


@checks.keyword_k
def soft_hit_at_k(ranks: types.ArrayLike, *, k: types.K = 1,
                  temperature: Any = temperatures.DEFAULT_TEMPERATURE,
                  where: Optional[jax.Array] = None,
                  reduce_fn: types.ReduceFn = None) -> jax.Array:
  r"""Soft `1[r_q <= k]` per query: :math:`\sigma((k + 1/2 - \tilde r_q) / \tau_{hit})` (SPEC §5).

  Args:
    ranks: `[Q]` (soft) ranks of the truth.
    k: the cutoff, ≥ 1.
    temperature: τ_hit in rank units.
    where: optional `[Q]` boolean mask of the queries that enter `reduce_fn`.
    reduce_fn: `None` (default) keeps the `[Q]` values; e.g. `jnp.mean`.

  Returns:
    `[Q]` values in (0, 1), or their reduction.
  """
  r = validation.as_float_array(ranks, "ranks", ndim=1)
  checks.check_k(k)
  tau = checks.check_positive(temperature, "temperature")
  return ranking.reduce_queries(soft_hit(r, k, tau), where, reduce_fn)


def soft_hit(r, k, tau):
  return jax.nn.sigmoid((k + 0.5 - r) / tau)

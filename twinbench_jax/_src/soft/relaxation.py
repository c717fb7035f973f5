"""Smooth transformations of the AUC-F1 pipeline: soft ranks, soft p-values, soft F1 (SPEC §5).

Every hard step of SPEC §2–4 gets a smooth counterpart with its own
temperature; as every temperature goes to 0 each step converges to the hard
one, and `soft_auc_f1` to `tb.auc_f1(...).auc`:

- rank: `r̃_q = 1 + Σ_{c∉rel} S((s_qc - s_qc*) / (6 τ_rank))` → `truth_ranks`,
  with `S` a C¹ cubic step (0 below -1, 1 above 1, 1/2 at a tie);
- hit: `σ((k + 1/2 - r̃_q) / τ_hit)` → `r_q <= k`; τ_hit in ranks;
- p-value: `p̃_q = (1 + Σ_b σ((m^b - m)/τ_p)) / (B+1)` → `empirical_pvalues`;
  an exact tie `m^b = m` counts 1 like the hard `>=` (with the sigmoid's slope
  as its gradient), so a model that ignores its input scores exactly 0;
- call: a linear ramp from 1 to 0 over `p ∈ α + h/2 ± τ_α h`, `h = 1/(B+1)`;
- area: the exact step integral over the soft p-values sorted by a hard
  argsort, with the soft F1 at each breakpoint, summed with prefix sums.

**Local temperatures** (``relative=True``, the default): τ_rank of query `q`
is a fraction of the *local gap* around its truth (the mean distance to the
nearest non-relevant score above and below it), τ_p of query `q` a fraction
of the local gap around `m_q` among its null scores. At the default 0.1 the
soft AUC-F1 stays within 0.005 of the hard one at 200 and 5,000 candidates,
0.023 at 20 (``docs/soft_relaxation.md``). The gaps are under `jax.lax.stop_gradient`.
``relative="global"`` gives the former units (spreads over all scores),
``relative=False`` score units. Cost: value and gradient in `O(Q·C + B·Q)`
time and memory, plus an `O(Q log Q)` sort.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from twinbench_jax._src.core import checks
from twinbench_jax._src.core import validation

DEFAULT_TEMPERATURE = 0.1
# The soft rank's cubic step reaches 0 and 1 at ±RANK_SUPPORT·τ_rank, where the
# logistic σ(d/τ) is within σ(-6) = 0.25% of the step (docs/soft_relaxation.md).
RANK_SUPPORT = 6.0
# Breakpoints whose soft F1 is computed at once in the sorted-step area.
DEFAULT_ALPHA_CHUNK = 1024


class SoftTemperatures(NamedTuple):
  """One temperature per smooth step (SPEC §5); see the module docstring for units.

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


Temperature = Union[float, jax.Array, SoftTemperatures, Sequence, Mapping]


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


def _rank_unit(s, rel, relative):
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


def _p_unit(m, mb, relative):
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


def soft_truth_ranks(scores: jax.Array, relevance: jax.Array, *,
                     temperature: Any = DEFAULT_TEMPERATURE,
                     relative: Union[bool, str] = True) -> jax.Array:
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

  Returns:
    `[Q]` soft ranks in `[1, 1 + #non-relevant]`. Under `jit`, NaN for a query
    without a relevant candidate or with a non-finite score.
  """
  s, rel = checks.check_scores_relevance(scores, relevance, upcast=False)
  validation.check_no_nan(s, "scores")
  tau = checks.check_positive(temperature, "temperature")
  checks.check_relative(relative)
  out = _soft_truth_ranks(s, rel, tau, relative=relative)
  if _traced(s, rel):
    out = validation.poison(out, ~jnp.any(rel, axis=1) | ~jnp.all(jnp.isfinite(s), axis=1))
  return out


@functools.partial(jax.jit, static_argnames=("relative",))
def _soft_truth_ranks(s, rel, tau, *, relative):
  return _soft_truth_ranks_in(s, rel, tau * _rank_unit(s, rel, relative))


def _smooth_step(x):
  """C¹ cubic step: 0 for x <= -1, 1 for x >= 1, 1/2 at 0; no transcendental to evaluate."""
  t = jnp.clip(0.5 * x + 0.5, 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def _soft_truth_ranks_in(s, rel, tau):
  """Soft ranks at a temperature `tau` in score units (scalar or `[Q, 1]`)."""
  best = jnp.max(jnp.where(rel, s, -jnp.inf), axis=1, keepdims=True)
  z = jnp.where(rel, 0.0, (s - best) / (RANK_SUPPORT * tau))  # relevant entries masked first
  return 1.0 + jnp.sum(jnp.where(rel, 0.0, _smooth_step(z)), axis=1)


def soft_hit_at_k(ranks: jax.Array, k: float = 1, *,
                  temperature: Any = DEFAULT_TEMPERATURE) -> jax.Array:
  r"""Soft `1[r_q <= k]` per query: :math:`\sigma((k + 1/2 - \tilde r_q) / \tau_{hit})` (SPEC §5).

  Args:
    ranks: `[Q]` (soft) ranks of the truth.
    k: the cutoff, ≥ 1.
    temperature: τ_hit in rank units.

  Returns:
    `[Q]` values in (0, 1).
  """
  r = validation.as_float_array(ranks, "ranks", ndim=1)
  checks.check_k(k)
  tau = checks.check_positive(temperature, "temperature")
  return _soft_hit(r, k, tau)


def _soft_hit(r, k, tau):
  return jax.nn.sigmoid((k + 0.5 - r) / tau)


def soft_empirical_pvalues(scores: jax.Array, null_scores: jax.Array, *,
                           temperature: Any = DEFAULT_TEMPERATURE,
                           relative: Union[bool, str] = True) -> jax.Array:
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
  if _traced(m, mb):
    out = validation.poison(out, ~jnp.isfinite(m) | ~jnp.all(jnp.isfinite(mb), axis=0))
  return out


@functools.partial(jax.jit, static_argnames=("relative",))
def _soft_pvalues(m, mb, tau_p, *, relative):
  return _soft_pvalues_in(m, mb, tau_p * _p_unit(m, mb, relative))


def _soft_pvalues_in(m, mb, tau):
  """Soft p-values at a temperature `tau` in score units."""
  d = mb - m[None]
  exceed = jax.nn.sigmoid(d / tau)
  # an exact tie is an exceedance (`>=`): value 1, the sigmoid's gradient
  exceed = jnp.where(d == 0, exceed + jax.lax.stop_gradient(1.0 - exceed), exceed)
  return (1.0 + jnp.sum(exceed, axis=0)) / (mb.shape[0] + 1.0)


def soft_called(pvalues: jax.Array, alpha: Any, *, n_null: int,
                temperature: Any = DEFAULT_TEMPERATURE) -> jax.Array:
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
  return _soft_called(p, jnp.asarray(alpha, p.dtype), 1.0 / (n_null + 1.0), tau)


def _soft_called(p, alpha, h, tau):
  return jnp.clip((alpha + 0.5 * h - p) / (2.0 * tau * h) + 0.5, 0.0, 1.0)


def soft_f1_curve(alphas: jax.Array, pvalues: jax.Array, hits: jax.Array, *, n_null: int,
                  temperature: Any = DEFAULT_TEMPERATURE,
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
  if _traced(a, p, h):
    out = validation.poison(out, ~(_all_finite(a) & _all_finite(p) & _all_finite(h)))
  return out


def _soft_f1_curve(alphas, p, hits, h, tau, chunk):
  n_q = p.shape[0]

  def f1(a):  # [n] levels -> [n] F1
    called = _soft_called(p[None, :], a[:, None], h, tau)
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
                temperature: Temperature = DEFAULT_TEMPERATURE,
                relative: Union[bool, str] = True, alpha_grid: Optional[int] = None,
                alpha_chunk: int = DEFAULT_ALPHA_CHUNK) -> jax.Array:
  r"""Differentiable query-level AUC-F1 (SPEC §5, §8).

  Soft rank → soft hit, soft p-value, soft calls, soft F1(α), and the area

  .. math::
     \widetilde{AUC} = \sum_{j=1}^{Q} \tilde F_1(a_j)\,(a_{j+1} - a_j),
     \qquad a_1 \le \dots \le a_Q \text{ the sorted soft p-values},\ a_{Q+1} = 1 .

  As every temperature goes to 0 this equals
  ``tb.auc_f1(tb.empirical_pvalues(own_scores, null_own_scores),
  tb.truth_ranks(scores, relevance) <= k).auc``. See the module docstring for
  the temperature units and the limits at exact ties. Gradients flow into
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
  temps = SoftTemperatures(*(t.astype(dtype) for t in resolve_temperatures(temperature)))
  out = _soft_auc_f1(s.astype(dtype), rel, m.astype(dtype), mb.astype(dtype), temps,
                     jnp.asarray(k, dtype), relative=relative, alpha_grid=alpha_grid,
                     alpha_chunk=alpha_chunk)
  if _traced(s, rel, m, mb):
    out = validation.poison(out, invalid_inputs(s, rel, m, mb))
  return out


def invalid_inputs(s, rel, m, mb):
  """Scalar: a query without a relevant candidate, or a non-finite score (the traced check)."""
  return ~(jnp.all(jnp.any(rel, axis=1)) & _all_finite(s) & _all_finite(m) & _all_finite(mb))


def _all_finite(x):
  return jnp.all(jnp.isfinite(x))


def _traced(*arrays):
  return not all(validation.is_concrete(x) for x in arrays)


@functools.partial(jax.jit, static_argnames=("relative", "alpha_grid", "alpha_chunk"))
def _soft_auc_f1(s, rel, m, mb, temps, k, *, relative, alpha_grid, alpha_chunk):
  """Unchecked kernel of `soft_auc_f1`; also the core of the training loss."""
  return _soft_auc_f1_in_units(s, rel, m, mb, temps, k, _rank_unit(s, rel, relative),
                               _p_unit(m, mb, relative), alpha_grid=alpha_grid,
                               alpha_chunk=alpha_chunk)


def _soft_auc_f1_in_units(s, rel, m, mb, temps, k, rank_unit, p_unit, *, alpha_grid=None,
                          alpha_chunk=DEFAULT_ALPHA_CHUNK):
  """`_soft_auc_f1` with the temperature units given (constants: what `grad` sees)."""
  ranks = _soft_truth_ranks_in(s, rel, temps.rank * rank_unit)
  hits = _soft_hit(ranks, k, temps.hit)
  p = _soft_pvalues_in(m, mb, temps.p * p_unit)
  h = 1.0 / (mb.shape[0] + 1.0)
  if alpha_grid is not None:
    grid = (jnp.arange(alpha_grid, dtype=p.dtype) + 0.5) / alpha_grid
    return jnp.mean(_soft_f1_curve(grid, p, hits, h, temps.alpha, alpha_chunk))
  return _sorted_step_area(p, hits, h, temps.alpha)


def _sorted_step_area(p, hits, h, tau):
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

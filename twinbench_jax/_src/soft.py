"""Smooth transformations of the AUC-F1 pipeline: soft ranks, soft p-values, soft F1 (SPEC §5).

Every hard step of SPEC §2–4 gets a sigmoid counterpart with its own
temperature; as every temperature goes to 0 each step converges to the hard
one, and `soft_auc_f1` to `tb.auc_f1(...).auc`:

- rank: `r̃_q = 1 + Σ_{c∉rel} σ((s_qc - s_qc*) / τ_rank)` → `truth_ranks`;
  τ_rank in units of the score spread;
- hit: `σ((k + 1/2 - r̃_q) / τ_hit)` → `r_q <= k`; τ_hit in ranks;
- p-value: `p̃_q = (1 + Σ_b σ((m^b - m)/τ + log(1/τ_p))) / (B+1)` →
  `empirical_pvalues`; τ_p in units of the own-score spread;
- call: `σ((α - p̃_q + h/2) / (τ_α h))` with `h = 1/(B+1)` → `p_q <= α`;
  τ_α in p-value steps `h`.

**Scale-aware temperatures.** With ``relative=True`` (the default) a
temperature is a fraction of a typical gap, so the same number means the same
sharpness for any similarity metric or data set and the score is invariant
under a positive affine rescaling `a·s + b` of the scores:

- τ_rank is multiplied by the *score spread*: the mean absolute deviation of
  each query's scores over its candidates, averaged over queries;
- τ_p is multiplied by the *own-score spread*: the mean absolute deviation of
  all own scores, observed and null, pooled;
- τ_hit is in rank units (rank 1 vs rank 2 are 1 apart);
- τ_α is in units of the p-value resolution `h = 1/(B+1)`.

The spreads go through `jax.lax.stop_gradient`: at each step the temperature is
a constant, as in any annealing schedule (so `jax.test_util.check_grads`, which
also differentiates the spread numerically, needs ``relative=False``). A spread
of exactly 0 (all values equal) is replaced by 1. With ``relative=False`` τ_rank
and τ_p are in the units of the scores.

**Shifts that make the limits exact.** The hard p-value counts a tied null
replicate as an exceedance (`>=`) where a plain sigmoid counts 1/2; the soft
exceedance adds `log(1/τ_p)` to the sigmoid's argument (a shift of
`τ_p log(1/τ_p)` in spread units, which vanishes as τ_p → 0), so a tie counts
`1/(1 + τ_p)` → 1. This matters: a model that ignores its input ties every
replicate and must score ≈ 0. Likewise a query's own p-value lies exactly on its
breakpoint α in the sorted-step area, where the hard call counts it (`p <= α`):
the soft call is shifted by half a p-value step `h/2`, which still separates
every pair of distinct p-values on the `1/(B+1)` grid. The hit step keeps
SPEC's `k + 1/2`: a truth tied exactly with one non-relevant candidate at rank
`k + 1/2` counts 1/2 (its expected hit under random tie-breaking) where the hard
hit counts 0; on tie-free scores the limit is exact.

**Area.** `AUC = Σ_j F̃1(a_j) (a_{j+1} - a_j)` over the soft p-values sorted by a
hard argsort (the breakpoints, `a_{Q+1} = 1`), with the soft F1 at each: the
exact step integral of `tb.auc_f1` with smooth counts, which reaches the hard
value as τ → 0 (a fixed α grid cannot: it misses the steps' exact positions;
``alpha_grid=n`` is offered for comparison). Gradients flow into both the F1
values and the breakpoints; the area is continuous where two breakpoints swap.

**Cost.** The truth's soft rank needs one `[Q, C]` pass (no soft sort), the
soft p-values one `[B, Q]` pass, the area one `[Q, Q]` pass processed in blocks
of `alpha_chunk` breakpoints (rematerialised under `grad`): memory
`O(Q·C + B·Q + alpha_chunk·Q)`.

**Why pairwise sigmoids and not a permutahedron projection.** A
permutahedron-projection soft rank (Blondel et al., 2020: a sort and a
pool-adjacent-violators isotonic regression per query) was measured against
the pairwise sigmoid in ``benchmarks/bench_soft.py`` (Q = C = 1000, CPU): the
pairwise value-and-grad of all truth ranks takes about 2.5 ms, the projection
(PAV written in JAX, sequential in C) 1.5–2.4 s. At τ = 0.001 both are close
to the hard ranks (mean error 0.08 pairwise, 0.04 projection), but the
projection's gradient reaches on average 0.4 candidates per query (it is
piecewise linear: a truth alone in its pooled block has an integer rank and a
zero gradient), the pairwise one 9 candidates, weighted by their closeness to
the truth. The metric needs only the truth's rank, not a full soft sort, so the
pairwise sigmoid is kept.

**Choosing τ.** 0.1 (the default) is a training temperature: smooth, with
gradients from many candidates, but biased (with 500 candidates the soft rank
of a truth ranked first can exceed 1.5). The gradients thin out as τ falls
and vanish below about 1e-3; on `tb.make_toy_task`, annealing from 0.1 to 0.02
trained worse than a fixed 0.1. A query whose truth ranks far below k gets
little signal from the hit step (`σ((k + 1/2 - r̃)/τ_hit)` saturates); a
larger τ_hit reaches further. For a number to report, use the hard metric
(`tb.auc_f1`, or `tb.hard_auc_f1_validation` while training).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src import validation

DEFAULT_TEMPERATURE = 0.1
# Breakpoints whose soft F1 is computed at once in the sorted-step area.
DEFAULT_ALPHA_CHUNK = 1024


class SoftTemperatures(NamedTuple):
  """One temperature per smooth step (SPEC §5); see the module docstring for units.

  Attributes:
    rank: soft rank of the truth; a fraction of the score spread (``relative=True``).
    hit: soft hit at k; in rank units.
    p: soft empirical p-value; a fraction of the own-score spread (``relative=True``).
    alpha: soft call at α; in units of the p-value resolution `1/(B+1)`.
  """

  rank: Any = DEFAULT_TEMPERATURE
  hit: Any = DEFAULT_TEMPERATURE
  p: Any = DEFAULT_TEMPERATURE
  alpha: Any = DEFAULT_TEMPERATURE


Temperature = Union[float, jax.Array, SoftTemperatures, Sequence, Mapping]


def _check_positive(value, name: str):
  arr = jnp.asarray(value, dtype=jnp.result_type(float))
  if arr.ndim != 0:
    raise ValueError(f"`{name}` must be a scalar, got shape {tuple(arr.shape)}")
  if validation.is_concrete(arr):
    v = float(arr)
    if not (np.isfinite(v) and v > 0):
      raise ValueError(f"`{name}` must be a finite positive number, got {v}")
  return arr


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
  return SoftTemperatures(*(_check_positive(v, f"temperature.{name}")
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


def soft_truth_ranks(scores: jax.Array, relevance: jax.Array, *,
                     temperature: Any = DEFAULT_TEMPERATURE, relative: bool = True) -> jax.Array:
  r"""Soft rank of the truth for every query (SPEC §5), the smooth `tb.truth_ranks`.

  .. math::
     \tilde r_q = 1 + \sum_{c \notin \mathrm{rel}_q}
                      \sigma\!\left(\frac{s_{qc} - s_{qc^*}}{\tau}\right),
     \qquad \tau = \tau_{rank} \cdot \mathrm{spread}(s)

  with :math:`c^*` the best-scored relevant candidate. An exact tie counts 1/2,
  as in ``ties="average"``; as τ → 0 this is `tb.truth_ranks(scores, relevance)`.
  O(Q·C): only the truth's rank is needed, not a soft sort of every candidate.

  Args:
    scores: `[Q, C]` similarities, larger = closer (finite).
    relevance: `[Q, C]` boolean; every query needs a relevant candidate.
    temperature: τ_rank, a positive scalar.
    relative: τ_rank is a fraction of `score_spread(scores)` (default), or in
      score units when False.

  Returns:
    `[Q]` soft ranks in `[1, 1 + #non-relevant]`.
  """
  s, rel = _check_scores_relevance(scores, relevance)
  tau = _check_positive(temperature, "temperature")
  return _soft_truth_ranks(s, rel, tau, relative=relative)


@functools.partial(jax.jit, static_argnames=("relative",))
def _soft_truth_ranks(s, rel, tau, *, relative):
  if relative:
    tau = tau * _score_spread(s)
  best = jnp.max(jnp.where(rel, s, -jnp.inf), axis=1, keepdims=True)
  z = jnp.where(rel, 0.0, (s - best) / tau)  # relevant entries masked before the sigmoid
  return 1.0 + jnp.sum(jnp.where(rel, 0.0, jax.nn.sigmoid(z)), axis=1)


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
  _check_k(k)
  tau = _check_positive(temperature, "temperature")
  return _soft_hit(r, k, tau)


def _soft_hit(r, k, tau):
  return jax.nn.sigmoid((k + 0.5 - r) / tau)


def soft_empirical_pvalues(scores: jax.Array, null_scores: jax.Array, *,
                           temperature: Any = DEFAULT_TEMPERATURE,
                           relative: bool = True) -> jax.Array:
  r"""Soft empirical p-values (SPEC §5), the smooth `tb.empirical_pvalues`.

  .. math::
     \tilde p = \frac{1 + \sum_b \sigma\!\left(\frac{m^b - m}{\tau}
                                   + \log\frac{1}{\tau_p}\right)}{B + 1},
     \qquad \tau = \tau_p \cdot \mathrm{spread}(m, m^b)

  The `log(1/τ_p)` shift (0 when τ_p ≥ 1) makes an exact tie count
  `1/(1 + τ_p)`, so the limit τ_p → 0 counts ties as exceedances like the hard
  `>=`; a replicate `d` below the observed score stops counting once
  `|d| > τ log(1/τ_p)`.

  Args:
    scores: observed scores `m` of any shape `S` (own scores `[Q]`).
    null_scores: `[B, *S]` null scores, `B >= 1`.
    temperature: τ_p, a positive scalar.
    relative: τ_p is a fraction of `own_score_spread(scores, null_scores)`
      (default), or in score units when False.

  Returns:
    Soft p-values of shape `S` in `(1/(B+1), 1)`.
  """
  m, mb = _check_scores_null(scores, null_scores, "scores", "null_scores")
  tau = _check_positive(temperature, "temperature")
  return _soft_pvalues(m, mb, tau, relative=relative)


@functools.partial(jax.jit, static_argnames=("relative",))
def _soft_pvalues(m, mb, tau_p, *, relative):
  tau = tau_p * _own_score_spread(m, mb) if relative else tau_p
  shift = jnp.maximum(jnp.log(1.0 / tau_p), 0.0)
  exceed = jax.nn.sigmoid((mb - m[None]) / tau + shift)
  return (1.0 + jnp.sum(exceed, axis=0)) / (mb.shape[0] + 1.0)


def soft_called(pvalues: jax.Array, alpha: Any, *, n_null: int,
                temperature: Any = DEFAULT_TEMPERATURE) -> jax.Array:
  r"""Soft `1[p <= α]`: :math:`\sigma((\alpha - \tilde p + h/2) / (\tau_\alpha h))`, `h = 1/(B+1)`.

  The half-step shift `h/2` counts a p-value that sits exactly at α as called
  (the hard `<=`) while still rejecting the next p-value on the grid, `h` above.

  Args:
    pvalues: (soft) p-values, any shape.
    alpha: the level(s), broadcastable against `pvalues`.
    n_null: `B`, the number of null replicates behind the p-values (use `Q - 1`
      for label-permutation p-values, whose resolution is `1/Q`).
    temperature: τ_α in units of `h`.

  Returns:
    Values in (0, 1) of the broadcast shape.
  """
  p = validation.as_float_array(pvalues, "pvalues")
  _check_n_null(n_null)
  tau = _check_positive(temperature, "temperature")
  return _soft_called(p, jnp.asarray(alpha, p.dtype), 1.0 / (n_null + 1.0), tau)


def _soft_called(p, alpha, h, tau):
  return jax.nn.sigmoid((alpha - p + 0.5 * h) / (tau * h))


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
    `[A]` soft F1 values.
  """
  a = validation.as_float_array(alphas, "alphas", ndim=1)
  p = validation.as_float_array(pvalues, "pvalues", ndim=1)
  h = validation.as_float_array(hits, "hits", ndim=1)
  validation.check_same_shape(p, h, "pvalues", "hits")
  _check_n_null(n_null)
  _check_chunk(alpha_chunk)
  tau = _check_positive(temperature, "temperature")
  return _soft_f1_curve(a, p, h, 1.0 / (n_null + 1.0), tau, alpha_chunk)


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
                temperature: Temperature = DEFAULT_TEMPERATURE, relative: bool = True,
                alpha_grid: Optional[int] = None,
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
  temperatures go to 0, so train at about 0.1 (see "Choosing τ" above).

  Args:
    scores: `[Q, C]` similarities of the predictions to the candidates.
    relevance: `[Q, C]` boolean; every query needs a relevant candidate.
    own_scores: `[Q]` own scores `m_q` of the predictions.
    null_own_scores: `[B, Q]` own scores of the predictions from randomised
      inputs, `B >= 1`.
    k: a query is correct when its truth ranks within the top `k`.
    temperature: a positive scalar for every step, or per step as a
      `SoftTemperatures`, a `(rank, hit, p, alpha)` tuple or a dict.
    relative: τ_rank and τ_p are fractions of the score spreads (default; the
      spreads are under `stop_gradient`), or in score units when False.
    alpha_grid: `None` (default) for the sorted-step area; an integer `n` for
      the midpoint rule on the fixed grid `α_i = (i + 1/2)/n` instead (does not
      converge to the exact area; for comparison).
    alpha_chunk: breakpoints whose F1 is evaluated at a time (memory
      `alpha_chunk · Q`).

  Returns:
    A scalar in `[0, 1)`.

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
  s, rel = _check_scores_relevance(scores, relevance)
  m, mb = _check_scores_null(own_scores, null_own_scores, "own_scores", "null_own_scores")
  if m.ndim != 1 or m.shape[0] != s.shape[0]:
    raise ValueError(f"`own_scores` must have shape (Q,) = ({s.shape[0]},), got {tuple(m.shape)}")
  _check_k(k)
  _check_chunk(alpha_chunk)
  if alpha_grid is not None and (int(alpha_grid) != alpha_grid or alpha_grid < 1):
    raise ValueError(f"`alpha_grid` must be None or a positive integer, got {alpha_grid!r}")
  temps = resolve_temperatures(temperature)
  dtype = jnp.result_type(s.dtype, m.dtype, mb.dtype)
  return _soft_auc_f1(s.astype(dtype), rel, m.astype(dtype), mb.astype(dtype), temps,
                      jnp.asarray(k, dtype), relative=relative, alpha_grid=alpha_grid,
                      alpha_chunk=alpha_chunk)


@functools.partial(jax.jit, static_argnames=("relative", "alpha_grid", "alpha_chunk"))
def _soft_auc_f1(s, rel, m, mb, temps, k, *, relative, alpha_grid, alpha_chunk):
  """Unchecked kernel of `soft_auc_f1`; also the core of the training loss."""
  ranks = _soft_truth_ranks(s, rel, temps.rank, relative=relative)
  hits = _soft_hit(ranks, k, temps.hit)
  p = _soft_pvalues(m, mb, temps.p, relative=relative)
  h = 1.0 / (mb.shape[0] + 1.0)
  if alpha_grid is not None:
    grid = (jnp.arange(alpha_grid, dtype=p.dtype) + 0.5) / alpha_grid
    return jnp.mean(_soft_f1_curve(grid, p, hits, h, temps.alpha, alpha_chunk))
  # Hard order, soft values: the breakpoints move with the p-values.
  a = p[jnp.argsort(jax.lax.stop_gradient(p))]
  width = jnp.concatenate([a[1:], jnp.ones((1,), a.dtype)]) - a
  f1 = _soft_f1_curve(a, p, hits, h, temps.alpha, alpha_chunk)
  return jnp.sum(f1 * width)


def _check_scores_relevance(scores, relevance):
  s = validation.as_float_array(scores, "scores", ndim=2)
  rel = validation.as_bool_array(relevance, "relevance", ndim=2)
  validation.check_same_shape(s, rel, "scores", "relevance")
  validation.check_every_query_has_relevant(rel)
  return s, rel


def _check_scores_null(scores, null_scores, name, null_name):
  m = validation.as_float_array(scores, name)
  mb = validation.as_float_array(null_scores, null_name)
  if mb.ndim != m.ndim + 1 or tuple(mb.shape[1:]) != tuple(m.shape):
    raise ValueError(
        f"`{null_name}` must have shape (B, *{name}.shape) = (B, {', '.join(map(str, m.shape))})"
        f", got {tuple(mb.shape)}")
  if mb.shape[0] < 1:
    raise ValueError(f"`{null_name}` has zero null replicates (B = 0); need B >= 1")
  return m, mb


def _check_k(k):
  if isinstance(k, (int, float, np.integer, np.floating)) and not k >= 1:
    raise ValueError(f"`k` must be >= 1, got {k}")


def _check_n_null(n_null):
  if int(n_null) != n_null or n_null < 1:
    raise ValueError(f"`n_null` must be a positive integer, got {n_null!r}")


def _check_chunk(chunk):
  if int(chunk) != chunk or chunk < 1:
    raise ValueError(f"`alpha_chunk` must be a positive integer, got {chunk!r}")

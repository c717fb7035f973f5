r"""Standard ranking losses over the candidates, to compare with the soft AUC-F1 (SPEC §5).

Each loss takes `[Q, C]` similarities `s` of predictions to candidates
(larger = closer, e.g. `tb.similarity(x, references)`) and a `[Q, C]` boolean
relevance, and pushes each query's relevant candidate ("truth") above the
others. None of them has the AUC-F1's null term: a model that predicts the
same profile for every query is not penalised for ignoring its input beyond
what ranking the truth costs.

- `softmax_ce_loss`: softmax cross-entropy of the truth among all candidates
  (InfoNCE);
- `pairwise_logistic_loss`: logistic loss of the truth against each other
  candidate;
- `approx_mrr_loss`: `1 - 1/r̃` with the approximate rank
  `r̃ = 1 + Σ_c σ((s_c - s_truth)/τ)` (the rank transformation of rax's
  `approx_t12n` applied to the reciprocal rank);
- `soft_hit_loss`: `1 - soft hit@k` from `tb.soft_truth_ranks` and
  `tb.soft_hit_at_k`, i.e. the soft AUC-F1's hit term without its null.

Conventions follow rax: keyword options, ``where`` masks candidates (`[Q, C]`;
for `soft_hit_loss` queries, `[Q]`), ``reduce_fn=None`` returns per-query
values, and a query without a valid relevant candidate contributes 0 and is
left out of the mean (never NaN). Temperatures are, by default, fractions of
the score spread (``relative=True``: the mean absolute deviation of each
query's valid scores, averaged over queries, under `stop_gradient`), so one
temperature means the same sharpness for any metric or data set: the units of
``relative="global"`` in `tb.soft_auc_f1` and of the loss factories'
default. `soft_hit_loss` takes the units of `tb.soft_truth_ranks` (local gaps
around each truth by default).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from twinbench_jax._src.soft import ranks as soft_ranks
from twinbench_jax._src.soft import temperatures
from twinbench_jax._src import types
from twinbench_jax._src.core import checks
from twinbench_jax._src.core import validation

ReduceFn = types.ReduceFn
DEFAULT_TEMPERATURE = 0.1


def _inputs(scores, relevance, where, temperature, relative):
  """Checked `(scores, relevance, valid mask, temperature in score units)` of a loss."""
  s, rel, valid = _arrays(scores, relevance, where)
  return s, rel, valid, _temperature(temperature, s, valid, relative)


def _arrays(scores, relevance, where):
  s = validation.as_float_array(scores, "scores", ndim=2)
  rel = validation.as_bool_array(relevance, "relevance", ndim=2)
  validation.check_same_shape(s, rel, "scores", "relevance")
  if where is None:
    valid = jnp.ones(s.shape, bool)
  else:
    valid = validation.as_bool_array(where, "where", ndim=2)
    validation.check_same_shape(s, valid, "scores", "where")
  return s, rel, valid


def _check_temperature(temperature, name="temperature"):
  """`soft`'s eager check; traced, a non-positive temperature poisons the loss instead."""
  tau = checks.check_positive(temperature, name)
  if validation.is_concrete(tau):
    return tau
  return validation.poison(tau, ~(tau > 0))


def _temperature(temperature, s, valid, relative):
  tau = _check_temperature(temperature)
  if not relative:
    return tau
  # mean absolute deviation of each query's valid scores, averaged over queries
  n = jnp.maximum(jnp.sum(valid, axis=1, keepdims=True), 1)
  safe = jnp.where(valid, s, 0.0)
  mean = jnp.sum(safe, axis=1, keepdims=True) / n
  mad = jnp.sum(jnp.where(valid, jnp.abs(s - mean), 0.0), axis=1) / n[:, 0]
  has = jnp.any(valid, axis=1)
  spread = jnp.sum(jnp.where(has, mad, 0.0)) / jnp.maximum(jnp.sum(has), 1)
  spread = jax.lax.stop_gradient(spread)
  return tau * jnp.where(spread > 0, spread, 1.0)


def _reduce(values, valid_query, reduce_fn):
  values = jnp.where(valid_query, values, 0.0)
  if reduce_fn is None:
    return values
  if reduce_fn is jnp.mean:  # a mean over no query is 0, not NaN
    return jnp.sum(values) / jnp.maximum(jnp.sum(valid_query), 1)
  return reduce_fn(values, where=valid_query)


def _truth_score(s, rel, valid):
  """`[Q, 1]` score of the best-scored valid relevant candidate (0 where there is none)."""
  ok = rel & valid
  best = jnp.max(jnp.where(ok, s, -jnp.inf), axis=1, keepdims=True)
  return jnp.where(jnp.any(ok, axis=1, keepdims=True), best, 0.0)


def softmax_ce_loss(scores: jax.Array, relevance: jax.Array, *,
                    temperature: Any = DEFAULT_TEMPERATURE, relative: bool = True,
                    where: Optional[jax.Array] = None,
                    reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  r"""Softmax cross-entropy of the truth among the candidates (InfoNCE).

  .. math::
     \ell_q = -\sum_{c \in \mathrm{rel}_q} \frac{1}{|\mathrm{rel}_q|}
              \log \frac{e^{s_{qc}/\tau}}{\sum_{c'} e^{s_{qc'}/\tau}}

  over the valid candidates `c'`. With one relevant candidate per query this
  is InfoNCE; its infimum 0 is reached as the truth's margin over every other
  candidate grows without bound.

  Args:
    scores: `[Q, C]` similarities, larger = closer.
    relevance: `[Q, C]` boolean, the relevant candidates of each query.
    temperature: τ, a positive scalar (a fraction of the score spread when
      `relative`).
    relative: τ in units of the score spread (default) or of the scores.
    where: optional `[Q, C]` boolean, the candidates taken into account.
    reduce_fn: reduction over queries (default mean over valid queries);
      None returns `[Q]` per-query losses.

  Returns:
    A scalar, or `[Q]` values when `reduce_fn` is None.
  """
  s, rel, valid, tau = _inputs(scores, relevance, where, temperature, relative)
  ok = rel & valid
  logp = jax.nn.log_softmax(jnp.where(valid, s / tau, 0.0), axis=1, where=valid)
  n_rel = jnp.sum(ok, axis=1)
  values = -jnp.sum(jnp.where(ok, logp, 0.0), axis=1) / jnp.maximum(n_rel, 1)
  return _reduce(values, n_rel > 0, reduce_fn)


def pairwise_logistic_loss(scores: jax.Array, relevance: jax.Array, *,
                           temperature: Any = DEFAULT_TEMPERATURE, relative: bool = True,
                           where: Optional[jax.Array] = None,
                           reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  r"""Logistic loss of the truth against each other candidate.

  .. math::
     \ell_q = \frac{1}{|N_q|} \sum_{c \in N_q}
              \log\left(1 + e^{-(s_{qc^*} - s_{qc})/\tau}\right)

  with `c*` the best-scored valid relevant candidate and `N_q` the valid
  non-relevant ones (memory `O(Q·C)`). Infimum 0 as every margin grows;
  `log 2` when all scores tie.

  Args:
    scores, relevance, temperature, relative, where, reduce_fn: as in
      `softmax_ce_loss`.

  Returns:
    A scalar, or `[Q]` values when `reduce_fn` is None.
  """
  s, rel, valid, tau = _inputs(scores, relevance, where, temperature, relative)
  neg = ~rel & valid
  margin = (_truth_score(s, rel, valid) - s) / tau
  n_neg = jnp.sum(neg, axis=1)
  values = jnp.sum(jnp.where(neg, jax.nn.softplus(-margin), 0.0), axis=1) / jnp.maximum(n_neg, 1)
  return _reduce(values, jnp.any(rel & valid, axis=1) & (n_neg > 0), reduce_fn)


def approx_truth_ranks(scores: jax.Array, relevance: jax.Array, *,
                       temperature: Any = DEFAULT_TEMPERATURE, relative: bool = True,
                       where: Optional[jax.Array] = None) -> jax.Array:
  r"""Approximate rank of the truth, the smooth rank of rax's `approx_t12n`.

  .. math:: \tilde r_q = 1 + \sum_{c \notin \mathrm{rel}_q} \sigma((s_{qc} - s_{qc^*})/\tau)

  with `c*` the best-scored valid relevant candidate; only valid candidates
  count. 1 where a query has no valid relevant candidate.

  Args:
    scores, relevance, temperature, relative, where: as in `softmax_ce_loss`.

  Returns:
    `[Q]` approximate ranks in `[1, 1 + #non-relevant]`.
  """
  s, rel, valid, tau = _inputs(scores, relevance, where, temperature, relative)
  return _approx_ranks(s, rel, valid, tau)


def _approx_ranks(s, rel, valid, tau):
  truth = _truth_score(s, rel, valid)
  above = jax.nn.sigmoid((s - truth) / tau)
  return 1.0 + jnp.sum(jnp.where(~rel & valid, above, 0.0), axis=1)


def approx_mrr_loss(scores: jax.Array, relevance: jax.Array, *,
                    temperature: Any = DEFAULT_TEMPERATURE, relative: bool = True,
                    where: Optional[jax.Array] = None,
                    reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  r"""Approximate-rank reciprocal-rank loss: `1 - 1/r̃_q` (see `approx_truth_ranks`).

  rax's `approx_t12n(mrr_metric)` with our rank approximation; minimum 0 when
  the truth is ahead of every other candidate by many temperatures, at most
  `1 - 1/(1 + #non-relevant)`. Arguments and return value as in
  `softmax_ce_loss`: a scalar, or `[Q]` values when `reduce_fn` is None.
  """
  s, rel, valid, tau = _inputs(scores, relevance, where, temperature, relative)
  values = 1.0 - 1.0 / _approx_ranks(s, rel, valid, tau)
  return _reduce(values, jnp.any(rel & valid, axis=1), reduce_fn)


def soft_hit_loss(scores: jax.Array, relevance: jax.Array, *, k: float = 1,
                  temperature: Any = None, relative: bool = True,
                  where: Optional[jax.Array] = None, reduce_fn: ReduceFn = jnp.mean) -> jax.Array:
  r"""`1 - soft hit@k`: the soft AUC-F1's hit term alone, without its null.

  `1 - tb.soft_hit_at_k(tb.soft_truth_ranks(scores, relevance), k=k)` per query,
  with the rank and hit temperatures of `tb.soft_auc_f1`. What the AUC-F1's
  null term adds is the difference between this loss and
  `tb.soft_auc_f1_loss`.

  Args:
    scores: `[Q, C]` similarities; every query needs a relevant candidate.
    relevance: `[Q, C]` boolean.
    k: a query counts as a hit when its truth ranks within the top `k`.
    temperature: None (default: the defaults of `tb.soft_truth_ranks` and
      `tb.soft_hit_at_k`), a positive scalar for both steps, or a
      `SoftTemperatures` / dict whose ``rank`` and ``hit`` entries are used.
    relative: as in `tb.soft_truth_ranks`.
    where: optional `[Q]` boolean, the queries taken into account (to drop
      candidates, slice the columns of `scores` and `relevance`).
    reduce_fn: reduction over queries (default mean); None returns `[Q]`.

  Returns:
    A scalar, or `[Q]` values when `reduce_fn` is None.
  """
  if isinstance(temperature, temperatures.SoftTemperatures):
    t_rank, t_hit = temperature.rank, temperature.hit
  elif isinstance(temperature, dict):
    t_rank, t_hit = temperature.get("rank"), temperature.get("hit")
  else:
    t_rank = t_hit = temperature
  # None: the defaults of `tb.soft_truth_ranks` / `tb.soft_hit_at_k`, whatever they are
  rank_kw = {} if t_rank is None else dict(temperature=t_rank)
  hit_kw = {} if t_hit is None else dict(temperature=t_hit)
  ranks = soft_ranks.soft_truth_ranks(scores, relevance, relative=relative, **rank_kw)
  values = 1.0 - soft_ranks.soft_hit_at_k(ranks, k=k, **hit_kw)
  if where is None:
    valid = jnp.ones(values.shape, bool)
  else:
    valid = validation.as_bool_array(where, "where", ndim=1)
    if valid.shape != values.shape:
      raise ValueError(f"`where` of `soft_hit_loss` masks queries: shape ({values.shape[0]},) "
                       f"expected, got {tuple(valid.shape)}")
  return _reduce(values, valid, reduce_fn)

"""Own scores: how well each prediction matches its own truth (SPEC §1, §3)."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.core import validation


def _relevance_weights(rel: jax.Array, dtype) -> jax.Array:
  # Row j: 1/R_j on the relevant candidates of query j, so `s @ w.T` averages them.
  rel = rel.astype(dtype)
  return rel / jnp.maximum(jnp.sum(rel, axis=1, keepdims=True), 1.0)


def _relevant_counts(rel: jax.Array, dtype) -> jax.Array:
  # `[Q]` R_q (at least 1, so an empty row gives 0 rather than NaN).
  return jnp.maximum(jnp.sum(rel, axis=-1), 1).astype(dtype)


def own_scores(scores: jax.Array, relevance: jax.Array) -> jax.Array:
  """`m_q`: mean similarity of prediction `q` to its relevant candidates, `[Q]`.

  The default own score of SPEC §1 (the similarity to the relevant candidate,
  averaged when there are several), in the precision of `scores`. A query
  without a relevant candidate is a `ValueError`; under `jit` its own score is NaN.
  """
  s = validation.as_float_array(scores, "scores", ndim=2)
  rel = validation.as_bool_array(relevance, "relevance", ndim=2)
  validation.check_same_shape(s, rel, "scores", "relevance")
  validation.check_every_query_has_relevant(rel)
  # `where` first: a NaN/inf score at a non-relevant candidate must not leak in (NaN * 0 = NaN).
  # Sum, then divide: equal sums stay exactly equal means (ties count in p-values).
  own = jnp.sum(jnp.where(rel, s, 0.0), axis=1) / _relevant_counts(rel, s.dtype)
  if validation.any_traced(rel):
    own = validation.poison(own, ~jnp.any(rel, axis=1))
  return own


def cross_own_scores(scores: jax.Array, relevance: jax.Array) -> jax.Array:
  """`[Q, Q]` own scores of every prediction against every query's truth.

  `out[i, j]` = mean similarity of prediction `i` to the relevant candidates of
  query `j`; its diagonal is `own_scores`. The input of
  `tb.label_permutation_pvalues`. A query without a relevant candidate is a
  `ValueError`; under `jit` its column is NaN.
  """
  s = validation.as_float_array(scores, "scores", ndim=2)
  rel = validation.as_bool_array(relevance, "relevance", ndim=2)
  validation.check_same_shape(s, rel, "scores", "relevance")
  validation.check_every_query_has_relevant(rel)
  cross = _cross(s, rel, single=single_relevant(rel))
  if validation.any_traced(rel):
    cross = validation.poison(cross, ~jnp.any(rel, axis=1)[None, :])
  return cross


def single_relevant(rel: jax.Array):
  """How a concrete `rel` relates queries to truths, as a static kernel option.

  ``"identity"``: query `q`'s only relevant candidate is `q`; True: exactly one
  relevant candidate per query; False: otherwise; None: `rel` is traced.
  """
  if not validation.is_concrete(rel):
    return None
  r = np.asarray(rel)
  if r.shape[0] == r.shape[1] and np.array_equal(r, np.eye(r.shape[0], dtype=bool)):
    return "identity"
  return bool(np.all(r.sum(axis=1) == 1))


@functools.partial(jax.jit, static_argnames=("single",))
def _cross(s, rel, single=None):
  gather = lambda: s[:, jnp.argmax(rel, axis=1)]
  average = lambda: _mean_over_truths(s, rel)
  # One relevant candidate per query (pseudobulk) is a gather, not a (Q, C, Q) matmul.
  if single == "identity":
    return s
  if single is None:
    return jax.lax.cond(jnp.all(jnp.sum(rel, axis=1) == 1), gather, average)
  return gather() if single else average()


def _mean_over_truths(s, rel):
  """`out[i, j]`: mean of `s[i]` over the relevant candidates of query `j`; a non-finite
  score only enters the means of the truths it belongs to."""
  def matmul(a, b):
    return jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)

  finite = jnp.isfinite(s)
  # NaN * 0 = NaN, so non-finite scores are zeroed here and put back below. Sum, then
  # divide (not a sum of s / R_j): equal sums stay exactly equal means, whatever the order.
  out = matmul(jnp.where(finite, s, 0.0), rel.astype(s.dtype)) / _relevant_counts(rel, s.dtype)

  def with_non_finite():
    relf = rel.astype(s.dtype)
    touches = lambda m: matmul(m.astype(s.dtype), relf) > 0  # noqa: E731
    pos, neg, nan = touches(s == jnp.inf), touches(s == -jnp.inf), touches(jnp.isnan(s))
    o = jnp.where(pos, jnp.inf, jnp.where(neg, -jnp.inf, out))
    return jnp.where(nan | (pos & neg), jnp.nan, o)

  return jax.lax.cond(jnp.all(finite), lambda: out, with_non_finite)


# --------------------------------------------------------------------------- own-score modes
#
# The own score of one prediction only needs the prediction and its query's truth,
# O(Q G), not the [Q, C] similarity. Each mode is the SPEC §1 own score in that form
# (except "full"), one entry of `_MODES`:
#   sqeuclidean: mean_c -|x - y_c|^2 = -(|x - t|^2 + spread), t = mean relevant reference
#   cosine/pearson: mean_c <u(x), u(y_c)> = <u(x), mean_c u(y_c)>, u = unit (centred) rows
#   euclidean/l1 with one relevant candidate per query: the direct distance to it
#   full: euclidean/l1 with several relevant candidates: mean over the [Q, C] similarity
#   r2: 1 - |x - t|^2 / |t - mean(t)|^2;  corr: Pearson correlation of x and t
#
# A context holds a query's constants: `target` `[Q, G]`, `offset` `[Q]` where the mode
# needs one, and `y` (the references). The distances score through the metric object's
# paired form (`SimilarityMetric.paired`, also the losses' own score).

OWN_SCORES = ("similarity", "r2", "pearson")

_HIGHEST = jax.lax.Precision.HIGHEST


def _centred(a: jax.Array) -> jax.Array:
  return a - a.mean(axis=-1, keepdims=True)


def _mean_rows(w: jax.Array, rows: jax.Array) -> jax.Array:
  # `[Q, G]` mean of each query's relevant rows (`w` from `_relevance_weights`).
  return jnp.matmul(w, rows, precision=_HIGHEST)


def _sum_of_squares(x: jax.Array, ctx: dict) -> jax.Array:
  d = x - ctx["target"]
  return jnp.sum(d * d, axis=1)


def _sqeuclidean_context(y, rel, w):
  truth = _mean_rows(w, y)
  # Spread of the relevant references around their mean (0 with one relevant candidate).
  d = similarity_lib.squared_distances(truth, y)
  return {"target": truth, "offset": jnp.sum(jnp.where(rel, d, 0.0) * w, axis=1)}


def _r2_context(y, rel, w):
  del rel
  truth = _mean_rows(w, y)
  tc = _centred(truth)
  return {"target": truth, "offset": jnp.sum(tc * tc, axis=1)}


class _Mode(NamedTuple):
  """One own score: its per-query context and its score `[Q]` of predictions `x` `[Q, G]`."""

  context: Callable  # (y [C, G], rel [Q, C], w [Q, C]) -> dict
  score: Callable  # (x, s [Q, C] or None, ctx) -> [Q]
  reads_scores: bool = False  # whether `score` reads `s` (the others need only the truth)


def _paired(metric: str) -> Callable:
  # The metric's own paired score (`SimilarityMetric.paired`) against the query's truth.
  return lambda x, s, ctx: similarity_lib.get_metric(metric).paired(x, ctx["target"])


def _unit_dot(centre: bool) -> Callable:
  # <u(x), mean_c u(y_c)>: the mean of unit rows is not a unit row, so it is not
  # `paired(x, truth)` (which normalises its truth) when a query has several truths.
  def score(x, s, ctx):
    del s
    return jnp.sum(similarity_lib._unit_rows(_centred(x) if centre else x) * ctx["target"],
                   axis=1)
  return score


def _truth_context(y, rel, w):
  del rel
  return {"target": _mean_rows(w, y)}


def _unit_context(centre: bool) -> Callable:
  def context(y, rel, w):
    del rel
    return {"target": _mean_rows(w, similarity_lib._unit_rows(_centred(y) if centre else y))}
  return context


_MODES = {
    # -(|x - t|^2 + spread): the paired score less the spread (same rounding: -(a+b) = -a-b).
    "sqeuclidean": _Mode(_sqeuclidean_context,
                         lambda x, s, ctx: _paired("sqeuclidean")(x, s, ctx) - ctx["offset"]),
    "euclidean": _Mode(_truth_context, _paired("euclidean")),
    "l1": _Mode(_truth_context, _paired("l1")),
    "cosine": _Mode(_unit_context(False), _unit_dot(False)),
    "pearson": _Mode(_unit_context(True), _unit_dot(True)),
    "full": _Mode(lambda y, rel, w: {"weights": w, "rel": rel},
                  lambda x, s, ctx: jnp.sum(jnp.where(ctx["rel"], s, 0.0) * ctx["weights"],
                                            axis=1),
                  reads_scores=True),
    # A constant truth (zero variance) has no R^2: NaN or -inf, which never beats a null.
    "r2": _Mode(_r2_context, lambda x, s, ctx: 1.0 - _sum_of_squares(x, ctx) / ctx["offset"]),
    "corr": _Mode(
        lambda y, rel, w: {"target": similarity_lib._unit_rows(_centred(_mean_rows(w, y)))},
        _unit_dot(True)),
}


def own_mode(own_score: str, metric: str, single: bool) -> str:
  """The mode of `own_score` for `metric` (`single`: one relevant candidate per query)."""
  if own_score != "similarity":
    return {"r2": "r2", "pearson": "corr"}[own_score]
  if not similarity_lib.get_metric(metric).mean_has_closed_form and not single:
    return "full"  # a mean of distances has no O(G) form
  return metric


def needs_scores(mode: str) -> bool:
  """Whether the mode reads the `[Q, C]` similarities (the others need only the truth)."""
  return _MODES[mode].reads_scores


@functools.partial(jax.jit, static_argnames=("mode",))
def own_context(y: jax.Array, rel: jax.Array, *, mode: str) -> dict:
  """Per-query constants of the own score `mode` from references `y` `[C, G]`, `rel` `[Q, C]`."""
  ctx = _MODES[mode].context(y, rel, _relevance_weights(rel, y.dtype))
  return dict(ctx, y=y)


def own_from_context(x: jax.Array, s: Optional[jax.Array], ctx: dict, *, mode: str
                     ) -> jax.Array:
  """`[Q]` own scores of predictions `x` `[Q, G]` (`s` `[Q, C]`: mode "full" only)."""
  return _MODES[mode].score(x, s, ctx)


def cross_own(x: jax.Array, y: jax.Array, s: jax.Array, rel: jax.Array, single=None, *,
              own_score: str) -> jax.Array:
  """`[Q, Q]` own scores of prediction `i` against the truth of query `j` (the label null).

  ``"similarity"``: the mean of `s[i]` over query `j`'s relevant candidates
  (`_cross`); ``"r2"`` and ``"pearson"``: of `x[i]` against the mean relevant
  reference of query `j`.
  """
  return _CROSS[own_score](x, y, s, rel, single)


def _cross_r2(x, y, s, rel, single):
  del s, single
  truth = _mean_rows(_relevance_weights(rel, y.dtype), y)
  tc = _centred(truth)
  return 1.0 - similarity_lib.squared_distances(x, truth) / jnp.sum(tc * tc, axis=1)


def _cross_pearson(x, y, s, rel, single):
  del s, single
  truth = _mean_rows(_relevance_weights(rel, y.dtype), y)
  return similarity_lib._similarity(x, truth, metric="pearson")


_CROSS = {
    "similarity": lambda x, y, s, rel, single: _cross(s, rel, single=single),
    "r2": _cross_r2,
    "pearson": _cross_pearson,
}

"""The label-permutation null: the exact no-model default (SPEC §3).

Is prediction `q` closer to its own truth than the predictions made for the
other perturbations are? The other `Q - 1` predictions are the null replicates.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from twinbench_jax._src.core import label_scoring
from twinbench_jax._src.core import own_scores as own_lib
from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.core import validation
from twinbench_jax._src.nulls import checks
from twinbench_jax._src.nulls import query_sharding
from twinbench_jax._src.nulls.result import NullResult


def label_null(
    predictions: jax.Array,
    references: jax.Array,
    relevance: Optional[jax.Array] = None,
    *,
    metric: str = "sqeuclidean",
    own_score: str = "similarity",
    candidate_level: bool = False,
    mesh: Optional[Any] = None,
) -> NullResult:
  r"""Label-permutation null: the exact no-model default (SPEC §3).

  Is prediction `q` closer to its own truth than the predictions made for the
  other perturbations are? With `m(x_{q'}, t_q)` the own score of prediction
  `q'` against the truth of query `q`,

  .. math::
     p_q = \frac{\#\{q' : m(x_{q'}, t_q) \ge m(x_q, t_q)\}}{Q}, \qquad
     p_{qc} = \frac{\#\{q' : s_{q'c} \ge s_{qc}\}}{Q}

  (`q'` over all queries, `q` included). This is the empirical p-value with the
  other `B = Q - 1` predictions as the null replicates, so the result has the
  same form as the sampled nulls: `n_null = Q - 1` and `null_own_scores[b, q]`
  is the own score of prediction `(q + 1 + b) mod Q` against truth `q`.

  Args:
    predictions: `[Q, G]` predicted profiles (`Q >= 2`).
    references: `[C, G]` real candidate profiles.
    relevance: `[Q, C]` boolean; default: the identity (`Q == C`).
    metric: similarity metric (see `tb.similarity`).
    own_score: ``"similarity"`` (SPEC §1, as `tb.cross_own_scores`), ``"r2"``
      or ``"pearson"``.
    candidate_level: also compute the `[Q, C]` entry-wise p-values above.
    mesh: None: one device holds the `[Q, C]` similarities. A
      `jax.sharding.Mesh` with a ``"queries"`` axis (`tb.query_mesh()`):
      the queries are split over it (`Q` a multiple of its size), each
      device holding `Q/n` rows (memory O(Q C / n)); the p-values are counted
      per device and summed as integers, so they equal the unsharded ones
      (bit for bit where XLA rounds a row block as the whole matrix, see
      `query_sharding`). `scores`, `candidate_pvalues` and `null_own_scores`
      (split by columns) come back sharded over the mesh.

  Returns:
    A `NullResult` with `kind="label"`.
  """
  checks.check_options(metric, own_score)
  x = validation.as_float_array(predictions, "predictions", ndim=2)
  y, rel = checks.check_references(references, relevance, n_queries=x.shape[0])
  x = checks.check_predictions(x, "predictions", y, rel)
  if x.shape[0] < 2:
    raise ValueError(f"the label-permutation null needs at least 2 queries, got "
                     f"{x.shape[0]}")
  dtype = jnp.result_type(x.dtype, y.dtype)
  if mesh is not None:
    return _label_null_sharded(x.astype(dtype), y.astype(dtype), rel, mesh, metric=metric,
                               own_score=own_score, candidate_level=candidate_level)
  own, null_own, pvalues, s, cand = _label_null(
      x.astype(dtype), y.astype(dtype), rel, metric=metric, own_score=own_score,
      candidate_level=candidate_level)
  return NullResult(own_scores=own, null_own_scores=null_own, pvalues=pvalues, scores=s,
                    relevance=rel, candidate_pvalues=cand, kind="label",
                    n_null=int(x.shape[0]) - 1, metric=metric, own_score=own_score)


def _label_null_sharded(x, y, rel, mesh, *, metric, own_score, candidate_level):
  """`label_null` with the queries split over the ``"queries"`` axis of `mesh`."""
  outputs = ("scores", "null_own") + (("candidate_pvalues",) if candidate_level else ())
  out = query_sharding.score_queries(
      x, y, rel, mesh=query_sharding.check_query_mesh(mesh), metric=metric,
      single=own_lib.single_relevant(rel), own_score=own_score, upcast=False, outputs=outputs)
  return NullResult(own_scores=out["own"], null_own_scores=out["null_own"],
                    pvalues=out["pvalues"], scores=out["scores"], relevance=rel,
                    candidate_pvalues=out.get("candidate_pvalues"), kind="label",
                    n_null=int(x.shape[0]) - 1, metric=metric, own_score=own_score)


@functools.partial(jax.jit, static_argnames=("metric", "own_score", "candidate_level"))
def _label_null(x, y, rel, *, metric, own_score, candidate_level):
  """`(own [Q], null own [Q - 1, Q], p-values [Q], s [Q, C], candidate p-values or None)`."""
  s = similarity_lib._similarity(x, y, metric=metric)
  cross = own_lib.cross_own(x, y, s, rel, own_score=own_score)
  q = x.shape[0]
  # Only the own scores and p-values are kept (XLA drops the ranks and the curve).
  scored = label_scoring.label_null_scores(s, cross, rel, k=1, ties="average")
  others = (jnp.arange(q)[None, :] + 1 + jnp.arange(q - 1)[:, None]) % q  # [Q - 1, Q]
  null_own = jnp.take_along_axis(cross, others, axis=0)
  cand = _label_candidate_pvalues(s) if candidate_level else None
  return scored.own_scores, null_own, scored.pvalues, s, cand


def _label_candidate_pvalues(s):
  # Per candidate column: the share of queries whose similarity is >= this one's.
  s = validation.nan_to_neg_inf(s)
  col_sorted = jnp.sort(s, axis=0)
  below = jax.vmap(lambda col, v: jnp.searchsorted(col, v, side="left"),
                   in_axes=(1, 1), out_axes=1)(col_sorted, s)
  return ((s.shape[0] - below) / s.shape[0]).astype(s.dtype)

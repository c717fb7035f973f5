"""AUC-F1 accumulated over batches of queries, in the style of `flax.nnx.metrics` / CLU (SPEC §4).

The query-level AUC-F1 is not a sum over batches, but it is a function of
three numbers per query: its truth rank `r_q` (which needs all `C`
candidates, so a batch is a batch of queries scored against the full
candidate set), its exceedance count `#{b : m_q^b >= m_q}` against `B` null
replicates, and whether it was seen. `AucF1Metric` keeps these in fixed-size
`[Q]` arrays, so it is a pytree of static shape: it passes through `jax.jit`,
`lax.scan` and `shard_map`, and two metrics filled on different devices (or
from different batches) `merge` into one. `compute` gives the same
`AucF1Result` as the one-shot `tb.auc_f1(tb.empirical_pvalues(...),
tb.truth_ranks(...) <= k)`, from the same counts and ranks in the same query
order, bit for bit.

Queries are addressed by position (`rows`), not appended, so batches may come
in any order and from any device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src import types
from twinbench_jax._src.core import auc as auc_lib
from twinbench_jax._src.core import pvalues as pvalues_lib
from twinbench_jax._src.core import ranking
from twinbench_jax._src.core import checks
from twinbench_jax._src.core import validation


@dataclasses.dataclass(frozen=True)
class AucF1Metric:
  """Per-query state of a streamed query-level AUC-F1 (SPEC §3–4).

  Build with `AucF1Metric.empty(n_queries, n_null)`, add batches with
  `update` (pure: it returns a new metric), combine with `merge`, finish with
  `compute`. A frozen dataclass registered as a pytree (`n_null` is static).

  Attributes:
    own_scores: `[Q]` observed own score `m_q` of each query (0 where unseen).
    counts: `[Q]` int32 exceedance counts `#{b : m_q^b >= m_q}`.
    ranks: `[Q]` truth rank `r_q` (SPEC §2) of each query.
    fills: `[Q]` int32, how many updates wrote each query (1 when complete).
    bad: `[Q]` bool, a prediction for the query was not finite (invalid).
    n_null: number of null replicates `B` behind every count.
  """

  own_scores: jax.Array
  counts: jax.Array
  ranks: jax.Array
  fills: jax.Array
  bad: jax.Array
  n_null: int

  @classmethod
  def empty(cls, n_queries: int, n_null: int, dtype: Any = jnp.float32) -> "AucF1Metric":
    """A metric for `n_queries` queries, none seen yet, with `n_null` replicates each."""
    n_queries = checks.check_positive_int(n_queries, "n_queries")
    n_null = checks.check_positive_int(n_null, "n_null")
    zeros = jnp.zeros((int(n_queries),), dtype)
    ints = jnp.zeros((int(n_queries),), jnp.int32)
    return cls(own_scores=zeros, counts=ints, ranks=zeros, fills=ints,
               bad=jnp.zeros((int(n_queries),), bool), n_null=int(n_null))

  @property
  def n_queries(self) -> int:
    return self.counts.shape[0]

  def update(self, rows: jax.Array, scores: jax.Array, relevance: jax.Array,
             own_scores: jax.Array, null_own_scores: jax.Array, *,
             ties: types.Ties = "average") -> "AucF1Metric":
    """Adds a batch of `b` queries at positions `rows`.

    Args:
      rows: `[b]` int positions of the batch's queries in `[0, Q)`.
      scores: `[b, C]` similarities of the batch's predictions to all `C`
        candidates.
      relevance: `[b, C]` boolean relevance of the batch's queries.
      own_scores: `[b]` observed own scores.
      null_own_scores: `[n_null, b]` own scores of the null replicates.
      ties: tie rule of the truth ranks (see `tb.truth_ranks`).

    Returns:
      The metric with the batch's ranks and exceedance counts written in.
    """
    own = validation.as_float_array(own_scores, "own_scores", ndim=1)
    null = validation.as_float_array(null_own_scores, "null_own_scores", ndim=2)
    if null.shape != (self.n_null, own.shape[0]):
      raise ValueError(f"`null_own_scores` must have shape (n_null, b) = ({self.n_null}, "
                       f"{own.shape[0]}), got {tuple(null.shape)}")
    ranks = ranking.truth_ranks(scores, relevance, ties=ties)
    counts = pvalues_lib._exceedance_counts(own, null)
    return self._write(rows, own, counts, ranks, jnp.zeros(own.shape, bool))

  def _write(self, rows, own, counts, ranks, bad) -> "AucF1Metric":
    rows = jnp.asarray(rows)
    if rows.ndim != 1 or not jnp.issubdtype(rows.dtype, jnp.integer):
      raise ValueError(f"`rows` must be a 1-D integer array, got shape {tuple(rows.shape)} and "
                       f"dtype {rows.dtype}")
    if rows.shape[0] != own.shape[0]:
      raise ValueError(f"`rows` must have one entry per query of the batch ({own.shape[0]}), "
                       f"got {rows.shape[0]}")
    n = self.n_queries
    if validation.is_concrete(rows) and rows.size and (int(rows.min()) < 0
                                                       or int(rows.max()) >= n):
      raise ValueError(f"`rows` must be positions in [0, {n}), got values in "
                       f"[{int(rows.min())}, {int(rows.max())}]")
    # Under jit an out-of-range row is dropped: its query stays unseen, so compute() is NaN.
    rows = jnp.where(rows < 0, n, rows)

    def put(field, value):
      return field.at[rows].set(value.astype(field.dtype), mode="drop")

    return dataclasses.replace(
        self, own_scores=put(self.own_scores, own), counts=put(self.counts, counts),
        ranks=put(self.ranks, ranks), fills=self.fills.at[rows].add(1, mode="drop"),
        bad=self.bad.at[rows].max(bad, mode="drop"))

  def merge(self, other: "AucF1Metric") -> "AucF1Metric":
    """The metric of both: queries seen by either (a query seen by both is invalid)."""
    if not isinstance(other, AucF1Metric):
      raise TypeError(f"`other` must be an AucF1Metric, got {type(other).__name__}")
    if (other.n_queries, other.n_null) != (self.n_queries, self.n_null):
      raise ValueError(f"cannot merge metrics of different sizes: (Q, B) = "
                       f"({self.n_queries}, {self.n_null}) and ({other.n_queries}, "
                       f"{other.n_null})")
    mine = self.fills > 0

    def pick(a, b):
      return jnp.where(mine, a, b)

    return dataclasses.replace(
        self, own_scores=pick(self.own_scores, other.own_scores),
        counts=pick(self.counts, other.counts), ranks=pick(self.ranks, other.ranks),
        fills=self.fills + other.fills, bad=self.bad | other.bad)

  def pvalues(self) -> jax.Array:
    """`[Q]` empirical p-values `(1 + counts) / (B + 1)`, as `tb.empirical_pvalues` gives them."""
    p = (1.0 + self.counts.astype(jnp.result_type(float))) / (self.n_null + 1.0)
    return p.astype(jnp.promote_types(self.own_scores.dtype, jnp.float32))

  def compute(self, *, k: int = 1) -> auc_lib.AucF1Result:
    """The query-level AUC-F1 (SPEC §4) of all `Q` queries.

    Eagerly, a query never updated, updated twice, or with a non-finite
    prediction is a `ValueError`; under `jit` the result is NaN instead.
    """
    k = checks.check_k(k, integer=True)
    invalid = (self.fills != 1) | self.bad
    if validation.is_concrete(invalid):
      _raise_if_incomplete(np.asarray(self.fills), np.asarray(self.bad))
      return auc_lib.auc_f1(self.pvalues(), self.ranks <= k)
    return validation.poison(auc_lib.auc_f1(self.pvalues(), self.ranks <= k), jnp.any(invalid))


def _raise_if_incomplete(fills: np.ndarray, bad: np.ndarray) -> None:
  for what, where in (("never updated", fills == 0), ("updated more than once", fills > 1),
                      ("given non-finite predictions (NaN or inf)", bad)):
    if where.any():
      idx = np.flatnonzero(where)
      raise ValueError(f"AucF1Metric: {idx.size} of the {fills.size} queries were {what}, "
                       f"first at rows {idx[:5].tolist()}")


jax.tree_util.register_dataclass(
    AucF1Metric, data_fields=["own_scores", "counts", "ranks", "fills", "bad"],
    meta_fields=["n_null"])

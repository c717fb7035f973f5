"""Query-sharded scoring: the `[Q, C]` work split by rows over a mesh axis (SPEC §2–3).

The nulls split replicates over devices; the score matrix itself is `[Q, C]`
(40 GB at 100k x 100k in float32), so at atlas scale its rows are split too.
Every per-query quantity is a function of one row, except the exact label
null, which counts down the columns of the `[Q, Q]` own-score matrix. Here
each device of the ``"queries"`` mesh axis holds a contiguous block of
`ceil(Q / n)` rows (the last block padded), and:

- similarities `s[rows]` `[Q/n, C]` and truth ranks are computed on the block;
- label-null p-values: the `Q` own scores (one diagonal entry per row) are
  all-gathered, each device counts for every column how many of its rows are
  at least the column's own score, and the int32 counts are `psum`-ed;
- label-null own scores of the other predictions (`[Q - 1, Q]`) come from an
  `all_to_all` that turns row blocks of the own-score matrix into column blocks;
- candidate-level label p-values: each device sorts its block down the
  columns and the sorted blocks travel round a ring (`ppermute`), each device
  counting, for its own entries, the entries of every block at least as large.

Counts are integers, so every p-value equals the unsharded one bit for bit
whenever the similarities do. Per-device memory is O(Q C / n) (plus the `[Q, C]`
boolean relevance when several candidates are relevant to one query).

Bits of the similarities. XLA computes a row of a matrix product or of a row
reduction with the same arithmetic for any number of rows on large arrays,
but on CPU arrays below about 4,096 elements are reduced with other code (seen
with jax 0.10: the row norms of a `[50, 64]` block differ in the last bit from
those rows inside `[100, 64]`). So the sharded scores equal the unsharded ones
bit for bit when each device's block holds at least about 4,096 elements of
`[Q/n, G]` and `[Q/n, C]` (checked on CPU up to 10,000 x 10,000; a GPU's
library may choose another kernel for another shape, set
``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` there); below that, a sharded
call computes the same definitions and may differ in the last bit of a
similarity (and so, at an exact near-tie, in a count). Sharding a matrix that
small gains nothing: use it at scale.

Several processes: the mesh may span the devices of every process of a
`jax.distributed` job; each process passes the same full inputs, the `[Q]`
results come back as ordinary arrays on every process, and the `[Q, C]` ones
(scores, candidate p-values) and `[Q - 1, Q]` null own scores stay global
arrays sharded over the query axis (`jax.Array`; read a process's rows with
`addressable_shards`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from twinbench_jax._src.core import own_scores as own_lib
from twinbench_jax._src.core import ranking
from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.core import validation
from twinbench_jax._src.nulls import sharding

# Name of the mesh axis that queries (rows of the score matrix) are split over.
QUERY_AXIS = "queries"


def query_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A 1-D mesh named ``"queries"`` over `devices` (default: `jax.devices()`)."""
  devs = list(jax.devices() if devices is None else devices)
  if not devs:
    raise ValueError("`devices` is empty; pass None to use every device")
  return Mesh(np.array(devs, dtype=object), (QUERY_AXIS,))


def check_query_mesh(mesh: Any, name: str = "mesh") -> Mesh:
  """Returns `mesh` if it is a `jax.sharding.Mesh` with a ``"queries"`` axis; raises otherwise."""
  if not isinstance(mesh, Mesh):
    raise TypeError(f"`{name}` must be a jax.sharding.Mesh (e.g. tb.query_mesh()), got "
                    f"{type(mesh).__name__}")
  if QUERY_AXIS not in mesh.axis_names:
    raise ValueError(f"`{name}` must have an axis named {QUERY_AXIS!r} to split queries over; "
                     f"got axes {mesh.axis_names}")
  return mesh


def _rows_per_device(q: int, mesh: Mesh) -> int:
  return math.ceil(q / mesh.shape[QUERY_AXIS])


def place_rows(a: Any, mesh: Mesh) -> jax.Array:
  """`a` `[Q, ...]` padded with zero rows to a multiple of the query-axis size, rows split."""
  a = np.asarray(a) if not isinstance(a, jax.Array) else a
  q = a.shape[0]
  pad = _rows_per_device(q, mesh) * mesh.shape[QUERY_AXIS] - q
  if pad:
    a = (jnp if isinstance(a, jax.Array) else np).concatenate(
        [a, (jnp if isinstance(a, jax.Array) else np).zeros((pad,) + a.shape[1:], a.dtype)])
  return sharding.place(a, mesh, PartitionSpec(QUERY_AXIS))


def _block_ranks(s, rows, rel_blk, *, identity, ties):
  """`[b]` truth ranks of a row block `s` `[b, C]` (global row indices `rows`)."""
  if identity:
    rel_blk = jnp.arange(s.shape[1])[None, :] == rows[:, None]
  return ranking._truth_ranks(s, rel_blk, ties=ties)


def _label_counts(cross, rows, valid, q):
  """`([b] own scores of the block, [Q] int32 label-null counts)` from a row block `cross` `[b, Q]`.

  Column `j`'s count is `#{q' : cross[q', j] >= cross[j, j]}` over every
  device's rows (NaN as -inf, as `pvalues._label_permutation_pvalues`).
  """
  own_blk = jnp.take_along_axis(cross, jnp.minimum(rows, q - 1)[:, None], axis=1)[:, 0]
  own = jax.lax.all_gather(own_blk, QUERY_AXIS, tiled=True)[:q]
  o = validation.nan_to_neg_inf(own)[None, :]
  exceed = ((cross >= o) | (jnp.isnan(cross) & (o == -jnp.inf))) & valid[:, None]
  return own_blk, jax.lax.psum(jnp.sum(exceed, axis=0, dtype=jnp.int32), QUERY_AXIS)


def _null_own_block(cross, rows, q):
  """`[Q - 1, b]` label-null own scores of this device's columns (see `tb.label_null`).

  `null_own[b', j] = cross[(j + 1 + b') mod Q, j]`: an `all_to_all` turns the
  row block `[b, Q]` into the column block `[n b, b]` holding every row.
  """
  b = rows.shape[0]
  n = jax.lax.axis_size(QUERY_AXIS)
  cross = jnp.pad(cross, ((0, 0), (0, n * b - q)))
  cols = jax.lax.all_to_all(cross, QUERY_AXIS, 1, 0, tiled=True)  # [n b, b]
  idx = (rows[None, :] + 1 + jnp.arange(q - 1)[:, None]) % q
  return jnp.take_along_axis(cols, idx, axis=0)


def _candidate_counts(s, valid, q):
  """`[b, C]` int32 `#{q' : s[q', c] >= s[q, c]}` over all rows, for this device's rows.

  The column-sorted blocks go round the ring of devices; padded rows sort
  first as -inf and are taken back out of the counts of -inf entries.
  """
  b = s.shape[0]
  n = jax.lax.axis_size(QUERY_AXIS)
  me = jax.lax.axis_index(QUERY_AXIS)
  v = jnp.where(valid[:, None], validation.nan_to_neg_inf(s), -jnp.inf)
  below = jax.vmap(lambda col, x: jnp.searchsorted(col, x, side="left"), in_axes=(1, 1),
                   out_axes=1)
  ring = [(i, (i + 1) % n) for i in range(n)]

  def step(t, carry):
    block, counts = carry
    origin = (me - t) % n
    n_pad = jnp.clip((origin + 1) * b - q, 0, b)
    ge = b - below(block, v) - jnp.where(v == -jnp.inf, n_pad, 0)
    return jax.lax.ppermute(block, QUERY_AXIS, ring), counts + ge.astype(jnp.int32)

  init = (jnp.sort(v, axis=0), sharding.varying(jnp.zeros(s.shape, jnp.int32), QUERY_AXIS))
  return jax.lax.fori_loop(0, n, step, init)[1]


@functools.partial(jax.jit, static_argnames=("mesh", "metric"))
def similarity_rows(x: jax.Array, y: jax.Array, *, mesh: Mesh, metric: str) -> jax.Array:
  """`[Q, C]` `tb.similarity(x, y)` with its rows split over the ``"queries"`` axis.

  `Q` must be a multiple of the axis size; `x` `[Q, G]`, `y` `[C, G]` as placed by the caller.
  """
  rows = PartitionSpec(QUERY_AXIS)
  local = functools.partial(similarity_lib._similarity, metric=metric)
  return sharding.shard_map(lambda a, b: local(a, b), mesh=mesh,
                            in_specs=(rows, PartitionSpec()), out_specs=rows)(x, y)


_STATIC = ("mesh", "q", "metric", "own_score", "single", "ties", "upcast", "outputs")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _kernel(x_rows, y, rel_rows, cross_arg, *, mesh, q, metric, own_score, single, ties, upcast,
            outputs):
  """The sharded pass; `outputs` names what to return (a static tuple), see `score_queries`."""
  identity = single == "identity"

  def local(x_blk, y, rel_blk, cross_arg):
    b = x_blk.shape[0]
    rows = jax.lax.axis_index(QUERY_AXIS) * b + jnp.arange(b)
    valid = rows < q
    s = similarity_lib._similarity(x_blk, y, metric=metric)
    s = validation.at_least_float32(s) if upcast else s
    if own_score == "similarity" and identity:
      cross = s
    elif own_score == "similarity" and single is True:
      cross = s[:, cross_arg]  # cross_arg: [Q] index of each query's relevant candidate
    else:
      cross = own_lib.cross_own(x_blk, y, s, cross_arg, single, own_score=own_score)
    own, counts = _label_counts(cross, rows, valid, q)
    out = {"own": own, "pvalues": (counts.astype(cross.dtype) / q).astype(cross.dtype)}
    if "ranks" in outputs:
      out["ranks"] = _block_ranks(s, rows, rel_blk, identity=identity, ties=ties)[:q]
    if "scores" in outputs:
      out["scores"] = s
    if "null_own" in outputs:
      out["null_own"] = _null_own_block(cross, rows, q)
    if "candidate_pvalues" in outputs:
      out["candidate_pvalues"] = (_candidate_counts(s, valid, q) / q).astype(s.dtype)
    return out

  rows, rep = PartitionSpec(QUERY_AXIS), PartitionSpec()
  specs = {"own": rows, "pvalues": rep, "ranks": rows, "scores": rows,
           "null_own": PartitionSpec(None, QUERY_AXIS), "candidate_pvalues": rows}
  out = sharding.shard_map(local, mesh=mesh, in_specs=(rows, rep, rows, rep),
                           out_specs={k: specs[k] for k in ("own", "pvalues") + outputs})(
                               x_rows, y, rel_rows, cross_arg)
  # [Q] per-query results, small and wanted whole, are gathered onto every device;
  # the large ones stay split (unevenly when n does not divide Q).
  def keep(spec, cut):
    return lambda a: jax.lax.with_sharding_constraint(cut(a), NamedSharding(mesh, spec))

  rows_cut, cols_cut = (lambda a: a[:q]), (lambda a: a[:, :q])
  trim = {"own": keep(rep, rows_cut), "ranks": keep(rep, rows_cut),
          "scores": keep(rows, rows_cut), "candidate_pvalues": keep(rows, rows_cut),
          "null_own": keep(specs["null_own"], cols_cut)}
  return {k: trim[k](v) if k in trim else v for k, v in out.items()}


def score_queries(x: jax.Array, y: jax.Array, rel: Optional[jax.Array], *, mesh: Mesh,
                  metric: str, single, own_score: str = "similarity", ties: str = "average",
                  upcast: bool = True, outputs: Sequence[str] = ("ranks",)) -> dict:
  """Label-null scoring with the queries (rows) split over the ``"queries"`` axis of `mesh`.

  Unchecked: the callers (`tb.evaluate_arrays`, `tb.label_null`) validate.

  Args:
    x: `[Q, G]` predictions.
    y: `[C, G]` references (replicated on every device).
    rel: `[Q, C]` bool relevance, or None for the identity (``single="identity"``).
    mesh: a mesh with a ``"queries"`` axis (other axes, if any, hold copies).
    metric: similarity metric.
    single: ``"identity"``, True (one relevant candidate per query) or False.
    own_score: ``"similarity"``, ``"r2"`` or ``"pearson"`` (see `tb.label_null`).
    ties: tie rule of the ranks.
    upcast: similarities in at least float32 (as `tb.evaluate_arrays`) or in
      the input precision (as `tb.label_null`).
    outputs: any of ``"ranks"``, ``"scores"``, ``"null_own"``, ``"candidate_pvalues"``.

  Returns:
    A dict with ``"own"`` and ``"pvalues"`` (`[Q]`, ordinary arrays on every
    process) and the requested outputs: ``"ranks"`` `[Q]`, ``"scores"`` and
    ``"candidate_pvalues"`` `[Q, C]`, ``"null_own"`` `[Q - 1, Q]` (the last
    three sharded over the query axis).
  """
  q, c = x.shape[0], y.shape[0]
  n = mesh.shape[QUERY_AXIS]
  if q % n and set(outputs) - {"ranks"}:
    raise ValueError(
        f"`mesh` splits the queries over {n} devices, but Q = {q} predictions is not a multiple "
        f"of {n}: the [Q, C] scores are returned split by rows, which needs equal blocks; use "
        f"a mesh whose {QUERY_AXIS!r} axis divides Q")
  if jax.process_count() > 1:  # each process places its shards from its own copy
    sharding.check_same_on_processes(
        [np.asarray(a, np.float64).sum(axis=1) for a in (x, y)] +
        ([] if rel is None else [np.asarray(rel).sum(axis=1)]),
        "`predictions`, `references` or `relevance`")
  identity = single == "identity"
  rel_rows = place_rows(np.zeros((q, 1), bool) if identity else rel, mesh)
  if own_score == "similarity" and identity:
    cross_arg = np.zeros((), np.int32)
  elif own_score == "similarity" and single is True:
    cross_arg = jnp.argmax(rel, axis=1).astype(jnp.int32)
  else:
    cross_arg = jnp.eye(q, c, dtype=bool) if identity else rel
  out = _kernel(place_rows(x, mesh), sharding.place(y, mesh, PartitionSpec()), rel_rows,
                sharding.place(cross_arg, mesh, PartitionSpec()), mesh=mesh, q=q,
                metric=metric, own_score=own_score, single=single, ties=ties, upcast=upcast,
                outputs=tuple(outputs))
  small = {k: v for k, v in out.items() if k in ("own", "pvalues", "ranks")}
  return dict(out, **sharding.host_local(small))

"""The model null with queries split over a mesh axis, replicates over another (SPEC §3).

`tb.model_null(..., mesh=mesh)` with a ``"queries"`` axis in `mesh` (and
optionally a ``"replicates"`` axis) runs here. The `nq` devices of one
``"queries"`` row of the mesh (a query group) share the work of `nq` batches
at a time: device `j` predicts batch `j` whole (the model maps all `Q`
inputs at once, so it cannot be split by rows), with the same batch size and
arithmetic as on one device, then an `all_to_all` hands every device its
`Q/nq` rows of all `nq` batches. Each device scores its rows one batch at a
time: similarities `[batch, Q/nq, C]`, null own scores and int32 exceedance
counts `[Q/nq, C]`, summed (`psum`) over the ``"replicates"`` axis. The
observed similarities and the counts are never whole on one device:
per-device memory O(batch Q C / nq) plus the `[nq, batch, Q/nq, G]` exchanged
predictions (O(batch Q G), as the batch a device predicts).

Replicate `b` keeps the key `fold_in(key, b)` and its batch
`[k * batch, (k + 1) * batch)`, so the null own scores, p-values and counts
equal those of the replicate-only mesh bit for bit where XLA rounds a row
block as the whole matrix (see `query_sharding`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from twinbench_jax._src.core import own_scores as own_lib
from twinbench_jax._src.core import pvalues as pvalues_lib
from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.core import validation
from twinbench_jax._src.nulls import predict as predict_lib
from twinbench_jax._src.nulls import query_sharding
from twinbench_jax._src.nulls import scoring
from twinbench_jax._src.nulls import sharding
from twinbench_jax._src.nulls import streaming
from twinbench_jax._src.nulls.result import NullResult

QUERIES = query_sharding.QUERY_AXIS
REPLICATES = sharding.AXIS


# The static settings: `streaming.KernelSettings` over the query mesh, `per_device`
# replicates per query group per call (a multiple of `batch * nq`).
_Settings = streaming.KernelSettings


def check_mesh(mesh: Any) -> Mesh:
  """A mesh with a ``"queries"`` axis and, besides, at most a ``"replicates"`` axis."""
  mesh = query_sharding.check_query_mesh(mesh)
  extra = set(mesh.axis_names) - {QUERIES, REPLICATES}
  if extra:
    raise ValueError(f"`mesh` axes must be {QUERIES!r} and optionally {REPLICATES!r}; got "
                     f"{mesh.axis_names}")
  return mesh


def _axes(mesh: Mesh) -> tuple:
  return tuple(a for a in (REPLICATES, QUERIES) if a in mesh.axis_names)


def _exchange(a: jax.Array) -> jax.Array:
  """`[batch, Q, ...]` on device j of a query group -> `[nq * batch, Q/nq, ...]`: rows
  block j of every device's batch, in device order (so in replicate order)."""
  return jax.lax.all_to_all(a, QUERIES, 1, 0, tiled=True)


def _score_rows(i, carry, *, xr, same, first, n_null, own_rows, s_rows, ctx, settings):
  """Scores batch `i` of the `nq` exchanged ones: rows `[batch, Q/nq, G]`, one at a time
  so that the similarities `[batch, Q/nq, C]` fall with the device count too."""
  batch = settings.batch
  xb = jax.lax.dynamic_slice_in_dim(xr, i * batch, batch, axis=0)
  same_b = jax.lax.dynamic_slice_in_dim(same, i * batch, batch, axis=0)
  valid = first + i * batch + jnp.arange(batch, dtype=jnp.int32) < n_null
  s = None
  if settings.candidate_level:
    b, rows, g = xb.shape
    s = similarity_lib._similarity(xb.reshape(b * rows, g), ctx["y"], metric=settings.metric,
                                   exact=False).reshape(b, rows, -1)
  score = functools.partial(scoring._replicate_scores, mode=settings.mode,
                            candidate_level=settings.candidate_level)
  own, exceed = jax.vmap(score, in_axes=(0, 0, 0, None, None, None))(
      xb, s, same_b, own_rows, s_rows, ctx)
  offset = first + i * batch
  new = dict(carry, own=jax.lax.dynamic_update_slice(
      carry["own"], own.astype(carry["own"].dtype), (offset, jnp.zeros_like(offset))))
  if settings.candidate_level:
    new["counts"] = carry["counts"] + jnp.sum(exceed & valid[:, None, None], axis=0,
                                              dtype=jnp.int32)
  return new


def _group_step(it, carry, *, first, n_null, predict, x_obs, own_rows, s_rows, ctx,
                settings):
  """One iteration of a query group: `nq` batches predicted, exchanged, scored.

  `first` is the group's first replicate; the carry's own scores are indexed
  from it (`carry["own"][r - first]` for replicate `r`).
  """
  nq, batch = jax.lax.axis_size(QUERIES), settings.batch
  base = it * nq * batch  # relative to `first`
  mine = first + base + jax.lax.axis_index(QUERIES) * batch + jnp.arange(batch,
                                                                         dtype=jnp.int32)
  xb = predict(mine).astype(x_obs.dtype)  # [batch, Q, G], as one device computes it
  same, finite = scoring._row_checks(xb, x_obs)
  xr, same = _exchange(xb), _exchange(same)  # [nq batch, Q/nq, G], [nq batch, Q/nq]
  carry = dict(carry, bad=carry["bad"] + jnp.sum((mine < n_null) & ~finite, dtype=jnp.int32))
  # Replicate indices below are relative to the group: `first` moves the validity check.
  score = functools.partial(_score_rows, xr=xr, same=same, first=base, n_null=n_null - first,
                            own_rows=own_rows, s_rows=s_rows, ctx=ctx, settings=settings)
  return jax.lax.fori_loop(0, nq, score, carry)


@functools.partial(jax.jit, static_argnames=("apply", "randomize", "settings"))
def _chunk(start, n_null, key, params, inputs, x_obs, split, y, *, apply, randomize,
           settings: _Settings):
  """Replicates `start .. start + chunk - 1` over the 2-D (or query-only) mesh.

  `split` holds the per-query values split by rows: observed own scores
  ``"own"`` `[Q]`, similarities ``"s"`` `[Q, C]` (or None) and the own-score
  context ``"ctx"`` (its `[Q, ...]` leaves); `y` `[C, G]` is replicated.
  """
  axes = _axes(settings.mesh)

  def local(start, n_null, key, params, inputs, x_obs, split, y):
    group = jax.lax.axis_index(REPLICATES) if REPLICATES in axes else 0
    first = start + group * settings.per_device
    step_size = jax.lax.axis_size(QUERIES) * settings.batch
    n_iter = (jnp.clip(n_null - first, 0, settings.per_device) + step_size - 1) // step_size
    predict = jax.vmap(lambda i: apply(params, randomize(jax.random.fold_in(key, i), inputs)))
    body = functools.partial(_group_step, first=first, n_null=n_null, predict=predict,
                             x_obs=x_obs, own_rows=split["own"], s_rows=split["s"],
                             ctx=dict(split["ctx"], y=y), settings=settings)
    rows = x_obs.shape[0] // jax.lax.axis_size(QUERIES)
    init = {"own": jnp.zeros((settings.per_device, rows), x_obs.dtype),
            "bad": jnp.zeros((), jnp.int32)}
    if settings.candidate_level:
      init["counts"] = jnp.zeros((rows, y.shape[0]), jnp.int32)
    out = jax.lax.fori_loop(0, n_iter, body, jax.lax.pcast(init, axes, to="varying"))
    out["bad"] = jax.lax.psum(out["bad"], axes)
    if settings.candidate_level and REPLICATES in axes:
      out["counts"] = jax.lax.psum(out["counts"], REPLICATES)
    return out

  rep, rows = PartitionSpec(), PartitionSpec(QUERIES)
  specs = {"own": PartitionSpec(REPLICATES if REPLICATES in axes else None, QUERIES),
           "bad": rep}
  if settings.candidate_level:
    specs["counts"] = rows
  out = sharding.shard_map(local, mesh=settings.mesh,
                           in_specs=(rep,) * 6 + (rows, rep), out_specs=specs)(
                               start, n_null, key, params, inputs, x_obs, split, y)
  # The chunk's own scores are small: gathered whole onto every device, as on one axis.
  return dict(out, own=jax.lax.with_sharding_constraint(out["own"],
                                                        NamedSharding(settings.mesh, rep)))


@functools.partial(jax.jit, static_argnames=("mode",))
def _observed_own(x, ctx, *, mode):
  return own_lib.own_from_context(x, None, ctx, mode=mode)


@functools.partial(jax.jit, static_argnames=("n_null",))
def _pvalues_from_counts(counts, *, n_null):
  # `pvalues.pvalues_from_counts` without its host-side range check: the counts are
  # in [0, B] by construction, and stay split over the devices.
  return (1.0 + counts.astype(jnp.result_type(float))) / (n_null + 1.0)


def run(apply: Callable, params: Any, inputs: Any, rand: Callable, key: jax.Array, n_null: int,
        y: jax.Array, rel: jax.Array, *, mesh: Mesh, metric: str, own_score: str,
        candidate_level: bool, chunk_size: Optional[int], batch_size: Optional[int],
        progress: bool) -> NullResult:
  """`tb.model_null` on a mesh with a ``"queries"`` axis, after the caller's checks."""
  q, c, g = rel.shape[0], y.shape[0], y.shape[1]
  nq = mesh.shape[QUERIES]
  nr = mesh.shape[REPLICATES] if REPLICATES in mesh.axis_names else 1
  if q % nq:
    raise ValueError(f"`mesh` splits the queries over {nq} devices, but Q = {q} is not a "
                     f"multiple of {nq}; use a mesh whose {QUERIES!r} axis divides Q")
  # The batch is the one the replicate-only mesh would use: the same arithmetic per replicate.
  per_replicate = streaming.bytes_per_replicate(q, c, g, candidate_level, inputs)
  budget = sharding.batch_bytes(mesh.devices.ravel())
  batch = sharding.chunk_layout(n_null, 1, None, batch_size, per_replicate,
                                batch_bytes=budget).batch
  layout = sharding.chunk_layout(n_null, nr, chunk_size, batch * nq, per_replicate)
  x_obs = predict_lib.predict_observed(params, inputs, key, apply=apply, randomize=rand,
                                       batch=batch)
  validation.check_no_nan(x_obs, "predict_fn(inputs)")
  dtype = jnp.result_type(x_obs.dtype, y.dtype)
  x_obs, y = x_obs.astype(dtype), y.astype(dtype)
  mode = own_lib.own_mode(own_score, metric, bool(jnp.all(jnp.sum(rel, axis=1) == 1)))
  if own_lib.needs_scores(mode):
    raise ValueError(f"metric={metric!r} with several relevant candidates per query averages "
                     "the [Q, C] similarities into the own score; with a 'queries' mesh axis "
                     "use one relevant candidate per query or another metric")
  ctx = own_lib.own_context(y, rel, mode=mode)
  own_obs = _observed_own(x_obs, ctx, mode=mode)
  sharding.check_same_on_processes(
      (key if key.dtype == np.uint32 else jax.random.key_data(key),
       np.array((n_null, batch) + tuple(layout)), own_obs),
      "`key`, `n_null` or the observed own scores (from `predict_fn`, `inputs`, `references`, "
      "`relevance`)")
  rows = PartitionSpec(QUERIES)
  y_rep = sharding.place(y, mesh, PartitionSpec())
  s_obs = query_sharding.similarity_rows(sharding.place(x_obs, mesh, rows), y_rep, mesh=mesh,
                                         metric=metric)
  ctx_rows = sharding.place({k: v for k, v in ctx.items() if k != "y"}, mesh, rows)
  split = {"own": sharding.place(own_obs, mesh, rows), "s": s_obs if candidate_level else None,
           "ctx": ctx_rows}
  args = sharding.replicated((key, params, inputs, x_obs), mesh) + (split, y_rep)
  settings = _Settings(mesh, layout.per_device, batch, metric, mode, candidate_level)
  kernel = functools.partial(_chunk, apply=apply, randomize=rand, settings=settings)
  owns, counts, bad = [], None, 0
  with streaming._progress_bar(layout.n_chunks, progress, "model null") as bar:
    for i in range(layout.n_chunks):
      out = kernel(np.int32(i * layout.chunk), np.int32(n_null), *args)
      owns.append(sharding.host_local(out["own"]))
      bad += int(sharding.host_local(out["bad"]))
      if candidate_level:
        counts = out["counts"] if counts is None else counts + out["counts"]
      bar.update(1)
  if bad:
    raise ValueError(
        f"`predict_fn` returned non-finite predictions (NaN or inf) for {bad} of the {n_null} "
        "randomised inputs; a null replicate must be finite (check the model on inputs "
        "randomised with `randomize`)")
  null_own = jnp.concatenate(owns, axis=0)[:n_null]
  cand = None
  if candidate_level:
    cand = _pvalues_from_counts(counts, n_null=n_null).astype(s_obs.dtype)
  return NullResult(own_scores=own_obs, null_own_scores=null_own,
                    pvalues=pvalues_lib.empirical_pvalues(own_obs, null_own), scores=s_obs,
                    relevance=rel, candidate_pvalues=cand, kind="model", n_null=n_null,
                    metric=metric, own_score=own_score)

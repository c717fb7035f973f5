"""Streaming null replicates over devices and chunks (SPEC §3).

Replicates run in chunks through a module-level jitted kernel (split over
devices, each looping over vmapped batches of its share). Query-level null
own scores `[B, Q]` are kept; candidate-level similarities `[Q, C]` of a
replicate only live inside its chunk, where they become int32 exceedance
counts that add up over chunks, so the `[B, Q, C]` null tensor never exists.

Reproducibility. Replicate `b` uses the key `jax.random.fold_in(key, b)` and
nothing else, so its randomised inputs are `randomize(fold_in(key, b), inputs)`
whatever the chunk size or the number of devices, and the p-values are
bit-identical across both.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from twinbench_jax._src.nulls import scoring
from twinbench_jax._src.nulls import sharding


@dataclasses.dataclass(frozen=True)
class KernelSettings:
  """The static settings of a chunk kernel: hashable, one compilation per value.

  Attributes:
    mesh: the 1-D device mesh replicates are split over (`sharding.replicate_mesh`),
      or `query_model`'s mesh (a ``"queries"`` axis, optionally ``"replicates"``).
    per_device: replicates each device (each query group, for `query_model`)
      handles per kernel call.
    batch: replicates vmapped together on a device.
    metric: the similarity metric.
    mode: own-score mode (`own_scores.own_mode`).
    candidate_level: whether `[Q, C]` exceedance counts are streamed too.
  """

  mesh: Mesh
  per_device: int
  batch: int
  metric: str
  mode: str
  candidate_level: bool


def _device_loop(first, n_null, make_batch, score, *, per_device, batch, n_queries, n_cand,
                 dtype, candidate_level):
  """Replicates `first .. first + per_device - 1` of one device, one vmapped batch at a time.

  The trip count is a runtime value (the batches that hold a replicate below
  `n_null`), so the loop body is compiled once, the same way for every chunk
  size and device count, and batches past `n_null` cost nothing.
  """
  n_here = jnp.clip(n_null - first, 0, per_device)
  n_iter = (n_here + batch - 1) // batch

  def body(j, carry):
    offset = j * batch
    idx = first + offset + jnp.arange(batch, dtype=jnp.int32)
    out = score(make_batch(offset, idx), idx < n_null)
    # both indices of one integer type (the literal 0 is int64 under `jax_enable_x64`)
    new = {"own": jax.lax.dynamic_update_slice(carry["own"], out["own"].astype(dtype),
                                               (offset, jnp.zeros_like(offset))),
           "bad": carry["bad"] + out["bad"]}
    if candidate_level:
      new["counts"] = carry["counts"] + out["counts"]
    return new

  init = {"own": jnp.zeros((per_device, n_queries), dtype), "bad": jnp.zeros((), jnp.int32)}
  if candidate_level:
    init["counts"] = jnp.zeros((n_queries, n_cand), jnp.int32)
  # The loop carries per-device values (they differ between devices until the psum).
  init = sharding.varying(init)
  out = jax.lax.fori_loop(0, n_iter, body, init)
  # Sums over devices; the own scores stay split (one block of rows per device).
  return {k: v if k == "own" else jax.lax.psum(v, sharding.AXIS) for k, v in out.items()}


def score_device_share(first, n_null, make_batch, x_obs, own_obs, s_obs, ctx, *,
                       settings: KernelSettings):
  """One device's replicates, batches from `make_batch`, scored by `scoring.score_batch`."""
  score = functools.partial(scoring.score_batch, x_obs=x_obs, own_obs=own_obs, s_obs=s_obs,
                            ctx=ctx, metric=settings.metric, mode=settings.mode,
                            candidate_level=settings.candidate_level)
  return _device_loop(first, n_null, make_batch, score, per_device=settings.per_device,
                      batch=settings.batch, n_queries=x_obs.shape[0], n_cand=ctx["y"].shape[0],
                      dtype=x_obs.dtype, candidate_level=settings.candidate_level)


def replicate_outputs(out, mesh):
  # Every device ends with the whole chunk of own scores (tiny: [chunk, Q]) and the
  # sums, so results are fully replicated and readable on any host.
  own = jax.lax.with_sharding_constraint(out["own"], NamedSharding(mesh, PartitionSpec()))
  return dict(out, own=own)


def out_specs(candidate_level):
  specs = {"own": PartitionSpec(sharding.AXIS), "bad": PartitionSpec()}
  if candidate_level:
    specs["counts"] = PartitionSpec()
  return specs


def bytes_per_replicate(q: int, c: int, g: int, candidate_level: bool, inputs: Any) -> int:
  """Working memory of one replicate (bytes): its inputs, predictions and similarities."""
  n_inputs = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(inputs))
  return 4 * (3 * q * g + (3 * q * c if candidate_level else 0) + 3 * n_inputs)


def _progress_bar(total: int, progress: bool, desc: str):
  # disable=None: shown on a terminal, silent when stderr is not one; one bar per job
  # (process 0's) when several processes run it.
  from tqdm import tqdm  # imported when a null runs, not with the array core

  show = progress and jax.process_index() == 0
  return tqdm(total=total, desc=desc, unit="chunk", disable=None if show else True)


def stream(n_chunks: int, run_chunk: Callable[[int], dict], progress: bool, desc: str):
  """Runs the chunks and adds up their outputs; one chunk runs while the next is sent.

  Returns `(own [n_chunks * chunk, Q], counts [Q, C] or None, bad replicates)`.
  """
  owns, total = [], {}
  with _progress_bar(n_chunks, progress, desc) as bar:
    pending = None
    for i in range(n_chunks):
      out = sharding.host_local(run_chunk(i))
      owns.append(out["own"])
      for k, v in out.items():
        if k != "own":
          total[k] = v if k not in total else total[k] + v
      if pending is not None:
        jax.block_until_ready(pending)
        bar.update(1)
      pending = out["own"]
    if pending is not None:
      jax.block_until_ready(pending)
      bar.update(1)
  return jnp.concatenate(owns, axis=0), total.get("counts"), int(total["bad"])

"""The precomputed null: `B` null predictions made elsewhere, streamed in chunks (SPEC §3).

Same p-values as `tb.model_null` (the same kernels score the replicates); the
replicates come as one `[B, Q, G]` array-like read a chunk at a time, or as a
sequence of arrays, AnnData objects or ``.h5ad`` files (`sources`).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import PartitionSpec

from twinbench_jax._src.nulls import checks
from twinbench_jax._src.nulls import result as result_lib
from twinbench_jax._src.nulls import scoring
from twinbench_jax._src.nulls import sharding
from twinbench_jax._src.nulls import sources
from twinbench_jax._src.nulls import streaming
from twinbench_jax._src.nulls.result import NullResult

# Precomputed replicates read into host memory per kernel call when `chunk_size` is None.
_HOST_CHUNK_BYTES = 1 << 30


@functools.partial(jax.jit, static_argnames=("settings",))
def _precomputed_chunk(start, n_null, xb, x_obs, own_obs, s_obs, ctx, *,
                       settings: streaming.KernelSettings):
  """Scores a chunk of given null predictions `[chunk, Q, G]` split over the devices."""

  def local(start, n_null, xb, x_obs, own_obs, s_obs, ctx):
    first = start + jax.lax.axis_index(sharding.AXIS) * settings.per_device

    def make_batch(offset, idx):
      del idx
      return jax.lax.dynamic_slice_in_dim(xb, offset, settings.batch, axis=0)

    return streaming.score_device_share(first, n_null, make_batch, x_obs, own_obs, s_obs, ctx,
                                        settings=settings)

  rep, split = PartitionSpec(), PartitionSpec(sharding.AXIS)
  out = sharding.shard_map(local, mesh=settings.mesh,
                           in_specs=(rep, rep, split, rep, rep, rep, rep),
                           out_specs=streaming.out_specs(settings.candidate_level))(
                               start, n_null, xb, x_obs, own_obs, s_obs, ctx)
  return streaming.replicate_outputs(out, settings.mesh)


def precomputed_null(
    predictions: Any,
    null_predictions: Any,
    references: jax.Array,
    relevance: Optional[jax.Array] = None,
    *,
    metric: str = "sqeuclidean",
    own_score: str = "similarity",
    candidate_level: bool = False,
    chunk_size: Optional[int] = None,
    batch_size: Optional[int] = None,
    devices: Optional[Sequence[Any]] = None,
    layer: Optional[str] = None,
    progress: bool = True,
) -> NullResult:
  r"""Permutation null from predictions made elsewhere on randomised inputs (SPEC §3).

  Same p-values as `tb.model_null` (the same kernels score the replicates);
  only the source of the null predictions differs, so any framework (e.g. a
  PyTorch model run `B` times on shuffled inputs) can provide them.

  Args:
    predictions: `[Q, G]` predictions from the real inputs (an array, an
      AnnData object or an ``.h5ad`` path; see `null_predictions`).
    null_predictions: the `B` null replicates, either one array-like of shape
      `[B, Q, G]` (numpy, jax, a `np.memmap` or an h5py dataset: read one chunk
      at a time), or a sequence of `B` items, each a `[Q, G]` array, an AnnData
      object or a path to an ``.h5ad`` file. AnnData rows are taken as they are:
      one row per query, in the order of `predictions` (pseudobulk first, e.g.
      with the profile helpers); `X` or `layers[layer]`, dense or sparse.
    references: `[C, G]` real candidate profiles.
    relevance: `[Q, C]` boolean; default: the identity (`Q == C`).
    metric: similarity metric (see `tb.similarity`).
    own_score: ``"similarity"``, ``"r2"`` or ``"pearson"`` (see `tb.model_null`).
    candidate_level: also compute `[Q, C]` entry-wise p-values (streamed counts).
    chunk_size: replicates loaded and scored per kernel call (see
      `tb.model_null`); None: about a tenth of `n_null`, and at most about 1 GiB
      of replicates in host memory.
    batch_size: replicates vmapped together on a device (see `tb.model_null`).
    devices: devices to split replicates over; None: `jax.devices()`.
    layer: AnnData layer to read instead of `X`.
    progress: show a progress bar over chunks (on a terminal).

  Returns:
    A `NullResult` with `kind="precomputed"`.
  """
  checks.check_options(metric, own_score)
  x_obs = sources.load_profile(predictions, "predictions", layer)
  checks.check_precomputed_order(x_obs, null_predictions, references)
  y, rel = checks.check_references(references, relevance, n_queries=x_obs.shape[0])
  x_obs = checks.check_predictions(x_obs, "predictions", y, rel)
  source = sources.NullSource(null_predictions, (rel.shape[0], y.shape[1]), layer)
  n_null = source.n_null
  x_obs, y, mode, ctx, own_obs, s_obs = scoring.observed(x_obs, y, rel, metric, own_score)

  mesh = sharding.replicate_mesh(devices)
  q, c, g = rel.shape[0], y.shape[0], y.shape[1]
  # The chunk's replicates are held in host memory: at most about `_HOST_CHUNK_BYTES`.
  layout = sharding.chunk_layout(n_null, mesh.size, chunk_size, batch_size,
                                 streaming.bytes_per_replicate(q, c, g, candidate_level, ()),
                                 batch_bytes=sharding.batch_bytes(mesh.devices.ravel()),
                                 max_chunk=max(1, _HOST_CHUNK_BYTES // (4 * q * g)))
  sharding.check_same_on_processes(
      (np.array((n_null,) + tuple(layout)), own_obs),
      "the number of null replicates or the observed own scores (from `predictions`, "
      "`references`, `relevance`)")
  args = sharding.replicated((x_obs, own_obs, s_obs if candidate_level else None, ctx), mesh)
  settings = streaming.KernelSettings(mesh, layout.per_device, layout.batch, metric, mode,
                                     candidate_level)
  kernel = functools.partial(_precomputed_chunk, settings=settings)
  n_arr = np.int32(n_null)

  def run_chunk(i):
    lo = i * layout.chunk
    hi = min(n_null, lo + layout.chunk)
    xb = np.zeros((layout.chunk, q, g), np.dtype(x_obs.dtype))
    xb[:hi - lo] = source.read(lo, hi)
    return kernel(np.int32(lo), n_arr, sharding.split_replicates(xb, mesh), *args)

  null_own, counts, _ = streaming.stream(layout.n_chunks, run_chunk, progress, "precomputed null")
  return result_lib.finish("precomputed", own_obs, null_own, counts, s_obs, rel, n_null, metric,
                 own_score)

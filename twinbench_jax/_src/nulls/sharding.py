"""Spreading null replicates over devices in fixed-size chunks (SPEC §3).

Replicates are independent, so the only layout needed is a 1-D mesh over the
devices with the replicate axis split across it; everything else (inputs,
references, observed scores) is replicated. A kernel call (a chunk) hands
`per_device` consecutive replicates to each device, which runs them in a loop
over fixed-size vmapped batches; replicates past `B` are skipped or masked.

Several processes (multi-host). After `jax.distributed.initialize()`,
`jax.devices()` lists the devices of every process, and the same mesh spans
them all: a multi-controller job where every process runs the same program.
Each process passes the same full inputs (host-local numpy or JAX arrays,
identical on every process); `replicated` and `split_replicates` then place on
each process only the shards of its own devices (`jax.make_array_from_callback`),
the kernels run once over the global mesh, and their outputs, fully replicated,
are read back as ordinary single-device arrays on every process
(`host_local`). Replicate `b` keeps the key `fold_in(key, b)` and its batch, so
the results are bit-identical to one process; only which device computes it
changes.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Name of the mesh axis that replicates are split over.
AXIS = "replicates"
# Default working memory of one vmapped batch (bytes) on a CPU, used to pick the batch size.
DEFAULT_CHUNK_BYTES = 256 << 20
# On an accelerator: this fraction of its memory (batches there are far cheaper per replicate).
ACCELERATOR_MEMORY_FRACTION = 1 / 16
# Upper bound on the automatically chosen batch size.
MAX_AUTO_PER_DEVICE = 64
# Kernel calls a null is cut into when `chunk_size` is None: steps of the progress bar.
DEFAULT_N_CHUNKS = 10


class ChunkLayout(NamedTuple):
  """How `n_null` replicates are cut into batches and chunks.

  Attributes:
    batch: replicates vmapped together on one device (the unit of computation).
    per_device: replicates each device handles per kernel call (a multiple of `batch`).
    chunk: replicates per kernel call over all devices (`per_device * n_devices`).
    n_chunks: number of kernel calls; `n_chunks * chunk >= n_null`.
  """

  batch: int
  per_device: int
  chunk: int
  n_chunks: int


def replicate_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A 1-D mesh named ``"replicates"`` over `devices` (default: `jax.devices()`)."""
  devs = list(jax.devices() if devices is None else devices)
  if not devs:
    raise ValueError("`devices` is empty; pass None to use every device")
  return Mesh(np.array(devs, dtype=object), (AXIS,))


def _check_size(value: Any, name: str) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"`{name}` must be an int or None, got {type(value).__name__}")
  if value < 1:
    raise ValueError(f"`{name}` must be >= 1 (replicates), got {value}")
  return int(value)


def batch_bytes(devices: Sequence[Any]) -> int:
  """Working memory allowed to one vmapped batch on `devices` (bytes).

  `DEFAULT_CHUNK_BYTES` on a CPU; on an accelerator a fraction of its memory
  (`ACCELERATOR_MEMORY_FRACTION`), where larger batches keep it busy.
  """
  # A device of this process: another process's device has no memory stats here, and
  # every process must pick the same batch (they run one program).
  mine = [d for d in devices if d.process_index == jax.process_index()]
  dev = (mine or list(devices))[0]
  if dev.platform == "cpu":
    return DEFAULT_CHUNK_BYTES
  try:
    limit = int((dev.memory_stats() or {}).get("bytes_limit", 0))
  except Exception:  # noqa: BLE001 - backends without memory stats
    limit = 0
  return max(DEFAULT_CHUNK_BYTES, int(limit * ACCELERATOR_MEMORY_FRACTION))


def chunk_layout(n_null: int, n_devices: int, chunk_size: Optional[int],
                 batch_size: Optional[int], bytes_per_replicate: int, *,
                 batch_bytes: int = DEFAULT_CHUNK_BYTES,
                 max_chunk: Optional[int] = None) -> ChunkLayout:
  """Chooses the batching and chunking of `n_null` replicates over `n_devices` devices.

  The batch (replicates vmapped together) depends only on `n_null`, the problem
  size, `batch_bytes` and `batch_size`, never on `chunk_size` or the device
  count: a replicate is always computed in the same batch
  `[k * batch, (k + 1) * batch)` with the same compiled arithmetic, which is
  what makes results bit-identical across chunk sizes and devices.

  Args:
    n_null: number of replicates `B`.
    n_devices: devices in the mesh.
    chunk_size: replicates per kernel call over all devices, rounded up to a
      multiple of `batch * n_devices`; None: about `B / DEFAULT_N_CHUNKS` (at
      most `max_chunk`), so a long null is a few calls, not one per batch.
    batch_size: replicates vmapped together on a device; None: the largest
      number (at most `MAX_AUTO_PER_DEVICE` and `n_null`) whose estimated
      working memory stays under `batch_bytes`.
    bytes_per_replicate: estimated working memory of one replicate.
    batch_bytes: working memory allowed to one batch (see `batch_bytes`).
    max_chunk: cap on the default chunk (e.g. replicates held in host memory).

  Returns:
    A `ChunkLayout`.
  """
  chunk_size = _check_size(chunk_size, "chunk_size")
  batch = _check_size(batch_size, "batch_size")
  if batch is None:
    batch = batch_bytes // max(1, bytes_per_replicate)
    batch = max(1, min(MAX_AUTO_PER_DEVICE, batch, n_null))
  if chunk_size is None:
    chunk_size = math.ceil(n_null / DEFAULT_N_CHUNKS)
    if max_chunk is not None:
      chunk_size = min(chunk_size, max_chunk)
  per_device = batch * math.ceil(math.ceil(chunk_size / n_devices) / batch)
  chunk = per_device * n_devices
  return ChunkLayout(batch, per_device, chunk, math.ceil(n_null / chunk))


def shard_map(f, *, mesh: Mesh, in_specs: Any, out_specs: Any):
  """`jax.shard_map` (the `jax.experimental` one, unchecked, on older JAX)."""
  if hasattr(jax, "shard_map"):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
  from jax.experimental.shard_map import shard_map as legacy_shard_map
  return legacy_shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                          check_rep=False)


def varying(tree: Any, axis: str = AXIS) -> Any:
  """Marks values inside `shard_map` as differing between devices along `axis` (loop carries)."""
  if hasattr(jax.lax, "pcast"):
    return jax.lax.pcast(tree, (axis,), to="varying")
  if hasattr(jax.lax, "pvary"):
    return jax.lax.pvary(tree, (axis,))
  return tree


def _place(tree: Any, target: NamedSharding) -> Any:
  """`jax.device_put(tree, target)`, also where `target` spans other processes' devices.

  Then every process holds the whole value (the same on all of them) and
  places the shards of its own devices; a committed JAX array cannot be
  `device_put` onto devices it cannot address.
  """
  if target.is_fully_addressable:
    return jax.device_put(tree, target)

  def one(leaf):
    leaf = leaf if hasattr(leaf, "shape") else np.asarray(leaf)
    return jax.make_array_from_callback(leaf.shape, target, lambda index: leaf[index])

  return jax.tree.map(one, tree)


def place(tree: Any, mesh: Mesh, spec: PartitionSpec) -> Any:
  """Places every leaf of `tree` on `mesh` as `spec` says, across processes too (see `_place`)."""
  return _place(tree, NamedSharding(mesh, spec))


def replicated(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on all devices of `mesh` (fully replicated)."""
  return _place(tree, NamedSharding(mesh, PartitionSpec()))


def split_replicates(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` with its leading (replicate) axis split over `mesh`."""
  return _place(tree, NamedSharding(mesh, PartitionSpec(AXIS)))


def check_same_on_processes(tree: Any, what: str) -> None:
  """Raises unless every process holds bit-identical leaves of `tree` (one process: no-op).

  Each process places its own shards from its own copy of the inputs, so inputs
  that differ between processes would mix silently into one result.
  """
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]
  gathered = multihost_utils.process_allgather(leaves)
  for leaf, rows in zip(leaves, gathered):
    if len({np.asarray(row).tobytes() for row in rows}) > 1:
      raise ValueError(
          f"{what} differ between the {jax.process_count()} processes of this "
          f"jax.distributed job (an array of shape {leaf.shape}); every process must pass the "
          "same full inputs")


def host_local(tree: Any) -> Any:
  """Fully replicated arrays that span other processes -> this process's copy.

  Each leaf becomes the single-device array on this process's first device
  of its sharding (no copy, no communication), so it mixes with the ordinary
  arrays of this process; arrays of this process alone are returned as they are.
  """

  def one(leaf):
    # A tracer (under an outer `jit`) is left as it is: its placement is the compiler's.
    if (not isinstance(leaf, jax.Array) or isinstance(leaf, jax.core.Tracer)
        or leaf.is_fully_addressable):
      return leaf
    if not leaf.is_fully_replicated:
      raise ValueError(f"an array sharded as {leaf.sharding} spans other processes and is not "
                       "fully replicated, so this process cannot read it whole")
    return leaf.addressable_data(0)

  return jax.tree.map(one, tree)

"""Spreading null replicates over devices in fixed-size chunks (SPEC §3).

Replicates are independent, so the only layout needed is a 1-D mesh over the
devices with the replicate axis split across it; everything else (inputs,
references, observed scores) is replicated. A chunk holds `per_device`
replicates on each device; `B` is padded up to whole chunks and the padded
replicates are masked by the kernels.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Name of the mesh axis that replicates are split over.
AXIS = "replicates"
# Default working memory of one chunk on one device (bytes), used to pick a chunk size.
DEFAULT_CHUNK_BYTES = 256 << 20
# Upper bound on replicates per device in one chunk when the size is chosen automatically.
MAX_AUTO_PER_DEVICE = 64


class ChunkLayout(NamedTuple):
  """How `n_null` replicates are cut into chunks.

  Attributes:
    per_device: replicates each device processes per chunk (the vmapped batch).
    chunk: replicates per chunk over all devices (`per_device * n_devices`).
    n_chunks: number of chunks; `n_chunks * chunk >= n_null`, the excess is padding.
  """

  per_device: int
  chunk: int
  n_chunks: int


def replicate_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A 1-D mesh named ``"replicates"`` over `devices` (default: `jax.devices()`)."""
  devs = list(jax.devices() if devices is None else devices)
  if not devs:
    raise ValueError("`devices` is empty; pass None to use every device")
  return Mesh(np.array(devs, dtype=object), (AXIS,))


def chunk_layout(n_null: int, n_devices: int, chunk_size: Optional[int],
                 bytes_per_replicate: int) -> ChunkLayout:
  """Chooses the chunking of `n_null` replicates over `n_devices` devices.

  Args:
    n_null: number of replicates `B`.
    n_devices: devices in the mesh.
    chunk_size: replicates per chunk over all devices, rounded up to a multiple
      of `n_devices`; None picks the largest size whose estimated working memory
      (`bytes_per_replicate` each) stays under `DEFAULT_CHUNK_BYTES` per device.
    bytes_per_replicate: estimated working memory of one replicate.

  Returns:
    A `ChunkLayout`.
  """
  if chunk_size is None:
    per_device = DEFAULT_CHUNK_BYTES // max(1, bytes_per_replicate)
    per_device = max(1, min(MAX_AUTO_PER_DEVICE, per_device, math.ceil(n_null / n_devices)))
  else:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
      raise TypeError(f"`chunk_size` must be an int or None, got {type(chunk_size).__name__}")
    if chunk_size < 1:
      raise ValueError(f"`chunk_size` must be >= 1 (replicates per chunk), got {chunk_size}")
    per_device = math.ceil(int(chunk_size) / n_devices)
  chunk = per_device * n_devices
  return ChunkLayout(per_device, chunk, math.ceil(n_null / chunk))


def replicated(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on all devices of `mesh` (fully replicated)."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def split_replicates(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` with its leading (replicate) axis split over `mesh`."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(AXIS)))

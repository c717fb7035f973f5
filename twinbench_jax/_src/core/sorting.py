"""A stable argsort of a float vector through single-operand integer sorts.

XLA's CPU backend sorts a single `uint32` array with a plain comparison, but
falls back to a much slower comparator for floats (NaN-aware) and for sorts
that carry a second array (`jnp.argsort`). So the floats are mapped to
order-preserving `uint32` keys; a first sort gives each value's rank among
the sorted keys, and a second sorts that rank packed above the element's
index, which makes equal values keep their input order. Two such sorts beat
`jnp.argsort` on a CPU for a few thousand values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ordered_keys(x: jax.Array) -> jax.Array:
  """`uint32` keys in the order of the float32 values `x` (-0.0 equals 0.0)."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32) + 0.0, jnp.uint32)
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(1 << 31))


def stable_argsort(x: jax.Array) -> jax.Array:
  """`jnp.argsort(x, stable=True)` of a 1-D float vector without NaN.

  Uses the packed integer sorts when the value ranks and indices fit in 32
  bits together (up to 65,536 entries) and `x` is float32 or narrower;
  otherwise `jnp.argsort`.
  """
  n = x.shape[0]
  bits = max(1, (n - 1).bit_length())
  if 2 * bits > 32 or jnp.finfo(x.dtype).bits > 32:
    return jnp.argsort(x, stable=True)
  keys = ordered_keys(x)
  rank = jnp.searchsorted(jnp.sort(keys), keys, side="left").astype(jnp.uint32)
  packed = (rank << bits) | jnp.arange(n, dtype=jnp.uint32)
  return (jnp.sort(packed) & jnp.uint32((1 << bits) - 1)).astype(jnp.int32)

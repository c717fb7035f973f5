"""Input randomisers for permutation nulls (SPEC §3).

A randomiser is a function `(key, x) -> x'` that keeps the shape and the
distribution of values of `x` but destroys the information a model should use.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def shuffle_features(key: jax.Array, x: jax.Array) -> jax.Array:
  """Permutes the entries inside each row (last axis), independently per row.

  The blog's "shuffle the pixels": each input keeps its values, so its
  marginal distribution is intact, but which feature carries which value is
  random. A 1-D input is one row.
  """
  x = jnp.asarray(x)
  if x.ndim == 0 or x.shape[-1] <= 1:
    return x
  # argsort of i.i.d. uniforms is a uniform random permutation, one per row.
  u = jax.random.uniform(key, x.shape)
  return jnp.take_along_axis(x, jnp.argsort(u, axis=-1), axis=-1)


def permute_rows(key: jax.Array, x: jax.Array) -> jax.Array:
  """Permutes the rows (first axis): each query receives another query's input."""
  x = jnp.asarray(x)
  if x.ndim == 0:
    return x
  return jax.random.permutation(key, x, axis=0)

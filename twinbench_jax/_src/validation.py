"""Argument checks shared by the array core.

Checks run in Python at trace time (shapes, dtypes) and, where the array is
concrete, on values (a query without any relevant candidate, NaN inputs). Under
`jax.jit` the value checks are skipped because values are not known; the
functions then document what they return instead of raising.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
  """True when `x` holds values (not a tracer inside `jit`/`vmap`/`grad`)."""
  return not isinstance(x, jax.core.Tracer)


def as_float_array(x: Any, name: str, *, ndim: int | None = None) -> jax.Array:
  """Converts `x` to a floating JAX array, naming `name` in any error."""
  if isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
    arr = x
  else:
    try:
      arr = np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
      raise TypeError(f"`{name}` must be array-like, got {type(x).__name__}") from e
    if arr.dtype == object:
      raise TypeError(f"`{name}` must be a numeric array, got dtype object")
  if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)
          or arr.dtype == jnp.bool_):
    raise TypeError(f"`{name}` must be numeric, got dtype {arr.dtype}")
  if ndim is not None and arr.ndim != ndim:
    raise ValueError(f"`{name}` must be {ndim}-D, got shape {tuple(arr.shape)}")
  arr = jnp.asarray(arr)
  if not jnp.issubdtype(arr.dtype, jnp.floating):
    arr = arr.astype(jnp.result_type(float))
  return arr


def as_bool_array(x: Any, name: str, *, ndim: int | None = None) -> jax.Array:
  """Converts `x` to a boolean JAX array; anything but a boolean dtype is a TypeError.

  Integer 0/1 masks are refused on purpose: an integer array passed as
  relevance is more often a vector of indices than a mask.
  """
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    x = np.asarray(x)
    dtype = x.dtype
  if dtype != np.bool_:
    raise TypeError(
        f"`{name}` must be a boolean array (True = relevant), got dtype {dtype}; "
        "convert a 0/1 matrix with `.astype(bool)`, or build one from labels "
        "with `tb.relevance_from_labels`.")
  arr = jnp.asarray(x)
  if ndim is not None and arr.ndim != ndim:
    raise ValueError(f"`{name}` must be {ndim}-D, got shape {tuple(arr.shape)}")
  return arr


def check_same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
  if tuple(a.shape) != tuple(b.shape):
    raise ValueError(
        f"`{name_a}` and `{name_b}` must have the same shape, got "
        f"{tuple(a.shape)} and {tuple(b.shape)}")


def check_every_query_has_relevant(relevance: jax.Array, name: str = "relevance") -> None:
  """Raises when a row of a concrete relevance matrix has no True entry."""
  if not is_concrete(relevance):
    return
  rel = np.asarray(relevance)
  empty = np.flatnonzero(~rel.any(axis=-1).reshape(-1))
  if empty.size:
    shown = ", ".join(str(i) for i in empty[:10]) + (" ..." if empty.size > 10 else "")
    raise ValueError(
        f"`{name}`: {empty.size} quer{'y has' if empty.size == 1 else 'ies have'} no relevant "
        f"candidate (row{'s' if empty.size > 1 else ''} {shown}); every query needs at least "
        "one True entry (SPEC §1).")


def check_no_nan(x: jax.Array, name: str) -> None:
  """Raises when a concrete array holds NaN or infinite values."""
  if not is_concrete(x):
    return
  arr = np.asarray(x)
  bad = ~np.isfinite(arr)
  if bad.any():
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"`{name}` holds {int(bad.sum())} non-finite value(s) (NaN or inf), first at index "
        f"{idx}; clean or impute them before scoring.")


def check_pvalues(p: jax.Array, name: str = "pvalues") -> None:
  """Raises when concrete p-values fall outside (0, 1] or are NaN."""
  if not is_concrete(p):
    return
  arr = np.asarray(p)
  bad = ~((arr > 0) & (arr <= 1))
  if bad.any():
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"`{name}` must lie in (0, 1]; found {arr[idx]!r} at index {idx} "
        f"({int(bad.sum())} bad value(s)).")


def nan_to_neg_inf(x: jax.Array) -> jax.Array:
  """Maps NaN to -inf so that a NaN never ranks above (or beats) a real score."""
  return jnp.where(jnp.isnan(x), -jnp.inf, x)


def poison(value: Any, invalid: Any) -> Any:
  """Replaces every floating leaf of `value` by NaN where `invalid` is True.

  The traced counterpart of a value check: under `jax.jit` an input that an
  eager call would refuse (a p-value below 0, a query without a relevant
  candidate, an index out of range) cannot raise, so the result is poisoned
  instead: a NaN is never mistaken for a score. `invalid` is a boolean scalar
  (poisons everything) or an array broadcastable against each leaf (poisons
  per element, e.g. per query). Integer and boolean leaves are left alone.

  Args:
    value: an array or a pytree of arrays (e.g. a result NamedTuple).
    invalid: a boolean array, usually computed inside the jitted function.

  Returns:
    `value` with NaN where `invalid` holds.
  """
  invalid = jnp.asarray(invalid, dtype=bool)

  def one(leaf):
    leaf = jnp.asarray(leaf)
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      return leaf
    return jnp.where(invalid, jnp.asarray(jnp.nan, leaf.dtype), leaf)

  return jax.tree_util.tree_map(one, value)

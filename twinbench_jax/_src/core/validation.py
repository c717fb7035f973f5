"""Argument checks shared by the array core, and what happens under `jit`.

Checks run in Python at trace time on shapes, dtypes and static options
(always, `jit` or not) and, where an array is concrete, on values: a query
without a relevant candidate, a p-value outside its range, a rank below 1,
non-finite predictions. An eager call refuses a bad value with a `ValueError`
naming the argument, the first bad index and the count.

Under a transformation (`jax.jit`, `vmap`, `grad`) values are unknown when the
Python checks run, so every value check has a traced counterpart: the public
function computes the same condition on the traced values and *poisons* its
result with NaN (`poison`), per query where the invalidity is per query (a
query without a relevant candidate, an invalid rank), the whole result
otherwise (any p-value out of range for AUC-F1 or Benjamini-Hochberg, a
non-finite reference). A poisoned result is never a plausible number. Only
traced arguments pay for the counterpart: an eager call has already checked
its values, and the private kernels that drivers call are unchanged.

Integer results cannot hold NaN. `tb.exceedance_counts` is the one integer
output of the array core; it has no invalid values to poison (a NaN on either
side has a defined, conservative meaning), so it stays int32.
`tb.top1_counts` is float and has nothing to poison either.

Precision: ranks, counts, p-values, AUC-F1 and areas are computed and
returned in at least float32 (`at_least_float32`): a bfloat16 or float16
input is upcast exactly before any counting, so its ranks are those of
the same values in float32. float64 inputs (with `jax_enable_x64`) stay float64.
Similarities (and own scores) stay in the input precision.
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
  check_range(p, name, 0.0, 1.0, low_open=True)


def out_of_range(x: Any, low: float, high: float, *, low_open: bool = False,
                 nan_ok: bool = False, xp: Any = jnp) -> Any:
  """Elementwise True where `x` is not a finite value in `[low, high]` (`(low, high]`
  with `low_open`); NaN is in range with `nan_ok`. `xp`: `jnp` (traced) or `np` (eager),
  so the eager check and its traced counterpart test the same condition."""
  ok = ((x > low) if low_open else (x >= low)) & (x <= high) & xp.isfinite(x)
  if nan_ok:
    ok = ok | xp.isnan(x)
  return ~ok


def check_range(x: Any, name: str, low: float, high: float, *, low_open: bool = False,
                nan_ok: bool = False, where: Any = None) -> None:
  """Raises a `ValueError` naming `name` when concrete `x` (where `where`) is out of range.

  The eager half of `out_of_range`; nothing is checked while `x` or `where` is traced.
  """
  if not is_concrete(x) or (where is not None and not is_concrete(where)):
    return
  arr = np.asarray(x)
  bad = out_of_range(arr, low, high, low_open=low_open, nan_ok=nan_ok, xp=np)
  if where is not None:
    bad = bad & np.broadcast_to(np.asarray(where), bad.shape)
  if bad.any():
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high == np.inf else ']'}"
    raise ValueError(
        f"`{name}` must lie in {interval}{' (NaN allowed)' if nan_ok else ''}; found "
        f"{arr[idx]!r} at index {idx} ({int(bad.sum())} bad value(s)).")


def check_scalar_range(value: Any, name: str, low: float, high: float) -> None:
  """Raises when a concrete scalar option (`alpha`, `k`) is NaN or outside `[low, high]`."""
  if not is_concrete(value):
    return
  v = np.asarray(value)
  if v.ndim != 0 or not (low <= float(v) <= high):
    raise ValueError(f"`{name}` must be a number in [{low:g}, {high:g}], got {value!r}")


def any_traced(*xs: Any) -> bool:
  """True when any of `xs` is a tracer: the value checks did not run on it."""
  return any(not is_concrete(x) for x in xs if x is not None)


def at_least_float32(x: jax.Array) -> jax.Array:
  """`x` in float32 if it is a narrower float (bfloat16, float16), else unchanged.

  The upcast is exact, so ranks and counts of the upcast values are those of
  the inputs, without the rounding of a bfloat16 sum (8 significant bits).
  """
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


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

"""Named argument checks of the public functions: one function per kind of argument.

Each check raises a `ValueError` (or `TypeError`) naming the argument and the
value it got, and returns the value in the form the caller uses (an `int`,
a scalar array). A traced value cannot be checked in Python: the checks let
it through, and the caller poisons its result with `validation.poison`
where the invalidity can be computed (`k_invalid`). Drivers (`tb.evaluate`,
the nulls, the CLI) call the same checks, so a setting is refused with the
same words wherever it is given.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src import types
from twinbench_jax._src.core import validation

METRICS = types.METRICS
TIES = types.TIES


def check_k(k: Any, *, n_candidates: Optional[int] = None, name: str = "k",
            integer: bool = False, cli: Optional[str] = None) -> Any:
  """Checks a cutoff `k` (a query is correct when its truth ranks within the top `k`).

  Args:
    k: a number >= 1 (an integer with `integer`); a traced `k` is let through
      (see `k_invalid` for its traced counterpart).
    n_candidates: when given, `k >= n_candidates` is refused too: every truth
      would rank within the top `k`, so every query would count as correct.
    name: the argument's name in the message.
    integer: require an integer (for a static `k` that sets shapes or keys).
    cli: the command-line flag of the same setting, named in the message.

  Returns:
    `k` (a Python `int` with `integer`).
  """
  if not validation.is_concrete(k):
    return k
  where = f" (CLI: {cli})" if cli else ""
  if integer:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"`{name}`{where} must be an integer >= 1, got {k!r}")
    k = int(k)
  elif (isinstance(k, (bool, np.bool_)) or np.ndim(k) != 0
        or not np.issubdtype(np.asarray(k).dtype, np.number) or not float(k) >= 1):
    raise ValueError(f"`{name}`{where} must be >= 1, got {k!r}")
  if n_candidates is not None and k >= n_candidates:
    raise ValueError(
        f"`{name}`={k}{where} is at least the number of candidates ({n_candidates}): every "
        f"truth ranks within the top {k}, so every query would count as correct; choose "
        f"{name} < {n_candidates}")
  return k


def k_invalid(k: Any) -> jax.Array:
  """The traced counterpart of `check_k`: True when `k` is below 1 or NaN."""
  return ~(jnp.asarray(k) >= 1)


def check_metric(metric: Any) -> str:
  """Checks a similarity metric's name (SPEC §1); returns it."""
  if not isinstance(metric, str) or metric not in METRICS:
    raise ValueError(f"unknown `metric` {metric!r}; choose one of {METRICS}")
  return metric


def check_ties(ties: Any) -> str:
  """Checks a tie rule (SPEC §2); returns it."""
  if not isinstance(ties, str) or ties not in TIES:
    raise ValueError(f"unknown `ties` {ties!r}; choose one of {TIES}")
  return ties


def check_profile_pair(predictions: Any, references: Any) -> tuple[jax.Array, jax.Array]:
  """`([Q, G] predictions, [C, G] references)` as floating arrays with the same genes, G >= 1."""
  x = validation.as_float_array(predictions, "predictions", ndim=2)
  y = validation.as_float_array(references, "references", ndim=2)
  if x.shape[1] != y.shape[1]:
    raise ValueError(
        f"`predictions` and `references` must have the same number of features (genes), got "
        f"predictions {tuple(x.shape)} and references {tuple(y.shape)}")
  if x.shape[1] == 0:
    raise ValueError(
        f"`predictions` and `references` have no features (genes): shapes {tuple(x.shape)} and "
        f"{tuple(y.shape)}; with G = 0 every candidate would tie, so nothing can be ranked")
  return x, y


def check_positive_int(value: Any, name: str) -> int:
  """Checks a count (`n_null`, a chunk size): an integer value >= 1, not a bool; returns an int."""
  if (isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0
      or not np.issubdtype(np.asarray(value).dtype, np.number)
      or not float(value) >= 1 or int(value) != value):
    raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
  return int(value)


def check_positive(value: Any, name: str) -> jax.Array:
  """Checks a finite positive scalar (a temperature); returns it as a floating 0-d array.

  A Python number stays weakly typed, so it takes the data's precision
  (float32 inputs stay float32 under `jax_enable_x64`); an integer becomes the
  default float. Traced, only the shape is checked.
  """
  arr = jnp.asarray(value)
  if not jnp.issubdtype(arr.dtype, jnp.floating):
    arr = arr.astype(jnp.result_type(float))
  if arr.ndim != 0:
    raise ValueError(f"`{name}` must be a scalar, got shape {tuple(arr.shape)}")
  if validation.is_concrete(arr):
    v = float(arr)
    if not (np.isfinite(v) and v > 0):
      raise ValueError(f"`{name}` must be a finite positive number, got {v}")
  return arr


def check_relative(relative: Any) -> Any:
  """Checks the units of a relative temperature: True, False, ``"local"`` or ``"global"``."""
  if not (isinstance(relative, bool) or relative in ("local", "global")):
    raise ValueError(f"`relative` must be True, False, 'local' or 'global', got {relative!r}")
  return relative


def check_scores_relevance(scores: Any, relevance: Any, *, upcast: bool = True
                           ) -> tuple[jax.Array, jax.Array]:
  """`([Q, C] scores, [Q, C] boolean relevance)`, checked against each other.

  Every query needs a relevant candidate (checked when `relevance` is
  concrete). With `upcast`, bfloat16/float16 scores become float32 (exact),
  so that counts and ranks are computed in at least float32.
  """
  s = validation.as_float_array(scores, "scores", ndim=2)
  if upcast:
    s = validation.at_least_float32(s)
  rel = validation.as_bool_array(relevance, "relevance", ndim=2)
  validation.check_same_shape(s, rel, "scores", "relevance")
  validation.check_every_query_has_relevant(rel)
  return s, rel


def check_scores_null(scores: Any, null_scores: Any, name: str = "scores",
                      null_name: str = "null_scores", *, min_replicates: int = 1
                      ) -> tuple[jax.Array, jax.Array]:
  """`(scores of shape S, [B, *S] null scores)` with `B >= min_replicates`, named in any error."""
  m = validation.as_float_array(scores, name)
  mb = validation.as_float_array(null_scores, null_name)
  if mb.ndim != m.ndim + 1 or tuple(mb.shape[1:]) != tuple(m.shape):
    raise ValueError(
        f"`{null_name}` must have shape (B, *{name}.shape) = (B, {', '.join(map(str, m.shape))})"
        f", got {tuple(mb.shape)}")
  if mb.shape[0] < min_replicates:
    raise ValueError(f"`{null_name}` has zero null replicates (B = 0); need B >= 1")
  return m, mb


def keyword_k(fn: Callable) -> Callable:
  """Makes `k` of `fn` keyword-only, accepting a positional `k` for one release.

  `fn` declares `k` keyword-only; a call that passes one positional argument
  beyond `fn`'s positional parameters takes it as `k` and warns with a
  `FutureWarning` that names the keyword form.
  """
  params = inspect.signature(fn).parameters
  positional = [n for n, p in params.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
  assert params["k"].kind == inspect.Parameter.KEYWORD_ONLY, fn

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if len(args) == len(positional) + 1 and "k" not in kwargs:
      shown = ", ".join(positional)
      warnings.warn(
          f"`k` passed positionally to `tb.{fn.__name__}({shown}, k)` is deprecated and will be "
          f"an error in the next release; pass it by keyword: "
          f"`tb.{fn.__name__}({shown}, k=...)`", FutureWarning, stacklevel=2)
      *args, kwargs["k"] = args
    return fn(*args, **kwargs)

  return wrapper

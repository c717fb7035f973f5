"""Argument checks of the nulls: each names the offending argument, shape or value."""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src.core import checks as core_checks
from twinbench_jax._src.core import own_scores as own_lib
from twinbench_jax._src.core import validation


def check_key(key: Any) -> jax.Array:
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"`key` must be a single PRNG key, got a key array of shape {key.shape}")
    return key
  if dtype == np.uint32 and tuple(np.shape(key)) == (2,):
    return jnp.asarray(key)
  raise TypeError(f"`key` must be a JAX PRNG key such as `jax.random.key(0)`, got "
                  f"{type(key).__name__}{'' if dtype is None else f' of dtype {dtype}'}")


def check_n_null(n_null: Any) -> int:
  if isinstance(n_null, bool) or not isinstance(n_null, (int, np.integer)):
    raise TypeError(f"`n_null` must be an int (number of null replicates), got "
                    f"{type(n_null).__name__}")
  if n_null < 1:
    raise ValueError(f"`n_null` must be >= 1 (number of null replicates), got {n_null}")
  if n_null >= 2**31 - 1:
    raise ValueError(f"`n_null` must be < 2**31 - 1, got {n_null}")
  return int(n_null)


def check_options(metric: str, own_score: str) -> None:
  """Checks the similarity `metric` and the `own_score` of a null."""
  core_checks.check_metric(metric)
  if not isinstance(own_score, str) or own_score not in own_lib.OWN_SCORES:
    raise ValueError(f"unknown `own_score` {own_score!r}; choose one of {own_lib.OWN_SCORES}")


def check_references(references, relevance, n_queries: Optional[int] = None):
  if relevance is not None:
    ref_kind, rel_kind = (np.asarray(a).dtype.kind if getattr(a, "dtype", None) is None
                          else np.dtype(a.dtype).kind for a in (references, relevance))
    if ref_kind == "b" and rel_kind != "b":
      raise ValueError(
          "`references` is boolean and `relevance` is not: are they swapped? The order is "
          "(predictions, ..., references [C, G] float profiles, relevance [Q, C] bool)")
  y = validation.as_float_array(references, "references", ndim=2)
  validation.check_no_nan(y, "references")
  if relevance is None:
    q = y.shape[0] if n_queries is None else n_queries
    if q != y.shape[0]:
      raise ValueError(
          f"without `relevance`, query q must belong to reference q, so both need the same "
          f"number of rows; got {q} queries and references {tuple(y.shape)}")
    relevance = jnp.eye(q, dtype=bool)
  rel = validation.as_bool_array(relevance, "relevance", ndim=2)
  if rel.shape[1] != y.shape[0]:
    raise ValueError(f"`relevance` must have one column per reference (C = {y.shape[0]}), "
                     f"got shape {tuple(rel.shape)}")
  if n_queries is not None and rel.shape[0] != n_queries:
    raise ValueError(f"`relevance` must have one row per query (Q = {n_queries}), got shape "
                     f"{tuple(rel.shape)}")
  validation.check_every_query_has_relevant(rel)
  return y, rel


def check_predictions(x: Any, name: str, y: jax.Array, rel: jax.Array) -> jax.Array:
  x = validation.as_float_array(x, name, ndim=2)
  want = (rel.shape[0], y.shape[1])
  if tuple(x.shape) != want:
    raise ValueError(f"`{name}` must have shape (Q, G) = {want} (one row per query of "
                     f"`relevance`, one column per feature of `references`), got "
                     f"{tuple(x.shape)}")
  validation.check_no_nan(x, name)
  return x


def check_precomputed_order(x_obs: Any, null_predictions: Any, references: Any) -> None:
  """Names the likely swap when `precomputed_null`'s arrays come in the wrong order.

  The order is (predictions `[Q, G]`, null_predictions `[B, Q, G]`, references
  `[C, G]`): a 3-D array in another place is almost surely the null replicates.
  """
  def ndim(a):
    shape = getattr(a, "shape", None)
    return None if shape is None else len(shape)

  order = ("tb.precomputed_null(predictions [Q, G], null_predictions [B, Q, G], "
           "references [C, G], relevance [Q, C])")
  null_dim = ndim(null_predictions)
  for name, a in (("predictions", x_obs), ("references", references)):
    if ndim(a) == 3:
      swap = (f"; are `{name}` and `null_predictions` swapped? The order is {order}"
              if null_dim == 2 else f"; it must be 2-D. The order is {order}")
      raise ValueError(f"`{name}` has shape {tuple(a.shape)}, the shape of a stack of null "
                       f"replicates (B, Q, G){swap}")


def check_inputs(inputs: Any) -> Any:
  inputs = jax.tree_util.tree_map(jnp.asarray, inputs)
  flat = jax.tree_util.tree_flatten_with_path(inputs)[0]
  if not flat:
    raise ValueError("`inputs` has no array leaves")
  for path, leaf in flat:
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
      validation.check_no_nan(leaf, "inputs" + jax.tree_util.keystr(path))
  return inputs


def check_randomizer(rand: Callable, key: jax.Array, inputs: Any) -> None:
  out = jax.eval_shape(rand, jax.random.fold_in(key, 0), inputs)
  want = jax.tree_util.tree_structure(inputs)
  got = jax.tree_util.tree_structure(out)
  if want != got:
    raise ValueError(f"the randomiser `randomize` changed the structure of the inputs from "
                     f"{want} to {got}; it must return inputs of the same structure, shapes "
                     "and dtypes")
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(inputs)[0],
                          jax.tree_util.tree_leaves(out)):
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
      raise ValueError(
          f"the randomiser `randomize` changed inputs{jax.tree_util.keystr(path)} from "
          f"shape {tuple(a.shape)} {a.dtype} to {tuple(b.shape)} {b.dtype}; a randomiser must "
          "keep every leaf's shape and dtype")


def check_predict_output(apply, params, inputs, y, rel) -> None:
  out = jax.eval_shape(apply, params, inputs)
  want = (rel.shape[0], y.shape[1])
  shape = getattr(out, "shape", None)
  if shape is None or tuple(shape) != want:
    got = (f"shape {tuple(shape)}" if shape is not None
           else f"a {type(out).__name__}, not a single array")
    raise ValueError(
        f"`predict_fn(inputs)` returned {got}, but it must return one prediction row per query "
        f"(a row of `relevance`; without `relevance`, a row of `references`) and one column "
        f"per feature of `references`: (Q, G) = {want}")
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise TypeError(f"`predict_fn(inputs)` must return floating predictions, got dtype "
                    f"{out.dtype}")


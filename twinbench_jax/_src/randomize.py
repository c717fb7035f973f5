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
  # Sorting the row by i.i.d. random keys is a uniform random permutation, one per
  # row; sorting (keys, values) together is cheaper than an argsort and a gather.
  bits = jax.random.bits(key, x.shape, dtype=jnp.uint32)
  return jax.lax.sort_key_val(bits, x, dimension=x.ndim - 1)[1]


def permute_rows(key: jax.Array, x: jax.Array) -> jax.Array:
  """Permutes the rows (first axis): each query receives another query's input."""
  x = jnp.asarray(x)
  if x.ndim == 0:
    return x
  return jax.random.permutation(key, x, axis=0)


_BUILTIN = {"shuffle_features": shuffle_features, "permute_rows": permute_rows}


def _leaf_name(path) -> str:
  last = path[-1] if path else None
  for attr in ("key", "name", "idx"):
    if last is not None and hasattr(last, attr):
      return str(getattr(last, attr))
  return jax.tree_util.keystr(path)


def resolve_randomizer(randomize="shuffle_features", *, leaves=None):
  """Turns a randomiser spec into a function `(key, inputs) -> inputs` over a pytree.

  Args:
    randomize: ``"shuffle_features"``, ``"permute_rows"``, or a callable
      `(key, inputs) -> inputs` (used as is; `leaves` must then be None).
    leaves: names of the pytree leaves to randomise (dict keys, attribute
      names, or `jax.tree_util.keystr` paths); `None` randomises every leaf.
      ``"permute_rows"`` uses one permutation for all the chosen leaves, so
      the parts of one query's input travel together.

  Returns:
    A function `(key, inputs) -> inputs` that keeps every leaf's shape.
  """
  if callable(randomize):
    if leaves is not None:
      raise ValueError("`leaves` only applies to the built-in randomisers; a callable "
                       "randomiser chooses what to randomise itself")
    return randomize
  if randomize not in _BUILTIN:
    raise ValueError(f"unknown randomiser {randomize!r}; use one of {sorted(_BUILTIN)} "
                     "or a callable (key, inputs) -> inputs")
  fn = _BUILTIN[randomize]
  shared_key = randomize == "permute_rows"
  wanted = None if leaves is None else {str(x) for x in ([leaves] if isinstance(leaves, str)
                                                          else leaves)}

  def apply(key, inputs):
    flat, treedef = jax.tree_util.tree_flatten_with_path(inputs)
    names = [(_leaf_name(p), jax.tree_util.keystr(p)) for p, _ in flat]
    if wanted is not None:
      known = {n for pair in names for n in pair}
      unknown = sorted(wanted - known)
      if unknown:
        raise ValueError(f"randomiser `leaves` {unknown} not found in the inputs; available: "
                         f"{sorted(n for n, _ in names)}")
    out = []
    for i, ((path, leaf), (name, full)) in enumerate(zip(flat, names)):
      if wanted is None or name in wanted or full in wanted:
        out.append(fn(key if shared_key else jax.random.fold_in(key, i), leaf))
      else:
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)

  return apply

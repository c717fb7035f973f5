"""Input randomisers for permutation nulls (SPEC §3).

A randomiser is a function `(key, x) -> x'` that keeps the shape and the
distribution of values of `x` but destroys the information a model should use.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


# Above this many position bits a packed key keeps fewer than 8 random bits.
_MAX_POSITION_BITS = 24


def shuffle_features(key: jax.Array, x: jax.Array, *, row_ids=None) -> jax.Array:
  """Permutes the entries inside each row (last axis), independently per row.

  The blog's "shuffle the pixels": each input keeps its values, so its
  marginal distribution is intact, but which feature carries which value is
  random. A 1-D input is one row. The permutations come from
  `row_permutations`.

  Query `i` (the leading axis of an input with two or more axes) is shuffled
  with its own key `fold_in(key, row_ids[i])` and nothing else, so a query's
  shuffled input does not depend on which other queries share its array: a
  held-out set shuffled in batches (with `row_ids` the queries' positions in
  the whole set) gives the rows of the set shuffled at once, bit for bit.

  Args:
    key: a JAX PRNG key.
    x: `[Q, ..., G]` inputs (or one `[G]` row).
    row_ids: `[Q]` int, the global index of each query; default `arange(Q)`.
  """
  x = jnp.asarray(x)
  if x.ndim == 0 or x.shape[-1] <= 1:
    return x
  if x.ndim == 1:
    return jnp.take_along_axis(x, row_permutations(key, x.shape), axis=-1)
  ids = jnp.arange(x.shape[0]) if row_ids is None else jnp.asarray(row_ids)
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, ids)
  perms = jax.vmap(lambda k: row_permutations(k, x.shape[1:]))(keys)
  return jnp.take_along_axis(x, perms, axis=-1)


def row_permutations(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """`shape` int32 array: an independent random permutation of `range(G)` per row.

  Each row is sorted by random keys. A key packs random high bits above the
  entry's position, so one single-operand `uint32` sort (several times faster
  on XLA's CPU backend than sorting keys and values together) yields the
  permutation in its low bits. Equal random bits keep the current order, so,
  as in `jax.random.permutation`, the sort is repeated until a tie in every
  round has probability about `1 / G` for the whole row; each round permutes
  the previous result.

  Args:
    key: a JAX PRNG key.
    shape: `(..., G)`.
  """
  g = int(shape[-1])
  pos_bits = max(1, (g - 1).bit_length())
  if pos_bits > _MAX_POSITION_BITS:  # too few random bits left: sort (keys, positions)
    bits = jax.random.bits(key, shape, dtype=jnp.uint32)
    pos = jnp.broadcast_to(jnp.arange(g, dtype=jnp.int32), shape)
    return jax.lax.sort_key_val(bits, pos, dimension=len(shape) - 1)[1]
  free = 32 - pos_bits
  rounds = max(1, math.ceil(3 * math.log2(g) / free))
  pos = jnp.arange(g, dtype=jnp.uint32)
  perm = None
  for k in jax.random.split(key, rounds):
    packed = (jax.random.bits(k, shape, dtype=jnp.uint32) << pos_bits) | pos
    order = (jnp.sort(packed, axis=-1) & jnp.uint32((1 << pos_bits) - 1)).astype(jnp.int32)
    perm = order if perm is None else jnp.take_along_axis(perm, order, axis=-1)
  return perm


def permute_rows(key: jax.Array, x: jax.Array) -> jax.Array:
  """Permutes the rows (first axis): each query receives another query's input."""
  x = jnp.asarray(x)
  if x.ndim == 0:
    return x
  return jax.random.permutation(key, x, axis=0)


_BUILTIN = {"shuffle_features": shuffle_features, "permute_rows": permute_rows}


def is_rowwise(randomize) -> bool:
  """Whether `randomize` randomises each query from its own key (streamable in batches)."""
  return isinstance(randomize, str) and randomize == "shuffle_features"


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
    A function `(key, inputs) -> inputs` that keeps every leaf's shape. A
    built-in randomiser also takes `row_ids` (`[Q]` global query indices, see
    `shuffle_features`; ``"permute_rows"`` mixes queries and ignores them).
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

  def apply(key, inputs, row_ids=None):
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
        if shared_key:
          out.append(fn(key, leaf))
        else:
          out.append(fn(jax.random.fold_in(key, i), leaf, row_ids=row_ids))
      else:
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)

  return apply

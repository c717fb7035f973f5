"""Truth ranks and label-null p-values in one pass, for the identity relevance.

With the truth of query `q` at candidate `q` (`Q == C`), the rank of the truth
(SPEC §2) is a count over row `q` against the diagonal entry `s[q, q]`, and
the exact label-permutation p-value (SPEC §3) is a count over column `q`
against the same entry. `ranking._truth_ranks_identity` and
`pvalues._label_permutation_pvalues` each read the whole `[Q, Q]` matrix, and
XLA's CPU backend is slow at column reductions. Here the matrix is read once,
in blocks of a few rows that stay in cache: each block gives its rows' ranks
and adds its share of every column's count.

NaN counts as -inf. Compared with a finite (or +inf) diagonal entry, a NaN
entry is never above, equal to or at least it, so the plain comparisons are
exact; only when some diagonal entry is NaN or -inf does the kernel take the
two separate passes, which handle those ties.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from twinbench_jax._src import pvalues as pvalues_lib
from twinbench_jax._src import ranking
from twinbench_jax._src import validation

# Rows per block: 16 rows of a few thousand candidates stay in the L1/L2 cache.
_BLOCK = 16


@functools.partial(jax.jit, static_argnames=("ties",))
def ranks_and_label_pvalues(s: jax.Array, *, ties: str) -> tuple[jax.Array, jax.Array]:
  """`([Q] truth ranks, [Q] label-null p-values)` of a square score matrix `s`.

  Equal to `(ranking._truth_ranks_identity(s, ties=ties),
  pvalues._label_permutation_pvalues(s))`, bit for bit.
  """
  own = validation.nan_to_neg_inf(jnp.diagonal(s))
  return jax.lax.cond(
      jnp.any(own == -jnp.inf),
      lambda: (ranking._truth_ranks_identity(s, ties=ties),
               pvalues_lib._label_permutation_pvalues(s)),
      lambda: _blocked_counts(s, own, ties=ties))


def _block_counts(rows: jax.Array, own_rows: jax.Array, own: jax.Array, w: float):
  """Rank weights of `rows` `[b, Q]` against their own entries `[b]`, and their
  `[Q]` contribution to the column counts against the diagonal `own`."""
  o = own_rows[:, None]
  weight = jnp.where(rows > o, 1.0, jnp.where(rows == o, w, 0.0)).astype(rows.dtype)
  ranks = 1.0 - w + jnp.sum(weight, axis=1)
  exceed = jnp.sum(jnp.where(rows >= own[None, :], 1.0, 0.0).astype(rows.dtype), axis=0)
  return ranks, exceed


def _blocked_counts(s: jax.Array, own: jax.Array, *, ties: str):
  q = s.shape[0]
  w = ranking._TIE_WEIGHT[ties]
  n_full = q // _BLOCK

  def body(col, i):
    rows = jax.lax.dynamic_slice_in_dim(s, i * _BLOCK, _BLOCK, axis=0)
    own_rows = jax.lax.dynamic_slice_in_dim(own, i * _BLOCK, _BLOCK)
    ranks, exceed = _block_counts(rows, own_rows, own, w)
    return col + exceed, ranks

  # Counts below 2^24 are exact in float32 (Q rows at most).
  col, ranks = jnp.zeros((q,), s.dtype), jnp.zeros((0,), s.dtype)
  if n_full:
    col, ranks = jax.lax.scan(body, col, jnp.arange(n_full))
    ranks = ranks.reshape(-1)
  if q % _BLOCK:  # the last rows: one more, smaller block
    tail_ranks, tail = _block_counts(s[n_full * _BLOCK:], own[n_full * _BLOCK:], own, w)
    ranks = jnp.concatenate([ranks, tail_ranks])
    col = col + tail
  return ranks, (col / q).astype(s.dtype)

"""Truth ranks and label-null p-values in one pass, for the identity relevance.

With the truth of query `q` at candidate `q` (`Q == C`), the rank of the truth
(SPEC §2) is a count over row `q` against the diagonal entry `s[q, q]`, and
the exact label-permutation p-value (SPEC §3) is a count over column `q`
against the same entry. `ranking._truth_ranks_identity` and
`pvalues._label_permutation_pvalues` each read the whole `[Q, Q]` matrix, and
XLA's CPU backend is slow at column reductions. Here the matrix is read once,
in blocks of a few rows that stay in cache: each block gives its rows' ranks,
and its `[rows, Q]` column flags are added elementwise into an accumulator that
is reduced to the column counts once, after the loop.

NaN counts as -inf. Compared with a finite (or +inf) diagonal entry, a NaN
entry is never above, equal to or at least it, so the plain comparisons are
exact; only when some diagonal entry is NaN or -inf does the kernel take the
two separate passes, which handle those ties.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from twinbench_jax._src.core import pvalues as pvalues_lib
from twinbench_jax._src.core import ranking
from twinbench_jax._src.core import validation


def _block_rows(q: int) -> int:
  """Rows per block: 16 suit Q up to about a thousand, 64 larger matrices (CPU timings)."""
  return 16 if q <= 1024 else 64


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
  `[b, Q]` flags against the diagonal `own` (1 where `rows >= own[None, :]`)."""
  o = own_rows[:, None]
  weight = jnp.where(rows > o, 1.0, jnp.where(rows == o, w, 0.0)).astype(rows.dtype)
  ranks = 1.0 - w + jnp.sum(weight, axis=1)
  flags = jnp.where(rows >= own[None, :], 1.0, 0.0).astype(rows.dtype)
  return ranks, flags


def _blocked_counts(s: jax.Array, own: jax.Array, *, ties: str):
  q = s.shape[0]
  w = ranking._TIE_WEIGHT[ties]
  block = _block_rows(q)
  n_full = q // block

  def body(acc, i):
    rows = jax.lax.dynamic_slice_in_dim(s, i * block, block, axis=0)
    own_rows = jax.lax.dynamic_slice_in_dim(own, i * block, block)
    ranks, flags = _block_counts(rows, own_rows, own, w)
    return acc + flags, ranks

  # Counts below 2^24 are exact in float32 (Q rows at most), in any order of addition.
  col, ranks = jnp.zeros((q,), s.dtype), jnp.zeros((0,), s.dtype)
  if n_full:
    acc, ranks = jax.lax.scan(body, jnp.zeros((block, q), s.dtype), jnp.arange(n_full))
    col, ranks = jnp.sum(acc, axis=0), ranks.reshape(-1)
  if q % block:  # the last rows: one more, smaller block
    tail_ranks, tail = _block_counts(s[n_full * block:], own[n_full * block:], own, w)
    ranks = jnp.concatenate([ranks, tail_ranks])
    col = col + jnp.sum(tail, axis=0)
  return ranks, (col / q).astype(s.dtype)

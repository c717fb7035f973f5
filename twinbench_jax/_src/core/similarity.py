"""Similarity between predicted and real profiles (SPEC §1).

Every metric returns a `(Q, C)` matrix where larger means closer, so ranks,
p-values and AUC-F1 never need to know which metric made the scores.
"""

from __future__ import annotations

import dataclasses
import functools
import types as types_lib
from typing import Any, ClassVar, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src import types
from twinbench_jax._src.core import checks
from twinbench_jax._src.core import native
from twinbench_jax._src.core import validation

METRICS = checks.METRICS

# Entries of the |x - y| block materialised at once by the L1 kernel (64 MiB of float32).
_L1_BLOCK_ELEMENTS = 1 << 24
# The same with a per-query gene mask: XLA's CPU backend runs the masked reduction about
# 3x faster on blocks of a single query than on 64 MiB blocks (Q = C = 1000, G = 2000).
_MASKED_BLOCK_ELEMENTS = 1 << 18
# Candidates per query whose squared distance is recomputed exactly after the matmul identity.
_N_REFINE = 4
# Entries of the `[Q, T, C]` gather of the candidates' values at the excluded genes up to
# which the exclusion corrections are gathered; larger ones are matmuls with the mask.
_GATHER_ELEMENTS = 1 << 24


def similarity(
    predictions: types.ArrayLike,
    references: types.ArrayLike,
    *,
    metric: types.Metric = "sqeuclidean",
    exclude: Optional[jax.Array] = None,
) -> jax.Array:
  r"""Similarity of every prediction to every reference profile; larger is closer.

  SPEC §1. With `x_q` the prediction of query `q` and `y_c` candidate `c`:

  - ``"sqeuclidean"`` (default): :math:`-\|x_q - y_c\|^2`
  - ``"euclidean"``: :math:`-\|x_q - y_c\|`
  - ``"l1"``: :math:`-\|x_q - y_c\|_1`
  - ``"cosine"``: :math:`x_q \cdot y_c / (\|x_q\| \|y_c\|)`
  - ``"pearson"``: the cosine of the row-centred vectors.

  The squared distance uses the matmul identity
  :math:`\|x\|^2 + \|y\|^2 - 2 x \cdot y` on profiles centred by the mean
  reference (distances are translation invariant, and centring removes the
  shared component that causes float32 cancellation), clamps it at 0, then
  recomputes the few closest candidates of each query exactly as
  :math:`\sum_g (x_g - y_g)^2`. So a prediction identical to a reference gets
  exactly the best possible score (0), never a near-tie from rounding. The L1
  distance is computed in query blocks, never materialising a `(Q, C, G)`
  tensor. A zero vector (zero-variance vector for Pearson) has cosine/Pearson
  similarity 0 to everything. NaN in the inputs gives NaN scores; the ranking
  functions treat a NaN score as lower than any real score. Without
  `exclude`, bitwise identical predictions get bitwise identical rows of
  scores (a matrix product may otherwise round them by their position), so
  the queries of a model that predicts one profile for all tie exactly.

  Per-query gene exclusion (SPEC §7: a knockout trivially lowers its own
  target gene, so a perturbation's target genes can be left out of its
  distances). With `K_q` the genes kept for query `q`, every metric above is
  computed on the sub-vectors :math:`x_{q,K_q}` and :math:`y_{c,K_q}` against
  every candidate `c` (Pearson centres over `K_q` too). Nothing of size
  `[Q, C, G]` is built: the terms over all genes come from the same matmuls
  as without exclusion (on `x` with its excluded genes zeroed) and the
  candidate-side sums are corrected by the excluded genes only, an
  `O(Q T C)` gather for `T` excluded genes per query (a `[Q, G] x [G, C]`
  matmul with the mask when that gather would be large). The squared distance
  keeps its exactness guard over the kept genes: a prediction identical to a
  reference on `K_q` gets exactly 0. For cosine and Pearson the correction
  subtracts the excluded genes from the candidate's norm, so when they hold
  nearly all of it the result keeps fewer digits (about `eps / kept share`),
  and a kept share below about `16 eps sqrt(G)` counts as a zero vector.
  With `exclude`, whether a NaN at an excluded gene reaches the score is
  unspecified.

  Args:
    predictions: `[Q, G]` predicted profiles.
    references: `[C, G]` real candidate profiles.
    metric: one of ``"sqeuclidean"``, ``"euclidean"``, ``"l1"``, ``"cosine"``,
      ``"pearson"``.
    exclude: genes to leave out, per query; `None` (default) compares on all
      genes. Either a boolean `[Q, G]` mask (True = leave gene `g` out of
      query `q`'s comparisons with every candidate) or integer `[Q, T]` gene
      indices padded with -1 (the cheap form inside `jit`: static `T`).
      A concrete mask is turned into indices (with `T` the largest number of
      excluded genes of a query); a traced mask uses the matmul corrections.
      Repeated indices count once; an index outside `[-1, G)` is an error
      (under `jit`, that query's row of scores is NaN). A concrete `exclude` that
      excludes nothing gives exactly the result of `exclude=None`.

  Returns:
    `[Q, C]` similarities, larger = closer, in the precision of the inputs
    (bfloat16 inputs give bfloat16 scores; the ranking and p-value functions
    count them in float32). At least one gene is needed (`G = 0` would make
    every candidate tie): a `ValueError` otherwise.

  Example:
    >>> import twinbench_jax as tb, jax.numpy as jnp
    >>> x = jnp.array([[0., 1.], [2., 2.]])
    >>> tb.similarity(x, x)
    Array([[-0., -5.],
           [-5., -0.]], dtype=float32)
    >>> tb.similarity(x, x, exclude=jnp.array([[True, False], [False, False]]))
    Array([[-0., -1.],
           [-5., -0.]], dtype=float32)
  """
  x, y = checks.check_profile_pair(predictions, references)
  checks.check_metric(metric)
  dtype = jnp.result_type(x.dtype, y.dtype)
  x, y = x.astype(dtype), y.astype(dtype)
  if exclude is None:
    return _similarity(x, y, metric=metric)
  idx, mask = check_exclude(exclude, x.shape[0], x.shape[1])
  if idx is None and mask is None:  # a concrete exclusion that leaves every gene in
    return _similarity(x, y, metric=metric)
  s = _similarity_excluded(x, y, idx, mask, metric=metric)
  if idx is not None and not validation.is_concrete(idx):
    # the traced counterpart of the range check in `check_exclude`
    s = validation.poison(s, jnp.any((idx < -1) | (idx >= x.shape[1]), axis=1)[:, None])
  return s


@functools.partial(jax.jit, static_argnames=("metric", "exact"))
def _similarity(x: jax.Array, y: jax.Array, *, metric: str, exact: bool = True) -> jax.Array:
  # `exact=False` skips the near-zero guard of the squared distance (see
  # `squared_distances`) and the identical-rows guarantee; for the null
  # replicates of a model, which only need to be compared with the observed
  # scores, not to be exactly 0 or equal among themselves.
  return get_metric(metric).all_pairs(x, y, exact=exact)


def same_rows_same_scores(s: jax.Array, x: jax.Array) -> jax.Array:
  """`s` with the row of each query whose prediction repeats an earlier one replaced by that one's.

  A matrix product may round identical rows differently by where they fall
  in its tiling (seen on CPUs: the last row of a 7-row product). A model that
  predicts the same profile for several queries must get bitwise identical
  scores for them, or the label null would call a collapsed model better than
  chance. Only row hashes are computed unless some row repeats. Derivatives
  are those of `s` itself: each row keeps its own gradient.

  Args:
    s: `[Q, C]` scores of the queries.
    x: `[Q, G]` their predictions.
  """
  q = x.shape[0]
  if q < 2:
    return s
  x = jax.lax.stop_gradient(x)
  first = _first_equal_hash(x)
  idx = jnp.arange(q, dtype=jnp.int32)

  def canonical():
    bits = _row_bits(x)  # equal hashes are candidates only: the bits must match too
    return _rows_of(s, jnp.where(jnp.all(bits[first] == bits, axis=1), first, idx))

  return jax.lax.cond(jnp.any(first != idx), canonical, lambda: s)


@jax.custom_jvp
def _rows_of(s: jax.Array, rows: jax.Array) -> jax.Array:
  """`s[rows]`, with the derivative of `s` (rows are bitwise copies of rows of equal value)."""
  return s[rows]


@_rows_of.defjvp
def _rows_of_jvp(primals, tangents):
  s, rows = primals
  return s[rows], tangents[0]


def _row_bits(x: jax.Array) -> jax.Array:
  """`[Q, W]` unsigned integers holding the bits of each row."""
  width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, width)


def _first_equal_hash(x: jax.Array) -> jax.Array:
  """`[Q]` index of the first row whose hash equals each row's (the row itself if none).

  The hash is two weighted sums of the row's values with fixed weights in
  [1, 2): a row reduction computes every row the same way (unlike a matrix
  product's tiles), so identical rows hash alike, at the cost of two passes
  of float arithmetic (XLA's CPU backend reduces integers about 10x slower).
  Different rows rarely hash alike; callers confirm with the bits. A row
  with NaN never matches.
  """
  q, g = x.shape
  pos = jnp.arange(g, dtype=x.dtype)
  h1 = jnp.sum(x * (1.0 + pos / max(g, 1)), axis=1)
  h2 = jnp.sum(x * (1.0 + jnp.mod(pos * 0.6180339887, 1.0)), axis=1)
  idx = jnp.arange(q, dtype=jnp.int32)
  order = jnp.lexsort((idx, h2, h1))  # by hash, then by row
  hs1, hs2 = h1[order], h2[order]
  start = jnp.concatenate([jnp.ones(1, bool), (hs1[1:] != hs1[:-1]) | (hs2[1:] != hs2[:-1])])
  group_first = order[jax.lax.cummax(jnp.where(start, jnp.arange(q), 0))]
  return jnp.zeros(q, jnp.int32).at[order].set(group_first.astype(jnp.int32))


def _matmul_t(a: jax.Array, b: jax.Array) -> jax.Array:
  # HIGHEST: ranks hinge on small differences; no bf16/TF32 passes on accelerators.
  return jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)


def _centre(y: jax.Array) -> jax.Array:
  """`[G]` mean reference over its finite values (0 where a gene has none).

  Any finite centre removes the shared component, and a NaN/inf reference must
  not poison a column. The plain column sum is several times faster on XLA's
  CPU backend than a sum of masked values, so the masked mean is only taken
  when the plain one is not finite.
  """
  n = max(y.shape[0], 1)
  plain = jnp.sum(y, axis=0) / n

  def finite_mean():
    ok = jnp.isfinite(y)
    total = jnp.sum(jnp.where(ok, y, 0.0), axis=0)
    mean = total / jnp.maximum(jnp.sum(ok, axis=0), 1).astype(y.dtype)
    return jnp.where(jnp.isfinite(mean), mean, 0.0)  # finite values that overflow a sum

  return jax.lax.cond(jnp.all(jnp.isfinite(plain)), lambda: plain, finite_mean)


def squared_distances(x: jax.Array, y: jax.Array, *, exact: bool = True) -> jax.Array:
  """`[Q, C]` squared Euclidean distances, guarded against float32 cancellation.

  With `exact=False` only the centred matmul identity runs (clamped at 0):
  about a third cheaper, with rounding-level error near 0.
  """
  centre = _centre(y)
  xc, yc = x - centre, y - centre
  # One matmul of augmented rows [x, |x|^2, 1] . [-2y, 1, |y|^2] gives the whole
  # identity: XLA's CPU backend runs a bare dot far faster than a dot with a
  # fused epilogue (norm broadcasts), and the result is the same sum.
  ones_x = jnp.ones((x.shape[0], 1), x.dtype)
  ones_y = jnp.ones((y.shape[0], 1), y.dtype)
  xa = jnp.concatenate([xc, jnp.sum(xc * xc, axis=1, keepdims=True), ones_x], axis=1)
  ya = jnp.concatenate([-2.0 * yc, ones_y, jnp.sum(yc * yc, axis=1, keepdims=True)], axis=1)
  # The barrier keeps later consumers out of the dot's fusion for the same reason.
  d = jax.lax.optimization_barrier(jnp.maximum(_matmul_t(xa, ya), 0.0))
  n_refine = min(_N_REFINE, y.shape[0])
  if n_refine == 0 or x.shape[0] == 0 or not exact:
    return d
  # The identity loses digits exactly where it matters most (near-identical
  # vectors), so the closest few candidates get the direct sum of squares.
  _, idx = jax.lax.top_k(-d, n_refine)  # [Q, r]
  rows = jnp.arange(x.shape[0])[:, None]

  def exact(j):
    diff = x - jnp.take(y, idx[:, j], axis=0)
    return jnp.sum(diff * diff, axis=1)

  refined = jax.lax.map(exact, jnp.arange(n_refine)).T  # [Q, r]
  d = d.at[rows, idx].set(refined)
  # Entries below the identity's rounding bound cannot be told apart from 0.
  # When some query has more of them than were refined (a cluster of
  # near-duplicates far from the centre), fall back to the direct sum for the
  # whole matrix: rare, exact, and never a silent near-tie.
  norms = xa[:, -2][:, None] + ya[:, -1][None, :]
  bound = 16.0 * jnp.finfo(d.dtype).eps * jnp.sqrt(x.shape[1] + 2.0) * norms
  uncertain = jnp.sum(d <= bound, axis=1)
  return jax.lax.cond(jnp.any(uncertain > n_refine),
                      lambda: _blocked(x, y, lambda a, b: jnp.sum((a - b) ** 2, axis=-1)),
                      lambda: d)


def l1_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  """`[Q, C]` L1 distances, computed in blocks of queries (no `[Q, C, G]` tensor)."""
  return _blocked(x, y, lambda a, b: jnp.sum(jnp.abs(a - b), axis=-1))


def l1_minus_gene(d: jax.Array, x_at: jax.Array, y_at: jax.Array, gene_ok: jax.Array
                  ) -> jax.Array:
  r"""L1 distances over all genes less one gene's term, :math:`d - |x_e - y_e|` (clamped at 0).

  With a single excluded gene per query this turns one all-gene L1 pass into
  the distances without that gene. It is exact where it matters: when the two
  vectors agree on every other gene, `d` is the lone term itself (adding zeros
  is exact), so the result is exactly 0. Otherwise it matches the masked sum
  up to float rounding of `d`. All arguments broadcast together.

  Args:
    d: L1 distances over all genes.
    x_at, y_at: the two vectors' values at the excluded gene.
    gene_ok: False where nothing is excluded (the result is `d`).
  """
  return jnp.where(gene_ok, jnp.maximum(d - jnp.abs(x_at - y_at), 0.0), d)


def _blocked(x: jax.Array, y: jax.Array, pair_fn, keep: Optional[jax.Array] = None
             ) -> jax.Array:
  """`pair_fn(x[:, None], y[None])` over blocks of queries, never all of `[Q, C, G]` at once.

  With `keep` (`[Q, G]`, rows travelling with the queries), the call is
  `pair_fn(x[:, None], y[None], keep[:, None])`.
  """
  q, g = x.shape
  c = y.shape[0]
  if q == 0 or c == 0:
    return jnp.zeros((q, c), x.dtype)
  budget = _L1_BLOCK_ELEMENTS if keep is None else _MASKED_BLOCK_ELEMENTS
  block = max(1, min(q, budget // max(1, c * g)))
  n_blocks = -(-q // block)
  pad = ((0, n_blocks * block - q), (0, 0))
  rows = (x,) if keep is None else (x, keep)
  blocks = tuple(jnp.pad(r, pad).reshape(n_blocks, block, g) for r in rows)
  one_block = lambda rb: pair_fn(rb[0][:, None, :], y[None, :, :],  # noqa: E731
                                 *(r[:, None, :] for r in rb[1:]))
  return jax.lax.map(one_block, blocks).reshape(n_blocks * block, c)[:q]


def _safe_sqrt(d: jax.Array) -> jax.Array:
  # sqrt has an infinite derivative at 0; give a zero distance a zero gradient, not NaN.
  zero = d == 0  # NaN stays NaN
  return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, d)))


def _unit_rows(a: jax.Array) -> jax.Array:
  norm = _safe_sqrt(jnp.sum(a * a, axis=1, keepdims=True))
  return a / jnp.where(norm > 0, norm, 1.0)


def _cosine(x: jax.Array, y: jax.Array) -> jax.Array:
  return _matmul_t(_unit_rows(x), _unit_rows(y))


# ----------------------------------------------------------------------------- gene exclusion


def check_exclude(exclude: Any, n_queries: int, n_genes: int
                  ) -> tuple[Optional[jax.Array], Optional[jax.Array]]:
  """Validates `exclude` (SPEC §7) as `(indices [Q, T] or None, mask [Q, G] or None)`.

  A concrete boolean mask becomes indices padded with -1 (`T` = the most genes
  a query excludes). `(None, None)` means a concrete `exclude` that excludes
  nothing. A traced boolean mask comes back as the mask.
  """
  traced = not validation.is_concrete(exclude)
  if not traced and not isinstance(exclude, jax.Array):
    exclude = np.asarray(exclude)
  dtype = getattr(exclude, "dtype", None)
  if dtype == np.bool_:
    if tuple(exclude.shape) != (n_queries, n_genes):
      raise ValueError(
          f"`exclude` as a boolean mask must have shape (Q, G) = ({n_queries}, {n_genes}) "
          f"(True = leave gene g out of query q's comparisons), got {tuple(exclude.shape)}")
    if traced:
      return None, exclude
    mask = np.asarray(exclude)
    counts = mask.sum(axis=1)
    t = int(counts.max(initial=0))
    if t == 0:
      return None, None
    order = np.argsort(~mask, axis=1, kind="stable")[:, :t]
    idx = np.where(np.arange(t)[None, :] < counts[:, None], order, -1)
    return jnp.asarray(idx, jnp.int32), None
  if dtype is not None and jnp.issubdtype(dtype, jnp.integer):
    if exclude.ndim != 2 or exclude.shape[0] != n_queries:
      raise ValueError(
          f"`exclude` as gene indices must have shape (Q, T) = ({n_queries}, T), padded with "
          f"-1; got {tuple(exclude.shape)}")
    if traced:
      return exclude.astype(jnp.int32), None
    idx = np.asarray(exclude)
    bad = (idx < -1) | (idx >= n_genes)
    if bad.any():
      q, t = (int(i) for i in np.argwhere(bad)[0])
      raise ValueError(
          f"`exclude` holds {int(bad.sum())} gene index(es) outside [0, {n_genes}) (-1 pads), "
          f"first {int(idx[q, t])} at query {q}")
    if not (idx >= 0).any():
      return None, None
    return jnp.asarray(idx, jnp.int32), None
  raise TypeError(
      "`exclude` must be a boolean [Q, G] mask or integer [Q, T] gene indices padded with -1, "
      f"got {type(exclude).__name__}" + (f" of dtype {dtype}" if dtype is not None else ""))


class _Exclusion(NamedTuple):
  """Which genes each query keeps, in the two forms the kernels use."""

  keep: jax.Array  # [Q, G] bool, False = excluded
  idx: Optional[jax.Array]  # [Q, T] int32 gene index (0 where not valid); None: matmul form
  valid: Optional[jax.Array]  # [Q, T] bool: a real, first occurrence of a gene index


def _exclusion(idx: Optional[jax.Array], mask: Optional[jax.Array], n_cand: int,
               n_genes: int) -> _Exclusion:
  """The `[Q, G]` keep mask, and the indices for the gather unless `[Q, T, C]` is too large."""
  if idx is None:
    return _Exclusion(~mask, None, None)
  q, t = idx.shape
  valid = (idx >= 0) & (idx < n_genes)
  # A gene listed twice is excluded (and corrected) once.
  earlier = jnp.tril(jnp.ones((t, t), bool), -1)  # [t, t']: t' < t
  repeat = jnp.any((idx[:, :, None] == idx[:, None, :]) & earlier[None] & valid[:, None, :],
                   axis=2)
  valid = valid & ~repeat
  rows = jnp.arange(q)[:, None]
  keep = jnp.ones((q, n_genes), bool).at[rows, jnp.where(valid, idx, n_genes)].set(
      False, mode="drop")
  if q * t * n_cand > _GATHER_ELEMENTS:
    return _Exclusion(keep, None, None)
  return _Exclusion(keep, jnp.where(valid, idx, 0), valid)


def _kept_sums(a: jax.Array, ex: _Exclusion) -> jax.Array:
  """`[Q, C]`: sum of candidate row `a[c]` `[C, G]` over the genes query `q` keeps."""
  if ex.idx is None:
    return _matmul_t(ex.keep.astype(a.dtype), a)
  q, t = ex.idx.shape
  # Columns gathered from `a` as it is (faster on CPU than rows of its transpose).
  gathered = jnp.take(a, ex.idx.reshape(-1), axis=1).reshape(a.shape[0], q, t)  # [C, Q, T]
  dropped = jnp.sum(jnp.where(ex.valid[None], gathered, 0.0), axis=2).T
  return jnp.sum(a, axis=1)[None, :] - dropped


@functools.partial(jax.jit, static_argnames=("metric",))
def _similarity_excluded(x: jax.Array, y: jax.Array, idx: Optional[jax.Array],
                         mask: Optional[jax.Array], *, metric: str) -> jax.Array:
  """`[Q, C]` similarities with query `q`'s excluded genes left out (SPEC §1, §7).

  Args:
    x: `[Q, G]` predictions.
    y: `[C, G]` references.
    idx: `[Q, T]` int excluded gene indices padded with -1, or None.
    mask: `[Q, G]` bool, True = excluded; used when `idx` is None.
  """
  return get_metric(metric).all_pairs_excluded(x, y, _exclusion(idx, mask, y.shape[0],
                                                                 x.shape[1]))


def squared_distances_excluded(x: jax.Array, y: jax.Array, ex: _Exclusion) -> jax.Array:
  r"""`[Q, C]` squared distances over each query's kept genes, guarded as `squared_distances`.

  The identity :math:`\|x_K\|^2 + \|y_K\|^2 - 2 x_K \cdot y` with `x_K` the
  centred prediction zeroed at its excluded genes (one augmented matmul) and
  :math:`\|y_K\|^2` the candidate's norm minus its excluded genes; then the
  closest candidates are recomputed exactly over the kept genes, with the same
  exact fallback when too many entries are within rounding of 0.
  """
  centre = _centre(y)
  xk = jnp.where(ex.keep, x - centre, 0.0)
  yc = y - centre
  ones_y = jnp.ones((y.shape[0], 1), y.dtype)
  xk2 = jnp.sum(xk * xk, axis=1, keepdims=True)
  xa = jnp.concatenate([xk, xk2], axis=1)
  ya = jnp.concatenate([-2.0 * yc, ones_y], axis=1)
  # Barriers keep the masking out of the dot's operands and the correction out of its
  # epilogue (a bare dot is much faster on XLA's CPU backend, see `squared_distances`).
  xa, ya = jax.lax.optimization_barrier((xa, ya))
  d = jax.lax.optimization_barrier(_matmul_t(xa, ya))
  d = jnp.maximum(d + _kept_sums(yc * yc, ex), 0.0)
  n_refine = min(_N_REFINE, y.shape[0])
  if n_refine == 0 or x.shape[0] == 0:
    return d
  _, top = jax.lax.top_k(-d, n_refine)  # [Q, r]
  rows = jnp.arange(x.shape[0])[:, None]

  def exact(j):
    diff = x - jnp.take(y, top[:, j], axis=0)
    return jnp.sum(jnp.where(ex.keep, diff * diff, 0.0), axis=1)

  refined = jax.lax.map(exact, jnp.arange(n_refine)).T  # [Q, r]
  d = d.at[rows, top].set(refined)
  norms = xk2 + jnp.sum(yc * yc, axis=1)[None, :]
  bound = 16.0 * jnp.finfo(d.dtype).eps * jnp.sqrt(x.shape[1] + 2.0) * norms
  uncertain = jnp.sum(d <= bound, axis=1)
  return jax.lax.cond(
      jnp.any(uncertain > n_refine),
      lambda: _blocked(x, y, keep=ex.keep, pair_fn=lambda a, b, k: jnp.sum(
          jnp.where(k, (a - b) ** 2, 0.0), axis=-1)),
      lambda: d)


def _cosine_excluded(x: jax.Array, y: jax.Array, ex: _Exclusion, *, centre: bool) -> jax.Array:
  """Cosine (Pearson when `centre`) of `x_q` and `y_c` over the genes query `q` keeps.

  The prediction is zeroed at its excluded genes (and centred over its kept
  genes) and scaled to unit norm; candidates are scaled to unit norm (after
  centring over all genes, which leaves Pearson unchanged and keeps the
  kept-gene mean small), and their kept-gene norm (and mean) come from
  `_kept_sums`. With `u` the unit prediction (zero where excluded, summing
  to 0 over kept genes for Pearson) and `v` a unit candidate,
  ``u . v_K / |v_K - mean_K(v)|``. A candidate whose kept genes hold less than
  about `16 eps sqrt(G)` of its unit norm counts as a zero vector there.
  """
  xk = jnp.where(ex.keep, x, 0.0)
  if centre:
    n_kept = jnp.sum(ex.keep, axis=1, keepdims=True).astype(x.dtype)  # [Q, 1]
    mean = jnp.sum(xk, axis=1, keepdims=True) / jnp.maximum(n_kept, 1.0)
    xk = jnp.where(ex.keep, x - mean, 0.0)
    y = y - y.mean(axis=1, keepdims=True)
  u, v = jax.lax.optimization_barrier((_unit_rows(xk), _unit_rows(y)))
  dot = jax.lax.optimization_barrier(_matmul_t(u, v))  # a bare dot (see `squared_distances`)
  norm2 = _kept_sums(v * v, ex)  # [Q, C]
  if centre:
    s1 = _kept_sums(v, ex)
    norm2 = norm2 - s1 * s1 / jnp.maximum(n_kept, 1.0)
  # The subtraction leaves rounding of the order of eps (v has unit norm): below that the
  # candidate is a zero (constant, for Pearson) vector on the kept genes, similarity 0.
  tol = 16.0 * jnp.finfo(x.dtype).eps * jnp.sqrt(x.shape[1] + 1.0)
  ok = norm2 > tol  # NaN stays out
  return jnp.where(ok, dot / jnp.sqrt(jnp.where(ok, norm2, 1.0)), jnp.where(jnp.isnan(norm2),
                                                                            norm2, 0.0))


# ----------------------------------------------------------------------------- metric objects


@dataclasses.dataclass(frozen=True)
class SimilarityMetric:
  """One similarity of SPEC §1 as an object: every form the pipeline scores it in.

  Larger is closer for every metric. The methods are unchecked kernels (the
  public `tb.similarity` validates); `x` are predictions, `y` candidates.
  Subclasses set `name` and the three forms; `get_metric(name)` returns
  the registered instance, so callers hold no `if metric == ...` branches.
  """

  name: ClassVar[str] = ""
  # Whether bitwise identical predictions can get different rows of scores (a
  # matmul tiles them by position), so `all_pairs` must copy the first one's row.
  rounds_by_row: ClassVar[bool] = True
  # Whether `host_distances` has a compiled CPU loop, and the scoring kernel its
  # one-excluded-gene paths (drop one gene's term from the all-gene sum).
  host_loop: ClassVar[bool] = False
  # Whether the mean score over several truths has an O(G) form (the own score
  # then needs only the truths, not the `[Q, C]` scores): not for a norm.
  mean_has_closed_form: ClassVar[bool] = True

  def pairwise(self, x: jax.Array, y: jax.Array, *, exact: bool = True) -> jax.Array:
    """`[Q, C]` scores of `x` `[Q, G]` against `y` `[C, G]` (no identical-rows guard)."""
    raise NotImplementedError

  def all_pairs(self, x: jax.Array, y: jax.Array, *, exact: bool = True) -> jax.Array:
    """`[Q, C]` scores; identical predictions get identical rows unless `exact=False`.

    `exact=False` also skips the squared distance's near-zero guard: for null
    replicates, which are only compared with the observed scores.
    """
    s = self.pairwise(x, y, exact=exact)
    return same_rows_same_scores(s, x) if exact and self.rounds_by_row else s

  def all_pairs_excluded(self, x: jax.Array, y: jax.Array, ex: _Exclusion) -> jax.Array:
    """`[Q, C]` scores over the genes each query keeps (`ex` from `_exclusion`, SPEC §7)."""
    raise NotImplementedError

  def paired(self, x: jax.Array, truth: jax.Array) -> jax.Array:
    """`[b]` score of row `i` of `x` against row `i` of `truth` (both `[b, G]`): the own score.

    The diagonal of `all_pairs(x, truth)` in `O(b G)`, with finite gradients
    everywhere (a zero distance or a zero-norm row included).
    """
    raise NotImplementedError

  def fill_excluded(self, x: Any, keep: Any, xp: Any = jnp) -> Any:
    """`x` `[..., Q, G]` with the genes query `q` leaves out (`~keep[q]`) set to a neutral value.

    A neutral value given to a prediction and to its truth makes their score
    over all genes equal the score over the kept genes: 0 for the distances and
    cosine (the terms vanish). `xp` is `np` or `jnp`.
    """
    return xp.where(keep, x, 0.0)

  def host_distances(self, x: np.ndarray, y: np.ndarray) -> Optional[np.ndarray]:
    """`[Q, C]` distances (minus the scores) from a compiled host loop, or None when none pays."""
    del x, y
    return None

  def magnitude_bound(self, n_genes: int, biggest: float) -> float:
    """A bound on the kernel's intermediates for profiles with `|x| <= biggest` over `n_genes`.

    `4 G max|x|^2` for the squared norms of the distances, cosine and Pearson.
    """
    return 4 * n_genes * biggest * biggest


def _sum_of_squares(x: jax.Array, truth: jax.Array) -> jax.Array:
  d = x - truth
  return jnp.sum(d * d, axis=1)


def _centred(a: jax.Array) -> jax.Array:
  return a - a.mean(axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class SqEuclidean(SimilarityMetric):
  """`-|x - y|^2`, by the guarded matmul identity (`squared_distances`)."""

  name: ClassVar[str] = "sqeuclidean"

  def pairwise(self, x, y, *, exact=True):
    return -squared_distances(x, y, exact=exact)

  def all_pairs_excluded(self, x, y, ex):
    return -squared_distances_excluded(x, y, ex)

  def paired(self, x, truth):
    return -_sum_of_squares(x, truth)


@dataclasses.dataclass(frozen=True)
class Euclidean(SimilarityMetric):
  """`-|x - y|`, the square root of the guarded squared distance (zero gradient at 0)."""

  name: ClassVar[str] = "euclidean"
  mean_has_closed_form: ClassVar[bool] = False

  def pairwise(self, x, y, *, exact=True):
    return -_safe_sqrt(squared_distances(x, y, exact=exact))

  def all_pairs_excluded(self, x, y, ex):
    return -_safe_sqrt(squared_distances_excluded(x, y, ex))

  def paired(self, x, truth):
    return -_safe_sqrt(_sum_of_squares(x, truth))


@dataclasses.dataclass(frozen=True)
class L1(SimilarityMetric):
  """`-|x - y|_1`, in blocks of queries; on CPU the compiled loop of `core/native.py`."""

  name: ClassVar[str] = "l1"
  mean_has_closed_form: ClassVar[bool] = False
  rounds_by_row: ClassVar[bool] = False  # each pair is summed on its own
  host_loop: ClassVar[bool] = True

  def pairwise(self, x, y, *, exact=True):
    del exact  # every pair is an exact sum already
    return -l1_distances(x, y)

  def all_pairs_excluded(self, x, y, ex):
    return -_blocked(x, y, keep=ex.keep, pair_fn=lambda a, b, k: jnp.sum(
        jnp.where(k, jnp.abs(a - b), 0.0), axis=-1))

  def paired(self, x, truth):
    return -jnp.sum(jnp.abs(x - truth), axis=1)

  def host_distances(self, x, y):
    # About 5x faster than XLA's reduction on the CPU backend.
    if jax.default_backend() != "cpu":
      return None
    return native.host_l1(x, y)

  def magnitude_bound(self, n_genes, biggest):
    return 2 * n_genes * biggest


@dataclasses.dataclass(frozen=True)
class Cosine(SimilarityMetric):
  """`x . y / (|x| |y|)`; a zero vector has similarity 0 to everything."""

  name: ClassVar[str] = "cosine"

  def pairwise(self, x, y, *, exact=True):
    del exact
    return _cosine(x, y)

  def all_pairs_excluded(self, x, y, ex):
    return _cosine_excluded(x, y, ex, centre=False)

  def paired(self, x, truth):
    return jnp.sum(_unit_rows(x) * _unit_rows(truth), axis=1)


@dataclasses.dataclass(frozen=True)
class Pearson(SimilarityMetric):
  """The cosine of the row-centred vectors; a zero-variance vector has similarity 0."""

  name: ClassVar[str] = "pearson"

  def pairwise(self, x, y, *, exact=True):
    del exact
    return _cosine(x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True))

  def all_pairs_excluded(self, x, y, ex):
    return _cosine_excluded(x, y, ex, centre=True)

  def paired(self, x, truth):
    return jnp.sum(_unit_rows(_centred(x)) * _unit_rows(_centred(truth)), axis=1)

  def fill_excluded(self, x, keep, xp=jnp):
    # each vector's mean over its kept genes: the mean is unchanged, the centred values 0
    n_kept = xp.maximum(keep.sum(axis=-1, keepdims=True), 1)
    fill = xp.where(keep, x, 0.0).sum(axis=-1, keepdims=True) / n_kept
    return xp.where(keep, x, fill)


METRIC_OBJECTS: Mapping[str, SimilarityMetric] = types_lib.MappingProxyType(
    {m.name: m for m in (SqEuclidean(), Euclidean(), L1(), Cosine(), Pearson())})


def get_metric(metric: Union[str, SimilarityMetric]) -> SimilarityMetric:
  """The metric object registered under `metric` (an object is returned as is)."""
  if isinstance(metric, SimilarityMetric):
    return metric
  return METRIC_OBJECTS[checks.check_metric(metric)]


# The unchecked jitted kernels, by their public-in-`_src` names.
all_pairs = _similarity
all_pairs_excluded = _similarity_excluded

"""Similarity between predicted and real profiles (SPEC §1).

Every metric returns a `(Q, C)` matrix where larger means closer, so ranks,
p-values and AUC-F1 never need to know which metric made the scores.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from twinbench_jax._src import validation

METRICS = ("sqeuclidean", "euclidean", "l1", "cosine", "pearson")

# Entries of the |x - y| block materialised at once by the L1 kernel (64 MiB of float32).
_L1_BLOCK_ELEMENTS = 1 << 24
# Candidates per query whose squared distance is recomputed exactly after the matmul identity.
_N_REFINE = 8


def similarity(
    predictions: jax.Array,
    references: jax.Array,
    *,
    metric: str = "sqeuclidean",
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
  functions treat a NaN score as lower than any real score.

  Args:
    predictions: `[Q, G]` predicted profiles.
    references: `[C, G]` real candidate profiles.
    metric: one of ``"sqeuclidean"``, ``"euclidean"``, ``"l1"``, ``"cosine"``,
      ``"pearson"``.

  Returns:
    `[Q, C]` similarities, larger = closer.

  Example:
    >>> import twinbench_jax as tb, jax.numpy as jnp
    >>> x = jnp.array([[0., 1.], [2., 2.]])
    >>> tb.similarity(x, x)
    Array([[-0., -5.],
           [-5., -0.]], dtype=float32)
  """
  x = validation.as_float_array(predictions, "predictions", ndim=2)
  y = validation.as_float_array(references, "references", ndim=2)
  if x.shape[1] != y.shape[1]:
    raise ValueError(
        f"`predictions` and `references` must have the same number of features (genes), got "
        f"predictions {tuple(x.shape)} and references {tuple(y.shape)}")
  if metric not in METRICS:
    raise ValueError(f"unknown `metric` {metric!r}; choose one of {METRICS}")
  dtype = jnp.result_type(x.dtype, y.dtype)
  return _similarity(x.astype(dtype), y.astype(dtype), metric=metric)


@functools.partial(jax.jit, static_argnames=("metric",))
def _similarity(x: jax.Array, y: jax.Array, *, metric: str) -> jax.Array:
  if metric == "sqeuclidean":
    return -squared_distances(x, y)
  if metric == "euclidean":
    return -_safe_sqrt(squared_distances(x, y))
  if metric == "l1":
    return -l1_distances(x, y)
  if metric == "cosine":
    return _cosine(x, y)
  if metric == "pearson":
    return _cosine(x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True))
  raise AssertionError(metric)  # checked by the caller


def _matmul_t(a: jax.Array, b: jax.Array) -> jax.Array:
  # HIGHEST: ranks hinge on small differences; no bf16/TF32 passes on accelerators.
  return jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)


def squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  """`[Q, C]` squared Euclidean distances, guarded against float32 cancellation."""
  # Any finite centre works; one NaN/inf reference must not poison every column.
  centre = jnp.mean(jnp.where(jnp.isfinite(y), y, 0.0), axis=0)
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
  if n_refine == 0 or x.shape[0] == 0:
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


def _blocked(x: jax.Array, y: jax.Array, pair_fn) -> jax.Array:
  """`pair_fn(x[:, None], y[None])` over blocks of queries, never all of `[Q, C, G]` at once."""
  q, g = x.shape
  c = y.shape[0]
  if q == 0 or c == 0:
    return jnp.zeros((q, c), x.dtype)
  block = max(1, min(q, _L1_BLOCK_ELEMENTS // max(1, c * g)))
  n_blocks = -(-q // block)
  xp = jnp.pad(x, ((0, n_blocks * block - q), (0, 0))).reshape(n_blocks, block, g)
  one_block = lambda xb: pair_fn(xb[:, None, :], y[None, :, :])  # noqa: E731
  return jax.lax.map(one_block, xp).reshape(n_blocks * block, c)[:q]


def _safe_sqrt(d: jax.Array) -> jax.Array:
  # sqrt has an infinite derivative at 0; give a zero distance a zero gradient, not NaN.
  zero = d == 0  # NaN stays NaN
  return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, d)))


def _unit_rows(a: jax.Array) -> jax.Array:
  norm = _safe_sqrt(jnp.sum(a * a, axis=1, keepdims=True))
  return a / jnp.where(norm > 0, norm, 1.0)


def _cosine(x: jax.Array, y: jax.Array) -> jax.Array:
  return _matmul_t(_unit_rows(x), _unit_rows(y))

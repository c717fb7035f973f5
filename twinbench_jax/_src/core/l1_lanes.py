"""All-pairs L1 distances in numpy, added up in the lanes of the compiled loop.

`native.l1_distances` sums each distance over the genes in SIMD lanes: LLVM
vectorises numba's loop (`reassoc`), so the order of the additions is chosen
by the compiler for the CPU. This module writes one such order out:

- float32: 16 partial sums, lane `l` adding genes `16 i + l` in turn over
  the whole blocks of 16; folded as `p[l] + p[l + 8]`, then halves again
  (8 → 4 → 2 → 1); then 4 partial sums, lane 0 starting from that total,
  over the whole blocks of 4 genes left, folded `(t0 + t2) + (t1 + t3)`; then
  the last genes one by one.
- float64: 8 partial sums over the whole blocks of 8 genes, folded by halves
  (`p[l] + p[l + 4]`, ...), then the last genes one by one.

Each `|x - y|` and each addition is one IEEE operation in the input dtype,
so where the compiled loop adds in this order (LLVM's choice on the x86-64
AVX-512 machine this was read from; another CPU or LLVM may choose others,
which `matches` tells), the two give the same bits.
`native.host_l1` uses it only on a machine where that check has passed: it
saves importing numba (about half a second) on small problems.

Nothing here imports JAX or numba.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# dtype -> (lanes over the main blocks, lanes over the blocks left after them).
LANES = {np.dtype(np.float32): (16, 4), np.dtype(np.float64): (8, 1)}
# |x - y| terms held at once: queries are taken in blocks of about this many.
BLOCK_TERMS = 1 << 20


def _fold(p: np.ndarray) -> np.ndarray:
  # lanes [..., n] -> [...]: the first half plus the second, until one is left
  while p.shape[-1] > 1:
    half = p.shape[-1] // 2
    p = p[..., :half] + p[..., half:]
  return p[..., 0]


def _block(d: np.ndarray, main: int, tail: int) -> np.ndarray:
  """`[q, c, G]` terms -> `[q, c]` sums in the lane order of the module docstring."""
  n_genes = d.shape[-1]
  n_main = n_genes // main
  p = np.zeros(d.shape[:-1] + (main,), d.dtype)
  for i in range(n_main):
    p += d[..., main * i:main * (i + 1)]
  start = main * n_main
  n_tail = (n_genes - start) // tail
  t = np.zeros(d.shape[:-1] + (tail,), d.dtype)
  t[..., 0] = _fold(p)
  for j in range(n_tail):
    t += d[..., start + tail * j:start + tail * (j + 1)]
  s = _fold(t)
  for g in range(start + tail * n_tail, n_genes):
    s = s + d[..., g]
  return s


def l1_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  r"""All-pairs L1 distances :math:`d_{qc} = \sum_g |x_{qg} - y_{cg}|` in the lanes of `LANES`.

  Args:
    x: `[Q, G]` float32 or float64.
    y: `[C, G]`, the same dtype.

  Returns:
    `[Q, C]` distances, the dtype of the inputs. NaN and inf propagate as in
    the plain sum.
  """
  x = np.ascontiguousarray(x)
  y = np.ascontiguousarray(y)
  if x.dtype != y.dtype or x.dtype not in LANES:
    raise TypeError(f"l1_distances needs two float32 or two float64 arrays, got {x.dtype} and "
                    f"{y.dtype}")
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"l1_distances needs [Q, G] and [C, G] arrays, got {x.shape} and {y.shape}")
  main, tail = LANES[x.dtype]
  q, c, g = x.shape[0], y.shape[0], x.shape[1]
  out = np.zeros((q, c), x.dtype)
  step = max(1, BLOCK_TERMS // max(1, c * max(g, main)))  # the terms or the lanes, if more
  for lo in range(0, q, step):
    d = np.abs(x[lo:lo + step, None, :] - y[None, :, :])
    out[lo:lo + step] = _block(d, main, tail)
  return out


def probe(dtype, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
  """Pairs `(x, y)` that tell lane orders apart: every gene count to 70 and a few above.

  Values of mixed signs and magnitudes (their sums round differently in
  every order), zeros, and a row with inf and NaN.
  """
  rng = np.random.default_rng(seed)
  pairs = []
  for n_genes in [*range(71), 127, 128, 129, 299, 1000, 2003]:
    x = rng.standard_normal((5, n_genes)) * rng.exponential(1.0, (5, n_genes)) * 1e3 ** rng.random()
    y = rng.standard_normal((7, n_genes))
    if n_genes:
      x[3] = 0.0
      x[4, n_genes // 2] = np.inf
      y[6, 0] = np.nan
    pairs.append((x.astype(dtype), y.astype(dtype)))
  return pairs


def matches(compiled: Callable[[np.ndarray, np.ndarray], np.ndarray], dtype) -> bool:
  """Whether `compiled(x, y)` equals `l1_distances(x, y)` on every `probe` pair.

  Equal means the same bits, NaN where NaN (a NaN's payload may differ).
  """
  for x, y in probe(dtype):
    a, b = compiled(x, y), l1_distances(x, y)
    if a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=True):
      return False
  return True

"""The numba loops behind `native` (imported only when they are first needed).

Plain loops over numpy arrays, compiled for each dtype on first call and
cached on disk; `nogil` lets `threads` run several blocks at once. Their
contracts (shapes, order of the sums, checks) are documented in `native`.
"""

import numba
import numpy as np


def _jit(fn=None, *, fastmath=False):
  if fn is None:
    return lambda fn: _jit(fn, fastmath=fastmath)
  options = dict(nogil=True, fastmath=fastmath)
  try:
    return numba.njit(cache=True, **options)(fn)
  except RuntimeError:  # no writable cache location: compile once per process instead
    return numba.njit(**options)(fn)


@_jit
def csr_group_sums(data, indices, indptr, rows, groups, out):
  # out[groups[i]] += row rows[i] of the CSR matrix, rows in the order given.
  # Returns -1, or the position in `rows` of the first row whose row pointers or
  # column indices are out of range (the sums are then incomplete).
  # The checks also tell LLVM the indices are non-negative, which drops numba's
  # wraparound of negative indices: the loop is faster with them than without.
  n_cols = out.shape[1]
  n_stored = data.shape[0]
  for i in range(rows.shape[0]):
    g = groups[i]
    if g < 0:
      continue
    r = rows[i]
    lo = indptr[r]
    hi = indptr[r + 1]
    if lo < 0 or hi < lo or hi > n_stored:
      return i
    acc = out[g]
    j = lo
    while j + 4 <= hi:  # four independent adds in flight
      c0 = indices[j]
      c1 = indices[j + 1]
      c2 = indices[j + 2]
      c3 = indices[j + 3]
      if min(min(c0, c1), min(c2, c3)) < 0 or max(max(c0, c1), max(c2, c3)) >= n_cols:
        return i
      acc[c0] += data[j]
      acc[c1] += data[j + 1]
      acc[c2] += data[j + 2]
      acc[c3] += data[j + 3]
      j += 4
    while j < hi:
      c = indices[j]
      if c < 0 or c >= n_cols:
        return i
      acc[c] += data[j]
      j += 1
  return -1


@_jit
def dense_group_sums(block, rows, groups, out):
  # out[groups[i]] += block[rows[i]] in float64, rows in the order given.
  n_cols = out.shape[1]
  for i in range(rows.shape[0]):
    g = groups[i]
    if g < 0:
      continue
    src = block[rows[i]]
    acc = out[g]
    for j in range(n_cols):
      acc[j] += src[j]


# `reassoc` only lets LLVM split each sum into partial sums over the SIMD lanes;
# NaN and inf keep their IEEE meaning.
@_jit(fastmath={"reassoc"})
def l1_tile(xa, xb, y0, y1, y2, y3):
  # The eight L1 distances of two queries to four candidates. The gene loop keeps
  # the eight sums in SIMD registers, every pair summed the same way wherever it
  # stands.
  s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = xa.dtype.type(0)
  for g in range(xa.shape[0]):
    a = xa[g]
    b = xb[g]
    u0 = y0[g]
    u1 = y1[g]
    u2 = y2[g]
    u3 = y3[g]
    s00 += abs(a - u0)
    s01 += abs(a - u1)
    s02 += abs(a - u2)
    s03 += abs(a - u3)
    s10 += abs(b - u0)
    s11 += abs(b - u1)
    s12 += abs(b - u2)
    s13 += abs(b - u3)
  return s00, s01, s02, s03, s10, s11, s12, s13


@_jit
def l1_rows(x, y, y_tail, out, start, stop):
  # out[q, c] = sum_g |x[q, g] - y[c, g]| for queries start..stop-1, two queries by four
  # candidates at a time (`l1_tile`). The last C % 4 candidates come padded to four
  # rows in `y_tail` and a lone last query is paired with itself, so every distance
  # goes through the same loop.
  n_cand = y.shape[0]
  n_full = n_cand - n_cand % 4
  for q in range(start, stop, 2):
    q1 = q + 1 if q + 1 < stop else q
    xa = x[q]
    xb = x[q1]
    for c in range(0, n_full, 4):
      d = l1_tile(xa, xb, y[c], y[c + 1], y[c + 2], y[c + 3])
      out[q, c] = d[0]
      out[q, c + 1] = d[1]
      out[q, c + 2] = d[2]
      out[q, c + 3] = d[3]
      out[q1, c] = d[4]
      out[q1, c + 1] = d[5]
      out[q1, c + 2] = d[6]
      out[q1, c + 3] = d[7]
    if n_full < n_cand:
      d = l1_tile(xa, xb, y_tail[0], y_tail[1], y_tail[2], y_tail[3])
      for j in range(n_cand - n_full):
        out[q, n_full + j] = d[j]
        out[q1, n_full + j] = d[4 + j]

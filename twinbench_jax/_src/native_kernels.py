"""The numba loops behind `native` (imported only when they are first needed).

Plain loops over numpy arrays, compiled for each dtype on first call and
cached on disk; `nogil` lets `threads` run several blocks at once. Their
contracts (shapes, order of the sums, checks) are documented in `native`.
"""

import numba
import numpy as np

_jit = numba.njit(nogil=True, cache=True)


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


@_jit
def l1_rows(x, y_t, out, start, stop, q_tile, c_tile, g_chunk):
  # out[q, c] = sum_g |x[q, g] - y_t[g, c]| for queries start..stop-1, in tiles of
  # q_tile (<= 4) queries x c_tile candidates: each candidate row chunk is read once
  # per tile and the candidates lie along the SIMD lanes. Each chunk of g_chunk genes
  # is summed into zeroed partials first, then added into the totals, in the same
  # order for every query (a full tile of four or a remainder).
  n_genes, n_cand = y_t.shape
  part = np.zeros((4, c_tile), out.dtype)
  for q0 in range(start, stop, q_tile):
    nq = min(q_tile, stop - q0)
    for c0 in range(0, n_cand, c_tile):
      nc = min(c_tile, n_cand - c0)
      for g0 in range(0, n_genes, g_chunk):
        g1 = min(g0 + g_chunk, n_genes)
        part[:, :nc] = 0
        if nq == 4:
          p0 = part[0]
          p1 = part[1]
          p2 = part[2]
          p3 = part[3]
          for g in range(g0, g1):
            row = y_t[g, c0:c0 + nc]
            v0 = x[q0, g]
            v1 = x[q0 + 1, g]
            v2 = x[q0 + 2, g]
            v3 = x[q0 + 3, g]
            for c in range(nc):
              b = row[c]
              p0[c] += abs(v0 - b)
              p1[c] += abs(v1 - b)
              p2[c] += abs(v2 - b)
              p3[c] += abs(v3 - b)
        else:
          for qi in range(nq):
            p = part[qi]
            for g in range(g0, g1):
              row = y_t[g, c0:c0 + nc]
              v = x[q0 + qi, g]
              for c in range(nc):
                p[c] += abs(v - row[c])
        for qi in range(nq):
          total = out[q0 + qi]
          p = part[qi]
          for c in range(nc):
            total[c0 + c] += p[c]

"""The compiled CPU loops (`_src/native.py`) against numpy, scipy and the XLA path they replace."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import twinbench_jax as tb
from adata_helpers import make_real
from twinbench_jax._src.evaluate import scoring
from twinbench_jax._src.core import native
from twinbench_jax._src.data import profiles as profiles_lib
from twinbench_jax._src.core import threads as threads_lib

pytestmark = pytest.mark.skipif(not native.available(),
                                reason="numba is not installed (or TWINBENCH_NUMBA=0)")


def _l1_numpy(x, y):
  return np.abs(x[:, None, :].astype(np.float64) - y[None, :, :].astype(np.float64)).sum(-1)


# ----------------------------------------------------------------------------- L1 distances


@pytest.mark.parametrize("q,c,g", [(1, 1, 1), (5, 3, 7), (9, 1030, 300), (13, 17, 600),
                                   (0, 4, 3), (4, 0, 3), (3, 4, 0)])
def test_l1_distances_match_numpy(q, c, g):
  # Shapes cover the tails: queries not a multiple of 4, more candidates than one tile
  # (1024), more genes than one chunk (256), and empty axes.
  rng = np.random.default_rng(q * 100 + c + g)
  x = rng.normal(size=(q, g)).astype(np.float32)
  y = rng.normal(size=(c, g)).astype(np.float32)
  d = native.l1_distances(x, y)
  assert d.dtype == np.float32 and d.shape == (q, c)
  np.testing.assert_allclose(d, _l1_numpy(x, y), rtol=2e-6, atol=1e-6)


def test_l1_distances_in_float64_and_any_thread_count_are_the_same_sums():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(23, 700)), rng.normal(size=(31, 700))
  d = native.l1_distances(x, y)
  assert d.dtype == np.float64
  np.testing.assert_allclose(d, _l1_numpy(x, y), rtol=1e-13)
  for n in (1, 2, 3, 7):  # the split of the queries never changes a sum
    np.testing.assert_array_equal(native.l1_distances(x, y, n_threads=n), d)


def test_l1_distances_are_exact_zeros_for_identical_rows_and_propagate_nan_and_inf():
  rng = np.random.default_rng(2)
  y = (100.0 + rng.normal(size=(6, 300))).astype(np.float32)
  x = y[[3, 0, 5]].copy()
  d = native.l1_distances(x, y)
  assert d[0, 3] == 0.0 and d[1, 0] == 0.0 and d[2, 5] == 0.0
  x[0, 10] = np.nan
  x[1, 20] = np.inf
  d = native.l1_distances(x, y)
  want = _l1_numpy(x, y)
  np.testing.assert_array_equal(np.isnan(d), np.isnan(want))
  np.testing.assert_array_equal(np.isposinf(d), np.isposinf(want))
  assert np.isnan(d[0]).all() and np.isposinf(d[1]).all() and np.isfinite(d[2]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_l1_distances_of_repeated_rows_are_bitwise_equal_wherever_they_stand(dtype):
  # Candidates in a full tile of four and in the padded last tile, queries first or
  # second of a pair or alone at the end: every pair goes through the same loop, so a
  # repeated profile is an exact tie, never a rounding-level near-tie.
  rng = np.random.default_rng(11)
  y = rng.normal(size=(11, 333)).astype(dtype)
  y[[4, 9, 10]] = y[1]
  x = rng.normal(size=(7, 333)).astype(dtype)
  x[[2, 5, 6]] = x[1]
  for n in (1, 2, 3):
    d = native.l1_distances(x, y, n_threads=n)
    for c in (4, 9, 10):
      np.testing.assert_array_equal(d[:, c], d[:, 1])
    for q in (2, 5, 6):
      np.testing.assert_array_equal(d[q], d[1])


def test_l1_distances_refuse_mixed_dtypes_and_shapes():
  with pytest.raises(TypeError, match="float32 or two float64"):
    native.l1_distances(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float64))
  with pytest.raises(ValueError, match=r"\[Q, G\] and \[C, G\]"):
    native.l1_distances(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))


@settings(max_examples=30, deadline=None)
@given(q=st.integers(1, 9), c=st.integers(1, 9), g=st.integers(1, 40), seed=st.integers(0, 1000),
       scale=st.sampled_from([1e-3, 1.0, 1e4]))
def test_l1_distances_property_against_numpy(q, c, g, seed, scale):
  rng = np.random.default_rng(seed)
  x = (scale * rng.normal(size=(q, g))).astype(np.float32)
  y = (scale * rng.normal(size=(c, g))).astype(np.float32)
  y[0] = x[0]  # an exact match somewhere
  d = native.l1_distances(x, y)
  assert d[0, 0] == 0.0
  assert (d >= 0).all()
  np.testing.assert_allclose(d, _l1_numpy(x, y), rtol=1e-5, atol=1e-6 * scale)


# ----------------------------------------------------------------------------- group sums


def _indicator_sums(x, rows, groups, n_groups):
  """scipy's indicator-matrix product: the sums the loops must reproduce bit for bit."""
  keep = groups >= 0
  ind = sp.csr_matrix((np.ones(keep.sum()), (groups[keep], np.arange(rows.size)[keep])),
                      shape=(n_groups, rows.size))
  block = sp.csr_matrix(x)[rows]
  return (ind @ sp.csr_matrix((block.data.astype(np.float64), block.indices, block.indptr),
                              shape=block.shape)).toarray()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_group_sums_are_the_indicator_product_bit_for_bit(dtype):
  rng = np.random.default_rng(4)
  x = rng.gamma(0.3, 50.0, size=(300, 37)) * (rng.random((300, 37)) < 0.4)
  x = x.astype(dtype)
  rows = rng.permutation(300)[:250].astype(np.int64)
  groups = rng.integers(-1, 11, 250).astype(np.int64)  # -1 skips a row
  want = _indicator_sums(x, rows, groups, 11)
  csr = sp.csr_matrix(x)
  out = np.zeros((11, 37))
  assert native.csr_group_sums(csr.data, csr.indices, csr.indptr, rows, groups, out) is None
  np.testing.assert_array_equal(out, want)
  dense = np.zeros((11, 37))
  native.dense_group_sums(x, rows, groups, dense)
  np.testing.assert_array_equal(dense, want)


@pytest.mark.parametrize("corrupt", ["column", "negative", "pointer"])
def test_group_sums_report_a_corrupt_row(corrupt):
  csr = sp.random(20, 8, density=0.5, format="csr", random_state=0)
  indices, indptr = csr.indices.copy(), csr.indptr.copy()
  bad_row = 13
  if corrupt == "column":
    indices[indptr[bad_row]] = 8
  elif corrupt == "negative":
    indices[indptr[bad_row]] = -1
  else:
    indptr[bad_row + 1] = csr.nnz + 5
  rows = np.arange(20, dtype=np.int64)
  out = np.zeros((2, 8))
  assert native.csr_group_sums(csr.data, indices, indptr, rows, rows % 2, out) == bad_row
  # A skipped row is never read; a wrong pointer is also the next row's start.
  groups = np.where(rows == bad_row, -1, rows % 2)
  want = bad_row + 1 if corrupt == "pointer" else None
  assert native.csr_group_sums(csr.data, indices, indptr, rows, groups, out) == want


def test_pseudobulk_of_a_corrupt_matrix_names_the_cell():
  adata, _ = make_real(counts=True)
  x = sp.csr_matrix(adata.X)
  x.indices[x.indptr[7]] = x.shape[1] + 3
  adata.X = x
  with pytest.raises(ValueError, match=r"cell \(row\) 7 has column indices .* corrupt"):
    tb.pseudobulk(adata)


@pytest.fixture(autouse=True)
def _loops_at_any_size(monkeypatch):
  # The loops pay for their import only on large data (`native.GROUP_SUMS_MIN_ENTRIES`);
  # here they run on the small arrays too, so they are what is tested.
  monkeypatch.setattr(native, "GROUP_SUMS_MIN_ENTRIES", 0)


def _host_loops_off(monkeypatch):
  monkeypatch.setattr(native, "available", lambda: False)


@pytest.mark.parametrize("layout", ["csr", "dense", "file", "normalized"])
@pytest.mark.parametrize("chunk_size", [3, 11, 1000])
def test_pseudobulk_is_bit_identical_with_and_without_the_loops(monkeypatch, tmp_path, layout,
                                                                chunk_size):
  # Shuffled cells; small blocks cut the 20-cell control group into pieces.
  rng = np.random.default_rng(6)
  adata, _ = make_real(counts=True)
  adata = adata[rng.permutation(adata.n_obs)].copy()
  if layout != "dense":
    adata.X = sp.csr_matrix(adata.X)
  source = adata
  if layout == "file":
    source = tmp_path / "cells.h5ad"
    adata.write_h5ad(source)
  normalize = "log1p_cp10k" if layout == "normalized" else None
  compiled = tb.pseudobulk(source, normalize=normalize, chunk_size=chunk_size)
  for n in (1, 3):
    monkeypatch.setattr(threads_lib, "n_threads", lambda n=n: n)
    again = tb.pseudobulk(source, normalize=normalize, chunk_size=chunk_size)
    np.testing.assert_array_equal(again.means, compiled.means)
  _host_loops_off(monkeypatch)
  plain = tb.pseudobulk(source, normalize=normalize, chunk_size=chunk_size)
  np.testing.assert_array_equal(compiled.means, plain.means)
  np.testing.assert_array_equal(compiled.n_cells, plain.n_cells)


def test_disabled_by_the_environment(monkeypatch):
  monkeypatch.setenv("TWINBENCH_NUMBA", "0")
  assert not native.available()
  monkeypatch.setenv("TWINBENCH_NUMBA", "1")
  assert native.available()


# ----------------------------------------------------------------------------- evaluate


def _score(x, y, truth, rows, exclude=None):
  return scoring.score(np.arange(len(truth)).astype(str), x, y, truth, rows, metric="l1",
                       k=1, ties="average", exclude=exclude)


def _assert_same_scores(a, b, *, exact):
  np.testing.assert_array_equal(a.ranks, b.ranks)
  np.testing.assert_array_equal(a.pvalues, b.pvalues)
  np.testing.assert_array_equal(a.top1, b.top1)
  if exact:
    np.testing.assert_array_equal(a.own, b.own)
  else:
    np.testing.assert_allclose(a.own, b.own, rtol=1e-6)


@pytest.mark.parametrize("exclude", [False, True])
def test_scores_from_the_loop_equal_the_xla_kernel(monkeypatch, exclude):
  rng = np.random.default_rng(7)
  q, g = 40, 300
  y = (1.0 + rng.normal(size=(q, g))).astype(np.float32)
  x = (y + 0.7 * rng.normal(size=(q, g))).astype(np.float32)
  x[:, :5] -= 3.0
  truth = rng.permutation(q)
  gene = np.where(rng.random(q) < 0.2, -1, rng.integers(0, 5, q))[:, None] if exclude else None
  compiled = _score(x, y, truth, np.arange(q), gene)
  _host_loops_off(monkeypatch)
  plain = _score(x, y, truth, np.arange(q), gene)
  _assert_same_scores(compiled, plain, exact=False)


@pytest.mark.parametrize("case", ["nan", "inf", "cancellation"])
def test_untrusted_subtractions_fall_back_to_the_masked_passes(monkeypatch, case):
  rng = np.random.default_rng(8)
  y = (50.0 + rng.normal(size=(12, 64))).astype(np.float32)
  x = y[::-1].copy()
  gene = np.full((12, 1), 7, np.int32)
  if case == "cancellation":
    x[:] = y + 1e-3 * rng.normal(size=y.shape).astype(np.float32)
    x[:, 7] += 500.0  # a huge excluded term: float32 d - 500 would lose the kept sum
  else:
    y[3, 7] = np.nan if case == "nan" else np.inf  # a bad value only at an excluded gene
  compiled = _score(x, y, np.arange(12), np.arange(12), gene)
  _host_loops_off(monkeypatch)
  plain = _score(x, y, np.arange(12), np.arange(12), gene)
  _assert_same_scores(compiled, plain, exact=True)  # both are the masked passes
  assert np.isfinite(compiled.own).all()


def test_one_profile_for_every_query_gets_identical_rows_and_p_one():
  rng = np.random.default_rng(9)
  y = rng.normal(size=(30, 200)).astype(np.float32)
  mean = y.mean(axis=0, keepdims=True)
  x = np.broadcast_to(mean, y.shape)
  for gene in (None, np.arange(30)[:, None] % 200):
    scored = _score(x, y, np.arange(30), np.zeros(30, int), gene)
    assert (scored.pvalues == 1.0).all() and scored.curve.auc == 0.0


def test_evaluate_is_the_same_with_and_without_the_loops(monkeypatch):
  real, means = make_real(n_perturbations=30, n_genes=60, seed=3)
  from adata_helpers import good_pred

  pred = good_pred(real, means, noise=0.8)
  targets = {f"p{i}": f"g{i}" for i in range(0, 30, 2)}
  kwargs = dict(metric="l1", target_genes=targets, baselines=("mean", "split_half"))
  compiled = tb.evaluate(pred, real, **kwargs)
  _host_loops_off(monkeypatch)
  plain = tb.evaluate(pred, real, **kwargs)
  for a, b in [(compiled.per_perturbation, plain.per_perturbation),
               *zip(compiled.baseline_tables.values(), plain.baseline_tables.values())]:
    np.testing.assert_array_equal(a["rank"], b["rank"])
    np.testing.assert_array_equal(a["pvalue"], b["pvalue"])
    np.testing.assert_allclose(a["own_score"], b["own_score"], rtol=1e-6)
  assert compiled.auc_f1 == plain.auc_f1 and compiled.baselines == plain.baselines

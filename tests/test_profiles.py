"""Pseudobulk profiles, normalisation, alignment and split halves (SPEC §6–7)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp

import twinbench_jax as tb
from adata_helpers import make_real, pseudobulk_numpy
from twinbench_jax._src.data import baselines as baselines_lib
from twinbench_jax._src.data import profiles as profiles_lib
from twinbench_jax._src.core import threads as threads_lib


def _log1p_cp10k(x):
  x = np.asarray(x, np.float64)
  totals = x.sum(axis=1, keepdims=True)
  return np.log1p(np.divide(x * 1e4, totals, out=np.zeros_like(x), where=totals > 0))


@pytest.mark.parametrize("normalize", [None, "log1p", "log1p_cp10k", "log1p_cpm"])
def test_pseudobulk_matches_numpy_group_means(normalize):
  adata, _ = make_real(counts=True)
  pb = tb.pseudobulk(adata, normalize=normalize)
  x = adata.X.astype(np.float64)
  if normalize == "log1p":
    x = np.log1p(x)
  elif normalize is not None:
    target = 1e4 if normalize == "log1p_cp10k" else 1e6
    totals = x.sum(axis=1, keepdims=True)
    x = np.log1p(x * target / totals)
  want = pseudobulk_numpy(x, adata.obs["perturbation"], pb.labels)
  np.testing.assert_allclose(pb.means, want, rtol=1e-12)
  assert list(pb.labels) == sorted(adata.obs["perturbation"].unique())
  np.testing.assert_array_equal(pb.n_cells, [20] + [12] * 8)  # "control" sorts first
  assert pb.to_frame().shape == (9, 25)


def test_dense_sparse_backed_and_chunked_profiles_agree(tmp_path):
  import anndata

  adata, _ = make_real(counts=True)
  # A cell with no counts at all must not divide by zero.
  adata.X[0] = 0
  dense = tb.pseudobulk(adata, normalize="log1p_cp10k")
  csr = adata.copy()
  csr.X = sp.csr_matrix(csr.X)
  path = tmp_path / "real.h5ad"
  csr.write_h5ad(path)
  sparse = tb.pseudobulk(csr, normalize="log1p_cp10k")
  from_path = tb.pseudobulk(path, normalize="log1p_cp10k")
  backed = tb.pseudobulk(anndata.read_h5ad(path, backed="r"), normalize="log1p_cp10k")
  # One sparse code path: dense and sparse inputs are bit-identical.
  for other in (sparse, from_path, backed):
    np.testing.assert_array_equal(other.means, dense.means)
  csc = csr.copy()
  csc.X = sp.csc_matrix(csc.X)
  csc.write_h5ad(tmp_path / "csc.h5ad")  # column-compressed on disk: read through anndata
  np.testing.assert_array_equal(
      tb.pseudobulk(tmp_path / "csc.h5ad", normalize="log1p_cp10k").means, dense.means)
  small_blocks = tb.pseudobulk(path, normalize="log1p_cp10k", chunk_size=7)
  np.testing.assert_allclose(small_blocks.means, dense.means, rtol=1e-12)
  assert np.isfinite(dense.means).all()


@pytest.mark.parametrize("normalize", [None, "log1p_cp10k"])
@pytest.mark.parametrize("chunk_size", [1, 5, 13, 1000])
def test_in_memory_dense_and_sparse_are_bit_identical_in_any_blocks(normalize, chunk_size):
  # Cells in shuffled order, so blocks of whole groups need the cells reordered.
  rng = np.random.default_rng(3)
  adata, _ = make_real(counts=True)
  adata = adata[rng.permutation(adata.n_obs)].copy()
  dense = tb.pseudobulk(adata, normalize=normalize, chunk_size=chunk_size)
  csr = adata.copy()
  csr.X = sp.csr_matrix(csr.X)
  sparse = tb.pseudobulk(csr, normalize=normalize, chunk_size=chunk_size)
  np.testing.assert_array_equal(sparse.means, dense.means)
  x = adata.X.astype(np.float64)
  if normalize is not None:
    x = _log1p_cp10k(x)
  want = pseudobulk_numpy(x, adata.obs["perturbation"], dense.labels)
  np.testing.assert_allclose(dense.means, want, rtol=1e-12)


@pytest.mark.parametrize("normalize", [None, "log1p_cp10k"])
def test_block_threads_give_the_same_sums_and_pass_errors_on(monkeypatch, tmp_path, normalize):
  rng = np.random.default_rng(5)
  adata, _ = make_real(counts=True, n_perturbations=30)
  adata = adata[rng.permutation(adata.n_obs)].copy()
  adata.X = sp.csr_matrix(adata.X)
  path = tmp_path / "cells.h5ad"
  adata.write_h5ad(path)
  for source in (adata, path):  # in memory, and streamed from the file
    by_threads = {}
    for n in (1, 3):
      monkeypatch.setattr(threads_lib, "n_threads", lambda n=n: n)
      by_threads[n] = tb.pseudobulk(source, normalize=normalize, chunk_size=4).means
    np.testing.assert_array_equal(by_threads[1], by_threads[3])
  # A block that fails on a worker thread raises here, with its message.
  adata.X.data[-1] = -2.0
  with pytest.raises(ValueError, match="non-negative counts"):
    tb.pseudobulk(adata, normalize="log1p", chunk_size=4)


_FORK_SCRIPT = """
import os, sys
import numpy as np, scipy.sparse as sp
from twinbench_jax._src.data import profiles
from twinbench_jax._src.core import threads
threads.n_threads = lambda: 2
rng = np.random.default_rng(0)
x = sp.random(400, 30, density=0.3, format="csr", random_state=0)
codes = rng.integers(0, 12, 400)
src = profiles.open_source(__import__("anndata").AnnData(x), "x")
want = profiles.group_sums(src, codes, 12, chunk_size=40)[0]  # the pool now exists
pid = os.fork()
if pid == 0:
  ok = np.array_equal(profiles.group_sums(src, codes, 12, chunk_size=40)[0], want)
  os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_pseudobulk_threads_work_in_a_forked_child():
  # A fresh process that never starts JAX's runtime threads, so the fork itself is safe;
  # without a new pool in the child its blocks would wait forever on the parent's threads.
  import subprocess
  import sys

  res = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True,
                       timeout=120)
  assert res.returncode == 0, res.stderr


def test_map_in_order_keeps_the_order_and_bounds_the_work_in_flight():
  import threading
  import time

  running, most = [0], [0]
  lock = threading.Lock()

  def work(i):
    with lock:
      running[0] += 1
      most[0] = max(most[0], running[0])
    time.sleep(0.002 * (i % 3))
    with lock:
      running[0] -= 1
    return i * i

  assert list(threads_lib.map_in_order(work, list(range(40)), 3)) == [i * i for i in range(40)]
  assert most[0] <= 3
  assert list(threads_lib.map_in_order(work, [], 3)) == []


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 100])
def test_grouped_blocks_cover_each_used_cell_once_in_whole_groups(chunk_size):
  codes = np.array([2, -1, 0, 2, 1, 1, 0, 2, -1, 2, 2, 1])
  blocks = profiles_lib._grouped_blocks(codes, chunk_size)
  cells = np.concatenate(blocks)
  np.testing.assert_array_equal(np.sort(cells), np.flatnonzero(codes >= 0))
  # Groups appear in order, each group's cells in their original order.
  np.testing.assert_array_equal(codes[cells], np.sort(codes[codes >= 0]))
  for g in range(3):
    mine = cells[codes[cells] == g]
    np.testing.assert_array_equal(mine, np.sort(mine))
  for b in blocks:
    assert len(b) <= chunk_size
    groups = set(codes[b].tolist())
    # A group is split across blocks only when it alone is larger than a block.
    for g in groups:
      if np.sum(codes == g) <= chunk_size:
        assert np.sum(codes[b] == g) == np.sum(codes == g)
  assert profiles_lib._grouped_blocks(np.full(4, -1), chunk_size) == []


def test_nan_only_in_an_unused_cell_is_ignored_and_overflow_is_reported():
  adata, _ = make_real(counts=True)
  adata.X = adata.X.astype(np.float64)
  codes = np.zeros(adata.n_obs, np.int64)
  codes[7] = -1
  adata.X[7, 3] = np.nan
  src = profiles_lib.open_source(adata, "adata")
  sums, counts = profiles_lib.group_sums(src, codes, 1)
  assert np.isfinite(sums).all() and counts[0] == adata.n_obs - 1
  adata.X[7, 3] = 0.0
  adata.X[:, 0] = 1e308
  with pytest.raises(ValueError, match="overflow float64"):
    profiles_lib.group_sums(profiles_lib.open_source(adata, "adata"), codes, 1)


def test_normalisation_never_modifies_the_input():
  adata, _ = make_real(counts=True)
  adata.X = sp.csr_matrix(adata.X, dtype=np.float64)
  before = adata.X.copy()
  tb.pseudobulk(adata, normalize="log1p_cp10k")
  np.testing.assert_array_equal(adata.X.toarray(), before.toarray())


def test_pseudobulk_reads_a_layer_and_names_missing_ones(tmp_path):
  adata, _ = make_real(counts=True)
  adata.layers["counts"] = adata.X.copy()
  adata.X = _log1p_cp10k(adata.X).astype(np.float32)
  from_layer = tb.pseudobulk(adata, layer="counts", normalize="log1p_cp10k")
  from_x = tb.pseudobulk(adata)
  np.testing.assert_allclose(from_layer.means, from_x.means, rtol=1e-5)
  adata.write_h5ad(tmp_path / "a.h5ad")
  np.testing.assert_array_equal(
      tb.pseudobulk(tmp_path / "a.h5ad", layer="counts", normalize="log1p_cp10k").means,
      from_layer.means)
  with pytest.raises(ValueError, match=r"layer 'raw'.*available: \['counts'\]"):
    tb.pseudobulk(adata, layer="raw")


def test_perturbation_key_from_uns_and_missing_key_message():
  adata, _ = make_real()
  adata.obs = adata.obs.rename(columns={"perturbation": "guide_target"})
  with pytest.raises(ValueError, match=r"'perturbation' in `adata.obs`; available: "
                     r"\['guide_target'\]"):
    tb.pseudobulk(adata)
  adata.uns["perturbation_key"] = "guide_target"
  assert len(tb.pseudobulk(adata).labels) == 9


def test_bad_values_are_reported_with_the_cell():
  adata, _ = make_real(counts=True)
  adata.X[30, 4] = np.nan
  with pytest.raises(ValueError, match=r"non-finite.*cell \(row\) 30"):
    tb.pseudobulk(adata)
  adata.X = sp.csr_matrix(np.nan_to_num(adata.X))
  adata.X[5, 2] = np.inf
  with pytest.raises(ValueError, match=r"non-finite.*cell \(row\) 5"):
    tb.pseudobulk(adata)
  adata, _ = make_real()  # Gaussian values: negative entries
  adata.X[0, 0] = -1.0
  with pytest.raises(ValueError, match="non-negative counts"):
    tb.pseudobulk(adata, normalize="log1p_cp10k")
  adata.obs["perturbation"] = adata.obs["perturbation"].cat.add_categories([]).astype(object)
  adata.obs.iloc[3, 0] = None
  with pytest.raises(ValueError, match=r"no label for 1 cell\(s\) \(rows \[3\]\)"):
    tb.pseudobulk(adata)


def test_duplicate_gene_names_are_refused():
  adata, _ = make_real()
  adata.var_names = ["g0", "g0"] + list(adata.var_names[2:])
  src = profiles_lib.open_source(adata, "adata_real")
  with pytest.raises(ValueError, match=r"duplicated gene name\(s\): \['g0'\].*var_names_make"):
    profiles_lib.check_unique_genes(src)


def test_unreadable_files(tmp_path):
  empty = tmp_path / "empty.h5ad"
  empty.write_bytes(b"")
  with pytest.raises(ValueError, match="empty or truncated"):
    tb.pseudobulk(empty)
  adata, _ = make_real()
  good = tmp_path / "good.h5ad"
  adata.write_h5ad(good)
  truncated = tmp_path / "truncated.h5ad"
  truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
  with pytest.raises(ValueError, match="truncated"):
    tb.pseudobulk(truncated)
  with pytest.raises(FileNotFoundError, match="missing.h5ad"):
    tb.pseudobulk(tmp_path / "missing.h5ad")


def test_align_genes_shared_strict_and_none():
  import pandas as pd

  pred = pd.Index(["a", "b", "c", "x"])
  real = pd.Index(["c", "b", "a", "y", "z"])
  shared, notes = profiles_lib.align_genes(pred, real)
  assert list(shared) == ["c", "b", "a"]  # the real file's order
  assert "3 shared genes; 1 only in predictions, 2 only in real" in notes[0]
  with pytest.raises(ValueError, match=r"1 gene\(s\) only in `adata_pred`: \['x'\]; 2 gene\(s\) "
                     r"only in `adata_real`: \['y', 'z'\]"):
    profiles_lib.align_genes(pred, real, strict=True)
  with pytest.raises(ValueError, match="no shared genes"):
    profiles_lib.align_genes(pd.Index(["ENSG1"]), pd.Index(["STAT1"]))


def test_align_perturbations_policies():
  pred = ["b", "a", "x"]
  real = ["a", "b", "c"]
  with pytest.raises(ValueError, match=r"1 predicted but absent.*\['x'\].*1 real but not "
                     r"predicted: \['c'\].*unmatched='intersect'"):
    profiles_lib.align_perturbations(pred, real)
  q, c, notes = profiles_lib.align_perturbations(pred, real, unmatched="intersect")
  assert (q, c) == (["b", "a"], ["a", "b"])  # queries keep the prediction order
  assert len(notes) == 2
  q, c, _ = profiles_lib.align_perturbations(pred, real, unmatched="keep_real")
  assert (q, c) == (["b", "a"], ["a", "b", "c"])
  with pytest.raises(ValueError, match="no perturbation label is both"):
    profiles_lib.align_perturbations(["u"], ["v"], unmatched="intersect")


def test_split_halves_sizes_and_seed():
  codes = np.repeat([0, 1, 2, 3], [1, 2, 7, 10])
  codes = np.r_[codes, [-1, -1]]
  half = baselines_lib.split_halves(codes, seed=3)
  for g, n in enumerate([1, 2, 7, 10]):
    assert np.sum(half[codes == g] == 0) == n // 2
  assert (half[codes == 0] == 1).all()  # a lone cell is held out, never predicting
  assert (half[codes < 0] == -1).all()
  np.testing.assert_array_equal(half, baselines_lib.split_halves(codes, seed=3))
  assert not np.array_equal(half, baselines_lib.split_halves(codes, seed=4))


def test_split_half_profiles_average_the_halves():
  adata, _ = make_real(n_cells=9)
  a, b = tb.split_half(adata, seed=1)
  full = tb.pseudobulk(adata)
  np.testing.assert_array_equal(a.n_cells + b.n_cells, full.n_cells)
  np.testing.assert_allclose((a.means * a.n_cells[:, None] + b.means * b.n_cells[:, None])
                             / full.n_cells[:, None], full.means, rtol=1e-10)


def test_top_variable_genes_keeps_order():
  prof = np.array([[0.0, 5.0, 1.0, 0.0], [0.0, -5.0, 2.0, 0.1]])
  genes = np.array(["a", "b", "c", "d"])
  assert list(profiles_lib.top_variable_genes(prof, genes, 2)) == ["b", "c"]

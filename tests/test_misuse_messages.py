"""Messages that used to mislead: each bad input now says what is wrong, and where.

One kind of bad input per test (a 0-cell file, -inf under `normalize`, a
corrupt sparse matrix or categorical column, swapped arguments of
`tb.precomputed_null`, a mis-shaped null array), asserting the error type
and the file, option or argument its message names. Also the order of a
precomputed null array's rows, proven rather than stated, and the labelled
null (a mapping or an AnnData) that needs no order at all.
"""

from __future__ import annotations

import shutil

import anndata
import h5py
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import twinbench_jax as tb
from adata_helpers import good_pred, make_pred, make_real

# Queries in an order that is not sorted, so the two possible row orders differ.
ORDER = ["p3", "p0", "p5", "p1", "p4", "p2"]


@pytest.fixture(scope="module")
def pair():
  """Counts for 6 perturbations (+ control); predictions listed in `ORDER`."""
  real, means = make_real(n_perturbations=6, n_genes=10, counts=True)
  pred = good_pred(real, means, noise=1.0)
  pred = pred[[pred.obs_names[int(lab[1:])] for lab in ORDER]].copy()
  return real, pred


@pytest.fixture(scope="module")
def sparse_file(pair, tmp_path_factory):
  """The real counts as a CSR `.h5ad` file."""
  real, _ = pair
  sparse = real.copy()
  sparse.X = sp.csr_matrix(np.asarray(real.X))
  path = tmp_path_factory.mktemp("files") / "real.h5ad"
  sparse.write_h5ad(path)
  return path


def _corrupt_copy(src, dst, edit):
  shutil.copy(src, dst)
  with h5py.File(dst, "r+") as f:
    edit(f)
  return str(dst)


# ----------------------------------------------------------------------------- null row order


def test_per_perturbation_follows_the_first_appearance_in_adata_pred(pair):
  real, pred = pair
  report = tb.evaluate(pred, real, baselines=())
  assert report.per_perturbation["perturbation"].tolist() == ORDER


def test_a_null_array_is_read_in_the_order_of_first_appearance(pair):
  # Replicates equal to the predictions in first-appearance order tie with every
  # observed own score (p = 1 for all); in sorted order they are other queries'
  # predictions, so the p-values are those of a label permutation instead.
  real, pred = pair
  x = np.asarray(pred.X)
  as_listed = tb.evaluate(pred, real, null=np.stack([x, x]), baselines=())
  np.testing.assert_array_equal(as_listed.per_perturbation["pvalue"], 1.0)
  by_sorted = np.argsort(ORDER)
  sorted_null = tb.evaluate(pred, real, null=np.stack([x[by_sorted]] * 2), baselines=())
  assert (sorted_null.per_perturbation["pvalue"] < 1.0).any()


def test_the_null_shape_error_states_the_order_used(pair):
  real, pred = pair
  with pytest.raises(ValueError, match=r"shape \(B, Q, G\) = \(B, 6, 10\): rows in query "
                     r"order, the order in which the perturbations first appear in adata_pred "
                     r"\(as in report.per_perturbation: \['p3', 'p0', 'p5', 'p1', 'p4'\] \.\.\. "
                     r"\(6 in all\)\).*got \(2, 10, 6\)"):
    tb.evaluate(pred, real, null=np.zeros((2, 10, 6)))


# ----------------------------------------------------------------------------- labelled nulls


def _null_array(pred, n=5, seed=0):
  rng = np.random.default_rng(seed)
  x = np.asarray(pred.X, np.float64)
  return np.stack([x[rng.permutation(x.shape[0])] + rng.normal(size=x.shape)
                   for _ in range(n)]).astype(np.float32)


def test_a_mapping_null_gives_the_array_null_result(pair):
  real, pred = pair
  null = _null_array(pred)
  mapping = {label: null[:, i] for i, label in reversed(list(enumerate(ORDER)))}
  mapping["control"] = np.zeros((5, 10))  # not a query: ignored
  a = tb.evaluate(pred, real, null=null, baselines=())
  b = tb.evaluate(pred, real, null=mapping, baselines=())
  np.testing.assert_array_equal(a.per_perturbation["pvalue"], b.per_perturbation["pvalue"])
  assert a.auc_f1 == b.auc_f1 and b.summary["n_null"] == 5


def test_a_labelled_anndata_null_needs_no_row_order(pair):
  real, pred = pair
  null = _null_array(pred, n=1)
  shuffled = [3, 5, 0, 2, 1, 4]
  rows = make_pred(null[0][shuffled], [ORDER[i] for i in shuffled], pred.var_names)
  a = tb.evaluate(pred, real, null=null, baselines=())
  b = tb.evaluate(pred, real, null=rows, baselines=())
  np.testing.assert_array_equal(a.per_perturbation["pvalue"], b.per_perturbation["pvalue"])


def test_a_mapping_null_missing_a_query_names_it(pair):
  real, pred = pair
  null = _null_array(pred)
  mapping = {label: null[:, i] for i, label in enumerate(ORDER) if label != "p5"}
  with pytest.raises(ValueError, match=r"the `null` mapping has no null predictions for 1 "
                     r"queried perturbation\(s\): \['p5'\]"):
    tb.evaluate(pred, real, null=mapping)


def test_a_mapping_null_of_the_wrong_shape_names_the_label(pair):
  real, pred = pair
  mapping = {label: np.zeros((4, 10)) for label in ORDER}
  mapping["p1"] = np.zeros(10)
  with pytest.raises(ValueError, match=r"`null`\['p1'\] must have shape \(B, G\) = \(B, 10\).*"
                     r"got \(10,\)"):
    tb.evaluate(pred, real, null=mapping)


def test_a_mapping_null_with_unequal_replicates_is_refused(pair):
  real, pred = pair
  mapping = {label: np.zeros((4, 10)) for label in ORDER}
  mapping["p4"] = np.zeros((3, 10))
  with pytest.raises(ValueError, match=r"`null`\['p4'\] holds 3 null replicate\(s\) but "
                     r"`null`\['p3'\] holds 4"):
    tb.evaluate(pred, real, null=mapping)


def test_an_empty_mapping_null_is_refused(pair):
  real, pred = pair
  with pytest.raises(ValueError, match=r"`null` is an empty mapping"):
    tb.evaluate(pred, real, null={})


# ----------------------------------------------------------------------------- empty files


def test_a_real_file_with_zero_cells_says_so(pair, tmp_path):
  real, pred = pair
  path = tmp_path / "empty.h5ad"
  real[:0].copy().write_h5ad(path)
  with pytest.raises(ValueError, match=rf"^{str(path)!r} has 0 cells \(its obs is empty\)"):
    tb.evaluate(pred, str(path))


def test_predictions_with_zero_cells_say_so(pair):
  real, pred = pair
  with pytest.raises(ValueError, match=r"^`adata_pred` has 0 cells"):
    tb.evaluate(pred[:0].copy(), real)


# ----------------------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("bad", [-np.inf, np.inf, np.nan])
def test_non_finite_values_under_normalize_are_called_non_finite(pair, bad):
  real, pred = pair
  dirty = real.copy()
  dirty.X = np.asarray(real.X).copy()
  dirty.X[7, 2] = bad
  with pytest.raises(ValueError, match=r"`adata_real.X` holds 1 non-finite value\(s\) \(NaN or "
                     r"inf\), first in cell \(row\) 7; normalize='log1p_cp10k' needs finite"):
    tb.evaluate(pred, dirty, normalize="log1p_cp10k", pred_normalize="none")


def test_minus_inf_in_a_sparse_file_names_the_file_and_cell(pair, sparse_file, tmp_path):
  _, pred = pair

  def edit(f):
    data = f["X/data"][...]
    data[5] = -np.inf
    f["X/data"][...] = data

  path = _corrupt_copy(sparse_file, tmp_path / "inf.h5ad", edit)
  row = int(np.searchsorted(anndata.read_h5ad(sparse_file).X.indptr, 5, side="right") - 1)
  with pytest.raises(ValueError, match=rf"`X` of {path!r} holds 1 non-finite value.*first in "
                     rf"cell \(row\) {row}; normalize='log1p'"):
    tb.evaluate(pred, path, normalize="log1p", pred_normalize="none")


# ----------------------------------------------------------------------------- corrupt files


def _swap_indptr(f):
  ip = f["X/indptr"][...]
  ip[5], ip[6] = ip[6], ip[5]
  f["X/indptr"][...] = ip


@pytest.mark.parametrize("normalize", [None, "log1p"])
def test_decreasing_row_pointers_in_a_file_name_the_file_and_row(pair, sparse_file, tmp_path,
                                                                 normalize):
  _, pred = pair
  path = _corrupt_copy(sparse_file, tmp_path / "indptr.h5ad", _swap_indptr)
  with pytest.raises(ValueError, match=rf"^`X` of {path!r}: the sparse row pointers \(indptr\) "
                     r"decrease at cell \(row\) 5 .*the sparse matrix is corrupt"):
    tb.evaluate(pred, path, normalize=normalize, pred_normalize="none")


def test_row_pointers_that_miss_the_stored_values_name_the_file(pair, sparse_file, tmp_path):
  _, pred = pair

  def edit(f):
    ip = f["X/indptr"][...]
    ip[-1] -= 3
    f["X/indptr"][...] = ip

  path = _corrupt_copy(sparse_file, tmp_path / "short.h5ad", edit)
  nnz = anndata.read_h5ad(sparse_file).X.nnz
  with pytest.raises(ValueError, match=rf"^`X` of {path!r}: the sparse row pointers \(indptr\) "
                     rf"end at {nnz - 3}, but the matrix stores {nnz} values"):
    tb.evaluate(pred, path)


def test_decreasing_row_pointers_in_memory_name_the_object(pair, monkeypatch):
  # Also with the compiled loops off: scipy and numpy would not notice.
  real, pred = pair
  monkeypatch.setenv("TWINBENCH_NUMBA", "0")
  m = sp.csr_matrix(np.asarray(real.X))
  ip = m.indptr.copy()
  ip[5], ip[6] = ip[6], ip[5]
  bad = real.copy()
  bad.X = sp.csr_matrix((m.data, m.indices, ip), shape=m.shape)
  with pytest.raises(ValueError, match=r"^`adata_real.X`: the sparse row pointers \(indptr\) "
                     r"decrease at cell \(row\) 5"):
    tb.evaluate(pred, bad)


@pytest.mark.parametrize("code", [99, -7])
def test_categorical_codes_out_of_range_name_the_file_and_column(pair, sparse_file, tmp_path,
                                                                 code):
  _, pred = pair

  def edit(f):
    codes = f["obs/perturbation/codes"][...]
    codes[3] = code
    f["obs/perturbation/codes"][...] = codes

  path = _corrupt_copy(sparse_file, tmp_path / "codes.h5ad", edit)
  with pytest.raises(ValueError, match=rf"^could not read `obs\['perturbation'\]` of {path!r}: "
                     r"the column is corrupt .*codes must index its categories"):
    tb.evaluate(pred, path)
  with pytest.raises(ValueError, match=r"could not read `obs\['perturbation'\]`"):
    tb.pseudobulk(path)


# ----------------------------------------------------------------------------- swapped arguments


@pytest.fixture(scope="module")
def arrays():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 3)).astype(np.float32)
  y = rng.normal(size=(4, 3)).astype(np.float32)
  null = rng.normal(size=(5, 4, 3)).astype(np.float32)
  return x, y, null


def test_precomputed_null_with_predictions_and_null_swapped_says_so(arrays):
  x, y, null = arrays
  with pytest.raises(ValueError, match=r"`predictions` has shape \(5, 4, 3\), the shape of a "
                     r"stack of null replicates \(B, Q, G\); are `predictions` and "
                     r"`null_predictions` swapped\?"):
    tb.precomputed_null(null, x, y, progress=False)


def test_precomputed_null_with_references_and_null_swapped_says_so(arrays):
  x, y, null = arrays
  with pytest.raises(ValueError, match=r"`references` has shape \(5, 4, 3\).*are `references` "
                     r"and `null_predictions` swapped\?"):
    tb.precomputed_null(x, y, null, progress=False)


@pytest.mark.parametrize("fn", ["precomputed_null", "label_null"])
def test_references_and_relevance_swapped_say_so(arrays, fn):
  x, y, null = arrays
  rel = jnp.eye(4, dtype=bool)
  args = (x, null, rel, y) if fn == "precomputed_null" else (x, rel, y)
  with pytest.raises(ValueError, match=r"`references` is boolean and `relevance` is not: are "
                     r"they swapped\?"):
    getattr(tb, fn)(*args)


def test_the_right_order_still_runs(arrays):
  x, y, null = arrays
  res = tb.precomputed_null(x, null, y, np.eye(4, dtype=bool), progress=False)
  assert res.n_null == 5 and res.pvalues.shape == (4,)

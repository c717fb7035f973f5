"""Settings under which `tb.evaluate`'s numbers would mean nothing: refused, or noted.

Each test feeds one kind of bad setting and asserts the exact outcome: the
error type and the option, file or number its message names, or the note in
the report. The decisions (README "What is refused, what is noted"):

- refused: `k` >= the number of candidates, a single candidate, a single
  query under the label null, profiles large enough to overflow the
  distances, `genes` given as one string, target genes that leave a
  perturbation no gene to compare on;
- noted (`report.notes`, `report.json` "notes", printed by the CLI):
  `normalize=` applied to values that are not counts (a model may predict
  non-integer expected counts), baselines that cannot run for lack of queries.
"""

from __future__ import annotations

import json

import anndata
import numpy as np
import pytest

import twinbench_jax as tb
from adata_helpers import good_pred, make_pred, make_real


@pytest.fixture(scope="module")
def counts_pair():
  """Integer counts for 6 perturbations (+ control) and a close non-integer prediction."""
  real, means = make_real(n_perturbations=6, n_genes=10, counts=True)
  return real, good_pred(real, means), means


def _labels(real):
  return [c for c in real.obs["perturbation"].cat.categories if c != "control"]


# ----------------------------------------------------------------------------- k


@pytest.mark.parametrize("k", [6, 9])
def test_k_at_least_the_number_of_candidates_is_refused(counts_pair, k):
  real, pred, _ = counts_pair
  with pytest.raises(ValueError, match=rf"`k`={k} \(CLI: --k\) is at least the number of "
                     r"candidates \(6 real perturbations\).*choose k < 6"):
    tb.evaluate(pred, real, k=k, baselines=())


def test_k_one_below_the_number_of_candidates_is_scored(counts_pair):
  # The largest meaningful k: a truth ranked last is still wrong.
  real, pred, _ = counts_pair
  report = tb.evaluate(pred, real, k=5, baselines=())
  table = report.per_perturbation
  np.testing.assert_array_equal(table["correct"], table["rank"] <= 5)
  assert report.summary["k"] == 5


# ----------------------------------------------------------------------------- sizes


def test_a_single_candidate_is_refused(counts_pair):
  real, pred, _ = counts_pair
  one_real = real[real.obs["perturbation"].isin(["p0", "control"])].copy()
  one_pred = pred[pred.obs["perturbation"] == "p0"].copy()
  with pytest.raises(ValueError, match=r"only 1 real perturbation \(\['p0'\]\) to rank against"
                     r".*hit@1 = 1.*--perturbation-key"):
    tb.evaluate(one_pred, one_real)


def test_a_single_query_under_the_label_null_is_refused(counts_pair):
  real, pred, _ = counts_pair
  one_pred = pred[pred.obs["perturbation"] == "p2"].copy()
  with pytest.raises(ValueError, match=r"only 1 predicted perturbation \('p2'\).*0 replicates"
                     r".*\(`null=`, CLI: --null\)"):
    tb.evaluate(one_pred, real, unmatched="keep_real")


def test_a_single_query_with_a_sampled_null_skips_the_label_null_baselines(counts_pair):
  real, pred, _ = counts_pair
  one_pred = pred[pred.obs["perturbation"] == "p2"].copy()
  rng = np.random.default_rng(0)
  null = rng.normal(3.0, 2.0, size=(19, 1, real.n_vars))
  report = tb.evaluate(one_pred, real, unmatched="keep_real", null=null)
  assert report.n_queries == 1 and report.summary["n_candidates"] == 6
  assert set(report.baselines) == {"split_half"}  # over the 6 candidates: 5 null replicates
  assert ("the mean and control baselines are skipped: their label null needs at least 2 "
          "queries") in report.notes
  # The one p-value is the empirical one over the 19 replicates (SPEC §3).
  truth = np.asarray(tb.pseudobulk(real).to_frame().loc["p2"])
  own = -np.sum((np.asarray(one_pred.X[0], np.float64) - truth) ** 2)
  null_own = -np.sum((null[:, 0] - truth) ** 2, axis=1)
  assert report.per_perturbation["pvalue"][0] == pytest.approx(
      (1 + np.sum(null_own >= own)) / 20)


def test_split_half_with_one_perturbation_of_two_cells_is_skipped_with_a_note():
  # Only p0 has more than one real cell: a split-half over one query has no null.
  import pandas as pd

  rng = np.random.default_rng(3)
  labels = ["p0"] * 4 + ["p1", "p2", "p3"] + ["control"] * 3
  real = anndata.AnnData(rng.poisson(5.0, size=(len(labels), 6)).astype(np.float32),
                         obs=pd.DataFrame({"perturbation": pd.Categorical(labels)},
                                          index=[f"c{i}" for i in range(len(labels))]),
                         var=pd.DataFrame(index=[f"g{j}" for j in range(6)]))
  pred = make_pred(rng.normal(5.0, 1.0, size=(4, 6)), ["p0", "p1", "p2", "p3"], real.var_names)
  report = tb.evaluate(pred, real)
  assert "split_half" not in report.baselines
  assert ("split-half skipped: 1 perturbation(s) have 2 or more real cells, and it needs at "
          "least 2") in report.notes


# ----------------------------------------------------------------------------- normalisation


def test_normalize_on_non_integer_predictions_is_noted(counts_pair):
  real, pred, _ = counts_pair
  lognorm = pred.copy()
  lognorm.X = np.log1p(np.asarray(pred.X)).astype(np.float32)
  report = tb.evaluate(lognorm, real, normalize="log1p_cp10k", baselines=())
  largest = float(np.asarray(lognorm.X).max())
  assert report.notes[0] == (
      f"normalize='log1p_cp10k' expects raw counts, but `adata_pred.X` holds non-integer values "
      f"(largest {largest:.4g} in its first 6 cells, the range of log-normalised data); if it "
      "is already normalised, pass pred_normalize='none' (CLI: --pred-normalize none)")
  assert report.notes[0] in json.loads(report.to_json())["notes"]


def test_the_note_names_the_file_and_pred_normalize(counts_pair, tmp_path):
  real, pred, _ = counts_pair
  big = pred.copy()
  big.X = (np.asarray(pred.X) * 10.5).astype(np.float32)  # non-integer, above log range
  path = tmp_path / "pred.h5ad"
  big.write_h5ad(path)
  report = tb.evaluate(str(path), real, normalize="log1p", pred_normalize="log1p_cpm",
                       baselines=())
  (note,) = [n for n in report.notes if "expects raw counts" in n]
  assert note.startswith(f"pred_normalize='log1p_cpm' expects raw counts, but `X` of "
                         f"{str(path)!r} holds non-integer values (largest ")
  assert "the range of log-normalised data" not in note
  assert note.endswith("pass pred_normalize='none' (CLI: --pred-normalize none)")


def test_normalize_on_non_integer_real_data_is_noted(counts_pair):
  real, pred, _ = counts_pair
  scaled = real.copy()
  scaled.X = np.log1p(np.asarray(real.X))
  report = tb.evaluate(pred, scaled, normalize="log1p", pred_normalize="none", baselines=())
  (note,) = [n for n in report.notes if "expects raw counts" in n]
  assert note.startswith("normalize='log1p' expects raw counts, but `adata_real.X` holds "
                         "non-integer values")
  assert "in its first 1000 cells" not in note and f"first {real.n_obs} cells" in note
  assert note.endswith("pass normalize=None (CLI: --normalize none), and pred_normalize= for "
                       "the predictions")


def test_counts_and_no_normalisation_give_no_note(counts_pair):
  real, pred, _ = counts_pair
  quiet = tb.evaluate(pred, real, normalize="log1p_cp10k", pred_normalize="none", baselines=())
  unnormalised = tb.evaluate(pred, real, baselines=())
  for report in (quiet, unnormalised):
    assert not [n for n in report.notes if "expects raw counts" in n]


# ----------------------------------------------------------------------------- overflow


@pytest.mark.parametrize("metric", ["sqeuclidean", "l1", "cosine"])
def test_profiles_that_overflow_the_distances_are_refused_naming_the_file(counts_pair, tmp_path,
                                                                         metric):
  real, pred, _ = counts_pair
  huge = real.copy()
  huge.X = np.asarray(real.X) * np.float32(1e36 if metric == "l1" else 1e20)
  path = tmp_path / "real_huge.h5ad"
  huge.write_h5ad(path)
  with pytest.raises(ValueError, match=rf"^{str(path)!r} holds values up to .*: {metric} "
                     r"distances over 10 genes could overflow float32 \(every candidate would "
                     r"tie\); rescale the data first .*--normalize log1p_cp10k"):
    tb.evaluate(pred, str(path), metric=metric, baselines=())


def test_overflowing_predictions_are_refused_naming_adata_pred(counts_pair):
  real, pred, _ = counts_pair
  huge = pred.copy()
  huge.X = np.asarray(pred.X) * np.float32(1e19)
  with pytest.raises(ValueError, match=r"^`adata_pred` holds values up to .*overflow float32"):
    tb.evaluate(huge, real, baselines=())


def test_large_values_below_the_bound_rank_like_the_unscaled_ones(counts_pair):
  # 2^40 scales every distance exactly: the same ranks and p-values, no error.
  real, pred, _ = counts_pair
  scale = np.float32(2.0**40)
  big_real, big_pred = real.copy(), pred.copy()
  big_real.X, big_pred.X = np.asarray(real.X) * scale, np.asarray(pred.X) * scale
  a = tb.evaluate(pred, real, baselines=())
  b = tb.evaluate(big_pred, big_real, baselines=())
  np.testing.assert_array_equal(a.per_perturbation["rank"], b.per_perturbation["rank"])
  np.testing.assert_array_equal(a.per_perturbation["pvalue"], b.per_perturbation["pvalue"])


# ----------------------------------------------------------------------------- genes


def test_genes_as_one_string_is_refused(counts_pair):
  real, pred, _ = counts_pair
  with pytest.raises(TypeError, match=r"`genes` must be a list of gene names, got the string "
                     r"'g1'; pass \['g1'\] for one gene"):
    tb.evaluate(pred, real, genes="g1")


def test_no_shared_gene_is_refused(counts_pair):
  real, pred, _ = counts_pair
  other = pred.copy()
  other.var_names = [f"x{j}" for j in range(pred.n_vars)]
  with pytest.raises(ValueError, match=r"no shared genes between `adata_pred` \(10 genes"):
    tb.evaluate(other, real)


def test_an_empty_gene_list_is_refused(counts_pair):
  real, pred, _ = counts_pair
  with pytest.raises(ValueError, match=r"`genes` is empty"):
    tb.evaluate(pred, real, genes=[])


def test_target_genes_that_leave_no_gene_are_refused(counts_pair):
  real, pred, _ = counts_pair
  with pytest.raises(ValueError, match=r"target_genes leaves no gene to compare \['p3'\] on: "
                     r"their target gene\(s\) are all 2 evaluated gene\(s\)"):
    tb.evaluate(pred, real, genes=["g0", "g1"], target_genes={"p3": ["g1", "g0"]})
  # One gene left is enough to compare on.
  report = tb.evaluate(pred, real, genes=["g0", "g1"], target_genes={"p3": "g1"},
                       baselines=())
  assert report.per_perturbation.set_index("perturbation").loc["p3", "excluded_genes"] == "g1"


# ----------------------------------------------------------------------------- argument values


@pytest.mark.parametrize("seed", [-1, 1.5, 2**64, True])
def test_a_seed_numpy_or_jax_cannot_take_is_refused_naming_seed(counts_pair, seed):
  # -1 used to surface as numpy's "expected non-negative integer"; 1.5 was truncated to 1.
  real, pred, _ = counts_pair
  with pytest.raises(ValueError, match=rf"`seed` must be an integer in \[0, 2\*\*63\), got "
                     rf"{seed!r}"):
    tb.evaluate(pred, real, seed=seed)
  with pytest.raises(ValueError, match=r"`seed` must be an integer"):
    tb.split_half(real, seed=seed)


@pytest.mark.parametrize("kwargs, message", [
    ({"k": True}, r"`k` must be an integer >= 1, got True"),
    ({"n_top_genes": 2.5}, r"`n_top_genes` must be an integer >= 1, got 2.5"),
    ({"n_top_genes": True}, r"`n_top_genes` must be an integer >= 1, got True"),
])
def test_booleans_and_fractions_for_counts_are_refused(counts_pair, kwargs, message):
  real, pred, _ = counts_pair
  with pytest.raises(ValueError, match=message):
    tb.evaluate(pred, real, **kwargs)

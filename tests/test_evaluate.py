"""`tb.evaluate` end to end: real data, baselines, nulls, alignment, report (SPEC §4, §6–8)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import twinbench_jax as tb
from adata_helpers import good_pred, make_pred, make_real, pseudobulk_numpy

KNOCKOUTS = 25  # papalexi2021: 25 targeted genes + non-targeting


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def papalexi(papalexi_path):
  """The real file in memory, and a prediction: pseudobulks of half the cells (normalised)."""
  import anndata

  real = anndata.read_h5ad(papalexi_path)
  half_a, _ = tb.split_half(real, normalize="log1p_cp10k", seed=7)
  pred = make_pred(half_a.means, half_a.labels, half_a.genes)
  return real, pred


@pytest.fixture(scope="module")
def papalexi_report(papalexi):
  real, pred = papalexi
  return tb.evaluate(pred, real, normalize="log1p_cp10k", pred_normalize="none")


def test_papalexi_split_half_beats_negative_baselines(papalexi_report):
  b = papalexi_report.baselines
  assert set(b) == {"mean", "control", "split_half"}
  assert b["mean"] == 0.0  # exactly: the same prediction for every perturbation
  assert b["control"] == 0.0
  assert b["split_half"] > max(b["mean"], b["control"]) + 0.1
  assert papalexi_report.auc_f1 > b["split_half"]  # overlaps the truth's cells: optimistic


def test_papalexi_one_row_per_perturbation(papalexi_report):
  table = papalexi_report.per_perturbation
  assert len(table) == KNOCKOUTS
  assert "non-targeting" not in set(table["perturbation"])  # the control is never ranked
  assert "non-targeting" not in set(papalexi_report.popularity["perturbation"])
  s = papalexi_report.summary
  assert (s["n_queries"], s["n_candidates"], s["n_genes"], s["n_null"]) == (25, 25, 299, 24)
  assert s["settings"]["control"] == "non-targeting"  # read from uns['control_label']
  assert set(table.columns) >= {"perturbation", "rank", "pvalue", "called", "correct",
                                "own_score"}
  assert len(papalexi_report.baseline_tables["split_half"]) == KNOCKOUTS


def _comparable(report):
  d = report.to_dict()
  d["settings"] = {k: v for k, v in d["settings"].items() if k not in ("pred", "real")}
  return d


def test_papalexi_sparse_and_dense_give_identical_reports(papalexi, papalexi_report):
  real, pred = papalexi
  dense = real.copy()
  dense.X = real.X.toarray()
  assert sp.issparse(real.X) and isinstance(dense.X, np.ndarray)
  report = tb.evaluate(pred, dense, normalize="log1p_cp10k", pred_normalize="none")
  assert report.to_dict() == papalexi_report.to_dict()


def test_papalexi_backed_and_path_give_the_in_memory_report(papalexi, papalexi_report,
                                                           papalexi_path):
  import anndata

  _, pred = papalexi
  backed = anndata.read_h5ad(papalexi_path, backed="r")
  try:
    r_backed = tb.evaluate(pred, backed, normalize="log1p_cp10k", pred_normalize="none")
  finally:
    backed.file.close()
  r_path = tb.evaluate(pred, papalexi_path, normalize="log1p_cp10k", pred_normalize="none")
  assert _comparable(r_backed) == _comparable(papalexi_report)
  assert _comparable(r_path) == _comparable(papalexi_report)
  assert r_path.summary["settings"]["real"] == str(papalexi_path)


# ----------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def pair():
  real, means = make_real()
  return real, means, good_pred(real, means)


@pytest.mark.parametrize("metric", ["sqeuclidean", "l1", "cosine", "pearson"])
def test_input_agnostic_baselines_score_exactly_zero(pair, metric):
  real, _, pred = pair
  report = tb.evaluate(pred, real, metric=metric)
  assert report.baselines["mean"] == 0.0
  assert report.baselines["control"] == 0.0
  for name in ("mean", "control"):
    assert (report.baseline_tables[name]["pvalue"] == 1.0).all()
  assert report.baselines["split_half"] > 0.5
  assert report.auc_f1 > 0.5


def test_matches_the_array_pipeline(pair):
  real, _, pred = pair
  report = tb.evaluate(pred, real)
  labels = list(report.per_perturbation["perturbation"])
  truth = pseudobulk_numpy(real.X, real.obs["perturbation"], labels)
  want = tb.evaluate_arrays(np.asarray(pred.X, np.float64), truth)
  table = report.per_perturbation
  np.testing.assert_array_equal(table["rank"], np.asarray(want.ranks))
  np.testing.assert_allclose(table["pvalue"], np.asarray(want.pvalues), rtol=1e-6)
  assert report.auc_f1 == pytest.approx(float(want.auc_f1), abs=1e-6)
  assert report.hit_at_1 == pytest.approx(float(want.hit_at_k))
  assert report.mrr == pytest.approx(float(want.mrr))
  np.testing.assert_allclose(table["pvalue_bh"],
                             np.asarray(tb.benjamini_hochberg(want.pvalues)), rtol=1e-6)


def test_queries_follow_the_prediction_order_and_cell_counts(pair):
  real, means, _ = pair
  labels = [f"p{i}" for i in (3, 0, 7, 1, 2, 6, 5, 4)]
  pred = make_pred(means[[int(l[1:]) for l in labels]], labels, real.var_names)
  report = tb.evaluate(pred, real)
  assert list(report.per_perturbation["perturbation"]) == labels
  assert (report.per_perturbation["n_cells_pred"] == 1).all()
  assert (report.per_perturbation["n_cells_real"] == 12).all()
  assert report.hit_at_1 == 1.0


def test_real_control_delta_cannot_be_gamed_by_the_prediction_control(pair):
  real, means, pred = pair
  # A prediction file that adds its own (shifted) control cells.
  shifted = make_pred(np.vstack([pred.X, means[-1] + 50.0]), list(pred.obs["perturbation"])
                      + ["control"], real.var_names)
  plain = tb.evaluate(pred, real, metric="cosine", delta="control")
  with_ctrl = tb.evaluate(shifted, real, metric="cosine", delta="control")
  assert plain.to_dict()["per_perturbation"] == with_ctrl.to_dict()["per_perturbation"]
  own = tb.evaluate(shifted, real, metric="cosine", delta="pred_control")
  assert own.to_dict()["per_perturbation"] != plain.to_dict()["per_perturbation"]
  # For Euclidean distances a shared reference changes nothing (up to rounding).
  a = tb.evaluate(pred, real, delta="control").per_perturbation
  b = tb.evaluate(pred, real).per_perturbation
  np.testing.assert_array_equal(a["rank"], b["rank"])
  np.testing.assert_array_equal(a["pvalue"], b["pvalue"])
  np.testing.assert_allclose(a["own_score"], b["own_score"], rtol=1e-5)
  assert tb.evaluate(pred, real, metric="cosine", delta="mean").summary["settings"]["delta"] == \
      "mean"
  with pytest.raises(ValueError, match="delta='pred_control' needs control cells"):
    tb.evaluate(pred, real, delta="pred_control")


def test_unmatched_policies_and_include_control(pair):
  real, means, pred = pair
  sub = pred[:6].copy()
  with pytest.raises(ValueError, match=r"2 real but not predicted: \['p6', 'p7'\]"):
    tb.evaluate(sub, real)
  inter = tb.evaluate(sub, real, unmatched="intersect")
  keep = tb.evaluate(sub, real, unmatched="keep_real")
  assert (inter.summary["n_queries"], inter.summary["n_candidates"]) == (6, 6)
  assert (keep.summary["n_queries"], keep.summary["n_candidates"]) == (6, 8)
  assert any("without a prediction kept as candidates" in n for n in keep.notes)
  with_ctrl = make_pred(np.vstack([pred.X, means[-1]]), list(pred.obs["perturbation"])
                        + ["control"], real.var_names)
  rep = tb.evaluate(with_ctrl, real, include_control=True)
  assert "control" in set(rep.per_perturbation["perturbation"])
  assert rep.summary["n_candidates"] == 9


def test_gene_subsets(pair):
  real, _, pred = pair
  rep = tb.evaluate(pred, real, genes=["g3", "g1", "g2", "g9", "g7"])
  assert rep.genes == ("g3", "g1", "g2", "g9", "g7")
  top = tb.evaluate(pred, real, n_top_genes=5)
  assert len(top.genes) == 5 and top.summary["n_genes"] == 5
  variance = tb.pseudobulk(real).to_frame().drop("control").var(axis=0)
  assert set(top.genes) == set(variance.nlargest(5).index)
  with pytest.raises(ValueError, match=r"not in both files: \['nope'\]"):
    tb.evaluate(pred, real, genes=["g1", "nope"])
  # Fewer shared genes than the real file: a note, or an error in strict mode.
  fewer = pred[:, 20:].copy()
  assert any("5 shared genes" in n for n in tb.evaluate(fewer, real).notes)
  with pytest.raises(ValueError, match=r"20 gene\(s\) only in `adata_real`"):
    tb.evaluate(fewer, real, strict_genes=True)


def test_split_half_leaves_out_single_cell_perturbations(pair):
  real, means, pred = pair
  keep = np.ones(real.n_obs, bool)
  keep[np.flatnonzero(real.obs["perturbation"] == "p2")[1:]] = False  # p2 keeps one cell
  rep = tb.evaluate(pred, real[keep].copy())
  assert any("split-half leaves out 1 perturbation(s)" in n and "p2" in n for n in rep.notes)
  table = rep.baseline_tables["split_half"]
  assert len(table) == 7 and "p2" not in set(table["perturbation"])
  # The halves are seeded: the same seed gives the same split-half score.
  assert tb.evaluate(pred, real, seed=3).baselines == tb.evaluate(pred, real, seed=3).baselines


def test_precomputed_null_arrays_and_files(pair, tmp_path):
  real, _, pred = pair
  rng = np.random.default_rng(0)
  x = np.asarray(pred.X, np.float64)
  shuffled = np.stack([rng.permuted(x, axis=1) for _ in range(19)])
  rep = tb.evaluate(pred, real, null=shuffled)
  assert rep.summary["null"] == "precomputed" and rep.summary["n_null"] == 19
  assert rep.per_perturbation["pvalue"].min() == pytest.approx(1 / 20)
  # Null replicates that equal the predictions: every p = 1, AUC-F1 = 0.
  same = tb.evaluate(pred, real, null=np.stack([x] * 4))
  assert (same.per_perturbation["pvalue"] == 1.0).all() and same.auc_f1 == 0.0
  # The same replicates as AnnData files, one per file or several in one file.
  paths = []
  for b in range(3):
    a = make_pred(shuffled[b], pred.obs["perturbation"], pred.var_names)
    paths.append(tmp_path / f"null{b}.h5ad")
    a.write_h5ad(paths[-1])
  import anndata

  stacked = anndata.concat([make_pred(shuffled[b], pred.obs["perturbation"], pred.var_names)
                            for b in range(3)], index_unique="-")
  stacked.obs["null_replicate"] = np.repeat(["r0", "r1", "r2"], 8)
  stacked.write_h5ad(tmp_path / "stacked.h5ad")
  want = tb.evaluate(pred, real, null=shuffled, n_null=3).per_perturbation["pvalue"]
  for null in (paths, [tmp_path / "stacked.h5ad"]):
    got = tb.evaluate(pred, real, null=null).per_perturbation["pvalue"]
    np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="holds only 3 replicate"):
    tb.evaluate(pred, real, null=paths, n_null=5)
  with pytest.raises(ValueError, match=r"shape \(B, Q, G\) = \(B, 8, 25\)"):
    tb.evaluate(pred, real, null=shuffled[:, :, :5])


def test_model_null_through_the_null_engine(pair):
  real, means, _ = pair
  labels = [f"p{i}" for i in range(8)]
  profiles = jnp.asarray(means[:8], jnp.float32)
  pred = make_pred(means[:8], labels, real.var_names)

  def predict(onehot):  # a model that reads its input: row i -> profile i
    return onehot @ profiles

  rep = tb.evaluate(pred, real, null="model", predict_fn=predict, inputs=jnp.eye(8),
                    randomize="permute_rows", n_null=49, key=jax.random.key(0))
  assert rep.summary["null"] == "model" and rep.summary["n_null"] == 49
  assert rep.per_perturbation["pvalue"].max() < 0.5
  assert not rep.notes or not any("does not reproduce" in n for n in rep.notes)

  def ignore(onehot):  # ignores its input: every replicate ties, p = 1
    return jnp.zeros_like(onehot) @ profiles + profiles

  flat = tb.evaluate(pred, real, null="model", predict_fn=ignore, inputs=jnp.eye(8),
                     randomize="permute_rows", n_null=9, key=jax.random.key(0))
  assert flat.auc_f1 == 0.0
  with pytest.raises(ValueError, match="needs `predict_fn`"):
    tb.evaluate(pred, real, null="model")


def test_report_json_save_and_plots(pair, tmp_path):
  real, _, pred = pair
  rep = tb.evaluate(pred, real)
  d = json.loads(rep.to_json())
  for field in ("auc_f1", "hit_at_1", "mrr", "n_queries", "n_null", "null", "baselines",
                "per_perturbation"):
    assert field in d, field
  assert d["twinbench_version"] == tb.__version__
  assert d["metric_version"] == tb.METRIC_VERSION
  assert set(d["per_perturbation"][0]) >= {"perturbation", "rank", "pvalue"}
  assert d["baselines"] == dict(rep.baselines)
  assert d["curves"]["model"]["f1"] == list(rep.curves["model"].f1)
  paths = rep.save(tmp_path / "out")
  names = sorted(p.split("/")[-1] for p in paths)
  assert names == ["f1_alpha.png", "per_perturbation.csv", "popularity.png",
                   "pvalue_histogram.png", "rank_histogram.png", "report.json"]
  for p in paths:
    assert (tmp_path / "out" / p.split("/")[-1]).stat().st_size > 0
  assert rep.summary_table().loc["model", "auc_f1"] == rep.auc_f1
  assert repr(rep).startswith(f"Report(auc_f1={rep.auc_f1:.3f}")
  with pytest.raises(TypeError):
    rep.summary["auc_f1"] = 1.0  # read-only
  with pytest.raises(AttributeError):
    rep.genes = ()  # frozen


@pytest.mark.parametrize("n", [12, 500])
def test_popularity_plot_draws_every_count_most_popular_first(n):
  import types

  from matplotlib.figure import Figure

  from twinbench_jax._src.evaluate import plots

  counts = np.random.default_rng(n).integers(0, 9, n)
  report = types.SimpleNamespace(
      popularity=pd.DataFrame({"perturbation": [f"p{i}" for i in range(n)],
                               "top1_count": counts}),
      summary={"n_queries": int(counts.sum()), "popularity_gini": 0.5})
  ax = plots.plot_popularity(report, ax=Figure().add_subplot())
  want = np.sort(counts)[::-1]
  if n <= 60:  # labelled bars
    np.testing.assert_array_equal([b.get_height() for b in ax.patches], want)
    first = ax.get_xticklabels()[0].get_text()
    assert counts[int(first[1:])] == counts.max()
  else:  # one filled outline over the same heights
    assert len(ax.patches) == 1
    np.testing.assert_array_equal(ax.patches[0].get_data().values, want)


def test_bad_input_messages(pair):
  real, _, pred = pair
  with pytest.raises(ValueError, match=r"'guide' in `adata_real.obs`; available: "
                     r"\['perturbation'\]"):
    tb.evaluate(pred, real, perturbation_key="guide")
  with pytest.raises(ValueError, match=r"control label 'NT' not found in "
                     r"`adata_real.obs\['perturbation'\]`.*--no-control"):
    tb.evaluate(pred, real, control="NT")
  nc = tb.evaluate(pred, real[real.obs["perturbation"] != "control"].copy(), control=False)
  assert "control" not in nc.baselines and any("no control" in n for n in nc.notes)
  other = pred.copy()
  other.var_names = [f"ENSG{i}" for i in range(other.n_vars)]
  with pytest.raises(ValueError, match="no shared genes between `adata_pred`"):
    tb.evaluate(other, real)
  dup = real.copy()
  dup.var_names = ["g1"] + list(real.var_names[1:])
  with pytest.raises(ValueError, match=r"`adata_real.var_names` has 1 duplicated.*\['g1'\]"):
    tb.evaluate(pred, dup)
  bad = pred.copy()
  bad.X[2, 3] = np.inf
  with pytest.raises(ValueError, match=r"`adata_pred.X` holds 1 non-finite"):
    tb.evaluate(bad, real)
  for kwargs, msg in [({"n_null": 0}, "n_null"), ({"metric": "cos"}, "metric"),
                      ({"normalize": "cpm"}, "normalize"), ({"delta": "ctrl"}, "delta"),
                      ({"baselines": ["median"]}, "baseline"), ({"k": 0}, "k"),
                      ({"null": "shuffle"}, "null"), ({"unmatched": "drop"}, "unmatched")]:
    with pytest.raises(ValueError, match=msg):
      tb.evaluate(pred, real, **kwargs)


# ----------------------------------------------------------------------------- settings object


def _settings(**options):
  """`Settings` of `tb.evaluate`'s options: its defaults, updated by `options`."""
  from twinbench_jax._src.evaluate import evaluate as evaluate_lib
  from twinbench_jax._src.evaluate import settings as settings_lib

  return settings_lib.build(evaluate_lib.default_options() | options)


def test_default_options_are_those_of_evaluate_and_of_the_settings_groups():
  import inspect

  from twinbench_jax._src.evaluate import evaluate as evaluate_lib
  from twinbench_jax._src.evaluate import settings as settings_lib

  defaults = evaluate_lib.default_options()
  params = list(inspect.signature(tb.evaluate).parameters.values())
  assert list(defaults) == [p.name for p in params[2:]]
  assert defaults["metric"] == "sqeuclidean" and defaults["baselines"] == tb.BASELINES
  # The groups' own defaults are the checked defaults of `tb.evaluate`.
  assert settings_lib.build(defaults) == settings_lib.Settings()
  with pytest.raises(KeyError):  # every option is named: none is silently defaulted
    settings_lib.build({k: v for k, v in defaults.items() if k != "ties"})


def test_settings_are_frozen_and_resolve_the_layers_and_normalisations():
  import dataclasses

  s = _settings(layer="counts", normalize="log1p", delta=True, k=np.int64(2),
                genes=np.array(["g1", "g2"]), baselines="mean", name=3)
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.scoring.k = 3
  assert (s.expression.pred_layer, s.expression.normalize, s.expression.pred_normalize,
          s.expression.pred_normalize_option, s.expression.delta) == (
              "counts", "log1p", "log1p", "normalize", "control")
  assert type(s.scoring.k) is int and s.scoring.k == 2 and s.scoring.baselines == ("mean",)
  assert s.genes.genes == ("g1", "g2") and s.genes.describe() == "given" and s.name == "3"
  other = _settings(layer="counts", pred_layer="X", pred_normalize="none")
  assert (other.expression.pred_layer, other.expression.pred_normalize,
          other.expression.pred_normalize_option) == (None, None, "pred_normalize")
  assert _settings(n_top_genes=5).genes.describe() == "top 5 variable"
  null = np.zeros((2, 3, 4))  # null predictions: kept as given, left out of comparisons
  assert _settings(null=null).null.kind == "precomputed"
  assert _settings(null=null) == _settings(null=null + 1)
  # Checked in the order of `tb.evaluate`'s arguments: the first bad one is named.
  with pytest.raises(ValueError, match="metric"):
    _settings(metric="cos", k=0, delta="ctrl")
  with pytest.raises(ValueError, match="`k`"):
    _settings(k=0, delta="ctrl")


def test_report_settings_come_from_the_settings_object(pair):
  real, _, pred = pair
  options = dict(metric="l1", delta="mean", unmatched="intersect", seed=5, name="m",
                 target_genes={"p1": "g3"}, direction="real_to_pred", n_top_genes=20)
  report = tb.evaluate(pred, real, **options)
  s = report.summary["settings"]
  assert list(s) == ["perturbation_key", "pred_perturbation_key", "control", "include_control",
                     "layer", "pred_layer", "normalize", "pred_normalize", "genes",
                     "target_genes", "delta", "unmatched", "metric", "ties", "seed", "pred",
                     "real", "name", "direction"]
  expected = _settings(**options).report_settings(
      perturbation_key="perturbation", pred_perturbation_key="perturbation", control="control",
      pred="adata_pred", real="adata_real")
  assert dict(s) == expected
  assert (s["genes"], s["target_genes"], s["delta"], s["seed"], s["direction"]) == (
      "top 20 variable", "mapping of 1 perturbation(s)", "mean", 5, "real_to_pred")


def test_baselines_come_from_the_registry():
  from twinbench_jax._src.data import baselines as baselines_lib

  reg = baselines_lib.REGISTRY
  assert tb.BASELINES == tuple(reg) == ("mean", "control", "split_half")
  assert all(spec.name == name for name, spec in reg.items())
  assert [spec.input_agnostic for spec in reg.values()] == [True, True, False]
  assert [spec.needs_control for spec in reg.values()] == [False, True, False]
  cands, n = np.array([[1.0, 2.0], [3.0, 6.0]]), np.array([4, 5])
  profile, cells = reg["mean"].predict(cands, n, np.array([9.0, 9.0]), 7)
  np.testing.assert_array_equal(profile, [2.0, 4.0])
  assert cells == 9
  profile, cells = reg["control"].predict(cands, n, np.array([9.0, 8.0]), 7)
  np.testing.assert_array_equal(profile, [9.0, 8.0])
  assert cells == 7

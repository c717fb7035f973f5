"""`tb.evaluate`'s other views: the reverse rank direction, the candidate-level AUC-F1 and the
null kind of each baseline (SPEC §2, §4, §6), checked against plain numpy."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinbench_jax as tb
from adata_helpers import make_pred, make_real, pseudobulk_numpy
from twinbench_jax.cli import main

N_PERT, N_GENES = 7, 12


@pytest.fixture(scope="module")
def data():
  """Real cells, noisy predictions in a shuffled order, and both sides' profiles (numpy)."""
  real, means = make_real(n_perturbations=N_PERT, n_genes=N_GENES, n_cells=6, seed=3)
  rng = np.random.default_rng(5)
  candidates = [f"p{i}" for i in range(N_PERT)]  # the report sorts the real profiles
  queries = [candidates[i] for i in rng.permutation(N_PERT)]
  order = [int(q[1:]) for q in queries]
  x = means[order] + 1.5 * rng.normal(size=(N_PERT, N_GENES))
  pred = make_pred(x, queries, real.var_names)
  y = pseudobulk_numpy(real.X, real.obs["perturbation"].astype(str), candidates)
  truth = np.array([candidates.index(q) for q in queries])
  return real, pred, x, y, queries, candidates, truth


def _similarity(x, y, metric, keep=None):
  """One similarity, a plain loop over genes: the reference."""
  if keep is not None:
    x, y = x[keep], y[keep]
  if metric == "sqeuclidean":
    return -float(np.sum((x - y) ** 2))
  if metric == "l1":
    return -float(np.sum(np.abs(x - y)))
  xc, yc = x - x.mean(), y - y.mean()  # pearson
  return float(xc @ yc / np.sqrt((xc @ xc) * (yc @ yc)))


def _reverse_ranks(x, y, truth, metric, keep=None):
  """Rank of each real profile's own prediction among all predictions (ties count half)."""
  q = len(truth)
  ranks, top1 = np.zeros(q), np.zeros(q, int)
  for j in range(q):
    k = None if keep is None else keep[j]
    sims = np.array([_similarity(x[i], y[truth[j]], metric, k) for i in range(q)])
    others = np.delete(sims, j)
    ranks[j] = 1 + np.sum(others > sims[j]) + 0.5 * np.sum(others == sims[j])
    top1[j] = int(np.argmax(sims))
  return ranks, top1


@pytest.mark.parametrize("metric", ["sqeuclidean", "l1", "pearson"])
def test_reverse_ranks_against_a_loop(data, metric):
  real, pred, x, y, queries, candidates, truth = data
  fwd = tb.evaluate(pred, real, metric=metric, baselines=())
  rev = tb.evaluate(pred, real, metric=metric, baselines=(), direction="real_to_pred")
  want, top1 = _reverse_ranks(x, y, truth, metric)
  table = rev.per_perturbation
  assert list(table["perturbation"]) == queries
  np.testing.assert_allclose(table["rank"], want)
  assert list(table["top1"]) == [queries[i] for i in top1]  # top-1 names a prediction
  assert not np.array_equal(table["rank"], fwd.per_perturbation["rank"])  # a real change
  # The label null is one pair's own score against the others': the same in both directions.
  np.testing.assert_array_equal(table["pvalue"], fwd.per_perturbation["pvalue"])
  ref = tb.auc_f1(jnp.asarray(table["pvalue"]), jnp.asarray(want) <= 1)
  np.testing.assert_allclose(rev.auc_f1, float(ref.auc), rtol=1e-6)
  s = rev.summary
  assert s["settings"]["direction"] == "real_to_pred"
  assert fwd.summary["settings"]["direction"] == "pred_to_real"
  assert set(table["direction"]) == {"real_to_pred"}
  assert set(fwd.per_perturbation["direction"]) == {"pred_to_real"}
  assert s["n_candidates"] == N_PERT and s["hit_at_1"] == np.mean(want <= 1)
  assert list(rev.popularity["perturbation"]) == queries
  assert rev.popularity["top1_count"].sum() == N_PERT


def test_reverse_ranks_exclude_each_real_perturbations_targets(data):
  real, pred, x, y, queries, candidates, truth = data
  targets = {c: f"g{i}" for i, c in enumerate(candidates)}
  rev = tb.evaluate(pred, real, target_genes=targets, baselines=(), direction="real_to_pred")
  keep = np.ones((N_PERT, N_GENES), bool)
  keep[np.arange(N_PERT), truth] = False  # real profile j leaves out gene g{truth_j}
  want, _ = _reverse_ranks(x, y, truth, "sqeuclidean", keep)
  np.testing.assert_allclose(rev.per_perturbation["rank"], want)


def test_reverse_direction_keep_real_ranks_only_predicted_perturbations(data):
  real, pred, x, y, queries, candidates, truth = data
  rev = tb.evaluate(pred[:5], real, unmatched="keep_real", baselines=("mean",),
                    direction="real_to_pred")
  want, _ = _reverse_ranks(x[:5], y, truth[:5], "sqeuclidean")
  np.testing.assert_allclose(rev.per_perturbation["rank"], want)
  assert rev.summary["n_candidates"] == 5
  assert any("without a prediction" in n for n in rev.notes)
  mean = rev.baseline_tables["mean"]  # one profile for every query: all predictions tie
  np.testing.assert_array_equal(mean["rank"], 3.0)
  assert rev.baselines["mean"] == 0.0


def _candidate_pvalues_sampled(x, null, y, truth):
  """`(1 + #{b : s^b[q, c] >= s[q, c]}) / (B + 1)`, sqeuclidean, from the profiles."""
  s = -((x[:, None, :] - y[None]) ** 2).sum(-1)
  sb = -((null[:, :, None, :] - y[None, None]) ** 2).sum(-1)
  return (1 + (sb >= s[None]).sum(0)) / (null.shape[0] + 1)


@pytest.mark.parametrize("direction", ["pred_to_real", "real_to_pred"])
def test_candidate_level_precomputed_null_against_candidate_auc_f1(data, direction):
  real, pred, x, y, queries, candidates, truth = data
  rng = np.random.default_rng(11)
  null = x[None] + 2.0 * rng.normal(size=(15, N_PERT, N_GENES))
  rep = tb.evaluate(pred, real, null=null.astype(np.float32), candidate_level=True,
                    direction=direction, baselines=())
  p = _candidate_pvalues_sampled(x, null.astype(np.float32).astype(np.float64), y, truth)
  rel = np.arange(N_PERT)[None, :] == truth[:, None]
  if direction == "real_to_pred":
    p, rel = p[:, truth].T, np.eye(N_PERT, dtype=bool)
  want = tb.candidate_auc_f1(jnp.asarray(p, jnp.float32), jnp.asarray(rel))
  np.testing.assert_allclose(rep.summary["candidate_auc_f1"], float(want.auc), rtol=1e-6)
  np.testing.assert_allclose(rep.candidate_curve.f1, np.asarray(want.f1), rtol=1e-6)
  assert 0.0 < rep.summary["candidate_auc_f1"] < 1.0
  saved = json.loads(rep.to_json())
  assert saved["candidate_auc_f1"] == rep.summary["candidate_auc_f1"]
  assert len(saved["candidate_curve"]["f1"]) == len(rep.candidate_curve.f1)


def test_candidate_level_label_null_against_candidate_auc_f1(data):
  real, pred, x, y, queries, candidates, truth = data
  rep = tb.evaluate(pred, real, candidate_level=True, baselines=())
  s = -((x[:, None, :] - y[None]) ** 2).sum(-1)
  p = (s[None, :, :] >= s[:, None, :]).sum(1) / N_PERT  # share of predictions q' at least as close
  rel = np.arange(N_PERT)[None, :] == truth[:, None]
  want = tb.candidate_auc_f1(jnp.asarray(p, jnp.float32), jnp.asarray(rel))
  np.testing.assert_allclose(rep.summary["candidate_auc_f1"], float(want.auc), rtol=1e-6)
  assert "candidate_auc_f1" not in tb.evaluate(pred, real, baselines=()).summary
  with pytest.raises(ValueError, match="target_genes"):
    tb.evaluate(pred, real, candidate_level=True, target_genes={"p0": "g0"})
  with pytest.raises(ValueError, match="candidate_level"):
    tb.evaluate(pred, real, candidate_level="yes")
  with pytest.raises(ValueError, match="direction"):
    tb.evaluate(pred, real, direction="both")


def test_candidate_level_model_null_input_ignoring_model_scores_zero(data):
  real, pred, x, y, queries, candidates, truth = data
  profiles = jnp.asarray(x, jnp.float32)

  def reads(onehot):
    return onehot @ profiles

  def ignores(onehot):
    return jnp.zeros_like(onehot) @ profiles + profiles

  kw = dict(null="model", inputs=jnp.eye(N_PERT), randomize="permute_rows", n_null=19,
            key=jax.random.key(0), candidate_level=True, baselines=())
  flat = tb.evaluate(pred, real, predict_fn=ignores, **kw)
  assert flat.summary["candidate_auc_f1"] == 0.0  # every entry ties: p = 1
  good = tb.evaluate(pred, real, predict_fn=reads, **kw)
  assert good.summary["candidate_auc_f1"] > 0.2


def test_baselines_state_their_null(data):
  real, pred, x, y, queries, candidates, truth = data
  label = tb.evaluate(pred, real)
  assert {d["null"] for d in label.summary["baseline_details"].values()} == {"label"}
  null = (x[None] + np.random.default_rng(2).normal(size=(6, N_PERT, N_GENES))).astype(np.float32)
  rep = tb.evaluate(pred, real, null=null)
  details = rep.summary["baseline_details"]
  for name in ("mean", "control"):  # input-agnostic: every replicate ties, p = 1
    assert (details[name]["null"], details[name]["n_null"]) == ("precomputed", 6)
    np.testing.assert_array_equal(rep.baseline_tables[name]["pvalue"], 1.0)
    assert rep.baselines[name] == 0.0
  assert details["split_half"]["null"] == "label"
  assert details["split_half"]["n_null"] == label.summary["baseline_details"]["split_half"][
      "n_null"]
  assert rep.baselines["split_half"] == label.baselines["split_half"]
  assert any("split-half baseline is scored with the label null" in n for n in rep.notes)
  assert any("p-values are 1" in n for n in rep.notes)


def test_cli_direction_and_candidate_level(data, tmp_path):
  real, pred, *_ = data
  real.write_h5ad(tmp_path / "real.h5ad")
  pred.write_h5ad(tmp_path / "pred.h5ad")
  out = tmp_path / "out"
  assert main(["evaluate", "--pred", str(tmp_path / "pred.h5ad"), "--real",
               str(tmp_path / "real.h5ad"), "--out", str(out), "--direction", "real_to_pred",
               "--candidate-level", "--quiet"]) == 0
  saved = json.loads((out / "report.json").read_text())
  want = tb.evaluate(pred, real, direction="real_to_pred", candidate_level=True)
  assert saved["settings"]["direction"] == "real_to_pred"
  assert saved["candidate_auc_f1"] == want.summary["candidate_auc_f1"]
  assert [r["rank"] for r in saved["per_perturbation"]] == list(want.per_perturbation["rank"])


def test_compare_refuses_mixed_directions_and_reads_older_reports(data):
  real, pred, *_ = data
  fwd = tb.evaluate(pred, real, baselines=("mean",))
  rev = tb.evaluate(pred, real, baselines=("mean",), direction="real_to_pred")
  with pytest.raises(ValueError, match="settings.direction"):
    tb.compare(fwd, rev)
  older = fwd.to_dict()  # saved before the option existed: ranked pred_to_real
  del older["settings"]["direction"]
  table = tb.compare(older, fwd, names=["a", "b"]).table
  assert table.loc["a", "auc_f1"] == table.loc["b", "auc_f1"] == fwd.auc_f1

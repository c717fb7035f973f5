"""Per-query target-gene exclusion: `tb.similarity(exclude=...)`, `tb.evaluate(target_genes=...)`
and `twinbench evaluate --target-genes` (SPEC §1, §7)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import reference as ref
import twinbench_jax as tb
from adata_helpers import good_pred, make_pred, make_real, pseudobulk_numpy
from twinbench_jax._src.evaluate import scoring
from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax.cli import main


def _kept_reference(x, y, mask, metric):
  """The loop reference: delete query q's excluded genes, then compare (float64)."""
  out = np.zeros((x.shape[0], y.shape[0]))
  for q in range(x.shape[0]):
    keep = ~mask[q]
    if keep.any():
      out[q] = ref.similarity(x[q:q + 1, keep], y[:, keep], metric)[0]
    # no kept gene: distances over nothing are 0, cosine/Pearson of empty vectors 0
  return out


def _data(seed=0, q=7, c=13, g=11):
  rng = np.random.default_rng(seed)
  x = (2.0 + rng.normal(size=(q, g))).astype(np.float32)
  y = (2.0 + rng.normal(size=(c, g))).astype(np.float32)
  mask = rng.random((q, g)) < 0.25
  mask[0] = False  # a query that keeps every gene
  mask[1] = True  # one that keeps none
  mask[2, :] = False
  mask[2, 4] = True  # one target
  return x, y, mask


def _as_indices(mask):
  t = int(mask.sum(axis=1).max())
  idx = np.full((mask.shape[0], t + 1), -1, np.int32)  # one extra pad column
  for q, row in enumerate(mask):
    genes = np.flatnonzero(row)
    idx[q, :genes.size] = genes
  return idx


# ----------------------------------------------------------------------------- array core


@pytest.mark.parametrize("metric", tb.METRICS)
def test_exclusion_matches_a_loop_that_deletes_the_genes(metric):
  x, y, mask = _data()
  want = _kept_reference(x, y, mask, metric)
  idx = _as_indices(mask)
  got = {
      "mask": tb.similarity(x, y, metric=metric, exclude=mask),
      "indices": tb.similarity(x, y, metric=metric, exclude=idx),
      # traced mask: the matmul form of the corrections
      "jit mask": jax.jit(lambda a, b, m: tb.similarity(a, b, metric=metric, exclude=m))(
          x, y, mask),
  }
  for form, s in got.items():
    np.testing.assert_allclose(np.asarray(s), want, rtol=2e-5, atol=2e-5, err_msg=form)


def test_large_gathers_switch_to_the_matmul_form(monkeypatch):
  x, y, mask = _data(1, q=5, c=9, g=6)  # shapes of no other test: a fresh trace
  monkeypatch.setattr(similarity_lib, "_GATHER_ELEMENTS", 1)
  for metric in ("sqeuclidean", "pearson"):
    got = tb.similarity(x, y, metric=metric, exclude=mask)
    np.testing.assert_allclose(np.asarray(got), _kept_reference(x, y, mask, metric), rtol=2e-5,
                               atol=2e-5)


@pytest.mark.parametrize("metric", tb.METRICS)
def test_no_exclusion_is_bit_identical_to_the_plain_kernel(metric):
  x, y, mask = _data(2)
  plain = np.asarray(similarity_lib._similarity(jnp.asarray(x), jnp.asarray(y), metric=metric))
  for exclude in (None, np.zeros_like(mask), np.full((x.shape[0], 3), -1, np.int32)):
    got = np.asarray(tb.similarity(x, y, metric=metric, exclude=exclude))
    np.testing.assert_array_equal(got.view(np.uint32), plain.view(np.uint32))
  # traced, an all-False mask runs the exclusion kernel: the same numbers up to rounding
  traced = jax.jit(lambda a, b, m: tb.similarity(a, b, metric=metric, exclude=m))(
      x, y, np.zeros_like(mask))
  np.testing.assert_allclose(np.asarray(traced), plain, rtol=1e-5, atol=1e-5)


def test_repeated_indices_count_once():
  x, y, mask = _data(3)
  idx = _as_indices(mask)
  doubled = np.concatenate([idx, idx], axis=1)
  np.testing.assert_allclose(np.asarray(tb.similarity(x, y, metric="pearson", exclude=doubled)),
                             _kept_reference(x, y, mask, "pearson"), rtol=2e-5, atol=2e-5)


def test_constant_or_zero_on_the_kept_genes_has_similarity_zero():
  x = np.array([[1.0, 2.0, 4.0, 3.0, 0.5]], np.float32)
  y = np.array([[7.0, 1.3, 1.3, 1.3, 1.3],  # constant once gene 0 is left out
                [9.0, 0.0, 0.0, 0.0, 0.0],  # zero once gene 0 is left out
                [0.0, 1.0, 2.0, 4.0, 3.0]], np.float32)
  exclude = np.array([[0]], np.int32)
  pearson = np.asarray(tb.similarity(x, y, metric="pearson", exclude=exclude))[0]
  cosine = np.asarray(tb.similarity(x, y, metric="cosine", exclude=exclude))[0]
  assert pearson[0] == 0.0 and pearson[1] == 0.0 and cosine[1] == 0.0
  np.testing.assert_allclose([pearson[2], cosine[2]],
                             [np.corrcoef(x[0, 1:], y[2, 1:])[0, 1],
                              x[0, 1:] @ y[2, 1:] / np.linalg.norm(x[0, 1:]) /
                              np.linalg.norm(y[2, 1:])], rtol=1e-5)


def _far_from_origin(n_refs=40, g=64, seed=4):
  """Profiles ~1e3 from the origin that differ by ~1e-3 (float32 ulp ~6e-5)."""
  rng = np.random.default_rng(seed)
  base = 1000.0 + rng.normal(size=(1, g))
  return (base + 1e-3 * rng.normal(size=(n_refs, g))).astype(np.float32)


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "l1"])
def test_identical_on_the_kept_genes_is_exactly_zero(metric):
  refs = _far_from_origin()
  preds = refs[[0, 3, 5]].copy()
  preds[:, 7] += 500.0  # a huge "knockout" on gene 7 ...
  preds[1, 9] -= 300.0  # ... and on gene 9 for query 1
  idx = np.array([[7, -1], [7, 9], [7, -1]], np.int32)
  s = np.asarray(tb.similarity(preds, refs, metric=metric, exclude=idx))
  assert np.all(s[[0, 1, 2], [0, 3, 5]] == 0.0)
  others = np.delete(s, [0, 3, 5], axis=1)
  assert np.all(others < 0.0)
  assert np.all(np.asarray(tb.similarity(preds, refs, metric=metric))[[0, 1, 2], [0, 3, 5]] < 0)


def test_identical_cluster_on_the_kept_genes_uses_the_exact_fallback():
  # 12 references equal to the query on every kept gene (> the 8 refined): all exactly 0.
  refs = _far_from_origin(n_refs=30)
  refs[1:12] = refs[0]
  refs[1:12, 2] += np.linspace(1.0, 50.0, 11, dtype=np.float32)  # differ only on gene 2
  pred = refs[:1].copy()
  s = np.asarray(tb.similarity(pred, refs, exclude=np.array([[2]], np.int32)))
  assert np.all(s[0, :12] == 0.0)
  assert np.all(s[0, 12:] < 0.0)


def test_exclude_errors_name_the_argument():
  x, y, mask = _data(5)
  with pytest.raises(ValueError, match=r"`exclude` as a boolean mask must have shape \(Q, G\)"):
    tb.similarity(x, y, exclude=mask[:, :3])
  with pytest.raises(ValueError, match=r"`exclude` as gene indices must have shape"):
    tb.similarity(x, y, exclude=np.zeros((2, 1), np.int32))
  with pytest.raises(ValueError, match=r"`exclude` holds 1 gene index\(es\) outside"):
    tb.similarity(x, y, exclude=np.full((x.shape[0], 1), -1, np.int32).__add__(
        np.eye(x.shape[0], 1, dtype=np.int32) * 99))
  with pytest.raises(TypeError, match=r"`exclude` must be a boolean \[Q, G\] mask or integer"):
    tb.similarity(x, y, exclude=mask.astype(np.float32))


# ----------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def synthetic():
  real, means = make_real(n_perturbations=8, n_genes=25)
  pred = good_pred(real, means, noise=1.0)
  targets = {"p0": "g0", "p1": ["g1", "g2"], "p2": "g3", "p5": ["g4", "not_a_gene"],
             "control": "g9"}
  return real, pred, targets


def _profiles(real, pred):
  """Evaluated profiles in report order: queries as in `pred`, candidates sorted."""
  queries = list(pred.obs["perturbation"].astype(str))
  cands = sorted(c for c in real.obs["perturbation"].cat.categories if c != "control")
  y = pseudobulk_numpy(real.X, real.obs["perturbation"].astype(str), cands)
  x = np.asarray(pred.X, np.float64)
  return queries, cands, x, y


def _mask(labels, targets, genes):
  mask = np.zeros((len(labels), len(genes)), bool)
  for i, lab in enumerate(labels):
    for g in np.atleast_1d(targets.get(lab, [])):
      if g in list(genes):
        mask[i, list(genes).index(g)] = True
  return mask


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_evaluate_ranks_and_label_null_on_each_querys_kept_genes(synthetic, metric):
  real, pred, targets = synthetic
  report = tb.evaluate(pred, real, metric=metric, target_genes=targets)
  queries, cands, x, y = _profiles(real, pred)
  mask = _mask(queries, targets, real.var_names)
  truth = [cands.index(q) for q in queries]
  s = _kept_reference(x, y, mask, metric)
  rel = np.zeros_like(s, bool)
  rel[np.arange(len(queries)), truth] = True
  table = report.per_perturbation
  np.testing.assert_allclose(table["rank"], ref.truth_ranks(s, rel))
  # label null: predictions i against truth j, all on query j's kept genes
  cross = np.stack([_kept_reference(x, y[truth[j]][None], np.repeat(mask[j:j + 1], len(x), 0),
                                    metric)[:, 0] for j in range(len(queries))], axis=1)
  p = [np.mean(cross[:, j] >= cross[j, j] - 1e-9) for j in range(len(queries))]
  np.testing.assert_allclose(table["pvalue"], p)
  np.testing.assert_allclose(table["own_score"], np.diagonal(cross), rtol=1e-4, atol=1e-4)
  assert list(table["excluded_genes"][:3]) == ["g0", "g1;g2", "g3"]
  assert report.summary["settings"]["target_genes"] == "mapping of 5 perturbation(s)"
  assert report.baselines["mean"] == 0.0 and report.baselines["control"] == 0.0
  assert any("not_a_gene" in n and "ignored" in n for n in report.notes)


def test_evaluate_l1_with_one_target_each_matches_the_loop(synthetic):
  # One gene per perturbation (cell-eval's exclusion): the single-pass L1 kernel.
  real, pred, _ = synthetic
  targets = {"p0": "g0", "p1": "g1", "p2": "g7", "p4": "g3"}
  report = tb.evaluate(pred, real, metric="l1", target_genes=targets)
  queries, cands, x, y = _profiles(real, pred)
  mask = _mask(queries, targets, real.var_names)
  truth = [cands.index(q) for q in queries]
  s = _kept_reference(x, y, mask, "l1")
  rel = np.zeros_like(s, bool)
  rel[np.arange(len(queries)), truth] = True
  table = report.per_perturbation
  np.testing.assert_allclose(table["rank"], ref.truth_ranks(s, rel))
  cross = np.stack([_kept_reference(x, y[truth[j]][None], np.repeat(mask[j:j + 1], len(x), 0),
                                    "l1")[:, 0] for j in range(len(queries))], axis=1)
  p = [np.mean(cross[:, j] >= cross[j, j] - 1e-9) for j in range(len(queries))]
  np.testing.assert_allclose(table["pvalue"], p)
  np.testing.assert_allclose(table["own_score"], np.diagonal(cross), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("one_row", [False, True])
@pytest.mark.parametrize("metric", ["l1", "sqeuclidean"])
def test_mean_baseline_scores_one_profile_against_every_candidate(synthetic, monkeypatch, metric,
                                                                  one_row):
  # The mean baseline predicts the same profile for every query: ranks from that one row,
  # passed as Q copies (small problems) or as the single row (large ones).
  monkeypatch.setattr(scoring, "ONE_ROW_ELEMENTS", 0 if one_row else 1 << 62)
  real, pred, _ = synthetic
  targets = {"p0": "g0", "p1": "g1", "p2": "g7", "p4": "g3"}
  report = tb.evaluate(pred, real, metric=metric, target_genes=targets)
  queries, cands, _, y = _profiles(real, pred)
  mean = y.mean(axis=0, keepdims=True)
  mask = _mask(queries, targets, real.var_names)
  truth = [cands.index(q) for q in queries]
  s = np.concatenate([_kept_reference(mean, y, mask[q:q + 1], metric) for q in range(len(queries))])
  rel = np.zeros_like(s, bool)
  rel[np.arange(len(queries)), truth] = True
  table = report.baseline_tables["mean"]
  np.testing.assert_allclose(table["rank"], ref.truth_ranks(s, rel))
  np.testing.assert_allclose(table["own_score"], s[rel], rtol=1e-4, atol=1e-4)
  assert (table["pvalue"] == 1.0).all() and report.baselines["mean"] == 0.0


def _one_gene_kernels(x, y, truth, rows, gene):
  args = (jnp.asarray(x), jnp.asarray(y), jnp.asarray(truth, jnp.int32),
          jnp.asarray(rows, jnp.int32), jnp.asarray(gene, jnp.int32))
  one = jax.jit(scoring.l1_one_gene_excluded)(*args)
  masked = jax.jit(scoring.excluded_scores, static_argnums=5)(
      *args[:4], args[4][:, None], "l1")
  return [np.asarray(a) for a in one], [np.asarray(a) for a in masked]


def test_one_gene_l1_kernel_equals_the_masked_passes():
  rng = np.random.default_rng(3)
  q, g = 30, 40
  y = (1.0 + rng.normal(size=(q, g))).astype(np.float32)
  x = (y + 0.5 * rng.normal(size=(q, g))).astype(np.float32)
  x[:, :5] -= 3.0  # knockdowns on the excluded genes, a few times the kept distance at most
  gene = rng.integers(0, 5, q).astype(np.int32)
  gene[[4, 9]] = -1  # queries that exclude nothing
  truth = rng.permutation(q)
  (s, cross), (s_m, cross_m) = _one_gene_kernels(x, y, truth, np.arange(q), gene)
  np.testing.assert_allclose(s, s_m, rtol=2e-6)
  np.testing.assert_allclose(cross, cross_m, rtol=2e-6)
  mask = np.zeros((q, g), bool)
  mask[np.flatnonzero(gene >= 0), gene[gene >= 0]] = True
  np.testing.assert_allclose(-s, _kept_reference(x, y, mask, "l1") * -1, rtol=2e-6)
  # the own scores are one computation in both matrices
  np.testing.assert_array_equal(s[np.arange(q), truth], np.diagonal(cross))


def test_one_gene_l1_kernel_is_exact_on_identical_profiles_and_collapsed_models():
  refs = _far_from_origin(n_refs=20, g=64)
  preds = refs.copy()
  gene = np.arange(20, dtype=np.int32) % 3
  preds[np.arange(20), gene] -= 0.5  # predicted knockdowns, identical elsewhere
  truth = np.arange(20)
  (s, cross), _ = _one_gene_kernels(preds, refs, truth, truth, gene)
  assert np.all(np.diagonal(s) == 0.0) and np.all(np.diagonal(cross) == 0.0)
  # One profile for every query: each truth sees the same score from every query, p = 1.
  (_, cross), _ = _one_gene_kernels(preds[:1], refs, truth, np.zeros(20, int), gene)
  assert np.all(cross == cross[:1])


@pytest.mark.parametrize("case", ["nan", "inf", "cancellation"])
def test_one_gene_l1_kernel_falls_back_to_the_masked_passes(case):
  refs = _far_from_origin(n_refs=12, g=64)
  preds = refs[::-1].copy()
  gene = np.full(12, 7, np.int32)
  if case == "cancellation":
    preds[:] = refs  # near matches ...
    preds += 1e-3 * np.random.default_rng(0).normal(size=preds.shape).astype(np.float32)
    preds[:, 7] += 500.0  # ... but a huge excluded term: float32 d - 500 loses the kept sum
  else:
    refs[3, 7] = np.nan if case == "nan" else np.inf  # a bad value only at an excluded gene
  (s, cross), (s_m, cross_m) = _one_gene_kernels(preds, refs, np.arange(12), np.arange(12), gene)
  np.testing.assert_array_equal(s, s_m)
  np.testing.assert_array_equal(cross, cross_m)
  assert np.all(np.isfinite(s))


def _own_null_pvalues(x, y_truth, nulls, mask, metric):
  """Reference p-values of a sampled null, every own score on the query's kept genes."""
  def own(a):
    return np.array([_kept_reference(a[q:q + 1], y_truth[q:q + 1], mask[q:q + 1], metric)[0, 0]
                     for q in range(len(a))])

  observed = own(x)
  null_own = np.stack([own(xb) for xb in nulls])
  return (1 + np.sum(null_own >= observed - 1e-9, axis=0)) / (len(nulls) + 1)


def _replicates(key, y_truth, mask, n):
  """Null replicates as good as the prediction on the kept genes, far off on the targets."""
  keys = [jax.random.fold_in(key, b) for b in range(n)]
  return np.stack([np.asarray(_replicate(k, y_truth, mask)) for k in keys])


def _replicate(key, y_truth, mask):
  noise = jax.random.normal(key, y_truth.shape, jnp.float32)
  return (jnp.asarray(y_truth, jnp.float32) + noise + 20.0 * jnp.asarray(mask, jnp.float32))


def test_precomputed_null_scores_on_the_kept_genes(synthetic, metric="sqeuclidean"):
  # (Pearson, whose targets are filled with kept-gene means for the null, in the next test)
  real, pred, targets = synthetic
  queries, cands, x, y = _profiles(real, pred)
  mask = _mask(queries, targets, real.var_names)
  y_truth = y[[cands.index(q) for q in queries]]
  nulls = _replicates(jax.random.key(0), y_truth, mask, 15)
  report = tb.evaluate(pred, real, metric=metric, target_genes=targets, null=nulls,
                       baselines=())
  want = _own_null_pvalues(x, y_truth, nulls, mask, metric)
  np.testing.assert_allclose(report.per_perturbation["pvalue"], want)
  assert report.summary["null"] == "precomputed"
  # without exclusion the shifted targets make every replicate worse: p = 1 / (B + 1) there
  plain = tb.evaluate(pred, real, metric=metric, null=nulls, baselines=())
  targeted = mask.any(axis=1)
  assert np.all(plain.per_perturbation["pvalue"][targeted] == 1 / 16)
  assert np.sum(report.per_perturbation["pvalue"][targeted] > 1 / 16) >= 2
  np.testing.assert_array_equal(report.per_perturbation["pvalue"][~targeted],
                                plain.per_perturbation["pvalue"][~targeted])


def test_model_null_scores_on_the_kept_genes(synthetic):
  real, pred, targets = synthetic
  queries, cands, x, y = _profiles(real, pred)
  mask = _mask(queries, targets, real.var_names)
  y_truth = y[[cands.index(q) for q in queries]]
  key = jax.random.key(3)
  report = tb.evaluate(pred, real, metric="pearson", target_genes=targets, baselines=(),
                       null="model", predict_fn=lambda v: v, inputs=jnp.asarray(pred.X),
                       randomize=lambda k, v: _replicate(k, y_truth, mask), key=key, n_null=12)
  # replicate b uses fold_in(null key, b); evaluate's null key is fold_in(key, 2)
  nulls = _replicates(jax.random.fold_in(key, 2), y_truth, mask, 12)
  want = _own_null_pvalues(x, y_truth, nulls, mask, "pearson")
  np.testing.assert_allclose(report.per_perturbation["pvalue"], want)
  assert len(set(want)) > 2


def test_target_genes_argument_errors(synthetic):
  real, pred, _ = synthetic
  with pytest.raises(ValueError, match=r"`target_genes` names 2 perturbation label\(s\) found "
                     r"in neither file: \['nope', 'P1'\]"):
    tb.evaluate(pred, real, target_genes={"p0": "g0", "nope": "g1", "P1": "g2"})
  with pytest.raises(ValueError, match=r"Could not find key 'grna' in `adata_real.obs`; "
                     r"available: \['perturbation'\]\. Pass the obs column"):
    tb.evaluate(pred, real, target_genes="obs:grna")
  with pytest.raises(TypeError, match=r"`target_genes` must be None, a mapping"):
    tb.evaluate(pred, real, target_genes=["g0"])
  with pytest.raises(TypeError, match=r"`target_genes`\['p0'\] must be a gene name or a list"):
    tb.evaluate(pred, real, target_genes={"p0": 3})


def test_target_genes_from_an_obs_column(synthetic):
  real, pred, targets = synthetic
  real = real.copy()
  col = real.obs["perturbation"].astype(str).map(
      {k: v if isinstance(v, str) else v[0] for k, v in targets.items()})
  real.obs["target"] = col.where(col.notna(), None)  # cells without a target: missing
  by_obs = tb.evaluate(pred, real, target_genes="target", baselines=())
  by_map = tb.evaluate(pred, real, baselines=(),
                       target_genes={k: v if isinstance(v, str) else v[0]
                                     for k, v in targets.items()})
  pd.testing.assert_frame_equal(by_obs.per_perturbation, by_map.per_perturbation)
  assert by_obs.summary["settings"]["target_genes"] == "obs:target"


# ----------------------------------------------------------------------------- real data


def test_papalexi_knockdown_only_prediction_ranks_at_chance_without_its_target(papalexi_path):
  """A prediction that knows only "the target goes down": the real control profile with
  the target gene set to its real knockout mean. With the target it often ranks first;
  without it, the rest is the control profile and ranks no better than chance."""
  import anndata

  real = anndata.read_h5ad(papalexi_path)
  pb = tb.pseudobulk(real, normalize="log1p_cp10k")
  labels, genes = list(pb.labels), list(pb.genes)
  knocked = [lab for lab in labels if lab in genes]  # the 9 targets measured in this subset
  assert len(knocked) == 9
  control = pb.means[labels.index("non-targeting")]
  x = np.repeat(control[None], len(knocked), axis=0)
  for i, lab in enumerate(knocked):
    x[i, genes.index(lab)] = pb.means[labels.index(lab), genes.index(lab)]
  pred = make_pred(x, knocked, genes)
  kwargs = dict(normalize="log1p_cp10k", pred_normalize="none", unmatched="keep_real")
  plain = tb.evaluate(pred, real, **kwargs)
  excl = tb.evaluate(pred, real, target_genes="perturbation", **kwargs)
  chance = (plain.summary["n_candidates"] + 1) / 2  # 13 of 25 candidates
  assert plain.hit_at_1 >= 3 / 9 and plain.mrr > 0.4 and plain.auc_f1 > 0.1
  assert excl.hit_at_1 == 0.0 and excl.auc_f1 == 0.0
  assert excl.summary["mean_rank"] >= chance
  assert np.all(excl.per_perturbation["rank"] >= plain.per_perturbation["rank"])
  assert list(excl.per_perturbation["excluded_genes"]) == knocked
  # the guide-target column says the same; the 16 targets outside the 299 genes are noted
  by_guide = tb.evaluate(pred, papalexi_path, target_genes="obs:grna_target", **kwargs)
  np.testing.assert_array_equal(by_guide.per_perturbation["rank"], excl.per_perturbation["rank"])
  assert any("16 target gene(s)" in n for n in excl.notes)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, synthetic):
  real, pred, _ = synthetic
  d = tmp_path_factory.mktemp("targets")
  paths = {"real": d / "real.h5ad", "pred": d / "pred.h5ad", "tsv": d / "targets.tsv",
           "bad": d / "bad.csv", "unknown": d / "unknown.csv"}
  real.write_h5ad(paths["real"])
  pred.write_h5ad(paths["pred"])
  paths["tsv"].write_text("perturbation\tgene\np0\tg0\np1\tg1\n# a comment\np1\tg2\n")
  paths["bad"].write_text("p0,g0\np1\n")
  paths["unknown"].write_text("p0,g0\nKO_X,g1\n")
  return paths


def _cli(argv, capsys):
  code = main([str(a) for a in argv])
  cap = capsys.readouterr()
  return code, cap.out, cap.err


def test_cli_target_genes_file_matches_the_python_mapping(cli_files, synthetic, tmp_path, capsys):
  real, pred, _ = synthetic
  out = tmp_path / "out"
  code, stdout, _ = _cli(["evaluate", "--pred", cli_files["pred"], "--real", cli_files["real"],
                          "--out", out, "--target-genes", cli_files["tsv"], "--quiet",
                          "--baselines", "none"], capsys)
  assert code == 0
  got = json.loads((out / "report.json").read_text())
  want = tb.evaluate(pred, real, baselines=(), target_genes={"p0": "g0", "p1": ["g1", "g2"]})
  assert [r["rank"] for r in got["per_perturbation"]] == list(want.per_perturbation["rank"])
  assert [r["excluded_genes"] for r in got["per_perturbation"]][:3] == ["g0", "g1;g2", ""]
  assert got["settings"]["target_genes"] == "mapping of 2 perturbation(s)"


def test_cli_target_genes_errors_exit_2(cli_files, tmp_path, capsys):
  base = ["evaluate", "--pred", cli_files["pred"], "--real", cli_files["real"], "--out",
          tmp_path / "o", "--quiet", "--target-genes"]
  code, _, err = _cli([*base, cli_files["unknown"]], capsys)
  assert code == 2 and "found in neither file: ['KO_X']" in err
  code, _, err = _cli([*base, cli_files["bad"]], capsys)
  assert code == 2 and "line 2: expected two non-empty columns" in err
  code, _, err = _cli([*base, tmp_path / "missing.csv"], capsys)
  assert code == 2 and "--target-genes: file not found" in err
  code, _, err = _cli([*base, "obs:guide_target"], capsys)
  assert code == 2 and "Could not find key 'guide_target'" in err
  assert not (tmp_path / "o").exists()


def test_cli_help_documents_target_genes(capsys):
  code, out, _ = _cli(["evaluate", "--help"], capsys)
  assert code == 0
  flat = " ".join(out.split())
  assert "--target-genes FILE|obs:COLUMN" in flat and "obs:grna_target" in flat

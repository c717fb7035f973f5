"""The array pipeline end to end, and the closed forms of SPEC §3–4 on model outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
import twinbench_jax as tb

_seeds = st.integers(0, 2**31 - 1)


def _assert_matches_reference(res, want):
  np.testing.assert_allclose(np.asarray(res.ranks), want["ranks"])
  np.testing.assert_allclose(np.asarray(res.own_scores), want["own_scores"], rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(res.pvalues), want["pvalues"], rtol=1e-6)
  for field in ("auc_f1", "hit_at_k", "mrr", "mean_rank", "normalized_rank"):
    assert float(getattr(res, field)) == pytest.approx(want[field], abs=1e-6), field
  assert float(res.curve.auc) == float(res.auc_f1)
  np.testing.assert_array_equal(np.asarray(res.correct), np.asarray(res.ranks) <= 1)


@pytest.mark.parametrize("metric", ["sqeuclidean", "l1", "pearson"])
def test_evaluate_arrays_matches_reference(metric):
  rng = np.random.default_rng(0)
  y = rng.normal(size=(7, 5)).astype(np.float32)
  x = (y + rng.normal(scale=0.8, size=y.shape)).astype(np.float32)
  res = tb.evaluate_arrays(x, y, metric=metric)
  want = ref.evaluate_arrays(x, y, np.eye(7, dtype=bool), metric=metric)
  _assert_matches_reference(res, want)
  assert 0.0 < float(res.auc_f1) < 1.0  # a non-trivial case


@pytest.mark.parametrize("ties", ["average", "pessimistic"])
def test_evaluate_arrays_with_several_relevant_candidates_matches_reference(ties):
  rng = np.random.default_rng(1)
  q, c = 5, 9
  rel = np.zeros((q, c), bool)
  for i in range(q):
    rel[i, rng.choice(c, size=rng.integers(1, 4), replace=False)] = True
  # integer profiles: exact distances, and ties between candidates
  y = rng.integers(0, 2, size=(c, 3)).astype(np.float32)
  x = rng.integers(0, 2, size=(q, 3)).astype(np.float32)
  res = tb.evaluate_arrays(x, y, rel, metric="l1", ties=ties, k=2)
  want = ref.evaluate_arrays(x, y, rel, metric="l1", ties=ties, k=2)
  np.testing.assert_allclose(np.asarray(res.ranks), want["ranks"])
  np.testing.assert_allclose(np.asarray(res.pvalues), want["pvalues"], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(res.correct), want["ranks"] <= 2)
  for field in ("auc_f1", "hit_at_k", "mrr", "normalized_rank"):
    assert float(getattr(res, field)) == pytest.approx(want[field], abs=1e-6), field


# --- closed forms, label-permutation null -------------------------------------------------

def test_perfect_predictions_score_one_minus_one_over_q():
  rng = np.random.default_rng(2)
  y = rng.normal(size=(7, 5)).astype(np.float32)
  res = tb.evaluate_arrays(y, y)
  np.testing.assert_array_equal(np.asarray(res.ranks), 1.0)
  np.testing.assert_allclose(np.asarray(res.pvalues), 1 / 7)
  assert float(res.auc_f1) == pytest.approx(1 - 1 / 7)
  assert float(res.mrr) == 1.0 and float(res.normalized_rank) == 0.0


@pytest.mark.parametrize("metric", ["sqeuclidean", "l1", "pearson"])
def test_identical_predictions_get_pvalue_one_and_auc_zero(metric):
  rng = np.random.default_rng(3)
  y = rng.normal(size=(7, 5)).astype(np.float32)
  # the collapsed model: the mean response for every perturbation
  x = np.tile(y.mean(0, keepdims=True), (7, 1))
  res = tb.evaluate_arrays(x, y, metric=metric)
  np.testing.assert_array_equal(np.asarray(res.pvalues), 1.0)
  assert float(res.auc_f1) == 0.0


# --- closed forms, model-in-the-loop null ----------------------------------------------------

Q, G, B = 40, 12, 19


def _model_null(predict, inputs, references, key):
  """Ranks and empirical p-values of `predict`, its null made from feature-shuffled inputs.

  Observed and null own scores go through the same jitted function, one replicate
  at a time, so a prediction that did not change gives a bit-identical own score.
  """
  keys = jax.random.split(key, B)
  null_pred = _shuffled(keys, jnp.asarray(inputs))
  null_pred = jax.vmap(predict)(null_pred)
  null_own = np.stack([np.asarray(_own(null_pred[b], references)) for b in range(B)])
  pred = predict(inputs)
  pvalues = tb.empirical_pvalues(_own(pred, references), null_own)
  return tb.truth_ranks(tb.similarity(pred, references), np.eye(Q, dtype=bool)), pvalues


_own = jax.jit(lambda p, refs: tb.own_scores(tb.similarity(p, refs), np.eye(Q, dtype=bool)))
_shuffled = jax.jit(jax.vmap(tb.shuffle_features, in_axes=(0, None)))


def test_perfect_model_with_b_replicates_scores_one_minus_one_over_b_plus_one():
  rng = np.random.default_rng(4)
  truth = rng.normal(size=(Q, G)).astype(np.float32)
  inputs = truth + 0.01 * rng.normal(size=truth.shape).astype(np.float32)
  ranks, p = _model_null(lambda a: a, inputs, truth, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(ranks), 1.0)
  np.testing.assert_allclose(np.asarray(p), 1 / (B + 1))
  assert float(tb.auc_f1(p, ranks <= 1).auc) == pytest.approx(1 - 1 / (B + 1))


def test_input_ignoring_model_gets_pvalue_one_and_auc_zero():
  rng = np.random.default_rng(5)
  truth = rng.normal(size=(Q, G)).astype(np.float32)
  memory = (truth + 0.5 * rng.normal(size=truth.shape)).astype(np.float32)
  # good predictions, but recalled from memory, not computed from the input
  ranks, p = _model_null(lambda a: memory + 0.0 * a, truth, truth, jax.random.key(2))
  assert float(tb.hit_at_k(ranks, k=1)) > 0.5
  np.testing.assert_array_equal(np.asarray(p), 1.0)
  assert float(tb.auc_f1(p, ranks <= 1).auc) == 0.0


def test_random_model_has_uniform_pvalues_and_small_auc():
  # inputs are i.i.d. noise unrelated to the truth, so shuffling them changes nothing
  # in distribution: observed and null own scores are exchangeable
  rng = np.random.default_rng(6)
  truth = rng.normal(size=(Q, G)).astype(np.float32)
  inputs = rng.normal(size=(Q, G)).astype(np.float32)
  ranks, p = _model_null(lambda a: a, inputs, truth, jax.random.key(3))
  p = np.asarray(p)
  assert abs(p.mean() - (B + 2) / (2 * (B + 1))) < 0.15
  assert scipy.stats.kstest(p, "uniform").pvalue > 1e-3
  assert float(tb.auc_f1(p, ranks <= 1).auc) < 0.15


# --- jit, vmap, properties ---------------------------------------------------------------------

def test_evaluate_arrays_jit_equals_eager():
  rng = np.random.default_rng(6)
  y = rng.normal(size=(7, 5)).astype(np.float32)
  x = (y + rng.normal(size=y.shape)).astype(np.float32)
  eager = tb.evaluate_arrays(x, y)
  jitted = jax.jit(tb.evaluate_arrays)(x, y)
  for a, b in zip(jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(eager)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_evaluate_arrays_vmap_over_prediction_sets_equals_loop():
  rng = np.random.default_rng(7)
  y = rng.normal(size=(7, 5)).astype(np.float32)
  xs = (y + rng.normal(size=(3,) + y.shape)).astype(np.float32)
  batched = jax.vmap(lambda a: tb.evaluate_arrays(a, y))(xs)
  for i in range(3):
    one = tb.evaluate_arrays(xs[i], y)
    for field in ("ranks", "pvalues", "auc_f1", "mrr"):
      np.testing.assert_allclose(np.asarray(getattr(batched, field))[i],
                                 np.asarray(getattr(one, field)), rtol=1e-6, err_msg=field)


@settings(max_examples=30, deadline=None)
@given(seed=_seeds)
def test_consistent_reordering_of_queries_and_candidates_changes_nothing(seed):
  rng = np.random.default_rng(seed)
  q, c = 5, 9
  rel = np.zeros((q, c), bool)
  rel[np.arange(q), rng.permutation(c)[:q]] = True
  rel[0, ~rel.any(0)] = rng.random((~rel.any(0)).sum()) < 0.5  # some extra relevant ones
  y = rng.integers(-2, 3, size=(c, 3)).astype(np.float32)  # exact L1 distances, with ties
  x = rng.integers(-2, 3, size=(q, 3)).astype(np.float32)
  pq, pc = rng.permutation(q), rng.permutation(c)
  res = tb.evaluate_arrays(x, y, rel, metric="l1", k=2)
  perm = tb.evaluate_arrays(x[pq], y[pc], rel[np.ix_(pq, pc)], metric="l1", k=2)
  np.testing.assert_array_equal(np.asarray(perm.ranks), np.asarray(res.ranks)[pq])
  np.testing.assert_array_equal(np.asarray(perm.pvalues), np.asarray(res.pvalues)[pq])
  assert float(perm.auc_f1) == pytest.approx(float(res.auc_f1), abs=1e-6)
  assert float(perm.mrr) == pytest.approx(float(res.mrr), abs=1e-6)

"""Bad input gets a clear error naming the argument; NaN has a documented meaning."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
import twinbench_jax as tb

_seeds = st.integers(0, 2**31 - 1)

S = np.arange(12, dtype=np.float32).reshape(3, 4)
REL = np.eye(3, 4, dtype=bool)


# --- shapes ---------------------------------------------------------------------------

def test_similarity_rejects_mismatched_gene_counts_and_non_matrices():
  with pytest.raises(ValueError, match="predictions.*references"):
    tb.similarity(np.zeros((3, 5)), np.zeros((4, 6)))
  with pytest.raises(ValueError, match="`predictions` must be 2-D"):
    tb.similarity(np.zeros(5), np.zeros((4, 5)))
  with pytest.raises(ValueError, match="`references` must be 2-D"):
    tb.similarity(np.zeros((3, 5)), np.zeros((2, 4, 5)))


def test_scores_and_relevance_of_different_shapes_are_rejected():
  for fn in (tb.truth_ranks, tb.own_scores, tb.cross_own_scores,
             lambda s, r: tb.recall_at_k(s, r, k=1)):
    with pytest.raises(ValueError, match="`scores` and `relevance`"):
      fn(S, np.eye(3, 5, dtype=bool))


def test_null_scores_of_the_wrong_shape_are_rejected():
  with pytest.raises(ValueError, match="null_scores"):
    tb.empirical_pvalues(np.zeros(4), np.zeros((5, 3)))
  with pytest.raises(ValueError, match="null_scores"):
    tb.empirical_pvalues(np.zeros(4), np.zeros(4))  # no replicate axis


def test_zero_null_replicates_are_rejected():
  with pytest.raises(ValueError, match="`null_scores`.*B = 0"):
    tb.empirical_pvalues(np.zeros(4), np.zeros((0, 4)))
  with pytest.raises(ValueError, match="`null_scores`.*B = 0"):
    tb.empirical_pvalues(np.zeros((2, 3)), np.zeros((0, 2, 3)))


def test_label_permutation_needs_a_square_non_empty_matrix():
  with pytest.raises(ValueError, match="own_scores.*square"):
    tb.label_permutation_pvalues(np.zeros((3, 4)))
  with pytest.raises(ValueError, match="own_scores"):
    tb.label_permutation_pvalues(np.zeros((0, 0)))


def test_auc_inputs_of_different_shapes_are_rejected():
  with pytest.raises(ValueError, match="`pvalues` and `correct`"):
    tb.auc_f1(np.full(4, 0.5), np.ones(3, bool))
  with pytest.raises(ValueError, match="`pvalues` and `where`"):
    tb.auc_f1(np.full(4, 0.5), np.ones(4, bool), where=np.ones(3, bool))
  with pytest.raises(ValueError, match="`pvalues` and `relevance`"):
    tb.candidate_auc_f1(np.full((3, 4), 0.5), np.eye(3, dtype=bool))
  with pytest.raises(ValueError, match="`pvalues` must be 1-D"):
    tb.auc_f1(np.full((2, 2), 0.5), np.ones((2, 2), bool))


def test_evaluate_arrays_rejects_mismatched_inputs():
  x, y = np.zeros((3, 5)), np.zeros((4, 5))
  with pytest.raises(ValueError, match="relevance"):
    tb.evaluate_arrays(x, y)  # no relevance and Q != C
  with pytest.raises(ValueError, match="`relevance` must have shape"):
    tb.evaluate_arrays(x, y, np.eye(3, dtype=bool))
  with pytest.raises(ValueError, match="predictions.*references"):
    tb.evaluate_arrays(x, np.zeros((4, 6)), REL)


def test_normalized_rank_rejects_ranks_of_another_length():
  with pytest.raises(ValueError, match="`ranks`.*`relevance`"):
    tb.normalized_rank(np.ones(2), REL)


def test_shape_checks_still_run_under_jit_and_vmap():
  with pytest.raises(ValueError, match="`scores` and `relevance`"):
    jax.jit(lambda s: tb.truth_ranks(s, np.eye(3, 5, dtype=bool)))(S)
  with pytest.raises(ValueError, match="`scores` and `relevance`"):
    jax.vmap(lambda s: tb.truth_ranks(s, REL))(np.stack([S.T, S.T]))
  with pytest.raises(ValueError, match="`null_scores`.*B = 0"):
    jax.jit(tb.empirical_pvalues)(np.zeros(4), np.zeros((0, 4)))


# --- relevance --------------------------------------------------------------------------

def test_query_without_relevant_candidate_is_rejected_naming_the_row():
  rel = REL.copy()
  rel[1] = False
  message = r"`relevance`: 1 query has no relevant candidate \(row 1\)"
  for fn in (tb.truth_ranks, lambda s, r: tb.relevant_in_top_k(s, r, k=2),
             lambda s, r: tb.evaluate_arrays(np.zeros((3, 2)), np.zeros((4, 2)), r)):
    with pytest.raises(ValueError, match=message):
      fn(S, rel)
  with pytest.raises(ValueError, match="relevance.*no relevant candidate"):
    tb.candidate_auc_f1(np.full((3, 4), 0.5), rel)


def test_candidate_auc_rejects_a_query_whose_relevant_candidates_are_all_masked():
  where = np.ones((3, 4), bool)
  where[2, 2] = False
  with pytest.raises(ValueError, match=r"relevance \(after `where`\).*row 2"):
    tb.candidate_auc_f1(np.full((3, 4), 0.5), REL, where=where)


def test_under_jit_a_query_without_relevant_candidate_gets_nan_rank():
  rel = REL.copy()
  rel[1] = False
  ranks = np.asarray(jax.jit(tb.truth_ranks)(S, rel))
  assert np.isnan(ranks[1]) and not np.isnan(ranks[[0, 2]]).any()


@pytest.mark.parametrize("bad", [REL.astype(int), REL.astype(np.float32),
                                 REL.astype(int).tolist()])
def test_non_boolean_relevance_is_a_type_error(bad):
  with pytest.raises(TypeError, match="`relevance` must be a boolean array"):
    tb.truth_ranks(S, bad)
  with pytest.raises(TypeError, match="`relevance` must be a boolean array"):
    tb.candidate_auc_f1(np.full((3, 4), 0.5), bad)
  with pytest.raises(TypeError, match="`relevance` must be a boolean array"):
    tb.evaluate_arrays(np.zeros((3, 2)), np.zeros((4, 2)), bad)


def test_non_boolean_correct_is_a_type_error():
  with pytest.raises(TypeError, match="`correct` must be a boolean array"):
    tb.auc_f1(np.full(3, 0.5), np.array([1, 0, 1]))


def test_non_numeric_scores_are_a_type_error():
  with pytest.raises(TypeError, match="`scores`"):
    tb.truth_ranks(np.array([["a", "b"]]), np.array([[True, False]]))
  with pytest.raises(TypeError, match="`predictions`"):
    tb.similarity(np.array([[None, 1.0]], dtype=object), np.zeros((1, 2)))


# --- values and options ----------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, np.nan])
def test_pvalues_outside_zero_one_are_rejected(bad):
  p = np.array([0.5, bad, 1.0], np.float32)
  with pytest.raises(ValueError, match=r"`pvalues` must lie in \(0, 1\].*index \(1,\)"):
    tb.auc_f1(p, np.ones(3, bool))
  with pytest.raises(ValueError, match=r"`pvalues` must lie in \(0, 1\]"):
    tb.candidate_auc_f1(np.tile(p, (3, 1))[:, :3], np.eye(3, dtype=bool))


def test_unknown_metric_ties_and_adjust_are_rejected():
  with pytest.raises(ValueError, match="`metric` 'cityblock'"):
    tb.similarity(np.zeros((2, 2)), np.zeros((2, 2)), metric="cityblock")
  with pytest.raises(ValueError, match="`metric`"):
    tb.evaluate_arrays(np.zeros((2, 2)), np.zeros((2, 2)), metric="cityblock")
  with pytest.raises(ValueError, match="`ties` 'random'"):
    tb.truth_ranks(S, REL, ties="random")
  with pytest.raises(ValueError, match="`ties`"):
    tb.recall_at_k(S, REL, k=1, ties="random")
  with pytest.raises(ValueError, match="`ties`"):
    tb.evaluate_arrays(np.zeros((2, 2)), np.zeros((2, 2)), ties="random")
  with pytest.raises(ValueError, match="`adjust`"):
    tb.fraction_called(np.full(3, 0.5), adjust="bonferroni")


def test_k_below_one_is_rejected():
  for fn in (lambda: tb.precision_at_k(S, REL, k=0), lambda: tb.f1_at_k(S, REL, k=0),
             lambda: tb.evaluate_arrays(np.zeros((2, 2)), np.zeros((2, 2)), k=0)):
    with pytest.raises(ValueError, match="`k` must be >= 1"):
      fn()


# --- NaN: counts as -inf ------------------------------------------------------------------------

def test_nan_score_never_ranks_above_a_real_score():
  s = np.array([[1.0, np.nan, 0.0],      # NaN competitor: truth stays first
                [np.nan, 0.0, -5.0],     # NaN truth: below both real scores
                [np.nan, np.nan, 2.0],   # NaN truth tied with a NaN competitor
                [-1e30, np.nan, -1e30]],  # truth tied with a real score, NaN below
               np.float32)
  rel = np.zeros((4, 3), bool)
  rel[:, 0] = True  # the truth is candidate 0 in every row
  np.testing.assert_array_equal(np.asarray(tb.truth_ranks(s, rel)), [1.0, 3.0, 2.5, 1.5])
  np.testing.assert_array_equal(np.asarray(tb.truth_ranks(s, rel, ties="optimistic")),
                                [1.0, 3.0, 2.0, 1.0])


@settings(max_examples=25, deadline=None)
@given(seed=_seeds)
def test_nan_scores_rank_like_minus_infinity(seed):
  rng = np.random.default_rng(seed)
  q, c = 7, 9  # the shapes of test_ranking.py: no new compilations
  s = rng.integers(-3, 3, size=(q, c)).astype(np.float32)
  s[rng.random(s.shape) < 0.3] = np.nan
  rel = np.zeros((q, c), bool)
  rel[np.arange(q), rng.integers(0, c, size=q)] = True
  rel[:, 0] |= rng.random(q) < 0.5
  as_inf = np.where(np.isnan(s), -np.inf, s).astype(np.float32)
  for ties in ("average", "optimistic", "pessimistic"):
    ranks = np.asarray(tb.truth_ranks(s, rel, ties=ties))
    np.testing.assert_array_equal(ranks, np.asarray(tb.truth_ranks(as_inf, rel, ties=ties)))
    np.testing.assert_array_equal(ranks, ref.truth_ranks(s, rel, ties))
    np.testing.assert_allclose(np.asarray(tb.relevant_in_top_k(s, rel, k=2, ties=ties)),
                               ref.relevant_in_top_k(s, rel, 2, ties), rtol=1e-6)
  # a real score never loses to a NaN in the top-1 counts
  counts = np.asarray(tb.top1_counts(s))
  np.testing.assert_allclose(counts, ref.top1_counts(s), rtol=1e-6)


def test_nan_observed_or_null_score_counts_against_the_query():
  scores = np.array([np.nan, 0.5, 0.5], np.float32)
  null = np.array([[-10.0, 0.0, np.nan], [-20.0, 1.0, np.nan]], np.float32)
  p = np.asarray(tb.empirical_pvalues(scores, null))
  # NaN observed: every null beats it; a NaN null (a failed replicate) beats every score
  np.testing.assert_allclose(p, [1.0, 2 / 3, 1.0])
  np.testing.assert_allclose(p, ref.empirical_pvalues(scores, null))


def test_nan_own_score_gets_label_permutation_pvalue_one():
  cross = np.array([[np.nan, 0.0, 1.0],
                    [0.5, 2.0, np.nan],
                    [0.1, 1.0, 3.0]], np.float32)
  p = np.asarray(tb.label_permutation_pvalues(cross))
  np.testing.assert_allclose(p, [1.0, 1 / 3, 1 / 3])
  np.testing.assert_allclose(p, ref.label_permutation_pvalues(cross))


@pytest.mark.parametrize("metric", tb.METRICS)
def test_nan_in_one_reference_only_affects_its_own_column(metric):
  # 12 candidates: more than sqeuclidean refines exactly, so the matmul path is used too
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 7)).astype(np.float32)
  y = rng.normal(size=(12, 7)).astype(np.float32)
  y[:6] = x
  clean = np.asarray(tb.similarity(x, y, metric=metric))
  y_nan = y.copy()
  y_nan[2, 1] = np.nan
  s = np.asarray(tb.similarity(x, y_nan, metric=metric))
  assert np.isnan(s[:, 2]).all()
  others = np.arange(12) != 2
  np.testing.assert_allclose(s[:, others], clean[:, others], rtol=1e-5, atol=1e-5)
  ranks = np.asarray(tb.truth_ranks(s, np.eye(6, 12, dtype=bool)))
  assert ranks[2] == 12.0  # the query whose truth is NaN ranks last
  np.testing.assert_array_equal(ranks[others[:6]], 1.0)


def test_nan_score_at_a_non_relevant_candidate_does_not_leak_into_own_scores():
  rng = np.random.default_rng(1)
  s = rng.normal(size=(3, 4)).astype(np.float32)
  rel = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool)
  s_nan = s.copy()
  s_nan[0, 3] = np.nan  # candidate 3 is relevant only to query 2
  own = np.asarray(tb.own_scores(s_nan, rel))
  np.testing.assert_allclose(own, np.asarray(tb.own_scores(s, rel)), rtol=1e-6)
  cross = np.asarray(tb.cross_own_scores(s_nan, rel))
  assert np.isnan(cross[0, 2])
  mask = np.ones((3, 3), bool)
  mask[0, 2] = False
  np.testing.assert_allclose(cross[mask], np.asarray(tb.cross_own_scores(s, rel))[mask],
                             rtol=1e-6)
  s_inf = s.copy()
  s_inf[1, 0] = np.inf  # relevant to query 0 only
  cross = np.asarray(tb.cross_own_scores(s_inf, rel))
  assert cross[1, 0] == np.inf and np.isfinite(np.delete(cross[1], 0)).all()


def test_nan_prediction_is_refused_and_under_jit_poisons_only_its_query():
  # one NaN policy with tb.label_null: a NaN prediction is refused, not ranked last
  rng = np.random.default_rng(2)
  y = rng.normal(size=(7, 5)).astype(np.float32)
  x = (y + 0.3 * rng.normal(size=y.shape)).astype(np.float32)
  x_nan = x.copy()
  x_nan[3] = np.nan
  with pytest.raises(ValueError, match=r"`predictions` holds 5 non-finite.*\(3, 0\)"):
    tb.evaluate_arrays(x_nan, y)
  res = jax.jit(tb.evaluate_arrays)(x_nan, y)
  clean = tb.evaluate_arrays(x, y)
  assert np.isnan(float(res.pvalues[3])) and np.isnan(float(res.ranks[3]))
  assert not bool(res.correct[3]) and np.isnan(float(res.auc_f1))
  keep = np.arange(7) != 3
  np.testing.assert_array_equal(np.asarray(res.ranks)[keep], np.asarray(clean.ranks)[keep])
  # the other queries' label p-values count the NaN prediction as -inf
  s = np.asarray(tb.similarity(x_nan, y))
  cross = ref.cross_own_scores(s, np.eye(7, dtype=bool))
  np.testing.assert_allclose(np.asarray(res.pvalues)[keep],
                             ref.label_permutation_pvalues(cross)[keep])

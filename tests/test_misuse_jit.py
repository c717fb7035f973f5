"""Validation that survives `jax.jit`: every value check of the array core has a traced twin.

Eagerly a bad value is a `ValueError` naming the argument; under `jax.jit` the
same input gives NaN (per query where the fault is per query, the whole result
otherwise), never a plausible number. Valid inputs give the same result
jitted and eager.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinbench_jax as tb

S = np.array([[3.0, 1.0, 2.0, 0.0],
              [0.5, 2.0, 1.0, 3.0],
              [1.0, 0.0, 4.0, 2.0]], np.float32)
REL = np.eye(3, 4, dtype=bool)
NO_REL = REL.copy()
NO_REL[1] = False  # query 1 has no relevant candidate
P = np.array([0.5, 0.1, 0.9, 1.0, 0.02], np.float32)
CORRECT = np.array([True, False, True, True, False])


def _leaves(x):
  return [np.asarray(a) for a in jax.tree_util.tree_leaves(x)]


def _all_nan(x):
  floats = [a for a in _leaves(x) if np.issubdtype(a.dtype, np.floating)]
  return bool(floats) and all(np.isnan(a).all() for a in floats)


def _with(p, i, value):
  p = np.array(p, copy=True)
  p[i] = value
  return p


# --- AUC-F1 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-0.3, 0.0, 1.5, np.nan, np.inf])
def test_auc_f1_bad_pvalue_raises_eagerly_and_is_nan_under_jit(bad):
  p = _with(P, 2, bad)
  with pytest.raises(ValueError, match=r"`pvalues` must lie in \(0, 1\].*index \(2,\)"):
    tb.auc_f1(p, CORRECT)
  res = jax.jit(tb.auc_f1)(p, CORRECT)
  assert _all_nan(res)  # area and every curve


def test_auc_f1_bad_pvalue_of_a_masked_query_is_ignored_under_jit_too():
  p = _with(P, 2, -0.3)
  where = np.arange(5) != 2
  eager = tb.auc_f1(p, CORRECT, where=where)
  jitted = jax.jit(lambda a, c, w: tb.auc_f1(a, c, where=w))(p, CORRECT, where)
  for a, b in zip(_leaves(jitted), _leaves(eager)):
    np.testing.assert_array_equal(a, b)
  assert np.isfinite(float(jitted.auc))


@pytest.mark.parametrize("bad", [-0.1, 2.0, np.nan])
def test_candidate_auc_f1_bad_pvalue_is_nan_under_jit(bad):
  p = np.full((3, 4), 0.5, np.float32)
  p[1, 3] = bad
  with pytest.raises(ValueError, match="`pvalues` must lie in"):
    tb.candidate_auc_f1(p, REL)
  assert _all_nan(jax.jit(tb.candidate_auc_f1)(p, REL))


def test_candidate_auc_f1_query_without_relevant_candidate_is_nan_under_jit():
  p = np.full((3, 4), 0.5, np.float32)
  with pytest.raises(ValueError, match=r"relevance.*no relevant candidate \(row 1\)"):
    tb.candidate_auc_f1(p, NO_REL)
  assert _all_nan(jax.jit(tb.candidate_auc_f1)(p, NO_REL))
  # the same fault made by `where` masking the only relevant candidate
  where = np.ones((3, 4), bool)
  where[0, 0] = False
  assert _all_nan(jax.jit(lambda a, r, w: tb.candidate_auc_f1(a, r, where=w))(p, REL, where))


# --- p-values ----------------------------------------------------------------------------------

def test_empirical_and_label_pvalues_have_no_value_checks_and_agree_under_jit():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=5).astype(np.float32)
  null = rng.normal(size=(4, 5)).astype(np.float32)
  null[:, 0] = np.nan  # a failed null: counts against the query (p = 1), eager or jitted
  eager = np.asarray(tb.empirical_pvalues(scores, null))
  np.testing.assert_array_equal(np.asarray(jax.jit(tb.empirical_pvalues)(scores, null)), eager)
  assert eager[0] == 1.0
  counts = jax.jit(tb.exceedance_counts)(scores, null)
  assert counts.dtype == jnp.int32  # integers: nothing to poison (see validation.py)
  np.testing.assert_array_equal(np.asarray(counts), np.asarray(tb.exceedance_counts(scores, null)))
  cross = rng.normal(size=(6, 6)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(jax.jit(tb.label_permutation_pvalues)(cross)),
                                np.asarray(tb.label_permutation_pvalues(cross)))


def test_exceedance_counts_checks_the_null_shape_even_under_jit():
  with pytest.raises(ValueError, match=r"`null_scores` must have shape \(B, \*scores.shape\)"):
    jax.jit(tb.exceedance_counts)(np.zeros(4), np.zeros((3, 5)))


@pytest.mark.parametrize("bad", [-1, 5])
def test_pvalues_from_counts_out_of_range_poisons_that_entry(bad):
  counts = np.array([0, 2, bad, 4], np.int32)
  with pytest.raises(ValueError, match=r"`counts` must lie in \[0, 4\].*index \(2,\)"):
    tb.pvalues_from_counts(counts, 4)
  p = np.asarray(jax.jit(tb.pvalues_from_counts, static_argnums=1)(counts, 4))
  np.testing.assert_array_equal(np.isnan(p), [False, False, True, False])
  np.testing.assert_allclose(p[[0, 1, 3]], np.array([1, 3, 5]) / 5.0, rtol=1e-7)


def test_pvalues_from_counts_with_no_null_replicate():
  with pytest.raises(ValueError, match="`n_null` must be a number in"):
    tb.pvalues_from_counts(np.zeros(3, np.int32), 0)
  p = jax.jit(tb.pvalues_from_counts)(np.zeros(3, np.int32), 0)  # traced n_null
  assert np.isnan(np.asarray(p)).all()


@pytest.mark.parametrize("bad", [-0.2, 1.01, np.inf, -np.inf])
def test_benjamini_hochberg_out_of_range_raises_and_poisons_all(bad):
  p = _with(P, 1, bad)
  with pytest.raises(ValueError, match=r"`pvalues` must lie in \[0, 1\].*index \(1,\)"):
    tb.benjamini_hochberg(p)
  assert np.isnan(np.asarray(jax.jit(tb.benjamini_hochberg)(p))).all()


@pytest.mark.parametrize("alpha", [-0.01, 1.5, np.nan])
def test_fraction_called_alpha_outside_zero_one(alpha):
  with pytest.raises(ValueError, match=r"`alpha` must be a number in \[0, 1\]"):
    tb.fraction_called(P, alpha)
  assert np.isnan(float(jax.jit(tb.fraction_called)(P, alpha)))  # traced alpha


@pytest.mark.parametrize("adjust", [None, "bh"])
def test_fraction_called_pvalue_out_of_range(adjust):
  p = _with(P, 0, -0.5)
  with pytest.raises(ValueError, match=r"`pvalues` must lie in \[0, 1\]"):
    tb.fraction_called(p, 0.05, adjust=adjust)
  assert np.isnan(float(jax.jit(lambda a: tb.fraction_called(a, 0.05, adjust=adjust))(p)))


# --- ranks -------------------------------------------------------------------------------------

RANKS = np.array([1.0, 2.5, 4.0], np.float32)


@pytest.mark.parametrize("bad", [0.0, -2.0, 0.5, np.nan, np.inf])
@pytest.mark.parametrize("fn", ["hit_at_k", "reciprocal_rank", "normalized_rank"])
def test_bad_rank_raises_eagerly_and_poisons_its_query_under_jit(fn, bad):
  ranks = _with(RANKS, 1, bad)
  call = {"hit_at_k": lambda r, **kw: tb.hit_at_k(r, k=1, **kw),
          "reciprocal_rank": tb.reciprocal_rank,
          "normalized_rank": lambda r, **kw: tb.normalized_rank(r, REL, **kw)}[fn]
  with pytest.raises(ValueError, match=r"`ranks` must be at least 1.*query 1"):
    call(ranks)
  per_query = np.asarray(jax.jit(lambda r: call(r, reduce_fn=None))(ranks))
  np.testing.assert_array_equal(np.isnan(per_query), [False, True, False])
  assert np.isnan(float(jax.jit(call)(ranks)))  # the mean
  # masked out, the bad query is left alone, eager and jitted alike
  where = np.array([True, False, True])
  eager = float(call(ranks, where=where))
  assert float(jax.jit(lambda r, w: call(r, where=w))(ranks, where)) == eager


def test_normalized_rank_above_the_number_of_candidates():
  ranks = np.array([1.0, 4.5, 2.0], np.float32)  # at most 1 + 3 non-relevant candidates
  with pytest.raises(ValueError, match=r"`ranks`.*at most 1 \+ its number of non-relevant"):
    tb.normalized_rank(ranks, REL)
  got = np.asarray(jax.jit(lambda r: tb.normalized_rank(r, REL, reduce_fn=None))(ranks))
  np.testing.assert_array_equal(np.isnan(got), [False, True, False])
  np.testing.assert_allclose(got[[0, 2]], [0.0, 1 / 3])


def test_hit_at_k_with_k_below_one():
  with pytest.raises(ValueError, match="`k` must be >= 1"):
    tb.hit_at_k(RANKS, k=0)
  assert np.isnan(float(jax.jit(lambda r, k: tb.hit_at_k(r, k=k))(RANKS, 0.5)))  # traced k


def test_truth_ranks_query_without_relevant_candidate():
  with pytest.raises(ValueError, match=r"`relevance`: 1 query has no relevant candidate"):
    tb.truth_ranks(S, NO_REL)
  ranks = np.asarray(jax.jit(tb.truth_ranks)(S, NO_REL))
  np.testing.assert_array_equal(np.isnan(ranks), [False, True, False])
  np.testing.assert_array_equal(ranks[[0, 2]], np.asarray(tb.truth_ranks(S, REL))[[0, 2]])


@pytest.mark.parametrize("fn", [tb.relevant_in_top_k, tb.recall_at_k, tb.precision_at_k,
                                tb.f1_at_k])
def test_at_k_metrics_query_without_relevant_candidate(fn):
  with pytest.raises(ValueError, match="no relevant candidate"):
    fn(S, NO_REL, k=2)
  kw = {} if fn is tb.relevant_in_top_k else {"reduce_fn": None}
  got = np.asarray(jax.jit(lambda s, r: fn(s, r, k=2, **kw))(S, NO_REL))
  want = np.asarray(fn(S, REL, k=2, **kw))
  np.testing.assert_array_equal(np.isnan(got), [False, True, False])
  np.testing.assert_array_equal(got[[0, 2]], want[[0, 2]])
  if fn is not tb.relevant_in_top_k:
    assert np.isnan(float(jax.jit(lambda s, r: fn(s, r, k=2))(S, NO_REL)))


@pytest.mark.parametrize("fn", [tb.relevant_in_top_k, tb.recall_at_k, tb.precision_at_k,
                                tb.f1_at_k])
def test_at_k_metrics_with_k_below_one(fn):
  with pytest.raises(ValueError, match="`k` must be >= 1"):
    fn(S, REL, k=0)
  assert np.isnan(np.asarray(jax.jit(lambda k: fn(S, REL, k=k))(0))).all()  # traced k


def test_top1_counts_has_no_value_checks_and_agrees_under_jit():
  s = _with(S, (1, 2), np.nan)
  eager = np.asarray(tb.top1_counts(s))
  np.testing.assert_array_equal(np.asarray(jax.jit(tb.top1_counts)(s)), eager)
  assert eager.dtype == np.float32 and eager.sum() == 3.0


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_gini_bad_count(bad):
  counts = np.array([3.0, bad, 1.0, 0.0], np.float32)
  with pytest.raises(ValueError, match=r"`counts` must lie in \[0, inf\).*index \(1,\)"):
    tb.gini(counts)
  assert np.isnan(float(jax.jit(tb.gini)(counts)))


# --- similarities and own scores ---------------------------------------------------------------

@pytest.mark.parametrize("bad", [-2, 5])
def test_similarity_exclude_index_out_of_range_poisons_its_query(bad):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 5)).astype(np.float32)
  y = rng.normal(size=(4, 5)).astype(np.float32)
  idx = np.array([[0, -1], [bad, 1], [2, 3]], np.int32)
  with pytest.raises(ValueError, match=r"`exclude` holds 1 gene index\(es\) outside"):
    tb.similarity(x, y, exclude=idx)
  got = np.asarray(jax.jit(lambda a, b, e: tb.similarity(a, b, exclude=e))(x, y, idx))
  assert np.isnan(got[1]).all() and np.isfinite(got[[0, 2]]).all()
  fine = idx.copy()
  fine[1, 0] = -1
  np.testing.assert_allclose(got[[0, 2]], np.asarray(tb.similarity(x, y, exclude=fine))[[0, 2]],
                             rtol=1e-5, atol=1e-5)


def test_own_scores_query_without_relevant_candidate():
  with pytest.raises(ValueError, match=r"`relevance`: 1 query has no relevant candidate"):
    tb.own_scores(S, NO_REL)
  with pytest.raises(ValueError, match=r"`relevance`: 1 query has no relevant candidate"):
    tb.cross_own_scores(S, NO_REL)
  own = np.asarray(jax.jit(tb.own_scores)(S, NO_REL))
  np.testing.assert_array_equal(own, [3.0, np.nan, 4.0])
  cross = np.asarray(jax.jit(tb.cross_own_scores)(S, NO_REL))
  assert np.isnan(cross[:, 1]).all()  # column j: the truth of query j
  np.testing.assert_array_equal(cross[:, [0, 2]], S[:, [0, 2]][:3])


def test_relevance_from_labels_refuses_traced_labels():
  labels = np.array([0, 1, 2])
  with pytest.raises(TypeError, match="`query_labels` is traced"):
    jax.jit(tb.relevance_from_labels)(labels, labels)
  with pytest.raises(TypeError, match="`candidate_labels` is traced"):
    jax.jit(lambda c: tb.relevance_from_labels(labels, c))(labels)
  with pytest.raises(ValueError, match=r"1 query label\(s\) have no candidate.*'3'"):
    tb.relevance_from_labels([0, 3], [0, 1])


# --- the array pipeline ------------------------------------------------------------------------

def _profiles(seed=3, q=6, g=5):
  rng = np.random.default_rng(seed)
  y = rng.normal(size=(q, g)).astype(np.float32)
  return (y + 0.3 * rng.normal(size=y.shape)).astype(np.float32), y


_SUMMARY = ("auc_f1", "hit_at_k", "mrr", "mean_rank", "normalized_rank")


def test_evaluate_arrays_query_without_relevant_candidate_under_jit():
  x, y = _profiles()
  rel = np.eye(6, dtype=bool)
  rel[0, 1] = True  # several relevant candidates: the general path
  bad = rel.copy()
  bad[4] = False
  with pytest.raises(ValueError, match=r"`relevance`: 1 query has no relevant candidate \(row 4\)"):
    tb.evaluate_arrays(x, y, bad)
  res = jax.jit(tb.evaluate_arrays)(x, y, bad)
  clean = tb.evaluate_arrays(x, y, rel)
  for field in ("ranks", "own_scores", "pvalues"):
    got = np.asarray(getattr(res, field))
    assert np.isnan(got[4]) and not np.isnan(np.delete(got, 4)).any(), field
  np.testing.assert_array_equal(np.delete(np.asarray(res.ranks), 4),
                                np.delete(np.asarray(clean.ranks), 4))
  assert not bool(res.correct[4])
  for field in _SUMMARY:
    assert np.isnan(float(getattr(res, field))), field
  assert _all_nan(res.curve)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_evaluate_arrays_non_finite_prediction(bad):
  x, y = _profiles()
  x[2, 1] = bad
  with pytest.raises(ValueError, match=r"`predictions` holds 1 non-finite value\(s\).*\(2, 1\)"):
    tb.evaluate_arrays(x, y)
  res = jax.jit(tb.evaluate_arrays)(x, y)
  assert np.isnan(np.asarray(res.ranks)[2]) and np.isnan(np.asarray(res.pvalues)[2])
  assert np.isfinite(np.delete(np.asarray(res.ranks), 2)).all()
  assert all(np.isnan(float(getattr(res, f))) for f in _SUMMARY)


def test_evaluate_arrays_non_finite_reference_poisons_everything():
  x, y = _profiles()
  y[5, 0] = np.nan
  with pytest.raises(ValueError, match=r"`references` holds 1 non-finite value\(s\).*\(5, 0\)"):
    tb.evaluate_arrays(x, y)
  res = jax.jit(tb.evaluate_arrays)(x, y)
  for field in ("ranks", "own_scores", "pvalues") + _SUMMARY:
    assert np.isnan(np.asarray(getattr(res, field))).all(), field
  assert not np.asarray(res.correct).any()


def test_valid_inputs_are_bit_identical_jitted_and_eager():
  x, y = _profiles(seed=4)
  rel = np.eye(6, dtype=bool)
  rel[2, 3] = True
  for args in ((x, y), (x, y, rel)):
    for a, b in zip(_leaves(jax.jit(tb.evaluate_arrays)(*args)),
                    _leaves(tb.evaluate_arrays(*args))):
      np.testing.assert_array_equal(a, b)
  p = np.asarray(tb.label_permutation_pvalues(tb.cross_own_scores(S[:, :3], np.eye(3, dtype=bool))))
  for a, b in zip(_leaves(jax.jit(tb.auc_f1)(p, CORRECT[:3])), _leaves(tb.auc_f1(p, CORRECT[:3]))):
    np.testing.assert_array_equal(a, b)
  checks = [(tb.benjamini_hochberg, RANKS / 4), (tb.gini, RANKS), (tb.reciprocal_rank, RANKS),
            (lambda r: tb.normalized_rank(r, REL), RANKS), (tb.fraction_called, RANKS / 4),
            (lambda s: tb.f1_at_k(s, REL, k=2), S), (lambda s: tb.own_scores(s, REL), S)]
  for fn, arg in checks:
    np.testing.assert_array_equal(np.asarray(jax.jit(fn)(arg)), np.asarray(fn(arg)))

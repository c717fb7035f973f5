"""Empirical and label-permutation p-values, own scores, Benjamini–Hochberg (SPEC §3)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
import twinbench_jax as tb

_seeds = st.integers(0, 2**31 - 1)


def _relevance(rng, q, c, max_rel):
  rel = np.zeros((q, c), bool)
  for i in range(q):
    rel[i, rng.choice(c, size=rng.integers(1, max_rel + 1), replace=False)] = True
  return rel


# --- empirical p-values -----------------------------------------------------------

@pytest.mark.parametrize("shape", [(8,), (4, 5)])
def test_empirical_pvalues_match_reference_with_tied_nulls(shape):
  rng = np.random.default_rng(0)
  b = 6
  # integer values: many nulls exactly equal to the observed score
  scores = rng.integers(0, 4, size=shape).astype(np.float32)
  null = rng.integers(0, 4, size=(b,) + shape).astype(np.float32)
  got = np.asarray(tb.empirical_pvalues(scores, null))
  assert got.shape == shape
  np.testing.assert_allclose(got, ref.empirical_pvalues(scores, null), rtol=1e-6)


def test_null_equal_to_observed_counts_as_exceedance():
  scores = np.array([1.0, 2.0, 3.0], np.float32)
  null = np.tile(scores, (9, 1))
  np.testing.assert_array_equal(np.asarray(tb.empirical_pvalues(scores, null)), 1.0)


def test_observed_above_every_null_gets_the_smallest_pvalue():
  scores = np.array([5.0, 6.0], np.float32)
  null = np.zeros((19, 2), np.float32)
  np.testing.assert_allclose(np.asarray(tb.empirical_pvalues(scores, null)), 1 / 20)


def test_counts_from_chunks_of_replicates_add_up_to_the_full_pvalue():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(4, 5)).astype(np.float32)
  null = rng.normal(size=(10, 4, 5)).astype(np.float32)
  counts = sum(np.asarray(tb.exceedance_counts(scores, null[i:i + 3])) for i in range(0, 10, 3))
  np.testing.assert_allclose(np.asarray(tb.pvalues_from_counts(counts, 10)),
                             np.asarray(tb.empirical_pvalues(scores, null)), rtol=1e-6)


# --- label permutation -------------------------------------------------------------

def test_label_permutation_pvalues_match_reference_with_ties():
  rng = np.random.default_rng(2)
  for _ in range(3):
    cross = rng.integers(0, 3, size=(7, 7)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(tb.label_permutation_pvalues(cross)),
                               ref.label_permutation_pvalues(cross), rtol=1e-6)


def test_label_permutation_of_identical_predictions_is_one():
  # every prediction is the same vector: m(x_q', t_q) = m(x_q, t_q) for all q'
  rng = np.random.default_rng(3)
  y = rng.normal(size=(6, 4)).astype(np.float32)
  x = np.tile(rng.normal(size=(1, 4)).astype(np.float32), (6, 1))
  cross = tb.cross_own_scores(tb.similarity(x, y), np.eye(6, dtype=bool))
  np.testing.assert_array_equal(np.asarray(tb.label_permutation_pvalues(cross)), 1.0)


def test_label_permutation_of_perfect_predictions_is_one_over_q():
  rng = np.random.default_rng(4)
  y = rng.normal(size=(6, 4)).astype(np.float32)
  cross = tb.cross_own_scores(tb.similarity(y, y), np.eye(6, dtype=bool))
  np.testing.assert_allclose(np.asarray(tb.label_permutation_pvalues(cross)), 1 / 6)


# --- own scores --------------------------------------------------------------------

@pytest.mark.parametrize("max_rel", [1, 3])
def test_own_and_cross_own_scores_match_reference(max_rel):
  # max_rel = 1 takes the gather path, 3 the weighted matmul path
  rng = np.random.default_rng(5)
  s = rng.normal(size=(6, 8)).astype(np.float32)
  rel = _relevance(rng, 6, 8, max_rel)
  cross = np.asarray(tb.cross_own_scores(s, rel))
  np.testing.assert_allclose(cross, ref.cross_own_scores(s, rel), rtol=1e-5, atol=1e-6)
  own = np.asarray(tb.own_scores(s, rel))
  np.testing.assert_allclose(own, ref.own_scores(s, rel), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.diagonal(cross), own, rtol=1e-6, atol=1e-6)


def test_equal_mean_scores_tie_exactly_and_count_as_exceedances():
  # Both predictions have mean similarity -17/3 to the three candidates of query 0.
  # Averaging as sum(s * (1/3)) rounds the two differently; sum(s) / 3 does not.
  s = np.array([[14.0, -14.0, -17.0, 0.0],
                [13.0, -13.0, -17.0, 1.0]], np.float32)
  rel = np.array([[1, 1, 1, 0], [0, 0, 0, 1]], bool)
  cross = np.asarray(tb.cross_own_scores(s, rel))
  assert cross[0, 0] == cross[1, 0]
  assert float(tb.own_scores(s, rel)[0]) == pytest.approx(-17 / 3)
  np.testing.assert_array_equal(np.asarray(tb.label_permutation_pvalues(cross)), [1.0, 0.5])


# --- Benjamini–Hochberg -------------------------------------------------------------

def test_benjamini_hochberg_matches_reference_and_scipy():
  rng = np.random.default_rng(6)
  for _ in range(3):
    # a grid of values: many ties
    p = (rng.integers(1, 21, size=15) / 20).astype(np.float32)
    got = np.asarray(tb.benjamini_hochberg(p))
    np.testing.assert_allclose(got, ref.benjamini_hochberg(p), rtol=1e-6)
    np.testing.assert_allclose(got, scipy.stats.false_discovery_control(p, method="bh"),
                               rtol=1e-5)
  p = rng.uniform(1e-4, 1, size=15).astype(np.float32)
  np.testing.assert_allclose(np.asarray(tb.benjamini_hochberg(p)),
                             scipy.stats.false_discovery_control(p), rtol=1e-5)


def test_benjamini_hochberg_is_monotone_and_never_below_the_raw_pvalue():
  rng = np.random.default_rng(7)
  p = rng.uniform(0.001, 1, size=15).astype(np.float32)
  adj = np.asarray(tb.benjamini_hochberg(p))
  order = np.argsort(p)
  assert np.all(np.diff(adj[order]) >= 0)
  assert np.all(adj >= p - 1e-7) and np.all(adj <= 1)


def test_fraction_called_raw_and_adjusted():
  p = np.array([0.001, 0.01, 0.02, 0.04, 0.3, 0.9], np.float32)
  assert float(tb.fraction_called(p)) == pytest.approx(4 / 6)
  assert float(tb.fraction_called(p, 0.01)) == pytest.approx(2 / 6)
  adj = ref.benjamini_hochberg(p)
  assert float(tb.fraction_called(p, adjust="bh")) == pytest.approx(np.mean(adj <= 0.05))
  assert float(tb.fraction_called(p, adjust="bh")) < float(tb.fraction_called(p))


# --- jit and vmap --------------------------------------------------------------------

def test_pvalue_functions_jit_equals_eager():
  rng = np.random.default_rng(8)
  scores = rng.normal(size=(5,)).astype(np.float32)
  null = rng.normal(size=(7, 5)).astype(np.float32)
  cross = rng.normal(size=(5, 5)).astype(np.float32)
  p = rng.uniform(0.01, 1, size=5).astype(np.float32)
  s = rng.normal(size=(5, 6)).astype(np.float32)
  rel = _relevance(rng, 5, 6, 2)
  pairs = [
      (tb.empirical_pvalues, (scores, null)),
      (tb.label_permutation_pvalues, (cross,)),
      (tb.benjamini_hochberg, (p,)),
      (tb.fraction_called, (p,)),
      (tb.cross_own_scores, (s, rel)),
      (tb.own_scores, (s, rel)),
  ]
  for fn, args in pairs:
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(*args)), np.asarray(fn(*args)),
                               rtol=1e-6, err_msg=fn.__name__)


def test_pvalue_functions_vmap_equals_loop():
  rng = np.random.default_rng(9)
  scores = rng.normal(size=(3, 5)).astype(np.float32)
  null = rng.integers(-1, 2, size=(3, 7, 5)).astype(np.float32)
  cross = rng.integers(0, 3, size=(3, 5, 5)).astype(np.float32)
  p = rng.uniform(0.01, 1, size=(3, 5)).astype(np.float32)
  s = rng.normal(size=(3, 5, 6)).astype(np.float32)
  rel = _relevance(rng, 5, 6, 2)
  cases = [
      (tb.empirical_pvalues, (scores, null)),
      (tb.label_permutation_pvalues, (cross,)),
      (tb.benjamini_hochberg, (p,)),
      (lambda a: tb.cross_own_scores(a, rel), (s,)),
      (lambda a: tb.own_scores(a, rel), (s,)),
  ]
  for fn, args in cases:
    batched = np.asarray(jax.vmap(fn)(*args))
    looped = np.stack([np.asarray(fn(*[a[i] for a in args])) for i in range(3)])
    np.testing.assert_allclose(batched, looped, rtol=1e-6)


# --- properties ----------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=_seeds, b=st.sampled_from([1, 4, 19]))
def test_empirical_pvalues_lie_in_one_over_b_plus_one_to_one(seed, b):
  rng = np.random.default_rng(seed)
  scores = rng.integers(-2, 3, size=(6,)).astype(np.float32)
  null = rng.integers(-2, 3, size=(b, 6)).astype(np.float32)
  p = np.asarray(tb.empirical_pvalues(scores, null))
  assert np.all(p >= 1 / (b + 1) - 1e-7) and np.all(p <= 1 + 1e-7)
  # raising an observed score never raises its p-value
  p_up = np.asarray(tb.empirical_pvalues(scores + 1.0, null))
  assert np.all(p_up <= p + 1e-7)


@settings(max_examples=40, deadline=None)
@given(seed=_seeds)
def test_label_permutation_pvalues_bounds_and_query_reordering(seed):
  rng = np.random.default_rng(seed)
  q = 6
  cross = rng.integers(0, 4, size=(q, q)).astype(np.float32)
  p = np.asarray(tb.label_permutation_pvalues(cross))
  assert np.all(p >= 1 / q - 1e-7) and np.all(p <= 1 + 1e-7)
  perm = rng.permutation(q)
  p_perm = np.asarray(tb.label_permutation_pvalues(cross[np.ix_(perm, perm)]))
  np.testing.assert_allclose(p_perm, p[perm], rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=_seeds)
def test_benjamini_hochberg_reordering_permutes_the_adjusted_values(seed):
  rng = np.random.default_rng(seed)
  p = (rng.integers(1, 11, size=15) / 10).astype(np.float32)
  perm = rng.permutation(15)
  np.testing.assert_allclose(np.asarray(tb.benjamini_hochberg(p[perm])),
                             np.asarray(tb.benjamini_hochberg(p))[perm], rtol=1e-6)

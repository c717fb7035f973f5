"""Domain checks: values outside a function's domain are refused, and NaN has one meaning.

- A NaN null score is a failed replicate and counts against the observed
  score, so a failed null never makes a query significant.
- Benjamini-Hochberg keeps a NaN p-value NaN and adjusts the others among themselves.
- Ranks start at 1, counts are non-negative, α and p-values lie in [0, 1].
- `evaluate_arrays` refuses non-finite profiles with the message of `tb.label_null`.
- A similarity needs at least one gene.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
import twinbench_jax as tb

_seeds = st.integers(0, 2**31 - 1)


# --- empirical p-values: a failed null never makes a query significant --------------------------

@pytest.mark.parametrize("shape", [(5,), (3, 4)])
def test_an_all_nan_null_gives_p_one_everywhere(shape):
  rng = np.random.default_rng(0)
  scores = rng.normal(size=shape).astype(np.float32)
  null = np.full((7,) + shape, np.nan, np.float32)
  np.testing.assert_array_equal(np.asarray(tb.empirical_pvalues(scores, null)), 1.0)
  np.testing.assert_array_equal(np.asarray(tb.exceedance_counts(scores, null)), 7)


@settings(max_examples=25, deadline=None)
@given(seed=_seeds)
def test_a_nan_null_score_counts_as_an_exceedance(seed):
  rng = np.random.default_rng(seed)
  scores = rng.integers(-2, 3, size=6).astype(np.float32)
  null = rng.integers(-2, 3, size=(5, 6)).astype(np.float32)
  null[rng.random(null.shape) < 0.3] = np.nan
  scores[rng.random(6) < 0.2] = np.nan
  p = np.asarray(tb.empirical_pvalues(scores, null))
  np.testing.assert_allclose(p, ref.empirical_pvalues(scores, null), rtol=1e-6)
  # the same as a null replicate scoring +inf: never more significant than a null without it
  as_plus_inf = np.where(np.isnan(null), np.inf, null)
  np.testing.assert_array_equal(p, np.asarray(tb.empirical_pvalues(scores, as_plus_inf)))
  assert (p >= np.asarray(tb.empirical_pvalues(scores, np.where(np.isnan(null), -np.inf,
                                                                     null)))).all()


def test_exceedance_counts_refuses_a_null_of_another_shape():
  # used to broadcast [3, 4] against [4, 1] silently
  with pytest.raises(ValueError, match=r"`null_scores` must have shape \(B, \*scores.shape\) = "
                                       r"\(B, 4, 1\), got \(3, 4\)"):
    tb.exceedance_counts(np.zeros((4, 1)), np.zeros((3, 4)))


def test_pvalues_from_counts_refuses_non_numeric_counts():
  with pytest.raises(TypeError, match="`counts` must be numeric"):
    tb.pvalues_from_counts(np.array(["a"]), 3)


# --- Benjamini-Hochberg ------------------------------------------------------------------------

def test_benjamini_hochberg_refuses_the_value_of_the_issue():
  with pytest.raises(ValueError, match=r"`pvalues` must lie in \[0, 1\] \(NaN allowed\); found "
                                       r"np.float32\(-0.6\) at index \(0,\)"):
    tb.benjamini_hochberg(np.array([-0.6, 0.2, 0.5], np.float32))


@settings(max_examples=30, deadline=None)
@given(seed=_seeds)
def test_benjamini_hochberg_nan_stays_nan_and_the_rest_is_adjusted_among_itself(seed):
  rng = np.random.default_rng(seed)
  p = rng.choice([0.0, 0.01, 0.2, 0.5, 1.0], size=9).astype(np.float32)
  p[rng.random(9) < 0.4] = np.nan
  got = np.asarray(tb.benjamini_hochberg(p))
  nan = np.isnan(p)
  np.testing.assert_array_equal(np.isnan(got), nan)
  if (~nan).any():
    np.testing.assert_allclose(got[~nan], ref.benjamini_hochberg(p[~nan]), rtol=1e-6)


def test_benjamini_hochberg_closed_form_with_one_nan():
  # n = 3 tested values: 0.01 * 3 / 1, 0.02 * 3 / 2, 0.04 * 3 / 3
  p = np.array([0.02, np.nan, 0.01, 0.04], np.float32)
  np.testing.assert_allclose(np.asarray(tb.benjamini_hochberg(p)), [0.03, np.nan, 0.03, 0.04],
                             rtol=1e-6)
  assert np.isnan(np.asarray(tb.benjamini_hochberg(np.full(3, np.nan, np.float32)))).all()
  np.testing.assert_array_equal(np.asarray(tb.benjamini_hochberg(np.array([0.0, 1.0]))),
                                [0.0, 1.0])  # the closed ends of [0, 1] are fine


# --- fraction called ----------------------------------------------------------------------------

def test_fraction_called_alpha_ends_and_nan_pvalues():
  p = np.array([0.01, 0.5, np.nan, 1.0], np.float32)
  assert float(tb.fraction_called(p, 0.0)) == 0.0
  assert float(tb.fraction_called(p, 1.0)) == 0.75  # the NaN (untested) query is never called
  assert float(tb.fraction_called(p, 0.05, adjust="bh")) == 0.25
  with pytest.raises(ValueError, match="`alpha` must be a number in"):
    tb.fraction_called(p, np.array([0.05, 0.1]))


# --- ranks and counts ---------------------------------------------------------------------------

def test_rank_zero_is_refused_rather_than_an_infinite_mrr():
  with pytest.raises(ValueError, match=r"`ranks` must be at least 1 .*found np.float32\(0.0\) "
                                       r"at query 0"):
    tb.reciprocal_rank(np.array([0.0, 2.0], np.float32))
  with pytest.raises(ValueError, match=r"`ranks`.*found np.float32\(-1.0\) at query 1"):
    tb.hit_at_k(np.array([1.0, -1.0], np.float32), k=1)


def test_valid_ranks_keep_their_closed_forms():
  ranks = np.array([1.0, 2.0, 4.0], np.float32)
  assert float(tb.hit_at_k(ranks, k=2)) == pytest.approx(2 / 3)
  assert float(tb.reciprocal_rank(ranks)) == pytest.approx((1 + 0.5 + 0.25) / 3)
  rel = np.eye(3, 4, dtype=bool)  # 3 non-relevant candidates per query: ranks up to 4
  np.testing.assert_allclose(np.asarray(tb.normalized_rank(ranks, rel, reduce_fn=None)),
                             [0.0, 1 / 3, 1.0])


@pytest.mark.parametrize("bad", [-0.5, -np.inf])
def test_gini_refuses_negative_counts(bad):
  with pytest.raises(ValueError, match=r"`counts` must lie in \[0, inf\)"):
    tb.gini(np.array([2.0, bad, 1.0]))


@settings(max_examples=25, deadline=None)
@given(seed=_seeds)
def test_gini_of_non_negative_counts_matches_the_pairwise_formula(seed):
  x = np.random.default_rng(seed).integers(0, 5, size=7).astype(np.float32)
  assert float(tb.gini(x)) == pytest.approx(ref.gini(x), abs=1e-6)


# --- one NaN policy for predictions -------------------------------------------------------------

def _profiles():
  rng = np.random.default_rng(5)
  y = rng.normal(size=(5, 4)).astype(np.float32)
  return (y + 0.2 * rng.normal(size=y.shape)).astype(np.float32), y


@pytest.mark.parametrize("which,bad", [("predictions", np.nan), ("predictions", np.inf),
                                       ("references", np.nan), ("references", -np.inf)])
def test_evaluate_arrays_refuses_non_finite_profiles_like_label_null(which, bad):
  x, y = _profiles()
  (x if which == "predictions" else y)[3, 2] = bad
  with pytest.raises(ValueError) as from_null:
    tb.label_null(x, y)
  with pytest.raises(ValueError) as from_arrays:
    tb.evaluate_arrays(x, y)
  assert str(from_arrays.value) == str(from_null.value)
  assert f"`{which}` holds 1 non-finite value(s)" in str(from_arrays.value)
  assert "(3, 2)" in str(from_arrays.value)


# --- zero genes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [tb.similarity, tb.evaluate_arrays])
def test_zero_genes_are_refused_naming_the_arguments_and_shapes(fn):
  x, y = np.zeros((3, 0), np.float32), np.zeros((3, 0), np.float32)
  message = r"`predictions` and `references` have no features \(genes\): shapes \(3, 0\) and \(3, 0\)"
  with pytest.raises(ValueError, match=message):
    fn(x, y)
  with pytest.raises(ValueError, match=message):  # a shape: refused under jit as well
    jax.jit(fn)(x, y)

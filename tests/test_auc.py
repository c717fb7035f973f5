"""Exact AUC-F1 at p-value, query and candidate level (SPEC §4)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
import twinbench_jax as tb

_seeds = st.integers(0, 2**31 - 1)
Q, C, B = 8, 6, 9


def _grid_pvalues(rng, shape, b=B):
  """p-values on the grid k/(B+1) of an empirical null: many duplicates."""
  return (rng.integers(1, b + 2, size=shape) / (b + 1)).astype(np.float32)


def _relevance(rng, q=Q, c=C, max_rel=2):
  rel = np.zeros((q, c), bool)
  for i in range(q):
    rel[i, rng.choice(c, size=rng.integers(1, max_rel + 1), replace=False)] = True
  return rel


# one relevant candidate per query (two queries share a candidate when Q > C)
ONE_EACH = np.zeros((Q, C), bool)
ONE_EACH[np.arange(Q), np.arange(Q) % C] = True


def _last_of_each_run(alphas):
  """Index of the last entry of each run of equal alphas (where the curve takes its value)."""
  alphas = np.asarray(alphas)
  return [i for i in range(len(alphas)) if i == len(alphas) - 1 or alphas[i + 1] != alphas[i]]


# --- against the reference -----------------------------------------------------------

def test_auc_f1_and_its_curve_match_reference():
  rng = np.random.default_rng(0)
  for _ in range(5):
    p = _grid_pvalues(rng, Q)
    correct = rng.random(Q) < 0.5
    res = tb.auc_f1(p, correct)
    assert float(res.auc) == pytest.approx(ref.auc_f1(p, correct), abs=1e-6)
    alphas = np.asarray(res.alphas)
    assert alphas.shape == (Q,) and np.all(np.diff(alphas) >= 0)
    for i in _last_of_each_run(alphas):
      f1, prec, rec = ref.query_curve_at(p, correct, float(alphas[i]))
      assert float(res.f1[i]) == pytest.approx(f1, abs=1e-6)
      assert float(res.precision[i]) == pytest.approx(prec, abs=1e-6)
      assert float(res.recall[i]) == pytest.approx(rec, abs=1e-6)


def test_auc_f1_matches_reference_on_continuous_pvalues():
  rng = np.random.default_rng(1)
  p = rng.uniform(0.001, 1, size=Q).astype(np.float32)
  correct = rng.random(Q) < 0.6
  assert float(tb.auc_f1(p, correct).auc) == pytest.approx(ref.auc_f1(p, correct), abs=1e-6)


def test_auc_f1_hand_computed_value():
  # [0.25, 0.5): 1 called, 1 TP -> F1 = 2/5;  [0.5, 1): 3 called, 2 TP -> F1 = 4/7
  p = np.array([0.25, 0.5, 0.5, 1.0], np.float32)
  correct = np.array([True, False, True, True])
  assert float(tb.auc_f1(p, correct).auc) == pytest.approx(0.25 * 2 / 5 + 0.5 * 4 / 7)


def test_candidate_auc_f1_and_its_curve_match_reference():
  rng = np.random.default_rng(2)
  for _ in range(4):
    p = _grid_pvalues(rng, (Q, C))
    rel = _relevance(rng)
    res = tb.candidate_auc_f1(p, rel)
    assert float(res.auc) == pytest.approx(ref.candidate_auc_f1(p, rel), abs=1e-6)
    alphas = np.asarray(res.alphas)
    assert alphas.shape == (Q * C,) and np.all(np.diff(alphas) >= 0)
    for i in _last_of_each_run(alphas):
      f1, prec, rec = ref.candidate_curve_at(p, rel, float(alphas[i]))
      assert float(res.f1[i]) == pytest.approx(f1, abs=1e-5)
      assert float(res.precision[i]) == pytest.approx(prec, abs=1e-5)
      assert float(res.recall[i]) == pytest.approx(rec, abs=1e-5)


# --- closed forms ---------------------------------------------------------------------

@pytest.mark.parametrize("b", [1, 9, 99])
def test_perfect_model_scores_one_minus_one_over_b_plus_one(b):
  p = np.full(Q, 1 / (b + 1), np.float32)
  assert float(tb.auc_f1(p, np.ones(Q, bool)).auc) == pytest.approx(1 - 1 / (b + 1))
  pc = np.where(ONE_EACH, 1 / (b + 1), 1.0).astype(np.float32)
  assert float(tb.candidate_auc_f1(pc, ONE_EACH).auc) == pytest.approx(
      1 - 1 / (b + 1))


def test_input_ignoring_model_scores_zero_even_when_correct():
  p = np.ones(Q, np.float32)
  for correct in (np.ones(Q, bool), np.zeros(Q, bool)):
    assert float(tb.auc_f1(p, correct).auc) == 0.0
  rng = np.random.default_rng(3)
  assert float(tb.candidate_auc_f1(np.ones((Q, C), np.float32), _relevance(rng)).auc) == 0.0


def test_called_but_never_correct_scores_zero():
  rng = np.random.default_rng(4)
  assert float(tb.auc_f1(_grid_pvalues(rng, Q), np.zeros(Q, bool)).auc) == 0.0


def test_where_mask_equals_truncated_input():
  rng = np.random.default_rng(5)
  p = _grid_pvalues(rng, Q)
  correct = rng.random(Q) < 0.5
  where = np.array([True, False, True, True, False, True, True, False])
  p_masked = np.where(where, p, np.nan).astype(np.float32)  # placeholders are ignored
  assert float(tb.auc_f1(p_masked, correct, where=where).auc) == pytest.approx(
      float(tb.auc_f1(p[where], correct[where]).auc), abs=1e-7)
  assert float(tb.auc_f1(p, correct, where=np.zeros(Q, bool)).auc) == 0.0
  pc = _grid_pvalues(rng, (Q, C))
  rel = np.zeros((Q, C), bool)
  rel[np.arange(Q), np.arange(Q) % (C - 2)] = True
  keep = np.ones((Q, C), bool)
  keep[:, -2:] = False  # the last two candidates do not exist for any query
  assert float(tb.candidate_auc_f1(pc, rel, where=keep).auc) == pytest.approx(
      float(tb.candidate_auc_f1(pc[:, :-2], rel[:, :-2]).auc), abs=1e-6)


# --- jit and vmap ----------------------------------------------------------------------

def test_auc_jit_equals_eager():
  rng = np.random.default_rng(6)
  p, correct = _grid_pvalues(rng, Q), rng.random(Q) < 0.5
  pc, rel = _grid_pvalues(rng, (Q, C)), _relevance(rng)
  for fn, args in ((tb.auc_f1, (p, correct)), (tb.candidate_auc_f1, (pc, rel))):
    eager, jitted = fn(*args), jax.jit(fn)(*args)
    for field in eager._fields:
      np.testing.assert_allclose(np.asarray(getattr(jitted, field)),
                                 np.asarray(getattr(eager, field)), rtol=1e-6, atol=1e-7)


def test_auc_vmap_equals_loop():
  rng = np.random.default_rng(7)
  n = 4
  p = _grid_pvalues(rng, (n, Q))
  correct = rng.random((n, Q)) < 0.5
  batched = jax.vmap(tb.auc_f1)(p, correct)
  for i in range(n):
    one = tb.auc_f1(p[i], correct[i])
    for field in one._fields:
      np.testing.assert_allclose(np.asarray(getattr(batched, field))[i],
                                 np.asarray(getattr(one, field)), rtol=1e-6, atol=1e-7)
  pc = _grid_pvalues(rng, (n, Q, C))
  rel = _relevance(rng)
  batched = np.asarray(jax.vmap(lambda a: tb.candidate_auc_f1(a, rel).auc)(pc))
  np.testing.assert_allclose(batched, [float(tb.candidate_auc_f1(a, rel).auc) for a in pc],
                             rtol=1e-6)


def test_vmap_of_ranks_and_auc_over_score_matrices_equals_loop():
  rng = np.random.default_rng(8)
  n = 4
  scores = rng.normal(size=(n, Q, C)).astype(np.float32)
  null = rng.normal(size=(n, B, Q, C)).astype(np.float32)
  rel = ONE_EACH

  def score(s, s_null):
    own = tb.own_scores(s, rel)
    null_own = jax.vmap(lambda a: tb.own_scores(a, rel))(s_null)
    p = tb.empirical_pvalues(own, null_own)
    return tb.auc_f1(p, tb.truth_ranks(s, rel) <= 1).auc

  batched = np.asarray(jax.vmap(score)(scores, null))
  looped = [float(score(scores[i], null[i])) for i in range(n)]
  np.testing.assert_allclose(batched, looped, rtol=1e-6)
  assert np.ptp(looped) > 0  # the batch members differ


# --- properties ---------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=_seeds)
def test_auc_bounds_and_query_reordering(seed):
  rng = np.random.default_rng(seed)
  p = _grid_pvalues(rng, Q)
  correct = rng.random(Q) < 0.5
  res = tb.auc_f1(p, correct)
  auc = float(res.auc)
  assert -1e-7 <= auc <= 1 - p.min() + 1e-6
  f1 = np.asarray(res.f1)
  assert np.all((f1 >= 0) & (f1 <= 1 + 1e-6))
  perm = rng.permutation(Q)
  assert float(tb.auc_f1(p[perm], correct[perm]).auc) == pytest.approx(auc, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=_seeds)
def test_making_one_query_correct_never_lowers_the_auc(seed):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(Q, C)).astype(np.float32)
  rel = ONE_EACH
  p = _grid_pvalues(rng, Q)
  before = float(tb.auc_f1(p, tb.truth_ranks(scores, rel) <= 1).auc)
  # move one query's truth to rank 1
  q = int(rng.integers(Q))
  moved = scores.copy()
  moved[q, q % C] = scores[q].max() + 1.0
  assert float(tb.truth_ranks(moved, rel)[q]) == 1.0
  after = float(tb.auc_f1(p, tb.truth_ranks(moved, rel) <= 1).auc)
  assert after >= before


@settings(max_examples=40, deadline=None)
@given(seed=_seeds)
def test_lowering_the_pvalue_of_a_correct_query_never_lowers_the_auc(seed):
  rng = np.random.default_rng(seed)
  p = _grid_pvalues(rng, Q)
  correct = rng.random(Q) < 0.5
  correct[0] = True
  lower = p.copy()
  lower[0] = np.float32(1 / (B + 1))
  assert float(tb.auc_f1(lower, correct).auc) >= float(tb.auc_f1(p, correct).auc) - 1e-7


@settings(max_examples=40, deadline=None)
@given(seed=_seeds)
def test_candidate_auc_bounds_and_reordering(seed):
  rng = np.random.default_rng(seed)
  p = _grid_pvalues(rng, (Q, C))
  rel = _relevance(rng)
  res = tb.candidate_auc_f1(p, rel)
  auc = float(res.auc)
  assert -1e-7 <= auc <= 1 - p.min() + 1e-6
  assert np.all((np.asarray(res.f1) >= -1e-7) & (np.asarray(res.f1) <= 1 + 1e-6))
  pq, pc = rng.permutation(Q), rng.permutation(C)
  assert float(tb.candidate_auc_f1(p[np.ix_(pq, pc)], rel[np.ix_(pq, pc)]).auc) == pytest.approx(
      auc, abs=1e-6)
  # retrieving a relevant candidate earlier never hurts
  q, c = np.argwhere(rel)[0]
  better = p.copy()
  better[q, c] = np.float32(1 / (B + 1))
  assert float(tb.candidate_auc_f1(better, rel).auc) >= auc - 1e-6

"""Rank of the truth, the "at K" family and popularity diagnostics (SPEC §2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
import twinbench_jax as tb

TIES = ("average", "optimistic", "pessimistic")
Q, C = 7, 9


def _tied_scores(rng, q=Q, c=C, levels=4):
  """Integer-valued scores from a few levels: plenty of exact ties."""
  return rng.integers(0, levels, size=(q, c)).astype(np.float32)


def _relevance(rng, q=Q, c=C, max_rel=3):
  """Random relevance with 1..max_rel relevant candidates per query."""
  rel = np.zeros((q, c), bool)
  for i in range(q):
    rel[i, rng.choice(c, size=rng.integers(1, max_rel + 1), replace=False)] = True
  return rel


@pytest.mark.parametrize("ties", TIES)
def test_truth_ranks_match_loop_reference_with_ties_and_several_relevant(ties):
  rng = np.random.default_rng(0)
  for _ in range(5):
    s, rel = _tied_scores(rng), _relevance(rng)
    got = np.asarray(tb.truth_ranks(s, rel, ties=ties))
    np.testing.assert_array_equal(got, ref.truth_ranks(s, rel, ties))


def test_truth_ranks_on_constructed_ties():
  s = np.array([[3.0, 3.0, 3.0, 1.0],   # truth tied with two others
                [5.0, 4.0, 5.0, 1.0],   # best relevant (col 0) tied with col 2; col 3 relevant too
                [0.0, 9.0, 8.0, 7.0]],  # truth last, no ties
               np.float32)
  rel = np.array([[1, 0, 0, 0], [1, 0, 0, 1], [1, 0, 0, 0]], bool)
  expected = {"average": [2.0, 1.5, 4.0], "optimistic": [1.0, 1.0, 4.0],
              "pessimistic": [3.0, 2.0, 4.0]}
  for ties, want in expected.items():
    np.testing.assert_array_equal(np.asarray(tb.truth_ranks(s, rel, ties=ties)), want)


def test_default_tie_rule_is_average():
  rng = np.random.default_rng(1)
  s, rel = _tied_scores(rng), _relevance(rng)
  np.testing.assert_array_equal(np.asarray(tb.truth_ranks(s, rel)),
                                np.asarray(tb.truth_ranks(s, rel, ties="average")))


def test_other_relevant_candidates_never_push_the_truth_down():
  s = np.array([[1.0, 9.0, 8.0, 0.0]], np.float32)
  one = np.array([[0, 1, 0, 0]], bool)
  two = np.array([[0, 1, 1, 0]], bool)  # col 2 is relevant and scored just below col 1
  np.testing.assert_array_equal(np.asarray(tb.truth_ranks(s, one)), [1.0])
  np.testing.assert_array_equal(np.asarray(tb.truth_ranks(s, two)), [1.0])


def test_hit_mrr_and_normalized_rank_match_reference():
  rng = np.random.default_rng(2)
  s, rel = _tied_scores(rng), _relevance(rng)
  ranks = tb.truth_ranks(s, rel)
  r = ref.truth_ranks(s, rel)
  for k in (1, 2, 3.5):
    np.testing.assert_allclose(float(tb.hit_at_k(ranks, k=k)), ref.hit_at_k(r, k), rtol=1e-6)
  np.testing.assert_allclose(float(tb.reciprocal_rank(ranks)), ref.mrr(r), rtol=1e-6)
  np.testing.assert_allclose(float(tb.normalized_rank(ranks, rel)),
                             ref.normalized_rank(r, rel), rtol=1e-6)


def test_reduce_fn_none_keeps_per_query_values():
  ranks = np.array([1.0, 2.0, 4.0, 1.5], np.float32)
  rel = np.eye(4, 5, dtype=bool)
  np.testing.assert_array_equal(np.asarray(tb.hit_at_k(ranks, k=1.5, reduce_fn=None)),
                                [1, 0, 0, 1])
  np.testing.assert_allclose(np.asarray(tb.reciprocal_rank(ranks, reduce_fn=None)),
                             [1.0, 0.5, 0.25, 1 / 1.5])
  np.testing.assert_allclose(np.asarray(tb.normalized_rank(ranks, rel, reduce_fn=None)),
                             [0.0, 0.25, 0.75, 0.125])


def test_where_mask_equals_truncated_input_and_fully_masked_gives_zero():
  ranks = np.array([1.0, 3.0, 2.0, 1.0, 5.0], np.float32)
  where = np.array([True, False, True, True, False])
  assert float(tb.hit_at_k(ranks, k=1, where=where)) == pytest.approx(
      float(tb.hit_at_k(ranks[where], k=1)))
  assert float(tb.reciprocal_rank(ranks, where=where)) == pytest.approx(
      float(tb.reciprocal_rank(ranks[where])))
  none = np.zeros(5, bool)
  assert float(tb.hit_at_k(ranks, k=1, where=none)) == 0.0
  assert float(tb.reciprocal_rank(ranks, where=none)) == 0.0


@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("k", [1, 3])
def test_recall_precision_f1_at_k_match_reference(ties, k):
  rng = np.random.default_rng(3)
  for _ in range(3):
    # few levels and many relevant candidates: tie blocks cut by the K-th place
    s, rel = _tied_scores(rng, levels=3), _relevance(rng, max_rel=5)
    np.testing.assert_allclose(np.asarray(tb.relevant_in_top_k(s, rel, k=k, ties=ties)),
                               ref.relevant_in_top_k(s, rel, k, ties), rtol=1e-6)
    rec, prec, f1 = ref.recall_precision_f1_at_k(s, rel, k, ties)
    np.testing.assert_allclose(float(tb.recall_at_k(s, rel, k=k, ties=ties)), rec, rtol=1e-6)
    np.testing.assert_allclose(float(tb.precision_at_k(s, rel, k=k, ties=ties)), prec, rtol=1e-6)
    np.testing.assert_allclose(float(tb.f1_at_k(s, rel, k=k, ties=ties)), f1, rtol=1e-6)


def test_tie_block_cut_by_the_kth_place_shares_the_remaining_places():
  # row 0: one candidate above, then a block of 4 tied (2 relevant) for the remaining 2 of
  # the top 3; row 1: a block of 3 relevant candidates only, cut at K = 2 or 1
  s = np.array([[5.0, 1.0, 1.0, 1.0, 1.0, 0.0],
                [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]], np.float32)
  rel = np.array([[0, 1, 1, 0, 0, 1],
                  [1, 1, 1, 0, 0, 0]], bool)
  expected = {"average": 2 * 2 / 4, "optimistic": 2.0, "pessimistic": 0.0}
  for ties, want in expected.items():
    assert float(tb.relevant_in_top_k(s, rel, k=3, ties=ties)[0]) == pytest.approx(want)
    # the relevant-only block fills the top K whatever the tie rule: precision stays <= 1
    for k in (1, 2):
      hits = float(tb.relevant_in_top_k(s, rel, k=k, ties=ties)[1])
      assert hits == pytest.approx(k)
      assert float(tb.precision_at_k(s, rel, k=k, ties=ties, reduce_fn=None)[1]) == pytest.approx(1)
      assert float(tb.recall_at_k(s, rel, k=k, ties=ties, reduce_fn=None)[1]) == pytest.approx(k / 3)


def test_relevant_in_top_k_without_ties_counts_the_k_best_candidates():
  rng = np.random.default_rng(4)
  s = rng.normal(size=(Q, C)).astype(np.float32)
  rel = _relevance(rng, max_rel=4)
  for k in (1, 2, 5, C):
    np.testing.assert_array_equal(np.asarray(tb.relevant_in_top_k(s, rel, k=k)),
                                  ref.relevant_in_top_k_sorted(s, rel, k))
  # every relevant candidate is within the top C
  np.testing.assert_array_equal(np.asarray(tb.recall_at_k(s, rel, k=C, reduce_fn=None)), 1.0)


def test_hit_at_k_equals_recall_at_k_with_one_relevant_candidate_and_no_ties():
  rng = np.random.default_rng(5)
  s = rng.normal(size=(Q, C)).astype(np.float32)
  rel = _relevance(rng, max_rel=1)
  ranks = tb.truth_ranks(s, rel)
  for k in (1, 3):
    assert float(tb.hit_at_k(ranks, k=k)) == pytest.approx(float(tb.recall_at_k(s, rel, k=k)))


def test_top1_counts_and_gini_match_reference():
  rng = np.random.default_rng(6)
  for _ in range(3):
    s = _tied_scores(rng, levels=3)
    counts = np.asarray(tb.top1_counts(s))
    np.testing.assert_allclose(counts, ref.top1_counts(s), rtol=1e-6)
    assert counts.sum() == pytest.approx(Q)
    np.testing.assert_allclose(float(tb.gini(counts)), ref.gini(counts), rtol=1e-5, atol=1e-7)


def test_top1_counts_where_counts_only_unmasked_queries():
  s = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)
  np.testing.assert_array_equal(np.asarray(tb.top1_counts(s)), [1.0, 2.0])
  np.testing.assert_array_equal(
      np.asarray(tb.top1_counts(s, where=np.array([True, False, True]))), [1.0, 1.0])


def test_gini_closed_forms():
  assert float(tb.gini(np.full(6, 2.0))) == pytest.approx(0.0, abs=1e-7)
  assert float(tb.gini(np.array([0.0, 0.0, 0.0, 7.0]))) == pytest.approx(1 - 1 / 4)
  assert float(tb.gini(np.zeros(5))) == 0.0
  rng = np.random.default_rng(7)
  x = rng.uniform(0, 3, size=11)
  np.testing.assert_allclose(float(tb.gini(x)), ref.gini(x), rtol=1e-5)


def test_collapsed_model_has_high_gini_and_good_model_low_gini():
  rng = np.random.default_rng(8)
  y = rng.normal(size=(20, 10)).astype(np.float32)
  good = tb.similarity(y + 0.01 * rng.normal(size=y.shape).astype(np.float32), y)
  collapsed = tb.similarity(np.tile(y.mean(0), (20, 1)), y)
  assert float(tb.gini(tb.top1_counts(good))) < 0.2
  assert float(tb.gini(tb.top1_counts(collapsed))) == pytest.approx(1 - 1 / 20)


@pytest.mark.parametrize("ties", TIES)
def test_truth_ranks_jit_equals_eager(ties):
  rng = np.random.default_rng(9)
  s, rel = _tied_scores(rng), _relevance(rng)
  jitted = jax.jit(lambda a, b: tb.truth_ranks(a, b, ties=ties))(s, rel)
  np.testing.assert_array_equal(np.asarray(jitted), np.asarray(tb.truth_ranks(s, rel, ties=ties)))


def test_at_k_metrics_jit_equals_eager():
  rng = np.random.default_rng(10)
  s, rel = _tied_scores(rng), _relevance(rng)
  for fn in (tb.recall_at_k, tb.precision_at_k, tb.f1_at_k):
    jitted = jax.jit(lambda a, b, fn=fn: fn(a, b, k=2))(s, rel)
    assert float(jitted) == pytest.approx(float(fn(s, rel, k=2)))
  jitted = jax.jit(lambda a: (tb.top1_counts(a), tb.gini(tb.top1_counts(a))))(s)
  np.testing.assert_allclose(np.asarray(jitted[0]), np.asarray(tb.top1_counts(s)))
  assert float(jitted[1]) == pytest.approx(float(tb.gini(tb.top1_counts(s))))


def test_vmap_over_score_matrices_equals_loop():
  rng = np.random.default_rng(11)
  batch = np.stack([_tied_scores(rng) for _ in range(4)])
  rels = np.stack([_relevance(rng) for _ in range(4)])
  # shared relevance, batched scores
  got = np.asarray(jax.vmap(lambda a: tb.truth_ranks(a, rels[0]))(batch))
  np.testing.assert_array_equal(got, np.stack([tb.truth_ranks(a, rels[0]) for a in batch]))
  # both batched
  got = np.asarray(jax.vmap(lambda a, r: tb.truth_ranks(a, r, ties="pessimistic"))(batch, rels))
  np.testing.assert_array_equal(
      got, np.stack([tb.truth_ranks(a, r, ties="pessimistic") for a, r in zip(batch, rels)]))
  got = np.asarray(jax.vmap(lambda a, r: tb.relevant_in_top_k(a, r, k=2))(batch, rels))
  np.testing.assert_array_equal(
      got, np.stack([tb.relevant_in_top_k(a, r, k=2) for a, r in zip(batch, rels)]))
  got = np.asarray(jax.vmap(lambda a, r: tb.f1_at_k(a, r, k=2, reduce_fn=None))(batch, rels))
  np.testing.assert_allclose(
      got, np.stack([tb.f1_at_k(a, r, k=2, reduce_fn=None) for a, r in zip(batch, rels)]))
  got = np.asarray(jax.vmap(tb.top1_counts)(batch))
  np.testing.assert_allclose(got, np.stack([tb.top1_counts(a) for a in batch]))
  ranks = jax.vmap(lambda a: tb.truth_ranks(a, rels[0]))(batch)
  got = np.asarray(jax.vmap(lambda r: tb.normalized_rank(r, rels[0]))(ranks))
  np.testing.assert_allclose(got, [float(tb.normalized_rank(r, rels[0])) for r in ranks])


# --- properties -------------------------------------------------------------------

_seeds = st.integers(0, 2**31 - 1)


@settings(max_examples=40, deadline=None)
@given(seed=_seeds, ties=st.sampled_from(TIES))
def test_consistent_reordering_permutes_ranks_and_keeps_at_k_metrics(seed, ties):
  rng = np.random.default_rng(seed)
  s, rel = _tied_scores(rng), _relevance(rng)
  pq, pc = rng.permutation(Q), rng.permutation(C)
  ranks = np.asarray(tb.truth_ranks(s, rel, ties=ties))
  ranks_perm = np.asarray(tb.truth_ranks(s[np.ix_(pq, pc)], rel[np.ix_(pq, pc)], ties=ties))
  np.testing.assert_array_equal(ranks_perm, ranks[pq])
  hits = np.asarray(tb.relevant_in_top_k(s, rel, k=2, ties=ties))
  hits_perm = np.asarray(tb.relevant_in_top_k(s[np.ix_(pq, pc)], rel[np.ix_(pq, pc)], k=2,
                                              ties=ties))
  # Shared top-k places give fractional hits (e.g. 4/3), summed in candidate order: a
  # reordering may change the last bit of that float sum.
  np.testing.assert_allclose(hits_perm, hits[pq], rtol=1e-6)
  counts = np.asarray(tb.top1_counts(s))
  np.testing.assert_allclose(np.asarray(tb.top1_counts(s[np.ix_(pq, pc)])), counts[pc],
                             rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=_seeds, transform=st.sampled_from(["affine", "cube", "exp", "arctan"]))
def test_strictly_increasing_transform_keeps_ranks(seed, transform):
  rng = np.random.default_rng(seed)
  s = rng.integers(-5, 6, size=(Q, C)).astype(np.float32)  # distinct values stay distinct
  rel = _relevance(rng)
  f = {"affine": lambda v: 3.0 * v - 7.0, "cube": lambda v: v ** 3,
       "exp": np.exp, "arctan": np.arctan}[transform]
  t = f(s).astype(np.float32)
  for ties in TIES:
    np.testing.assert_array_equal(np.asarray(tb.truth_ranks(t, rel, ties=ties)),
                                  np.asarray(tb.truth_ranks(s, rel, ties=ties)))
  np.testing.assert_array_equal(np.asarray(tb.relevant_in_top_k(t, rel, k=3)),
                                np.asarray(tb.relevant_in_top_k(s, rel, k=3)))


@settings(max_examples=40, deadline=None)
@given(seed=_seeds)
def test_rank_bounds_and_tie_rule_ordering(seed):
  rng = np.random.default_rng(seed)
  s, rel = _tied_scores(rng), _relevance(rng)
  opt = np.asarray(tb.truth_ranks(s, rel, ties="optimistic"))
  avg = np.asarray(tb.truth_ranks(s, rel, ties="average"))
  pes = np.asarray(tb.truth_ranks(s, rel, ties="pessimistic"))
  n_other = (~rel).sum(1)
  assert np.all(opt >= 1.0) and np.all(pes <= 1.0 + n_other)
  assert np.all(opt <= avg) and np.all(avg <= pes)
  np.testing.assert_array_equal(avg, (opt + pes) / 2)
  nr = np.asarray(tb.normalized_rank(avg, rel, reduce_fn=None))
  assert np.all((nr >= 0) & (nr <= 1))
  for k in (1, 3):
    for fn in (tb.recall_at_k, tb.precision_at_k, tb.f1_at_k):
      v = np.asarray(fn(s, rel, k=k, reduce_fn=None))
      assert np.all((v >= 0) & (v <= 1 + 1e-6))


@settings(max_examples=40, deadline=None)
@given(seed=_seeds, k=st.integers(1, C))
def test_relevant_in_top_k_bounds_and_tie_rule_ordering(seed, k):
  rng = np.random.default_rng(seed)
  s, rel = _tied_scores(rng, levels=3), _relevance(rng, max_rel=6)
  avg, opt, pes = (np.asarray(tb.relevant_in_top_k(s, rel, k=k, ties=t)) for t in TIES)
  cap = np.minimum(k, rel.sum(1))
  assert np.all(opt <= cap + 1e-5) and np.all(pes >= 0)
  assert np.all(pes <= avg + 1e-5) and np.all(avg <= opt + 1e-5)
  # k = C retrieves everything
  np.testing.assert_allclose(np.asarray(tb.relevant_in_top_k(s, rel, k=C)), rel.sum(1))


@pytest.mark.parametrize("ties", ["average", "optimistic", "pessimistic"])
def test_identity_relevance_kernel_equals_general_kernel_with_ties_and_nan(ties):
  from twinbench_jax._src.core import ranking as ranking_src
  rng = np.random.default_rng(11)
  s = rng.integers(0, 3, size=(40, 40)).astype(np.float32)  # many exact ties
  s[rng.random((40, 40)) < 0.1] = np.nan
  s[3, 3] = np.nan
  s[4, :] = np.nan
  s[5, 5] = -np.inf
  fast = ranking_src._truth_ranks_identity(jnp.asarray(s), ties=ties)
  general = tb.truth_ranks(s, np.eye(40, dtype=bool), ties=ties)
  np.testing.assert_array_equal(np.asarray(fast), np.asarray(general))

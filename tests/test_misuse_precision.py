"""Mixed precision: similarities may run in bfloat16/float16, counting never does.

Ranks, counts, p-values, adjusted p-values, AUC-F1 and areas come out in at
least float32 (float64 for float64 inputs under x64), and equal the results
for the same low-precision values upcast to float32: the upcast is exact, so
nothing but the rounding of a low-precision sum can differ, and that is gone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinbench_jax as tb

LOW = [jnp.bfloat16, jnp.float16]


def _low(x, dtype):
  """`(x in dtype, the same values in float32)`."""
  lo = jnp.asarray(x, dtype)
  return lo, lo.astype(jnp.float32)


def _same(a, b):
  a, b = np.asarray(a), np.asarray(b)
  assert a.dtype == b.dtype == np.float32, (a.dtype, b.dtype)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", LOW)
def test_truth_ranks_of_a_600_square_low_precision_matrix_are_the_float32_ranks(dtype):
  # bfloat16 counts hold 8 significant bits: a rank near 484 used to round to a neighbour
  rng = np.random.default_rng(0)
  s, s32 = _low(rng.normal(size=(600, 600)), dtype)
  rel = np.eye(600, dtype=bool)
  for ties in ("average", "optimistic", "pessimistic"):
    _same(tb.truth_ranks(s, rel, ties=ties), tb.truth_ranks(s32, rel, ties=ties))
  ranks = np.asarray(tb.truth_ranks(s, rel))
  # independent count in float64 numpy
  sv = np.asarray(s32, np.float64)
  own = np.diagonal(sv)[:, None]
  other = ~rel
  want = 1 + ((sv > own) & other).sum(1) + 0.5 * ((sv == own) & other).sum(1)
  np.testing.assert_array_equal(ranks, want)
  assert ranks.max() > 256  # beyond bfloat16's exact integers


@pytest.mark.parametrize("dtype", LOW)
def test_evaluate_arrays_in_low_precision_stays_within_its_bounds(dtype):
  rng = np.random.default_rng(1)
  y = rng.normal(size=(60, 40))
  x, _ = _low(y + 0.01 * rng.normal(size=y.shape), dtype)
  y, _ = _low(y, dtype)
  res = tb.evaluate_arrays(x, y)
  for field in ("ranks", "own_scores", "pvalues", "auc_f1", "hit_at_k", "mrr", "mean_rank",
                "normalized_rank"):
    assert getattr(res, field).dtype == jnp.float32, field
  assert float(res.auc_f1) <= 1 - 1 / 60 + 1e-7  # bf16 gave 0.984375 > 1 - 1/60
  # the steps after the similarity are those of its float32 upcast
  s32 = tb.similarity(x, y).astype(jnp.float32)
  rel = np.eye(60, dtype=bool)
  _same(res.ranks, tb.truth_ranks(s32, rel))
  _same(res.pvalues, tb.label_permutation_pvalues(tb.cross_own_scores(s32, rel)))
  assert float(res.auc_f1) == float(tb.auc_f1(res.pvalues, res.ranks <= 1).auc)


@pytest.mark.parametrize("dtype", LOW)
def test_auc_f1_of_low_precision_pvalues_is_the_float32_area(dtype):
  rng = np.random.default_rng(2)
  p, p32 = _low(rng.uniform(0.001, 1.0, size=300), dtype)
  correct = rng.random(300) < 0.6
  for a, b in zip(tb.auc_f1(p, correct), tb.auc_f1(p32, correct)):
    _same(a, b)
  pc, pc32 = _low(rng.uniform(0.001, 1.0, size=(20, 30)), dtype)
  rel = np.eye(20, 30, dtype=bool)
  for a, b in zip(tb.candidate_auc_f1(pc, rel), tb.candidate_auc_f1(pc32, rel)):
    _same(a, b)


@pytest.mark.parametrize("dtype", LOW)
def test_pvalues_of_low_precision_scores_are_float32(dtype):
  rng = np.random.default_rng(3)
  scores, scores32 = _low(rng.normal(size=50), dtype)
  null, null32 = _low(rng.normal(size=(299, 50)), dtype)
  p = tb.empirical_pvalues(scores, null)
  _same(p, tb.empirical_pvalues(scores32, null32))
  # (1 + c) / 300 exactly representable up to float32 rounding, not bf16's 8 bits
  counts = (np.asarray(null32) >= np.asarray(scores32)[None]).sum(0)
  np.testing.assert_allclose(np.asarray(p), (1 + counts) / 300, rtol=1e-7)
  cross, cross32 = _low(rng.normal(size=(300, 300)), dtype)
  lp = tb.label_permutation_pvalues(cross)
  _same(lp, tb.label_permutation_pvalues(cross32))
  c32 = np.asarray(cross32)
  want = (c32 >= np.diagonal(c32)[None, :]).sum(0) / 300
  np.testing.assert_allclose(np.asarray(lp), want, rtol=1e-7)
  assert tb.exceedance_counts(scores, null).dtype == jnp.int32


@pytest.mark.parametrize("dtype", LOW)
def test_benjamini_hochberg_and_fraction_called_in_low_precision(dtype):
  rng = np.random.default_rng(4)
  p, p32 = _low(rng.uniform(0.0, 0.2, size=500), dtype)
  _same(tb.benjamini_hochberg(p), tb.benjamini_hochberg(p32))
  _same(tb.fraction_called(p, 0.05, adjust="bh"), tb.fraction_called(p32, 0.05, adjust="bh"))


@pytest.mark.parametrize("dtype", LOW)
def test_rank_metrics_and_popularity_in_low_precision(dtype):
  rng = np.random.default_rng(5)
  s, s32 = _low(rng.integers(-3, 4, size=(300, 300)), dtype)  # ties
  rel = np.eye(300, dtype=bool)
  ranks = tb.truth_ranks(s, rel)
  for fn in (lambda r: tb.hit_at_k(r, k=5), tb.reciprocal_rank,
             lambda r: tb.normalized_rank(r, rel)):
    low_ranks = jnp.asarray(ranks, dtype)  # ranks handed over in low precision too
    _same(fn(low_ranks), fn(low_ranks.astype(jnp.float32)))
  for fn in (tb.relevant_in_top_k, tb.recall_at_k, tb.f1_at_k):
    _same(fn(s, rel, k=5), fn(s32, rel, k=5))
  counts = tb.top1_counts(s)
  _same(counts, tb.top1_counts(s32))
  _same(tb.gini(counts.astype(dtype)), tb.gini(counts.astype(dtype).astype(jnp.float32)))


@pytest.mark.parametrize("dtype", LOW)
def test_similarities_and_own_scores_keep_the_input_precision(dtype):
  rng = np.random.default_rng(6)
  x, _ = _low(rng.normal(size=(4, 3)), dtype)
  assert tb.similarity(x, x).dtype == dtype
  assert tb.own_scores(tb.similarity(x, x), np.eye(4, dtype=bool)).dtype == dtype


def test_float64_stays_float64_under_x64():
  rng = np.random.default_rng(7)
  with jax.enable_x64(True):
    y = jnp.asarray(rng.normal(size=(8, 5)), jnp.float64)
    x = y + 0.1 * jnp.asarray(rng.normal(size=(8, 5)), jnp.float64)
    res = tb.evaluate_arrays(x, y)
    for field in ("ranks", "own_scores", "pvalues", "auc_f1", "hit_at_k", "mrr"):
      assert getattr(res, field).dtype == jnp.float64, field
    p = res.pvalues
    for out in (tb.benjamini_hochberg(p), tb.fraction_called(p), tb.auc_f1(p, res.correct).auc,
                tb.empirical_pvalues(res.own_scores, res.own_scores[None]),
                tb.top1_counts(tb.similarity(x, y))):
      assert out.dtype == jnp.float64
    # float32 stays float32 under x64: "at least float32", not "the default float"
    s32 = tb.similarity(x.astype(jnp.float32), y.astype(jnp.float32))
    assert tb.truth_ranks(s32, np.eye(8, dtype=bool)).dtype == jnp.float32
    assert tb.empirical_pvalues(s32[0], s32[None, 0]).dtype == jnp.float32

"""tb.similarity against the loop reference, and its float32 guard (SPEC §1)."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
import twinbench_jax as tb
from twinbench_jax._src.core import similarity as similarity_lib


def _data(seed, q=6, c=12, g=7):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(q, g)).astype(np.float32)
  y = rng.normal(size=(c, g)).astype(np.float32)
  return x, y


def test_public_metric_names_are_the_five_of_the_spec():
  assert set(tb.METRICS) == {"sqeuclidean", "euclidean", "l1", "cosine", "pearson"}


@pytest.mark.parametrize("metric", tb.METRICS)
def test_every_metric_matches_loop_reference(metric):
  # C = 12 > the 8 candidates refined exactly, so both code paths of sqeuclidean are used.
  x, y = _data(0)
  got = np.asarray(tb.similarity(x, y, metric=metric))
  assert got.shape == (6, 12)
  np.testing.assert_allclose(got, ref.similarity(x, y, metric), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
def test_a_non_finite_reference_leaves_the_other_candidates_exact(metric):
  x, y = _data(2)
  y = y + 100.0  # far from the origin: the centring matters
  x = x + 100.0
  x[0] = y[4]  # an identical prediction
  y[2, 3] = np.nan
  y[5, 0] = np.inf
  got = np.asarray(tb.similarity(x, y, metric=metric))
  ok = np.array([c not in (2, 5) for c in range(y.shape[0])])
  np.testing.assert_allclose(got[:, ok], ref.similarity(x, y[ok], metric), rtol=2e-5)
  assert np.isnan(got[:, 2]).all() and np.all(got[:, 5] == -np.inf)
  assert got[0, 4] == 0.0


def test_default_metric_is_negative_squared_euclidean():
  x, y = _data(1)
  np.testing.assert_array_equal(np.asarray(tb.similarity(x, y)),
                                np.asarray(tb.similarity(x, y, metric="sqeuclidean")))


def test_l1_in_several_query_blocks_matches_reference(monkeypatch):
  q, c, g = 11, 5, 3  # shapes used by no other test, so the jit cache cannot hide the patch
  monkeypatch.setattr(similarity_lib, "_L1_BLOCK_ELEMENTS", 3 * c * g)
  rng = np.random.default_rng(2)
  x = rng.normal(size=(q, g)).astype(np.float32)
  y = rng.normal(size=(c, g)).astype(np.float32)
  # 3 queries per block -> 4 blocks, the last one padded
  jaxpr = str(jax.make_jaxpr(similarity_lib.l1_distances)(x, y))
  assert re.findall(r"length=(\d+)", jaxpr) == ["4"]
  got = np.asarray(tb.similarity(x, y, metric="l1"))
  np.testing.assert_allclose(got, ref.similarity(x, y, "l1"), rtol=1e-5, atol=1e-5)


def _offset_data():
  """Profiles ~1e3 apart from the origin that differ only by ~1e-3 (float32 ulp ~6e-5)."""
  rng = np.random.default_rng(3)
  g, c = 64, 40
  base = 1000.0 + rng.normal(size=(1, g))
  refs = (base + 1e-3 * rng.normal(size=(c, g))).astype(np.float32)
  # a near-duplicate of reference 0 that differs by a few ulps in one gene
  refs[1] = refs[0]
  refs[1, 5] = np.nextafter(np.nextafter(refs[0, 5], np.inf), np.inf)
  preds = refs[[0, 2, 3, 4, 5, 6, 7, 8]].copy()
  truth = [0, 2, 3, 4, 5, 6, 7, 8]
  rel = np.zeros((len(truth), c), bool)
  rel[np.arange(len(truth)), truth] = True
  return preds, refs, rel, truth


def test_naive_matmul_identity_fails_on_the_offset_data():
  # Guards the next test: on this data the unguarded identity really breaks.
  preds, refs, _, truth = _offset_data()
  naive = ((preds * preds).sum(1)[:, None] + (refs * refs).sum(1)[None, :]
           - 2.0 * preds @ refs.T)
  assert np.any(naive[np.arange(len(truth)), truth] != 0.0)


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
def test_identical_prediction_gets_exactly_the_best_score_despite_large_offset(metric):
  preds, refs, rel, truth = _offset_data()
  s = np.asarray(tb.similarity(preds, refs, metric=metric))
  own = s[np.arange(len(truth)), truth]
  np.testing.assert_array_equal(own, 0.0)
  others = np.where(rel, -np.inf, s)
  assert np.all(others < 0.0)  # even the near-duplicate a few ulps away
  np.testing.assert_array_equal(np.asarray(tb.truth_ranks(s, rel)), 1.0)


def _far_cluster_data(n_far):
  """`n_far` near-duplicates ~1e3 away from 30 references near the origin.

  The references' mean sits far from the cluster, so centring cannot remove the
  offset and the matmul identity cannot tell the cluster members apart.
  """
  rng = np.random.default_rng(5)
  g = 64
  far = 1000.0 + rng.normal(size=(1, g)) + 1e-3 * rng.normal(size=(n_far, g))
  refs = np.concatenate([far, rng.normal(size=(30, g))]).astype(np.float32)
  q = n_far + 2  # every cluster member and two references near the origin
  rel = np.zeros((q, refs.shape[0]), bool)
  rel[np.arange(q), np.arange(q)] = True
  return refs[:q].copy(), refs, rel


def test_identical_prediction_is_exactly_best_inside_a_cluster_far_from_the_centre():
  preds, refs, rel = _far_cluster_data(6)  # fewer members than are refined exactly
  s = np.asarray(tb.similarity(preds, refs))
  np.testing.assert_array_equal(s[rel], 0.0)
  assert np.all(np.where(rel, -np.inf, s) < 0.0)
  np.testing.assert_array_equal(np.asarray(tb.truth_ranks(s, rel)), 1.0)


def test_identical_prediction_is_exactly_best_inside_a_large_far_cluster():
  preds, refs, rel = _far_cluster_data(20)
  s = np.asarray(tb.similarity(preds, refs))
  np.testing.assert_array_equal(s[rel], 0.0)
  np.testing.assert_array_equal(np.asarray(tb.truth_ranks(s, rel)), 1.0)


def test_zero_vector_has_cosine_zero_and_constant_vector_has_pearson_zero():
  x = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]], np.float32)
  y = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], np.float32)
  np.testing.assert_array_equal(np.asarray(tb.similarity(x, y, metric="cosine"))[0], 0.0)
  np.testing.assert_array_equal(np.asarray(tb.similarity(x, y, metric="pearson"))[1], 0.0)


def test_cosine_and_pearson_of_a_vector_with_itself_is_one():
  x, y = _data(5)
  y[:6] = 3.0 * x  # scale does not matter
  for metric in ("cosine", "pearson"):
    np.testing.assert_allclose(np.diagonal(np.asarray(tb.similarity(x, y, metric=metric))),
                               1.0, atol=1e-6)


def test_integer_inputs_are_promoted_to_float():
  x = np.array([[0, 1], [2, 2]])
  s = tb.similarity(x, x)
  assert np.issubdtype(s.dtype, np.floating)
  np.testing.assert_array_equal(np.asarray(s), [[0.0, -5.0], [-5.0, 0.0]])


@pytest.mark.parametrize("metric", tb.METRICS)
def test_similarity_jit_equals_eager(metric):
  x, y = _data(6)
  eager = tb.similarity(x, y, metric=metric)
  jitted = jax.jit(lambda a, b: tb.similarity(a, b, metric=metric))(x, y)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric", ["sqeuclidean", "l1", "pearson"])
def test_similarity_vmap_over_prediction_sets_equals_loop(metric):
  rng = np.random.default_rng(7)
  xs = rng.normal(size=(3, 6, 7)).astype(np.float32)
  _, y = _data(7)
  batched = np.asarray(jax.vmap(lambda a: tb.similarity(a, y, metric=metric))(xs))
  looped = np.stack([np.asarray(tb.similarity(a, y, metric=metric)) for a in xs])
  np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), metric=st.sampled_from(tb.METRICS))
def test_reordering_queries_and_candidates_permutes_the_matrix(seed, metric):
  x, y = _data(seed)
  rng = np.random.default_rng(seed)
  pq, pc = rng.permutation(6), rng.permutation(12)
  s = np.asarray(tb.similarity(x, y, metric=metric))
  s_perm = np.asarray(tb.similarity(x[pq], y[pc], metric=metric))
  np.testing.assert_allclose(s_perm, s[np.ix_(pq, pc)], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", tb.METRICS)
@pytest.mark.parametrize("q,c,g,seed", [(7, 7, 5, 3), (2, 9, 50, 0), (13, 9, 50, 1),
                                        (33, 64, 8, 2)])
def test_identical_predictions_get_bitwise_identical_score_rows(metric, q, c, g, seed):
  # A matrix product may round the same row differently where it falls in its tiling
  # (on an AMD EPYC CPU the Pearson row 6 of the first case, without the guarantee);
  # repeated predictions (a collapsed model) must still score exactly alike.
  rng = np.random.default_rng(seed)
  y = rng.normal(size=(c, g)).astype(np.float32)
  x = rng.normal(size=(q, g)).astype(np.float32)
  x[1::2] = y.mean(axis=0)  # every other query predicts the mean profile ...
  x[-1] = x[1]
  if seed == 3:
    x[:] = x[1]  # ... or all of them
  s = np.asarray(tb.similarity(x, y, metric=metric))
  same = np.flatnonzero((x == x[1]).all(axis=1))
  np.testing.assert_array_equal(s[same], np.broadcast_to(s[1], (same.size, c)))
  np.testing.assert_allclose(s, ref.similarity(x, y, metric), rtol=2e-5, atol=2e-5)


def test_rows_equal_in_value_but_not_in_bits_keep_their_own_scores():
  x = np.array([[0.0, 1.0, 2.0], [-0.0, 1.0, 2.0], [0.0, 1.0, 2.0]], np.float32)
  y = np.eye(3, dtype=np.float32)
  first = similarity_lib._first_equal_hash(jax.numpy.asarray(x))
  np.testing.assert_array_equal(first, [0, 0, 0])  # -0.0 and 0.0 hash alike ...
  s = tb.similarity(x, y, metric="cosine")  # ... but only bitwise copies share a row
  assert np.isfinite(np.asarray(s)).all()


@settings(max_examples=25, deadline=None)
@given(q=st.integers(2, 40), g=st.integers(1, 30), seed=st.integers(0, 10_000))
def test_row_hash_is_the_same_for_a_row_wherever_it_stands(q, g, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(q, g)).astype(np.float32)
  row = rng.integers(q)
  x[rng.random(q) < 0.5] = x[row]
  first = np.asarray(similarity_lib._first_equal_hash(jax.numpy.asarray(x)))
  copies = np.flatnonzero((x == x[row]).all(axis=1))
  assert (first[copies] == copies[0]).all()
  distinct = np.flatnonzero(~(x == x[row]).all(axis=1))
  assert all(first[i] == i or (x[first[i]] == x[i]).all() for i in distinct)


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine", "pearson"])
def test_repeated_rows_keep_their_own_gradients(metric):
  from jax.test_util import check_grads

  rng = np.random.default_rng(0)
  y = jax.numpy.asarray(rng.normal(size=(5, 6)), jax.numpy.float32)
  x = np.repeat(rng.normal(size=(1, 6)), 4, axis=0).astype(np.float32)
  weights = jax.numpy.asarray(rng.normal(size=(4, 5)), jax.numpy.float32)
  f = lambda x: jax.numpy.sum(weights * tb.similarity(x, y, metric=metric))  # noqa: E731
  grad = np.asarray(jax.grad(f)(jax.numpy.asarray(x)))
  # Each row's gradient is its own weights' (rows are not merged for the derivative).
  assert not np.allclose(grad[0], grad[1])
  check_grads(f, (jax.numpy.asarray(x),), order=1, modes=("rev",), atol=5e-2, rtol=5e-2,
              eps=1e-2)

"""The metric objects of `core/similarity.py`: every form of a metric agrees with the others."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
import twinbench_jax as tb
from twinbench_jax._src.core import similarity as similarity_lib


def _data(seed, q=5, c=6, g=8):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(q, g)).astype(np.float32),
          rng.normal(size=(c, g)).astype(np.float32))


def test_registry_holds_one_object_per_public_metric():
  assert tuple(similarity_lib.METRIC_OBJECTS) == tb.METRICS
  for name, obj in similarity_lib.METRIC_OBJECTS.items():
    assert obj.name == name
    assert similarity_lib.get_metric(name) is obj
    assert similarity_lib.get_metric(obj) is obj
    with pytest.raises(dataclasses.FrozenInstanceError):
      obj.name = "other"
  with pytest.raises(ValueError, match="unknown `metric` 'cityblock'"):
    similarity_lib.get_metric("cityblock")


@pytest.mark.parametrize("metric", tb.METRICS)
def test_all_pairs_is_tb_similarity_bit_for_bit(metric):
  x, y = _data(0)
  obj = similarity_lib.get_metric(metric)
  jitted = jax.jit(lambda a, b: obj.all_pairs(a, b))  # tb.similarity runs the jitted kernel
  np.testing.assert_array_equal(np.asarray(jitted(x, y)),
                                np.asarray(tb.similarity(x, y, metric=metric)))
  np.testing.assert_array_equal(np.asarray(similarity_lib.all_pairs(x, y, metric=metric)),
                                np.asarray(tb.similarity(x, y, metric=metric)))
  np.testing.assert_allclose(np.asarray(obj.all_pairs(x, y)), ref.similarity(x, y, metric),
                             rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("metric", tb.METRICS)
def test_paired_is_the_diagonal_against_numpy(metric):
  x, y = _data(1, q=6, c=6)
  got = np.asarray(similarity_lib.get_metric(metric).paired(jnp.asarray(x), jnp.asarray(y)))
  want = np.diagonal(ref.similarity(x, y, metric))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("metric", tb.METRICS)
def test_paired_has_finite_gradients_at_a_perfect_or_zero_prediction(metric):
  x, _ = _data(2, q=3)
  x[1] = 0.0  # a zero vector (no norm, no variance)
  obj = similarity_lib.get_metric(metric)
  g = jax.grad(lambda a: jnp.sum(obj.paired(a, jnp.asarray(x))))(jnp.asarray(x))
  assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("metric", tb.METRICS)
def test_all_pairs_excluded_matches_numpy_on_the_kept_genes(metric):
  x, y = _data(3)
  keep = np.ones(x.shape, bool)
  keep[0, [1, 4]] = False
  keep[3, 7] = False
  idx, mask = similarity_lib.check_exclude(~keep, x.shape[0], x.shape[1])
  ex = similarity_lib._exclusion(idx, mask, y.shape[0], x.shape[1])
  got = np.asarray(similarity_lib.get_metric(metric).all_pairs_excluded(
      jnp.asarray(x), jnp.asarray(y), ex))
  want = np.stack([ref.similarity(x[q:q + 1, keep[q]], y[:, keep[q]], metric)[0]
                   for q in range(x.shape[0])])
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("metric", tb.METRICS)
@pytest.mark.parametrize("xp", [np, jnp])
def test_neutral_fill_makes_the_all_gene_score_the_kept_gene_score(metric, xp):
  x, y = _data(4, q=4, c=4)
  keep = np.ones(x.shape, bool)
  keep[0, :3] = False
  keep[2, 5] = False
  obj = similarity_lib.get_metric(metric)
  xf = np.asarray(obj.fill_excluded(xp.asarray(x), xp.asarray(keep), xp))
  yf = np.asarray(obj.fill_excluded(xp.asarray(y), xp.asarray(keep), xp))  # truth of q = y[q]
  np.testing.assert_array_equal(xf[keep], x[keep])
  got = np.asarray(obj.paired(jnp.asarray(xf), jnp.asarray(yf)))
  want = [ref.similarity(x[q:q + 1, keep[q]], y[q:q + 1, keep[q]], metric)[0, 0]
          for q in range(4)]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_host_distances_only_for_l1():
  x, y = _data(5)
  for name, obj in similarity_lib.METRIC_OBJECTS.items():
    d = obj.host_distances(x.astype(np.float64), y.astype(np.float64))
    if name != "l1":
      assert d is None
    elif d is not None:  # the compiled loop is optional
      np.testing.assert_allclose(d, -ref.similarity(x, y, "l1"), rtol=1e-5, atol=1e-5)

"""Every public entry point runs with `jax_enable_x64` on and keeps float32 inputs float32.

Run by `tests/test_x64.py` in a process of its own: `jax.enable_x64` flips a global JAX
setting, and flipping it back and forth in a process that already holds hundreds of
compiled programs from the rest of the suite is not something the library itself does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinbench_jax as tb

Q, G, B = 8, 6, 7


def _data(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(Q, G)).astype(np.float32)
  y = (x + 0.7 * rng.normal(size=(Q, G))).astype(np.float32)
  null = np.stack([x[rng.permutation(Q)] for _ in range(B)])
  return x, y, null


def _scale(w, v):
  return v * w


def _floats(tree):
  return [leaf for leaf in jax.tree_util.tree_leaves(tree)
          if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)]


def _run(fn):
  """`fn()` with x64 off and on: the float leaves of both, after checking float32 under x64."""
  plain = fn()
  with jax.enable_x64(True):
    wide = fn()
    assert all(leaf.dtype == jnp.float32 for leaf in _floats(wide)), \
        sorted({str(leaf.dtype) for leaf in _floats(wide)})
  return _floats(plain), _floats(wide)


def _assert_same(pair, rtol=1e-6):
  plain, wide = pair
  assert len(plain) == len(wide)
  for a, b in zip(plain, wide):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("metric,own_score", [("sqeuclidean", "similarity"),
                                              ("l1", "similarity"), ("cosine", "r2")])
def test_model_null(metric, own_score):
  x, y, _ = _data(0)
  w = np.float32(2.0)
  kw = dict(key=jax.random.key(1), n_null=B, metric=metric, own_score=own_score,
            candidate_level=True, chunk_size=2, batch_size=2, progress=False)

  def run():
    res = tb.model_null(functools.partial(_scale, w), x, y, **kw)
    return res, res.auc_f1(), res.candidate_auc_f1()

  _assert_same(_run(run))


def test_precomputed_and_label_nulls():
  x, y, null = _data(2)
  _assert_same(_run(lambda: tb.precomputed_null(x, null, y, candidate_level=True,
                                                batch_size=3, progress=False)))
  _assert_same(_run(lambda: tb.label_null(x, y, candidate_level=True, own_score="pearson")))
  _assert_same(_run(lambda: tb.evaluate_arrays(x, y)))


def test_soft_auc_f1():
  x, y, null = _data(3)
  rel = np.eye(Q, dtype=bool)
  s = tb.similarity(x, y)
  own = tb.own_scores(s, rel)
  null_own = jax.vmap(lambda xb: tb.own_scores(tb.similarity(xb, y), rel))(null)
  _assert_same(_run(lambda: jax.value_and_grad(tb.soft_auc_f1)(s, rel, own, null_own)),
               rtol=1e-5)


def test_losses_validation_and_metric_update():
  x, y, null = _data(3)
  _assert_same(_run(lambda: jax.value_and_grad(tb.auc_f1_loss)(x, null, y)), rtol=1e-5)
  batch = tb.QueryBatch(x, np.arange(Q))
  loss = tb.make_soft_auc_f1_loss(_scale, y, n_null=4)
  _assert_same(_run(lambda: jax.value_and_grad(loss)(np.float32(1.5), batch,
                                                     jax.random.key(0))), rtol=1e-5)
  validate = tb.hard_auc_f1_validation(_scale, y, n_null=B, null_chunk=3)
  _assert_same(_run(lambda: validate(np.float32(1.5), batch, jax.random.key(0))))
  update = tb.make_auc_f1_metric_update(_scale, y, n_null=B)
  _assert_same(_run(lambda: update(tb.AucF1Metric.empty(Q, B), np.float32(1.5), batch,
                                   jax.random.key(0)).compute()))


def test_soft_steps_keep_float32():
  x, y, null = _data(4)
  rel = np.eye(Q, dtype=bool)
  s = tb.similarity(x, y)
  own = tb.own_scores(s, rel)
  null_own = jax.vmap(lambda xb: tb.own_scores(tb.similarity(xb, y), rel))(null)

  def run():
    ranks = tb.soft_truth_ranks(s, rel)
    p = tb.soft_empirical_pvalues(own, null_own)
    return (ranks, tb.soft_hit_at_k(ranks, k=1), p, tb.soft_called(p, 0.05, n_null=B),
            tb.soft_f1_curve(jnp.asarray([0.1, 0.5], jnp.float32), p, jnp.ones(Q, jnp.float32),
                             n_null=B))

  _assert_same(_run(run), rtol=1e-5)


@pytest.mark.parametrize("loss", ["softmax_ce_loss", "pairwise_logistic_loss", "approx_mrr_loss",
                                  "soft_hit_loss"])
def test_ranking_losses_keep_float32(loss):
  x, y, _ = _data(5)
  rel = np.eye(Q, dtype=bool)
  s = tb.similarity(x, y)
  fn = getattr(tb, loss)
  _assert_same(_run(lambda: jax.value_and_grad(lambda t: fn(t, rel))(s)), rtol=1e-5)

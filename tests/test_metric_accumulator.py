"""`tb.AucF1Metric`: the query-level AUC-F1 accumulated over batches (SPEC §3–4)."""

from __future__ import annotations

import functools
import subprocess
import sys

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import twinbench_jax as tb

Q, D, G, N_NULL = 14, 5, 6, 19


def _mlp(params, x):
  return jnp.tanh(x @ params["w1"]) @ params["w2"]


def _problem(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  params = {"w1": jax.random.normal(k[0], (D, 8)), "w2": 0.5 * jax.random.normal(k[1], (8, G))}
  inputs = jax.random.normal(k[2], (Q, D))
  # references near the predictions (a model that partly works: p-values and ranks vary)
  refs = _mlp(params, inputs) + 0.6 * jax.random.normal(k[3], (Q, G))
  return params, inputs, refs


def _stream(update, state, params, inputs, batches, key):
  for rows in batches:
    rows = np.asarray(rows)
    state = update(state, params, tb.QueryBatch(inputs[rows], rows), key)
  return state


SPLITS = [
    [np.arange(Q)],
    [np.arange(0, 5), np.arange(5, 9), np.arange(9, Q)],
    [np.arange(9, Q), np.arange(0, 1), np.arange(1, 9)],  # out of order, uneven
    [np.array([3, 11, 0]), np.array([1, 2, 4, 5, 6, 7, 8, 9, 10, 12, 13])],  # scattered rows
]


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_streamed_model_null_equals_the_one_shot_model_null_bit_for_bit(metric):
  params, inputs, refs = _problem(0)
  key = jax.random.key(1)
  one = tb.model_null(functools.partial(_mlp, params), inputs, refs, key=key, n_null=N_NULL,
                      metric=metric, progress=False)
  expected = one.auc_f1()
  assert 0.05 < float(expected.auc) < 0.9  # neither trivial nor perfect
  update = tb.make_auc_f1_metric_update(_mlp, refs, n_null=N_NULL, null_chunk=6, metric=metric)
  counts = np.sum(np.asarray(one.null_own_scores) >= np.asarray(one.own_scores)[None], axis=0)
  for batches in SPLITS:
    state = _stream(update, tb.AucF1Metric.empty(Q, N_NULL), params, inputs, batches, key)
    np.testing.assert_array_equal(state.counts, counts)
    np.testing.assert_array_equal(state.ranks, one.ranks())
    np.testing.assert_array_equal(state.pvalues(), one.pvalues)
    got = state.compute()
    assert got.auc.dtype == expected.auc.dtype
    assert float(got.auc) == float(expected.auc)
    np.testing.assert_array_equal(got.f1, expected.f1)
  assert float(state.compute(k=3).auc) == float(one.auc_f1(k=3).auc)


def test_under_jit_in_a_scan_and_merged_across_shards():
  params, inputs, refs = _problem(2)
  key = jax.random.key(3)
  expected = tb.model_null(functools.partial(_mlp, params), inputs, refs, key=key,
                           n_null=N_NULL, progress=False).auc_f1().auc
  update = tb.make_auc_f1_metric_update(_mlp, refs, n_null=N_NULL, null_chunk=5)

  @jax.jit
  def run(params, inputs):
    # two batches of 7 as the carry of a scan: the metric is a fixed-shape pytree
    def body(state, lo):
      rows = lo + jnp.arange(7)
      batch = tb.QueryBatch(jax.lax.dynamic_slice_in_dim(inputs, lo, 7), rows)
      return update(state, params, batch, key), None

    state, _ = jax.lax.scan(body, tb.AucF1Metric.empty(Q, N_NULL), jnp.array([0, 7]))
    return state, state.compute().auc

  state, auc = run(params, inputs)
  assert float(auc) == float(expected)
  # two "devices" each filled half of the queries; merge in either order
  half_a = _stream(update, tb.AucF1Metric.empty(Q, N_NULL), params, inputs,
                   [np.arange(0, 6)], key)
  half_b = _stream(update, tb.AucF1Metric.empty(Q, N_NULL), params, inputs,
                   [np.arange(6, Q)], key)
  for merged in (half_a.merge(half_b), jax.jit(lambda a, b: b.merge(a))(half_a, half_b)):
    assert float(merged.compute().auc) == float(expected)
    jax.tree_util.tree_map(np.testing.assert_array_equal, merged, state)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_cuts=st.integers(0, 4), k=st.integers(1, 3))
def test_array_update_equals_the_one_shot_metric(seed, n_cuts, k):
  rng = np.random.default_rng(seed)
  q, c, b = 9, 11, 7
  scores = rng.normal(size=(q, c)).astype(np.float32)
  rel = np.zeros((q, c), bool)
  rel[np.arange(q), rng.integers(0, c, q)] = True
  rel[0, :2] = True  # a query with several relevant candidates
  own = rng.normal(size=q).astype(np.float32)
  null = np.round(rng.normal(size=(b, q)), 1).astype(np.float32)  # ties with ...
  own[:3] = null[0, :3]  # ... the observed own scores: `>=` counts them
  expected = tb.auc_f1(tb.empirical_pvalues(own, null), tb.truth_ranks(scores, rel) <= k)
  order = rng.permutation(q)
  state = tb.AucF1Metric.empty(q, b)
  for rows in np.array_split(order, n_cuts + 1):
    state = state.update(rows, scores[rows], rel[rows], own[rows], null[:, rows])
  got = state.compute(k=k)
  assert float(got.auc) == float(expected.auc)
  np.testing.assert_array_equal(got.alphas, expected.alphas)


def test_incomplete_or_doubled_queries_raise_eagerly_and_give_nan_under_jit():
  rng = np.random.default_rng(0)
  scores, rel = rng.normal(size=(4, 4)).astype(np.float32), np.eye(4, dtype=bool)
  own, null = np.diag(scores).copy(), rng.normal(size=(3, 4)).astype(np.float32)
  part = tb.AucF1Metric.empty(4, 3).update(np.arange(2), scores[:2], rel[:2], own[:2],
                                           null[:, :2])
  with pytest.raises(ValueError, match="2 of the 4 queries were never updated"):
    part.compute()
  assert np.isnan(jax.jit(lambda m: m.compute().auc)(part))
  full = part.update(np.arange(2, 4), scores[2:], rel[2:], own[2:], null[:, 2:])
  assert np.isfinite(full.compute().auc)
  with pytest.raises(ValueError, match="updated more than once"):
    full.merge(part).compute()
  with pytest.raises(ValueError, match=r"`null_own_scores` must have shape \(n_null, b\)"):
    part.update(np.arange(2), scores[:2], rel[:2], own[:2], null[:2, :2])
  with pytest.raises(ValueError, match=r"`rows` must be positions in \[0, 4\)"):
    part.update(np.array([1, 4]), scores[:2], rel[:2], own[:2], null[:, :2])
  with pytest.raises(ValueError, match="cannot merge metrics of different sizes"):
    part.merge(tb.AucF1Metric.empty(5, 3))

  @jax.jit
  def out_of_range(rows):  # dropped under jit: that query stays unseen, the result NaN
    m = part.update(rows, scores[2:], rel[2:], own[2:], null[:, 2:])
    return m.compute().auc

  assert np.isfinite(out_of_range(jnp.array([2, 3])))
  assert np.isnan(out_of_range(jnp.array([2, 4])))
  assert np.isnan(out_of_range(jnp.array([-1, 3])))


def test_non_finite_predictions_make_the_metric_invalid():
  params, inputs, refs = _problem(4)
  update = tb.make_auc_f1_metric_update(_mlp, refs, n_null=4)
  bad = dict(params, w2=params["w2"].at[0, 0].set(jnp.nan))
  state = _stream(update, tb.AucF1Metric.empty(Q, 4), bad, inputs, [np.arange(Q)],
                  jax.random.key(0))
  with pytest.raises(ValueError, match="non-finite predictions"):
    state.compute()


# Run in a fresh interpreter: the two CPU devices must be set before JAX starts.
_SHARDED = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
import twinbench_jax as tb
from twinbench_jax._src.nulls import sharding
assert len(jax.devices()) == 2
rng = np.random.default_rng(0)
q, c, b = 8, 8, 5
scores = (rng.normal(size=(q, c)) + 1.5 * np.eye(q)).astype(np.float32)
rel = np.eye(q, dtype=bool)
own = np.diag(scores).copy()
null = rng.normal(size=(b, q)).astype(np.float32)
expected = tb.auc_f1(tb.empirical_pvalues(own, null), tb.truth_ranks(scores, rel) <= 1).auc
assert 0.1 < float(expected) < 0.9
mesh = Mesh(np.array(jax.devices()), ("d",))

def local(rows, s, r, o, n):
  # each device scores its own queries into a metric of all Q
  m = tb.AucF1Metric.empty(q, b).update(rows, s, r, o, n)
  parts = jax.lax.all_gather(m, "d")  # the devices' metrics, stacked
  first, second = (jax.tree_util.tree_map(lambda x, i=i: x[i], parts) for i in (0, 1))
  return first.merge(second).compute().auc[None]  # one per device

f = jax.jit(sharding.shard_map(local, mesh=mesh, out_specs=P("d"),
                                in_specs=(P("d"), P("d"), P("d"), P("d"), P(None, "d"))))
got = f(jnp.arange(q), scores, rel, own, null)
print(got, float(expected))
np.testing.assert_array_equal(got, [expected, expected])
"""


def test_metrics_filled_on_two_devices_merge_inside_shard_map():
  # each device updates the metric with its half of the queries; an all-gather and a merge
  # give every device the AUC-F1 of all of them
  out = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]

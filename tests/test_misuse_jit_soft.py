"""Misuse of the soft functions under `jax.jit`: NaN, never a plausible number (issue 15, class 2).

Under `jit` values cannot be checked in Python, so a query without a relevant
candidate, a batch row out of range or a non-finite input poisons the result
with NaN (`validation.poison`). Each case is paired with the valid call on the
same arrays, which must stay finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinbench_jax as tb

Q, C, B, G = 6, 7, 5, 4


def _arrays(seed=0):
  rng = np.random.default_rng(seed)
  rel = np.eye(Q, C, dtype=bool)
  scores = (rng.normal(size=(Q, C)) + 2.0 * rel).astype(np.float32)
  own = scores[rel]
  null = rng.normal(size=(B, Q)).astype(np.float32)
  return scores, rel, own, null


def _with_nan(x, index):
  x = np.array(x, copy=True)
  x[index] = np.nan
  return x


_soft_auc = jax.jit(lambda s, rel, m, mb: tb.soft_auc_f1(s, rel, m, mb))


def test_soft_auc_f1_under_jit_is_nan_for_a_query_without_relevant_candidate():
  scores, rel, own, null = _arrays()
  assert np.isfinite(_soft_auc(scores, rel, own, null))
  no_truth = rel.copy()
  no_truth[2] = False
  assert np.isnan(_soft_auc(scores, no_truth, own, null))


@pytest.mark.parametrize("which", ["scores", "own", "null"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_soft_auc_f1_under_jit_is_nan_for_non_finite_inputs(which, bad):
  scores, rel, own, null = _arrays()
  args = dict(scores=scores, own=own, null=null)
  x = np.array(args[which], copy=True)
  x.flat[3] = bad
  args[which] = x
  assert np.isnan(_soft_auc(args["scores"], rel, args["own"], args["null"]))


def test_soft_auc_f1_eager_refuses_nan_naming_the_argument():
  scores, rel, own, null = _arrays()
  with pytest.raises(ValueError, match="`null_own_scores`"):
    tb.soft_auc_f1(scores, rel, own, _with_nan(null, (1, 1)))
  with pytest.raises(ValueError, match="`scores`"):
    tb.soft_truth_ranks(_with_nan(scores, (0, 1)), rel)


def test_soft_truth_ranks_under_jit_poisons_only_the_bad_queries():
  scores, rel, _, _ = _arrays()
  f = jax.jit(lambda s, r: tb.soft_truth_ranks(s, r))
  no_truth = rel.copy()
  no_truth[1] = False
  ranks = np.asarray(f(_with_nan(scores, (4, 0)), no_truth))
  assert np.isnan(ranks[[1, 4]]).all()
  good = [0, 2, 3, 5]
  np.testing.assert_allclose(ranks[good], np.asarray(tb.soft_truth_ranks(scores, rel))[good],
                             rtol=1e-6)


def test_soft_empirical_pvalues_under_jit_poisons_only_the_bad_queries():
  _, _, own, null = _arrays()
  f = jax.jit(lambda m, mb: tb.soft_empirical_pvalues(m, mb))
  p = np.asarray(f(_with_nan(own, 0), _with_nan(null, (3, 2))))
  assert np.isnan(p[[0, 2]]).all()
  assert np.isfinite(p[[1, 3, 4, 5]]).all()


def test_soft_f1_curve_under_jit_is_nan_for_a_nan_pvalue():
  f = jax.jit(lambda a, p, h: tb.soft_f1_curve(a, p, h, n_null=9))
  alphas = np.array([0.1, 0.5], np.float32)
  p = np.array([0.1, 0.3, 0.5], np.float32)
  hits = np.array([1.0, 0.0, 1.0], np.float32)
  assert np.isfinite(f(alphas, p, hits)).all()
  assert np.isnan(f(alphas, _with_nan(p, 1), hits)).all()
  assert np.isnan(f(alphas, p, _with_nan(hits, 0))).all()


# --- the training loss and the hard validation -----------------------------------------------


def _linear_task(seed=0):
  rng = np.random.default_rng(seed)
  refs = rng.normal(size=(Q, G)).astype(np.float32)
  inputs = (refs @ rng.normal(size=(G, 3))).astype(np.float32)
  params = np.linalg.lstsq(inputs, refs, rcond=None)[0].astype(np.float32)
  return refs, inputs, params


def _predict(params, inputs):
  return inputs @ params


@pytest.mark.parametrize("factory", ["loss", "validation"])
def test_factories_under_jit_are_nan_for_rows_out_of_range_or_nan_params(factory):
  refs, inputs, params = _linear_task()
  if factory == "loss":
    fn = jax.jit(tb.soft_auc_f1_loss(_predict, refs, n_null=4))
  else:
    fn = tb.hard_auc_f1_validation(_predict, refs, n_null=9)  # jitted already
  key = jax.random.key(0)
  rows = np.arange(Q, dtype=np.int32)
  assert np.isfinite(fn(params, tb.QueryBatch(inputs, rows), key))
  for bad in (Q, -1):
    out_of_range = rows.copy()
    out_of_range[2] = bad
    assert np.isnan(fn(params, tb.QueryBatch(inputs, out_of_range), key)), bad
  assert np.isnan(fn(_with_nan(params, (0, 1)), tb.QueryBatch(inputs, rows), key))
  assert np.isnan(fn(params, tb.QueryBatch(_with_nan(inputs, (3, 0)), rows), key))


def test_loss_gradient_stays_finite_on_a_valid_batch_under_jit():
  refs, inputs, params = _linear_task(1)
  loss = tb.soft_auc_f1_loss(_predict, refs, n_null=4)
  g = jax.jit(jax.grad(loss))(params, tb.QueryBatch(inputs, jnp.arange(Q)), jax.random.key(1))
  assert np.all(np.isfinite(g)) and np.any(g != 0)

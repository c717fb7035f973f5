"""Ranking losses of `ranking_losses.py`: plain-loop values, gradients, perfect models, masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import twinbench_jax as tb

LOSSES = {
    "softmax_ce": tb.softmax_ce_loss,
    "pairwise_logistic": tb.pairwise_logistic_loss,
    "approx_mrr": tb.approx_mrr_loss,
}


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _loop(name, s, rel, tau, where=None):
  """Per-query loss written as a plain loop over candidates (float64 numpy)."""
  s = np.asarray(s, np.float64)
  q_n, c_n = s.shape
  where = np.ones_like(rel) if where is None else np.asarray(where)
  out = np.zeros(q_n)
  for q in range(q_n):
    cand = [c for c in range(c_n) if where[q, c]]
    pos = [c for c in cand if rel[q, c]]
    neg = [c for c in cand if not rel[q, c]]
    if not pos:
      continue
    t = max(s[q, c] for c in pos)
    if name == "softmax_ce":
      z = max(s[q, c] / tau for c in cand)
      log_norm = z + np.log(sum(np.exp(s[q, c] / tau - z) for c in cand))
      out[q] = -sum(s[q, c] / tau - log_norm for c in pos) / len(pos)
    elif name == "pairwise_logistic":
      out[q] = sum(np.log1p(np.exp(-(t - s[q, c]) / tau)) for c in neg) / max(len(neg), 1)
    elif name == "approx_mrr":
      out[q] = 1.0 - 1.0 / (1.0 + sum(_sigmoid((s[q, c] - t) / tau) for c in neg))
  return out


def _spread(s):
  s = np.asarray(s, np.float64)
  return np.mean(np.mean(np.abs(s - s.mean(axis=1, keepdims=True)), axis=1))


def _problem(q=6, c=9, seed=0, multi=False):
  rng = np.random.default_rng(seed)
  s = rng.normal(size=(q, c)).astype(np.float32)
  rel = np.zeros((q, c), bool)
  rel[np.arange(q), rng.integers(0, c, q)] = True
  if multi:
    rel[0, :3] = True
  return s, rel


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("multi", [False, True])
def test_values_match_a_plain_loop(name, multi):
  s, rel = _problem(multi=multi)
  got = LOSSES[name](s, rel, temperature=0.7, relative=False, reduce_fn=None)
  np.testing.assert_allclose(got, _loop(name, s, rel, 0.7), rtol=2e-5, atol=1e-6)
  # relative: τ is a fraction of the mean absolute deviation of each row
  got = LOSSES[name](s, rel, temperature=0.3)
  np.testing.assert_allclose(got, _loop(name, s, rel, 0.3 * _spread(s)).mean(), rtol=2e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_where_drops_candidates_and_empty_queries(name):
  s, rel = _problem(seed=1)
  where = np.random.default_rng(2).random(s.shape) < 0.7
  where |= rel
  where[2] = False  # a query with nothing valid contributes 0, never NaN
  got = LOSSES[name](s, rel, temperature=0.5, relative=False, where=where, reduce_fn=None)
  want = _loop(name, s, rel, 0.5, where)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  assert got[2] == 0.0
  mean = LOSSES[name](s, rel, temperature=0.5, relative=False, where=where)
  np.testing.assert_allclose(mean, np.delete(want, 2).mean(), rtol=2e-5)
  none = LOSSES[name](s, rel, where=np.zeros_like(where))
  assert float(none) == 0.0


def test_soft_hit_loss_is_one_minus_the_soft_hit():
  s, rel = _problem(seed=3)
  ranks = tb.soft_truth_ranks(s, rel, temperature=0.2)
  want = 1.0 - np.asarray(tb.soft_hit_at_k(ranks, k=2, temperature=0.2))
  got = tb.soft_hit_loss(s, rel, k=2, temperature=0.2, reduce_fn=None)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # the hit counts exactly the truths above rank k in the hard limit
  hard = np.asarray(tb.truth_ranks(s, rel)) > 2
  got = tb.soft_hit_loss(s, rel, k=2, temperature=1e-4, reduce_fn=None)
  np.testing.assert_allclose(got, hard.astype(float), atol=1e-3)
  where = np.arange(6) % 2 == 0
  np.testing.assert_allclose(tb.soft_hit_loss(s, rel, k=2, temperature=0.2, where=where),
                             want[where].mean(), rtol=1e-6)


def test_approx_truth_ranks_reach_the_hard_ranks():
  s, rel = _problem(q=12, c=30, seed=4)
  np.testing.assert_allclose(tb.approx_truth_ranks(s, rel, temperature=1e-4),
                             tb.truth_ranks(s, rel), atol=1e-3)


ALL = dict(LOSSES, soft_hit=tb.soft_hit_loss)


@pytest.mark.parametrize("name", sorted(ALL))
def test_gradients_are_finite_and_match_finite_differences(name):
  s, rel = _problem(q=4, c=6, seed=5)
  s = jnp.asarray(s, jnp.float64) if jax.config.jax_enable_x64 else jnp.asarray(s)

  def f(x):
    return ALL[name](x, rel, temperature=0.8, relative=False)

  g = jax.grad(f)(s)
  assert np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0)
  check_grads(f, (s,), order=1, modes=("rev",), atol=2e-2, rtol=2e-2)
  # ties everywhere still give finite gradients
  assert np.all(np.isfinite(jax.grad(f)(jnp.zeros_like(s))))


@pytest.mark.parametrize("name", sorted(ALL))
def test_perfect_model_beats_a_random_one_and_reaches_the_minimum(name):
  rng = np.random.default_rng(6)
  refs = rng.normal(size=(10, 20)).astype(np.float32)
  rel = np.eye(10, dtype=bool)
  perfect = tb.similarity(jnp.asarray(refs), refs)
  noisy = tb.similarity(jnp.asarray(refs + 3.0 * rng.normal(size=refs.shape), jnp.float32),
                        refs)
  loss = ALL[name]
  assert float(loss(perfect, rel)) < float(loss(noisy, rel))
  # far apart candidates: the perfect model's loss is at its closed-form minimum
  far = tb.similarity(jnp.asarray(refs * 100.0), refs * 100.0)
  if name == "soft_hit":
    minimum = 1.0 - float(tb.soft_hit_at_k(jnp.ones(1), k=1)[0])
  else:
    minimum = 0.0
  np.testing.assert_allclose(float(loss(far, rel, relative=False)), minimum, atol=1e-4)


def test_tied_scores_give_the_closed_form_values():
  s = np.zeros((3, 5), np.float32)
  rel = np.eye(3, 5, dtype=bool)
  np.testing.assert_allclose(tb.softmax_ce_loss(s, rel), np.log(5), rtol=1e-6)
  np.testing.assert_allclose(tb.pairwise_logistic_loss(s, rel), np.log(2), rtol=1e-6)
  # every tied candidate counts 1/2: approx rank 1 + 4/2 = 3
  np.testing.assert_allclose(tb.approx_mrr_loss(s, rel), 1 - 1 / 3, rtol=1e-6)


def test_scale_invariant_with_relative_temperature():
  s, rel = _problem(seed=7)
  for loss in ALL.values():
    np.testing.assert_allclose(loss(s, rel), loss(3.0 * s + 5.0, rel), rtol=1e-4)


def test_jit_equals_eager_and_bad_inputs_are_named():
  s, rel = _problem(seed=8)
  for loss in LOSSES.values():
    np.testing.assert_allclose(jax.jit(lambda x, r, f=loss: f(x, r))(s, rel), loss(s, rel),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
      loss(s, rel, temperature=0.0)
    with pytest.raises(ValueError, match="relevance"):
      loss(s, rel[:, :-1])
    with pytest.raises(TypeError, match="relevance"):
      loss(s, rel.astype(int))
    # a traced non-positive temperature gives NaN, not a plausible number
    assert np.isnan(jax.jit(lambda t, f=loss: f(s, rel, temperature=t))(-1.0))
  with pytest.raises(ValueError, match="where"):
    tb.soft_hit_loss(s, rel, where=np.ones(3, bool))

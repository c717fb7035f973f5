"""The soft relaxation of AUC-F1 (SPEC §5): limits, gradients, temperatures, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import twinbench_jax as tb


# One shape for most tests: every jitted kernel compiles once for the whole file.
Q, C, B = 40, 50, 30


def _tie_free(seed, q=Q, c=C, b=B, hit_boost=1.5, null_shift=0.8):
  """Random scores where ranks and p-values vary: some truths first, some nulls above.

  numpy, not jax.random: test data should not cost compilations.
  """
  rng = np.random.default_rng(seed)
  rel = np.eye(q, c, dtype=bool)
  scores = (rng.normal(size=(q, c)) + hit_boost * rel).astype(np.float32)
  own = scores[rel]
  null = (rng.normal(size=(b, q)) + null_shift).astype(np.float32)
  return scores, rel, own, null


def _neg_sqdist(x, refs):
  # tb.similarity's default metric, written out: these tests are about the soft metric
  return -jnp.sum((x[:, None, :] - refs[None, :, :]) ** 2, axis=-1)


def _hard(scores, rel, own, null, k=1):
  return float(tb.auc_f1(tb.empirical_pvalues(own, null), tb.truth_ranks(scores, rel) <= k).auc)


# --- limits -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,k", [(0, 1), (1, 1), (2, 3)])
def test_soft_auc_f1_converges_to_hard_auc_f1_as_temperature_goes_to_zero(seed, k):
  scores, rel, own, null = _tie_free(seed)
  hard = _hard(scores, rel, own, null, k=k)
  assert 0.05 < hard < 0.9  # an informative case, not a corner
  temps = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
  errors = [abs(float(tb.soft_auc_f1(scores, rel, own, null, k=k, temperature=t)) - hard)
            for t in temps]
  assert errors[-1] < 1e-3
  assert errors[-1] < errors[0]
  for coarse, fine in zip(errors, errors[1:]):
    assert fine <= coarse + 1e-4, errors


def test_soft_steps_converge_to_their_hard_counterparts():
  scores, rel, own, null = _tie_free(3)
  t = 1e-6
  np.testing.assert_allclose(tb.soft_truth_ranks(scores, rel, temperature=t),
                             tb.truth_ranks(scores, rel), atol=1e-4)
  np.testing.assert_allclose(tb.soft_empirical_pvalues(own, null, temperature=t),
                             tb.empirical_pvalues(own, null), atol=1e-5)
  ranks = np.array([1.0, 2.0, 3.0, 1.0])
  np.testing.assert_allclose(tb.soft_hit_at_k(ranks, k=2, temperature=1e-3), [1, 1, 0, 1],
                             atol=1e-6)


def test_exact_score_ties_count_half_like_average_ties():
  scores = np.array([[1.0, 1.0, 0.0, 2.0], [3.0, 3.0, 3.0, 0.0]])
  rel = np.array([[True, False, False, False], [True, False, False, False]])
  np.testing.assert_allclose(tb.soft_truth_ranks(scores, rel, temperature=1e-4),
                             tb.truth_ranks(scores, rel), atol=1e-6)  # [2.5, 2.0]


def test_tied_null_replicates_count_as_exceedances_in_the_limit():
  scores, rel, own, _ = _tie_free(11)
  null = np.broadcast_to(own, (B, Q))  # a model that ignores its input: every replicate ties
  for t in (1e-2, 1e-4, 1e-6):
    p = tb.soft_empirical_pvalues(own, null, temperature=t)
    np.testing.assert_allclose(p, 1.0, atol=2 * t)  # a tie counts 1/(1 + τ)
  assert _hard(scores, rel, own, null) == 0.0
  assert float(tb.soft_auc_f1(scores, rel, own, null, temperature=1e-5)) < 1e-4


def test_soft_call_counts_a_pvalue_exactly_at_alpha():
  n_null = 19  # p-values on the grid k/20
  p = np.array([0.05, 0.10, 0.15])
  called = tb.soft_called(p, 0.10, n_null=n_null, temperature=1e-3)
  np.testing.assert_allclose(called, [1.0, 1.0, 0.0], atol=1e-6)


def test_fixed_alpha_grid_is_close_but_only_the_sorted_step_is_exact():
  scores, rel, own, null = _tie_free(4)
  hard = _hard(scores, rel, own, null)
  exact = float(tb.soft_auc_f1(scores, rel, own, null, temperature=1e-6))
  grid = float(tb.soft_auc_f1(scores, rel, own, null, temperature=1e-6, alpha_grid=50))
  assert abs(exact - hard) < 1e-6
  assert 1e-4 < abs(grid - hard) < 0.05


def test_soft_f1_curve_matches_hard_f1_at_distinct_pvalues():
  p = np.array([0.1, 0.3, 0.5, 0.9])
  hits = np.array([1.0, 0.0, 1.0, 1.0])
  hard = tb.auc_f1(p, hits > 0.5)
  soft = tb.soft_f1_curve(p, p, hits, n_null=9, temperature=1e-4)
  np.testing.assert_allclose(soft, hard.f1, atol=1e-6)


# --- temperatures --------------------------------------------------------------------------


def test_relative_temperatures_make_the_score_invariant_to_rescaling():
  scores, rel, own, null = _tie_free(5)
  a, b = 37.0, -4.0
  base = tb.soft_auc_f1(scores, rel, own, null, temperature=0.1)
  scaled = tb.soft_auc_f1(a * scores + b, rel, a * own + b, a * null + b, temperature=0.1)
  np.testing.assert_allclose(scaled, base, rtol=1e-4)
  absolute = tb.soft_auc_f1(a * scores + b, rel, a * own + b, a * null + b, temperature=0.1,
                            relative=False)
  assert abs(float(absolute) - float(base)) > 1e-3


def test_temperature_forms_are_equivalent():
  scores, rel, own, null = _tie_free(6)
  temps = tb.SoftTemperatures(rank=0.05, hit=0.2, p=0.1, alpha=0.3)
  ref = tb.soft_auc_f1(scores, rel, own, null, temperature=temps)
  for form in ((0.05, 0.2, 0.1, 0.3), [0.05, 0.2, 0.1, 0.3],
               {"rank": 0.05, "hit": 0.2, "p": 0.1, "alpha": 0.3}):
    np.testing.assert_allclose(tb.soft_auc_f1(scores, rel, own, null, temperature=form), ref)
  np.testing.assert_allclose(tb.soft_auc_f1(scores, rel, own, null, temperature=0.1),
                             tb.soft_auc_f1(scores, rel, own, null,
                                            temperature=tb.SoftTemperatures()))


def test_traced_temperature_anneals_without_recompiling():
  scores, rel, own, null = _tie_free(7)
  traces = []

  @jax.jit
  def f(t):
    traces.append(1)
    return tb.soft_auc_f1(scores, rel, own, null, temperature=t)

  values = [float(f(np.float32(t))) for t in (0.3, 0.1, 0.03)]
  assert len(traces) == 1
  assert len(set(values)) == 3


@pytest.mark.parametrize("temperature,match", [
    (0.0, "temperature.rank"), (-1.0, "positive"), (float("nan"), "positive"),
    ((0.1, 0.1), "4 values"), ({"rnak": 0.1}, "unknown `temperature` keys"),
    (np.ones(2), "scalar"),
])
def test_bad_temperatures_are_rejected(temperature, match):
  scores, rel, own, null = _tie_free(0)
  with pytest.raises(ValueError, match=match):
    tb.soft_auc_f1(scores, rel, own, null, temperature=temperature)


# --- gradients -----------------------------------------------------------------------------


def test_check_grads_at_a_moderate_temperature():
  with jax.enable_x64(True):
    scores, rel, own, null = (x.astype(np.float64) if x.dtype != bool else x
                              for x in _tie_free(8, q=8, c=10, b=6))

    @jax.jit
    def f(s, m, mb):
      # relative=False: the spreads would be differentiated numerically but not by autodiff
      return tb.soft_auc_f1(s, rel, m, mb, temperature=0.3, relative=False)

    check_grads(f, (scores, own, null), order=1, modes=("fwd", "rev"), eps=1e-4,
                atol=1e-4, rtol=1e-3)


@jax.jit
def _grads(scores, rel, own, null, temperature=0.1):
  return jax.grad(lambda s, m, mb: tb.soft_auc_f1(s, rel, m, mb, temperature=temperature),
                  argnums=(0, 1, 2))(scores, own, null)


def test_gradients_are_finite_with_ties():
  scores, rel, _, _ = _tie_free(0)
  scores = np.round(scores)  # many exact ties
  own = scores[rel]
  null = np.concatenate([np.broadcast_to(own, (B - 1, Q)), np.round(own + 1.0)[None]])
  for t in (0.1, 1e-3, 1e-6):
    for g in _grads(scores, rel, own, null, t):
      assert np.all(np.isfinite(g))


def test_gradients_are_finite_when_all_predictions_are_identical():
  refs = np.random.default_rng(1).normal(size=(5, 7)).astype(np.float32)
  rel = np.eye(5, dtype=bool)

  def value(x):
    s = _neg_sqdist(x, refs)
    own = jnp.sum(jnp.where(rel, s, 0.0), axis=1)
    null = jnp.broadcast_to(own, (4, 5))  # randomised inputs give the same prediction
    return tb.soft_auc_f1(s, rel, own, null)

  x = np.broadcast_to(refs.mean(axis=0), (5, 7))
  v, g = jax.jit(jax.value_and_grad(value))(x)
  assert np.isfinite(v) and np.all(np.isfinite(g))
  # identical scores everywhere (all references identical too): still finite
  _, rel, _, _ = _tie_free(0)
  for g in _grads(np.zeros((Q, C), np.float32), rel, np.zeros(Q, np.float32),
                  np.zeros((B, Q), np.float32), 0.1):
    assert np.all(np.isfinite(g))


def test_gradients_are_nonzero_near_a_collapsed_model():
  rng = np.random.default_rng(2)
  refs = (3.0 * rng.normal(size=8) + rng.normal(size=(12, 8))).astype(np.float32)
  rel = np.eye(12, dtype=bool)
  direction = refs - refs.mean(axis=0)
  shuffled = direction[rng.permutation(12)]

  def value(eps):
    x = refs.mean(axis=0) + eps * direction  # eps = 0: every prediction is the mean
    xb = refs.mean(axis=0) + eps * shuffled  # the null: another query's input
    s = _neg_sqdist(x, refs)
    own = jnp.sum(jnp.where(rel, s, 0.0), axis=1)
    null = jnp.sum(jnp.where(rel, _neg_sqdist(xb, refs), 0.0), axis=1)[None]
    return tb.soft_auc_f1(s, rel, own, null)

  grad = jax.jit(jax.grad(value))
  for eps in (1e-3, 1e-2, 0.3):
    # the default's local temperatures are sharp: at eps = 0.3 the slope is about 5e-4
    assert abs(float(grad(eps))) > 1e-4


def test_chunked_area_matches_one_block_with_gradients():
  scores, rel, own, null = _tie_free(9)

  def f(s, m, mb, chunk):  # the fixed-grid area evaluates its [A, Q] calls in chunks
    return tb.soft_auc_f1(s, rel, m, mb, temperature=0.05, alpha_chunk=chunk, alpha_grid=60)

  vg = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)), static_argnums=3)
  one = vg(scores, own, null, 1024)
  chunked = vg(scores, own, null, 7)
  np.testing.assert_allclose(chunked[0], one[0], rtol=1e-6)
  for a, b in zip(chunked[1], one[1]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_jit_equals_eager_and_vmap_equals_a_loop():
  scores, rel, own, null = _tie_free(10)
  eager = tb.soft_auc_f1(scores, rel, own, null)
  jitted = jax.jit(lambda s: tb.soft_auc_f1(s, rel, own, null))(scores)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  batch = np.stack([scores, scores * 2.0, scores + 1.0])
  mapped = jax.jit(jax.vmap(lambda s: tb.soft_auc_f1(s, rel, own, null)))(batch)
  looped = [tb.soft_auc_f1(s, rel, own, null) for s in batch]
  np.testing.assert_allclose(mapped, looped, rtol=1e-5)


# --- errors --------------------------------------------------------------------------------


def test_errors_name_the_argument():
  scores, rel, own, null = _tie_free(0)
  with pytest.raises(ValueError, match="`scores` and `relevance`"):
    tb.soft_auc_f1(scores[:, :4], rel, own, null)
  with pytest.raises(ValueError, match="`own_scores` must have shape"):
    tb.soft_auc_f1(scores, rel, own[:3], null[:, :3])
  with pytest.raises(ValueError, match="`null_own_scores` must have shape"):
    tb.soft_auc_f1(scores, rel, own, null[:, :3])
  with pytest.raises(ValueError, match="zero null replicates"):
    tb.soft_auc_f1(scores, rel, own, null[:0])
  with pytest.raises(ValueError, match="`k`"):
    tb.soft_auc_f1(scores, rel, own, null, k=0)
  with pytest.raises(ValueError, match="`alpha_grid`"):
    tb.soft_auc_f1(scores, rel, own, null, alpha_grid=0)
  with pytest.raises(TypeError, match="`relevance` must be a boolean"):
    tb.soft_auc_f1(scores, rel.astype(int), own, null)
  with pytest.raises(ValueError, match="no relevant candidate"):
    no_truth = rel.copy()
    no_truth[0, 0] = False
    tb.soft_auc_f1(scores, no_truth, own, null)
  with pytest.raises(ValueError, match="`n_null`"):
    tb.soft_called(own, 0.1, n_null=0)


# --- local temperatures: the default tracks the hard metric --------------------------------


def test_check_grads_of_the_default_relaxation_with_its_local_units_held_fixed():
  # The default divides each temperature by a local gap under `stop_gradient`: a constant
  # at each step. Held fixed at the base point, the relaxation is a smooth function whose
  # autodiff gradient must match finite differences.
  from twinbench_jax._src.soft import area, temperatures
  with jax.enable_x64(True):
    scores, rel, own, null = (x.astype(np.float64) if x.dtype != bool else x
                              for x in _tie_free(12, q=8, c=10, b=6))
    rank_unit = temperatures.rank_unit(jnp.asarray(scores), jnp.asarray(rel), True)
    p_unit = temperatures.p_unit(jnp.asarray(own), jnp.asarray(null), True)
    assert rank_unit.shape == (8, 1) and p_unit.shape == (8,)
    temps = temperatures.resolve_temperatures(tb.SoftTemperatures())

    def f(s, m, mb):
      return area.soft_auc_f1_in_units(s, rel, m, mb, temps, 1.0, rank_unit, p_unit)

    # the held-fixed function is the default one at the base point
    np.testing.assert_allclose(f(scores, own, null), tb.soft_auc_f1(scores, rel, own, null),
                               rtol=1e-12)
    check_grads(jax.jit(f), (scores, own, null), order=1, modes=("fwd", "rev"), eps=1e-6,
                atol=1e-5, rtol=1e-4)


def test_local_rank_temperature_keeps_a_crowded_first_truth_near_rank_one():
  # Negative distances with a long tail: the top is crowded compared with the spread over
  # all candidates, which made the soft ranks of first truths 9-12 on the simulator
  # (issue 14). Each truth is first by one local spacing; the local gap keeps it near 1.
  rng = np.random.default_rng(13)
  q, c = 20, 200
  rel = np.eye(q, c, dtype=bool)
  scores = -np.exp(rng.normal(scale=1.5, size=(q, c))).astype(np.float32)
  top = -np.sort(-np.where(rel, -np.inf, scores), axis=1)[:, :5]
  scores[rel] = top[:, 0] + np.mean(top[:, :4] - top[:, 1:5], axis=1)
  assert np.all(np.asarray(tb.truth_ranks(scores, rel)) == 1)
  local = np.asarray(tb.soft_truth_ranks(scores, rel))
  spread = np.asarray(tb.soft_truth_ranks(scores, rel, relative="global"))
  assert np.all(local < 1.1), local
  assert np.all(spread > 5.0), spread  # the former default, for contrast


def test_closed_forms_perfect_and_input_ignoring_models():
  rng = np.random.default_rng(14)
  rel = np.eye(Q, C, dtype=bool)
  # perfect: every truth first by far, every own score above all its nulls -> 1 - 1/(B+1)
  scores = (rng.normal(size=(Q, C)) + 20.0 * rel).astype(np.float32)
  own = scores[rel]
  null = (own[None] - 5.0 - rng.uniform(size=(B, Q))).astype(np.float32)
  top = 1.0 - 1.0 / (B + 1)
  assert _hard(scores, rel, own, null) == pytest.approx(top)
  # the hit and the call of a sure query are σ(5) ≈ 0.993 at the default temperatures
  assert float(tb.soft_auc_f1(scores, rel, own, null)) == pytest.approx(top, rel=0.015)
  # ignores its input: every null replicate ties the observed own score -> 0
  tied = np.broadcast_to(own, (B, Q))
  assert _hard(scores, rel, own, tied) == 0.0
  assert float(tb.soft_auc_f1(scores, rel, own, tied)) < 0.01


def test_relative_must_be_a_known_mode():
  scores, rel, own, null = _tie_free(0)
  with pytest.raises(ValueError, match="`relative`"):
    tb.soft_auc_f1(scores, rel, own, null, relative="median")


def test_prefix_sum_area_equals_the_dense_f1_at_every_breakpoint():
  # the default area sums the ramp calls with prefix sums; the dense [Q, Q] calls of
  # tb.soft_f1_curve at the same breakpoints give the same area, values and gradients
  from twinbench_jax._src.soft import area
  rng = np.random.default_rng(15)
  h = 1.0 / (B + 1)
  p = (rng.integers(1, B + 2, size=Q) * h + rng.normal(scale=0.15 * h, size=Q)).astype(np.float32)
  hits = rng.uniform(size=Q).astype(np.float32)

  def dense(p, hits):
    a = jnp.sort(p)
    width = jnp.concatenate([a[1:], jnp.ones((1,), a.dtype)]) - a
    return jnp.sum(tb.soft_f1_curve(a, p, hits, n_null=B, temperature=0.3) * width)

  def prefix(p, hits):
    return area.sorted_step_area(p, hits, h, 0.3)

  v_dense, g_dense = jax.value_and_grad(dense, argnums=(0, 1))(p, hits)
  v_prefix, g_prefix = jax.value_and_grad(prefix, argnums=(0, 1))(p, hits)
  np.testing.assert_allclose(v_prefix, v_dense, rtol=1e-5)
  for a, b in zip(g_prefix, g_dense):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)

"""Public conventions: `k` keyword-only (positional for one release, with a warning);
`where=` / `reduce_fn=` on the per-query functions, checked against numpy."""

from __future__ import annotations

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
import twinbench_jax as tb

Q, C = 6, 8
_RNG = np.random.default_rng(0)
S = _RNG.integers(0, 4, size=(Q, C)).astype(np.float32)  # ties included
REL = np.zeros((Q, C), bool)
REL[np.arange(Q), _RNG.integers(0, C, size=Q)] = True
REL[0, 3] = True
RANKS = np.asarray(ref.truth_ranks(S, REL, "average"), np.float32)
WHERE = np.array([True, False, True, True, False, True])

_K_FUNCTIONS = {
    "hit_at_k": ((RANKS,), "ranks"),
    "relevant_in_top_k": ((S, REL), "scores, relevance"),
    "recall_at_k": ((S, REL), "scores, relevance"),
    "precision_at_k": ((S, REL), "scores, relevance"),
    "f1_at_k": ((S, REL), "scores, relevance"),
    "soft_hit_at_k": ((RANKS,), "ranks"),
}


@pytest.mark.parametrize("name", sorted(_K_FUNCTIONS))
def test_k_is_keyword_only_in_the_signature(name):
  params = inspect.signature(getattr(tb, name)).parameters
  assert params["k"].kind == inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("name", sorted(_K_FUNCTIONS))
def test_positional_k_still_works_with_a_future_warning(name):
  fn = getattr(tb, name)
  args, shown = _K_FUNCTIONS[name]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the keyword form warns about nothing
    want = np.asarray(fn(*args, k=2))
  with pytest.warns(FutureWarning, match=rf"pass it by keyword: `tb\.{name}\({shown}, k=\.\.\.\)`"):
    got = np.asarray(fn(*args, 2))
  np.testing.assert_array_equal(got, want)


def test_positional_k_together_with_keyword_k_is_an_error():
  with pytest.raises(TypeError):
    tb.hit_at_k(RANKS, 1, k=1)
  with pytest.raises(TypeError):
    tb.recall_at_k(S, REL, 1, 2)


def test_relevant_in_top_k_where_and_reduce_fn_against_numpy():
  hits = ref.relevant_in_top_k(S, REL, 3, "average")
  np.testing.assert_allclose(np.asarray(tb.relevant_in_top_k(S, REL, k=3)), hits, rtol=1e-6)
  got = float(tb.relevant_in_top_k(S, REL, k=3, where=WHERE, reduce_fn=jnp.mean))
  assert got == pytest.approx(hits[WHERE].mean(), rel=1e-6)
  got = float(tb.relevant_in_top_k(S, REL, k=3, where=WHERE, reduce_fn=jnp.sum))
  assert got == pytest.approx(hits[WHERE].sum(), rel=1e-6)


def test_truth_ranks_where_and_reduce_fn_against_numpy():
  np.testing.assert_array_equal(np.asarray(tb.truth_ranks(S, REL)), RANKS)
  assert float(tb.truth_ranks(S, REL, reduce_fn=jnp.mean)) == pytest.approx(RANKS.mean())
  assert float(tb.truth_ranks(S, REL, where=WHERE, reduce_fn=jnp.mean)) == pytest.approx(
      RANKS[WHERE].mean())
  assert float(tb.truth_ranks(S, REL, where=np.zeros(Q, bool), reduce_fn=jnp.mean)) == 0.0


def test_soft_hit_and_soft_ranks_where_and_reduce_fn_against_numpy():
  tau = 0.3
  want = 1.0 / (1.0 + np.exp(-(2 + 0.5 - RANKS.astype(np.float64)) / tau))
  per_query = np.asarray(tb.soft_hit_at_k(RANKS, k=2, temperature=tau))
  np.testing.assert_allclose(per_query, want, rtol=1e-5)
  got = float(tb.soft_hit_at_k(RANKS, k=2, temperature=tau, where=WHERE, reduce_fn=jnp.mean))
  assert got == pytest.approx(want[WHERE].mean(), rel=1e-5)
  soft = np.asarray(tb.soft_truth_ranks(S + 0.01 * np.arange(C), REL))
  got = float(tb.soft_truth_ranks(S + 0.01 * np.arange(C), REL, where=WHERE, reduce_fn=jnp.max))
  assert got == pytest.approx(soft[WHERE].max(), rel=1e-6)


def test_where_must_mask_queries():
  with pytest.raises(ValueError, match=r"`where` masks queries: it must have shape \(Q,\) = "
                                       r"\(6,\), got \(5,\)"):
    tb.relevant_in_top_k(S, REL, k=2, where=WHERE[:5], reduce_fn=jnp.mean)
  with pytest.raises(TypeError, match="`where` must be a boolean array"):
    tb.truth_ranks(S, REL, where=WHERE.astype(int), reduce_fn=jnp.mean)


def test_where_under_jit_with_the_mean():
  f = jax.jit(lambda w: tb.recall_at_k(S, REL, k=2, where=w))
  want = ref.recall_precision_f1_at_k(S, REL, 2, "average")
  per_query = np.asarray(tb.recall_at_k(S, REL, k=2, reduce_fn=None))
  assert float(f(WHERE)) == pytest.approx(per_query[WHERE].mean(), rel=1e-6)
  assert float(tb.recall_at_k(S, REL, k=2)) == pytest.approx(want[0], rel=1e-6)

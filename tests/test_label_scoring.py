"""The shared label-null scoring chain against the plain-numpy reference (SPEC §2–4)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from twinbench_jax._src.core import label_scoring
from twinbench_jax._src.core import own_scores as own_lib

_score = jax.jit(label_scoring.label_null_scores, static_argnames=("k", "ties", "single"))


def _relevance(rng, q, c, kind):
  if kind == "identity":
    return np.eye(q, dtype=bool)
  rel = np.zeros((q, c), bool)
  rel[np.arange(q), rng.integers(0, c, q)] = True
  if kind == "several":  # a second relevant candidate for some queries
    rel[np.arange(q), rng.integers(0, c, q)] |= rng.random(q) < 0.5
  return rel


def _check_against_reference(s, rel, cross, out, *, k, ties):
  want_ranks = ref.truth_ranks(s, rel, ties)
  want_p = ref.label_permutation_pvalues(cross)
  np.testing.assert_array_equal(np.asarray(out.ranks), want_ranks)
  np.testing.assert_array_equal(np.asarray(out.own_scores), np.diagonal(cross))
  np.testing.assert_allclose(np.asarray(out.pvalues), want_p, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(out.correct), want_ranks <= k)
  assert float(out.curve.auc) == pytest.approx(ref.auc_f1(want_p, want_ranks <= k), abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["identity", "single", "several"]),
       ties=st.sampled_from(["average", "optimistic", "pessimistic"]), k=st.integers(1, 3),
       nan=st.booleans())
def test_matches_numpy_reference(seed, kind, ties, k, nan):
  rng = np.random.default_rng(seed)
  q, c = 6, (6 if kind == "identity" else 8)
  # Small integers make ties in both the ranks and the p-values.
  s = rng.integers(-3, 3, (q, c)).astype(np.float32)
  if nan:
    s[rng.integers(0, q), rng.integers(0, c)] = np.nan
  rel = _relevance(rng, q, c, kind)
  if kind == "identity":
    cross = s
    out = _score(s, s, None, k=k, ties=ties, single="identity")
  else:
    cross = np.asarray(own_lib._cross(s, rel, single=None))
    np.testing.assert_allclose(cross, ref.cross_own_scores(s, rel), rtol=1e-6)
    out = _score(s, cross, rel, k=k, ties=ties)
  _check_against_reference(s, rel, cross, out, k=k, ties=ties)


@pytest.mark.parametrize("ties", ["average", "pessimistic"])
def test_identity_pass_equals_general_path_bit_for_bit(ties):
  rng = np.random.default_rng(0)
  s = rng.normal(size=(40, 40)).astype(np.float32)
  s[3] = s[3, 3]  # a row tied with its own entry
  s[:, 7] = s[7, 7]  # a column tied with its own entry
  fused = _score(s, s, None, k=2, ties=ties, single="identity")
  general = _score(s, s, np.eye(40, dtype=bool), k=2, ties=ties)
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(general)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_closed_form_perfect_and_constant_predictor():
  # Every prediction best at its own truth and unique: rank 1, p = 1/Q, AUC-F1 = 1 - 1/Q.
  q = 5
  s = -np.abs(np.arange(q)[:, None] - np.arange(q)[None, :]).astype(np.float32)
  out = _score(s, s, None, k=1, ties="average", single="identity")
  np.testing.assert_array_equal(np.asarray(out.ranks), np.ones(q))
  np.testing.assert_allclose(np.asarray(out.pvalues), np.full(q, 1 / q))
  assert float(out.curve.auc) == pytest.approx(1 - 1 / q)
  # One prediction for every query: all own scores tie, p = 1 and AUC-F1 = 0.
  flat = np.tile(np.arange(q, dtype=np.float32), (q, 1))
  out = _score(flat, flat, np.eye(q, dtype=bool), k=1, ties="average")
  np.testing.assert_array_equal(np.asarray(out.pvalues), np.ones(q))
  assert float(out.curve.auc) == 0.0


def test_rel_unused_with_identity_and_jit_friendly_under_vmap():
  rng = np.random.default_rng(1)
  s = rng.normal(size=(3, 7, 7)).astype(np.float32)
  fn = functools.partial(label_scoring.label_null_scores, rel=None, k=1, ties="average",
                         single="identity")
  batched = jax.jit(jax.vmap(lambda m: fn(m, m)))(s)
  for i in range(3):
    one = _score(s[i], s[i], None, k=1, ties="average", single="identity")
    np.testing.assert_array_equal(np.asarray(batched.pvalues[i]), np.asarray(one.pvalues))
    np.testing.assert_array_equal(np.asarray(batched.ranks[i]), np.asarray(one.ranks))

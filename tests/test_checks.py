"""The named argument checks of `twinbench_jax._src.core.checks` and where they are used."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinbench_jax as tb
from twinbench_jax._src import types
from twinbench_jax._src.core import checks


@pytest.mark.parametrize("k", [1, 2.5, np.int64(3), np.float32(1.0), jnp.asarray(4)])
def test_check_k_accepts_numbers_at_least_one(k):
  assert checks.check_k(k) is k


@pytest.mark.parametrize("k", [0, 0.5, -1, float("nan"), True, np.array([1, 2]), "1"])
def test_check_k_refuses_with_the_value(k):
  with pytest.raises(ValueError, match=r"^`k` must be >= 1, got "):
    checks.check_k(k)


@pytest.mark.parametrize("k", [1.0, 2.5, 0, True, np.float64(2)])
def test_check_k_integer_refuses_non_integers(k):
  with pytest.raises(ValueError, match=r"^`top` must be an integer >= 1, got "):
    checks.check_k(k, integer=True, name="top")


def test_check_k_integer_returns_a_python_int():
  k = checks.check_k(np.int32(3), integer=True)
  assert type(k) is int and k == 3


def test_check_k_against_the_number_of_candidates():
  assert checks.check_k(4, n_candidates=5, integer=True) == 4
  with pytest.raises(ValueError, match=r"^`k`=5 \(CLI: --k\) is at least the number of "
                                        r"candidates \(5\).*choose k < 5"):
    checks.check_k(5, n_candidates=5, integer=True, cli="--k")


def test_traced_k_passes_and_k_invalid_flags_it():
  @jax.jit
  def f(k):
    checks.check_k(k)
    return checks.k_invalid(k)

  assert not bool(f(1.0)) and not bool(f(3.0))
  assert bool(f(0.5)) and bool(f(jnp.nan))


def test_check_metric_and_ties_name_the_choices():
  for m in types.METRICS:
    assert checks.check_metric(m) == m
  for t in types.TIES:
    assert checks.check_ties(t) == t
  with pytest.raises(ValueError, match=r"unknown `metric` 'cityblock'; choose one of \('sq"):
    checks.check_metric("cityblock")
  with pytest.raises(ValueError, match=r"unknown `metric` \['l1'\]"):
    checks.check_metric(["l1"])  # unhashable: still a clear ValueError
  with pytest.raises(ValueError, match=r"unknown `ties` 'random'; choose one of \('average'"):
    checks.check_ties("random")


def test_public_option_tuples_are_the_literals():
  assert tb.METRICS == types.METRICS == ("sqeuclidean", "euclidean", "l1", "cosine", "pearson")
  assert types.TIES == ("average", "optimistic", "pessimistic")


@pytest.mark.parametrize("value", [0, -2, 1.5, True, float("nan"), None, "3", np.ones(2)])
def test_check_positive_int_refuses(value):
  with pytest.raises(ValueError, match=r"^`n_null` must be a positive integer, got "):
    checks.check_positive_int(value, "n_null")


def test_check_positive_int_returns_int():
  assert checks.check_positive_int(np.int64(7), "n") == 7
  assert checks.check_positive_int(3.0, "n") == 3


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan")])
def test_check_positive_refuses(value):
  with pytest.raises(ValueError, match=r"^`temperature` must be a finite positive number"):
    checks.check_positive(value, "temperature")


def test_check_positive_keeps_weak_type_and_refuses_arrays():
  assert checks.check_positive(2, "t").dtype == jnp.result_type(float)
  with pytest.raises(ValueError, match=r"^`t` must be a scalar, got shape \(2,\)"):
    checks.check_positive(np.ones(2), "t")


def test_check_scores_null_shapes():
  with pytest.raises(ValueError, match=r"`null` must have shape \(B, \*own.shape\) = \(B, 3\)"):
    checks.check_scores_null(np.zeros(3), np.zeros((2, 4)), "own", "null")
  with pytest.raises(ValueError, match="zero null replicates"):
    checks.check_scores_null(np.zeros(3), np.zeros((0, 3)))
  m, mb = checks.check_scores_null(np.zeros(3), np.zeros((0, 3)), min_replicates=0)
  assert mb.shape == (0, 3)


def test_public_functions_share_the_k_message():
  ranks = jnp.asarray([1.0, 2.0])
  s, rel = jnp.eye(2), jnp.eye(2, dtype=bool)
  for call in (lambda: tb.hit_at_k(ranks, k=0), lambda: tb.recall_at_k(s, rel, k=0.5),
               lambda: tb.soft_hit_at_k(ranks, k=0)):
    with pytest.raises(ValueError, match=r"^`k` must be >= 1, got "):
      call()


def test_check_profile_pair_names_both_shapes():
  x, y = checks.check_profile_pair(np.ones((2, 3), np.int32), np.ones((4, 3)))
  assert x.dtype == jnp.result_type(float) and y.shape == (4, 3)
  with pytest.raises(ValueError, match=r"same number of features \(genes\), got predictions "
                                       r"\(2, 3\) and references \(4, 5\)"):
    checks.check_profile_pair(np.ones((2, 3)), np.ones((4, 5)))
  with pytest.raises(ValueError, match=r"have no features \(genes\): shapes \(2, 0\) and \(4, 0\)"):
    checks.check_profile_pair(np.ones((2, 0)), np.ones((4, 0)))

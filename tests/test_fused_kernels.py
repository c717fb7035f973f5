"""Single-pass kernels equal the plain computations they replace, bit for bit."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinbench_jax._src.core import identity_pass
from twinbench_jax._src.core import pvalues
from twinbench_jax._src.core import ranking
from twinbench_jax._src.core import sorting


def _separate(s, ties):
  return (ranking._truth_ranks_identity(s, ties=ties), pvalues._label_permutation_pvalues(s))


@pytest.mark.parametrize("q", [1, 2, 15, 16, 17, 50, 200, 1024, 1088, 1100])
@pytest.mark.parametrize("ties", ["average", "optimistic", "pessimistic"])
def test_identity_pass_equals_the_two_passes(q, ties):
  rng = np.random.default_rng(q)
  # Few distinct values: many ties, also with the diagonal.
  s = jnp.asarray(rng.integers(-3, 3, (q, q)).astype(np.float32))
  got = identity_pass.ranks_and_label_pvalues(s, ties=ties)
  for a, b in zip(got, _separate(s, ties)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("diag", [np.nan, -np.inf, np.inf, 0.0])
def test_identity_pass_with_nan_and_infinite_scores(diag):
  rng = np.random.default_rng(0)
  s = rng.normal(size=(40, 40)).astype(np.float32)
  s[rng.random(s.shape) < 0.1] = np.nan
  s[rng.random(s.shape) < 0.05] = -np.inf
  s[3, 3] = diag
  s = jnp.asarray(s)
  for ties in ("average", "pessimistic"):
    got = identity_pass.ranks_and_label_pvalues(s, ties=ties)
    for a, b in zip(got, _separate(s, ties)):
      np.testing.assert_array_equal(a, b)
  # NaN counts as -inf (SPEC §2): the same numbers as with -inf written in.
  s_inf = jnp.where(jnp.isnan(s), -jnp.inf, s)
  for a, b in zip(identity_pass.ranks_and_label_pvalues(s, ties="average"),
                  identity_pass.ranks_and_label_pvalues(s_inf, ties="average")):
    np.testing.assert_array_equal(a, b)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 300),
                  elements=st.sampled_from([0.0, -0.0, 0.5, 1.0, -2.0, 1e-30, np.inf, -np.inf,
                                            3.4e38, -1e-37])))
def test_stable_argsort_equals_numpy_stable_argsort(x):
  got = np.asarray(sorting.stable_argsort(jnp.asarray(x)))
  want = np.argsort(x, kind="stable")
  np.testing.assert_array_equal(got, want)


def test_stable_argsort_of_continuous_values_and_large_inputs():
  rng = np.random.default_rng(1)
  for n in (1, 2, 1000, 65_536, 70_000):  # the last falls back to jnp.argsort
    x = rng.normal(size=n).astype(np.float32)
    x[: n // 3] = np.round(x[: n // 3], 1)  # some ties
    np.testing.assert_array_equal(sorting.stable_argsort(jnp.asarray(x)),
                                  np.argsort(x, kind="stable"))

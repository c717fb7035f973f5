"""Input randomisers (SPEC §3): each is a uniform random permutation, per row and key."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import twinbench_jax as tb
from twinbench_jax._src.nulls import randomize as randomize_lib


def _counts_of_permutations(perms: np.ndarray) -> np.ndarray:
  """How often each permutation of range(G) occurs among the rows of `perms`."""
  index = {p: i for i, p in enumerate(itertools.permutations(range(perms.shape[1])))}
  counts = np.zeros(len(index), np.int64)
  for row in map(tuple, perms.tolist()):
    counts[index[row]] += 1
  return counts


@pytest.mark.parametrize("max_bits", [None, 1])
def test_row_permutations_are_uniform_over_all_orders(monkeypatch, max_bits):
  # max_bits=1 forces the (keys, positions) sort used for very long rows.
  if max_bits is not None:
    monkeypatch.setattr(randomize_lib, "_MAX_POSITION_BITS", max_bits)
  g, rows = 4, 24_000
  perms = np.asarray(randomize_lib.row_permutations(jax.random.key(0), (rows, g)))
  np.testing.assert_array_equal(np.sort(perms, axis=1), np.tile(np.arange(g), (rows, 1)))
  counts = _counts_of_permutations(perms)
  assert counts.size == math.factorial(g)
  assert scipy.stats.chisquare(counts).pvalue > 1e-3


def test_long_rows_use_several_rounds_and_stay_uniform():
  # G = 3000 needs 12 position bits, leaving 20 random bits: two rounds of sorting.
  g, rows = 3000, 400
  perms = np.asarray(randomize_lib.row_permutations(jax.random.key(1), (rows, g)))
  np.testing.assert_array_equal(np.sort(perms, axis=1), np.tile(np.arange(g), (rows, 1)))
  # Where entry 0 lands, and where the last entry lands, are uniform over the row.
  for col in (0, g - 1):
    where = np.argmax(perms == col, axis=1)
    assert scipy.stats.kstest(where / g, "uniform").pvalue > 1e-3
  # Rows differ from each other.
  assert len({tuple(r) for r in perms[:50].tolist()}) == 50


def test_shuffle_features_keeps_each_rows_values_and_depends_only_on_the_key():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 300)).astype(np.float32))
  key = jax.random.key(7)
  out = tb.shuffle_features(key, x)
  assert out.shape == x.shape and out.dtype == x.dtype
  np.testing.assert_array_equal(np.sort(out, axis=-1), np.sort(x, axis=-1))
  assert not np.array_equal(out, x)
  np.testing.assert_array_equal(jax.jit(tb.shuffle_features)(key, x), out)
  batched = jax.vmap(tb.shuffle_features, in_axes=(0, None))(jax.random.split(key, 2), x)
  np.testing.assert_array_equal(batched[1], tb.shuffle_features(jax.random.split(key, 2)[1], x))
  assert not np.array_equal(tb.shuffle_features(jax.random.key(8), x), out)
  # Scalars and rows of one entry have nothing to shuffle.
  np.testing.assert_array_equal(tb.shuffle_features(key, jnp.ones((4, 1))), jnp.ones((4, 1)))
  assert float(tb.shuffle_features(key, jnp.float32(3.0))) == 3.0

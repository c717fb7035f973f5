"""The nulls' building blocks: own-score modes, kernel settings, and what their imports load."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from twinbench_jax._src.core import own_scores as own_lib
from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.nulls import sharding
from twinbench_jax._src.nulls import streaming

NULLS = pathlib.Path(streaming.__file__).parent


def test_importing_the_nulls_modules_loads_no_anndata_world_library():
  modules = sorted(f"twinbench_jax._src.nulls.{p.stem}" for p in NULLS.glob("*.py")
                   if p.stem != "__init__")
  assert {"twinbench_jax._src.nulls.model", "twinbench_jax._src.nulls.label",
          "twinbench_jax._src.nulls.precomputed"} <= set(modules)
  # Only the nulls' own modules: a fresh interpreter, no `import twinbench_jax` first
  # beyond the package `__init__` that Python runs on the way.
  code = ("import sys, importlib\n"
          f"for m in {modules!r}: importlib.import_module(m)\n"
          "print(','.join(m for m in ('anndata', 'tqdm', 'pandas', 'h5py', 'matplotlib') "
          "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       timeout=300)
  assert out.stdout.strip() == "", f"loaded by the nulls modules: {out.stdout.strip()}"


def _problem(q=5, c=7, g=6, several=False, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(q, g)).astype(np.float32)
  y = rng.normal(size=(c, g)).astype(np.float32)
  rel = np.zeros((q, c), bool)
  rel[np.arange(q), rng.permutation(c)[:q]] = True
  if several:
    rel[np.arange(q), (np.argmax(rel, axis=1) + 1) % c] = True
  return x, y, rel


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "l1", "cosine", "pearson"])
@pytest.mark.parametrize("several", [False, True])
def test_own_score_modes_match_the_mean_similarity_reference(metric, several):
  # SPEC §1: the own score is the mean similarity to the relevant candidates, whatever
  # O(G) form the mode computes it in.
  x, y, rel = _problem(several=several)
  mode = own_lib.own_mode("similarity", metric, not several)
  ctx = own_lib.own_context(jnp.asarray(y), jnp.asarray(rel), mode=mode)
  s = jnp.asarray(ref.similarity(x, y, metric), jnp.float32)
  got = own_lib.own_from_context(jnp.asarray(x), s, ctx, mode=mode)
  want = ref.own_scores(ref.similarity(x, y, metric), rel)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("own_score", ["r2", "pearson"])
def test_r2_and_pearson_own_scores_against_numpy(own_score):
  x, y, rel = _problem(several=True, seed=1)
  truth = (rel / rel.sum(1, keepdims=True)).astype(np.float64) @ y.astype(np.float64)
  mode = own_lib.own_mode(own_score, "l1", False)
  ctx = own_lib.own_context(jnp.asarray(y), jnp.asarray(rel), mode=mode)
  got = np.asarray(own_lib.own_from_context(jnp.asarray(x), None, ctx, mode=mode))
  if own_score == "r2":
    tc = truth - truth.mean(1, keepdims=True)
    want = 1 - ((x - truth) ** 2).sum(1) / (tc ** 2).sum(1)
  else:
    want = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(x, truth)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The label null's [Q, Q] form has the same diagonal.
  cross = own_lib.cross_own(jnp.asarray(x), jnp.asarray(y), None, jnp.asarray(rel),
                            own_score=own_score)
  np.testing.assert_allclose(np.diagonal(np.asarray(cross)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "l1", "cosine", "pearson"])
def test_one_truth_per_query_own_score_is_the_metrics_paired_score(metric):
  # The nulls' own score and the losses' (`SimilarityMetric.paired`) agree with one
  # relevant candidate per query: bit for bit for the distances (the same function);
  # cosine and Pearson normalise the truth inside the nulls' compiled context instead.
  x, y, rel = _problem(q=6, c=9, seed=2)
  ctx = own_lib.own_context(jnp.asarray(y), jnp.asarray(rel), mode=metric)
  got = own_lib.own_from_context(jnp.asarray(x), None, ctx, mode=metric)
  truth = jnp.asarray(y)[np.argmax(rel, axis=1)]
  want = similarity_lib.get_metric(metric).paired(jnp.asarray(x), truth)
  if metric in ("cosine", "pearson"):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
  else:
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_own_mode_lookup():
  assert own_lib.own_mode("similarity", "l1", True) == "l1"
  assert own_lib.own_mode("similarity", "euclidean", False) == "full"
  assert own_lib.own_mode("similarity", "cosine", False) == "cosine"
  assert own_lib.own_mode("pearson", "l1", True) == "corr"
  assert own_lib.needs_scores("full") and not own_lib.needs_scores("l1")
  with pytest.raises(KeyError):
    own_lib.own_mode("spearman", "l1", True)


def test_kernel_settings_are_one_hashable_static_argument():
  mesh = sharding.replicate_mesh()
  a = streaming.KernelSettings(mesh, 4, 2, "l1", "l1", False)
  b = streaming.KernelSettings(mesh, 4, 2, "l1", "l1", False)
  assert a == b and hash(a) == hash(b)
  assert a != streaming.KernelSettings(mesh, 4, 2, "l1", "l1", True)
  with pytest.raises(AttributeError):
    a.batch = 3  # frozen

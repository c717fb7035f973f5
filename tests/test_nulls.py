"""Permutation nulls (SPEC §3): model-in-the-loop, precomputed and label-permutation.

The reference implementations here are plain numpy loops over replicates,
queries and candidates (float64), written independently of the library's
vectorised kernels.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import twinbench_jax as tb

# ----------------------------------------------------------------------------- helpers


def mlp_apply(params, x, activation=jnp.tanh):
  # HIGHEST: the tests compare with float64 numpy, and accelerators default to TF32.
  hidden = activation(jnp.matmul(x, params["w1"], precision="highest") + params["b1"])
  return jnp.matmul(hidden, params["w2"], precision="highest") + params["b2"]


def mlp_params(key, d_in, d_out, hidden=16, scale=1.0):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "w1": scale * jax.random.normal(k1, (d_in, hidden)) / np.sqrt(d_in),
      "b1": 0.1 * jax.random.normal(k3, (hidden,)),
      "w2": jax.random.normal(k2, (hidden, d_out)) / np.sqrt(hidden),
      "b2": jnp.zeros((d_out,)),
  }


def np_mlp(params, x):
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  return np.tanh(np.asarray(x, np.float64) @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def np_similarity(x, y, metric):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  out = np.zeros((x.shape[0], y.shape[0]))
  for q in range(x.shape[0]):
    for c in range(y.shape[0]):
      a, b = x[q], y[c]
      if metric == "sqeuclidean":
        out[q, c] = -np.sum((a - b) ** 2)
      elif metric == "euclidean":
        out[q, c] = -np.sqrt(np.sum((a - b) ** 2))
      elif metric == "l1":
        out[q, c] = -np.sum(np.abs(a - b))
      else:
        if metric == "pearson":
          a, b = a - a.mean(), b - b.mean()
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        out[q, c] = 0.0 if na == 0 or nb == 0 else a @ b / (na * nb)
  return out


def np_own(x, y, rel, metric, own_score):
  """Own score of every prediction against its own truth, one query at a time."""
  x, y, rel = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(rel)
  out = np.zeros(x.shape[0])
  for q in range(x.shape[0]):
    cands = np.flatnonzero(rel[q])
    if own_score == "similarity":
      out[q] = np.mean([np_similarity(x[q:q + 1], y[c:c + 1], metric)[0, 0] for c in cands])
      continue
    t = y[cands].mean(axis=0)
    if own_score == "r2":
      out[q] = 1.0 - np.sum((x[q] - t) ** 2) / np.sum((t - t.mean()) ** 2)
    else:
      out[q] = np.corrcoef(x[q], t)[0, 1]
  return out


def labels_relevance(n_queries, n_extra):
  """Candidates 0..Q-1 belong to queries 0..Q-1; the extra ones to queries 0..n_extra-1."""
  cand = np.concatenate([np.arange(n_queries), np.arange(n_extra)])
  return tb.relevance_from_labels(np.arange(n_queries), cand)


def toy(seed=0, q=12, d=6, g=6, n_extra=6, noise=0.3):
  """A small MLP whose predictions track noisy references; relevance with 1 or 2 truths."""
  k = jax.random.split(jax.random.key(seed), 4)
  params = mlp_params(k[0], d, g)
  inputs = jax.random.normal(k[1], (q, d))
  x = mlp_apply(params, inputs)
  rel = labels_relevance(q, n_extra)
  owner = np.argmax(np.asarray(rel), axis=0)  # query of each candidate
  refs = x[owner] + noise * jax.random.normal(k[2], (q + n_extra, g))
  return params, inputs, refs, rel


# Most tests share one compiled kernel: the same predict_fn (a partial of
# `mlp_apply`), shapes, `N_NULL` and options. Compilation dominates their run time.
N_NULL = 20


def run_null(params, inputs, refs, rel, **kw):
  kw = {"key": jax.random.key(0), "n_null": N_NULL, "candidate_level": True,
        "progress": False, **kw}
  return tb.model_null(functools.partial(mlp_apply, params), inputs, refs, rel, **kw)


def assert_same_result(a, b):
  for f in ("own_scores", "null_own_scores", "pvalues", "scores", "candidate_pvalues"):
    va, vb = getattr(a, f), getattr(b, f)
    if va is None or vb is None:
      assert va is None and vb is None, f
    else:
      np.testing.assert_array_equal(np.asarray(va), np.asarray(vb), err_msg=f)
  assert a.n_null == b.n_null


# ----------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("randomize", ["shuffle_features", "permute_rows"])
def test_input_ignoring_model_gets_p_one_and_zero_auc(randomize):
  params, inputs, refs, rel = toy()
  # Zero input weights: the output is computed from the input but does not depend on it.
  params = dict(params, w1=jnp.zeros_like(params["w1"]))
  res = run_null(params, inputs, refs, rel, randomize=randomize)
  np.testing.assert_array_equal(res.pvalues, 1.0)
  np.testing.assert_array_equal(res.candidate_pvalues, 1.0)
  np.testing.assert_array_equal(res.null_own_scores,
                                np.broadcast_to(res.own_scores, (N_NULL, 12)))
  assert float(res.auc_f1().auc) == 0.0
  assert float(res.candidate_auc_f1().auc) == 0.0


def test_input_using_model_gets_smallest_p():
  x = jax.random.normal(jax.random.key(1), (40, 50))
  n_null = 99
  res = tb.model_null(lambda v: 3.0 * v, x, 3.0 * x, key=jax.random.key(2), n_null=n_null,
                      candidate_level=True, progress=False)
  np.testing.assert_allclose(res.pvalues, 1.0 / (n_null + 1))
  # The truth is exact (distance 0); no shuffled row gets there.
  np.testing.assert_allclose(np.diagonal(np.asarray(res.candidate_pvalues)), 1.0 / (n_null + 1))
  np.testing.assert_allclose(res.auc_f1().auc, 1.0 - 1.0 / (n_null + 1), rtol=1e-6)


def test_exchangeable_inputs_give_uniform_pvalues():
  # Random inputs through a model that uses them; the truth is independent of
  # them, so real and shuffled inputs are exchangeable and p ~ U{1/(B+1), ..., 1}.
  q, d, g, n_null = 1000, 8, 8, 99
  k = jax.random.split(jax.random.key(3), 3)
  params = mlp_params(k[0], d, g, scale=2.0)
  inputs = jax.random.normal(k[1], (q, d))
  refs = jax.random.normal(k[2], (q, g))
  res = tb.model_null(functools.partial(mlp_apply, params), inputs, refs,
                      key=jax.random.key(4), n_null=n_null, progress=False)
  # Jitter within each step of width 1/(B+1): exactly U(0, 1) under the null.
  u = np.random.default_rng(0).uniform(size=q)
  for p in (np.asarray(res.pvalues, np.float64),
            # the same null through the R^2 own score (same replicates)
            (1 + np.sum(r2_scores(res.null_own_scores, res.own_scores), axis=0)) / (n_null + 1)):
    assert stats.kstest(p - u / (n_null + 1), "uniform").pvalue > 0.01
    assert 0.45 < p.mean() < 0.55


def r2_scores(null_own, own):
  """Exceedance indicators `[B, Q]` of a null against observed own scores."""
  return np.asarray(null_own) >= np.asarray(own)[None]


# ----------------------------------------------------------------------------- brute force


def test_model_null_equals_brute_force_numpy_loop():
  params, inputs, refs, rel = toy(seed=5)
  key = jax.random.key(6)
  res = run_null(params, inputs, refs, rel, key=key)

  randomize = tb.resolve_randomizer("shuffle_features")
  x = np_mlp(params, inputs)
  own = np_own(x, refs, rel, "sqeuclidean", "similarity")
  s = np_similarity(x, refs, "sqeuclidean")
  null_own = np.zeros((N_NULL, x.shape[0]))
  counts = np.zeros(s.shape)
  for b in range(N_NULL):
    # Replicate b's inputs: the randomiser with the key folded with b, nothing else.
    xb = np_mlp(params, randomize(jax.random.fold_in(key, b), inputs))
    null_own[b] = np_own(xb, refs, rel, "sqeuclidean", "similarity")
    counts += np_similarity(xb, refs, "sqeuclidean") >= s
  np.testing.assert_allclose(res.own_scores, own, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(res.null_own_scores, null_own, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(res.scores, s, rtol=2e-4, atol=2e-5)
  want_p = (1 + np.sum(null_own >= own, axis=0)) / (N_NULL + 1)
  np.testing.assert_allclose(res.pvalues, want_p, rtol=1e-6)
  np.testing.assert_allclose(res.candidate_pvalues, (1 + counts) / (N_NULL + 1), rtol=1e-6)
  assert res.kind == "model" and res.n_null == N_NULL


@pytest.mark.parametrize("metric,own_score,single", [
    ("sqeuclidean", "similarity", False),
    ("cosine", "similarity", False),
    ("pearson", "similarity", True),
    ("l1", "similarity", False),
    ("euclidean", "similarity", True),
    ("sqeuclidean", "r2", False),
    ("euclidean", "pearson", True),
])
def test_own_scores_and_counts_equal_brute_force(metric, own_score, single):
  # Every own-score path, through the shared scoring kernel (precomputed null).
  params, inputs, refs, rel = toy(seed=7)
  if single:
    refs, rel = refs[:12], rel[:, :12]
  x = np.asarray(mlp_apply(params, inputs))
  rng = np.random.default_rng(1)
  nulls = (x + rng.normal(0, 1.0, (6,) + x.shape)).astype(np.float32)
  nulls[0, :4] = x[:4]  # unchanged predictions: exact ties, counted (>=)
  res = tb.precomputed_null(x, nulls, refs, rel, metric=metric, own_score=own_score,
                            candidate_level=True, progress=False)
  own = np_own(x, refs, rel, metric, own_score)
  s = np_similarity(x, refs, metric)
  null_own = np.stack([np_own(xb, refs, rel, metric, own_score) for xb in nulls])
  null_own[0, :4] = own[:4]
  counts = sum(np_similarity(xb, refs, metric) >= s for xb in nulls)
  counts[:4] += np_similarity(x[:4], refs, metric) < s[:4]  # float64 may round a tie
  np.testing.assert_allclose(res.own_scores, own, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(res.null_own_scores, null_own, rtol=2e-4, atol=2e-5)
  want_p = (1 + np.sum(null_own >= own, axis=0)) / 7
  np.testing.assert_allclose(res.pvalues, want_p, rtol=1e-6)
  np.testing.assert_allclose(res.candidate_pvalues, (1 + counts) / 7, rtol=1e-6)


def test_precomputed_null_equals_model_null_on_the_same_replicates():
  # Small integers throughout: every prediction is exact in float32, whatever order a
  # compiled kernel sums in, so both paths see bit-identical replicates.
  _, _, _, rel = toy(seed=8)
  rng = np.random.default_rng(8)
  params = {"w1": rng.integers(-2, 3, (6, 16)), "b1": rng.integers(-2, 3, 16),
            "w2": rng.integers(-2, 3, (16, 6)), "b2": np.zeros(6)}
  params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  inputs = jnp.asarray(rng.integers(-3, 4, (12, 6)), jnp.float32)
  predict = functools.partial(mlp_apply, params, activation=jnp.abs)
  owner = np.argmax(np.asarray(rel), axis=0)
  refs = predict(inputs)[owner] + jnp.asarray(rng.integers(-4, 5, (rel.shape[1], 6)),
                                              jnp.float32)
  key = jax.random.key(9)
  res = tb.model_null(predict, inputs, refs, rel, key=key, n_null=N_NULL, candidate_level=True,
                      progress=False)
  randomize = tb.resolve_randomizer("shuffle_features")
  nulls = np.stack([np.asarray(predict(randomize(jax.random.fold_in(key, b), inputs)))
                    for b in range(N_NULL)])
  pre = tb.precomputed_null(predict(inputs), nulls, refs, rel, candidate_level=True,
                            progress=False)
  assert pre.kind == "precomputed" and pre.n_null == N_NULL
  np.testing.assert_allclose(pre.null_own_scores, res.null_own_scores, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(pre.pvalues, res.pvalues)
  np.testing.assert_array_equal(pre.candidate_pvalues, res.candidate_pvalues)


def test_precomputed_null_from_anndata_objects_and_files(tmp_path):
  anndata = pytest.importorskip("anndata")
  sparse = pytest.importorskip("scipy.sparse")
  params, inputs, refs, rel = toy(seed=10)
  x = np.asarray(mlp_apply(params, inputs))
  rng = np.random.default_rng(0)
  nulls = np.stack([x + rng.normal(0, 0.5, x.shape) for _ in range(6)]).astype(np.float32)
  want = tb.precomputed_null(x, nulls, refs, rel, candidate_level=True, progress=False)

  items = [anndata.AnnData(nulls[0]), anndata.AnnData(sparse.csr_matrix(nulls[1])),
           nulls[2]]
  for b in range(3, 6):
    path = tmp_path / f"null_{b}.h5ad"
    anndata.AnnData(nulls[b]).write_h5ad(path)
    items.append(str(path) if b % 2 else path)
  got = tb.precomputed_null(anndata.AnnData(x), items, refs, rel, candidate_level=True,
                            progress=False)
  assert_same_result(got, want)


# ----------------------------------------------------------------------------- label null


@pytest.mark.parametrize("own_score", ["similarity", "r2", "pearson"])
def test_label_null_is_exact_label_permutation(own_score):
  _, _, refs, rel = toy(seed=11)
  x = np.asarray(refs[:12]) + np.random.default_rng(1).normal(0, 0.8, (12, 6))
  res = tb.label_null(x, refs, rel, own_score=own_score, candidate_level=True)
  assert res.kind == "label" and res.n_null == 11
  q = x.shape[0]
  # cross[i, j]: own score of prediction i against the truth of query j (numpy loop).
  cross = np.stack([np_own(np.repeat(x[i:i + 1], q, axis=0), refs, rel, "sqeuclidean",
                           own_score) for i in range(q)])
  want = np.array([np.sum(cross[:, j] >= cross[j, j]) / q for j in range(q)])
  np.testing.assert_allclose(res.pvalues, want, rtol=1e-6)
  np.testing.assert_allclose(res.own_scores, np.diagonal(cross), rtol=1e-4, atol=1e-5)
  # The same p-values through the generic empirical formula with B = Q - 1.
  np.testing.assert_allclose(tb.empirical_pvalues(res.own_scores, res.null_own_scores),
                             res.pvalues, rtol=1e-6)
  s = np_similarity(x, refs, "sqeuclidean")
  want_c = np.array([[np.sum(s[:, c] >= s[i, c]) / q for c in range(s.shape[1])]
                     for i in range(q)])
  np.testing.assert_allclose(res.candidate_pvalues, want_c, rtol=1e-6)
  if own_score == "similarity":
    core = tb.label_permutation_pvalues(tb.cross_own_scores(tb.similarity(x, refs), rel))
    np.testing.assert_array_equal(res.pvalues, core)


def test_label_null_collapsed_model_scores_zero():
  _, _, refs, rel = toy(seed=12)
  x = np.broadcast_to(np.asarray(refs).mean(axis=0), (12, 6))
  res = tb.label_null(x, refs, rel)
  np.testing.assert_array_equal(res.pvalues, 1.0)
  assert float(res.auc_f1().auc) == 0.0


# ----------------------------------------------------------------------------- reproducibility


def test_same_key_is_bit_identical_and_other_keys_differ():
  params, inputs, refs, rel = toy(seed=13)
  a = run_null(params, inputs, refs, rel, key=jax.random.key(3))
  b = run_null(params, inputs, refs, rel, key=jax.random.key(3))
  c = run_null(params, inputs, refs, rel, key=jax.random.key(4))
  assert_same_result(a, b)
  assert not np.array_equal(a.null_own_scores, c.null_own_scores)
  # A raw uint32 key gives the same replicates as the typed key it wraps.
  raw = run_null(params, inputs, refs, rel, key=jax.random.PRNGKey(3), candidate_level=False)
  assert raw.null_own_scores.shape == (N_NULL, 12)


def test_chunk_sizes_give_identical_results():
  flags = os.environ.get("XLA_FLAGS", "")
  if jax.default_backend() == "gpu" and not ("xla_gpu_deterministic_ops=true" in flags or
                                              "xla_gpu_autotune_level=0" in flags):
    pytest.skip("on a GPU each compilation may autotune another matmul algorithm; bit-identity "
                "needs XLA_FLAGS=--xla_gpu_deterministic_ops=true (see tb.model_null)")
  params, inputs, refs, rel = toy(seed=14)
  base = run_null(params, inputs, refs, rel, batch_size=5)
  for chunk_size in (1, 12, 100):  # per kernel call: 5, 15 and 100 replicates
    assert_same_result(base, run_null(params, inputs, refs, rel, batch_size=5,
                                      chunk_size=chunk_size))
  # Another vmapped batch size: the same p-values, null scores up to rounding.
  other = run_null(params, inputs, refs, rel)
  np.testing.assert_allclose(other.null_own_scores, base.null_own_scores, rtol=1e-5)
  np.testing.assert_array_equal(other.pvalues, base.pvalues)
  np.testing.assert_array_equal(other.candidate_pvalues, base.candidate_pvalues)


_MULTIDEVICE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_nulls import multidevice_case
    assert len(jax.devices()) == 4, jax.devices()
    with open(sys.argv[1], "w") as f:
      json.dump(multidevice_case(), f)
""")


def multidevice_case(**kw):
  """Model and precomputed nulls of one toy problem, as lists.

  With `batch_size=5` the 20 replicates spread over all four devices.
  """
  params, inputs, refs, rel = toy(seed=15)
  x = np.asarray(mlp_apply(params, inputs))
  shift = np.linspace(-1, 1, N_NULL, dtype=np.float32)[:, None, None]
  r = run_null(params, inputs, refs, rel, batch_size=5, **kw)
  p = tb.precomputed_null(x, x[None] + shift, refs, rel, candidate_level=True, batch_size=5,
                          progress=False, **kw)
  return [np.asarray(v).tolist() for v in (r.null_own_scores, r.pvalues, r.candidate_pvalues,
                                           p.null_own_scores, p.candidate_pvalues)]


def test_one_and_four_devices_give_identical_results(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  out = tmp_path / "out.json"
  proc = subprocess.run(
      [sys.executable, "-c", _MULTIDEVICE_SCRIPT, str(out), os.path.dirname(__file__)],
      env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  four = json.loads(out.read_text())
  # This process: one CPU device (the same backend, whatever accelerator is present).
  with jax.default_device(jax.devices("cpu")[0]):
    one = multidevice_case(devices=jax.devices("cpu")[:1])
  assert four == one


# ----------------------------------------------------------------------------- predict_fn kinds


def test_plain_function_and_partial_agree():
  params, inputs, refs, rel = toy(seed=16)
  part = run_null(params, inputs, refs, rel)
  closure = tb.model_null(lambda v: mlp_apply(params, v), inputs, refs, rel,
                          key=jax.random.key(0), n_null=N_NULL, candidate_level=True,
                          progress=False)
  np.testing.assert_allclose(closure.null_own_scores, part.null_own_scores, rtol=1e-5)
  np.testing.assert_array_equal(closure.pvalues, part.pvalues)
  np.testing.assert_array_equal(closure.candidate_pvalues, part.candidate_pvalues)


def test_partial_arrays_are_traced_arguments():
  from twinbench_jax._src.nulls import predict  # pylint: disable=g-import-not-at-top
  params, _, _, _ = toy(seed=17)
  apply, dynamic = predict.split_predict(functools.partial(mlp_apply, params,
                                                           activation=jnp.tanh))
  assert len(dynamic) == 4  # the four parameter arrays; `activation` stays static
  other, _ = predict.split_predict(functools.partial(mlp_apply, toy(seed=18)[0],
                                                     activation=jnp.tanh))
  assert apply == other and hash(apply) == hash(other)  # new weights reuse the compiled kernel


def test_flax_nnx_module():
  nnx = pytest.importorskip("flax.nnx")

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.l1 = nnx.Linear(6, 16, rngs=rngs)
      self.l2 = nnx.Linear(16, 6, rngs=rngs)

    def __call__(self, x):
      return self.l2(jnp.tanh(self.l1(x)))

  net = Net(nnx.Rngs(0))
  _, inputs, refs, rel = toy(seed=19)
  kw = dict(key=jax.random.key(8), n_null=N_NULL, candidate_level=True, progress=False)
  res = tb.model_null(net, inputs, refs, rel, **kw)
  plain = tb.model_null(lambda v: net(v), inputs, refs, rel, **kw)  # noqa: PLW0108
  np.testing.assert_allclose(res.null_own_scores, plain.null_own_scores, rtol=1e-5)
  np.testing.assert_array_equal(res.pvalues, plain.pvalues)


def control_only(params, v):
  # Reads the embedding but does not depend on it.
  return mlp_apply(params, v["control"]) + 0.0 * v["embedding"][:, :1]


def test_pytree_inputs_randomise_only_the_named_leaves():
  params, control, refs, rel = toy(seed=20)
  inputs = {"control": control, "embedding": jax.random.normal(jax.random.key(9), (12, 4))}
  kw = dict(key=jax.random.key(10), n_null=N_NULL, progress=False)
  predict = functools.partial(control_only, params)
  emb = tb.model_null(predict, inputs, refs, rel, leaves=["embedding"], **kw)
  np.testing.assert_array_equal(emb.pvalues, 1.0)
  ctrl = tb.model_null(predict, inputs, refs, rel, randomize="permute_rows",
                       leaves="control", **kw)
  assert float(ctrl.pvalues.mean()) < 0.5


def test_callable_randomiser():
  params, inputs, refs, rel = toy(seed=21)
  noise = lambda k, v: v + 3.0 * jax.random.normal(k, v.shape)  # noqa: E731
  res = run_null(params, inputs, refs, rel, randomize=noise)
  assert res.null_own_scores.shape == (N_NULL, 12)
  assert float(res.pvalues.mean()) < 0.5


# ----------------------------------------------------------------------------- result type


def test_result_is_a_frozen_pytree():
  params, inputs, refs, rel = toy(seed=22)
  res = run_null(params, inputs, refs, rel, progress=True)
  with pytest.raises(dataclasses.FrozenInstanceError):
    res.n_null = 3  # type: ignore[misc]
  assert len(jax.tree_util.tree_leaves(res)) == 6
  same = jax.jit(lambda r: r)(res)
  assert isinstance(same, tb.NullResult) and same.n_null == N_NULL and same.kind == "model"
  assert res.ranks().shape == (12,)
  no_cand = dataclasses.replace(res, candidate_pvalues=None)
  assert len(jax.tree_util.tree_leaves(no_cand)) == 5
  with pytest.raises(ValueError, match="candidate_level=True"):
    no_cand.candidate_auc_f1()


# ----------------------------------------------------------------------------- bad input


def _bad(**over):
  params, inputs, refs, rel = toy(seed=23)
  kw = dict(predict_fn=functools.partial(mlp_apply, params), inputs=inputs, references=refs,
            relevance=rel, key=jax.random.key(0), n_null=3, progress=False)
  kw.update(over)
  return tb.model_null(**kw)


def test_errors_name_the_problem():
  params, inputs, refs, rel = toy(seed=23)
  with pytest.raises(ValueError, match=r"predict_fn\(inputs\)` returned shape \(12, 5\)"):
    _bad(predict_fn=lambda v: mlp_apply(params, v)[:, :5])
  with pytest.raises(ValueError, match=r"predict_fn\(inputs\)` returned shape \(11, 6\)"):
    _bad(predict_fn=lambda v: mlp_apply(params, v)[:11])
  with pytest.raises(ValueError, match="not a single array"):
    _bad(predict_fn=lambda v: (v, v))
  nan_inputs = {"control": inputs.at[3, 2].set(jnp.nan), "embedding": inputs}
  with pytest.raises(ValueError, match=r"inputs\['control'\].*non-finite.*\(3, 2\)"):
    _bad(inputs=nan_inputs, predict_fn=lambda v: mlp_apply(params, v["control"]))
  with pytest.raises(ValueError, match=r"predict_fn\(inputs\)` holds 12 non-finite"):
    _bad(predict_fn=lambda v: mlp_apply(params, v).at[:, 0].set(jnp.nan))
  # Finite on the real inputs, NaN on randomised ones (log of -1).
  nan_when_shuffled = lambda v: mlp_apply(params, v) + jnp.sum(  # noqa: E731
      jnp.log(jnp.where(v == inputs, 1.0, -1.0)), axis=1, keepdims=True)
  with pytest.raises(ValueError, match="non-finite predictions .* for 3 of the 3 randomised"):
    _bad(predict_fn=nan_when_shuffled)
  for n in (0, -2):
    with pytest.raises(ValueError, match="`n_null` must be >= 1"):
      _bad(n_null=n)
  with pytest.raises(TypeError, match="`n_null` must be an int"):
    _bad(n_null=2.5)
  with pytest.raises(ValueError, match=r"randomiser `randomize` changed inputs from shape "
                                        r"\(12, 6\) float32 to \(12, 5\)"):
    _bad(randomize=lambda k, v: v[:, :5])
  with pytest.raises(ValueError, match="changed the structure"):
    _bad(randomize=lambda k, v: (v, v))
  with pytest.raises(ValueError, match="unknown randomiser"):
    _bad(randomize="shuffle")
  with pytest.raises(ValueError, match=r"leaves` \['nope'\] not found"):
    _bad(leaves=["nope"])
  with pytest.raises(TypeError, match="`key` must be a JAX PRNG key"):
    _bad(key=0)
  with pytest.raises(ValueError, match="unknown `own_score`"):
    _bad(own_score="mse")
  with pytest.raises(ValueError, match="unknown `metric`"):
    _bad(metric="manhattan")
  with pytest.raises(ValueError, match="`chunk_size` must be >= 1"):
    _bad(chunk_size=0)
  with pytest.raises(ValueError, match="`batch_size` must be >= 1"):
    _bad(batch_size=0)
  with pytest.raises(TypeError, match="`predict_fn` must be callable"):
    _bad(predict_fn="model")
  with pytest.raises(ValueError, match="`relevance`: 1 query has no relevant candidate"):
    _bad(relevance=rel.at[2].set(False))
  with pytest.raises(ValueError, match="`references` holds 1 non-finite"):
    _bad(references=refs.at[0, 0].set(jnp.inf))


def test_precomputed_and_label_errors():
  params, inputs, refs, rel = toy(seed=24)
  x = np.asarray(mlp_apply(params, inputs))
  with pytest.raises(ValueError, match=r"`null_predictions` must have shape \(B, Q, G\) = "
                                        r"\(B, 12, 6\), got \(3, 12, 5\)"):
    tb.precomputed_null(x, np.zeros((3, 12, 5)), refs, rel, progress=False)
  with pytest.raises(ValueError, match=r"`null_predictions\[1\]` must have shape"):
    tb.precomputed_null(x, [x, x[:4]], refs, rel, progress=False)
  bad = np.stack([x, x]).copy()
  bad[1, 5, 2] = np.nan
  with pytest.raises(ValueError, match="replicate 1 holds non-finite.*query 5, feature 2"):
    tb.precomputed_null(x, bad, refs, rel, progress=False)
  with pytest.raises(ValueError, match="zero null replicates"):
    tb.precomputed_null(x, [], refs, rel, progress=False)
  with pytest.raises(ValueError, match=r"`predictions` must have shape \(Q, G\)"):
    tb.precomputed_null(x[:, :4], [x], refs, rel, progress=False)
  with pytest.raises(FileNotFoundError, match="no file at"):
    tb.precomputed_null(x, ["/nonexistent/null_0.h5ad"], refs, rel, progress=False)
  with pytest.raises(ValueError, match="at least 2 queries"):
    tb.label_null(x[:1], refs[:1])

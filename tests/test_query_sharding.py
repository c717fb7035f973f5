"""Query-sharded scoring: queries split over a mesh axis equal the unsharded path bit for bit.

A subprocess with 4 simulated CPU devices runs `tb.evaluate_arrays`,
`tb.label_null` and `tb.model_null` (query and candidate level) with the queries
split over 1, 2 and 4 devices (and a 2 x 2 replicates x queries mesh for the
model null) and compares every output with the same call without a mesh. The
sizes keep each device's block above the ~4,096 elements below which XLA's CPU
backend reduces rows with other code (see `query_sharding`).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import twinbench_jax as tb

Q, G = 128, 160


def _problem(q=Q, g=G, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(q, g)).astype(np.float32)
  y = (x + 1.5 * rng.normal(size=(q, g))).astype(np.float32)
  x[7] = x[3]  # two identical predictions: must tie exactly, sharded or not
  return x, y


def _model_problem(q=Q, g=G):
  rng = np.random.default_rng(1)
  inputs = rng.normal(size=(q, g)).astype(np.float32)
  w = (rng.normal(size=(g, g)) / np.sqrt(g)).astype(np.float32)
  base = rng.normal(size=(q, g)).astype(np.float32)
  # From no dependence on the input (p = 1) to a weak one: the p-values spread out.
  scale = np.linspace(0.0, 0.05, q, dtype=np.float32)[:, None]
  refs = (base + scale * inputs @ w + 0.3 * rng.normal(size=(q, g))).astype(np.float32)

  def predict(w, v):
    return base + scale * (v @ w)

  return functools.partial(predict, jnp.asarray(w)), inputs, refs


def _meshes():
  devs = jax.devices()
  meshes = {f"q{n}": tb.query_mesh(devs[:n]) for n in (1, 2, 4)}
  meshes["r2q2"] = Mesh(np.array(devs[:4]).reshape(2, 2), ("replicates", "queries"))
  return meshes


def _mismatches(name, got, want, fields):
  bad = []
  for f in fields:
    a, b = getattr(got, f), getattr(want, f)
    if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True):
      bad.append(f"{name}.{f}")
  return bad


def compare_all() -> dict:
  """Every sharded call against its unsharded twin: names of the fields that differ."""
  x, y = _problem()
  rng = np.random.default_rng(2)
  perm = np.zeros((Q, Q), bool)
  perm[np.arange(Q), rng.permutation(Q)] = True
  multi = perm | np.roll(perm, 1, axis=1)
  xu, yu = _problem(q=130)  # 130 rows over 4 devices: padded blocks
  bad, arrays_f = [], ("ranks", "own_scores", "pvalues", "auc_f1", "mrr", "normalized_rank")
  label_f = ("own_scores", "null_own_scores", "pvalues", "scores", "candidate_pvalues")
  model_f = ("own_scores", "null_own_scores", "pvalues", "scores")
  fn, inputs, refs = _model_problem()
  model_kw = dict(key=jax.random.key(3), n_null=13, batch_size=2, progress=False)
  want_model = {c: tb.model_null(fn, inputs, refs, candidate_level=c, **model_kw)
                for c in (False, True)}
  stats = {"model_pvalues": len(np.unique(want_model[True].pvalues)),
           "model_candidate_pvalues": len(np.unique(want_model[True].candidate_pvalues))}
  for name, mesh in _meshes().items():
    full = name == "q4"  # every option on 4 devices; the main paths on 1 and 2
    if "replicates" not in mesh.axis_names:
      for tag, args, kw in (("identity", (x, y), {}), ("perm", (x, y, perm), {}),
                            ("multi", (x, y, multi), {"metric": "cosine"}),
                            ("uneven", (xu, yu), {"ties": "pessimistic"}))[:4 if full else 2]:
        bad += _mismatches(f"{name}.arrays.{tag}", tb.evaluate_arrays(*args, mesh=mesh, **kw),
                           tb.evaluate_arrays(*args, **kw), arrays_f)
      for own in ("similarity", "r2", "pearson")[:3 if full else 1]:
        kw = dict(candidate_level=True, own_score=own)
        bad += _mismatches(f"{name}.label.{own}", tb.label_null(x, y, mesh=mesh, **kw),
                           tb.label_null(x, y, **kw), label_f)
      got = tb.label_null(x, y, perm, mesh=mesh, candidate_level=True)
      bad += _mismatches(f"{name}.label.perm", got,
                         tb.label_null(x, y, perm, candidate_level=True), label_f)
      if full:  # [Q, C] results split by rows need equal blocks: 130 rows over 4 refused
        try:
          tb.label_null(xu, yu, mesh=mesh)
          bad.append("uneven label_null accepted")
        except ValueError as e:
          if "not a multiple of 4" not in str(e):
            bad.append(f"uneven label_null message: {e}")
      # Per-device memory: each device holds Q/n rows of the [Q, C] outputs.
      n = mesh.shape["queries"]
      stats[f"{name}_shard_rows"] = sorted({s.data.shape[0] for s in
                                            got.candidate_pvalues.addressable_shards})[0]
      stats[f"{name}_n"] = n
    for c in (False, True) if name != "q1" else ():
      got = tb.model_null(fn, inputs, refs, candidate_level=c, mesh=mesh, **model_kw)
      fields = model_f + (("candidate_pvalues",) if c else ())
      bad += _mismatches(f"{name}.model.cand{int(c)}", got, want_model[c], fields)
  return {"bad": bad, **stats}


def _run_subprocess(tmp_path) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  out = tmp_path / "out.json"
  proc = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text())


def test_sharded_equals_unsharded_on_1_2_4_devices(tmp_path):
  res = _run_subprocess(tmp_path)
  assert res["bad"] == []
  for name in ("q1", "q2", "q4"):  # O(Q C / n) per device: Q/n rows each
    assert res[f"{name}_shard_rows"] == Q // res[f"{name}_n"]
  # Not degenerate: the model null tells queries and candidates apart.
  assert res["model_pvalues"] > 3 and res["model_candidate_pvalues"] > 3


def test_one_device_mesh_matches_in_process():
  x, y = _problem(q=64, g=96)
  mesh = tb.query_mesh(jax.devices()[:1])
  got, want = tb.evaluate_arrays(x, y, mesh=mesh), tb.evaluate_arrays(x, y)
  np.testing.assert_array_equal(got.pvalues, want.pvalues)
  np.testing.assert_array_equal(got.ranks, want.ranks)
  # Independent check of the label p-values: the column counts of the score matrix.
  s = np.asarray(tb.similarity(x, y))
  np.testing.assert_allclose(got.pvalues, np.mean(s >= np.diag(s)[None, :], axis=0))
  assert got.pvalues[3] == got.pvalues[7] or s[3, 3] != s[7, 7]


def test_under_jit_a_nan_prediction_poisons_its_query():
  x, y = _problem(q=16, g=8)
  mesh = tb.query_mesh(jax.devices()[:1])
  run = jax.jit(lambda a, b: tb.evaluate_arrays(a, b, mesh=mesh))
  np.testing.assert_array_equal(run(x, y).pvalues, tb.evaluate_arrays(x, y).pvalues)
  x[2, 1] = np.nan
  res = run(x, y)
  assert np.isnan(res.pvalues[2]) and np.isnan(res.auc_f1)
  assert np.all(np.isfinite(np.delete(np.asarray(res.pvalues), 2)))


def test_mesh_without_a_query_axis_is_refused():
  x, y = _problem(q=8, g=4)
  with pytest.raises(ValueError, match="'queries'"):
    tb.evaluate_arrays(x, y, mesh=Mesh(np.array(jax.devices()[:1]), ("replicates",)))
  with pytest.raises(TypeError, match="`mesh` must be a jax.sharding.Mesh"):
    tb.label_null(x, y, mesh=jax.devices())


def test_nan_prediction_is_refused_with_a_mesh_too():
  x, y = _problem(q=8, g=4)
  x[2, 1] = np.nan
  with pytest.raises(ValueError, match="predictions"):
    tb.evaluate_arrays(x, y, mesh=tb.query_mesh(jax.devices()[:1]))


if __name__ == "__main__":
  with open(sys.argv[1], "w") as f:
    json.dump(compare_all(), f)

"""Multi-process (multi-host) runs: two `jax.distributed` CPU processes vs one.

Two local processes, two CPU devices each, join one `jax.distributed` job over
127.0.0.1 (gloo collectives), so the nulls split replicates over a global mesh
of four devices on two processes. Each process passes the same full inputs and
must get back, as ordinary arrays, the results of the same calls in a single
process, bit for bit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

# Per process: a hang (a collective waiting for a peer) fails the test instead of blocking.
TIMEOUT_S = 240
N_PROCESSES = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def case() -> dict:
  """Every public entry point on one tiny problem, as a dict of numpy arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import twinbench_jax as tb  # pylint: disable=g-import-not-at-top

  q, g, h = 6, 5, 4
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(q, g)).astype(np.float32)
  w1 = rng.normal(size=(g, h)).astype(np.float32)
  w2 = rng.normal(size=(h, g)).astype(np.float32)
  base = 2.0 * rng.normal(size=(q, g)).astype(np.float32)
  refs = (base + np.tanh(inputs @ w1) @ w2 + 0.5 * rng.normal(size=(q, g))).astype(np.float32)

  def predict(w1, w2, v):  # the input moves the predictions a little: p-values in between
    return base + 0.3 * jnp.tanh(v @ w1) @ w2

  import functools  # pylint: disable=g-import-not-at-top
  fn = functools.partial(predict, jnp.asarray(w1), jnp.asarray(w2))
  kw = dict(key=jax.random.key(3), n_null=11, batch_size=2, progress=False)
  query = tb.model_null(fn, inputs, refs, **kw)
  cand = tb.model_null(fn, inputs, refs, candidate_level=True, chunk_size=4, **kw)
  x = np.asarray(fn(inputs))
  shift = np.linspace(-1, 1, 7, dtype=np.float32)[:, None, None]
  pre = tb.precomputed_null(x, x[None] + shift, refs, candidate_level=True, batch_size=2,
                            progress=False)
  label = tb.label_null(x, refs, candidate_level=True)
  arrays = tb.evaluate_arrays(x, refs)
  out = {"n_devices": np.int32(len(jax.devices())),
         "arrays_pvalues": arrays.pvalues, "arrays_ranks": arrays.ranks,
         "arrays_auc_f1": arrays.auc_f1}
  for name, res in (("model", query), ("model_cand", cand), ("precomputed", pre),
                    ("label", label)):
    out[f"{name}_null_own"] = res.null_own_scores
    out[f"{name}_pvalues"] = res.pvalues
    out[f"{name}_auc_f1"] = res.auc_f1().auc
    if res.candidate_pvalues is not None:
      out[f"{name}_candidate_pvalues"] = res.candidate_pvalues
      out[f"{name}_candidate_auc_f1"] = res.candidate_auc_f1().auc
  # `tb.evaluate` (AnnData in, a report out) with the model null through the same engine.
  from adata_helpers import make_pred, make_real  # pylint: disable=g-import-not-at-top
  real, means = make_real(n_perturbations=4, n_cells=3, n_control=3, n_genes=6)
  onehot = np.eye(4, dtype=np.float32)
  rep = tb.evaluate(make_pred(means[:4], [f"p{i}" for i in range(4)], real.var_names), real,
                    null="model", predict_fn=lambda v: v @ jnp.asarray(means[:4], jnp.float32),
                    inputs=onehot, randomize="permute_rows", n_null=5, key=jax.random.key(0),
                    baselines=())
  out["evaluate_pvalues"] = rep.per_perturbation["pvalue"].to_numpy()
  out["evaluate_auc_f1"] = rep.auc_f1
  # Queries split over every device of the job (one global "queries" axis). The blocks
  # keep XLA's CPU row reductions on their large-array code (see `query_sharding`).
  xq = rng.normal(size=(128, 256)).astype(np.float32)
  yq = (0.1 * xq + rng.normal(size=(128, 256))).astype(np.float32)  # p-values spread out
  sharded = tb.evaluate_arrays(xq, yq, mesh=tb.query_mesh())
  label_q = tb.label_null(xq, yq, mesh=tb.query_mesh())
  out.update(sharded_pvalues=sharded.pvalues, sharded_ranks=sharded.ranks,
             sharded_auc_f1=sharded.auc_f1, sharded_label_pvalues=label_q.pvalues,
             sharded_label_own=label_q.own_scores,
             unsharded_pvalues=tb.evaluate_arrays(xq, yq).pvalues)
  return {k: np.asarray(v) for k, v in out.items()}


def _worker(process_id: int, port: int, out_path: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=N_PROCESSES, process_id=process_id)
  assert jax.process_count() == N_PROCESSES and len(jax.local_devices()) == 2
  np.savez(out_path, **case())
  # Inputs that differ between the processes are refused, not mixed into one result.
  import twinbench_jax as tb  # pylint: disable=g-import-not-at-top
  x = np.eye(4, dtype=np.float32)
  for call in (lambda: tb.model_null(lambda v: v, x + process_id, x, key=jax.random.key(0),
                                     n_null=3, progress=False),
               lambda: tb.precomputed_null(x + process_id, x[None], x, progress=False)):
    try:
      call()
    except ValueError as e:
      assert "differ between the 2 processes" in str(e), e
    else:
      raise AssertionError("inputs that differ between processes were accepted")


def _run(tmp_path, n_processes: int) -> list[dict]:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  port = _free_port()
  paths = [tmp_path / f"out{i}_of_{n_processes}.npz" for i in range(n_processes)]
  procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), str(paths[i]),
                             str(n_processes)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(n_processes)]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  return [dict(np.load(path)) for path in paths]


def test_two_processes_match_one_bit_for_bit(tmp_path):
  multi = _run(tmp_path, N_PROCESSES)
  (single,) = _run(tmp_path, 1)
  assert single["n_devices"] == 2
  for got in multi:
    assert got["n_devices"] == 4  # one global mesh over both processes' devices
    assert got.keys() == single.keys()
    for k, want in single.items():
      if k != "n_devices":
        np.testing.assert_array_equal(got[k], want, err_msg=k)
  # The problem is not degenerate: the nulls tell queries and candidates apart.
  assert len(np.unique(single["model_pvalues"])) > 2
  assert len(np.unique(single["model_cand_candidate_pvalues"])) > 2
  assert 0 < single["model_cand_candidate_auc_f1"] < 1
  # Query-sharded over the global mesh: the same p-values as one device, unsharded.
  np.testing.assert_array_equal(single["sharded_pvalues"], single["unsharded_pvalues"])
  assert len(np.unique(single["sharded_pvalues"])) > 2


if __name__ == "__main__":
  # `python test_multihost.py PROCESS_ID PORT OUT.npz N_PROCESSES`: one process of a job.
  if sys.argv[4] == "1":
    np.savez(sys.argv[3], **case())
  else:
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])

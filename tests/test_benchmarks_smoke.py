"""Smoke test of the benchmark suite: the runner works end to end on tiny sizes.

Benchmarks never run in the test suite; this only checks that the scripts do
not rot (`python -m benchmarks.run --tiny`, about half a minute). The
side by side with cell-eval runs only where `cell_eval` is importable. The
reproduction of cell-eval's discrimination score is also checked against a
plain loop here, and against cell-eval itself when it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from benchmarks import bench_soft_training, cell_eval_compat, datasets, run  # noqa: E402
from benchmarks.soft_training_tasks import Split  # noqa: E402

HAS_CELL_EVAL = importlib.util.find_spec("cell_eval") is not None


def _loop_discrimination(pred_deltas, real_deltas, labels, genes):
  """cell-eval's definition written as a loop (gene column dropped per query)."""
  p = len(labels)
  genes = list(genes)
  scores = []
  for q in range(p):
    keep = [g for g in range(len(genes)) if genes[g] != labels[q]]
    d = np.abs(real_deltas[:, keep] - pred_deltas[q, keep]).sum(axis=1)
    rank = int(np.sum(d < d[q]))
    scores.append(1.0 - rank / p)
  return np.asarray(scores)


def test_reproduction_matches_a_plain_loop():
  rng = np.random.default_rng(0)
  genes = np.asarray([f"g{i}" for i in range(12)])
  labels = np.asarray(["g3", "g0", "x", "g11", "g7", "g5"])  # "x" has no gene column
  real = rng.normal(size=(6, 12))
  pred = real + rng.normal(size=(6, 12))
  res = cell_eval_compat.discrimination_from_deltas(pred.astype(np.float32),
                                                    real.astype(np.float32), labels, genes)
  want = _loop_discrimination(pred.astype(np.float32).astype(np.float64),
                              real.astype(np.float32).astype(np.float64), labels, genes)
  np.testing.assert_allclose(res.scores, want)
  assert res.scores.min() >= 1.0 / 6 and res.scores.max() <= 1.0


def test_target_column_is_left_out():
  genes = np.asarray(["a", "b", "c"])
  x = np.asarray([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
  y = np.asarray([[5.0, 1.0, 0.0], [0.0, 1.0, 7.0]], np.float32)
  d = np.asarray(cell_eval_compat.l1_without_target(
      x, y, np.asarray(cell_eval_compat.target_columns(["a", "zz"], genes))))
  np.testing.assert_allclose(d, [[1.0, 8.0], [6.0, 8.0]])


@pytest.mark.skipif(not HAS_CELL_EVAL, reason="cell_eval not installed (the `bench` extra)")
def test_reproduction_agrees_with_cell_eval():
  from cell_eval._evaluator import _build_anndata_pair
  from cell_eval.metrics import discrimination_score

  pred, real = datasets.synthetic_pair(40, n_genes=300, cells_per_perturbation=20, seed=3)
  ours = cell_eval_compat.cell_eval_discrimination(pred, real)
  pair = _build_anndata_pair(real=real.copy(), pred=pred.copy(), control_pert="control",
                             pert_col="perturbation")
  theirs = discrimination_score(pair)
  np.testing.assert_allclose(ours.scores, [theirs[lab] for lab in ours.labels])


@pytest.mark.slow
def test_runner_tiny(tmp_path):
  out = tmp_path / "out"
  # The other scripts (null engine, soft score, evaluate) have their own --quick
  # sizes; the runner's handling of them is the same code path as bench_core's.
  code = run.main(["--tiny", "--out", str(out), "--cache", str(tmp_path / "cache"),
                   "--skip", "null,soft,soft_tracking,evaluate,soft_training"])
  assert code == 0
  results = json.loads((out / "benchmarks.json").read_text())
  assert results["mode"] == "tiny"
  assert "error" not in results["core"] and results["core"]["tables"]
  scaling = results["scaling"]
  assert len(scaling["q"]["points"]) == 2 and np.isfinite(scaling["q"]["exponent_time"])
  assert len(scaling["b"]["points"]) == 2
  assert scaling["devices"]["identical"]
  assert "skipped" in scaling["gpu"] or scaling["gpu"]["pipeline"]["points"]
  ce = results["cell_eval"]
  if HAS_CELL_EVAL:
    (r,) = ce["results"]
    assert r["agreement"]["differ_x64"] == 0
    assert r["mean_baseline"]["twinbench_auc_f1"] == 0.0
    assert (out / "cell_eval_mean_baseline.png").is_file()
  else:
    assert "skipped" in ce
  text = (out / "benchmarks.md").read_text()
  assert "## Headline" in text and "## Scaling" in text
  assert (out / "benchmark_scaling.png").is_file()


def test_soft_training_null_is_model_null():
  """The study's in-jit exact null gives `tb.model_null`'s p-values and AUC-F1."""
  import jax
  import jax.numpy as jnp

  import twinbench_jax as tb

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(20, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(6, 30)), jnp.float32)
  y = x @ w + jnp.asarray(2.0 * rng.normal(size=(20, 30)), jnp.float32)
  params = {"w": 0.5 * w, "b": jnp.zeros(30)}
  key = jax.random.key(3)
  ours = bench_soft_training.evaluate_split(params, Split(x, y), key)
  res = tb.model_null(lambda i: bench_soft_training.predict(params, i), x, y, key=key,
                      n_null=bench_soft_training.N_NULL_EVAL, progress=False)
  assert float(ours["hard_auc_f1"]) == float(res.auc_f1().auc) > 0
  np.testing.assert_allclose(ours["hit1"], np.mean(np.asarray(res.ranks()) <= 1))
  # a model that ignores its input: exact ties with every replicate, AUC-F1 = 0
  flat = bench_soft_training.evaluate_split({"w": 0.0 * w, "b": y.mean(0)}, Split(x, y), key)
  assert float(flat["hard_auc_f1"]) == 0.0


def test_soft_training_aux_is_the_loss_factory():
  """The study's soft AUC-F1 rows are `tb.make_soft_auc_f1_loss` at its defaults / local units."""
  import jax
  import jax.numpy as jnp

  import twinbench_jax as tb

  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(24, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(5, 16)), jnp.float32)
  refs = x @ w + jnp.asarray(rng.normal(size=(24, 16)), jnp.float32)
  params = {"w": 0.7 * w, "b": jnp.zeros(16)}
  rows = jnp.asarray([3, 0, 17, 9, 21, 5])
  key = jax.random.key(4)
  batch = tb.QueryBatch(x[rows], rows)
  n = bench_soft_training.N_NULL_TRAIN
  values = {}
  for kind, units in (("soft_auc_f1", None), ("soft_auc_f1_local", "local")):
    ours = bench_soft_training.aux_loss(kind, params, x[rows], rows, refs, key)
    kw = {} if units is None else dict(relative=units)  # None: the factory's own default
    want = tb.make_soft_auc_f1_loss(bench_soft_training.predict, refs, n_null=n, **kw)(
        params, batch, key)
    np.testing.assert_allclose(float(ours), float(want), rtol=1e-5, atol=1e-6)
    values[kind] = float(ours)
  assert values["soft_auc_f1"] != values["soft_auc_f1_local"]  # the two units differ here
  # the soft hit@1 row: the soft AUC-F1 row's rank and hit terms, same (global) units
  s = tb.similarity(bench_soft_training.predict(params, x[rows]), refs)
  rel = jax.nn.one_hot(rows, 24, dtype=bool)
  np.testing.assert_allclose(
      float(bench_soft_training.aux_loss("soft_hit", params, x[rows], rows, refs, key)),
      float(1.0 - jnp.mean(tb.soft_hit_at_k(tb.soft_truth_ranks(s, rel, relative="global"),
                                            k=1))), rtol=1e-6)


def test_soft_training_tiny(tmp_path):
  """The study end to end at the tiniest size: page, figure, JSON, finite curves."""
  code = bench_soft_training.main(["--tiny", "--out", str(tmp_path), "--tasks", "toy",
                                   "--losses", "soft_auc_f1"])
  assert code == 0
  text = (tmp_path / "soft_training.md").read_text()
  assert "## Task `toy`" in text and "+ soft AUC-F1 (loss default" in text
  assert "## Goal of issue 14" in text and ("toy yes" in text or "toy no" in text)
  assert (tmp_path / "soft_training_toy.png").is_file()
  summary = json.loads((tmp_path / "soft_training.json").read_text())
  losses = summary["tasks"]["toy"]["losses"]
  assert set(losses) == {"mse", "soft_auc_f1"}
  for res in losses.values():
    assert len(res["test_auc_f1"]) == 2 and np.all(np.isfinite(res["test_mse"]))
    assert all(0.0 <= v < 1.0 for v in res["test_auc_f1"])

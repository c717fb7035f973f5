"""Does the default soft AUC-F1 track the hard one? Linear models of the simulator (issue 14).

    python -m benchmarks.bench_soft_tracking            # every setting (~25 min, 2 CPU cores)
    python -m benchmarks.bench_soft_tracking --quick    # a subset (< 1 min of CPU)
    python -m benchmarks.bench_soft_tracking --candidates 5000   # one setting

Data: `tb.datasets.simulate_perturbations(key(0), n_perturbations=P, n_genes=200,
n_cells=20)`; the references are the observed pseudobulks. Inputs: `d`
features `effects @ W * 3 + noise·N(0, 1)`, `W` `[200, d]` Gaussian / √200;
the model is the least-squares fit (with intercept) of the pseudobulks on the
inputs. Fewer features or more noise: a weaker model (hard AUC-F1 from about
0.02 to 0.8 at P = 200).

For every model, metric and null, the hard AUC-F1 (`NullResult.auc_f1()`) and
`tb.soft_auc_f1` at its defaults on the same arrays (the null's scores, own
scores and null own scores), and the same with ``relative="global"`` (the
former default's units) for contrast. Nulls: `tb.model_null` (B = 99,
shuffled input features), `tb.precomputed_null` (the same randomised
predictions, passed as arrays) and `tb.label_null`. The gradient column is the gradient of
`tb.soft_auc_f1_loss` (model in the loop, the default local units of
`tb.soft_auc_f1`: ``relative=True``) with respect to
the model's weights: its norm, and the best change of the loss after a step
along -∇ of 1e-2, 1e-3 or 1e-4 times ‖β‖ (same null draw; negative: the step
raised the soft AUC-F1). A summary table gives, per setting, the largest
|soft - hard| and Spearman(soft, hard) across the models.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import twinbench_jax as tb
from benchmarks import _common

# (d, noise) from weak to good at P = 200
MODELS_200 = ((4, 1.0), (8, 1.0), (16, 1.0), (24, 1.0), (32, 1.0), (32, 0.5), (32, 0.3),
              (32, 0.1), (40, 0.1), (48, 0.3))
MODELS_20 = ((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0))  # d = 1: shuffling changes nothing
MODELS_5000 = ((64, 0.1), (96, 0.1), (112, 0.1), (128, 0.1), (160, 0.1))
N_NULL = 99


def predict(beta, x):
  return jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1) @ beta


def make_models(n_pert, configs, n_cells=20):
  """`y` `[P, G]` pseudobulks and a list of `((d, noise), x, beta)` least-squares models."""
  sim = tb.datasets.simulate_perturbations(jax.random.key(0), n_perturbations=n_pert, n_genes=200,
                                  n_cells=n_cells)
  y = sim.pseudobulk()
  models = []
  for d, noise in configs:
    kw, kn = jax.random.split(jax.random.key(100 + d + int(100 * noise)))
    w = jax.random.normal(kw, (y.shape[1], d)) / np.sqrt(y.shape[1])
    x = sim.effects @ w * 3 + noise * jax.random.normal(kn, (n_pert, d))
    xa = jnp.concatenate([x, jnp.ones((n_pert, 1))], axis=1)
    models.append(((d, noise), x, jnp.linalg.lstsq(xa, y)[0]))
  return y, models


def nulls(y, x, beta, metric, kinds):
  """`{kind: NullResult}` for the requested null kinds."""
  fn = functools.partial(predict, beta)
  out = {}
  if "model" in kinds or "precomputed" in kinds:
    out["model"] = tb.model_null(fn, x, y, key=jax.random.key(1), n_null=N_NULL, metric=metric,
                                 progress=False)
  if "precomputed" in kinds:
    keys = [jax.random.fold_in(jax.random.key(1), b) for b in range(N_NULL)]
    null_x = jnp.stack([fn(tb.shuffle_features(k, x)) for k in keys])
    out["precomputed"] = tb.precomputed_null(fn(x), null_x, y, metric=metric, progress=False)
  if "label" in kinds:
    out["label"] = tb.label_null(fn(x), y, metric=metric)
  return {k: v for k, v in out.items() if k in kinds}


def soft_values(res):
  args = (res.scores, res.relevance, res.own_scores, res.null_own_scores)
  return float(tb.soft_auc_f1(*args)), float(tb.soft_auc_f1(*args, relative="global"))


STEPS = (1e-2, 1e-3, 1e-4)


def gradient_check(vg, x, beta, batch=None):
  """(‖∇‖, best loss change along -∇, its step) for `vg`, the jitted value-and-grad of
  `tb.soft_auc_f1_loss` at its defaults, on the first `batch` queries.

  Steps move the weights by `STEPS` times `‖β‖`; the same key draws the same null, so
  a negative change means the step raised the soft AUC-F1 of this draw."""
  n = x.shape[0] if batch is None else batch
  qb = tb.QueryBatch(x[:n], jnp.arange(n))
  key = jax.random.key(2)
  value, g = vg(beta, qb, key)
  norm = float(jnp.linalg.norm(g))
  if not np.isfinite(norm) or norm == 0:
    return norm, float("nan"), float("nan")
  changes = [float(vg(beta - f * float(jnp.linalg.norm(beta)) / norm * g, qb, key)[0])
             - float(value) for f in STEPS]
  best = int(np.argmin(changes))
  return norm, changes[best], STEPS[best]


def run_setting(n_pert, configs, metrics, kinds, *, n_cells=20, grad_batch=None, log=print):
  """Rows `(P, metric, null, model, hard, soft, former, |Δ|, ‖∇‖, Δloss, step)`."""
  y, models = make_models(n_pert, configs, n_cells=n_cells)
  rows = []
  for metric in metrics:
    # the gradient of the relaxation whose value is tabled: its default local units
    # (the loss factory's own default is relative="global")
    loss = tb.soft_auc_f1_loss(predict, y, metric=metric, relative=True)
    vg = jax.jit(jax.value_and_grad(loss))
    for cfg, x, beta in models:
      t = time.perf_counter()
      results = nulls(y, x, beta, metric, kinds)
      norm, change, step = gradient_check(vg, x, beta, grad_batch)
      for kind, res in results.items():
        hard = float(res.auc_f1().auc)
        soft, former = soft_values(res)
        rows.append((n_pert, metric, kind, f"d={cfg[0]}, noise={cfg[1]:g}", hard, soft, former,
                     abs(soft - hard), norm, change, step))
      log(f"  P={n_pert} {metric} {cfg}: {time.perf_counter() - t:.1f} s")
  return rows


def summary(rows):
  out = []
  keys = sorted({(r[0], r[1], r[2]) for r in rows}, key=str)
  for key in keys:
    sel = [r for r in rows if (r[0], r[1], r[2]) == key]
    hard = np.array([r[4] for r in sel])
    soft = np.array([r[5] for r in sel])
    former = np.array([r[6] for r in sel])
    rho = stats.spearmanr(soft, hard)[0] if len(sel) > 2 else float("nan")
    out.append((*key, len(sel), f"{hard.min():.3f}–{hard.max():.3f}",
                float(np.abs(soft - hard).max()), float(rho),
                float(np.abs(former - hard).max()),
                all(np.isfinite(r[8]) and r[8] > 0 for r in sel),
                f"{sum(r[9] < 0 for r in sel)}/{len(sel)}"))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer models and settings")
  parser.add_argument("--candidates", default="", help="comma-separated numbers of candidates "
                      "to run (20, 200, 5000; default: all)")
  args = parser.parse_args(argv)
  log = lambda m: print(m, flush=True) if not args.quick else None  # noqa: E731
  t0 = time.perf_counter()
  if args.quick:
    settings = [(200, MODELS_200[::4], ("sqeuclidean",), ("model", "label"), {}),
                (20, MODELS_20[1::2], ("sqeuclidean",), ("model", "label"), {})]
  else:
    settings = [(200, MODELS_200, ("sqeuclidean", "pearson", "cosine", "l1"),
                 ("model", "precomputed", "label"), {}),
                (20, MODELS_20, ("sqeuclidean", "pearson", "cosine", "l1"),
                 ("model", "label"), {}),
                (5000, MODELS_5000, ("sqeuclidean", "pearson"), ("model", "label"),
                 dict(grad_batch=500))]
  if args.candidates:
    keep = {int(c) for c in args.candidates.split(",")}
    settings = [st for st in settings if st[0] in keep]
  rows = []
  for n_pert, configs, metrics, kinds, kw in settings:
    rows += run_setting(n_pert, configs, metrics, kinds, log=log, **kw)
  print(f"# bench_soft_tracking (jax {jax.__version__}, {jax.devices()[0].device_kind}, "
        f"{time.perf_counter() - t0:.0f} s)\n")
  print("## Summary: default soft AUC-F1 against the hard one, per setting\n")
  print("Candidates C = P (one reference per perturbation). `global max gap`: the largest gap "
        "with `relative=\"global\"` (the former default's units).\n")
  print(_common.md_table(
      ["C", "metric", "null", "models", "hard range", "max abs(soft - hard)",
       "Spearman(soft, hard)", "global max gap", "gradients finite, non-zero",
       "a step along -∇ lowers the loss"], summary(rows)))
  print("\n## Every model\n")
  print(_common.md_table(
      ["C", "metric", "null", "model", "hard", "soft (default)", "global units",
       "abs(soft - hard)", "‖∇ loss‖ (weights)", "best loss change along -∇",
       "its step / ‖β‖"], rows))


if __name__ == "__main__":
  main()

"""Training study: MSE alone vs MSE + λ·aux for the soft AUC-F1 and standard ranking losses.

    python -m benchmarks.bench_soft_training            # default size, writes docs/soft_training.md
                                                        # (20 min on 2 shared CPU cores)
    python -m benchmarks.bench_soft_training --quick    # small, benchmarks/_out/quick/
    python -m benchmarks.run --only soft_training       # through the runner (--quick there)

Tasks (`soft_training_tasks.py`): the toy task, the simulator with input
features (linear and MLP models) and LINCS A375 (highest dose from the lower
ones). Every run: Adam, minibatches, the main loss MSE / MSE of the training
mean (so λ weighs the same on every task), plus λ·aux with the same λ and the
same temperatures on every task:

- ``soft_auc_f1``: the loss of `tb.make_soft_auc_f1_loss` at its defaults
  (default temperature, ``relative="global"``: fractions of the global score
  spreads), with a model-in-the-loop null inside the loss (`N_NULL_TRAIN`
  replicates of the batch's inputs under `tb.shuffle_features`, fresh each
  step, drawn as the factory draws them; checked against the factory in the
  smoke test);
- ``soft_auc_f1_local``: the same at the tracking units of `tb.soft_auc_f1`'s
  default (``relative="local"``: fractions of each query's local gaps);
- ``infonce``, ``pairwise``, ``approx_mrr``: `tb.softmax_ce_loss`,
  `tb.pairwise_logistic_loss`, `tb.approx_mrr_loss` at τ = `TAU` (relative);
- ``soft_hit``: `tb.soft_hit_loss` with ``relative="global"`` (the ``soft_auc_f1``
  row without its null term).

The candidates of every auxiliary loss are all training targets. Training
runs in rounds of `STEPS_PER_ROUND` Adam steps on minibatches (one epoch of
the toy task); after each round (a checkpoint) the validation and test sets
are scored: hard AUC-F1 with an exact
model-in-the-loop null (`N_NULL_EVAL` replicates, the definition of
`tb.model_null` with ``shuffle_features``, squared Euclidean, own score =
similarity to the truth; checked against `tb.model_null` in the smoke test),
the soft AUC-F1 on the same replicates, hit@1 without a null, MSE and the
Pearson correlation of predicted and true deltas. The reported checkpoint is
the one with the best validation hard AUC-F1 (early stopping). The runs of one loss are
vmapped over seeds (a seed draws the task, the initialisation, the batch
order and the null replicates).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import twinbench_jax as tb
from benchmarks import _common
from benchmarks import soft_training_tasks as tasks_lib
from benchmarks import soft_training_report as report

LOSSES = ("mse", "soft_auc_f1", "soft_auc_f1_local", "infonce", "pairwise", "approx_mrr",
          "soft_hit")
# temperature units of the soft AUC-F1 rows (default temperature in both): the loss
# factory's default (`tb.make_soft_auc_f1_loss`, what the README trains with) and the
# tracking units of `tb.soft_auc_f1`'s default (a validation signal)
SOFT_AUC_F1_UNITS = {"soft_auc_f1": "global", "soft_auc_f1_local": "local"}
LAMBDA = 1.0       # weight of every auxiliary loss, every task (the README example's λ)
TAU = 0.1          # temperature of the three standard ranking losses (fraction of the spread)
N_NULL_TRAIN = 16  # null replicates per step inside the soft AUC-F1 loss
N_NULL_EVAL = 99   # null replicates of the per-checkpoint hard AUC-F1
HIDDEN = 64
STEPS_PER_ROUND = 8  # Adam steps between two checkpoints (a toy epoch at the default size)
SIZES = {
    "full": dict(seeds=5, rounds=40, collapsed_rounds=15, batch=64, lr=3e-3,
                 tasks=("toy", "sim_linear", "sim_mlp", "lincs"), task_sizes={}),
    "quick": dict(seeds=2, rounds=4, collapsed_rounds=2, batch=64, lr=3e-3, tasks=("toy",),
                  task_sizes=dict(toy=dict(n_train=256, n_val=32, n_test=32))),
    "tiny": dict(seeds=2, rounds=1, collapsed_rounds=1, batch=16, lr=3e-3, tasks=("toy",),
                 task_sizes=dict(toy=dict(n_train=48, n_val=12, n_test=12),
                                 sim=dict(n_train=40, n_val=12, n_test=12, n_genes=50,
                                          n_cells=5))),
}


# ----------------------------------------------------------------------------- models


def init_params(key, model, n_in, n_out, mean, collapsed):
  """Linear or tanh-MLP parameters; `collapsed`: last layer 0, bias = the training mean."""
  if model == "linear":
    w = jax.random.normal(key, (n_in, n_out)) / jnp.sqrt(n_in)
    return {"w": jnp.zeros_like(w) if collapsed else w, "b": mean}
  p = tb.datasets.toy_mlp_init(key, n_in, HIDDEN, n_out, output_bias=mean,
                      output_scale=0.0 if collapsed else 1.0)
  return p


def predict(params, x):
  if "w" in params:
    return x @ params["w"] + params["b"]
  return tb.datasets.toy_mlp_predict(params, x)


# ----------------------------------------------------------------------------- losses


SHUFFLE = tb.resolve_randomizer("shuffle_features")


def _null_inputs(key, x, n):
  """`[n, b, D]` inputs with shuffled features: replicate `j` as in `tb.model_null(key=key)`."""
  keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(n))
  return jax.vmap(lambda k: SHUFFLE(k, x))(keys)


def _train_null_inputs(key, x):
  """`[N_NULL_TRAIN, b, D]` shuffled inputs, drawn as inside `tb.make_soft_auc_f1_loss`."""
  return jax.vmap(SHUFFLE, in_axes=(0, None))(jax.random.split(key, N_NULL_TRAIN), x)


def aux_loss(kind, params, x, rows, refs, key):
  """The auxiliary loss `kind` of a batch (`rows` index the truths among `refs`)."""
  # real and null predictions in one vmapped call, as the loss factory makes them
  if kind in SOFT_AUC_F1_UNITS:
    preds = jax.vmap(lambda xi: predict(params, xi))(
        jnp.concatenate([x[None], _train_null_inputs(key, x)]))
    pred = preds[0]
  else:
    pred = predict(params, x)
  s = tb.similarity(pred, refs)
  rel = jax.nn.one_hot(rows, refs.shape[0], dtype=bool)
  if kind in SOFT_AUC_F1_UNITS:
    own = -jnp.sum((preds - refs[rows]) ** 2, axis=-1)  # similarity to the truth
    return 1.0 - tb.soft_auc_f1(s, rel, own[0], own[1:], relative=SOFT_AUC_F1_UNITS[kind])
  if kind == "infonce":
    return tb.softmax_ce_loss(s, rel, temperature=TAU)
  if kind == "pairwise":
    return tb.pairwise_logistic_loss(s, rel, temperature=TAU)
  if kind == "approx_mrr":
    return tb.approx_mrr_loss(s, rel, temperature=TAU)
  if kind == "soft_hit":
    return tb.soft_hit_loss(s, rel, relative="global")
  raise ValueError(f"unknown auxiliary loss {kind!r}")


def total_loss(params, x, rows, train, scale, key, kind):
  mse = jnp.mean((predict(params, x) - train.y[rows]) ** 2) / scale
  if kind == "mse":
    return mse
  return mse + LAMBDA * aux_loss(kind, params, x, rows, train.y, key)


@functools.lru_cache(maxsize=None)
def make_round(kind, lr, n_train, batch):
  """`round(params, opt_state, train, key)`: `STEPS_PER_ROUND` Adam steps on random minibatches.

  Each step draws `batch` training perturbations without replacement. Cached, so
  the random and the collapsed start of a loss share one compilation.
  """
  optimizer = optax.adam(lr)

  def one_round(params, opt_state, train, key):
    scale = jnp.mean((train.y - train.y.mean(0)) ** 2)

    def step(carry, k):
      p, o = carry
      k_rows, k_null = jax.random.split(k)
      rows = jax.random.permutation(k_rows, n_train)[:batch]
      grads = jax.grad(total_loss)(p, train.x[rows], rows, train, scale, k_null, kind)
      updates, o = optimizer.update(grads, o, p)
      return (optax.apply_updates(p, updates), o), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state),
                                          jax.random.split(key, STEPS_PER_ROUND))
    return params, opt_state

  return jax.jit(jax.vmap(one_round))


# ----------------------------------------------------------------------------- evaluation


def evaluate_split(params, split, key):
  """Every signal of one held-out set: hard/soft AUC-F1 (exact null), hit@1, MSE, Pearson."""
  x, y = split
  rel = jnp.eye(y.shape[0], dtype=bool)
  # observed and null predictions in one batched call, as `tb.model_null` does
  stacked = jnp.concatenate([x[None], _null_inputs(key, x, N_NULL_EVAL)])
  preds = jax.vmap(lambda xi: predict(params, xi))(stacked)
  s_all = jax.vmap(lambda p: tb.similarity(p, y))(preds)
  own = jnp.diagonal(s_all, axis1=1, axis2=2)
  s, m, mb = s_all[0], own[0], own[1:]
  ranks = tb.truth_ranks(s, rel)
  hard = tb.auc_f1(tb.empirical_pvalues(m, mb), ranks <= 1).auc
  pred = preds[0]
  pc, yc = pred - pred.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
  pearson = jnp.sum(pc * yc, 1) / jnp.sqrt(jnp.sum(pc ** 2, 1) * jnp.sum(yc ** 2, 1) + 1e-30)
  return dict(hard_auc_f1=hard, soft_auc_f1=tb.soft_auc_f1(s, rel, m, mb),
              hit1=jnp.mean(ranks <= 1), mse=jnp.mean((pred - y) ** 2),
              pearson=jnp.mean(pearson))


@jax.jit
@functools.partial(jax.vmap, in_axes=(0, 0, None))
def evaluate(params, data, key):
  k_val, k_test = jax.random.split(key)
  return dict(val=evaluate_split(params, data.val, k_val),
              test=evaluate_split(params, data.test, k_test))


# ----------------------------------------------------------------------------- runs


def train_runs(task, kind, cfg, *, collapsed, log):
  """Trains one loss on every seed at once; returns curves `[S, rounds + 1]` per metric."""
  data = task.data
  n_seeds, n_train, n_in = data.train.x.shape
  n_out = data.train.y.shape[-1]
  optimizer = optax.adam(cfg["lr"])  # the same transformation as inside `make_round`
  keys = jax.vmap(jax.random.key)(jnp.arange(n_seeds) + 17)
  k_init, k_train = jax.vmap(lambda k: jax.random.split(k, 2))(keys).swapaxes(0, 1)
  params = jax.vmap(lambda k, m: init_params(k, task.model, n_in, n_out, m, collapsed))(
      k_init, data.train.y.mean(1))
  opt_state = jax.vmap(optimizer.init)(params)
  one_round = make_round(kind, cfg["lr"], n_train, min(cfg["batch"], n_train))
  eval_key = jax.random.key(99)
  curves = [evaluate(params, data, eval_key)]
  t0 = time.perf_counter()
  for r in range(cfg["collapsed_rounds"] if collapsed else cfg["rounds"]):
    k_round = jax.vmap(lambda k: jax.random.fold_in(k, r))(k_train)
    params, opt_state = one_round(params, opt_state, data.train, k_round)
    curves.append(evaluate(params, data, eval_key))
  curves = jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(v) for v in a], axis=1),
                                  *curves)
  log(f"  {task.name:10s} {kind:12s} {'collapsed' if collapsed else 'random'} start: "
      f"{time.perf_counter() - t0:5.1f} s, test AUC-F1 at the best validation checkpoint "
      f"{np.mean(report.at_best(curves)['test']['hard_auc_f1']):.3f}")
  return curves, params


def reference_models(task, mse_params):
  """Validation/test signals of a collapsed and a popularity-biased model, per seed.

  Collapsed: every query gets the training mean. Popularity-biased: the MSE-alone
  model's final prediction shrunk to a fifth of its distance to the training mean.
  """
  mean = task.data.train.y.mean(1)
  n_seeds, _, n_in = task.data.train.x.shape
  collapsed = {"w": jnp.zeros((n_seeds, n_in, mean.shape[-1])), "b": mean}
  biased = jax.tree_util.tree_map(lambda a: a, mse_params)
  last = "w2" if "w2" in biased else "w"
  bias = "b2" if "b2" in biased else "b"
  biased[last] = 0.2 * biased[last]
  biased[bias] = 0.2 * biased[bias] + 0.8 * mean
  key = jax.random.key(99)
  return {name: jax.tree_util.tree_map(np.asarray, evaluate(p, task.data, key))
          for name, p in (("collapsed (training mean)", collapsed),
                          ("popularity-biased", biased))}


def run_task(task, cfg, losses, log):
  log(f"{task.name}: {task.description}")
  out = dict(name=task.name, description=task.description, runs={}, collapsed={})
  mse_params = None
  for kind in losses:
    curves, params = train_runs(task, kind, cfg, collapsed=False, log=log)
    out["runs"][kind] = curves
    if kind == "mse":
      mse_params = params
  for kind in losses:
    out["collapsed"][kind], _ = train_runs(task, kind, cfg, collapsed=True, log=log)
  out["references"] = reference_models(task, mse_params)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes")
  mode.add_argument("--tiny", action="store_true", help="smallest sizes (the smoke test)")
  parser.add_argument("--out", default=None, help="output folder (default: docs/ at the default "
                      "size, benchmarks/_out/<mode>/ otherwise)")
  parser.add_argument("--replot", default=None, help="rewrite the page and figures from the raw "
                      "curves a previous run saved (benchmarks/_out/soft_training_<size>.pkl, or "
                      "OUT/soft_training_raw.pkl with --out)")
  parser.add_argument("--tasks", default=None, help="comma-separated subset of the size's tasks")
  parser.add_argument("--losses", default=None, help=f"comma-separated subset of {LOSSES} "
                      "(MSE alone is always run)")
  args = parser.parse_args(argv)
  size = "quick" if args.quick else "tiny" if args.tiny else "full"
  cfg = dict(SIZES[size])
  if args.tasks:
    cfg["tasks"] = tuple(t.strip() for t in args.tasks.split(","))
  losses = LOSSES
  if args.losses:
    losses = ("mse",) + tuple(k.strip() for k in args.losses.split(",") if k.strip() != "mse")
    unknown = set(losses) - set(LOSSES)
    if unknown:
      parser.error(f"unknown loss(es) {sorted(unknown)}; choose from {LOSSES}")
  out_dir = args.out or os.path.join(_common.REPO, *(("docs",) if size == "full" else
                                                      ("benchmarks", "_out", size)))
  os.makedirs(out_dir, exist_ok=True)
  t0 = time.perf_counter()

  def log(msg):
    print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

  raw = (os.path.join(out_dir, "soft_training_raw.pkl") if args.out else
         os.path.join(_common.REPO, "benchmarks", "_out", f"soft_training_{size}.pkl"))
  if args.replot:
    with open(args.replot, "rb") as f:
      results, settings = pickle.load(f)
  else:
    results, settings = run_all(cfg, size, losses, log, t0)
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    with open(raw, "wb") as f:  # raw curves, to rewrite the page without training again
      pickle.dump((results, settings), f)
  text = report.write(results, settings, out_dir)
  with open(os.path.join(out_dir, "soft_training.json"), "w") as f:
    json.dump(report.summary(results, settings), f, indent=1, default=str)
  print(text)
  log(f"wrote {os.path.relpath(out_dir, _common.REPO)}/soft_training.md")
  return 0


def run_all(cfg, size, losses, log, t0):
  """Every task of `cfg`; returns `(results, settings)`."""
  seeds = list(range(cfg["seeds"]))
  results = [run_task(t, cfg, losses, log)
             for t in tasks_lib.build(cfg["tasks"], seeds, cfg["task_sizes"])]
  settings = dict(size=size, lam=LAMBDA, tau=TAU, n_null_train=N_NULL_TRAIN,
                  n_null_eval=N_NULL_EVAL, hidden=HIDDEN, steps=STEPS_PER_ROUND,
                  minutes=(time.perf_counter() - t0) / 60,
                  machine=_common.machine_info(),
                  command="python -m benchmarks.bench_soft_training"
                          + ("" if size == "full" else f" --{size}"),
                  **{k: v for k, v in cfg.items() if k != "task_sizes"})
  return results, settings


if __name__ == "__main__":
  sys.exit(main())

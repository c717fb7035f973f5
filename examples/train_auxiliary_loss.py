"""Train a Flax NNX model with `mse + λ · (1 - soft AUC-F1)`; validate on a streamed hard AUC-F1.

    python examples/train_auxiliary_loss.py            # 400 steps per run
    python examples/train_auxiliary_loss.py --quick    # 150 steps per run

The synthetic task (`tb.datasets.make_toy_task`): every perturbation's response is a
large shared "popular" profile plus a smaller perturbation-specific part on a
few genes, which a model can learn from the perturbation's input descriptor.
Mean-squared error is dominated by the shared part and rewards hedging toward
the mean response; shrunk predictions rank the same "average-looking"
candidates first for every held-out perturbation (a high top-1 Gini) and score
a low AUC-F1. The auxiliary loss asks each prediction to be closest to its own
profile *and* to depend on its input (the null is the model's own prediction
from shuffled inputs), which pulls the model away from the mean.

The model is a Flax NNX MLP with BatchNorm and Dropout, trained in train mode
with `nnx.Optimizer` (Adam, lr 1e-2, batches of 128 of the 512 training
perturbations). The loss factory takes the module itself
(`tb.make_soft_auc_f1_loss(model, ...)`, called as `aux(model, batch, key)`
inside `nnx.value_and_grad`) and writes the module's new state (BatchNorm
running averages, Dropout RNG count) back, as calling the module does.
The held-out AUC-F1 is accumulated over batches of 16 perturbations in a
`tb.AucF1Metric` (`tb.make_auc_f1_metric_update`, the module in eval mode);
the script checks that it equals the one-shot `tb.model_null(...).auc_f1()`.

Four runs, same data: MSE alone and MSE + λ·aux, each from an ordinary
initialisation and from a collapsed one (output weights × 1e-3, output bias =
mean training profile: the model predicts the mean whatever its input).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import twinbench_jax as tb

N_NULL_VALIDATION = 100
VALIDATION_BATCH = 16


class MLP(nnx.Module):
  """`[b, n_in] -> [b, n_out]`: Linear -> [BatchNorm] -> tanh -> Dropout -> Linear."""

  def __init__(self, n_in, n_hidden, n_out, *, output_bias, output_scale=1.0, dropout=0.1,
               batchnorm=False, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(n_in, n_hidden, rngs=rngs)
    self.norm = nnx.BatchNorm(n_hidden, rngs=rngs) if batchnorm else None
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    self.out = nnx.Linear(n_hidden, n_out, rngs=rngs)
    # Output bias at the mean training profile; a tiny last layer starts (near) collapsed.
    self.out.kernel[...] = output_scale * self.out.kernel[...]
    self.out.bias[...] = jnp.asarray(output_bias)

  def __call__(self, x):
    h = self.hidden(x)
    if self.norm is not None:
      h = self.norm(h)
    return self.out(self.drop(jnp.tanh(h)))


def make_train_step(task, *, lam, n_null=16, batch_size=128):
  """A `nnx.jit` training step on `mse + lam * (1 - soft AUC-F1)`."""
  train_profiles = task.train_profiles
  n_train = train_profiles.shape[0]
  # The auxiliary loss: candidates are all training profiles, the batch's rows say which
  # profile each input belongs to (identity relevance). Built once from a module of the
  # same architecture; each call takes the module being trained.
  aux = tb.make_soft_auc_f1_loss(
      MLP(task.train_inputs.shape[1], 8, train_profiles.shape[1], output_bias=0.0,
          rngs=nnx.Rngs(0)), train_profiles, n_null=n_null)

  @nnx.jit
  def step(model, optimizer, key, temperature):
    k_rows, k_null = jax.random.split(key)
    rows = jax.random.permutation(k_rows, n_train)[:batch_size]
    batch = tb.QueryBatch(task.train_inputs[rows], rows)

    def total(model):
      mse = jnp.mean((model(batch.inputs) - train_profiles[batch.rows]) ** 2)
      if lam == 0:
        return mse
      return mse + lam * aux(model, batch, k_null, temperature=temperature)

    loss, grads = nnx.value_and_grad(total)(model)
    optimizer.update(model, grads)
    return loss

  return step


def make_validation(task):
  """Held-out hard AUC-F1, streamed in batches through a `tb.AucF1Metric`."""
  n_test = task.test_inputs.shape[0]
  update = nnx.jit(tb.make_auc_f1_metric_update(
      MLP(task.test_inputs.shape[1], 8, task.test_profiles.shape[1], output_bias=0.0,
          rngs=nnx.Rngs(0)), task.test_profiles, n_null=N_NULL_VALIDATION))

  def validate(model, key):
    state = tb.AucF1Metric.empty(n_test, N_NULL_VALIDATION)
    for lo in range(0, n_test, VALIDATION_BATCH):
      rows = jnp.arange(lo, min(lo + VALIDATION_BATCH, n_test))
      state = update(state, model, tb.QueryBatch(task.test_inputs[rows], rows), key)
    return state.compute()

  return validate


def held_out_report(task, validate, model, key):
  """Hard numbers on the held-out perturbations (SPEC §2, §4), the model in eval mode."""
  eval_model = nnx.clone(model)
  eval_model.eval()
  n_test = task.test_inputs.shape[0]
  x = eval_model(task.test_inputs)
  s = tb.similarity(x, task.test_profiles)
  ranks = tb.truth_ranks(s, jnp.eye(n_test, dtype=bool))
  return {
      "auc_f1": float(validate(model, key).auc),
      "hit@1": float(jnp.mean(ranks <= 1)),
      "mse": float(jnp.mean((x - task.test_profiles) ** 2)),
      "gini": float(tb.gini(tb.top1_counts(s))),
  }


def run(task, validate, *, lam, collapsed, steps, eval_every, seed, temperature, hidden=64):
  model = MLP(task.train_inputs.shape[1], hidden, task.train_profiles.shape[1],
              output_bias=task.train_profiles.mean(axis=0),
              output_scale=1e-3 if collapsed else 1.0, rngs=nnx.Rngs(seed + 1))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  step = make_train_step(task, lam=lam)
  eval_key = jax.random.key(seed + 100)
  history = [(0, held_out_report(task, validate, model, eval_key))]
  key = jax.random.key(seed + 2)
  start = time.perf_counter()
  for i in range(1, steps + 1):
    key, sub = jax.random.split(key)
    step(model, optimizer, sub, temperature)
    if i % eval_every == 0 or i == steps:
      history.append((i, held_out_report(task, validate, model, eval_key)))
  return model, history, time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--lam", type=float, default=1.0, help="weight of the auxiliary loss")
  parser.add_argument("--temperature", type=float, default=None,
                      help="temperature of the soft AUC-F1 (default: its default)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true", help="150 steps per run")
  args = parser.parse_args(argv)
  steps = 150 if args.quick else args.steps
  task = tb.datasets.make_toy_task(jax.random.key(args.seed))
  validate = make_validation(task)
  print(f"task: {task.train_inputs.shape[0]} training / {task.test_inputs.shape[0]} held-out "
        f"perturbations, {task.train_profiles.shape[1]} genes; {steps} steps per run\n")
  print("| init | loss | step | held-out AUC-F1 | hit@1 | MSE | top-1 Gini |")
  print("|---|---|---:|---:|---:|---:|---:|")
  finals = {}
  for collapsed in (False, True):
    for lam in (0.0, args.lam):
      model, history, seconds = run(task, validate, lam=lam, collapsed=collapsed, steps=steps,
                                    eval_every=max(steps // 4, 1), seed=args.seed,
                                    temperature=args.temperature)
      init = "collapsed" if collapsed else "ordinary"
      loss = "MSE" if lam == 0 else f"MSE + {lam:g}·aux"
      for i, r in history:
        print(f"| {init} | {loss} | {i} | {r['auc_f1']:.3f} | {r['hit@1']:.3f} | "
              f"{r['mse']:.3f} | {r['gini']:.2f} |")
      finals[(init, loss)] = (history[-1][1], seconds, model)
  print("\nFinal held-out hard AUC-F1 (training time incl. compilation):")
  for (init, loss), (r, seconds, _) in finals.items():
    print(f"  {init:9s} init, {loss:14s}: {r['auc_f1']:.3f}  ({seconds:.1f} s)")
  # The streamed metric is the one-shot model null, bit for bit.
  model = finals[("ordinary", f"MSE + {args.lam:g}·aux")][2]
  key = jax.random.key(args.seed + 100)
  one_shot = tb.model_null(model, task.test_inputs, task.test_profiles, key=key,
                           n_null=N_NULL_VALIDATION, progress=False).auc_f1().auc
  streamed = validate(model, key).auc
  print(f"\nstreamed AUC-F1 {float(streamed):.6f} == one-shot tb.model_null "
        f"{float(one_shot):.6f}: {bool(streamed == one_shot)}")


if __name__ == "__main__":
  main()

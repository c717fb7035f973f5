"""The `twinbench` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src import pipeline
from twinbench_jax._src import simulate


class UsageError(Exception):
  """Bad input from the command line: reported in one line, exit code 2."""


def _demo_models(data: simulate.SimulatedData, key: jax.Array) -> dict[str, jax.Array]:
  """Three predictors of the simulated pseudobulk profiles."""
  real = data.pseudobulk()
  k_good, k_noisy = jax.random.split(key)
  spread = float(jnp.std(data.effects[data.effects != 0]))
  return {
      "good": data.true_means + 0.25 * spread * jax.random.normal(k_good, real.shape),
      "collapsed (mean response)": jnp.broadcast_to(real.mean(axis=0), real.shape),
      "noisy": data.true_means + 1.5 * spread * jax.random.normal(k_noisy, real.shape),
  }


def _print_table(rows: list[tuple[str, float, float, float]], out) -> None:
  name_w = max(len("model"), *(len(r[0]) for r in rows))
  print(f"{'model':<{name_w}}  {'hit@1':>6}  {'mean rank':>9}  {'AUC-F1':>7}", file=out)
  for name, hit, rank, auc in rows:
    print(f"{name:<{name_w}}  {hit:>6.3f}  {rank:>9.2f}  {auc:>7.3f}", file=out)


def run_demo(args: argparse.Namespace, out=sys.stdout) -> int:
  key = jax.random.key(args.seed)
  k_data, k_models = jax.random.split(key)
  data = simulate.simulate_perturbations(
      k_data, n_perturbations=args.n_perturbations, n_genes=args.n_genes)
  real = data.pseudobulk()
  print(f"Simulated screen: {data.n_perturbations} perturbations x {real.shape[1]} genes "
        f"(seed {args.seed}); truth = pseudobulk of the simulated cells.", file=out)
  print("Null: exact label permutation; AUC-F1 of a model that ignores its input is 0, "
        f"the best possible is {1 - 1 / data.n_perturbations:.3f}.\n", file=out)
  rows = []
  for name, pred in _demo_models(data, k_models).items():
    r = pipeline.evaluate_arrays(pred, real, metric=args.metric)
    rows.append((name, float(r.hit_at_k), float(r.mean_rank), float(r.auc_f1)))
  _print_table(rows, out)
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="twinbench",
      description="TwinBench: rank-based, bias-corrected evaluation of virtual-cell models.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  demo = sub.add_parser(
      "demo", help="score a good, a collapsed and a noisy model on the built-in simulator",
      description="Simulate a small perturbation screen (a large shared 'popular' response plus "
      "perturbation-specific effects and noise) and score three models with hit@1, mean rank "
      "and AUC-F1 under the exact label-permutation null.")
  demo.add_argument("--seed", type=int, default=0, help="PRNG seed of the simulation (default 0)")
  demo.add_argument("--n-perturbations", type=int, default=40,
                    help="number of simulated perturbations (default 40)")
  demo.add_argument("--n-genes", type=int, default=200, help="number of genes (default 200)")
  demo.add_argument("--metric", default="sqeuclidean",
                    help="similarity: sqeuclidean, euclidean, l1, cosine, pearson")
  demo.set_defaults(func=run_demo)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command line; returns the exit code (0 on success)."""
  parser = build_parser()
  args = parser.parse_args(argv)
  if getattr(args, "func", None) is None:
    parser.print_help()
    return 2
  try:
    return args.func(args)
  except (UsageError, ValueError, TypeError, FileNotFoundError, OSError) as e:
    print(f"twinbench {args.command}: error: {e}", file=sys.stderr)
    return 2

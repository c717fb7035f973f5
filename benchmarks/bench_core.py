"""Benchmark of the exact array pipeline against plain numpy and the bare matmul.

For each size, times (median of repeats, compile reported separately):

- `tb.evaluate_arrays` with sqeuclidean: similarity + truth ranks +
  label-permutation p-values + AUC-F1, one jitted kernel;
- the same computed with plain numpy (float32, vectorised) in the same process;
- a bare jitted `P @ T.T` of the same size (the roofline: the pipeline cannot
  beat the matmul it contains);
- the L1 similarity (JAX, blocked) against numpy (a loop over queries);
- the rank + p-value + AUC steps alone, given the similarity matrix.

Run: `python benchmarks/bench_core.py` (`--quick` for small sizes).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import twinbench_jax as tb
from twinbench_jax._src.core import auc as auc_lib
from twinbench_jax._src.core import identity_pass


def timeit(fn, repeats):
  """Median wall time of `fn()` over `repeats` runs (the result is blocked on)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def first_call(fn):
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


# ---- plain numpy versions (vectorised where numpy can be) -------------------

def numpy_sqeuclidean(x, y):
  d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
  return -np.maximum(d, 0.0)


def numpy_l1(x, y):
  return -np.stack([np.abs(row - y).sum(1) for row in x])


def numpy_rank_pvalue_auc(s):
  q = s.shape[0]
  own = np.diagonal(s)
  other = ~np.eye(q, dtype=bool)
  ranks = 1.0 + ((s > own[:, None]) & other).sum(1) + 0.5 * ((s == own[:, None]) & other).sum(1)
  p = (s >= own[None, :]).sum(0) / q
  order = np.argsort(p, kind="stable")
  a = p[order]
  tp = np.cumsum(ranks[order] <= 1)
  f1 = 2.0 * tp / (np.arange(1, q + 1) + q)
  auc = float(np.sum(f1 * np.diff(np.append(a, 1.0))))
  return ranks, p, auc


def numpy_pipeline(x, y):
  return numpy_rank_pvalue_auc(numpy_sqeuclidean(x, y))


@jax.jit
def jax_rank_pvalue_auc(s):
  # The steps of `tb.evaluate_arrays` after the similarity (identity relevance).
  ranks, p = identity_pass.ranks_and_label_pvalues(s, ties="average")
  return auc_lib._auc_f1(p, ranks <= 1, jnp.ones(p.shape, bool)).auc


@jax.jit
def bare_matmul(x, y):
  # HIGHEST, as in the similarity: on GPUs the default is TF32, a different (faster) matmul.
  return jnp.matmul(x, y.T, precision="highest")


def run(sizes, repeats, l1_max_q):
  rows = []
  for q, g in sizes:
    rng = np.random.default_rng(0)
    shared = rng.normal(size=g).astype(np.float32) * 3.0
    truth = (shared + rng.normal(size=(q, g))).astype(np.float32)
    pred = (truth + 0.5 * rng.normal(size=(q, g))).astype(np.float32)
    xj, yj = jnp.asarray(pred), jnp.asarray(truth)

    pipe = lambda: tb.evaluate_arrays(xj, yj).auc_f1
    compile_s = first_call(pipe)
    t_pipe = timeit(pipe, repeats)
    first_call(lambda: bare_matmul(xj, yj))
    t_mm = timeit(lambda: bare_matmul(xj, yj), repeats)
    t_np = timeit(lambda: numpy_pipeline(pred, truth), max(1, repeats // 2))

    s = tb.similarity(xj, yj)
    s_np = np.asarray(s)
    first_call(lambda: jax_rank_pvalue_auc(s))
    t_steps = timeit(lambda: jax_rank_pvalue_auc(s), repeats)
    t_steps_np = timeit(lambda: numpy_rank_pvalue_auc(s_np), max(1, repeats // 2))

    # cross-check: both implementations give the same AUC
    auc_np = numpy_pipeline(pred, truth)[2]
    auc_jax = float(pipe())
    assert abs(auc_np - auc_jax) < 1e-5, (auc_np, auc_jax)

    if q <= l1_max_q:
      l1 = lambda: tb.similarity(xj, yj, metric="l1")
      first_call(l1)
      t_l1 = timeit(l1, max(1, repeats // 2))
      t_l1_np = timeit(lambda: numpy_l1(pred, truth), 1)
    else:
      t_l1 = t_l1_np = float("nan")
    rows.append(dict(q=q, g=g, compile=compile_s, pipe=t_pipe, mm=t_mm, np=t_np,
                     steps=t_steps, steps_np=t_steps_np, l1=t_l1, l1_np=t_l1_np))
  return rows


def print_table(rows):
  head = ("Q=C", "G", "compile s", "pipeline s", "matmul s", "pipe/matmul", "numpy s",
          "numpy/pipe", "steps ms", "numpy steps/steps", "L1 s", "numpy L1/L1")
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for r in rows:
    print(f"| {r['q']} | {r['g']} | {r['compile']:.2f} | {r['pipe']:.4f} | {r['mm']:.4f} | "
          f"{r['pipe'] / r['mm']:.2f}x | {r['np']:.4f} | {r['np'] / r['pipe']:.1f}x | "
          f"{1e3 * r['steps']:.2f} | {r['steps_np'] / r['steps']:.1f}x | "
          f"{r['l1']:.3f} | {r['l1_np'] / r['l1']:.1f}x |")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  if args.quick:
    sizes, l1_max_q = [(100, 200), (200, 300)], 200
  else:
    sizes, l1_max_q = [(500, 1000), (500, 5000), (2000, 1000), (2000, 5000)], 2000
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; numpy {np.__version__}; "
        f"float32; median of {args.repeats} runs")
  print_table(run(sizes, args.repeats, l1_max_q))


if __name__ == "__main__":
  main()

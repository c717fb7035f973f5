"""Speed, memory and soft-rank choice of the differentiable AUC-F1 (SPEC §5).

    python benchmarks/bench_soft.py            # Q = C = 1000, B = 100
    python benchmarks/bench_soft.py --quick    # Q = C = 300, B = 50

Prints four tables:

1. `jax.value_and_grad` of `tb.soft_auc_f1` (compile time apart; the default
   local temperature units and the former global ones) against the hard
   forward metric `tb.auc_f1(tb.empirical_pvalues(...), tb.truth_ranks(...) <= 1)`.
2. Memory: XLA's compiled `memory_analysis()` of the value-and-grad at several
   sizes, against the `Q·C + B·Q` entries the inputs hold.
3. Soft rank of the truth: the pairwise sigmoid (what `tb.soft_truth_ranks`
   uses, here with ``relative="global"``, the projection's units) against a permutahedron-projection soft rank (Blondel et al., 2020,
   "Fast differentiable sorting and ranking": a sort and a pool-adjacent-
   violators isotonic regression per query, written here in JAX for the
   measurement): value-and-grad time, error to the hard rank, and how many
   candidates receive a gradient.
4. Convergence of the soft AUC-F1 to the hard one as the temperature → 0.

Timings are medians of repeated calls on whatever machine runs this; on a
shared CPU they are noisy, compare ratios rather than absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import twinbench_jax as tb
from twinbench_jax._src.soft import ranks as soft_ranks
from twinbench_jax._src.soft import temperatures as temperatures_lib


def _data(q, c, b, key=0):
  k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
  rel = jnp.eye(q, c, dtype=bool)
  # A model that often ranks its truth first, with a null below the observed scores.
  scores = jax.random.normal(k1, (q, c)) + 2.0 * rel
  own = jnp.sum(jnp.where(rel, scores, 0.0), axis=1)
  null = jax.random.normal(k2, (b, q)) + 1.0
  return scores, rel, own, null


def _time(fn, *args, reps):
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _compile_time(fn, *args):
  t = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return time.perf_counter() - t, compiled


# `rel` is an argument, not a closed-over constant, so XLA does not spend compile time
# constant-folding reductions over it.
def _soft_vg(temperature=0.1, relative=True):
  def value(scores, own, null, rel):
    return tb.soft_auc_f1(scores, rel, own, null, temperature=temperature, relative=relative)
  return jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2)))


def _hard():
  def value(scores, own, null, rel):
    return tb.auc_f1(tb.empirical_pvalues(own, null), tb.truth_ranks(scores, rel) <= 1).auc
  return jax.jit(value)


def speed_table(q, b, reps):
  scores, rel, own, null = _data(q, q, b)
  rows = []
  fns = (("soft value_and_grad (default: local units)", _soft_vg()),
         ("soft value_and_grad (relative=\"global\", the former units)",
          _soft_vg(relative="global")),
         ("hard forward", _hard()))
  compiled = []
  for name, fn in fns:
    compile_s, c = _compile_time(fn, scores, own, null, rel)
    compiled.append((name, compile_s, c))
  # interleaved calls, so that a change of load on a shared machine hits every row alike
  times = {name: [] for name, _, _ in compiled}
  for _ in range(reps):
    for name, _, c in compiled:
      t = time.perf_counter()
      jax.block_until_ready(c(scores, own, null, rel))
      times[name].append(time.perf_counter() - t)
  print(f"\n## 1. Speed at Q = C = {q}, B = {b} ({jax.devices()[0].platform}, "
        f"{reps} interleaved calls)\n")
  print("| computation | compile (s) | median (ms) | min (ms) | ratio to hard (median) | "
        "ratio to hard (min) |")
  print("|---|---:|---:|---:|---:|---:|")
  hard = times["hard forward"]
  for name, compile_s, _ in compiled:
    med, low = statistics.median(times[name]), min(times[name])
    print(f"| {name} | {compile_s:.2f} | {med * 1e3:.2f} | {low * 1e3:.2f} | "
          f"{med / statistics.median(hard):.1f}x | {low / min(hard):.1f}x |")


def memory_table(sizes):
  print("\n## 2. Memory of the soft value_and_grad (XLA compiled memory_analysis)\n")
  print("| Q = C | B | inputs Q·C + B·Q (MiB, f32) | temporaries (MiB) | temporaries / inputs |")
  print("|---:|---:|---:|---:|---:|")
  for q, b in sizes:
    scores, rel, own, null = _data(q, q, b)
    compiled = _soft_vg().lower(scores, own, null, rel).compile()
    stats = compiled.memory_analysis()
    if stats is None:
      print(f"| {q} | {b} | - | (no memory_analysis on this backend) | - |")
      continue
    inputs = 4.0 * (q * q + b * q)
    temp = float(stats.temp_size_in_bytes)
    print(f"| {q} | {b} | {inputs / 2**20:.1f} | {temp / 2**20:.1f} | {temp / inputs:.2f} |")
  print("\nA bounded ratio as Q·C and B grow is the O(Q·C + B·Q) claim (the sorted-step "
        "area uses prefix sums over the Q sorted p-values, no [Q, Q] matrix).")


# --- permutahedron-projection soft rank (measurement only) -------------------------------


def _pav_blocks_decreasing(y):
  """Block index of each position in the non-increasing isotonic regression of `y` (PAV)."""
  n = y.shape[0]

  def push(carry, i):
    sums, counts, starts, top = carry
    top = top + 1
    sums = sums.at[top].set(y[i])
    counts = counts.at[top].set(1.0)
    starts = starts.at[top].set(i)

    def violated(c):
      s, k, _, t = c
      return (t > 0) & (s[t - 1] * k[t] < s[t] * k[t - 1])  # mean[t-1] < mean[t]

    def merge(c):
      s, k, st, t = c
      s = s.at[t - 1].add(s[t])
      k = k.at[t - 1].add(k[t])
      return s, k, st.at[t].set(n), t - 1

    return jax.lax.while_loop(violated, merge, (sums, counts, starts, top)), None

  init = (jnp.zeros(n, y.dtype), jnp.zeros(n, y.dtype), jnp.full(n, n, jnp.int32),
          jnp.array(-1, jnp.int32))
  (_, _, starts, _), _ = jax.lax.scan(push, init, jnp.arange(n))
  return jnp.searchsorted(starts, jnp.arange(n), side="right") - 1


def permutahedron_soft_ranks(theta, eps):
  """Soft descending ranks of `[C]` values: the projection of `-θ/ε` onto the permutahedron.

  `r = P(-θ/ε, (C, ..., 1))` with `P(z, w) = z - v[σ⁻¹]`, `σ` the descending
  order of `z` and `v` the non-increasing isotonic regression of `z_σ - w`.
  The pooled blocks come from PAV under `stop_gradient`; the solution is their
  block means, so autodiff gives the exact (block-averaging) Jacobian.
  """
  n = theta.shape[0]
  z = -theta / eps
  order = jnp.argsort(-jax.lax.stop_gradient(z))
  y = z[order] - jnp.arange(n, 0, -1, dtype=z.dtype)
  ids = _pav_blocks_decreasing(jax.lax.stop_gradient(y))
  means = (jax.ops.segment_sum(y, ids, n) / jax.ops.segment_sum(jnp.ones_like(y), ids, n))
  v = means[ids]
  return z - jnp.empty_like(v).at[order].set(v)


def _perm_truth_ranks(scores, rel, tau):
  eps = tau * temperatures_lib.score_spread(scores)
  ranks = jax.vmap(lambda row: permutahedron_soft_ranks(row, eps))(scores)
  return jnp.sum(jnp.where(rel, ranks, 0.0), axis=1)  # identity relevance: one truth per row


def _pair_truth_ranks(scores, rel, tau):
  # the projection's ε is in units of the score spread: compare at the same units
  return soft_ranks.soft_truth_ranks(scores, rel, temperature=tau, relative="global")


def soft_rank_table(q, reps, temperatures):
  scores, rel, _, _ = _data(q, q, 1)
  hard = tb.truth_ranks(scores, rel)
  print(f"\n## 3. Soft rank of the truth at Q = C = {q}: pairwise sigmoid vs permutahedron "
        "projection\n")
  print("| method | τ | value_and_grad (ms) | max abs(soft - hard) rank | mean abs | "
        "candidates with a gradient per query |")
  print("|---|---:|---:|---:|---:|---:|")
  for name, fn in (("pairwise sigmoid", _pair_truth_ranks),
                   ("permutahedron (PAV)", _perm_truth_ranks)):
    for tau in temperatures:
      f = jax.jit(jax.value_and_grad(lambda s, r, t=tau, f=fn: jnp.sum(f(s, r, t))))
      ms = _time(f, scores, rel, reps=reps) * 1e3
      ranks = fn(scores, rel, tau)
      err = jnp.abs(ranks - hard)
      grad = f(scores, rel)[1]
      support = float(jnp.mean(jnp.sum(jnp.abs(grad) > 0, axis=1)))
      print(f"| {name} | {tau:g} | {ms:.1f} | {float(err.max()):.2e} | {float(err.mean()):.2e} "
            f"| {support:.1f} |")


def convergence_table(q, b, temperatures):
  scores, rel, own, null = _data(q, q, b, key=1)
  hard = float(_hard()(scores, own, null, rel))
  print(f"\n## 4. Convergence at Q = C = {q}, B = {b}: hard AUC-F1 = {hard:.6f}\n")
  print("| τ (all steps) | soft (sorted step) | abs(soft - hard) | soft (200-point α grid) |")
  print("|---:|---:|---:|---:|")
  for tau in temperatures:
    v = float(tb.soft_auc_f1(scores, rel, own, null, temperature=tau))
    g = float(tb.soft_auc_f1(scores, rel, own, null, temperature=tau, alpha_grid=200))
    print(f"| {tau:g} | {v:.6f} | {abs(v - hard):.1e} | {g:.6f} |")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
  args = parser.parse_args(argv)
  if args.quick:
    q, b, reps, mem_sizes, rank_q = 300, 50, 5, ((150, 50), (300, 50), (300, 100)), 200
  else:
    q, b, reps, mem_sizes, rank_q = 1000, 100, 20, ((500, 100), (1000, 100), (1000, 200),
                                                   (2000, 100)), 1000
  print(f"# bench_soft (jax {jax.__version__}, {jax.devices()[0].device_kind})")
  speed_table(q, b, reps)
  memory_table(mem_sizes)
  soft_rank_table(rank_q, max(3, reps // 4), (0.1, 0.01, 0.001))
  convergence_table(min(q, 300), b, (0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6))


if __name__ == "__main__":
  main()

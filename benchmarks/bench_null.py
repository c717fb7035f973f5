"""Benchmark of the permutation nulls (SPEC §3): speed, memory and device scaling.

A linear model `predictions = inputs @ W` (inputs `[Q, D]`, `W` `[D, G]`) with
`Q = C` queries and candidates:

1. speed, in this process: the candidate-level null over `B` replicates
   against `B` bare `(Q x G) @ (G x C)` matmuls, one call each and vmapped in
   the null's batches (target: within 1.5x), and the
   query-level null against `B` bare forward passes of the model (target:
   under 10% overhead); `B` shuffles of the inputs break the overhead down;
2. peak memory (RSS high-water mark of a fresh process per configuration) of
   the candidate-level null at two values of `B` (target: within 20%);
3. the candidate-level null on 1, 2 and 4 simulated CPU devices
   (`--xla_force_host_platform_device_count`), each in a fresh process, with
   a check that the p-values are identical.

Compilation is excluded from every timing (a warm-up call with the same
static shapes first). Timings on a shared machine are noisy.

Usage:
  python benchmarks/bench_null.py            # Q = C = 1000, G = 2000, B = 1000
  python benchmarks/bench_null.py --quick    # tiny sizes, a few seconds
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import twinbench_jax as tb
from twinbench_jax._src.nulls import sharding
from twinbench_jax._src.nulls import streaming


def _problem(q, c, g, d, seed=0):
  rng = np.random.default_rng(seed)
  w = (rng.normal(size=(d, g)) / np.sqrt(d)).astype(np.float32)
  inputs = rng.normal(size=(q, d)).astype(np.float32)
  refs = (inputs[np.arange(c) % q] @ w + rng.normal(size=(c, g))).astype(np.float32)
  return jax.device_put(w), jax.device_put(inputs), jax.device_put(refs)


def linear_apply(w, x):
  return x @ w


def _seconds(fn):
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def _repeat(fn, args_list):
  """Calls `fn(*args)` for each entry, keeping only the last result alive (async dispatch)."""
  out = None
  for args in args_list:
    out = fn(*args)
  return out


def _peak_rss_mib(reset=False):
  """Peak resident memory of this process (MiB): `VmHWM` on Linux, else `ru_maxrss`.

  `VmHWM` belongs to this process image (a child started by fork + exec does not
  inherit its parent's peak, unlike `ru_maxrss`), and writing 5 to
  `/proc/self/clear_refs` resets it to the current RSS.
  """
  try:
    if reset:
      with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _null(w, inputs, refs, n_null, candidate_level, **kw):
  return tb.model_null(functools.partial(linear_apply, w), inputs, refs, key=jax.random.key(0),
                       n_null=n_null, candidate_level=candidate_level, progress=False, **kw)


def _warm_null(w, inputs, refs, n_null, candidate_level, full=True, **kw):
  """Compiles what an `n_null` run needs; returns the batch size.

  `full`: one whole run, so the timed run that follows compiles nothing (the
  eager steps around the kernel have shapes that depend on `n_null`, and cost
  real time on an accelerator). Otherwise one replicate through the same
  kernel (its loop runs only the batches that hold a replicate): cheap.
  """
  q, g = inputs.shape[0], w.shape[1]
  devices = jax.devices() if kw.get("devices") is None else kw["devices"]
  layout = sharding.chunk_layout(
      n_null, len(devices), kw.get("chunk_size"), kw.get("batch_size"),
      streaming.bytes_per_replicate(q, refs.shape[0], g, candidate_level, inputs),
      batch_bytes=sharding.batch_bytes(devices))
  if full:
    res = _null(w, inputs, refs, n_null, candidate_level, **kw)
  else:
    res = _null(w, inputs, refs, 1, candidate_level, batch_size=layout.batch,
                chunk_size=layout.chunk, **{k: v for k, v in kw.items()
                                            if k not in ("batch_size", "chunk_size")})
  jax.block_until_ready((res.pvalues, res.candidate_pvalues))
  return layout.batch


def speed(args):
  q, c, g, d, b = args.q, args.c, args.g, args.d, args.b
  w, inputs, refs = _problem(q, c, g, d)
  rows = []

  pred = jnp.asarray(np.asarray(linear_apply(w, inputs)))
  # HIGHEST, as in the similarity: on GPUs the default is TF32, a different (faster) matmul.
  matmul = jax.jit(lambda a, r: jnp.matmul(a, r.T, precision="highest"))
  jax.block_until_ready(matmul(pred, refs))
  t_mm = _seconds(lambda: _repeat(matmul, [(pred, refs)] * b))
  rows.append((f"{b} bare (QxG)@(GxC) matmuls", t_mm, None))

  batch = _warm_null(w, inputs, refs, b, True)
  batched = jax.jit(jax.vmap(lambda a, r: jnp.matmul(a, r.T, precision="highest"),
                             in_axes=(0, None)))
  stack = jnp.stack([pred] * batch)
  jax.block_until_ready(batched(stack, refs))
  t_mm_batched = _seconds(lambda: _repeat(batched, [(stack, refs)] * -(-b // batch)))
  rows.append((f"  the same, vmapped in batches of {batch} like the null", t_mm_batched, None))
  t_cand = _seconds(lambda: _null(w, inputs, refs, b, True, batch_size=batch).candidate_pvalues)
  rows.append((f"candidate-level null, B={b} (batch {batch})", t_cand, t_cand / t_mm))
  rows.append(("  ... vs the vmapped matmuls", t_cand, t_cand / t_mm_batched))

  forward = jax.jit(linear_apply)
  jax.block_until_ready(forward(w, inputs))
  t_fw = _seconds(lambda: _repeat(forward, [(w, inputs)] * b))
  rows.append((f"{b} bare forward passes", t_fw, None))

  shuffle = jax.jit(lambda k: tb.shuffle_features(k, inputs))
  keys = [jax.random.fold_in(jax.random.key(0), i) for i in range(b)]
  jax.block_until_ready(shuffle(keys[0]))
  t_sh = _seconds(lambda: _repeat(shuffle, [(k,) for k in keys]))
  rows.append((f"{b} input shuffles (shuffle_features)", t_sh, t_sh / t_fw))
  rows.append(("candidate-level null - forward passes - shuffles", t_cand - t_fw - t_sh,
               (t_cand - t_fw - t_sh) / t_mm))
  rows.append(("  ... vs the vmapped matmuls", t_cand - t_fw - t_sh,
               (t_cand - t_fw - t_sh) / t_mm_batched))

  batch_q = _warm_null(w, inputs, refs, b, False)
  t_query = _seconds(lambda: _null(w, inputs, refs, b, False, batch_size=batch_q).pvalues)
  rows.append((f"query-level null, B={b} (batch {batch_q})", t_query, t_query / t_fw))
  rows.append(("  ... vs forward passes + shuffles", t_query, t_query / (t_fw + t_sh)))
  return rows


def _worker(args):
  """Fresh process: one candidate-level null; prints JSON with time, RSS and a digest."""
  w, inputs, refs = _problem(args.q, args.c, args.g, args.d)
  kw = {"batch_size": args.batch_size} if args.batch_size else {}
  _warm_null(w, inputs, refs, args.b, True, full=False, **kw)
  setup_peak = _peak_rss_mib()
  _peak_rss_mib(reset=True)
  t0 = time.perf_counter()
  res = _null(w, inputs, refs, args.b, True, **kw)
  p = np.asarray(res.candidate_pvalues)
  seconds = time.perf_counter() - t0
  print(json.dumps({
      "devices": len(jax.devices()), "seconds": seconds, "peak_rss_mib": _peak_rss_mib(),
      "setup_rss_mib": setup_peak,
      "digest": hashlib.sha256(p.tobytes() + np.asarray(res.pvalues).tobytes()).hexdigest()[:12],
  }))


def _spawn(args, b, devices=1, batch_size=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = env.get("XLA_FLAGS", "")
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--q", str(args.q), "--c",
         str(args.c), "--g", str(args.g), "--d", str(args.d), "--b", str(b)]
  if batch_size:
    cmd += ["--batch-size", str(batch_size)]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if out.returncode != 0:
    raise RuntimeError(f"worker failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def _table(title, header, rows):
  print(f"\n{title}")
  widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
  line = " | ".join(h.ljust(wd) for h, wd in zip(header, widths))
  print(line)
  print("-" * len(line))
  for r in rows:
    print(" | ".join(str(v).ljust(wd) for v, wd in zip(r, widths)))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
  parser.add_argument("--q", type=int, default=None, help="queries = candidates (Q = C)")
  parser.add_argument("--c", type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--g", type=int, default=None, help="genes G")
  parser.add_argument("--d", type=int, default=None, help="model input features D")
  parser.add_argument("--b", type=int, default=None, help="null replicates B")
  parser.add_argument("--memory-b", type=int, nargs=2, default=None,
                      help="the two B of the memory comparison")
  parser.add_argument("--scaling-b", type=int, default=None, help="B of the device scaling")
  parser.add_argument("--skip", nargs="*", default=(), choices=("speed", "memory", "scaling"))
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  quick = dict(q=100, g=200, d=20, b=50, memory_b=[10, 100], scaling_b=32)
  full = dict(q=1000, g=2000, d=200, b=1000, memory_b=[100, 1000], scaling_b=200)
  for k, v in (quick if args.quick else full).items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  if args.c is None:
    args.c = args.q
  if args.worker:
    _worker(args)
    return 0

  print(f"twinbench null benchmark: Q = C = {args.q}, G = {args.g}, D = {args.d} (linear "
        f"model), jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPU "
        f"cores, load average {os.getloadavg()[0]:.1f} at start")
  if "speed" not in args.skip:
    rows = speed(args)
    _table("Speed (same process, compile excluded)", ("what", "seconds", "ms / replicate",
                                                      "ratio"),
           [(name, f"{t:.2f}", f"{1e3 * t / args.b:.2f}", "" if r is None else f"{r:.2f}x")
            for name, t, r in rows])
  if "memory" not in args.skip:
    rows = []
    for b in args.memory_b:
      m = _spawn(args, b)
      rows.append((b, f"{m['setup_rss_mib']:.0f}", f"{m['peak_rss_mib']:.0f}",
                   f"{m['seconds']:.2f}"))
    ratio = float(rows[1][2]) / float(rows[0][2])
    _table(f"Peak memory, candidate-level null (fresh process each; peak ratio "
           f"{ratio:.2f})", ("B", "peak RSS of setup + compile (MiB)",
                             "peak RSS during the null (MiB)", "seconds"), rows)
  if "scaling" not in args.skip:
    rows, digests = [], set()
    base = None
    for n in (1, 2, 4):
      m = _spawn(args, args.scaling_b, devices=n, batch_size=4)
      base = base or m["seconds"]
      digests.add(m["digest"])
      rows.append((n, f"{m['seconds']:.2f}", f"{base / m['seconds']:.2f}x", m["digest"]))
    _table(f"Simulated CPU devices, candidate-level null, B = {args.scaling_b}, batch 4 "
           f"(p-values identical: {len(digests) == 1})",
           ("devices", "seconds", "speed-up", "p-value digest"), rows)
    print(f"(simulated devices share this machine's {os.cpu_count()} cores: a speed-up only "
          "comes from work that one device runs on a single thread, e.g. sorts)")
  return 0


if __name__ == "__main__":
  sys.exit(main())

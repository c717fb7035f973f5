"""Genome-scale benchmark: a 10,000 x 10,000 screen over 8,000 genes (issue 17).

Replogle-style: Q = C = 10,000 perturbations, G = 8,000 genes. A
candidate-level model null with B = 1,000 replicates is about 1.6 PFLOP
(one `[Q, G] x [G, C]` similarity per replicate). The model is linear,
`predictions = inputs @ W` with `inputs` `[Q, D]` (a D = 256 perturbation
embedding, shuffled within rows by the null) and `W` `[D, G]`.

1. Speed (this process, default device): the candidate-level model null at
   a reduced B (a few replicates on a CPU, B = 1,000 on an accelerator) timed
   at two values of B after a warm-up call, so the time per replicate is the
   slope and the fixed cost (observed predictions and similarities) the
   intercept; the total at B = 1,000 is extrapolated from them (measured
   directly on an accelerator); the ratio of the time per replicate to one
   bare `[Q, G] x [G, C]` matmul (float32, HIGHEST precision, as the
   similarities) timed in the same run. `tb.evaluate_arrays` (the exact label
   null) at the same size, timed after a warm-up call.
2. Memory per device against device count (a fresh process with 4 simulated
   devices on a CPU, or the real devices of an accelerator host): XLA's
   buffer assignment of the compiled per-device program (arguments + outputs
   + temporaries, `compiled.memory_analysis()`) for the query-sharded label
   null (`tb.label_null(..., candidate_level=True, mesh=tb.query_mesh(devs))`)
   and one chunk of the query-sharded candidate-level model null, at smaller
   sizes, with the queries split over 1, 2 and 4 devices: the O(Q C / n) fall.

Runs unchanged on a GPU or TPU (nothing assumes a CPU: sizes, replicate
counts and devices follow `jax.default_backend()` and `jax.devices()`); no
accelerator was at hand when this was written, so only CPU numbers are in
`docs/benchmarks.md`.

Usage:
  python -m benchmarks.bench_genome            # Q = C = 10,000, G = 8,000 (minutes on a CPU)
  python -m benchmarks.bench_genome --quick    # Q = C = 2,000, G = 1,600 (under a minute)
  python -m benchmarks.bench_genome --tiny     # Q = C = 256, G = 200 (seconds)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import twinbench_jax as tb  # noqa: E402
from benchmarks import _common  # noqa: E402
from benchmarks import bench_null  # noqa: E402
from benchmarks.bench_null import linear_apply  # noqa: E402

# (Q = C, G, replicates on a CPU, memory-table Q = C, memory-table G) per preset.
SIZES = {"full": (10_000, 8_000, (1, 3), 4096, 2048),
         "quick": (2_000, 1_600, (2, 4), 1024, 512),
         "tiny": (256, 200, (2, 4), 256, 128)}
D = 256
B_TARGET = 1000


def _problem(q, g, d=D, seed=0):
  # bench_null's linear problem with as many candidates as queries (the same draws)
  return bench_null._problem(q, q, g, d, seed=seed)


def _seconds(fn):
  return _common.timed(fn)[0]


def speed(q: int, g: int, counts: tuple, log) -> dict:
  """The candidate-level model null at two replicate counts, the bare matmul, evaluate_arrays."""
  w, inputs, refs = _problem(q, g)
  fn = functools.partial(linear_apply, w)

  def null(b):
    return tb.model_null(fn, inputs, refs, key=jax.random.key(0), n_null=b,
                         candidate_level=True, batch_size=1, chunk_size=1,
                         progress=False).candidate_pvalues

  mm = jax.jit(lambda a, b: jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST))
  x = fn(inputs)
  log(f"bare matmul [{q}, {g}] x [{g}, {q}] ...")
  _seconds(lambda: mm(x, refs))  # warm-up (compilation)
  t_mm = min(_seconds(lambda: mm(x, refs)) for _ in range(2))  # the less disturbed of two
  log(f"model null, warm-up with B = {counts[0]} ...")
  warm = _seconds(lambda: null(counts[0]))
  times = []
  for b in counts:
    log(f"model null, B = {b} ...")
    times.append(_seconds(lambda: null(b)))
  per_rep = (times[1] - times[0]) / (counts[1] - counts[0])
  fixed = max(times[0] - counts[0] * per_rep, 0.0)
  log("evaluate_arrays ...")
  warm_eval = _seconds(lambda: tb.evaluate_arrays(x, refs).auc_f1)
  t_eval = _seconds(lambda: tb.evaluate_arrays(x, refs).auc_f1)
  out = dict(q=q, c=q, g=g, d=D, backend=jax.default_backend(),
             device=str(jax.devices()[0].device_kind), replicates=list(counts), times_s=times,
             warmup_s=warm, per_replicate_s=per_rep, fixed_s=fixed,
             extrapolated_total_s=fixed + B_TARGET * per_rep, matmul_s=t_mm,
             ratio_to_matmul=per_rep / t_mm, evaluate_arrays_s=t_eval,
             evaluate_arrays_warmup_s=warm_eval,
             tflops_per_replicate=2.0 * q * q * g / 1e12)
  if jax.default_backend() != "cpu":  # an accelerator: the whole B = 1,000 measured
    log(f"model null, B = {B_TARGET} ...")
    out["measured_total_s"] = _seconds(lambda: null(B_TARGET))
    out["bare_matmuls_total_s"] = _seconds(lambda: [mm(x, refs) for _ in range(B_TARGET)])
  return out


def _memory_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _recorded(module, name):
  """Wraps `module.name` (a jitted kernel) to record its first call's arguments."""
  orig, calls = getattr(module, name), []

  def wrapper(*args, **kwargs):
    if not calls:
      calls.append((args, kwargs))
    return orig(*args, **kwargs)

  setattr(module, name, wrapper)
  return orig, calls


def memory_rows(q: int, g: int) -> list:
  """Per-device memory (MiB) of the query-sharded kernels on 1, 2 and 4 devices."""
  from twinbench_jax._src.nulls import query_model, query_sharding  # pylint: disable=g-import-not-at-top

  w, inputs, refs = _problem(q, g, d=64)
  x = np.asarray(linear_apply(w, inputs))
  rows = []
  for n in (1, 2, 4):
    if n > len(jax.devices()):
      break
    mesh = tb.query_mesh(jax.devices()[:n])
    label_kernel, label_calls = _recorded(query_sharding, "_kernel")
    model_kernel, model_calls = _recorded(query_model, "_chunk")
    try:
      tb.label_null(x, refs, candidate_level=True, mesh=mesh)
      tb.model_null(functools.partial(linear_apply, w), inputs, refs, key=jax.random.key(0),
                    n_null=n, candidate_level=True, batch_size=1, chunk_size=n,
                    progress=False, mesh=mesh)
    finally:
      query_sharding._kernel, query_model._chunk = label_kernel, model_kernel
    (la, lk), (ma, mk) = label_calls[0], model_calls[0]
    label = _memory_bytes(label_kernel.lower(*la, **lk).compile())
    model = _memory_bytes(model_kernel.lower(*ma, **mk).compile())
    rows.append(dict(devices=n, q=q, c=q, g=g, label_null_mib=label / _common.MIB,
                     model_chunk_mib=model / _common.MIB,
                     qc_float32_mib=4.0 * q * q / n / _common.MIB))
  return rows


def _memory_subprocess(q: int, g: int) -> list:
  """`memory_rows` in a fresh process; on a CPU with 4 simulated devices."""
  env = dict(os.environ, PYTHONPATH=_common.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  if jax.default_backend() == "cpu":
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=4").strip()
  proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_genome", "--memory-worker",
                         str(q), str(g)], env=env, capture_output=True, text=True, timeout=1200,
                        cwd=_common.REPO)
  if proc.returncode != 0:
    raise RuntimeError(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(res: dict) -> str:
  s = res["speed"]
  on_cpu = s["backend"] == "cpu"
  speed_rows = [
      ["model null, time per replicate", f"{s['per_replicate_s']:.2f} s",
       f"slope between B = {s['replicates'][0]} and {s['replicates'][1]}"],
      ["model null, fixed cost", f"{s['fixed_s']:.2f} s", "observed predictions and scores"],
      [f"model null, B = {B_TARGET}" + (" (extrapolated)" if on_cpu else ""),
       f"{s.get('measured_total_s', s['extrapolated_total_s']):.1f} s",
       f"extrapolated: {s['extrapolated_total_s']:.1f} s"],
      ["bare [Q, G] x [G, C] matmul", f"{s['matmul_s']:.2f} s",
       f"{s['tflops_per_replicate']:.2f} TFLOP, "
       f"{s['tflops_per_replicate'] / s['matmul_s'] * 1e3:.0f} GFLOP/s"],
      ["time per replicate / bare matmul", f"{s['ratio_to_matmul']:.2f}x", "target <= 1.3x"],
      ["evaluate_arrays (label null)", f"{s['evaluate_arrays_s']:.2f} s",
       f"first call {s['evaluate_arrays_warmup_s']:.2f} s (with compilation)"]]
  mem_rows = [[r["devices"], f"{r['q']:,} x {r['c']:,} x {r['g']:,}", r["label_null_mib"],
               r["model_chunk_mib"], r["qc_float32_mib"]] for r in res["memory"]]
  return "\n".join([
      f"Q = C = {s['q']:,}, G = {s['g']:,}, linear model from D = {s['d']} inputs; "
      f"{s['backend']} ({s['device']}).", "",
      _common.md_table(["what", "time", "note"], speed_rows), "",
      "Per-device memory (XLA's compiled buffers: arguments + outputs + temporaries, MiB) "
      "with the queries split over n devices:", "",
      _common.md_table(["devices", "Q x C x G", "label null, candidate level",
                        "model null chunk, candidate level", "one [Q/n, C] float32"],
                       mem_rows)])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--quick", action="store_true", help="Q = C = 2,000 (under a minute)")
  mode.add_argument("--tiny", action="store_true", help="Q = C = 256 (seconds)")
  mode.add_argument("--full", action="store_true", help="Q = C = 10,000 (the default)")
  parser.add_argument("--memory-worker", nargs=2, type=int, help=argparse.SUPPRESS)
  parser.add_argument("--json", default=None, help="also write every number to this file")
  args = parser.parse_args(argv)
  if args.memory_worker:
    print(json.dumps(memory_rows(*args.memory_worker)))
    return 0
  preset = "quick" if args.quick else "tiny" if args.tiny else "full"
  q, g, counts, mq, mg = SIZES[preset]

  def log(msg):
    print(msg, file=sys.stderr, flush=True)

  res = dict(preset=preset, machine=_common.machine_info(), speed=speed(q, g, counts, log))
  log("memory per device ...")
  res["memory"] = _memory_subprocess(mq, mg)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=1)
  print(markdown(res))
  return 0


if __name__ == "__main__":
  sys.exit(main())

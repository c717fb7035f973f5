"""Scaling curves: queries/candidates, null replicates, devices (time and peak memory).

- Q = C from 100 to 10,000 at G = 2,000: the exact pipeline
  (`tb.evaluate_arrays`, sqeuclidean, label null), its bare matmul, and the
  peak memory above the loaded inputs; the fitted growth exponent
  (`time ~ Q^a`; the matmul is `Q·C·G`, so `a` is about 2 once it dominates).
- B from 10 to 1,000: the model-in-the-loop null (`tb.model_null`,
  candidate level, ``randomize="permute_rows"``) of a per-gene linear model
  (`inputs * a + b`), so the null engine's own cost shows (the default
  ``"shuffle_features"`` adds a sort of every input row per replicate); time
  should grow like `B` and memory stay flat beyond one chunk of replicates.
- 1, 2, 4 simulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N`)
  running the same null; p-values must be identical for every device count.
  Simulated devices share the same cores, so this shows correctness and
  overhead, not speed-up.
- A GPU run of the pipeline and the null when JAX sees a GPU (skipped otherwise).

Every point runs in its own process (`benchmarks._worker`), so peak memory is
that point's alone. Run: ``python -m benchmarks.bench_scaling [--quick]``.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Optional, Sequence

from benchmarks import _common

PRESETS = {
    "tiny": dict(q_sizes=[64, 128], g=200, b_values=[8, 16], b_q=50, b_g=100,
                 dev_counts=[1, 2], dev_q=50, dev_g=100, dev_b=16, repeats=1, batch=True),
    "quick": dict(q_sizes=[100, 300, 1000, 3000], g=2000, b_values=[10, 100, 300],
                  b_q=200, b_g=1000, dev_counts=[1, 2, 4], dev_q=100, dev_g=500, dev_b=32,
                  repeats=2),
    "full": dict(q_sizes=[100, 300, 1000, 3000, 10000], g=2000, b_values=[10, 30, 100, 300, 1000],
                 b_q=300, b_g=2000, dev_counts=[1, 2, 4], dev_q=500, dev_g=2000, dev_b=256,
                 repeats=3),
}


def _points(task: str, items: list, batch: bool, env: Optional[dict]) -> list:
  """One process per point, or all points in one process when `batch`."""
  if batch:
    res = _common.run_worker("batch", dict(task=task, items=items), env=env)
    for p in res["points"]:  # one shared process: its peak is every point's upper bound
      p["process_peak_rss_mib"] = res["process_peak_rss_mib"]
    return res["points"]
  return [_common.run_worker(task, item, env=env) for item in items]


def scaling_q(q_sizes: Sequence[int], g: int, repeats: int, log: Callable = print,
              env: Optional[dict] = None, batch: bool = False) -> dict:
  """Time and peak memory of the exact pipeline for each Q = C."""
  log(f"  pipeline Q = C = {', '.join(map(str, q_sizes))}, G = {g} ...")
  points = _points("pipeline_point", [dict(q=q, g=g, repeats=repeats) for q in q_sizes],
                   batch, env)
  qs = [p["q"] for p in points]
  big = [p for p in points if p["q"] >= 1000] or points
  return dict(
      g=g, points=points,
      exponent_time=_common.fit_exponent(qs, [p["seconds"] for p in points]),
      exponent_time_large=_common.fit_exponent([p["q"] for p in big], [p["seconds"] for p in big]),
      exponent_matmul=_common.fit_exponent(qs, [p["matmul_s"] for p in points]),
      exponent_memory=_common.fit_exponent(qs, [p["xla_temp_mib"] for p in points]),
  )


def scaling_b(b_values: Sequence[int], q: int, g: int, log: Callable = print,
              env: Optional[dict] = None, batch: bool = False) -> dict:
  """Time and peak memory of the candidate-level model null for each B."""
  log(f"  model null B = {', '.join(map(str, b_values))}, Q = C = {q}, G = {g} ...")
  points = _points("null_point", [dict(q=q, g=g, b=b, candidate_level=True) for b in b_values],
                   batch, env)
  bs = [p["b"] for p in points]
  mem = [p["first_extra_mib"] for p in points]
  # Below one chunk of replicates (64 per device by default) the working set
  # still grows with B; "flat in B" is about B beyond that, so compare with B = 100.
  ref = next((i for i, b in enumerate(bs) if b >= 100), 0)
  return dict(q=q, g=g, points=points,
              exponent_time=_common.fit_exponent(bs, [p["seconds"] for p in points]),
              exponent_memory=_common.fit_exponent(bs, [max(m, 1e-3) for m in mem]),
              memory_ref_b=bs[ref],
              memory_ratio=float(mem[-1] / max(mem[ref], 1e-9)))


def devices(counts: Sequence[int], q: int, g: int, b: int, log: Callable = print) -> dict:
  """The same candidate-level null on 1, 2, 4 simulated CPU devices."""
  points = []
  for n in counts:
    log(f"  model null on {n} simulated CPU device(s) ...")
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
    points.append(_common.run_worker("devices_point", dict(q=q, g=g, b=b, candidate_level=True),
                                     env=env))
  digests = {p["pvalues_sha256"] for p in points}
  return dict(q=q, g=g, b=b, points=points, identical=len(digests) == 1)


def gpu(q_sizes: Sequence[int], g: int, b: int, q_null: int, repeats: int,
        log: Callable = print) -> dict:
  """The pipeline and the null on a GPU; `skipped` when JAX sees none."""
  import jax

  try:
    gpus = jax.devices("gpu")
  except RuntimeError:
    gpus = []
  if not gpus:
    return dict(skipped="no GPU visible to JAX (CPU-only run)")
  log(f"  GPU: {gpus[0].device_kind} ...")
  env = {"JAX_PLATFORMS": "cuda"}
  return dict(device=gpus[0].device_kind,
              pipeline=scaling_q(q_sizes, g, repeats, log, env=env),
              null=scaling_b([b], q_null, g, log, env=env))


def run(preset: str = "quick", log: Callable = print, parts=("q", "b", "devices", "gpu")) -> dict:
  """Every scaling measurement of the preset (``tiny``, ``quick`` or ``full``)."""
  p = PRESETS[preset]
  out = dict(preset=preset)
  batch = p.get("batch", False)
  if "q" in parts:
    out["q"] = scaling_q(p["q_sizes"], p["g"], p["repeats"], log, batch=batch)
  if "b" in parts:
    out["b"] = scaling_b(p["b_values"], p["b_q"], p["b_g"], log, batch=batch)
  if "devices" in parts:
    out["devices"] = devices(p["dev_counts"], p["dev_q"], p["dev_g"], p["dev_b"], log)
  if "gpu" in parts:
    out["gpu"] = gpu(p["q_sizes"], p["g"], p["b_values"][-1], p["b_q"], p["repeats"], log)
  return out


def plot(result: dict, path: str) -> str:
  """Log-log time and peak memory against Q and against B."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  ax = axes[0]
  if "q" in result:
    pts = result["q"]["points"]
    q = [p["q"] for p in pts]
    ax.loglog(q, [p["seconds"] for p in pts], "o-",
              label=f"pipeline (slope {result['q']['exponent_time']:.2f})")
    ax.loglog(q, [p["matmul_s"] for p in pts], "s--",
              label=f"bare matmul (slope {result['q']['exponent_matmul']:.2f})")
    ax2 = ax.twinx()
    ax2.loglog(q, [p["xla_temp_mib"] for p in pts], "^:", c="tab:green",
               label="kernel working memory (MiB, right)")
    ax2.set_ylabel("XLA temporaries (MiB)")
    ax2.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(f"Q = C (G = {result['q']['g']})")
    ax.set_ylabel("seconds")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("exact pipeline, label null", fontsize=10)
  ax = axes[1]
  if "b" in result:
    pts = result["b"]["points"]
    b = [p["b"] for p in pts]
    ax.loglog(b, [p["seconds"] for p in pts], "o-",
              label=f"time (slope {result['b']['exponent_time']:.2f})")
    ax.set_xlabel(f"null replicates B (Q = C = {result['b']['q']}, G = {result['b']['g']})")
    ax.set_ylabel("seconds")
    ax.legend(loc="upper left", fontsize=8)
    ax2 = ax.twinx()
    ax2.semilogx(b, [p["first_extra_mib"] for p in pts], "^:", c="tab:green",
                 label="peak memory (MiB, right)")
    ax2.set_ylim(0, 1.3 * max(p["first_extra_mib"] for p in pts) + 1)
    ax2.set_ylabel("peak RSS above inputs (MiB)")
    ax2.legend(loc="lower right", fontsize=8)
    ax.set_title("model-in-the-loop null, candidate level", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def markdown(result: dict) -> str:
  """Markdown tables of the scaling results."""
  out = []
  if "q" in result:
    r = result["q"]
    rows = [[p["q"], p["g"], p["first_s"], p["seconds"], p["matmul_s"],
             f"{p['seconds'] / p['matmul_s']:.2f}x", p["first_extra_mib"], p["xla_temp_mib"]]
            for p in r["points"]]
    out += [f"Exact pipeline (`tb.evaluate_arrays`, sqeuclidean + ranks + label-null p-values + "
            f"AUC-F1) against Q = C at G = {r['g']}. s: median of warm calls; first-call peak: "
            "RSS above the loaded inputs during the first call (compilation included); "
            "working memory: the temporaries XLA assigns to the compiled kernel:", "",
            _common.md_table(["Q = C", "G", "first call s", "s", "bare matmul s",
                              "pipeline / matmul", "first-call peak +MiB",
                              "working memory MiB"], rows), "",
            f"Growth exponents (log-log fit): time {r['exponent_time']:.2f} "
            f"(Q >= 1000: {r['exponent_time_large']:.2f}), bare matmul "
            f"{r['exponent_matmul']:.2f}, working memory {r['exponent_memory']:.2f}.", ""]
  if "b" in result:
    r = result["b"]
    rows = [[p["b"], p["q"], p["g"], p["first_s"], p["seconds"], p["first_extra_mib"],
             p["process_peak_rss_mib"]] for p in r["points"]]
    out += [f"Model-in-the-loop null (`tb.model_null`, candidate level, rows permuted, per-gene "
            f"linear model) against B at Q = C = {r['q']}, G = {r['g']}. s: second call; peak: "
            "RSS above the inputs during the first call (compilation included), and of the "
            "whole process:", "",
            _common.md_table(["B", "Q = C", "G", "first call s", "s", "peak +MiB",
                              "process peak MiB"], rows), "",
            f"Growth exponents: time {r['exponent_time']:.2f}, peak memory "
            f"{r['exponent_memory']:.2f}; peak memory at B = {r['points'][-1]['b']} / at "
            f"B = {r['memory_ref_b']}: {r['memory_ratio']:.2f}.", ""]
  if "devices" in result:
    r = result["devices"]
    rows = [[p["n_devices"], p["first_s"], p["seconds"], p["pvalues_sha256"]] for p in r["points"]]
    out += [f"Model null on simulated CPU devices (Q = C = {r['q']}, G = {r['g']}, B = {r['b']}, "
            "candidate level, rows permuted; the simulated devices share the same cores, so "
            "this checks identical results and the overhead, not a speed-up):", "",
            _common.md_table(["devices", "first call s", "second call s", "p-values sha256"], rows),
            "", f"Identical p-values across device counts: **{r['identical']}**.", ""]
  if "gpu" in result:
    g = result["gpu"]
    if "skipped" in g:
      out += [f"GPU: skipped ({g['skipped']}).", ""]
    else:
      out += [f"GPU ({g['device']}):", "", markdown({"q": g["pipeline"], "b": g["null"]}), ""]
  return "\n".join(out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--plot", default=None)
  args = parser.parse_args(argv)
  res = run("tiny" if args.tiny else "quick" if args.quick else "full")
  if args.plot:
    plot(res, args.plot)
  print(markdown(res))


if __name__ == "__main__":
  main()

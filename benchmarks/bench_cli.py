"""The command line against cell-eval's: `twinbench evaluate` vs `cell-eval run --profile pds`.

Every run is a new process; the two commands alternate (twinbench,
cell-eval, twinbench, ...), so both see the same load; one unmeasured run of
each first warms the caches (files, JAX's compilation cache, numba's loops).
Medians of the paired runs and the median of their per-pair ratios are
reported with the load average. Data: cell-eval's synthetic pair at 200 and
1,000 perturbations x 2,000 genes (`benchmarks/datasets.py`) and Papalexi
2021 (``../shared/data/papalexi2021``).

Also measured:

- **the first run after a fresh install** (twinbench on Papalexi): empty
  compilation, numba and matplotlib caches, as temporary folders given by
  ``TWINBENCH_COMPILATION_CACHE``, ``NUMBA_CACHE_DIR`` and ``MPLCONFIGDIR``;
- **where twinbench's time goes** (Papalexi, warm caches): imports, the
  imports made on first use, compile (or compilation-cache load),
  computation, report files, plots, and the teardown the command skips.

``python -m benchmarks.bench_cli [--quick] [--pairs N] [--cell-eval-python PY]
[--write-docs]`` prints a markdown section; ``--write-docs`` also puts it in
`docs/benchmarks.md` (replacing the section of the same title).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional

import numpy as np

from benchmarks import _common
from benchmarks import bench_cell_eval

TITLE = "## Command line against cell-eval's (`bench_cli.py`)"
PAIRS = {"quick": ["papalexi", "synthetic_200"], "full": ["papalexi", "synthetic_200",
                                                         "synthetic_1000"]}
# The targets: cell-eval time / twinbench time, warm caches.
TARGET = {"papalexi": 1.5, "synthetic_200": 1.5, "synthetic_1000": 5.0}
FRESH_TARGET_S = 4.0


def _load() -> str:
  return " ".join(f"{v:.1f}" for v in os.getloadavg())


def twinbench_cmd(pred, real, control, out_dir, *extra) -> list[str]:
  """`twinbench evaluate` as the issue times it: L1, deltas, targets left out, defaults."""
  return [sys.executable, "-m", "twinbench_jax", "evaluate", "--pred", pred, "--real", real,
          "--out", out_dir, "--metric", "l1", "--control", control, "--delta", "pred_control",
          "--target-genes", "obs:perturbation", "--quiet", *extra]


def cell_eval_cmd(python, pred, real, control, out_dir) -> list[str]:
  return [python, "-m", "cell_eval", "run", "-ap", pred, "-ar", real, "--profile", "pds",
          "--control-pert", control, "--pert-col", "perturbation", "-o", out_dir]


def _run(cmd, env=None, timeout=900) -> float:
  full = {"PYTHONPATH": _common.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
          "TQDM_DISABLE": "1", **(env or {})}
  res = _common.run_measured(cmd, env=full, timeout=timeout)
  if res["returncode"] != 0:
    raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({res['returncode']}):\n"
                       f"{res['stderr'][-1500:]}")
  return res["wall_s"]


def paired(name, workdir, cell_eval_python, n_pairs, log) -> dict:
  """Interleaved runs of both commands on one pair after one warm-up run of each."""
  pred, real = bench_cell_eval.prepare(name, workdir)
  control = bench_cell_eval.CONTROLS[name.split("_")[0]]
  tb = twinbench_cmd(pred, real, control, os.path.join(workdir, "cli_tb_out"))
  ce = cell_eval_cmd(cell_eval_python, pred, real, control, os.path.join(workdir, "cli_ce_out"))
  _run(tb)
  _run(ce)
  loads, t_tb, t_ce = [_load()], [], []
  for i in range(n_pairs):
    t_tb.append(_run(tb))
    t_ce.append(_run(ce))
    log(f"  {name} pair {i + 1}/{n_pairs}: twinbench {t_tb[-1]:.2f} s, cell-eval "
        f"{t_ce[-1]:.2f} s (load {_load()})")
  loads.append(_load())
  ratios = np.asarray(t_ce) / np.asarray(t_tb)
  return dict(name=name, twinbench_s=t_tb, cell_eval_s=t_ce,
              twinbench_median_s=float(np.median(t_tb)), cell_eval_median_s=float(np.median(t_ce)),
              ratio_median=float(np.median(ratios)), ratio_min=float(ratios.min()),
              ratio_max=float(ratios.max()), load_before_after=loads)


def fresh_install(workdir, n_runs, log) -> dict:
  """Twinbench on Papalexi with empty compilation, numba and matplotlib caches."""
  pred, real = bench_cell_eval.prepare("papalexi", workdir)
  times, loads = [], []
  for _ in range(n_runs):
    with tempfile.TemporaryDirectory() as tmp:
      env = {"TWINBENCH_COMPILATION_CACHE": os.path.join(tmp, "jax"),
             "NUMBA_CACHE_DIR": os.path.join(tmp, "numba"),
             "MPLCONFIGDIR": os.path.join(tmp, "matplotlib")}
      loads.append(_load())
      times.append(_run(twinbench_cmd(pred, real, "non-targeting",
                                      os.path.join(tmp, "out")), env=env))
    log(f"  first run after a fresh install: {times[-1]:.2f} s (load {loads[-1]})")
  return dict(times_s=times, median_s=float(np.median(times)), loads=loads)


# Runs inside a new process: the command's steps one by one, with timers.
_BREAKDOWN = r"""
import gc, json, os, sys, tempfile, time
t0 = time.perf_counter()
from twinbench_jax import cli
t1 = time.perf_counter()
args = cli.build_parser().parse_args(sys.argv[1:])
args.own_process = True
cli._no_automatic_gc()  # as the command does
cli._enable_compilation_cache(args)  # also the numpy twin's check (no numba when it passed)
if cli._draws_plots(args):
  cli._lean_matplotlib()
import h5py, anndata
t2 = time.perf_counter()
from twinbench_jax._src.evaluate import evaluate as ev
kw = dict(control=args.control, metric=args.metric, delta=args.delta,
          target_genes=args.target_genes, progress=False)
rep = ev.evaluate(args.pred, args.real, **kw)
t3 = time.perf_counter()
rep = ev.evaluate(args.pred, args.real, **kw)
t4 = time.perf_counter()
tmp = tempfile.mkdtemp()
rep.save(os.path.join(tmp, "report"), plots=False)
t5 = time.perf_counter()
import matplotlib.figure, matplotlib.backends.backend_agg
t6 = time.perf_counter()
from twinbench_jax._src.evaluate import plots
plots.save_plots(rep, tmp)
t7 = time.perf_counter()
gc.collect()
t8 = time.perf_counter()
print(json.dumps(dict(imports=t1 - t0, lazy_imports=t2 - t1, first_call_extra=(t3 - t2) - (t4 - t3),
                      computation=t4 - t3, report_files=t5 - t4, matplotlib_import=t6 - t5,
                      plots=t7 - t6, teardown_skipped=t8 - t7)))
"""


def breakdown(workdir, n_runs, log) -> dict:
  """Median seconds of each step of a warm `twinbench evaluate` on Papalexi, and of startup."""
  pred, real = bench_cell_eval.prepare("papalexi", workdir)
  cmd = twinbench_cmd(pred, real, "non-targeting", os.path.join(workdir, "cli_bd_out"))
  env = {**os.environ, "PYTHONPATH": _common.REPO}
  steps = []
  for _ in range(n_runs):
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    startup = time.perf_counter() - t
    out = subprocess.run([sys.executable, "-c", _BREAKDOWN, *cmd[3:]], capture_output=True,
                         text=True, env=env, cwd=_common.REPO, timeout=900)
    if out.returncode != 0:
      raise RuntimeError(f"breakdown failed:\n{out.stderr[-1500:]}")
    steps.append(dict(json.loads(out.stdout.strip().splitlines()[-1]), interpreter=startup))
  med = {k: float(np.median([s[k] for s in steps])) for k in steps[0]}
  log("  breakdown: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
  imports = subprocess.run([sys.executable, "-X", "importtime", "-c",
                            "import twinbench_jax.cli"], capture_output=True, text=True, env=env,
                           cwd=_common.REPO).stderr
  return dict(median_s=med, load=_load(), top_imports=_top_imports(imports))


def _top_imports(text: str, n: int = 8) -> list[tuple[str, float]]:
  """The slowest top-level packages in `python -X importtime` output (cumulative s)."""
  best = {}
  for line in text.splitlines():
    if not line.startswith("import time:") or "|" not in line:
      continue
    _, cum, name = line.split("|")
    try:
      cum_s = int(cum.strip()) / 1e6
    except ValueError:
      continue
    top = name.strip().split(".")[0]
    best[top] = max(best.get(top, 0.0), cum_s)
  return sorted(best.items(), key=lambda kv: -kv[1])[:n]


_STEP_LABELS = [
    ("interpreter", "Python start-up (`python -c pass`)"),
    ("imports", "`import twinbench_jax.cli` (jax, numpy, pandas, scipy, ...)"),
    ("lazy_imports", "imports made on first use: anndata, h5py; the command's set-up "
     "(compilation cache, matplotlib's core)"),
    ("first_call_extra", "first `evaluate` call beyond the second: the score kernels' "
     "executables loaded, the few small jits traced and taken from JAX's cache, numpy's "
     "copy of the L1 loop (numba not imported)"),
    ("computation", "`evaluate` itself (a second call in the same process)"),
    ("report_files", "report.json, per_perturbation.csv"),
    ("matplotlib_import", "matplotlib import"),
    ("plots", "the four PNGs"),
    ("teardown_skipped", "final garbage collection (skipped: the command ends with `os._exit`)"),
]

# Measured once and kept out of the command (interleaved runs of the two variants on
# Papalexi, this machine, loaded): what it would change, as a median time ratio.
_TRIED = [
    "the cyclic garbage collector off in the command's process (kept, `cli._no_automatic_gc`): "
    "0.83x on Papalexi and 0.78x on the 200-perturbation pair (5 interleaved runs each, "
    "against the code before it); pausing it also while `import twinbench_jax` runs: 0.98x "
    "more, not kept (it would touch the package's import for every user)",
    "the plots drawn by two processes forked at the start (matplotlib imported and warmed "
    "while the command reads and scores): 1.32x, slower: copy-on-write faults of a process "
    "holding JAX and pandas, and two more runnable processes on 2 loaded cores",
    "the plots drawn by one fresh helper interpreter started at the beginning (no fork): "
    "1.15x, slower: its own numpy, pandas and matplotlib imports cost more CPU than they "
    "take off the critical path when the cores are busy",
    "XLA's L1 instead of numba's loop for small problems (saves numba's import and first "
    "dispatch, 0.3-0.5 s): not done, the distances differ in the last bits (17 of 25 "
    "`own_score` values on Papalexi, up to 3.8e-6), so the reports would not stay identical; "
    "numpy adding in the loop's own lanes (`core/l1_lanes.py`, used once a check on the "
    "machine passed) gives the same bits and is kept",
    "matplotlib imported without the docstrings of its artists' `set` methods "
    "(`cli._lean_matplotlib`): 0.29 to 0.13 s for the import alone, kept",
    "the score kernels stored as XLA executables and loaded without tracing or lowering "
    "(`evaluate/executables.py`): twinbench's median on Papalexi 1.46 s before, 1.37 s "
    "after (this benchmark, 7 pairs each), the same reports, kept",
]


def markdown(res: dict) -> str:
  names = {"papalexi": "Papalexi 2021, 25 perturbations x 299 genes",
           "synthetic_200": "cell-eval's synthetic pair, 200 perturbations x 2,000 genes",
           "synthetic_1000": "cell-eval's synthetic pair, 1,000 perturbations x 2,000 genes"}
  rows = []
  for p in res["pairs"]:
    held = p["ratio_median"] >= TARGET[p["name"]]
    rows.append([names[p["name"]], p["twinbench_median_s"], p["cell_eval_median_s"],
                 f"{p['ratio_median']:.2f} ({p['ratio_min']:.2f}-{p['ratio_max']:.2f})",
                 f">= {TARGET[p['name']]}: {'met' if held else 'not met'}",
                 " / ".join(p["load_before_after"])])
  out = [TITLE, "",
         f"`{res['command']}` on {res['date']} ({res['n_pairs']} interleaved pairs per data set "
         "after one warm-up run of each, a new process per run; cell-eval "
         f"{res.get('cell_eval_version') or '?'} in its own environment). twinbench: "
         "`twinbench evaluate --metric l1 --delta pred_control --target-genes obs:perturbation "
         "--quiet` with its defaults (mean, control and split-half baselines, the four PNG "
         "plots, JAX's compilation cache); cell-eval: `cell-eval run --profile pds`. Ratio = "
         "cell-eval's time / twinbench's, the median of the per-pair ratios (range). The "
         f"machine's {os.cpu_count()} cores were shared with other work (load average at the "
         "start of each data set / end), which inflates both columns alike.", "",
         _common.md_table(["data", "twinbench s", "cell-eval s", "ratio", "target",
                           "load average"], rows), ""]
  fr = res.get("fresh")
  if fr:
    out += [f"First run after a fresh install (twinbench on Papalexi; empty compilation, numba "
            f"and matplotlib caches): median {fr['median_s']:.2f} s of "
            f"{', '.join(f'{t:.2f}' for t in fr['times_s'])} s (load {', '.join(fr['loads'])}); "
            f"target under {FRESH_TARGET_S:.0f} s: "
            f"{'met' if fr['median_s'] < FRESH_TARGET_S else 'not met'}.", ""]
  bd = res.get("breakdown")
  if bd:
    med = bd["median_s"]
    rows = [[label, med[k]] for k, label in _STEP_LABELS if k in med]
    out += [f"Where twinbench's time goes (Papalexi, warm caches, medians of "
            f"{res['n_breakdown']} processes with timers; load {bd['load']}):", "",
            _common.md_table(["step", "s"], rows), "",
            "Slowest packages imported by `twinbench_jax.cli` (`python -X importtime`, "
            "cumulative s): " + ", ".join(f"{k} {v:.2f}" for k, v in bd["top_imports"]) + ".",
            ""]
  out += ["Start-up ideas measured (ratio = the command's time with / without):", "",
          *[f"- {t}." for t in _TRIED], ""]
  return "\n".join(out)


def write_docs(text: str, path: Optional[str] = None) -> str:
  """Puts `text` in `docs/benchmarks.md` in place of the section titled `TITLE` (or at the end)."""
  path = path or os.path.join(_common.REPO, "docs", "benchmarks.md")
  page = open(path).read() if os.path.isfile(path) else "# Benchmarks\n"
  start = page.find(TITLE + "\n")
  if start < 0:
    page = page.rstrip() + "\n\n" + text.rstrip() + "\n"
  else:
    end = page.find("\n## ", start + len(TITLE))
    page = page[:start] + text.rstrip() + "\n" + ("" if end < 0 else page[end:])
  with open(path, "w") as f:
    f.write(page)
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="Papalexi and the 200-perturbation pair, 3 pairs (default: all three "
                      "data sets, 7 pairs)")
  parser.add_argument("--pairs", type=int, default=None, help="paired runs per data set")
  parser.add_argument("--cell-eval-python", default=os.environ.get("TWINBENCH_CELL_EVAL_PYTHON"),
                      help="interpreter with cell-eval installed (default: this one; env "
                      "TWINBENCH_CELL_EVAL_PYTHON)")
  parser.add_argument("--cache", default=os.path.join(_common.REPO, "benchmarks", "_cache"),
                      help="folder for the generated .h5ad pairs (reused between runs)")
  parser.add_argument("--skip-pairs", action="store_true",
                      help="only the fresh-install run and the breakdown")
  parser.add_argument("--write-docs", action="store_true",
                      help="also write the section into docs/benchmarks.md")
  parser.add_argument("--json", default=None, help="also write every number to this file")
  args = parser.parse_args(argv)
  mode = "quick" if args.quick else "full"
  n_pairs = args.pairs or (3 if args.quick else 7)
  python = args.cell_eval_python or sys.executable
  os.makedirs(args.cache, exist_ok=True)
  t0 = time.perf_counter()

  def log(msg):
    print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

  res = dict(command="python -m benchmarks.bench_cli" + (" --quick" if args.quick else ""),
             date=time.strftime("%Y-%m-%d %H:%M"), n_pairs=n_pairs, pairs=[],
             n_breakdown=3)
  if not args.skip_pairs:
    if not bench_cell_eval.cell_eval_available(python):
      print(f"{TITLE}\n\nSkipped: cell-eval is not importable by {os.path.basename(python)} "
            "(give --cell-eval-python).\n")
      return 0
    res["cell_eval_version"] = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('cell-eval'))"],
        capture_output=True, text=True).stdout.strip()
    for name in PAIRS[mode]:
      if name == "papalexi" and bench_cell_eval.papalexi_path() is None:
        log("  papalexi: data not found, skipped")
        continue
      log(f"{name} ...")
      res["pairs"].append(paired(name, args.cache, python, n_pairs, log))
      if args.json:  # kept as they come
        with open(args.json, "w") as f:
          json.dump(res, f, indent=1)
  if bench_cell_eval.papalexi_path() is not None:
    log("first run after a fresh install ...")
    res["fresh"] = fresh_install(args.cache, 3, log)
    log("breakdown ...")
    res["breakdown"] = breakdown(args.cache, res["n_breakdown"], log)
  text = markdown(res)
  print(text)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=1)
  if args.write_docs:
    log(f"wrote {os.path.relpath(write_docs(text), _common.REPO)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

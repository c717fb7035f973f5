"""Every benchmark in one command: ``python -m benchmarks.run --quick`` or ``--full``.

Runs, in this order (each part can be skipped with ``--skip``):

- ``core``: `benchmarks/bench_core.py` (exact pipeline vs plain numpy vs the bare matmul);
- ``null``, ``soft``, ``evaluate``: `bench_null.py`, `bench_soft.py`,
  `bench_evaluate.py` (null engine, differentiable AUC-F1, end-to-end
  `evaluate`), each run as its own process; a script that is not there is
  reported as skipped;
- ``soft_tracking``: `bench_soft_tracking.py`, the default soft AUC-F1
  against the hard one on linear models of the simulator (every metric and
  null, 20 to 5,000 candidates; under a minute with ``--quick``);
- ``soft_training``: `bench_soft_training.py`, the training study of the soft
  AUC-F1 against standard ranking losses (its own page `soft_training.md`;
  about half an hour with ``--full``);
- ``genome``: `bench_genome.py`, the genome-scale target (Q = C = 10,000,
  G = 8,000: candidate-level model null per replicate and extrapolated to
  B = 1,000, against bare matmuls; `evaluate_arrays`; per-device memory of
  the query-sharded kernels on 1, 2 and 4 devices); ``--quick`` runs
  Q = C = 2,000 in about a minute; not run with ``--tiny``;
- ``scaling``: Q = C and B scaling curves with fitted growth exponents, 1/2/4
  simulated CPU devices, a GPU run when there is a GPU (`bench_scaling.py`);
- ``cell_eval``: the side by side with cell-eval (`bench_cell_eval.py`),
  skipped when cell-eval is not installed (``pip install -e ".[bench]"``;
  ``--cell-eval-python`` points at another environment's interpreter);
- ``cli``: the command lines against each other, interleaved new processes,
  with the first run after a fresh install and where the time goes
  (`bench_cli.py`; also skipped without cell-eval).

Writes `OUT/benchmarks.json` (every number), `OUT/benchmarks.md` (markdown
tables), `OUT/benchmark_scaling.png` and `OUT/cell_eval_mean_baseline.png`.
``--only PART,...`` reruns some parts and keeps the others' results from
`OUT/benchmarks.json`.
`OUT` is `docs/` for ``--full`` and `benchmarks/_out/<mode>/` otherwise.
Timings are wall-clock medians on whatever machine runs this; the page
records the machine, the versions and the load average.

``--tiny`` is the smallest preset, used by the smoke test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time

from benchmarks import _common

PARTS = ("core", "null", "soft", "soft_tracking", "evaluate", "soft_training", "genome",
         "scaling", "cell_eval", "cli")
SCRIPTS = {"core": "bench_core", "null": "bench_null", "soft": "bench_soft",
           "soft_tracking": "bench_soft_tracking",
           "evaluate": "bench_evaluate", "soft_training": "bench_soft_training",
           "genome": "bench_genome", "cli": "bench_cli"}
SCRIPT_TIMEOUT = {"tiny": 240, "quick": 300, "full": 1200}
# parts that need longer than SCRIPT_TIMEOUT at some size
PART_TIMEOUT = {("soft_training", "full"): 3600, ("soft_training", "quick"): 600,
                ("soft_tracking", "full"): 3600, ("cli", "full"): 2400, ("cli", "quick"): 900,
                ("genome", "full"): 3600}
CELL_EVAL_PAIRS = {"tiny": ["synthetic_30"], "quick": ["synthetic_200"],
                   "full": ["synthetic_200", "synthetic_1000", "papalexi"]}
CELL_EVAL_SIZES = {"tiny": dict(n_genes=200, cells=20), "quick": {}, "full": {}}


def parse_markdown_tables(text: str) -> list[list[dict]]:
  """Every markdown table in `text` as a list of row dicts (header -> cell text)."""
  tables, lines = [], text.splitlines()
  i = 0
  while i < len(lines) - 1:
    if lines[i].lstrip().startswith("|") and re.match(r"^\s*\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1]):
      head = [h.strip() for h in lines[i].strip().strip("|").split("|")]
      rows, j = [], i + 2
      while j < len(lines) and lines[j].lstrip().startswith("|"):
        cells = [c.strip() for c in lines[j].strip().strip("|").split("|")]
        rows.append(dict(zip(head, cells)))
        j += 1
      tables.append(rows)
      i = j
    else:
      i += 1
  return tables


def run_script(part: str, mode: str, log) -> dict:
  """Runs `benchmarks/<script>.py` as a process (``--quick`` unless full); its stdout is kept."""
  module = SCRIPTS[part]
  path = os.path.join(_common.REPO, "benchmarks", module + ".py")
  if not os.path.isfile(path):
    log(f"{part}: benchmarks/{module}.py does not exist yet, skipped")
    return dict(skipped=f"benchmarks/{module}.py not present")
  cmd = [sys.executable, "-m", f"benchmarks.{module}"] + ([] if mode == "full" else ["--quick"])
  log(f"{part}: python -m benchmarks.{module} {' '.join(cmd[3:])} ...")
  timeout = PART_TIMEOUT.get((part, mode), SCRIPT_TIMEOUT[mode])
  res = _common.run_measured(cmd, timeout=timeout,
                             env={"PYTHONPATH": _common.REPO + os.pathsep +
                                  os.environ.get("PYTHONPATH", "")})
  out = dict(command=f"python -m benchmarks.{module} {' '.join(cmd[3:])}".strip(),
             wall_s=res["wall_s"], peak_rss_mib=res["peak_rss_mib"],
             returncode=res["returncode"], stdout=res["stdout"],
             tables=parse_markdown_tables(res["stdout"]))
  if res["timed_out"]:
    out["error"] = f"timed out after {timeout} s"
  elif res["returncode"] != 0:
    out["error"] = "\n".join(res["stderr"].strip().splitlines()[-8:])
  if "error" in out:
    log(f"{part}: FAILED ({out['error'].splitlines()[0] if out['error'] else 'no message'})")
  return out


def _script_section(title: str, res: dict) -> str:
  if "skipped" in res:
    return f"## {title}\n\nSkipped: {res['skipped']}.\n"
  text = [f"## {title}", "", f"`{res['command']}` ({res['wall_s']:.0f} s, peak RSS "
          f"{res['peak_rss_mib']:.0f} MiB).", ""]
  if "error" in res:
    text += ["**Failed**:", "", "```", res["error"], "```", ""]
  body = res["stdout"].strip()
  if body:
    text += [body, ""]
  return "\n".join(text)


def headline(results: dict) -> list[list]:
  """The few numbers the README shows: (what, value, condition)."""
  rows = []
  ce = results.get("cell_eval", {}).get("results", [])
  for r in ce:
    if r["name"] == "papalexi":
      continue
    t = r["timing"]
    rows.append([f"`tb.evaluate` vs cell-eval discrimination score, {r['n_perturbations']} "
                 "perturbations x 2,000 genes",
                 f"{t['cell_eval_s'] / t['evaluate_s']:.1f}x "
                 f"({t['evaluate_s']:.2f} s vs {t['cell_eval_s']:.1f} s)",
                 "in memory, after JIT warm-up"])
    if "metric_s" in t:
      rows.append([f"metric step alone (L1 + ranks from the deltas), {r['n_perturbations']} "
                   "perturbations",
                   f"{t['cell_eval_metric_s'] / t['metric_s']:.0f}x "
                   f"({1e3 * t['metric_s']:.0f} ms vs {t['cell_eval_metric_s']:.1f} s)",
                   "pseudobulks excluded on both sides"])
    c = r.get("cli", {})
    if c and "wall_s" in c.get("twinbench", {}):
      rows.append([f"`twinbench evaluate` vs `cell-eval run --profile pds`, {r['n_perturbations']} "
                   "perturbations",
                   f"{c['cell_eval']['wall_s'] / c['twinbench']['wall_s']:.1f}x "
                   f"({c['twinbench']['wall_s']:.1f} s vs {c['cell_eval']['wall_s']:.1f} s)",
                   "command line end to end, incl. imports"])
  for r in ce:
    a = r["agreement"]
    p = r["n_perturbations"]
    text = (f"reproduction: {p - a['differ_x64']}/{p} identical (x64), "
            f"{p - a['differ_float32']}/{p} (float32)")
    if a.get("evaluate_target_genes"):
      text += f"; `tb.evaluate` ranks: {p - a['differ_evaluate_rank']}/{p} (float32)"
      if "differ_evaluate_rank_x64" in a:
        text += f", {p - a['differ_evaluate_rank_x64']}/{p} (x64)"
    rows.append([f"agreement with cell-eval ({r['name']}, {p} perturbations)", text,
                 "per-perturbation score / rank"])
  big = [r for r in ce if r["name"] != "papalexi"]
  if big:
    r = max(big, key=lambda r: r["n_perturbations"])
    m = r["mean_baseline"]
    rows.append([f"cell-eval's mean baseline ({r['n_perturbations']} perturbations)",
                 f"cell-eval {m['cell_eval_mean']:.2f} (Spearman with distance to centroid "
                 f"{m['cell_eval_spearman_vs_centroid']:.2f}); twinbench AUC-F1 "
                 f"{m['twinbench_auc_f1']:.2f}", "a prediction that ignores its input"])
  sc = results.get("scaling", {})
  if "q" in sc:
    p = sc["q"]["points"][-1]
    rows.append([f"exact pipeline / bare matmul, Q = C = {p['q']:,}, G = {p['g']:,}",
                 f"{p['seconds'] / p['matmul_s']:.2f}x ({p['seconds']:.2f} s)",
                 f"time exponent {sc['q']['exponent_time']:.2f}"])
  if "b" in sc:
    b = sc["b"]
    rows.append([f"null peak memory, B = {b['memory_ref_b']} -> {b['points'][-1]['b']} "
                 f"(Q = C = {b['q']}, candidate level)", f"{b['memory_ratio']:.2f}x",
                 f"time exponent {b['exponent_time']:.2f}"])
  if "devices" in sc:
    d = sc["devices"]
    rows.append(["1/2/4 simulated devices give identical p-values", str(d["identical"]), ""])
  return rows


def write_report(results: dict, out_dir: str) -> str:
  """Writes `benchmarks.md` (and returns its text)."""
  info = results["machine"]
  lines = ["# Benchmarks", "",
           f"Generated by `{results['command']}` on {results['date']} in "
           f"{results['total_s'] / 60:.1f} min. Machine: {info.get('cpus')} CPU cores, "
           f"{info.get('platform')}; backend {info.get('backend')}; load average at start "
           f"{info.get('load_average')} (other processes shared the cores, so timings are "
           f"noisy). Versions: twinbench_jax {info.get('twinbench_jax')}, jax {info.get('jax')}, "
           f"numpy {info.get('numpy')}, Python {info.get('python')}"
           + (f", cell-eval {results['cell_eval_version']}" if results.get("cell_eval_version")
              else "") + ".", ""]
  for r in results.get("reruns", []):
    lines += [f"Rerun later with `--only {','.join(r['parts'])}` on {r['date']} (load average "
              f"{r.get('load_average')}).", ""]
  lines += ["## Headline", "",
            "Speed ratios are cell-eval's time / ours (above 1: ours is faster).", "",
            _common.md_table(["what", "result", "condition"], headline(results)), ""]
  titles = dict(core="Core pipeline (`bench_core.py`)", null="Null engine (`bench_null.py`)",
                soft="Differentiable AUC-F1 (`bench_soft.py`)",
                soft_tracking="Soft AUC-F1 tracks the hard one (`bench_soft_tracking.py`)",
                evaluate="End-to-end `evaluate` (`bench_evaluate.py`)",
                soft_training="Training with the soft AUC-F1 (`bench_soft_training.py`)",
                genome="Genome scale and query sharding (`bench_genome.py`)")
  for part in ("core", "null", "soft", "soft_tracking", "evaluate", "soft_training", "genome"):
    if part in results:
      lines.append(_script_section(titles[part], results[part]))
  if "scaling" in results:
    from benchmarks import bench_scaling

    lines += ["## Scaling", "", bench_scaling.markdown(results["scaling"]), ""]
    if results.get("scaling_plot"):
      lines += [f"![scaling]({os.path.basename(results['scaling_plot'])})", ""]
  if "cli" in results:  # bench_cli prints its own section, title included
    res = results["cli"]
    lines.append(res["stdout"].strip() + "\n" if res.get("stdout", "").strip() else
                 _script_section("Command line against cell-eval's (`bench_cli.py`)", res))
  if "cell_eval" in results:
    from benchmarks import bench_cell_eval

    ce = results["cell_eval"]
    lines += ["## Side by side with cell-eval", ""]
    if "skipped" in ce:
      lines += [f"Skipped: {ce['skipped']}.", ""]
    elif "error" in ce:
      lines += ["**Failed**:", "", "```", ce["error"], "```", ""]
    else:
      lines += [
          "cell-eval's `discrimination_score_l1` (0.8.x): pseudobulk mean of `.X` per "
          "perturbation; deltas to the prediction file's own control (predictions) and to the "
          "real control (real); L1 distance from each predicted delta to every real delta "
          "without the gene named like the perturbation; score = 1 - rank / P. Ours is rebuilt "
          "from `tb.similarity(metric=\"l1\")` and `tb.truth_ranks` "
          "(`benchmarks/cell_eval_compat.py`). Synthetic pairs: 2,000 genes, about 50 cells "
          "per perturbation, log1p values, the perturbation knocks down its own gene; "
          "Papalexi 2021: log1p counts per 10k, half the cells of each label predict the other "
          "half.", "", bench_cell_eval.markdown(ce["results"]), ""]
      if ce.get("plot"):
        lines += [f"![mean baseline]({os.path.basename(ce['plot'])})", ""]
  text = "\n".join(lines).rstrip() + "\n"
  with open(os.path.join(out_dir, "benchmarks.md"), "w") as f:
    f.write(text)
  return text


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--quick", action="store_true", help="small sizes, a few minutes (default)")
  mode.add_argument("--full", action="store_true", help="every size of the issue (~15 min)")
  mode.add_argument("--tiny", action="store_true", help="smallest sizes (the smoke test)")
  parser.add_argument("--out", default=None, help="output folder (default: docs/ for --full, "
                      "benchmarks/_out/<mode>/ otherwise)")
  parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {','.join(PARTS)}")
  parser.add_argument("--only", default="", help="comma-separated parts to run; the others keep "
                      "their results from OUT/benchmarks.json when it exists (rerun one part)")
  parser.add_argument("--cell-eval-python", default=os.environ.get("TWINBENCH_CELL_EVAL_PYTHON"),
                      help="interpreter of an environment with cell-eval (default: this one; "
                           "env TWINBENCH_CELL_EVAL_PYTHON)")
  parser.add_argument("--cache", default=os.path.join(_common.REPO, "benchmarks", "_cache"),
                      help="folder for the generated .h5ad pairs (reused between runs)")
  args = parser.parse_args(argv)
  mode = "full" if args.full else "tiny" if args.tiny else "quick"
  out_dir = args.out or (os.path.join(_common.REPO, "docs") if mode == "full"
                         else os.path.join(_common.REPO, "benchmarks", "_out", mode))
  os.makedirs(out_dir, exist_ok=True)
  skip = {s.strip() for s in args.skip.split(",") if s.strip()}
  only = {s.strip() for s in args.only.split(",") if s.strip()}
  unknown = (skip | only) - set(PARTS)
  if unknown:
    parser.error(f"unknown part(s): {sorted(unknown)}; choose from {PARTS}")
  if only and skip:
    parser.error("give either --only or --skip, not both")
  if only:
    skip = set(PARTS) - only
  if args.cell_eval_python:  # for the parts run as scripts (bench_cli)
    os.environ["TWINBENCH_CELL_EVAL_PYTHON"] = args.cell_eval_python

  t_start = time.perf_counter()

  def log(msg):
    print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

  now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  results = dict(mode=mode, command=f"python -m benchmarks.run --{mode}", date=now,
                 machine=_common.machine_info())
  previous = os.path.join(out_dir, "benchmarks.json")
  if only and os.path.isfile(previous):
    with open(previous) as f:
      kept = json.load(f)
    if kept.get("mode") == mode:
      reruns = kept.get("reruns", []) + [dict(parts=sorted(only), date=now,
                                              load_average=results["machine"].get("load_average"))]
      results = dict(kept, reruns=reruns)
      for part in only:
        results.pop(part, None)
  for part in ("core", "null", "soft", "soft_tracking", "evaluate", "soft_training", "genome",
               "cli"):
    if part not in skip and not (part in ("cli", "genome") and mode == "tiny"):
      results[part] = run_script(part, mode, log)
  if "scaling" not in skip:
    from benchmarks import bench_scaling

    log("scaling curves ...")
    try:
      results["scaling"] = bench_scaling.run(mode, log=lambda m: log(m.strip()))
      results["scaling_plot"] = bench_scaling.plot(
          results["scaling"], os.path.join(out_dir, "benchmark_scaling.png"))
    except Exception as e:  # a broken part is reported, never hides the others
      results["scaling"] = dict(error=f"{type(e).__name__}: {e}")
      log(f"scaling: FAILED ({type(e).__name__})")
  if "cell_eval" not in skip:
    from benchmarks import bench_cell_eval

    log("cell-eval side by side ...")
    try:
      ce = bench_cell_eval.run(
          CELL_EVAL_PAIRS[mode], args.cache, cell_eval_python=args.cell_eval_python,
          repeats=1 if mode == "tiny" else 3, cli=True,
          plot_path=os.path.join(out_dir, "cell_eval_mean_baseline.png"),
          log=lambda m: log(m.strip()), **CELL_EVAL_SIZES[mode])
      if "skipped" in ce:
        log(f"cell_eval: skipped ({ce['skipped']})")
      elif ce["results"]:
        results["cell_eval_version"] = ce["results"][0]["cell_eval_version"]
      results["cell_eval"] = ce
    except Exception as e:
      results["cell_eval"] = dict(error=f"{type(e).__name__}: {e}")
      log(f"cell_eval: FAILED ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
  if results.get("reruns") and results["reruns"][-1]["date"] == now:
    results["reruns"][-1]["seconds"] = time.perf_counter() - t_start
  else:
    results["total_s"] = time.perf_counter() - t_start
  if isinstance(results.get("scaling"), dict) and "error" in results["scaling"]:
    results.pop("scaling_plot", None)
  write_report(results, out_dir)
  with open(os.path.join(out_dir, "benchmarks.json"), "w") as f:
    json.dump(_relative_paths(results, out_dir), f, indent=1, default=str)
  log(f"wrote {os.path.relpath(out_dir, _common.REPO)}/benchmarks.md and benchmarks.json")
  failed = [p for p in PARTS if isinstance(results.get(p), dict) and "error" in results[p]]
  if failed:
    log(f"parts that failed: {', '.join(failed)}")
  return 1 if failed else 0


def _relative_paths(obj, out_dir: str):
  """Machine paths inside the results become relative ones (output folder, then repository)."""
  if isinstance(obj, dict):
    return {k: _relative_paths(v, out_dir) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_relative_paths(v, out_dir) for v in obj]
  if isinstance(obj, str):
    for root in (os.path.abspath(out_dir), _common.REPO):
      obj = obj.replace(root + os.sep, "").replace(root, ".")
  return obj


if __name__ == "__main__":
  sys.exit(main())

"""Side by side with cell-eval (Virtual Cell Challenge evaluator): values, speed, memory.

On each prediction/real pair (synthetic, 200 and 1,000 perturbations; the
Papalexi 2021 split halves):

1. **Values.** cell-eval's per-perturbation ``discrimination_score_l1`` against
   the same score rebuilt from twinbench_jax primitives
   (`benchmarks.cell_eval_compat`), with `jax_enable_x64` on and off: how many
   perturbations get a different score.
2. **Speed and memory.** cell-eval's `discrimination_score` call alone (AnnData
   already in memory) against ours and against `tb.evaluate(metric="l1",
   delta="pred_control", target_genes={p: p})` (the same ranking); each in its
   own process (peak RSS above the loaded data). Then the command lines end to
   end: ``cell-eval run --profile pds`` (only that metric) against
   ``twinbench evaluate --metric l1 --delta pred_control --target-genes
   obs:perturbation``.
3. **The mean baseline.** cell-eval's own `build_base_mean_adata` (the mean of
   all perturbation profiles for every perturbation) scored by both: cell-eval's
   mean score and share of perturbations >= 0.9, the Spearman correlation of
   its per-perturbation score with the real delta's L1 distance to the centroid
   of all real deltas; twinbench's AUC-F1 and p-values. A plot of both.

cell-eval runs under its own interpreter (`--cell-eval-python`, default this
one): install it with ``pip install -e ".[bench]"``, best in a separate
virtual environment. Run: ``python -m benchmarks.bench_cell_eval [--quick]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from typing import Optional

import numpy as np

from benchmarks import _common

CONTROLS = {"synthetic": "control", "papalexi": "non-targeting"}
# Relative gap between the truth's distance and the nearest other distance below
# which float32 rounding of an L1 sum over thousands of genes may flip the order.
NEAR_TIE = 1e-5


def cell_eval_available(python: Optional[str] = None) -> bool:
  """True when `python` (default: this interpreter) can import `cell_eval`."""
  # Virtual environments link the same binary: compare the paths as given.
  if python is None or os.path.abspath(python) == os.path.abspath(sys.executable):
    return importlib.util.find_spec("cell_eval") is not None
  try:
    return subprocess.run([python, "-c", "import cell_eval"], capture_output=True,
                          timeout=120).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


def papalexi_path() -> Optional[str]:
  """The Papalexi file beside the checkout (`TWINBENCH_DATA` overrides the data folder)."""
  root = os.environ.get("TWINBENCH_DATA", os.path.join(_common.REPO, "..", "shared", "data"))
  path = os.path.join(root, "papalexi2021", "papalexi2021_lowmoi.h5ad")
  return path if os.path.isfile(path) else None


def prepare(name: str, workdir: str, *, n_genes: int = 2000, cells: int = 50) -> tuple[str, str]:
  """Writes (or reuses) the pair `name` (``synthetic_N`` or ``papalexi``) under `workdir`."""
  from benchmarks import datasets

  tag = name if name == "papalexi" else f"{name}_g{n_genes}_c{cells}"
  pred = os.path.join(workdir, f"{tag}_pred.h5ad")
  real = os.path.join(workdir, f"{tag}_real.h5ad")
  if os.path.isfile(pred) and os.path.isfile(real):
    return pred, real
  if name == "papalexi":
    pair = datasets.papalexi_pair(papalexi_path())
  else:
    n = int(name.split("_")[1])
    pair = datasets.synthetic_pair(n, n_genes=n_genes, cells_per_perturbation=cells)
  return datasets.write_pair(pair, workdir, tag)


def _our_cli(pred, real, control, out_dir) -> Optional[list[str]]:
  """The `twinbench evaluate` command with the L1 metric, or None while the CLI does not exist."""
  if importlib.util.find_spec("twinbench_jax.cli") is None:
    return None
  base = [sys.executable, "-c", "import sys; from twinbench_jax.cli import main; sys.exit(main())"]
  help_text = subprocess.run(base + ["evaluate", "--help"], capture_output=True, text=True,
                             cwd=_common.REPO).stdout
  cmd = base + ["evaluate", "--pred", pred, "--real", real, "--out", out_dir, "--metric", "l1",
                "--control", control, "--quiet"]
  if "--delta" in help_text:
    cmd += ["--delta", "pred_control"]
  if "--target-genes" in help_text:
    # cell-eval leaves out the gene named like the perturbation: the label column
    # maps every perturbation to its own name.
    cmd += ["--target-genes", "obs:perturbation"]
  if "--baselines" in help_text:
    cmd += ["--baselines", "none"]
  if "--quiet" not in help_text:
    cmd.remove("--quiet")
  return cmd


def _spearman(a, b) -> float:
  from scipy import stats

  return float(stats.spearmanr(a, b).statistic)


def compare_one(name: str, workdir: str, *, cell_eval_python: str, repeats: int = 3,
                cli: bool = True, timeout: float = 900, n_genes: int = 2000,
                cells: int = 50) -> dict:
  """Runs every measurement on pair `name`; returns a JSON-ready dict."""
  pred, real = prepare(name, workdir, n_genes=n_genes, cells=cells)
  control = CONTROLS["papalexi" if name == "papalexi" else "synthetic"]
  base_path = os.path.join(workdir, f"{os.path.basename(pred)[:-len('_pred.h5ad')]}_cellevalmean.h5ad")
  common = dict(pred=pred, real=real, control=control, perturbation_key="perturbation")
  ce = _common.run_worker("cell_eval_scores", dict(common, baseline_out=base_path),
                          python=cell_eval_python, timeout=timeout)
  ours64 = _common.run_worker("ours_scores", dict(common, repeats=repeats, evaluate=True,
                                                  baseline=base_path),
                              env={"JAX_ENABLE_X64": "1"}, timeout=timeout)
  ours32 = _common.run_worker("ours_scores", dict(common, repeats=repeats, evaluate=True,
                                                  baseline=base_path),
                              env={"JAX_ENABLE_X64": "0"}, timeout=timeout)
  labels = ours64["labels"]
  ce_scores = np.asarray([ce["scores"][lab] for lab in labels])
  p = len(labels)
  ce_ranks = np.round((1.0 - ce_scores) * p)

  def rank_differs(ours):
    return np.asarray([ours["evaluate_ranks"][lab] for lab in labels]) - 1.0 != ce_ranks

  near_tie = np.asarray(ours64["min_relative_gap"]) < NEAR_TIE
  res = dict(name=name, n_perturbations=p, cell_eval_version=ce["version"])
  res["agreement"] = dict(
      differ_x64=int(np.sum(np.abs(ce_scores - np.asarray(ours64["scores"])) > 1e-12)),
      differ_float32=int(np.sum(np.abs(ce_scores - np.asarray(ours32["scores"])) > 1e-12)),
      max_abs_diff_float32=float(np.max(np.abs(ce_scores - np.asarray(ours32["scores"])))),
      evaluate_target_genes=bool(ours32["evaluate_target_genes"]),
      differ_evaluate_rank=int(np.sum(rank_differs(ours32))),
      # float32 can only flip an order where the two distances are this close.
      differ_evaluate_rank_not_near_tie=int(np.sum(rank_differs(ours32) & ~near_tie)),
      differ_evaluate_rank_x64=int(np.sum(rank_differs(ours64))),
      min_relative_gap=float(np.min(ours64["min_relative_gap"])),
      near_ties=int(np.sum(near_tie)),
      mean_score=float(ce_scores.mean()),
  )
  res["timing"] = dict(
      cell_eval_s=ce["seconds"], cell_eval_extra_mib=ce["extra_mib"],
      reproduce_first_s=ours32["reproduce_first_s"], reproduce_s=ours32["reproduce_s"],
      reproduce_extra_mib=ours32["reproduce_extra_mib"],
      evaluate_first_s=ours32["evaluate_first_s"], evaluate_s=ours32["evaluate_s"],
      evaluate_extra_mib=ours32["evaluate_extra_mib"],
      reproduce_x64_s=ours64["reproduce_s"],
      cell_eval_metric_s=ce["metric_seconds"], metric_s=ours32["metric_s"],
      metric_x64_s=ours64["metric_s"],
  )
  res["agreement"]["dtypes"] = [ours64["dtype"], ours32["dtype"]]
  # The mean baseline.
  b_ce = np.asarray([ce["baseline_scores"][lab] for lab in labels])
  dist = np.asarray(ours64["centroid_distance"])
  b_p = np.asarray([ours32["baseline_pvalues"][lab] for lab in labels])
  res["mean_baseline"] = dict(
      cell_eval_mean=float(b_ce.mean()), cell_eval_share_ge_0_9=float(np.mean(b_ce >= 0.9)),
      cell_eval_spearman_vs_centroid=_spearman(b_ce, dist),
      cell_eval_pearson_vs_centroid=float(np.corrcoef(b_ce, dist)[0, 1]),
      ours_reproduction_differ=int(np.sum(np.abs(b_ce - np.asarray(ours64["baseline_scores"])) > 1e-12)),
      model_cell_eval_spearman_vs_centroid=_spearman(ce_scores, dist),
      twinbench_auc_f1=ours32["baseline_auc_f1"], twinbench_hit_at_1=ours32["baseline_hit_at_1"],
      twinbench_min_pvalue=float(b_p.min()), twinbench_builtin_mean_auc_f1=ours32["builtin_mean_auc_f1"],
      model_twinbench_auc_f1=ours32["evaluate_auc_f1"], model_twinbench_hit_at_1=ours32["evaluate_hit_at_1"],
  )
  res["plot_data"] = dict(labels=labels, distance=dist.tolist(), cell_eval_baseline=b_ce.tolist(),
                          cell_eval_model=ce_scores.tolist(), twinbench_baseline_p=b_p.tolist(),
                          twinbench_model_p=[ours32["evaluate_pvalues"][lab] for lab in labels])
  if cli:
    res["cli"] = _clis(pred, real, control, workdir, cell_eval_python, timeout)
  return res


def _clis(pred, real, control, workdir, cell_eval_python, timeout) -> dict:
  out = {}
  ce_out = os.path.join(workdir, "cell_eval_cli_out")
  ce = _common.run_measured([cell_eval_python, "-m", "cell_eval", "run", "-ap", pred, "-ar", real,
                             "--profile", "pds", "--control-pert", control,
                             "--pert-col", "perturbation", "-o", ce_out],
                            env={"TQDM_DISABLE": "1"}, timeout=timeout)
  out["cell_eval"] = dict(wall_s=ce["wall_s"], peak_rss_mib=ce["peak_rss_mib"],
                          returncode=ce["returncode"], cmd="cell-eval run --profile pds")
  cmd = _our_cli(pred, real, control, os.path.join(workdir, "twinbench_cli_out"))
  if cmd is None:
    out["twinbench"] = dict(skipped="twinbench_jax.cli not present yet")
  else:
    tb_run = _common.run_measured(cmd, timeout=timeout)
    out["twinbench"] = dict(wall_s=tb_run["wall_s"], peak_rss_mib=tb_run["peak_rss_mib"],
                            returncode=tb_run["returncode"],
                            cmd="twinbench evaluate " + " ".join(cmd[cmd.index("evaluate") + 1:])
                            .replace(pred, "P.h5ad").replace(real, "R.h5ad")
                            .replace(os.path.join(workdir, "twinbench_cli_out"), "OUT"),
                            stderr_tail=tb_run["stderr"][-500:] if tb_run["returncode"] else "")
  return out


def plot(result: dict, path: str) -> str:
  """Per-perturbation score against the real delta's distance to the centroid, both libraries."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  d = result["plot_data"]
  mb = result["mean_baseline"]
  dist = np.asarray(d["distance"])
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
  ax = axes[0]
  ax.scatter(dist, d["cell_eval_model"], s=6, c="0.75", label="model")
  ax.scatter(dist, d["cell_eval_baseline"], s=6, c="tab:red", label="mean baseline")
  ax.set_title(f"cell-eval discrimination score\nmean baseline: mean {mb['cell_eval_mean']:.2f}, "
               f"Spearman vs distance {mb['cell_eval_spearman_vs_centroid']:.2f}", fontsize=9)
  ax.set_ylabel("per-perturbation score (1 = best)")
  ax = axes[1]
  ax.scatter(dist, 1.0 - np.asarray(d["twinbench_model_p"]), s=6, c="0.75", label="model")
  ax.scatter(dist, 1.0 - np.asarray(d["twinbench_baseline_p"]), s=6, c="tab:red",
             label="mean baseline")
  ax.set_title(f"twinbench: 1 - p-value (label null)\nmean baseline: AUC-F1 = "
               f"{mb['twinbench_auc_f1']:.2f}, every p = {mb['twinbench_min_pvalue']:.2f}",
               fontsize=9)
  ax.set_ylim(-0.05, 1.05)
  for ax in axes:
    ax.set_xscale("log")
    ax.set_xlabel("L1 distance of the real delta to the centroid of all deltas")
    ax.legend(fontsize=8, loc="center right")
  fig.suptitle(f"{result['name']}: {result['n_perturbations']} perturbations", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _evaluate_rank_differs(a: dict) -> str:
  """`tb.evaluate`'s ranks that differ from cell-eval's, float32 / x64 (older results: float32)."""
  if "differ_evaluate_rank_x64" not in a:
    return str(a["differ_evaluate_rank"])
  note = ""
  if a["differ_evaluate_rank"]:
    off = a["differ_evaluate_rank_not_near_tie"]
    note = " (all at near-ties)" if off == 0 else f" ({off} not at a near-tie)"
  return f"{a['differ_evaluate_rank']}{note} / {a['differ_evaluate_rank_x64']}"


def markdown(results: list[dict]) -> str:
  """Markdown tables of the side-by-side results."""
  rows = []
  for r in results:
    t = r["timing"]
    rows.append([r["name"], r["n_perturbations"], t["cell_eval_s"], t["reproduce_s"],
                 t["evaluate_s"], t["evaluate_first_s"],
                 f"{t['cell_eval_s'] / t['evaluate_s']:.0f}x",
                 f"{t['cell_eval_s'] / t['evaluate_first_s']:.0f}x",
                 t["cell_eval_extra_mib"], t["evaluate_extra_mib"]])
  out = ["Discrimination score computation alone, from AnnData in memory (pseudobulks "
         "included; ours warm = median of repeats after the first call, first = including "
         "JIT compilation; peak = RSS above the loaded data):", "",
         _common.md_table(["pair", "P", "cell-eval s", "ours (reproduction) s", "tb.evaluate s",
                           "tb.evaluate first s", "ratio warm", "ratio first",
                           "cell-eval peak +MiB", "tb.evaluate peak +MiB"], rows), ""]
  rows = [[r["name"], r["n_perturbations"], t["cell_eval_metric_s"], t["metric_s"],
           f"{t['cell_eval_metric_s'] / t['metric_s']:.0f}x", t["metric_x64_s"],
           t["cell_eval_s"] - t["cell_eval_metric_s"], t["reproduce_s"] - t["metric_s"]]
          for r in results for t in [r["timing"]]]
  out += ["The metric step alone, given the pseudobulk deltas (cell-eval: its per-perturbation "
          "loop once the pair has memoized the pseudobulks; ours: `l1_without_target` + "
          "`tb.truth_ranks`, warm), and what the pseudobulks cost each:", "",
          _common.md_table(["pair", "P", "cell-eval metric s", "ours metric s (float32)", "ratio",
                            "ours metric s (x64)", "cell-eval pseudobulk s",
                            "ours pseudobulk s"], rows), ""]
  rows = []
  for r in results:
    c = r.get("cli")
    if not c:
      continue
    ce, ours = c["cell_eval"], c["twinbench"]
    if "skipped" in ours:
      rows.append([r["name"], ce["wall_s"], "skipped", "–", ce["peak_rss_mib"], "–"])
    elif ce["returncode"] or ours["returncode"]:
      rows.append([r["name"], f"exit {ce['returncode']}", f"exit {ours['returncode']}", "failed",
                   "–", "–"])
    else:
      rows.append([r["name"], ce["wall_s"], ours["wall_s"], f"{ce['wall_s'] / ours['wall_s']:.1f}x",
                   ce["peak_rss_mib"], ours["peak_rss_mib"]])
  if rows:
    out += ["Command lines end to end (process start, reading the files, the metric, writing "
            "results; peak RSS of the process):", "",
            _common.md_table(["pair", "`cell-eval run --profile pds` s", "`twinbench evaluate` s",
                              "ratio", "cell-eval peak MiB", "twinbench peak MiB"], rows), ""]
  gene_drop = all(r["agreement"].get("evaluate_target_genes") for r in results)
  rows = [[r["name"], r["n_perturbations"], r["agreement"]["differ_x64"],
           r["agreement"]["differ_float32"], f"{r['agreement']['max_abs_diff_float32']:.3g}",
           f"{r['agreement']['min_relative_gap']:.2g}", r["agreement"]["near_ties"],
           _evaluate_rank_differs(r["agreement"]),
           f"{r['agreement']['mean_score']:.4f}"] for r in results]
  out += ["Agreement with cell-eval's per-perturbation scores (number of perturbations whose "
          "score differs):", "",
          _common.md_table(["pair", "P", "differ (x64)", "differ (float32)",
                            "max abs diff float32", "smallest relative gap at the truth",
                            f"near-ties (gap < {NEAR_TIE:g})",
                            "`tb.evaluate` ranks that differ, float32 / x64"
                            + (" (target_genes)" if gene_drop else " (no gene drop)"),
                            "mean score"], rows), ""]
  rows = [[r["name"], f"{m['cell_eval_mean']:.3f}", f"{m['cell_eval_share_ge_0_9']:.0%}",
           f"{m['cell_eval_spearman_vs_centroid']:.3f}", f"{m['cell_eval_pearson_vs_centroid']:.3f}",
           f"{m['model_cell_eval_spearman_vs_centroid']:.3f}", f"{m['twinbench_auc_f1']:.3f}",
           f"{m['twinbench_min_pvalue']:.3f}", f"{m['model_twinbench_auc_f1']:.3f}"]
          for r in results for m in [r["mean_baseline"]]]
  out += ["cell-eval's mean baseline (`build_base_mean_adata`):", "",
          _common.md_table(["pair", "cell-eval mean score", "share >= 0.9",
                            "Spearman(score, distance to centroid)", "Pearson",
                            "model's Spearman (for contrast)", "twinbench AUC-F1",
                            "smallest p-value", "model's twinbench AUC-F1"], rows), ""]
  return "\n".join(out)


def run(names, workdir: str, *, cell_eval_python: Optional[str] = None, repeats: int = 3,
        cli: bool = True, plot_path: Optional[str] = None, log=print, n_genes: int = 2000,
        cells: int = 50) -> dict:
  """All side-by-side measurements; `plot_path` gets the plot of the largest synthetic pair.

  Args:
    names: pairs, ``"synthetic_<P>"`` or ``"papalexi"``.
    workdir: folder of the generated `.h5ad` files (reused when present) and
      of the command lines' outputs.
    cell_eval_python: interpreter with cell-eval installed (default: this one).
    repeats: timing repeats of our warm calls.
    cli: also time both command lines end to end.
    plot_path: where to write the mean-baseline plot.
    log: progress messages.
    n_genes: genes of the synthetic pairs.
    cells: mean cells per perturbation of the synthetic pairs.
  """
  cell_eval_python = cell_eval_python or sys.executable
  if not cell_eval_available(cell_eval_python):
    return dict(skipped=f"cell_eval is not importable by {os.path.basename(cell_eval_python)} "
                        "(install the `bench` extra)")
  os.makedirs(workdir, exist_ok=True)
  results = []
  for name in names:
    if name == "papalexi" and papalexi_path() is None:
      log("  papalexi: data not found, skipped")
      continue
    log(f"  cell-eval side by side: {name} ...")
    results.append(compare_one(name, workdir, cell_eval_python=cell_eval_python,
                               repeats=repeats, cli=cli, n_genes=n_genes, cells=cells))
  out = dict(results=results)
  synthetic = [r for r in results if r["name"] != "papalexi"]
  if plot_path and synthetic:
    out["plot"] = plot(max(synthetic, key=lambda r: r["n_perturbations"]), plot_path)
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="only the 200-perturbation pair")
  parser.add_argument("--cell-eval-python", default=os.environ.get("TWINBENCH_CELL_EVAL_PYTHON"),
                      help="interpreter with cell-eval installed (default: this one)")
  parser.add_argument("--workdir", default=os.path.join(_common.REPO, "benchmarks", "_cache"))
  parser.add_argument("--plot", default=None, help="write the mean-baseline plot here")
  args = parser.parse_args(argv)
  names = ["synthetic_200"] if args.quick else ["synthetic_200", "synthetic_1000", "papalexi"]
  out = run(names, args.workdir, cell_eval_python=args.cell_eval_python, plot_path=args.plot)
  if "skipped" in out:
    print("skipped:", out["skipped"])
    return
  print(markdown(out["results"]))


if __name__ == "__main__":
  main()

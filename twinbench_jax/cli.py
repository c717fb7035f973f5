"""The `twinbench` command line: a thin layer over the Python API.

- `twinbench evaluate --pred P.h5ad --real R.h5ad --out DIR`: `tb.evaluate`,
  then `DIR/report.json`, `DIR/per_perturbation.csv` and the PNG plots.
- `twinbench demo`: writes a simulated prediction/real pair as `.h5ad` files
  and evaluates a good, a collapsed and a noisy model on it;
  `twinbench demo --real FILE.h5ad` does the same on real data with split-half
  predictions.

Output folders are replaced all-or-nothing and never lose a user's file
(`twinbench_jax._src.evaluate.output_dir`): `DIR` must be new, empty or a previous
twinbench output (listed in its `.twinbench-manifest.json`); everything is
written to a hidden folder beside `DIR`, which takes its place in one step
when complete. Exit codes: 0 success, 2 bad input or an output folder that
cannot be written, 130 on SIGINT (Ctrl-C), 143 on SIGTERM; an interrupted run
leaves `DIR` as it was and nothing behind.

Start-up: `evaluate` and `demo` keep JAX's compiled kernels in a per-user
folder (`compilation_cache_dir`; ``--no-cache`` or
``TWINBENCH_COMPILATION_CACHE=0`` turns it off), the cyclic garbage collector
is off (`_no_automatic_gc`), and the process ends with `os._exit` once its
output is flushed, without the interpreter's teardown.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import os
import signal
import sys
import warnings
from typing import Any, Optional, Sequence

import numpy as np

from twinbench_jax._src.data import baselines as baselines_lib
from twinbench_jax._src.evaluate import output_dir
from twinbench_jax._src.data import profiles as profiles_lib
from twinbench_jax._src.core import similarity as similarity_lib

_NORMALIZE_CHOICES = ["none", *profiles_lib.NORMALIZATIONS]


class UsageError(Exception):
  """Bad input from the command line: reported in one line, exit code 2."""


# ----------------------------------------------------------------------------- compilation cache

CACHE_ENV = "TWINBENCH_COMPILATION_CACHE"
_OFF = ("0", "false", "no", "off")
_ON = ("", "1", "true", "yes", "on")
# Subfolder of the cache folder with the check behind `native.host_l1`'s numpy twin.
NATIVE_CHECKS = "native"
# Subfolder of the cache folder with the kernels' executables (`executables`).
EXECUTABLES = "executables"


def compilation_cache_dir(no_cache: bool = False) -> Optional[str]:
  """The folder of JAX's persistent compilation cache for this run, or None when opted out.

  ``$TWINBENCH_COMPILATION_CACHE`` set to 0/false/no/off (or `no_cache`,
  the ``--no-cache`` flag) turns it off; set to a folder, it is that folder;
  otherwise ``$XDG_CACHE_HOME/twinbench_jax/jax`` (default
  ``~/.cache/twinbench_jax/jax``).
  """
  value = os.environ.get(CACHE_ENV, "").strip()
  if no_cache or value.lower() in _OFF:
    return None
  if value.lower() not in _ON:
    return os.path.abspath(os.path.expanduser(value))
  base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "twinbench_jax", "jax")


def _enable_compilation_cache(args: argparse.Namespace) -> Optional[str]:
  """Points JAX's persistent compilation cache at `compilation_cache_dir`; returns the folder.

  Only in a process of its own (`main()` reading `sys.argv`, not `--no-cache`):
  `main(argv)` called from Python leaves the caller's JAX settings as they are.

  Every compile is kept, however short: the command line compiles the same
  few kernels in every new process, each in 0.1-0.5 s. The library itself
  never sets this (a user's own JAX settings stay theirs). Two processes may
  share the folder: entries are keyed by the program, compiler and device;
  an entry read while another process is still writing it does not
  decompress, and JAX then compiles anew (the warning it gives is silenced here). An
  unwritable folder leaves the cache off.

  Its `executables/` subfolder keeps the score kernels as executables,
  loaded without tracing (`evaluate/executables.py`). Its `native/` subfolder
  keeps the outcome of checking, once per
  machine, that numpy's copy of the L1 loop (`core/l1_lanes.py`) adds in the
  same order as numba's: where it does, small L1 problems skip importing
  numba (`native.host_l1`), with the same numbers.
  """
  if not getattr(args, "own_process", False):
    return None
  directory = compilation_cache_dir(args.no_cache)
  if directory is None:
    return None
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError:
    return None
  if not os.access(directory, os.W_OK | os.X_OK):
    return None
  import jax

  from twinbench_jax._src.core import native
  from twinbench_jax._src.evaluate import executables

  native.keep_checks_in(os.path.join(directory, NATIVE_CHECKS))
  executables.keep_in(os.path.join(directory, EXECUTABLES))
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  warnings.filterwarnings("ignore", message="Error reading persistent compilation cache entry")
  return directory


# ----------------------------------------------------------------------------- output folder


def _probe_output(out: str) -> None:
  """Refuses an unsafe --out before any work (see `output_dir.check`)."""
  try:
    output_dir.check(out)
  except (output_dir.OutputDirError, OSError) as e:
    raise UsageError(f"--out {out!r}: {e}") from None


@contextlib.contextmanager
def _out_errors(out: str):
  """Names --out in the errors of the final write (the folder changed meanwhile, ...)."""
  try:
    yield
  except output_dir.OutputDirError as e:
    raise UsageError(f"--out {out!r}: {e}") from None


def _check_not_inside(out: str, inputs: Sequence[tuple[str, str]]) -> None:
  """Refuses an --out folder that holds an input file: replacing it would delete the input."""
  real = os.path.realpath(out)
  for flag, path in inputs:
    if os.path.realpath(path).startswith(real + os.sep):
      raise UsageError(f"--out {out!r} holds the input file {flag} {path!r}, which replacing "
                       "the folder would delete; give another --out")


_SEED_MAX = 2**32 - 1


def _check_seed(seed: int) -> None:
  if not 0 <= seed <= _SEED_MAX:
    raise UsageError(f"--seed must be an integer in [0, {_SEED_MAX}], got {seed}")


# ----------------------------------------------------------------------------- printing


def _format_table(rows: list[tuple], header: tuple, fmts: tuple) -> str:
  name_w = max(len(header[0]), *(len(r[0]) for r in rows))
  widths = [max(len(h), 7) for h in header[1:]]
  lines = [f"{header[0]:<{name_w}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(header[1:], widths))]
  for r in rows:
    cells = [("-" if v is None else format(v, f)) for v, f in zip(r[1:], fmts)]
    lines.append(f"{r[0]:<{name_w}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
  return "\n".join(lines)


_BASELINE_LABELS = {name: spec.label for name, spec in baselines_lib.REGISTRY.items()}


def _report_rows(report) -> list[tuple]:
  """(name, AUC-F1, hit@1, MRR, mean rank, called) for the model and each baseline."""
  s = report.summary
  rows = [(s["settings"].get("name", "model"), s["auc_f1"], s["hit_at_1"], s["mrr"], s["mean_rank"],
           s["fraction_called"])]
  for name in ("split_half", "mean", "control"):
    d = s["baseline_details"].get(name)
    if d is not None:
      rows.append((_BASELINE_LABELS[name], d["auc_f1"], d["hit_at_1"], d["mrr"], d["mean_rank"],
                   d["fraction_called"]))
  return rows


def _print_summary(report, out_dir: Optional[str], out=None, plots: bool = True) -> None:
  out = sys.stdout if out is None else out
  s = report.summary
  null = s["null"] + (f", B = {s['n_null']}" if s["null"] != "label" else "")
  print(f"{s['n_queries']} perturbations ranked among {s['n_candidates']} real profiles on "
        f"{s['n_genes']} genes ({s['settings']['metric']}; {null} null; correct = rank <= "
        f"{s['k']})", file=out)
  print(_format_table(_report_rows(report),
                      ("", "AUC-F1", "hit@1", "MRR", "mean rank", "called@0.05"),
                      (".3f", ".3f", ".3f", ".2f", ".2f")), file=out)
  if out_dir is not None:
    written = ", f1_alpha.png, rank_histogram.png, pvalue_histogram.png, popularity.png"
    print(f"wrote {out_dir}{os.sep}: report.json, per_perturbation.csv{written if plots else ''}",
          file=out)


# ----------------------------------------------------------------------------- evaluate


def _read_gene_file(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise UsageError(f"--genes: file not found: {path!r}")
  with open(path) as f:
    genes = [line.split("#")[0].strip() for line in f]
  genes = [g for g in genes if g]
  if not genes:
    raise UsageError(f"--genes: {path!r} lists no genes (one gene name per line)")
  return genes


# Header words of a --target-genes file's first row (case-insensitive), skipped when present.
_TARGET_HEADER = ({"perturbation", "label", "pert", "perturbation_label"},
                  {"gene", "genes", "target", "targets", "target_gene", "target_genes"})


def _read_target_file(path: str) -> dict[str, list[str]]:
  """A two-column CSV/TSV of perturbation,gene (one row per target) -> label -> genes."""
  import csv

  with open(path, newline="") as f:
    lines = [(i, line) for i, line in enumerate(f, start=1)
             if line.strip() and not line.lstrip().startswith("#")]
  if not lines:
    raise UsageError(f"--target-genes: {path!r} lists no targets (two columns: "
                     "perturbation,gene; one row per target)")
  delimiter = "\t" if "\t" in lines[0][1] else ","
  mapping: dict[str, list[str]] = {}
  rows = csv.reader([line for _, line in lines], delimiter=delimiter)
  for n, ((lineno, _), row) in enumerate(zip(lines, rows)):
    row = [v.strip() for v in row]
    if len(row) != 2 or not all(row):
      raise UsageError(f"--target-genes: {path!r} line {lineno}: expected two non-empty "
                       f"columns perturbation{'<tab>' if delimiter != ',' else ','}gene, got "
                       f"{row}")
    if n == 0 and row[0].lower() in _TARGET_HEADER[0] and row[1].lower() in _TARGET_HEADER[1]:
      continue
    mapping.setdefault(row[0], []).append(row[1])
  if not mapping:
    raise UsageError(f"--target-genes: {path!r} has a header but no targets")
  return mapping


def _target_genes_arg(value: Optional[str]):
  """--target-genes FILE or obs:COLUMN -> the `target_genes` of `tb.evaluate`."""
  if value is None:
    return None
  if value.startswith("obs:"):
    if not value[len("obs:"):]:
      raise UsageError("--target-genes obs:COLUMN needs a column name, e.g. obs:grna_target")
    return value
  if not os.path.isfile(value):
    raise UsageError(f"--target-genes: file not found: {value!r} (give a two-column CSV/TSV "
                     "file perturbation,gene or obs:COLUMN)")
  return _read_target_file(value)


def _null_arg(values: list[str]):
  if values == ["label"]:
    return "label"
  if "model" in values:
    raise UsageError("--null model needs a Python predict function; use tb.evaluate(..., "
                     "null='model', predict_fn=..., inputs=...) from Python")
  if "label" in values:
    raise UsageError("--null takes either 'label' or one or more .h5ad files, not both")
  for v in values:
    if not os.path.isfile(v):
      raise UsageError(f"--null: file not found: {v!r} (give 'label' or .h5ad files of null "
                       "predictions)")
  return list(values)


def _baselines_arg(value: str) -> tuple[str, ...]:
  if value.strip() in ("", "none"):
    return ()
  try:
    return baselines_lib.check_baselines([v.strip() for v in value.split(",") if v.strip()])
  except ValueError as e:
    raise UsageError(f"--baselines: {e}") from None


def evaluate_options(args: argparse.Namespace) -> dict:
  """The keyword options of `tb.evaluate` from `twinbench evaluate`'s flags (all of them).

  Reads the files the flags name (--genes, --target-genes) and checks --null
  and --baselines (`UsageError`); `settings.build(options)` then makes the
  same checked `Settings` as `tb.evaluate` called with these options. Options
  without a flag keep `tb.evaluate`'s defaults.
  """
  from twinbench_jax._src.evaluate import evaluate as evaluate_lib

  return evaluate_lib.default_options() | dict(
      perturbation_key=args.perturbation_key, pred_perturbation_key=args.pred_perturbation_key,
      control=False if args.no_control else args.control,
      include_control=args.include_control, layer=args.layer, pred_layer=args.pred_layer,
      normalize=args.normalize, pred_normalize=args.pred_normalize,
      genes=_read_gene_file(args.genes) if args.genes else None, n_top_genes=args.n_top_genes,
      strict_genes=args.strict_genes, target_genes=_target_genes_arg(args.target_genes),
      delta=args.delta, unmatched=args.unmatched, metric=args.metric, k=args.k,
      null=_null_arg(args.null), n_null=args.n_null, seed=args.seed,
      baselines=_baselines_arg(args.baselines), chunk_size=args.chunk_size,
      progress=not args.quiet, name=args.name, direction=args.direction,
      candidate_level=args.candidate_level)


def _check_evaluate_flags(args: argparse.Namespace) -> None:
  """The numbers and input files of `twinbench evaluate`, checked before anything is read."""
  if args.n_null is not None and args.n_null < 1:
    raise UsageError(f"--n-null must be >= 1 (number of null replicates), got {args.n_null}")
  if args.k < 1:
    raise UsageError(f"--k must be >= 1, got {args.k}")
  if args.n_top_genes is not None and args.n_top_genes < 1:
    raise UsageError(f"--n-top-genes must be >= 1, got {args.n_top_genes}")
  if args.chunk_size is not None and args.chunk_size < 1:
    raise UsageError(f"--chunk-size must be >= 1, got {args.chunk_size}")
  _check_seed(args.seed)
  for flag, path in (("--pred", args.pred), ("--real", args.real)):
    if not os.path.isfile(path):
      raise UsageError(f"{flag}: file not found: {path!r}")


def run_evaluate(args: argparse.Namespace) -> int:
  from twinbench_jax._src.evaluate import settings as settings_lib
  from twinbench_jax._src.evaluate import steps

  _check_evaluate_flags(args)
  options = evaluate_options(args)
  _probe_output(args.out)
  inputs = [("--pred", args.pred), ("--real", args.real), ("--genes", args.genes),
            ("--target-genes", args.target_genes)]
  if options["null"] != "label":
    inputs += [("--null", v) for v in options["null"]]
  _check_not_inside(args.out, [(f, p) for f, p in inputs if p and os.path.isfile(p)])

  _enable_compilation_cache(args)
  report = steps.run(args.pred, args.real, settings_lib.build(options))
  with _out_errors(args.out):
    report.save(args.out, plots=args.plots)
  if not args.quiet:
    _print_summary(report, args.out, plots=args.plots)
  _print_notes(report.summary["notes"])
  return 0


def _print_notes(notes: Sequence[str]) -> None:
  """Each note of a report on stderr, also under --quiet: a pipeline must see them."""
  for note in notes:
    print(f"note: {note}", file=sys.stderr)


# ----------------------------------------------------------------------------- compare


def run_compare(args: argparse.Namespace) -> int:
  from twinbench_jax._src.evaluate import compare as compare_lib

  if len(args.reports) < 2:
    raise UsageError(f"compare needs at least two report folders, got {len(args.reports)}")
  names = None
  if args.names is not None:
    names = [n.strip() for n in args.names.split(",")]
  _probe_output(args.out)
  _check_not_inside(args.out, [("DIR", os.path.join(d, "report.json")) for d in args.reports])
  comparison = compare_lib.compare(*args.reports, names=names)
  with _out_errors(args.out):
    comparison.save(args.out, plots=not args.no_plots)
  if not args.quiet:
    shared = comparison.shared
    null = shared["null"] + (f", B = {shared['n_null']}" if shared["null"] != "label" else "")
    print(f"{len(args.reports)} models, {shared['n_queries']} perturbations ranked among "
          f"{shared['n_candidates']} real profiles ({shared['settings'].get('metric')}; {null} "
          "null)")
    table = comparison.table
    rows = [(name, *(table.loc[name, c] for c in ("auc_f1", "hit_at_1", "mrr", "mean_rank",
                                                  "fraction_called")))
            for name in table.index]
    print(_format_table(rows, ("", "AUC-F1", "hit@1", "MRR", "mean rank", "called@0.05"),
                        (".3f", ".3f", ".3f", ".2f", ".2f")))
    written = "comparison.csv, comparison.json" + ("" if args.no_plots else ", comparison.png")
    print(f"wrote {args.out}{os.sep}: {written}")
  _print_notes(comparison.notes)
  return 0


# ----------------------------------------------------------------------------- demo


def _write_h5ad(path: str, x: np.ndarray, labels: Sequence[str], genes: Sequence[str],
                *, control: str) -> None:
  import anndata
  import pandas as pd

  obs = pd.DataFrame({"perturbation": pd.Categorical(list(labels))},
                     index=[f"obs{i}" for i in range(len(labels))])
  adata = anndata.AnnData(np.asarray(x, np.float32), obs=obs,
                          var=pd.DataFrame(index=list(genes)))
  adata.uns["perturbation_key"] = "perturbation"
  adata.uns["control_label"] = control
  adata.write_h5ad(path, compression="gzip")


def _demo_models(data, key) -> dict:
  """Three predictors of the simulated pseudobulk profiles."""
  import jax
  import jax.numpy as jnp

  real = data.pseudobulk()
  k_good, k_noisy = jax.random.split(key)
  spread = float(jnp.std(data.effects[data.effects != 0]))
  return {
      "good": data.true_means + 0.25 * spread * jax.random.normal(k_good, real.shape),
      "collapsed": jnp.broadcast_to(real.mean(axis=0), real.shape),
      "noisy": data.true_means + 1.5 * spread * jax.random.normal(k_noisy, real.shape),
  }


_DEMO_NAMES = {"good": "good", "collapsed": "collapsed (mean response)", "noisy": "noisy"}


def _demo_table(rows, out) -> None:
  print(_format_table(rows, ("model", "hit@1", "mean rank", "AUC-F1"), (".3f", ".2f", ".3f")),
        file=out)


def _name_final_inputs(report: Any, staging: str, out: str) -> None:
  """Points the report's `pred`/`real` settings at the demo files where they end up.

  The demo scores files written in the staging folder, which is renamed to
  `out` at the end; the report must name the files that exist afterwards.
  """
  settings = report.summary["settings"]
  for key in ("pred", "real"):
    settings[key] = os.path.join(out, os.path.relpath(settings[key], staging))


def run_demo(args: argparse.Namespace, out=None) -> int:
  out = sys.stdout if out is None else out
  if args.real is not None:
    return _run_real_demo(args, out)
  import jax

  from twinbench_jax._src.evaluate import evaluate as evaluate_lib
  from twinbench_jax._src.datasets import simulate

  if args.n_perturbations < 2:
    raise UsageError(f"--n-perturbations must be >= 2, got {args.n_perturbations}")
  per_effect = inspect.signature(simulate.simulate_perturbations).parameters[
      "genes_per_effect"].default
  if args.n_genes < per_effect:
    raise UsageError(f"--n-genes must be >= {per_effect} (each simulated perturbation moves "
                     f"{per_effect} genes), got {args.n_genes}")
  _check_seed(args.seed)
  _probe_output(args.out)
  _enable_compilation_cache(args)
  key = jax.random.key(args.seed)
  k_data, k_models = jax.random.split(key)
  data = simulate.simulate_perturbations(
      k_data, n_perturbations=args.n_perturbations, n_genes=args.n_genes)
  n_p, n_g = data.n_perturbations, data.true_means.shape[1]
  labels = [f"P{i:03d}" for i in range(n_p)]
  genes = [f"gene{j:04d}" for j in range(n_g)]
  print(f"Simulated screen: {n_p} perturbations x {n_g} genes (seed {args.seed}); real data = "
        f"{data.cells.shape[0]} perturbed + {data.control_cells.shape[0]} control cells.",
        file=out)
  print("Each model's predictions are written to an .h5ad file and scored with `evaluate` "
        "(exact label-permutation null; a model that ignores its input scores AUC-F1 = 0, the "
        f"best possible is {1 - 1 / n_p:.3f}).\n", file=out)
  rows, reports = [], {}
  with _out_errors(args.out), output_dir.staged(args.out) as tmp:
    cells = np.concatenate([np.asarray(data.control_cells), np.asarray(data.cells)])
    cell_labels = ["control"] * data.control_cells.shape[0] + [
        labels[i] for i in np.asarray(data.labels)]
    real_path = os.path.join(tmp, "real.h5ad")
    _write_h5ad(real_path, cells, cell_labels, genes, control="control")
    for name, pred in _demo_models(data, k_models).items():
      pred_path = os.path.join(tmp, f"pred_{name}.h5ad")
      _write_h5ad(pred_path, np.asarray(pred), labels, genes, control="control")
      report = evaluate_lib.evaluate(pred_path, real_path, metric=args.metric, seed=args.seed,
                                     name=f"{_DEMO_NAMES[name]} model")
      _name_final_inputs(report, tmp, args.out)
      report.save(os.path.join(tmp, name))
      reports[name] = report
      s = report.summary
      rows.append((_DEMO_NAMES[name], s["hit_at_1"], s["mean_rank"], s["auc_f1"]))
    for base in ("split_half", "mean", "control"):
      d = reports["good"].summary["baseline_details"][base]
      rows.append((_BASELINE_LABELS[base], d["hit_at_1"], d["mean_rank"], d["auc_f1"]))
  _demo_table(rows, out)
  print(f"\nwrote {args.out}{os.sep}: real.h5ad, pred_{{good,collapsed,noisy}}.h5ad and a report "
        "per model in good/, collapsed/, noisy/ (report.json, per_perturbation.csv, "
        "f1_alpha.png, ...)", file=out)
  pred_good, real = (os.path.join(args.out, n) for n in ("pred_good.h5ad", "real.h5ad"))
  print(f"the same from the shell: twinbench evaluate --pred {pred_good} --real {real} --out OUT",
        file=out)
  return 0


def _run_real_demo(args: argparse.Namespace, out) -> int:
  """Split-half on real data: half the cells of each perturbation predict the other half."""
  import anndata

  from twinbench_jax._src.evaluate import evaluate as evaluate_lib

  if not os.path.isfile(args.real):
    raise UsageError(f"--real: file not found: {args.real!r}")
  _check_seed(args.seed)
  _probe_output(args.out)
  _check_not_inside(args.out, [("--real", args.real)])
  _enable_compilation_cache(args)
  src = profiles_lib.open_source(args.real, args.real)
  try:
    key, control = profiles_lib.resolve_keys(src, args.perturbation_key, args.control)
    labels = src.obs_labels(key)
  finally:
    src.close()
  uniq, codes = profiles_lib.factorize(labels)
  half = baselines_lib.split_halves(codes, seed=args.seed)
  adata = anndata.read_h5ad(args.real)
  normalize = None if args.normalize == "none" else args.normalize
  print(f"Real data: {args.real} ({adata.n_obs} cells x {adata.n_vars} genes, "
        f"{len(uniq) - (control in set(uniq))} perturbations, control "
        f"{control!r}).", file=out)
  print(f"Half of the cells of each perturbation (seed {args.seed}) are the 'predictions', the "
        f"other half the real data; profiles are pseudobulks of {normalize or 'the stored values'}"
        ", scored with the exact label-permutation null.\n", file=out)
  with _out_errors(args.out), output_dir.staged(args.out) as tmp:
    for h, name in ((0, "pred.h5ad"), (1, "real.h5ad")):
      part = adata[half == h]
      sub = anndata.AnnData(part.X, obs=part.obs.copy(), var=part.var.copy())
      sub.uns["perturbation_key"] = key
      if control is not None:
        sub.uns["control_label"] = control
      sub.write_h5ad(os.path.join(tmp, name), compression="gzip")
    report = evaluate_lib.evaluate(
        os.path.join(tmp, "pred.h5ad"), os.path.join(tmp, "real.h5ad"), perturbation_key=key,
        control=control if control is not None else False, normalize=normalize,
        metric=args.metric, seed=args.seed, baselines=("mean", "control"), unmatched="keep_real",
        name="split-half (half A predicts half B)")
    _name_final_inputs(report, tmp, args.out)
    report.save(os.path.join(tmp, "report"))
  s = report.summary
  rows = [(s["settings"]["name"], s["hit_at_1"], s["mean_rank"], s["auc_f1"])]
  for base in ("mean", "control"):
    d = s["baseline_details"].get(base)
    if d is not None:
      rows.append((_BASELINE_LABELS[base], d["hit_at_1"], d["mean_rank"], d["auc_f1"]))
  _demo_table(rows, out)
  for note in s["notes"]:
    if not note.startswith("label null"):
      print(f"note: {note}", file=out)
  print(f"\nwrote {args.out}{os.sep}: pred.h5ad, real.h5ad (the two halves) and report/ "
        "(report.json, per_perturbation.csv, f1_alpha.png, ...)", file=out)
  return 0


# ----------------------------------------------------------------------------- parser

_OUT_HELP = (
    "DIR is replaced as a whole, never mixed: the new files are written into a hidden folder "
    "beside DIR that takes its place when complete, with a manifest .twinbench-manifest.json "
    "listing them. DIR must be new, empty or a previous twinbench output; a DIR holding any "
    "file or folder twinbench did not write, the current or home folder, '/' or an empty "
    "path is refused (exit 2), and nothing is ever removed that twinbench did not write")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="twinbench",
      description="TwinBench: rank-based, bias-corrected evaluation of virtual-cell models.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")

  ev = _add_evaluate_parser(sub)
  _add_expression_options(ev)
  _add_scoring_options(ev)
  _add_compare_parser(sub)
  _add_demo_parser(sub)
  return parser


def _add_evaluate_parser(sub) -> argparse.ArgumentParser:
  """`twinbench evaluate`: its description, files and label options."""
  ev = sub.add_parser(
      "evaluate", help="score predicted against real perturbation profiles (.h5ad files)",
      description="Score predictions (--pred) against real data (--real). Each predicted "
      "perturbation's profile (pseudobulk mean of its rows) is ranked against every real "
      "perturbation profile; a permutation null gives each a p-value; the AUC-F1 counts the "
      "perturbations ranked first only where the prediction demonstrably uses its input. The "
      "mean, control and split-half baselines are scored on the same data. Writes "
      "DIR/report.json, DIR/per_perturbation.csv and PNG plots (F1 versus alpha, rank and "
      "p-value histograms, popularity). Exit code 0 on success, 2 with a one-line reason on "
      "bad input, 130 on Ctrl-C (SIGINT), 143 on SIGTERM; an interrupted run leaves DIR as it "
      "was.")
  io = ev.add_argument_group("files")
  io.add_argument("--pred", required=True, metavar="P.h5ad",
                  help="predictions: one row per perturbation, or many cells per perturbation "
                  "(averaged)")
  io.add_argument("--real", required=True, metavar="R.h5ad", help="the real single-cell data")
  io.add_argument("--out", required=True, metavar="DIR", help=_OUT_HELP)
  keys = ev.add_argument_group("labels")
  keys.add_argument("--perturbation-key", metavar="K", default=None,
                    help="obs column of the perturbation label (default: "
                    "uns['perturbation_key'] of --real, else 'perturbation')")
  keys.add_argument("--pred-perturbation-key", metavar="K", default=None,
                    help="the label column of --pred when it differs")
  keys.add_argument("--control", metavar="C", default=None,
                    help="control label (default: uns['control_label'] of --real, else "
                    "'control'); never ranked unless --include-control")
  keys.add_argument("--no-control", action="store_true",
                    help="the data has no control cells (skips the control baseline)")
  keys.add_argument("--include-control", action="store_true",
                    help="rank the control like a perturbation")
  keys.add_argument("--unmatched", choices=profiles_lib.UNMATCHED, default="error",
                    help="perturbations on one side only: error (default), intersect (score "
                    "the shared ones), keep_real (also keep unpredicted real ones as "
                    "candidates)")
  return ev


def _add_expression_options(ev) -> None:
  """`twinbench evaluate`: how expression is read, normalised and compared."""
  expr = ev.add_argument_group("expression")
  expr.add_argument("--layer", metavar="L", default=None,
                    help="read this layer instead of X (both files)")
  expr.add_argument("--pred-layer", metavar="L", default=None,
                    help="layer of --pred when it differs ('X' for X)")
  expr.add_argument("--normalize", choices=_NORMALIZE_CHOICES, default="none",
                    help="per-cell normalisation before averaging: none (default: both files "
                    "are already in the same expression space), log1p, log1p_cp10k (raw counts "
                    "-> log1p counts per 10k), log1p_cpm (per million)")
  expr.add_argument("--pred-normalize", choices=_NORMALIZE_CHOICES, default=None,
                    help="normalisation of --pred when it differs from --normalize")
  expr.add_argument("--delta", choices=["none", "control", "pred_control", "mean"],
                    default="none",
                    help="compare changes: minus the real control (control), the prediction "
                    "file's own control for predictions (pred_control), or the mean real "
                    "profile (mean); default none")
  genes = expr.add_mutually_exclusive_group()
  genes.add_argument("--genes", metavar="FILE", default=None,
                     help="evaluate on the genes listed in FILE (one per line)")
  genes.add_argument("--n-top-genes", metavar="N", type=int, default=None,
                     help="evaluate on the N genes that vary most across real profiles")
  expr.add_argument("--strict-genes", action="store_true",
                    help="error when the files' genes differ (default: use the shared genes)")
  expr.add_argument("--target-genes", metavar="FILE|obs:COLUMN", default=None,
                    help="leave each perturbation's own target gene(s) out of its distances "
                    "(a knockout trivially lowers its target), for the model and every "
                    "baseline: FILE is a two-column CSV/TSV perturbation,gene with one row per "
                    "target (optional header), or obs:COLUMN names the obs column of --real "
                    "holding each cell's target gene (e.g. obs:grna_target). Targets outside "
                    "the evaluated genes are ignored with a note; unknown perturbations are an "
                    "error")


def _add_scoring_options(ev) -> None:
  """`twinbench evaluate`: similarity, null, baselines and the run options."""
  score = ev.add_argument_group("scoring")
  score.add_argument("--metric", choices=similarity_lib.METRICS, default="sqeuclidean",
                     help="similarity between profiles (default sqeuclidean)")
  score.add_argument("--k", type=int, default=1,
                     help="a perturbation is correct when its truth ranks within the top K "
                     "(default 1)")
  score.add_argument("--null", nargs="+", default=["label"], metavar="label|FILE",
                     help="'label' (default: exact label permutation, no model needed) or one "
                     "or more .h5ad files of null predictions made from randomised inputs, "
                     "shaped like --pred (one replicate per file, or several labelled by "
                     "obs['null_replicate'])")
  score.add_argument("--n-null", type=int, default=None, metavar="B",
                     help="use the first B null replicates of --null FILES (default: all; "
                     "not used by the label null)")
  score.add_argument("--baselines", default="mean,control,split_half", metavar="LIST",
                     help="comma-separated baselines: mean, control, split_half (default all "
                     "three; 'none' for none)")
  score.add_argument("--seed", type=int, default=0,
                     help=f"seed of the split-half baseline, 0 to {_SEED_MAX} (default 0)")
  score.add_argument("--direction", choices=("pred_to_real", "real_to_pred"),
                     default="pred_to_real",
                     help="rank direction: each prediction ranks the real profiles (default), "
                     "or each real perturbation ranks the predictions (real_to_pred, "
                     "PerturBench's direction); the p-values are the same")
  score.add_argument("--candidate-level", action="store_true",
                     help="also report the candidate-level AUC-F1 of the entry-wise p-values "
                     "(candidate_auc_f1 and candidate_curve in report.json)")
  run = ev.add_argument_group("run")
  run.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="cells read at a time (default: about 4 million values per block)")
  run.add_argument("--name", default="model",
                   help="what to call the predictions in the report and plots (default model)")
  run.add_argument("--quiet", action="store_true",
                   help="no progress bars and no summary table")
  run.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write the four PNG plots (default; --no-plots: only report.json and "
                   "per_perturbation.csv)")
  _add_cache_flag(run)
  ev.set_defaults(func=run_evaluate)


def _add_demo_parser(sub) -> None:
  """`twinbench demo`."""
  demo = sub.add_parser(
      "demo", help="simulate a screen, write it as .h5ad files and evaluate three models",
      description="Simulate a small perturbation screen (a large shared 'popular' response plus "
      "perturbation-specific effects and noise), write the real cells and the predictions of a "
      "good, a collapsed and a noisy model as .h5ad files into --out, and run `evaluate` on "
      "each (report, per-perturbation table, plots). With --real FILE.h5ad: split the real "
      "cells of each perturbation in two halves, one half predicting the other, versus the "
      "mean and control baselines.")
  demo.add_argument("--out", default="twinbench_demo_out", metavar="DIR",
                    help="output folder (default ./twinbench_demo_out). " + _OUT_HELP)
  demo.add_argument("--seed", type=int, default=0, help=f"seed, 0 to {_SEED_MAX} (default 0)")
  demo.add_argument("--n-perturbations", type=int, default=40,
                    help="number of simulated perturbations (default 40)")
  demo.add_argument("--n-genes", type=int, default=200,
                    help="number of genes, at least 10 (default 200)")
  demo.add_argument("--metric", choices=similarity_lib.METRICS, default="sqeuclidean",
                    help="similarity (default sqeuclidean)")
  demo.add_argument("--real", metavar="FILE.h5ad", default=None,
                    help="run the split-half demo on this real data file instead")
  demo.add_argument("--normalize", choices=_NORMALIZE_CHOICES, default="log1p_cp10k",
                    help="with --real: per-cell normalisation (default log1p_cp10k, for raw "
                    "counts)")
  demo.add_argument("--perturbation-key", default=None, metavar="K",
                    help="with --real: obs label column (default from uns)")
  demo.add_argument("--control", default=None, metavar="C",
                    help="with --real: control label (default from uns)")
  _add_cache_flag(demo)
  demo.set_defaults(func=run_demo)


def _add_cache_flag(group) -> None:
  group.add_argument("--no-cache", action="store_true",
                     help="do not use the compiled-kernel cache (JAX's persistent compilation "
                     f"cache, by default in $XDG_CACHE_HOME/twinbench_jax/jax or "
                     f"~/.cache/twinbench_jax/jax; {CACHE_ENV}=0 turns it off as well, "
                     f"{CACHE_ENV}=DIR moves it)")


def _add_compare_parser(sub) -> None:
  cmp = sub.add_parser(
      "compare", help="put several saved reports of the same data side by side",
      description="Compare models evaluated on the same real data with the same settings: each "
      "DIR is a folder written by `twinbench evaluate`. Writes DIR/comparison.csv and "
      "DIR/comparison.json (one row per model, then the baselines: AUC-F1, hit@1, MRR, mean "
      "rank, fraction called) and DIR/comparison.png (every model's F1(alpha) curve with the "
      "baselines', beside a table figure). Reports whose metric version, real data or genes, "
      "null (kind, number of replicates) or scoring settings differ are refused, naming the "
      "field: their numbers do not mean the same thing.")
  cmp.add_argument("reports", nargs="+", metavar="DIR", help="saved report folders (two or more)")
  cmp.add_argument("--out", required=True, metavar="OUT",
                   help="output folder. " + _OUT_HELP.replace("DIR", "OUT"))
  cmp.add_argument("--names", default=None, metavar="A,B,...",
                   help="row names, comma-separated, one per DIR (default: each report's "
                   "model name, else its folder name)")
  cmp.add_argument("--no-plots", action="store_true", help="skip comparison.png")
  cmp.add_argument("--quiet", action="store_true", help="no summary table")
  cmp.set_defaults(func=run_compare)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


def _one_line_warnings(command: str) -> None:
  """Prints output-folder warnings as one line each (inside `warnings.catch_warnings`)."""
  show = warnings.showwarning

  def showwarning(message, category, *rest, **kw):
    if issubclass(category, output_dir.OutputDirWarning):
      print(f"twinbench {command}: warning: {_one_line(message)}", file=sys.stderr)
    else:
      show(message, category, *rest, **kw)

  warnings.showwarning = showwarning


def _interrupted(args: argparse.Namespace, signum: int, replaced: bool = False) -> int:
  done = ("after the new output was complete; --out holds it" if replaced else
          "--out left as it was")
  print(f"twinbench {args.command}: interrupted by {signal.Signals(signum).name}; {done}",
        file=sys.stderr)
  return 128 + signum


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command line; returns the exit code.

  0 on success, 2 on bad input (one line on stderr), 130 on SIGINT (Ctrl-C)
  and 143 on SIGTERM: an interrupted run removes its staging folder, leaves
  the output folder as it was and prints one line, no traceback.

  Args:
    argv: the arguments; None (the `twinbench` command, `python -m
      twinbench_jax`) reads `sys.argv` and ends the process at once with
      `os._exit` after flushing stdout and stderr (`_exit_now`): no final
      garbage collection, and an interrupted run never tears JAX down while
      a compile is still running on its threads.
  """
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
    return int(e.code or 0)
  if getattr(args, "func", None) is None:
    parser.print_help()
    return 2
  args.own_process = argv is None
  if args.own_process:
    _no_automatic_gc()
    if _draws_plots(args):
      _lean_matplotlib()
  with output_dir.handle_signals() as received, warnings.catch_warnings():
    _one_line_warnings(args.command)
    try:
      code = args.func(args)
    except (UsageError, ValueError, TypeError, KeyError, OSError) as e:
      print(f"twinbench {args.command}: error: {_one_line(e)}", file=sys.stderr)
      code = 2
    except output_dir.Interrupted as e:
      code = _interrupted(args, e.signum, e.replaced)
    except KeyboardInterrupt:
      code = _interrupted(args, signal.SIGINT)
    else:
      if received:
        # Swallowed on the way (raised inside a finaliser, say) after the output was replaced.
        code = _interrupted(args, received[0], replaced=True)
  if argv is None:
    _exit_now(code)
  return code


def _no_automatic_gc() -> None:
  """Turns the cyclic garbage collector off for the rest of a process of its own.

  The command's later imports (numba, matplotlib, h5py), JAX's tracing and
  the report each allocate hundreds of thousands of objects, and every
  few hundred allocations the collector scans the young ones, every few
  thousand the whole heap of JAX, pandas and their modules: 10-15% of the
  command's time on Papalexi. Memory is freed by reference counting as
  before; only objects in reference cycles wait, for a process that ends
  (`_exit_now`) as soon as its output is written. `main(argv)` called from
  Python leaves the caller's collector as it is.
  """
  gc.disable()


def _draws_plots(args: argparse.Namespace) -> bool:
  """Whether the command draws figures (evaluate and demo unless --no-plots; compare)."""
  if args.command == "compare":
    return not args.no_plots
  return args.command == "demo" or bool(getattr(args, "plots", False))


def _lean_matplotlib() -> None:
  """Imports matplotlib without writing the docstrings of its artists' `set` methods.

  Each `Artist` subclass lists all its properties in the docstring of its
  `set` method when the class is created (`matplotlib.artist.kwdoc`): about
  half of importing `matplotlib.figure` (0.16 of 0.29 s), for text nobody
  reads in a command that only saves PNGs. In a process of its own only:
  `Report.save` called from Python leaves the user's matplotlib as it is.
  Figures are unchanged (only docstrings are); when matplotlib's figures are
  already imported, or `kwdoc` has moved, nothing is done.
  """
  if "matplotlib.figure" in sys.modules:
    return
  try:
    import matplotlib.artist
  except ImportError:  # reported where the plots are drawn
    return
  if callable(getattr(matplotlib.artist, "kwdoc", None)):
    matplotlib.artist.kwdoc = lambda artist: ""


def _exit_now(code: int) -> None:
  """Ends the process at once with `code`, once stdout and stderr are flushed.

  Every file the command wrote is closed by then (the output folder is
  complete). Skipped: the interpreter's teardown, whose final garbage
  collection of JAX's, pandas' and matplotlib's objects alone takes about
  0.5 s, and JAX's exit hooks, which could crash the interpreter when an
  interrupted run left a compile running on its threads.
  """
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed pipe (`twinbench ... | head`): nothing to keep
      pass
  os._exit(code)

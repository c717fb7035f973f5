"""The `twinbench` command line, run in-process through `main(argv)`."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

import twinbench_jax as tb
from adata_helpers import good_pred, make_real
from twinbench_jax.cli import main

PLOTS = ["f1_alpha.png", "popularity.png", "pvalue_histogram.png", "rank_histogram.png"]
SPEC_FIELDS = ["auc_f1", "hit_at_1", "mrr", "n_queries", "n_null", "null", "baselines",
               "per_perturbation"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """A synthetic real/prediction pair on disk, and broken variants of them."""
  d = tmp_path_factory.mktemp("inputs")
  real, means = make_real()
  real.uns["perturbation_key"] = "perturbation"
  real.uns["control_label"] = "control"
  pred = good_pred(real, means)
  out = {"real": d / "real.h5ad", "pred": d / "pred.h5ad"}
  real.write_h5ad(out["real"])
  pred.write_h5ad(out["pred"])

  other = pred.copy()
  other.var_names = [f"ENSG{i:05d}" for i in range(pred.n_vars)]
  out["other_genes"] = d / "other_genes.h5ad"
  other.write_h5ad(out["other_genes"])
  dup = real.copy()
  dup.var_names = ["g0", "g0"] + list(real.var_names[2:])
  out["dup_genes"] = d / "dup_genes.h5ad"
  dup.write_h5ad(out["dup_genes"])
  nan = pred.copy()
  nan.X[1, 4] = np.nan
  out["nan"] = d / "nan.h5ad"
  nan.write_h5ad(out["nan"])
  out["empty"] = d / "empty.h5ad"
  out["empty"].write_bytes(b"")
  out["truncated"] = d / "truncated.h5ad"
  data = out["real"].read_bytes()
  out["truncated"].write_bytes(data[: len(data) // 3])
  rng = np.random.default_rng(0)
  out["nulls"] = []
  for b in range(3):
    a = pred.copy()
    a.X = rng.permuted(np.asarray(a.X), axis=1)
    out["nulls"].append(d / f"null{b}.h5ad")
    a.write_h5ad(out["nulls"][-1])
  out["genes"] = d / "genes.txt"
  out["genes"].write_text("# genes to keep\ng1\ng2\n\ng5\ng7\ng11\n")
  return out


def _run(argv, capsys):
  code = main([str(a) for a in argv])
  cap = capsys.readouterr()
  return code, cap.out, cap.err


def test_evaluate_writes_report_table_and_plots(files, tmp_path, capsys):
  out = tmp_path / "report"
  code, stdout, _ = _run(["evaluate", "--pred", files["pred"], "--real", files["real"], "--out",
                          out], capsys)
  assert code == 0
  written = ["report.json", "per_perturbation.csv", *PLOTS]
  assert sorted(os.listdir(out)) == sorted([".twinbench-manifest.json", *written])
  manifest = json.loads((out / ".twinbench-manifest.json").read_text())
  assert manifest["files"] == {n: (out / n).stat().st_size for n in written}
  report = json.loads((out / "report.json").read_text())
  for field in SPEC_FIELDS:
    assert field in report, field
  assert report["null"] == "label" and report["n_queries"] == 8
  assert set(report["baselines"]) == {"mean", "control", "split_half"}
  assert report["baselines"]["mean"] == 0.0
  assert report["twinbench_version"] == tb.__version__
  assert report["metric_version"] == tb.METRIC_VERSION
  table = pd.read_csv(out / "per_perturbation.csv")
  assert len(table) == 8 and list(table.columns[:3]) == ["perturbation", "rank", "pvalue"]
  for row in ("model", "split-half baseline", "mean baseline", "control baseline"):
    assert row in stdout
  assert "AUC-F1" in stdout and str(out) in stdout
  # Same numbers as the Python API.
  assert report["auc_f1"] == tb.evaluate(files["pred"], files["real"]).auc_f1


def test_evaluate_options(files, tmp_path, capsys):
  out = tmp_path / "o"
  code, stdout, stderr = _run(
      ["evaluate", "--pred", files["pred"], "--real", files["real"], "--out", out, "--genes",
       files["genes"], "--null", *files["nulls"], "--n-null", "2", "--baselines", "mean",
       "--metric", "cosine", "--delta", "control", "--k", "2", "--quiet"], capsys)
  assert code == 0, stderr
  assert stdout == ""  # --quiet
  report = json.loads((out / "report.json").read_text())
  assert (report["null"], report["n_null"], report["n_genes"]) == ("precomputed", 2, 5)
  assert list(report["baselines"]) == ["mean"]
  assert report["settings"]["metric"] == "cosine" and report["k"] == 2
  code, _, stderr = _run(["evaluate", "--pred", files["pred"], "--real", files["real"], "--out",
                          tmp_path / "top", "--n-top-genes", "4", "--quiet"], capsys)
  assert code == 0, stderr
  assert json.loads((tmp_path / "top" / "report.json").read_text())["n_genes"] == 4


def test_evaluate_flags_build_the_settings_of_the_python_call(files, tmp_path):
  from twinbench_jax import cli
  from twinbench_jax._src.evaluate import evaluate as evaluate_lib
  from twinbench_jax._src.evaluate import settings as settings_lib

  targets = tmp_path / "targets.csv"
  targets.write_text("perturbation,gene\np1,g3\np1,g4\np2,g5\n")
  args = cli.build_parser().parse_args(
      ["evaluate", "--pred", str(files["pred"]), "--real", str(files["real"]), "--out",
       str(tmp_path / "o"), "--genes", str(files["genes"]), "--target-genes", str(targets),
       "--null", *map(str, files["nulls"]), "--n-null", "2", "--baselines", "split_half,mean",
       "--metric", "l1", "--k", "2", "--no-control", "--pred-layer", "X", "--normalize",
       "log1p", "--delta", "mean", "--direction", "real_to_pred", "--seed", "4", "--name", "m"])
  from_cli = settings_lib.build(cli.evaluate_options(args))
  from_python = settings_lib.build(evaluate_lib.default_options() | dict(
      genes=["g1", "g2", "g5", "g7", "g11"], target_genes={"p1": ["g3", "g4"], "p2": "g5"},
      null=[str(f) for f in files["nulls"]], n_null=2, baselines=["split_half", "mean"],
      metric="l1", k=2, control=False, pred_layer="X", normalize="log1p", delta="mean",
      direction="real_to_pred", seed=4, name="m", progress=True))
  assert from_cli == from_python
  assert from_cli.null.null == from_python.null.null  # not part of ==: compared here
  assert from_cli != settings_lib.build(cli.evaluate_options(args) | {"k": 1})


@pytest.mark.parametrize("case, argv_fn, message", [
    ("missing key", lambda f: ["--perturbation-key", "guide"], "'guide'"),
    ("absent control", lambda f: ["--control", "NT"], "control label 'NT' not found"),
    ("no shared genes", lambda f: ["--pred", f["other_genes"]], "no shared genes"),
    ("duplicate genes", lambda f: ["--real", f["dup_genes"]], "duplicated gene name(s): ['g0']"),
    ("nan", lambda f: ["--pred", f["nan"]], "non-finite"),
    ("empty file", lambda f: ["--real", f["empty"]], "empty or truncated"),
    ("truncated file", lambda f: ["--real", f["truncated"]], "truncated"),
    ("missing file", lambda f: ["--pred", "nowhere.h5ad"], "file not found: 'nowhere.h5ad'"),
    ("n-null 0", lambda f: ["--n-null", "0"], "--n-null must be >= 1"),
    ("null file missing", lambda f: ["--null", "nowhere.h5ad"], "--null: file not found"),
    ("bad baseline", lambda f: ["--baselines", "mean,median"], "unknown baseline(s) ['median']"),
])
def test_bad_input_one_line_and_nothing_written(files, tmp_path, capsys, case, argv_fn,
                                                message):
  out = tmp_path / "out"
  base = {"--pred": files["pred"], "--real": files["real"]}
  extra = argv_fn(files)
  for flag in list(base):
    if flag in extra:
      i = extra.index(flag)
      base[flag] = extra[i + 1]
      extra = extra[:i] + extra[i + 2:]
  argv = ["evaluate", "--pred", base["--pred"], "--real", base["--real"], "--out", out, *extra]
  code, stdout, stderr = _run(argv, capsys)
  assert code == 2, case
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("twinbench evaluate: error: "), stderr
  assert message in lines[0], lines[0]
  assert not out.exists()
  assert [p for p in os.listdir(tmp_path) if p.startswith(".out.tmp")] == []


def test_unwritable_output_folder(files, tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  for out in (blocker, blocker / "out"):
    code, _, stderr = _run(["evaluate", "--pred", files["pred"], "--real", files["real"],
                            "--out", out], capsys)
    assert code == 2 and "not a folder" in stderr and len(stderr.strip().splitlines()) == 1
  if os.geteuid() != 0:  # root writes anywhere
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, stderr = _run(["evaluate", "--pred", files["pred"], "--real", files["real"],
                            "--out", locked / "out"], capsys)
    assert code == 2 and "not writable" in stderr


def test_existing_folder_kept_on_failure_and_updated_on_success(files, tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  old = '{"twinbench_version": "0.0.1", "auc_f1": 0.5}'  # a report from before the manifest
  (out / "report.json").write_text(old)
  code, _, _ = _run(["evaluate", "--pred", files["nan"], "--real", files["real"], "--out", out],
                    capsys)
  assert code == 2
  assert (out / "report.json").read_text() == old
  # A file twinbench did not write: the folder is refused and left exactly as it was.
  (out / "mine.txt").write_text("keep me")
  code, _, stderr = _run(["evaluate", "--pred", files["pred"], "--real", files["real"], "--out",
                          out, "--quiet"], capsys)
  assert code == 2 and "'mine.txt'" in stderr
  assert sorted(os.listdir(out)) == ["mine.txt", "report.json"]
  assert (out / "report.json").read_text() == old
  (out / "mine.txt").unlink()
  code, _, _ = _run(["evaluate", "--pred", files["pred"], "--real", files["real"], "--out", out,
                     "--quiet"], capsys)
  assert code == 0
  assert json.loads((out / "report.json").read_text())["n_queries"] == 8


def test_help_explains_every_option(capsys):
  code, stdout, _ = _run(["evaluate", "--help"], capsys)
  assert code == 0
  for flag in ("--pred", "--real", "--out", "--perturbation-key", "--control", "--layer",
               "--genes", "--n-top-genes", "--normalize", "--metric", "--null", "--n-null",
               "--seed", "--k", "--quiet", "--delta", "--unmatched", "--baselines"):
    assert flag in stdout, flag
  assert _run([], capsys)[0] == 2
  assert _run(["evaluate"], capsys)[0] == 2  # argparse: missing --pred/--real/--out


def test_demo_writes_the_pair_and_evaluates_three_models(tmp_path, capsys):
  out = tmp_path / "demo"
  code, stdout, stderr = _run(["demo", "--out", out, "--n-perturbations", "8", "--n-genes", "25"],
                              capsys)
  assert code == 0, stderr
  for name in ("real.h5ad", "pred_good.h5ad", "pred_collapsed.h5ad", "pred_noisy.h5ad"):
    assert (out / name).is_file()
  rows = {line.split("  ")[0].strip(): line.split() for line in stdout.splitlines()
          if line.startswith(("good", "collapsed", "noisy"))}
  assert set(rows) == {"good", "collapsed (mean response)", "noisy"}
  assert float(rows["collapsed (mean response)"][-1]) == 0.0
  assert float(rows["good"][-1]) > float(rows["noisy"][-1])
  for model in ("good", "collapsed", "noisy"):
    report = json.loads((out / model / "report.json").read_text())
    assert report["n_queries"] == 8
    assert (out / model / "f1_alpha.png").is_file()
    # the report names the inputs where they are, not in the folder staged before the swap
    assert report["settings"]["pred"] == str(out / f"pred_{model}.h5ad")
    assert report["settings"]["real"] == str(out / "real.h5ad")
  assert "hit@1" in stdout and "mean rank" in stdout and "AUC-F1" in stdout


def test_demo_on_real_data(papalexi_path, tmp_path, capsys):
  out = tmp_path / "real_demo"
  code, stdout, stderr = _run(["demo", "--real", papalexi_path, "--out", out], capsys)
  assert code == 0, stderr
  assert "split-half" in stdout and "mean baseline" in stdout and "control baseline" in stdout
  report = json.loads((out / "report" / "report.json").read_text())
  assert report["settings"]["normalize"] == "log1p_cp10k"
  assert report["n_queries"] == 25
  assert report["auc_f1"] > max(report["baselines"].values())
  assert report["baselines"]["mean"] == 0.0 and report["baselines"]["control"] == 0.0
  assert (out / "report" / "f1_alpha.png").is_file()
  assert report["settings"]["pred"] == str(out / "pred.h5ad")
  assert (out / "pred.h5ad").is_file() and report["settings"]["real"] == str(out / "real.h5ad")

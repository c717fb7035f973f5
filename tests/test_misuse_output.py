"""Output-folder safety against real folders: refusals, all-or-nothing replacement, interrupts.

Every case states the exact outcome: the exit code, the name in the one-line
message, and the files present afterwards with their bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from adata_helpers import good_pred, make_real
from twinbench_jax._src.evaluate import output_dir
from twinbench_jax._src.evaluate import plots as plots_lib
from twinbench_jax.cli import main

MANIFEST = ".twinbench-manifest.json"
REPORT_SET = sorted(["report.json", "per_perturbation.csv", "f1_alpha.png", "rank_histogram.png",
                     "pvalue_histogram.png", "popularity.png"])
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """A small real/prediction pair and one complete report written from it (the 'old set')."""
  d = tmp_path_factory.mktemp("misuse_out")
  real, means = make_real(n_perturbations=5, n_cells=6, n_control=8, n_genes=12)
  real.uns["perturbation_key"] = "perturbation"
  real.uns["control_label"] = "control"
  paths = {"real": d / "real.h5ad", "pred": d / "pred.h5ad", "template": d / "template"}
  real.write_h5ad(paths["real"])
  good_pred(real, means).write_h5ad(paths["pred"])
  assert main(_evaluate_argv(paths, paths["template"], "--name", "old model")) == 0
  return paths


def _evaluate_argv(inputs, out, *extra):
  return ["evaluate", "--pred", str(inputs["pred"]), "--real", str(inputs["real"]), "--out",
          str(out), "--quiet", "--baselines", "none", *extra]


def _run(argv, capsys):
  code = main([str(a) for a in argv])
  cap = capsys.readouterr()
  return code, cap.out, cap.err


def _snapshot(folder: Path) -> dict:
  """Relative path -> bytes (files) or None (folders), hidden entries included."""
  found = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      p = Path(root) / name
      found[str(p.relative_to(folder))] = None if p.is_dir() else p.read_bytes()
  return found


def _leftovers(parent: Path) -> list[str]:
  return sorted(n for n in os.listdir(parent) if ".tmp-" in n or "twinbench-probe" in n)


def _old_set(inputs, out: Path) -> dict:
  shutil.copytree(inputs["template"], out)
  return _snapshot(out)


def _assert_refused(code, stderr, *names):
  lines = stderr.strip().splitlines()
  assert code == 2, stderr
  assert len(lines) == 1 and lines[0].startswith("twinbench "), stderr
  for name in names:
    assert name in lines[0], (name, lines[0])
  assert "Traceback" not in stderr


# ----------------------------------------------------------------------------- unsafe locations


@pytest.mark.parametrize("out, message", [
    ("", "empty path"),
    (".", "'.' is the current folder"),
    ("CWD", "is the current folder"),
    ("..", "a folder above the current one"),
    ("/", "filesystem root"),
    ("HOME", "is the home folder"),
])
def test_unsafe_location_refused_and_cwd_untouched(inputs, tmp_path, monkeypatch, capsys, out,
                                                   message):
  cwd = tmp_path / "work"
  (cwd / "report.json").mkdir(parents=True)  # a user folder named like an output
  (cwd / "report.json" / "data.txt").write_text("user data")
  (cwd / "notes.txt").write_text("mine")
  home = tmp_path / "home"
  home.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setenv("HOME", str(home))
  out = {"CWD": str(cwd), "HOME": str(home)}.get(out, out)
  before, home_before = _snapshot(cwd), _snapshot(home)
  for argv in (_evaluate_argv(inputs, out), ["demo", "--out", out]):
    code, _, stderr = _run(argv, capsys)
    _assert_refused(code, stderr, "--out", message)
  assert _snapshot(cwd) == before and _snapshot(home) == home_before
  assert _leftovers(tmp_path) == [] and _leftovers(cwd) == []


@pytest.mark.parametrize("setup, name, message", [
    ("user_dir_popularity", "'popularity.png'", "folder"),
    ("user_dir_report", "'report.json'", "folder"),
    ("user_file", "'notes.txt'", "not in .twinbench-manifest.json"),
    ("user_file_legacy", "'notes.txt'", "has no manifest"),
    ("changed_file", "'per_perturbation.csv'", "changed after twinbench wrote it"),
    ("symlink", "'report.json'", "link or special file"),
    ("bad_manifest", MANIFEST, "not a readable twinbench manifest"),
    ("foreign_report", "'report.json'", "is not a twinbench report"),
    ("names_only", "popularity.png", "no twinbench report.json"),
    ("user_subdir_file", "'good/notes.txt'", "did not write"),
])
def test_folder_holding_foreign_entries_refused_untouched(inputs, tmp_path, capsys, setup, name,
                                                         message):
  out = tmp_path / "out"
  _old_set(inputs, out)
  outside = tmp_path / "elsewhere.json"
  outside.write_text('{"mine": 1}')
  if setup == "user_dir_popularity":
    (out / "popularity.png").unlink()
    (out / "popularity.png").mkdir()
    (out / "popularity.png" / "keep.txt").write_text("user data")
  elif setup == "user_dir_report":
    shutil.rmtree(out)
    (out / "report.json").mkdir(parents=True)
    (out / "report.json" / "keep.txt").write_text("user data")
  elif setup in ("user_file", "user_file_legacy"):
    (out / "notes.txt").write_text("user notes")
    if setup == "user_file_legacy":
      (out / MANIFEST).unlink()
  elif setup == "changed_file":
    with open(out / "per_perturbation.csv", "a") as f:
      f.write("user,edit\n")
  elif setup == "symlink":
    (out / "report.json").unlink()
    (out / "report.json").symlink_to(outside)
  elif setup == "bad_manifest":
    (out / MANIFEST).write_text("{not json")
  elif setup == "foreign_report":  # before the manifest existed, and not a twinbench report
    (out / MANIFEST).unlink()
    (out / "report.json").write_text('{"score": 1}')
  elif setup == "names_only":
    shutil.rmtree(out)
    out.mkdir()
    (out / "popularity.png").write_bytes(b"\x89PNG user figure")
  elif setup == "user_subdir_file":
    (out / MANIFEST).unlink()
    for p in out.iterdir():
      p.unlink()
    (out / "good").mkdir()
    (out / "good" / "report.json").write_text('{"twinbench_version": "0.1.0"}')
    (out / "good" / "notes.txt").write_text("mine")
  before = _snapshot(out)
  code, _, stderr = _run(_evaluate_argv(inputs, out), capsys)
  _assert_refused(code, stderr, "--out", name, message)
  assert _snapshot(out) == before
  assert outside.read_text() == '{"mine": 1}'
  assert _leftovers(tmp_path) == []


def test_out_is_a_file_or_holds_an_input(inputs, tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  code, _, stderr = _run(_evaluate_argv(inputs, blocker), capsys)
  _assert_refused(code, stderr, "exists and is not a folder")
  assert blocker.read_text() == "not a folder"
  # An input inside --out: replacing the folder would delete it.
  out = tmp_path / "out"
  out.mkdir()
  shutil.copy(inputs["pred"], out / "pred.h5ad")  # a demo output holds pred.h5ad
  (out / "report.json").write_text('{"twinbench_version": "0.1.0"}')
  before = _snapshot(out)
  argv = _evaluate_argv(inputs, out)
  argv[argv.index("--pred") + 1] = str(out / "pred.h5ad")
  code, _, stderr = _run(argv, capsys)
  _assert_refused(code, stderr, "holds the input file --pred")
  assert _snapshot(out) == before


# ----------------------------------------------------------------------------- replacement


def test_rerun_replaces_a_previous_output_fully(inputs, tmp_path, capsys):
  out = tmp_path / "out"
  old = _old_set(inputs, out)
  code, _, stderr = _run(_evaluate_argv(inputs, out, "--name", "new model"), capsys)
  assert code == 0, stderr
  new = _snapshot(out)
  assert sorted(new) == sorted([MANIFEST, *REPORT_SET])
  assert json.loads(new["report.json"])["settings"]["name"] == "new model"
  assert new["report.json"] != old["report.json"]
  assert json.loads(new[MANIFEST])["files"] == {n: len(new[n]) for n in REPORT_SET}
  assert _leftovers(tmp_path) == []


def test_rerun_over_a_report_written_before_the_manifest(inputs, tmp_path, capsys):
  """Only twinbench's names, plain files, a twinbench report.json: ours, replaced fully."""
  out = tmp_path / "out"
  _old_set(inputs, out)
  (out / MANIFEST).unlink()
  (out / "real.h5ad").write_bytes(b"old demo data")  # an old demo output's name: also ours
  code, _, stderr = _run(_evaluate_argv(inputs, out, "--name", "new model"), capsys)
  assert code == 0, stderr
  assert sorted(os.listdir(out)) == sorted([MANIFEST, *REPORT_SET])
  assert json.loads((out / "report.json").read_text())["settings"]["name"] == "new model"
  assert _leftovers(tmp_path) == []


def test_symlinked_out_replaces_its_target_and_keeps_the_link(inputs, tmp_path, capsys):
  target = tmp_path / "target"
  _old_set(inputs, target)
  link = tmp_path / "link"
  link.symlink_to(target, target_is_directory=True)
  code, _, stderr = _run(_evaluate_argv(inputs, link, "--name", "via link"), capsys)
  assert code == 0, stderr
  assert link.is_symlink() and os.readlink(link) == str(target)
  assert json.loads((target / "report.json").read_text())["settings"]["name"] == "via link"
  assert _leftovers(tmp_path) == []


def test_failed_swap_keeps_the_complete_old_set(inputs, tmp_path, capsys, monkeypatch):
  out = tmp_path / "out"
  old = _old_set(inputs, out)

  def fail(a, b):
    raise OSError(f"cannot replace {b!r}: Operation not permitted; nothing was changed")

  monkeypatch.setattr(output_dir, "_exchange", fail)
  code, _, stderr = _run(_evaluate_argv(inputs, out, "--name", "new"), capsys)
  _assert_refused(code, stderr, "cannot replace", str(out))
  assert _snapshot(out) == old
  assert _leftovers(tmp_path) == []


def test_two_rename_fallback_restores_the_old_set_when_the_second_rename_fails(
    inputs, tmp_path, capsys, monkeypatch):
  out = tmp_path / "out"
  old = _old_set(inputs, out)
  monkeypatch.setattr(output_dir, "_exchange", lambda a, b: False)
  rename = os.rename
  calls = []

  def rename_failing_second(src, dst):
    calls.append((src, dst))
    if len(calls) == 2:
      raise PermissionError(f"simulated failure moving {src!r}")
    return rename(src, dst)

  monkeypatch.setattr(os, "rename", rename_failing_second)
  code, _, stderr = _run(_evaluate_argv(inputs, out, "--name", "new"), capsys)
  _assert_refused(code, stderr, "simulated failure")
  assert len(calls) == 3 and calls[2] == calls[0][::-1]  # moved aside, failed, moved back
  assert _snapshot(out) == old
  assert _leftovers(tmp_path) == []
  monkeypatch.setattr(os, "rename", rename)  # and without the failure, the fallback works
  code, _, stderr = _run(_evaluate_argv(inputs, out, "--name", "new"), capsys)
  assert code == 0, stderr
  assert json.loads((out / "report.json").read_text())["settings"]["name"] == "new"
  assert _leftovers(tmp_path) == []


def test_foreign_file_appearing_during_the_run_blocks_the_swap(inputs, tmp_path, capsys,
                                                               monkeypatch):
  out = tmp_path / "out"
  _old_set(inputs, out)
  save_plots = plots_lib.save_plots

  def save_and_intrude(report, directory, **kw):
    (out / "late.txt").write_text("written by the user meanwhile")
    return save_plots(report, directory, **kw)

  monkeypatch.setattr(plots_lib, "save_plots", save_and_intrude)
  code, _, stderr = _run(_evaluate_argv(inputs, out, "--name", "new"), capsys)
  _assert_refused(code, stderr, "--out", "'late.txt'")
  before = _snapshot(inputs["template"])
  after = _snapshot(out)
  assert after.pop("late.txt") == b"written by the user meanwhile"
  assert after == before
  assert _leftovers(tmp_path) == []


def test_file_appearing_after_the_last_check_is_kept_not_deleted(inputs, tmp_path, capsys,
                                                                 monkeypatch):
  out = tmp_path / "out"
  _old_set(inputs, out)
  swap = output_dir._swap

  def intrude_then_swap(staging, real):  # after the last check, just before the swap
    (out / "late.txt").write_text("keep me")
    return swap(staging, real)

  monkeypatch.setattr(output_dir, "_swap", intrude_then_swap)
  code, _, stderr = _run(_evaluate_argv(inputs, out, "--name", "new"), capsys)
  assert code == 0, stderr
  assert sorted(os.listdir(out)) == sorted([MANIFEST, *REPORT_SET])
  kept = _leftovers(tmp_path)
  assert len(kept) == 1 and _snapshot(tmp_path / kept[0]) == {"late.txt": b"keep me"}
  warnings_only = "".join(line for line in stderr.splitlines(keepends=True)
                          if not line.startswith("note: "))  # the report's notes go to stderr too
  assert warnings_only == (
      "twinbench evaluate: warning: the new output is complete, but the previous one was kept "
      f"in {str(tmp_path / kept[0])!r} (it holds files twinbench did not write)\n")
  # From Python: an `OutputDirWarning`.
  import twinbench_jax as tb

  shutil.rmtree(tmp_path / kept[0])
  with pytest.warns(output_dir.OutputDirWarning, match="previous one was kept in"):
    tb.evaluate(inputs["pred"], inputs["real"], baselines=()).save(out)
  assert [_snapshot(tmp_path / k) for k in _leftovers(tmp_path)] == [{"late.txt": b"keep me"}]


# ----------------------------------------------------------------------------- immutable files


@pytest.fixture
def immutable():
  """Sets the immutable flag with chattr (skips where unavailable); always clears it."""
  marked = []

  def mark(path: Path):
    if shutil.which("chattr") is None:
      pytest.skip("chattr not available")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
      pytest.skip("chattr +i not supported here")
    marked.append(path)
    try:
      os.utime(path)  # an immutable inode refuses even root
    except PermissionError:
      return
    pytest.skip("chattr +i has no effect here")

  yield mark
  for p in marked:
    subprocess.run(["chattr", "-i", str(p)], capture_output=True)


@pytest.mark.parametrize("what", ["report.json", "DIR"])
def test_immutable_old_file_or_folder_refused_before_any_change(inputs, tmp_path, capsys,
                                                                immutable, what):
  out = tmp_path / "out"
  old = _old_set(inputs, out)
  immutable(out if what == "DIR" else out / what)
  code, _, stderr = _run(_evaluate_argv(inputs, out, "--name", "new"), capsys)
  _assert_refused(code, stderr, "--out", "'report.json' is immutable" if what != "DIR" else
                  f"the folder {str(out)!r} is read-only or immutable")
  assert _snapshot(out) == old
  assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- interrupts


def test_ctrl_c_during_plotting_exits_130_and_leaves_nothing(inputs, tmp_path, capsys,
                                                             monkeypatch):
  out = tmp_path / "out"
  old = _old_set(inputs, out)

  def interrupt(report, directory, **kw):
    raise KeyboardInterrupt

  monkeypatch.setattr(plots_lib, "save_plots", interrupt)
  code, _, stderr = _run(_evaluate_argv(inputs, out, "--name", "new"), capsys)
  assert code == 130
  assert stderr.strip() == ("twinbench evaluate: interrupted by SIGINT; --out left as it was")
  assert _snapshot(out) == old
  assert _leftovers(tmp_path) == []
  # A new nested folder: the parents made for it are removed too.
  code, _, stderr = _run(_evaluate_argv(inputs, tmp_path / "a" / "b" / "new"), capsys)
  assert code == 130 and not (tmp_path / "a").exists()
  assert _leftovers(tmp_path) == []


def test_swallowed_interrupt_still_exits_130_without_traceback(inputs, tmp_path, capsys,
                                                               monkeypatch):
  """SIGINT raised inside a finaliser is 'ignored' by Python: the run must not commit anyway."""
  out = tmp_path / "out"
  old = _old_set(inputs, out)
  save_plots = plots_lib.save_plots
  handler_before = signal.getsignal(signal.SIGINT)

  class SignalsOnCollect:
    def __del__(self):
      signal.raise_signal(signal.SIGINT)

  def save_with_interrupt_in_finaliser(report, directory, **kw):
    SignalsOnCollect()  # collected at once; its exception cannot propagate
    return save_plots(report, directory, **kw)

  monkeypatch.setattr(plots_lib, "save_plots", save_with_interrupt_in_finaliser)
  code, _, stderr = _run(_evaluate_argv(inputs, out, "--name", "new"), capsys)
  assert code == 130, stderr
  assert "Traceback" not in stderr and "ignored" not in stderr
  assert _snapshot(out) == old
  assert _leftovers(tmp_path) == []
  assert signal.getsignal(signal.SIGINT) is handler_before  # restored, whatever it was


_CHILD = textwrap.dedent("""
    import pathlib, sys, time
    from twinbench_jax import cli

    write_h5ad, ready = cli._write_h5ad, pathlib.Path(sys.argv[1])

    def write_then_stall(path, *args, **kw):  # the demo has started writing its files
      write_h5ad(path, *args, **kw)
      ready.write_text("writing")
      time.sleep(300)

    cli._write_h5ad = write_then_stall
    sys.argv = ["twinbench", *sys.argv[2:]]
    sys.exit(cli.main())  # as the installed command: argv None
""")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_a_running_demo_leaves_the_old_set_and_nothing_else(tmp_path, signum, code):
  out = tmp_path / "demo"
  out.mkdir()
  (out / "report.json").write_text('{"twinbench_version": "0.1.0"}')  # an old output
  old = _snapshot(out)
  ready = tmp_path / "ready"
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  child = subprocess.Popen(
      [sys.executable, "-c", _CHILD, str(ready), "demo", "--out", str(out), "--n-perturbations",
       "4", "--n-genes", "12"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  try:
    while not ready.exists() and child.poll() is None:
      time.sleep(0.05)
    assert child.poll() is None, child.communicate()
    assert len(_leftovers(tmp_path)) == 1  # the staging folder, with the demo's files
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=120)
  finally:
    if child.poll() is None:
      child.kill()
  assert child.returncode == code, stderr
  assert stderr.strip().splitlines()[-1] == (
      f"twinbench demo: interrupted by {signal.Signals(signum).name}; --out left as it was")
  assert "Traceback" not in stderr
  assert _snapshot(out) == old
  assert sorted(os.listdir(tmp_path)) == ["demo", "ready"]


# ----------------------------------------------------------------------------- arguments, API


@pytest.mark.parametrize("command", ["evaluate", "demo"])
@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_out_of_range_names_the_option(inputs, tmp_path, capsys, command, seed):
  out = tmp_path / "out"
  argv = (_evaluate_argv(inputs, out) if command == "evaluate" else ["demo", "--out", out])
  code, _, stderr = _run([*argv, "--seed", seed], capsys)
  _assert_refused(code, stderr, f"--seed must be an integer in [0, 4294967295], got {seed}")
  assert os.listdir(tmp_path) == []


def test_demo_too_few_genes_names_the_option(tmp_path, capsys):
  code, _, stderr = _run(["demo", "--out", tmp_path / "d", "--n-genes", "5"], capsys)
  _assert_refused(code, stderr, "--n-genes must be >= 10", "got 5")
  assert os.listdir(tmp_path) == []


def test_report_save_refuses_and_replaces_like_the_cli(inputs, tmp_path, monkeypatch):
  import twinbench_jax as tb

  report = tb.evaluate(inputs["pred"], inputs["real"], baselines=())
  out = tmp_path / "saved"
  paths = report.save(out)
  assert sorted(os.path.basename(p) for p in paths) == REPORT_SET
  assert sorted(os.listdir(out)) == sorted([MANIFEST, *REPORT_SET])
  (out / "notes.txt").write_text("mine")
  before = _snapshot(out)
  with pytest.raises(output_dir.OutputDirError, match="'notes.txt'"):
    report.save(out)
  assert _snapshot(out) == before
  (out / "notes.txt").unlink()
  report.save(out, plots=False)  # a previous output: replaced as a whole
  assert sorted(os.listdir(out)) == sorted([MANIFEST, "per_perturbation.csv", "report.json"])
  monkeypatch.chdir(out)
  with pytest.raises(ValueError, match="current folder"):
    report.save(".")
  assert _leftovers(tmp_path) == []


def test_subfolder_saved_again_stays_ours(inputs, tmp_path):
  """The demo's `good/` replaced on its own: its manifest answers for it; a user file does not."""
  import twinbench_jax as tb

  report = tb.evaluate(inputs["pred"], inputs["real"], baselines=())
  top = tmp_path / "demo"
  with output_dir.staged(top) as tmp:
    (Path(tmp) / "real.h5ad").write_bytes(b"demo data")
    report.save(Path(tmp) / "good")
  assert sorted(json.loads((top / MANIFEST).read_text())["files"]) == sorted(
      ["real.h5ad", f"good/{MANIFEST}", *(f"good/{n}" for n in REPORT_SET)])
  report.save(top / "good", plots=False)  # sizes and files now differ from the top manifest
  (top / "good" / "notes.txt").write_text("mine")
  before = _snapshot(top)
  with pytest.raises(output_dir.OutputDirError, match="'good/notes.txt'"):
    report.save(top)
  assert _snapshot(top) == before
  (top / "good" / "notes.txt").unlink()
  report.save(top, plots=False)
  assert sorted(os.listdir(top)) == sorted([MANIFEST, "per_perturbation.csv", "report.json"])
  assert _leftovers(tmp_path) == []

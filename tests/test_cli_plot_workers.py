"""`twinbench evaluate`'s plots drawn by forked workers (`plot_process`).

Each case runs the command as installed (`cli.main()` reading `sys.argv`, in
a process of its own: the workers are forked only there), with the plot
functions patched in the child script where a failure or a stall is needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from adata_helpers import good_pred, make_real
from twinbench_jax import cli
from twinbench_jax._src.evaluate import plot_process
from twinbench_jax._src.evaluate import plots as plots_lib

REPO = Path(__file__).resolve().parents[1]
PNGS = sorted(plots_lib.PLOT_FILES.values())

# The command as installed, after an optional patch (argv[1]: Python code, may be empty).
_CHILD = textwrap.dedent("""
    import sys
    from twinbench_jax import cli
    from twinbench_jax._src.evaluate import plot_process, plots
    exec(sys.argv[1])
    sys.argv = ["twinbench", *sys.argv[2:]]
    cli.main()
""")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  d = tmp_path_factory.mktemp("plot_workers")
  real, means = make_real(n_perturbations=5, n_cells=6, n_control=8, n_genes=12)
  real.uns["perturbation_key"] = "perturbation"
  real.uns["control_label"] = "control"
  paths = d / "real.h5ad", d / "pred.h5ad"
  real.write_h5ad(paths[0])
  good_pred(real, means).write_h5ad(paths[1])
  return paths


def _argv(inputs, out, *extra):
  real, pred = inputs
  return ["evaluate", "--pred", str(pred), "--real", str(real), "--out", str(out), "--quiet",
          "--metric", "l1", *extra]


def _env(**update):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop(cli.PLOT_WORKERS_ENV, None)
  env.update(update)
  return env


def _popen(patch, argv, cwd, **env):
  return subprocess.Popen([sys.executable, "-c", _CHILD, patch, *map(str, argv)], cwd=cwd,
                          env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True)


def _run(patch, argv, cwd, **env):
  child = _popen(patch, argv, cwd, **env)
  out, err = child.communicate(timeout=600)
  return child.returncode, out, err


def _gone(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  return False


@pytest.mark.slow  # processes of their own
def test_workers_write_the_same_report_and_plots_as_the_process_itself(inputs, tmp_path):
  code, _, err = _run("", _argv(inputs, tmp_path / "workers"), tmp_path)
  assert code == 0, err
  code, _, err = _run("", _argv(inputs, tmp_path / "inline"), tmp_path,
                      **{cli.PLOT_WORKERS_ENV: "0"})
  assert code == 0, err
  a, b = tmp_path / "workers", tmp_path / "inline"
  manifest = json.loads((a / ".twinbench-manifest.json").read_text())
  assert sorted(manifest["files"]) == sorted(["report.json", "per_perturbation.csv", *PNGS])
  for name in ["per_perturbation.csv", *PNGS]:  # Agg's pixels and PNG bytes are deterministic
    assert (a / name).read_bytes() == (b / name).read_bytes(), name
  ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
  ra.pop("settings"), rb.pop("settings")  # hold the output path
  assert ra == rb
  assert sorted(os.listdir(tmp_path)) == ["inline", "workers"]


_FAIL_IN_WORKER = """
draw = plots.save_plots
def save_plots(report, directory, **kw):
  if "popularity" in kw.get("only", ()):
    raise RuntimeError("no room for the bars")
  return draw(report, directory, **kw)
plots.save_plots = save_plots
"""

_WORKER_DIES = """
draw = plots.save_plots
def save_plots(report, directory, **kw):
  if "f1_alpha" in kw.get("only", ()):
    open(directory + "/f1_alpha.png", "w").write("half")
    import os; os._exit(9)
  return draw(report, directory, **kw)
plots.save_plots = save_plots
"""


@pytest.mark.slow
@pytest.mark.parametrize("patch, why", [
    (_FAIL_IN_WORKER, "plots: the process drawing popularity, pvalue_histogram failed: "
     "RuntimeError: no room for the bars"),
    (_WORKER_DIES, "plots: the process drawing f1_alpha, rank_histogram failed: it ended "
     "without drawing them"),
])
def test_a_failed_worker_fails_the_command_and_leaves_the_old_set(inputs, tmp_path, patch, why):
  out = tmp_path / "out"
  code, _, err = _run("", _argv(inputs, out, "--name", "old"), tmp_path)
  assert code == 0, err
  old = {p: p.read_bytes() for p in out.iterdir()}
  code, _, err = _run(patch, _argv(inputs, out, "--name", "new"), tmp_path)
  assert code == 2
  assert err.strip().splitlines()[-1] == f"twinbench evaluate: error: {why}"
  assert "Traceback" not in err
  assert {p: p.read_bytes() for p in out.iterdir()} == old
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging folder, no half-written PNG


_STALL = """
import os, time
def save_plots(report, directory, **kw):
  open(os.environ["READY"] + str(os.getpid()), "w").close()
  time.sleep(300)
plots.save_plots = save_plots
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, group", [(signal.SIGINT, 130, True),
                                                 (signal.SIGTERM, 143, False)])
def test_signal_while_workers_draw_ends_them_and_leaves_nothing(inputs, tmp_path, signum, code,
                                                                group):
  """Ctrl-C reaches the whole process group; SIGTERM only the command."""
  ready = tmp_path / "ready"
  ready.mkdir()
  child = _popen(_STALL, _argv(inputs, tmp_path / "out"), tmp_path, READY=f"{ready}/")
  try:
    deadline = time.monotonic() + 300
    while len(os.listdir(ready)) < 2 and child.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    assert child.poll() is None, child.communicate()
    workers = [int(name) for name in os.listdir(ready)]
    assert len(workers) == 2
    if group:
      os.killpg(child.pid, signum)
    else:
      child.send_signal(signum)
    _, err = child.communicate(timeout=120)
  finally:
    if child.poll() is None:
      os.killpg(child.pid, signal.SIGKILL)
  assert child.returncode == code, err
  assert err.strip().splitlines()[-1] == (
      f"twinbench evaluate: interrupted by {signal.Signals(signum).name}; --out left as it was")
  assert "Traceback" not in err
  assert all(_gone(pid) for pid in workers)  # killed and reaped by the command
  assert sorted(os.listdir(tmp_path)) == ["ready"]


def _leaves(x):
  if isinstance(x, dict):
    return [v for item in x.values() for v in _leaves(item)]
  if isinstance(x, (list, tuple)):
    return [v for item in x for v in _leaves(item)]
  if hasattr(x, "__dict__") and not hasattr(x, "columns"):
    return _leaves(vars(x))
  return [x]


def test_plot_data_holds_what_the_plots_read_without_jax(inputs, tmp_path):
  """The workers get numpy arrays and plain tables (pickled), never JAX arrays."""
  import pickle

  import numpy as np
  import twinbench_jax as tb

  real, pred = inputs
  report = tb.evaluate(str(pred), str(real), metric="l1", progress=False)
  plain = plot_process.plot_data(report)
  assert plain.summary == report.summary
  data = pickle.loads(pickle.dumps(plain))
  assert not [type(v) for v in _leaves(data) if type(v).__module__.startswith("jax")]
  for name, curve in report.curves.items():
    np.testing.assert_array_equal(data.curves[name].alphas, np.asarray(curve.alphas))
    np.testing.assert_array_equal(data.curves[name].f1, np.asarray(curve.f1))
    assert data.curves[name].auc == float(curve.auc)
  assert data.summary["settings"] == report.summary["settings"]
  np.testing.assert_array_equal(data.per_perturbation["rank"], report.per_perturbation["rank"])
  assert data.popularity.equals(report.popularity)


def test_save_plots_only_draws_the_named_plots_and_refuses_unknown_names(inputs, tmp_path):
  import twinbench_jax as tb

  real, pred = inputs
  report = tb.evaluate(str(pred), str(real), metric="l1", progress=False)
  paths = plots_lib.save_plots(report, tmp_path, only=("popularity",))
  assert [os.path.basename(p) for p in paths] == ["popularity.png"]
  assert os.listdir(tmp_path) == ["popularity.png"]
  with pytest.raises(ValueError, match=r"only: unknown plots \['nope'\]"):
    plots_lib.save_plots(report, tmp_path, only=("nope",))

"""The command line's persistent compilation cache, its opt-outs, and its fast exit.

The command runs in subprocesses (`python -m twinbench_jax`): the cache is
set up only in a process of its own, never by `main(argv)` in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from adata_helpers import good_pred, make_real
from twinbench_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  d = tmp_path_factory.mktemp("cache_inputs")
  real, means = make_real()
  pred = good_pred(real, means)
  paths = d / "pred.h5ad", d / "real.h5ad"
  pred.write_h5ad(paths[0])
  real.write_h5ad(paths[1])
  return paths


def _twinbench(args, env_update, tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in (cli.CACHE_ENV, "XDG_CACHE_HOME")}
  env.update(HOME=str(tmp_path / "home"), PYTHONPATH=REPO, **env_update)
  res = subprocess.run([sys.executable, "-m", "twinbench_jax", *map(str, args)], env=env,
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert res.returncode == 0, res.stderr
  return res


def _evaluate(pair, out, env_update, tmp_path, *extra):
  pred, real = pair
  _twinbench(["evaluate", "--pred", pred, "--real", real, "--out", out, "--metric", "l1",
              "--quiet", "--no-plots", *extra], env_update, tmp_path)
  with open(out / "report.json") as f:
    return json.load(f)


def _files(folder):
  return sorted(os.path.relpath(os.path.join(d, n), folder)
                for d, _, names in os.walk(folder) for n in names)


@pytest.mark.slow  # processes of their own
def test_reports_identical_with_and_without_the_cache(pair, tmp_path):
  cache = tmp_path / "jax_cache"
  env = {cli.CACHE_ENV: str(cache)}
  first = _evaluate(pair, tmp_path / "a", env, tmp_path)  # compiles, fills the cache
  assert _files(cache), "the first run wrote nothing to the cache"
  entries = _files(cache)
  second = _evaluate(pair, tmp_path / "b", env, tmp_path)  # reads the compiled kernels
  assert _files(cache) == entries  # nothing new to compile
  off = _evaluate(pair, tmp_path / "c", {cli.CACHE_ENV: "0"}, tmp_path)
  assert first == second == off
  assert not (tmp_path / "home" / ".cache" / "twinbench_jax").exists()


@pytest.mark.slow  # processes of their own
def test_opt_outs_write_nothing(pair, tmp_path):
  xdg = tmp_path / "xdg"
  _evaluate(pair, tmp_path / "a", {"XDG_CACHE_HOME": str(xdg), cli.CACHE_ENV: "off"}, tmp_path)
  cache = tmp_path / "jax_cache"
  _evaluate(pair, tmp_path / "b", {"XDG_CACHE_HOME": str(xdg), cli.CACHE_ENV: str(cache)},
            tmp_path, "--no-cache")
  assert not xdg.exists() and not cache.exists()
  assert not (tmp_path / "home" / ".cache").exists()
  # The default folder, under XDG_CACHE_HOME.
  _evaluate(pair, tmp_path / "c", {"XDG_CACHE_HOME": str(xdg)}, tmp_path)
  assert _files(xdg / "twinbench_jax" / "jax")


def test_in_process_main_leaves_jax_settings_alone(pair, tmp_path, capsys):
  import jax

  pred, real = pair
  before = jax.config.jax_compilation_cache_dir
  assert cli.main(["evaluate", "--pred", str(pred), "--real", str(real), "--out",
                   str(tmp_path / "out"), "--quiet", "--no-plots"]) == 0
  assert jax.config.jax_compilation_cache_dir == before
  assert sorted(os.listdir(tmp_path / "out")) == [".twinbench-manifest.json",
                                                  "per_perturbation.csv", "report.json"]


@pytest.mark.parametrize("env, no_cache, want", [
    ({}, False, ("home", ".cache", "twinbench_jax", "jax")),
    ({"XDG_CACHE_HOME": "XDG"}, False, ("XDG", "twinbench_jax", "jax")),
    ({cli.CACHE_ENV: "DIR"}, False, ("DIR",)),
    ({cli.CACHE_ENV: "1"}, False, ("home", ".cache", "twinbench_jax", "jax")),
    ({cli.CACHE_ENV: " Off "}, False, None),
    ({cli.CACHE_ENV: "0", "XDG_CACHE_HOME": "XDG"}, False, None),
    ({cli.CACHE_ENV: "DIR"}, True, None),
    ({}, True, None),
])
def test_cache_folder(monkeypatch, tmp_path, env, no_cache, want):
  monkeypatch.delenv(cli.CACHE_ENV, raising=False)
  monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  for k, v in env.items():
    monkeypatch.setenv(k, v if v.strip().lower() in ("0", "1", "off") else str(tmp_path / v))
  got = cli.compilation_cache_dir(no_cache)
  assert got == (None if want is None else os.path.join(tmp_path, *want))


@pytest.mark.slow  # processes of their own
def test_exit_flushes_output_and_keeps_the_exit_code(tmp_path):
  # `main()` ends the process with os._exit: the summary must still reach a pipe, and a
  # usage error must still exit 2.
  env = {cli.CACHE_ENV: "0"}
  res = _twinbench(["demo", "--out", tmp_path / "demo", "--n-perturbations", "4", "--n-genes",
                    "10"], env, tmp_path)
  assert "collapsed (mean response)" in res.stdout and "the same from the shell" in res.stdout
  assert (tmp_path / "demo" / "good" / "report.json").is_file()
  bad = subprocess.run([sys.executable, "-m", "twinbench_jax", "evaluate", "--pred", "nope.h5ad",
                        "--real", "nope.h5ad", "--out", str(tmp_path / "x")],
                       env={**os.environ, "PYTHONPATH": REPO, **env}, capture_output=True,
                       text=True, timeout=600, cwd=tmp_path)
  assert bad.returncode == 2
  assert bad.stderr.strip() == "twinbench evaluate: error: --pred: file not found: 'nope.h5ad'"


@pytest.mark.slow  # a process of its own
def test_collector_off_only_in_a_process_of_its_own(pair, tmp_path, capsys):
  # The command (`main()` reading sys.argv) turns automatic collection off for its short
  # life; `main(argv)` from Python leaves the caller's collector on. Same report either way.
  import gc

  pred, real = pair
  flags = ["evaluate", "--pred", str(pred), "--real", str(real), "--quiet", "--no-plots",
           "--metric", "l1"]
  code = ("import gc, sys; from twinbench_jax import cli; "
          "cli._exit_now = lambda code: print(gc.isenabled(), code); "
          f"sys.argv = ['twinbench', *{flags!r}, '--out', sys.argv[1]]; cli.main()")
  res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "own")], cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": REPO, cli.CACHE_ENV: "0"},
                       capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr
  assert res.stdout.strip() == "False 0"
  assert gc.isenabled()
  assert cli.main([*flags, "--out", str(tmp_path / "in")]) == 0
  assert gc.isenabled()
  reports = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("own", "in")]
  for r in reports:
    r.pop("settings")  # holds the output path
  assert reports[0] == reports[1]


def test_small_pseudobulk_leaves_numba_unloaded(tmp_path):
  # Per-group sums of small data stay with scipy (same sums, bit for bit: tests/test_native.py):
  # importing numba would cost more than the loop saves.
  code = ("import sys, twinbench_jax as tb; from adata_helpers import make_real; "
          "tb.pseudobulk(make_real()[0]); print('numba' in sys.modules)")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(
                           [REPO, os.path.join(REPO, "tests")])})
  assert res.returncode == 0, res.stderr
  assert res.stdout.strip() == "False"


def test_h5ad_elements_read_without_anndata_match_anndata(tmp_path):
  # `profiles._read_elem` reads the plain encodings with h5py alone (importing anndata.io
  # costs every command 0.5 s) and hands every other encoding to anndata.
  import anndata
  import h5py
  import numpy as np
  import pandas as pd
  from anndata.io import read_elem

  from twinbench_jax._src.data import profiles

  n = 7
  obs = pd.DataFrame({
      "label": pd.Categorical(["a", "b", None, "a", "c", "b", "a"]),
      "ordered": pd.Categorical([3, 1, 2, 3, 1, 2, 2], ordered=True),
      "text": [f"cell{i}é" for i in range(n)],
      "count": np.arange(n, dtype=np.int32),
      "value": np.linspace(0, 1, n),
      "flag": np.arange(n) % 2 == 0,
      "nullable": pd.array([1, None, 3, 4, 5, 6, 7], dtype="Int64"),
  }, index=[f"obs{i}" for i in range(n)])
  adata = anndata.AnnData(np.zeros((n, 3), np.float32), obs=obs,
                          var=pd.DataFrame(index=["g1", "g2", "g3"]))
  adata.uns["perturbation_key"] = "label"
  adata.uns["count"] = 5
  path = tmp_path / "a.h5ad"
  adata.write_h5ad(path)
  with h5py.File(path) as f:
    names = [f"obs/{k}" for k in (*obs.columns, "_index")] + ["var/_index", "uns/perturbation_key",
                                                               "uns/count"]
    for name in names:
      want, got = read_elem(f[name]), profiles._read_elem(f[name])
      assert type(got) is type(want), name
      if isinstance(want, pd.Categorical):
        assert got.equals(want) and got.ordered == want.ordered, name
        pd.testing.assert_index_equal(got.categories, want.categories)
      elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want)
      elif isinstance(want, pd.api.extensions.ExtensionArray):  # nullable: anndata's reader
        pd.testing.assert_extension_array_equal(got, want)
      else:
        assert got == want, name

"""Every tutorial in `notebooks/` runs top to bottom without an error, outputs stripped.

Each notebook is executed in a fresh kernel of *this* interpreter (so it uses
the installed package and the test environment), with the notebooks folder as
its working directory, as a user opening it from a checkout would. A cell that
raises fails the test and the message names the cell. Notebooks that read the
real data are skipped when `../shared/data` (or `$TWINBENCH_DATA`) is absent.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
# Notebooks that read `shared/data` (the others make their own data).
NEEDS_DATA = {"01_quickstart.ipynb"}
# Seconds one cell may take before the run is failed (the whole notebook takes about a minute).
CELL_TIMEOUT = 600


def test_the_tutorials_are_there():
  names = {p.name for p in NOTEBOOKS}
  assert {"01_quickstart.ipynb", "02_mode_collapse.ipynb", "03_auxiliary_loss.ipynb"} <= names


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  """`JUPYTER_PATH` with a `python3` kernel spec that runs this interpreter.

  Jupyter looks in `JUPYTER_PATH` before the user's and the system's kernel
  folders, so a `python3` kernel registered elsewhere (another Python, another
  environment) cannot take over the run.
  """
  root = tmp_path_factory.mktemp("jupyter")
  spec_dir = root / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": "Python 3 (tests)", "language": "python"}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  old = os.environ.get("JUPYTER_PATH")
  os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root)] + ([old] if old else []))
  yield
  if old is None:
    os.environ.pop("JUPYTER_PATH", None)
  else:
    os.environ["JUPYTER_PATH"] = old


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, kernel_env, request):
  if path.name in NEEDS_DATA:
    request.getfixturevalue("data_dir")  # skips when the real data folder is absent
  nb = nbformat.read(path, as_version=4)
  stale = [i for i, c in enumerate(nb.cells)
           if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
  assert not stale, (f"{path.name} is saved with outputs (code cells {stale}); clear all "
                     "outputs before saving, the repository keeps notebooks stripped")
  client = nbclient.NotebookClient(
      nb, kernel_name="python3", timeout=CELL_TIMEOUT,
      resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as exc:
    pytest.fail(f"{path.name}: a cell raised\n{exc}", pytrace=False)

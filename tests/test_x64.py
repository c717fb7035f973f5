"""`jax_enable_x64` on: the checks of `tests/x64_checks.py`, in a process of their own.

`jax.enable_x64` flips a global JAX setting back and forth; the checks run in a fresh
interpreter so that the rest of the suite's compiled programs never share a process with it.
"""

import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent


@pytest.mark.slow  # a process of its own
def test_every_entry_point_under_x64():
  res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(HERE / "x64_checks.py")], cwd=HERE.parent, capture_output=True,
                       text=True, timeout=1200)
  assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
  assert " passed" in res.stdout and "failed" not in res.stdout, res.stdout[-3000:]

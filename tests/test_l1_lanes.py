"""numpy's copy of the compiled L1 loop's order (`core/l1_lanes.py`) and `native.host_l1`.

The order is checked against a plain scalar loop written from the module's
description; `host_l1`'s choice between the loop and its numpy twin, and the
record of the check behind it, run in processes of their own (numba must
not be imported yet for the twin to be taken).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinbench_jax._src.core import l1_lanes
from twinbench_jax._src.core import native

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scalar_order(a, b, main, tail):
  """One distance, one IEEE operation at a time, in the order the module describes."""
  t = a.dtype.type
  n = a.shape[0]
  lanes = [t(0)] * main
  n_main = n // main
  for i in range(n_main):
    for l in range(main):
      lanes[l] = t(lanes[l] + abs(t(a[main * i + l] - b[main * i + l])))

  def fold(v):
    while len(v) > 1:
      h = len(v) // 2
      v = [t(v[j] + v[j + h]) for j in range(h)]
    return v[0]

  start = main * n_main
  rest = [fold(lanes)] + [t(0)] * (tail - 1)
  n_tail = (n - start) // tail
  for j in range(n_tail):
    for l in range(tail):
      g = start + tail * j + l
      rest[l] = t(rest[l] + abs(t(a[g] - b[g])))
  s = fold(rest)
  for g in range(start + tail * n_tail, n):
    s = t(s + abs(t(a[g] - b[g])))
  return s


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_genes", [0, 1, 3, 4, 5, 8, 15, 16, 17, 20, 31, 32, 35, 47, 100, 299])
def test_order_is_the_one_described(dtype, n_genes):
  rng = np.random.default_rng(n_genes)
  x = (rng.standard_normal((3, n_genes)) * rng.exponential(1.0, (3, n_genes))).astype(dtype)
  y = rng.standard_normal((4, n_genes)).astype(dtype)
  d = l1_lanes.l1_distances(x, y)
  main, tail = l1_lanes.LANES[np.dtype(dtype)]
  want = np.array([[_scalar_order(a, b, main, tail) for b in y] for a in x], dtype)
  assert d.dtype == dtype
  np.testing.assert_array_equal(d, want)


def test_the_order_matters():
  # The same terms summed one by one round differently: the test above can tell orders apart.
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((20, 299)) * 100).astype(np.float32)
  y = rng.standard_normal((20, 299)).astype(np.float32)
  d = l1_lanes.l1_distances(x, y)
  def one_by_one(a, b):
    return np.add.accumulate(np.abs(a[:, None] - b[None]), axis=-1, dtype=a.dtype)[..., -1]

  assert not np.array_equal(d, one_by_one(x, y))
  assert not l1_lanes.matches(lambda a, b: one_by_one(a, b) if a.shape[1] else
                              l1_lanes.l1_distances(a, b), np.float32)
  assert l1_lanes.matches(l1_lanes.l1_distances, np.float32)


@settings(max_examples=40, deadline=None)
@given(q=st.integers(0, 6), c=st.integers(0, 6), g=st.integers(0, 80),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_close_to_the_exact_sum(q, c, g, dtype, seed):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((q, g)).astype(dtype)
  y = rng.standard_normal((c, g)).astype(dtype)
  d = l1_lanes.l1_distances(x, y)
  exact = np.abs(x[:, None, :].astype(np.float64) - y[None].astype(np.float64)).sum(-1)
  assert d.shape == (q, c) and d.dtype == dtype
  np.testing.assert_allclose(d, exact, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_blocks_of_queries_change_nothing(monkeypatch):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((37, 45)).astype(np.float32)
  y = rng.standard_normal((11, 45)).astype(np.float32)
  whole = l1_lanes.l1_distances(x, y)
  monkeypatch.setattr(l1_lanes, "BLOCK_TERMS", 500)  # one query at a time
  np.testing.assert_array_equal(l1_lanes.l1_distances(x, y), whole)


def test_nan_and_inf_propagate():
  x = np.array([[1.0, np.nan, 2.0], [np.inf, 0.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
  y = np.zeros((1, 3), np.float32)
  d = l1_lanes.l1_distances(x, y)
  assert np.isnan(d[0, 0]) and d[1, 0] == np.inf and d[2, 0] == 3.0


def test_bad_input_is_named():
  with pytest.raises(TypeError, match="float32 and float64"):
    l1_lanes.l1_distances(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float64))
  with pytest.raises(TypeError, match="int64"):
    l1_lanes.l1_distances(np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64))
  with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
    l1_lanes.l1_distances(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))


# ----------------------------------------------------------------------------- host_l1

_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    from twinbench_jax._src.core import native
    native.keep_checks_in(sys.argv[1] if sys.argv[1] != "-" else None)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((25, 299)).astype(sys.argv[2])
    y = rng.standard_normal((30, 299)).astype(sys.argv[2])
    d = native.host_l1(x, y)
    print(json.dumps(dict(numba="numba" in sys.modules,
                          d=None if d is None else d.view(f"u{d.itemsize}").tolist())))
""")


def _host_l1_process(checks, dtype="float32", **env):
  full = {**os.environ, "PYTHONPATH": REPO, **env}
  res = subprocess.run([sys.executable, "-c", _PROCESS, str(checks), dtype], env=full,
                       capture_output=True, text=True, timeout=300, check=True)
  return json.loads(res.stdout.strip().splitlines()[-1])


needs_numba = pytest.mark.skipif(not native.available(),
                                 reason="numba is not installed (or TWINBENCH_NUMBA=0)")


@needs_numba
@pytest.mark.slow  # processes of their own
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_host_l1_takes_the_twin_only_where_checked(tmp_path, dtype):
  checks = tmp_path / "checks"
  first = _host_l1_process(checks, dtype)  # the loop, and the check written
  assert first["numba"] and first["d"] is not None
  (record,) = os.listdir(checks)  # this dtype's only: the other is not compiled for it
  assert record.endswith(f"-{dtype}.json")
  with open(checks / record) as f:
    outcome = json.load(f)
  agrees = l1_lanes.matches(native.l1_distances, dtype)
  assert outcome == {"same": agrees}
  second = _host_l1_process(checks, dtype)
  assert second["numba"] is not agrees  # numba left out only where the check passed
  assert second["d"] == first["d"]  # bit for bit either way
  assert os.listdir(checks) == [record]


@needs_numba
@pytest.mark.slow  # processes of their own
def test_host_l1_keeps_the_loop_without_a_passed_check(tmp_path):
  checks = tmp_path / "checks"
  loop = _host_l1_process(checks)
  (record,) = os.listdir(checks)
  with open(checks / record, "w") as f:
    json.dump({"same": False}, f)
  assert _host_l1_process(checks)["numba"]  # a failed check: the loop
  with open(checks / record, "w") as f:
    f.write("{not json")
  assert _host_l1_process(checks)["numba"]  # an unreadable record: the loop
  no_folder = _host_l1_process("-")  # no folder: the loop, nothing written
  assert no_folder["numba"] and no_folder["d"] == loop["d"]
  off = _host_l1_process(checks, TWINBENCH_NUMBA="0")
  assert off["d"] is None and not off["numba"]
  # Another numba setting is another machine: a record of its own.
  _host_l1_process(checks, NUMBA_OPT="2")
  assert len(os.listdir(checks)) == 2


def test_host_l1_without_a_record_uses_the_loop(monkeypatch):
  monkeypatch.setattr(native, "_checks_dir", None)
  x = np.ones((2, 3), np.float32)
  d = native.host_l1(x, x)
  if native.available():
    np.testing.assert_array_equal(d, native.l1_distances(x, x))
  else:
    assert d is None

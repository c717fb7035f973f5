"""Kernels stored as XLA executables (`evaluate/executables.py`): same numbers, no tracing."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twinbench_jax._src.evaluate import executables
from twinbench_jax._src.evaluate import scoring

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACES = []


@functools.partial(jax.jit, static_argnames=("power",))
def _kernel(x, y, shift, *, power):
  TRACES.append(power)  # runs once per trace
  out = jnp.sum(jnp.abs(x[:, None, :] - y[None]) ** power, axis=-1)
  return out if shift is None else out + shift, jnp.argmax(out, axis=1)


@pytest.fixture
def store(tmp_path):
  folder = tmp_path / "executables"
  executables.keep_in(str(folder))
  yield folder
  executables.keep_in(None)


def _args(seed=0, n=5):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal((n, 7)), jnp.float32),
          jnp.asarray(rng.standard_normal((4, 7)), jnp.float32))


def _same(a, b):
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert u.dtype == v.dtype
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_off_by_default_calls_the_jit():
  executables.keep_in(None)
  x, y = _args()
  _same(executables.call(_kernel, "k", x, y, None, power=2), _kernel(x, y, None, power=2))


def test_stored_then_loaded_without_tracing(store):
  x, y = _args()
  want = _kernel(x, y, None, power=3)
  first = executables.call(_kernel, "k", x, y, None, power=3)
  _same(first, want)
  (entry,) = os.listdir(store)
  executables.keep_in(str(store))  # a new process: nothing in memory
  traces = len(TRACES)
  again = executables.call(_kernel, "k", x, y, None, power=3)
  assert len(TRACES) == traces  # loaded from the file, not traced
  _same(again, want)
  x2, y2 = _args(seed=1)  # other values, same shapes: the same executable
  _same(executables.call(_kernel, "k", x2, y2, None, power=3), _kernel(x2, y2, None, power=3))
  assert os.listdir(store) == [entry]


def test_each_program_has_its_own_entry(store):
  x, y = _args()
  executables.call(_kernel, "k", x, y, None, power=2)
  executables.call(_kernel, "k", x, y, None, power=3)  # another static argument
  executables.call(_kernel, "k", *_args(n=6), None, power=2)  # another shape
  executables.call(_kernel, "k", x, y, jnp.float32(1.0), power=2)  # an argument not None
  executables.call(_kernel, "other", x, y, None, power=2)  # another name
  assert len(os.listdir(store)) == 5
  _same(executables.call(_kernel, "k", x, y, jnp.float32(1.0), power=2),
        _kernel(x, y, jnp.float32(1.0), power=2))


def test_changed_source_is_a_new_key(store, monkeypatch):
  x, y = _args()
  executables.call(_kernel, "k", x, y, None, power=2)
  monkeypatch.setattr(executables, "_source_digest", lambda: "edited")
  executables.keep_in(str(store))
  executables.call(_kernel, "k", x, y, None, power=2)
  assert len(os.listdir(store)) == 2


def test_unreadable_entry_is_compiled_anew(store):
  x, y = _args()
  want = executables.call(_kernel, "k", x, y, None, power=2)
  (entry,) = os.listdir(store)
  (store / entry).write_bytes(b"torn")
  executables.keep_in(str(store))
  _same(executables.call(_kernel, "k", x, y, None, power=2), want)
  assert (store / entry).read_bytes() != b"torn"  # replaced by a good entry


def test_unwritable_folder_still_computes(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  executables.keep_in(str(blocker / "executables"))  # cannot be created
  try:
    x, y = _args()
    _same(executables.call(_kernel, "k", x, y, None, power=2), _kernel(x, y, None, power=2))
  finally:
    executables.keep_in(None)


def test_score_kernel_through_the_store(store):
  # The command line's kernel: stored, loaded, and equal to the plain call bit for bit.
  rng = np.random.default_rng(3)
  x = rng.standard_normal((6, 30)).astype(np.float32)
  y = x + 0.3 * rng.standard_normal((6, 30)).astype(np.float32)
  labels, truth, rows = np.arange(6).astype(str), np.arange(6), np.arange(6)
  kw = dict(metric="l1", k=1, ties="average")
  stored = scoring.score(labels, x, y, truth, rows, **kw)
  executables.keep_in(str(store))
  loaded = scoring.score(labels, x, y, truth, rows, **kw)
  executables.keep_in(None)
  plain = scoring.score(labels, x, y, truth, rows, **kw)
  assert os.listdir(store)
  for a, b in ((stored, plain), (loaded, plain)):
    for field in ("ranks", "own", "pvalues", "pvalues_bh", "top1", "popularity"):
      np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.gini == b.gini and float(a.curve.auc) == float(b.curve.auc)


# ----------------------------------------------------------------------------- new processes

_PROCESS = textwrap.dedent("""
    import json, os, pickle, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import serialize_executable
    cache, mode = sys.argv[1], sys.argv[2]
    jax.config.update("jax_compilation_cache_dir", os.path.join(cache, "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from twinbench_jax._src.evaluate import executables

    @jax.jit
    def kernel(x, y):
      d = jnp.abs(x[:, None, :] - y[None]).sum(-1)
      return jnp.argsort(d, axis=1), jnp.cumsum(d, axis=0), jnp.broadcast_to(d.max(), (3, 4))

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6, 9)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((5, 9)), jnp.float32)
    store = os.path.join(cache, "executables")
    if mode == "plain":  # JAX's cache only
      out = kernel(x, y)
    elif mode == "foreign":  # an entry serialised from JAX's cache: does not run elsewhere
      compiled = kernel.lower(x, y).compile()
      os.makedirs(store, exist_ok=True)
      with open(os.path.join(store, executables._key("k", (x, y), {}) + ".exe"), "wb") as f:
        pickle.dump(serialize_executable.serialize(compiled), f)
      out = compiled(x, y)
    else:
      executables.keep_in(store)
      out = executables.call(kernel, "k", x, y)
    print(json.dumps([np.asarray(v).tolist() for v in out]))
""")


def _process(cache, mode):
  env = {**os.environ, "PYTHONPATH": REPO}
  res = subprocess.run([sys.executable, "-c", _PROCESS, str(cache), mode], env=env,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # processes of their own
def test_entries_run_in_new_processes_after_jax_cached_the_kernel(tmp_path):
  # JAX's cache holds the kernel first: the stored entry must still be a whole executable.
  plain = _process(tmp_path, "plain")
  assert _process(tmp_path, "store") == plain
  (entry,) = os.listdir(tmp_path / "executables")
  assert _process(tmp_path, "store") == plain  # loaded in a new process, and it runs
  assert os.listdir(tmp_path / "executables") == [entry]


@pytest.mark.slow  # processes of their own
def test_an_entry_that_does_not_run_is_replaced(tmp_path):
  plain = _process(tmp_path, "plain")
  assert _process(tmp_path, "foreign") == plain
  (entry,) = os.listdir(tmp_path / "executables")
  foreign = (tmp_path / "executables" / entry).read_bytes()
  assert _process(tmp_path, "store") == plain  # the foreign entry failed, was replaced
  assert (tmp_path / "executables" / entry).read_bytes() != foreign
  assert _process(tmp_path, "store") == plain  # and the replacement runs

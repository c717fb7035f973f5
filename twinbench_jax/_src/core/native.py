"""Compiled CPU loops for the host side of `evaluate`: per-group sums of cells, L1 distances.

Two loops dominate `tb.evaluate` on a CPU, and neither maps well onto numpy,
scipy or XLA:

- **Per-group sums of a CSR matrix** (pseudobulks). scipy needs a row gather,
  a float64 copy and an indicator-matrix product; the loop here adds each
  stored value straight into its group's float64 row, in the same order
  (cells in block order), so the sums are bit-identical to that product.
- **All-pairs L1 distances.** The loop here takes two queries and four
  candidates at a time and keeps their eight sums in SIMD registers over the
  genes, several times faster than XLA's reduction on a CPU.

The loops are compiled with numba on first use (`cache=True`: the machine
code is kept beside this file, in `__pycache__`, or where numba's own
`NUMBA_CACHE_DIR` says) and release the GIL, so row blocks run on the threads
of `threads`. Without numba, or with the environment variable
``TWINBENCH_NUMBA=0``, `available()` is False and callers keep their
numpy/scipy/XLA path; both paths are tested against each other.

Small L1 problems can skip numba altogether (`host_l1`): `l1_lanes` adds
in the loop's lanes with numpy, and is used once a check on this machine
has found both equal (`keep_checks_in`; the command line keeps the check in
its cache folder).

Nothing here imports JAX.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import platform
import sys
from typing import Optional

import numpy as np

from twinbench_jax._src.core import files
from twinbench_jax._src.core import l1_lanes
from twinbench_jax._src.core import threads

# Below this many |x - y| terms the distances are computed on the calling thread.
_L1_THREADED_TERMS = 1 << 22
# Cells x genes below which per-group sums stay with scipy unless the loops are loaded
# anyway: importing numba and loading the cached loops takes about 0.3 s, which the loop
# wins back only at about 1e8 entries (0.3 s faster at 50,000 cells x 2,000 genes, 0.06 s
# at 10,000 x 2,000, 0.01 s at 8,000 x 300, on 2 cores). Both give the same sums, bit for bit.
GROUP_SUMS_MIN_ENTRIES = 10**8
# |x - y| terms up to which `host_l1` takes numpy's `l1_lanes` (about 0.15 s at 1e8 on one
# core) over importing numba and loading the loop (about 0.45 s), where the two are equal.
NUMPY_L1_MAX_TERMS = 10**8

# Folder of the record of `_l1_lanes_check` (None: no record, numba for every L1).
_checks_dir: Optional[str] = None


def enabled_by_environment() -> bool:
  """False when ``TWINBENCH_NUMBA`` is set to 0, false, no or off."""
  return os.environ.get("TWINBENCH_NUMBA", "1").strip().lower() not in ("0", "false", "no", "off")


def available() -> bool:
  """True when the compiled loops can be used (numba imports, not disabled by the environment)."""
  return enabled_by_environment() and _kernels() is not None


def loaded() -> bool:
  """True when the compiled loops are already imported in this process."""
  return "twinbench_jax._src.core.native_kernels" in sys.modules


def pays_for_group_sums(n_entries: int) -> bool:
  """Whether per-group sums over `n_entries` cells x genes should use the compiled loops.

  Only when `available()`, and when the problem is large enough to pay for
  importing numba (`GROUP_SUMS_MIN_ENTRIES`) or the loops are loaded
  already.
  """
  if not enabled_by_environment():
    return False
  return (n_entries >= GROUP_SUMS_MIN_ENTRIES or loaded()) and available()


@functools.lru_cache(maxsize=None)
def _kernels():
  """The module of compiled loops, or None when numba cannot be imported."""
  try:
    from twinbench_jax._src.core import native_kernels
  except Exception:  # noqa: BLE001 - a missing or broken numba: callers keep their other path
    return None
  return native_kernels


def csr_group_sums(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, rows: np.ndarray,
                   groups: np.ndarray, out: np.ndarray) -> Optional[int]:
  """Adds CSR rows into their groups' float64 rows: `out[groups[i]] += X[rows[i]]`.

  Rows are added in the order given, each value as its float64, so a group's
  sum is the left-to-right sum over its rows (what scipy's indicator-matrix
  product computes, bit for bit).

  Args:
    data, indices, indptr: the CSR arrays of `X` (any real dtype; int32/int64
      indices).
    rows: `[n]` int64 rows of `X` to add.
    groups: `[n]` int64 group (row of `out`) of each; -1 skips the row.
    out: `[n_groups, G]` float64 sums, C-contiguous, updated in place.

  Returns:
    None, or the position in `rows` of a row with column indices or row
    pointers out of range (a corrupt matrix; `out` is then incomplete).
  """
  bad = _kernels().csr_group_sums(data, indices, indptr, rows, groups, out)
  return None if bad < 0 else int(bad)


def dense_group_sums(block: np.ndarray, rows: np.ndarray, groups: np.ndarray,
                     out: np.ndarray) -> None:
  """`out[groups[i]] += block[rows[i]]` in float64, rows in the order given (-1 skips a row)."""
  _kernels().dense_group_sums(block, rows, groups, out)


def l1_distances(x: np.ndarray, y: np.ndarray, *, n_threads: Optional[int] = None) -> np.ndarray:
  r"""All-pairs L1 distances :math:`d_{qc} = \sum_g |x_{qg} - y_{cg}|`, on several threads.

  Every distance is summed by the same loop, in the dtype of the inputs, as
  partial sums over the SIMD lanes added at the end (so the result depends
  only on the two rows, never on where they stand or on the thread count;
  it may differ from a sequential sum in the last bits). NaN and inf
  propagate as in the plain sum.

  Args:
    x: `[Q, G]` float32 or float64.
    y: `[C, G]`, the same dtype.
    n_threads: worker threads (default: `threads.n_threads()`).

  Returns:
    `[Q, C]` distances, the dtype of the inputs.
  """
  x = np.ascontiguousarray(x)
  y = np.ascontiguousarray(y)
  if x.dtype != y.dtype or x.dtype not in (np.float32, np.float64):
    raise TypeError(f"l1_distances needs two float32 or two float64 arrays, got {x.dtype} and "
                    f"{y.dtype}")
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"l1_distances needs [Q, G] and [C, G] arrays, got {x.shape} and {y.shape}")
  q, c = x.shape[0], y.shape[0]
  out = np.zeros((q, c), x.dtype)
  if out.size == 0 or x.shape[1] == 0:
    return out
  y_tail = np.zeros((4, y.shape[1]), y.dtype)  # the last c % 4 candidates, padded to a tile
  y_tail[:c % 4] = y[c - c % 4:]
  kernel = _kernels().l1_rows
  n = threads.n_threads() if n_threads is None else n_threads
  if q * c * x.shape[1] < _L1_THREADED_TERMS:
    n = 1
  # Row ranges of whole query pairs.
  pairs = -(-q // 2)
  cuts = [min(q, 2 * (pairs * i // n)) for i in range(n + 1)]
  ranges = [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
  threads.run_all(lambda r: kernel(x, y, y_tail, out, r[0], r[1]), ranges, n)
  return out


# ----------------------------------------------------------------------------- numpy twin


def keep_checks_in(directory: Optional[str]) -> None:
  """Where `host_l1` keeps and reads its check of `l1_lanes` against the loop (None: nowhere).

  With no folder (the default), `host_l1` always uses the compiled loop.
  """
  global _checks_dir
  _checks_dir = directory


@functools.lru_cache(maxsize=1)
def _machine_key() -> dict:
  """What the loop's order of additions may depend on: CPU, numba, llvmlite, sources."""
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:  # the first processor's model and instruction sets
      first = f.read().split("\n\n")[0]
    cpu = "\n".join(line for line in first.splitlines()
                    if line.startswith(("model name", "flags", "Features", "CPU part")))
  except OSError:
    pass
  installed = {}
  for name in ("numba", "llvmlite"):
    spec = importlib.util.find_spec(name)
    origin = getattr(spec, "origin", None)
    if origin is None:
      return {}
    st = os.stat(origin)  # a reinstall writes the file anew
    installed[name] = [origin, st.st_size, st.st_mtime_ns]
  sources = hashlib.sha256()
  for module in ("native_kernels.py", "l1_lanes.py"):
    with open(os.path.join(os.path.dirname(__file__), module), "rb") as f:
      sources.update(f.read())
  return dict(machine=platform.machine(), cpu=cpu, installed=installed,
              sources=sources.hexdigest(),
              environment={k: v for k, v in sorted(os.environ.items()) if k.startswith("NUMBA_")})


def _record_path(dtype) -> Optional[str]:
  if _checks_dir is None or np.dtype(dtype) not in l1_lanes.LANES:
    return None
  key = _machine_key()
  if not key:
    return None
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
  return os.path.join(_checks_dir, f"l1-lanes-{digest}-{np.dtype(dtype).name}.json")


def _numpy_twin_checked(dtype) -> bool:
  """Whether this machine's record says `l1_lanes` equals the loop for `dtype`."""
  path = _record_path(dtype)
  if path is None:
    return False
  try:
    with open(path) as f:
      return json.load(f).get("same") is True
  except (OSError, ValueError, AttributeError):
    return False


def _l1_lanes_check(dtype) -> None:
  """Compares `l1_lanes` with the loop on `l1_lanes.probe` and records the outcome.

  Once per machine and dtype (the record's name holds `_machine_key`), when
  a folder is set. The record is written to a temporary file and renamed,
  so a reader sees all of it or nothing; an unwritable folder leaves no
  record.
  """
  path = _record_path(dtype)
  if path is None or os.path.exists(path):
    return
  outcome = {"same": l1_lanes.matches(l1_distances, dtype)}
  with contextlib.suppress(OSError):
    files.write_whole(path, json.dumps(outcome).encode())


def host_l1(x: np.ndarray, y: np.ndarray) -> Optional[np.ndarray]:
  """`[Q, C]` L1 distances from the compiled loop or its numpy twin, or None without either.

  The numpy twin (`l1_lanes`) is taken for at most `NUMPY_L1_MAX_TERMS`
  terms when numba is not loaded yet and this machine's record (see
  `keep_checks_in`) says the two agree for this dtype: the same numbers
  without numba's start-up. Otherwise the loop, which also writes the
  record when a folder is set and it is missing. None when the loops are
  off or numba is missing (callers use XLA).

  Args:
    x: `[Q, G]` float32 or float64.
    y: `[C, G]`, the same dtype.
  """
  if not enabled_by_environment():
    return None
  small = x.shape[0] * y.shape[0] * x.shape[1] <= NUMPY_L1_MAX_TERMS
  if small and not loaded() and _numpy_twin_checked(x.dtype):
    return l1_lanes.l1_distances(x, y)
  if not available():
    return None
  out = l1_distances(x, y)
  _l1_lanes_check(x.dtype)
  return out


def host_l1_possible(dtype) -> bool:
  """Whether `host_l1` can give `dtype` distances: the loops, or a record for the numpy twin."""
  if not enabled_by_environment():
    return False
  return _numpy_twin_checked(dtype) or available()

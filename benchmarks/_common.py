"""Helpers shared by the benchmark scripts: timing, peak memory, subprocesses, tables.

Peak memory is the resident set size (RSS) of a process, read from
`/proc/self/status` (Linux): `VmHWM` is the high-water mark, and writing ``5``
to `/proc/self/clear_refs` resets it, so the peak of one step is measured
after the data is loaded. Elsewhere the peak falls back to
`resource.getrusage` (whole-process peak, not resettable). A subprocess's peak
comes from `os.wait4` in a small launcher process (see `run_measured`).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024.0 * 1024.0


# ----------------------------------------------------------------------------- time


def block(x: Any) -> Any:
  """Waits for JAX arrays inside `x` (no-op without JAX)."""
  if "jax" in sys.modules:
    import jax

    return jax.block_until_ready(x)
  return x


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  """`(seconds, result)` of one call of `fn`, waiting for JAX results."""
  t0 = time.perf_counter()
  out = block(fn())
  return time.perf_counter() - t0, out


def median_time(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall time of `repeats` calls of `fn`."""
  return float(np.median([timed(fn)[0] for _ in range(max(1, repeats))]))


# ----------------------------------------------------------------------------- memory


def _status_kib(field: str) -> Optional[int]:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    return None
  return None


def rss_mib() -> float:
  """Current resident set size of this process in MiB."""
  kib = _status_kib("VmRSS")
  if kib is None:
    return float("nan")
  return kib / 1024.0


def reset_peak() -> bool:
  """Resets this process's peak RSS (Linux); False where that is not possible."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def peak_mib() -> float:
  """Peak resident set size of this process in MiB (since the last `reset_peak`)."""
  kib = _status_kib("VmHWM")
  if kib is None:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
      kib //= 1024
  return kib / 1024.0


class PeakMemory:
  """Context manager: peak RSS above the RSS at entry, in MiB (`.extra_mib`, `.peak_mib`)."""

  def __enter__(self):
    self.resettable = reset_peak()
    self.start_mib = rss_mib()
    return self

  def __exit__(self, *exc):
    self.peak_mib = peak_mib()
    self.extra_mib = max(0.0, self.peak_mib - self.start_mib)
    return False


# ----------------------------------------------------------------------------- subprocesses


# A small launcher between us and the measured command. Linux carries the
# parent's peak RSS into a child across fork + exec (`ru_maxrss` of the child is
# at least the parent's high-water mark at fork time), so a large benchmark
# process would inflate every child's peak. The launcher is a fresh, small
# process: its own child's peak is that child's alone. It writes
# "<peak KiB> <wall seconds>" to the file named by its first argument.
_LAUNCHER = """
import os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
p.returncode = 0
wall = time.perf_counter() - t0
kib = usage.ru_maxrss // (1024 if sys.platform == "darwin" else 1)
with open(sys.argv[1], "w") as f:
  f.write(f"{kib} {wall}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: Sequence[str], *, env: Optional[dict] = None, cwd: Optional[str] = None,
                 timeout: Optional[float] = None) -> dict:
  """Runs `cmd`; returns its wall time, peak RSS (MiB), return code, stdout and stderr.

  The command runs under a small launcher process that reports the peak RSS
  of this very child (see `_LAUNCHER`), so neither this process nor other
  children leak into it. Output goes through temporary files (no pipe
  deadlock); on timeout the whole process group is killed.
  """
  import signal
  import tempfile

  full_env = dict(os.environ)
  if env:
    full_env.update(env)
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
      tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, rss.name, *cmd], stdout=out,
                            stderr=err, env=full_env, cwd=cwd or REPO, start_new_session=True)
    timed_out = False
    try:
      proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      timed_out = True
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
    wall = time.perf_counter() - t0
    out.seek(0)
    err.seek(0)
    stdout = out.read().decode(errors="replace")
    stderr = err.read().decode(errors="replace")
    fields = rss.read().split()
  peak = float(fields[0]) / 1024.0 if fields else float("nan")
  if fields:
    wall = float(fields[1])  # the command alone, without the launcher's start-up
  return dict(cmd=" ".join(cmd), wall_s=wall, peak_rss_mib=peak,
              returncode=-9 if timed_out else proc.returncode, stdout=stdout, stderr=stderr,
              timed_out=timed_out)


def run_worker(task: str, args: dict, *, python: Optional[str] = None, env: Optional[dict] = None,
               timeout: Optional[float] = None) -> dict:
  """Runs `python -m benchmarks._worker TASK ARGS_JSON` and returns its JSON result.

  The result also carries `wall_s` and `peak_rss_mib` of the whole subprocess.
  Raises `RuntimeError` with the worker's stderr tail when it fails.
  """
  cmd = [python or sys.executable, "-m", "benchmarks._worker", task, json.dumps(args)]
  full_env = {"PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  full_env.update(env or {})
  res = run_measured(cmd, env=full_env, timeout=timeout)
  if res["returncode"] != 0:
    tail = "\n".join(res["stderr"].strip().splitlines()[-15:])
    why = "timed out" if res["timed_out"] else f"exit code {res['returncode']}"
    raise RuntimeError(f"worker {task} failed ({why}):\n{tail}")
  lines = [ln for ln in res["stdout"].splitlines() if ln.startswith("{")]
  if not lines:
    raise RuntimeError(f"worker {task} printed no result; stderr:\n{res['stderr'][-2000:]}")
  out = json.loads(lines[-1])
  out["process_wall_s"] = res["wall_s"]
  out["process_peak_rss_mib"] = res["peak_rss_mib"]
  return out


def emit(result: dict) -> None:
  """Prints a worker's result as the last stdout line (JSON)."""
  sys.stdout.flush()
  print(json.dumps(result, default=_json_default), flush=True)


def _json_default(x):
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  raise TypeError(type(x).__name__)


# ----------------------------------------------------------------------------- reporting


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
  """Slope of the least-squares line through `(log x, log y)`: `y ~ x^slope`."""
  x = np.log(np.asarray(xs, float))
  y = np.log(np.asarray(ys, float))
  ok = np.isfinite(x) & np.isfinite(y)
  if ok.sum() < 2:
    return float("nan")
  return float(np.polyfit(x[ok], y[ok], 1)[0])


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub markdown table."""
  def cell(v):
    if isinstance(v, float):
      if not np.isfinite(v):
        return "–"
      return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)

  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
  return "\n".join(lines)


def machine_info() -> dict:
  """Versions and hardware of this run (for the report header)."""
  info = dict(python=platform.python_version(), platform=platform.platform(),
              cpus=os.cpu_count(), numpy=np.__version__)
  try:
    info["load_average"] = [round(v, 2) for v in os.getloadavg()]
  except OSError:
    pass
  try:
    import jax

    info["jax"] = jax.__version__
    info["backend"] = jax.default_backend()
  except Exception:  # pragma: no cover
    pass
  try:
    import twinbench_jax

    info["twinbench_jax"] = twinbench_jax.__version__
  except Exception:  # pragma: no cover
    pass
  return info

"""The command line's plots, drawn by child processes forked at its start.

Importing matplotlib and drawing a first figure (fonts, glyph caches) take
about half a second, and the four PNGs as much again; the command line
needs them only at the very end. `start` forks workers before the command
reads anything (JAX is imported then, but not yet started: no threads of its
own); each imports matplotlib and draws a throw-away figure while the parent
reads the data and scores it, then waits for the report's numbers on a pipe.
`PlotWorkers.draw` sends them (numpy arrays and small tables, not the
`Report`), and each worker draws its share of `plots.PLOT_FILES` into the
staging folder of the output (`output_dir.staged`), so the PNGs are there
before the folder is swapped in.

Failure and interrupts: a worker that fails sends its error, which `draw`
raises as an `OSError` naming it; a worker that dies sends nothing, and
`draw` raises too. Either way `draw` first kills and reaps every worker, so
no worker writes into the staging folder after `draw` returns or raises, and
the staging folder (with any PNG half written) is then removed by
`output_dir.staged`. Workers ignore SIGINT (Ctrl-C reaches the whole process
group; the parent handles it and kills them) and end when the parent's end
of the pipe closes (the parent exits, or never calls `draw`).
"""

from __future__ import annotations

import os
import pickle
import signal
import types
from typing import Mapping, Optional, Sequence

import numpy as np

from twinbench_jax._src.evaluate import plots as plots_lib

# The plots each worker draws: about equal shares (popularity lays out its tick labels).
SHARES = (("popularity", "pvalue_histogram"), ("f1_alpha", "rank_histogram"))


def plot_data(report) -> types.SimpleNamespace:
  """What the `plots.plot_*` functions read of a `Report`, as numpy arrays and small tables.

  Picklable without JAX: a worker never starts JAX's runtime.
  """
  curves = {name: types.SimpleNamespace(alphas=np.asarray(c.alphas), f1=np.asarray(c.f1),
                                        auc=float(c.auc))
            for name, c in report.curves.items()}
  return types.SimpleNamespace(
      summary=_plain(report.summary), curves=curves,
      per_perturbation=report.per_perturbation[["rank", "pvalue"]],
      popularity=report.popularity)


def _plain(x):
  """`x` with its read-only mappings (the report's summary) as dicts, for pickling."""
  if isinstance(x, Mapping):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return type(x)(_plain(v) for v in x)
  return x


def _warm_up() -> None:
  """Draws a small figure with the plots' kinds of text and artists (fonts, glyph caches)."""
  import io

  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(2, 2))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.step([0, 1], [0, 1], where="post", label="α ≤ 1")
  ax.hist([0.5], bins=[0, 1])
  ax.set_title("α ≤ →", fontsize=10)
  ax.set_xticks([0])
  ax.set_xticklabels(["a"], rotation=90, fontsize=7)
  ax.legend(loc="best", fontsize=8)
  fig.tight_layout()
  fig.savefig(io.BytesIO(), format="png", dpi=20)


def _send(fd: int, message) -> None:
  with os.fdopen(fd, "wb") as f:
    pickle.dump(message, f)


def _worker(names: Sequence[str], inbox: int, outbox: int) -> None:
  """A worker's life: warm up, wait for the data, draw `names`, report; never returns."""
  code = 0
  try:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _warm_up()
    with os.fdopen(inbox, "rb") as f:
      try:
        data, directory = pickle.load(f)
      except EOFError:  # the parent did not need the plots
        os._exit(0)
    paths = plots_lib.save_plots(data, directory, only=names)
    _send(outbox, ("ok", paths))
  except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the command
    code = 1
    try:
      _send(outbox, ("error", f"{type(e).__name__}: {e}"))
    except BaseException:  # noqa: BLE001 - the parent then sees no answer
      pass
  finally:
    os._exit(code)  # no teardown, no flushing of the parent's inherited buffers


class PlotWorkers:
  """Forked plot workers (`start`); `draw` hands them a report, `close` ends them."""

  def __init__(self, workers: list[list]):
    self._workers = workers  # [pid, write end to it, read end from it, its plots]; -1: closed

  def draw(self, report, directory) -> list[str]:
    """Draws `report`'s four PNGs into `directory` with the workers; returns their paths.

    Raises:
      OSError: a worker failed (its error named) or ended without an answer.
        The workers are ended and reaped before this returns or raises.
    """
    done = {}
    try:
      message = pickle.dumps((plot_data(report), os.fspath(directory)))
      for worker in self._workers:
        _write_all(worker, message)
      for worker in self._workers:
        status, value = _answer(worker)
        if status != "ok":
          raise OSError(f"plots: the process drawing {', '.join(worker[3])} failed: {value}")
        done.update({os.path.basename(p): p for p in value})
    finally:
      self.close()
    return [done[name] for name in plots_lib.PLOT_FILES.values()]

  def close(self) -> None:
    """Kills and reaps the workers, closing the parent's ends of their pipes."""
    workers, self._workers = self._workers, []
    for worker in workers:
      _close(worker, 1)
      _close(worker, 2)
      try:
        os.kill(worker[0], signal.SIGKILL)
      except ProcessLookupError:
        pass
    for worker in workers:
      try:
        os.waitpid(worker[0], 0)
      except ChildProcessError:
        pass


def _close(worker: list, i: int) -> None:
  if worker[i] >= 0:
    fd, worker[i] = worker[i], -1
    os.close(fd)


def _write_all(worker: list, message: bytes) -> None:
  """Sends `message` to a worker and closes the pipe (its end of file)."""
  view = memoryview(message)
  try:
    while view:
      view = view[os.write(worker[1], view):]
  except BrokenPipeError:  # it is gone; `_answer` says so
    pass
  _close(worker, 1)


def _answer(worker: list) -> tuple[str, object]:
  """A worker's ("ok", paths) or ("error", why)."""
  chunks = []
  while chunk := os.read(worker[2], 1 << 16):
    chunks.append(chunk)
  _close(worker, 2)
  try:
    return pickle.loads(b"".join(chunks))
  except (EOFError, pickle.UnpicklingError):
    return "error", "it ended without drawing them"


def start(shares: Optional[Sequence[Sequence[str]]] = None) -> Optional[PlotWorkers]:
  """Forks one worker per share of the plots (default `SHARES`); None where `os.fork` is unavailable.

  Call before JAX's runtime starts (its threads do not survive a fork).
  """
  if not hasattr(os, "fork"):
    return None
  workers = []
  for names in SHARES if shares is None else shares:
    try:
      to_r, to_w = os.pipe()
      from_r, from_w = os.pipe()
      pid = os.fork()
    except OSError:  # out of processes or files: the caller draws in-process
      PlotWorkers(workers).close()
      return None
    if pid == 0:
      os.close(to_w)
      os.close(from_r)
      for worker in workers:  # the earlier workers' pipes are the parent's, not ours
        _close(worker, 1)
        _close(worker, 2)
      _worker(tuple(names), to_r, from_w)
    os.close(to_r)
    os.close(from_w)
    workers.append([pid, to_w, from_r, tuple(names)])
  return PlotWorkers(workers)

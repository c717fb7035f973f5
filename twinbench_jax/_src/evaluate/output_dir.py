"""Output folders that are replaced all-or-nothing and never lose a user's file.

`Report.save` and the `twinbench` command write through `staged(directory)`:

- **Refused** (`OutputDirError`, a `ValueError` naming the path, nothing
  touched): an empty path, a filesystem root, the home folder, the current
  folder or a folder above it, a path that is not a folder, and an existing
  folder holding anything twinbench did not write.
- **Written by twinbench** means listed in the folder's manifest
  `.twinbench-manifest.json` (relative path and size of every file written).
  A folder written before the manifest existed counts as twinbench's when it
  holds only plain files with the names twinbench writes (`report.json`,
  `per_perturbation.csv`, the four PNGs, the demo's `.h5ad` files and its
  `good/ collapsed/ noisy/ report/` subfolders) and its `report.json` files
  are twinbench reports.
- **All-or-nothing**: the new set is written into a hidden staging folder
  beside `directory` (`.NAME.tmp-*`), which then takes the place of
  `directory` in one step (an atomic exchange on Linux, two renames
  elsewhere). A reader sees the old set or the new one, never a mix. Before
  the swap every old file is checked to be removable (permissions, the
  immutable and append-only flags), so a failure leaves the old set whole.
  After the swap only the files the manifest lists are removed; anything
  else found there is kept (with a warning), never deleted.
- **Interrupted** runs (an exception, Ctrl-C, SIGTERM under
  `handle_signals`) remove the staging folder and any parent folders they
  created; `directory` is left as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import stat
import struct
import sys
import tempfile
import threading
import warnings
from typing import Iterator, Optional

MANIFEST = ".twinbench-manifest.json"

# Names written before the manifest existed (twinbench 0.1.0): a folder holding only these, as
# plain files, is a previous twinbench output.
_REPORT_FILES = frozenset({"report.json", "per_perturbation.csv", "f1_alpha.png",
                           "rank_histogram.png", "pvalue_histogram.png", "popularity.png"})
_DEMO_FILES = frozenset({"real.h5ad", "pred.h5ad", "pred_good.h5ad", "pred_collapsed.h5ad",
                         "pred_noisy.h5ad"})
_DEMO_FOLDERS = frozenset({"good", "collapsed", "noisy", "report"})

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_pending: list[int] = []  # signals received under `handle_signals`, even where swallowed

# Linux: FS_IOC_GETFLAGS (_IOR('f', 1, long)) and its immutable/append-only bits; renameat2.
_FS_IOC_GETFLAGS = 0x80086601 if struct.calcsize("l") == 8 else 0x80046601
_FS_LOCKED = 0x10 | 0x20
_BSD_LOCKED = sum(getattr(stat, n, 0) for n in ("UF_IMMUTABLE", "UF_APPEND", "SF_IMMUTABLE",
                                                 "SF_APPEND"))
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


class OutputDirError(ValueError):
  """An output folder that twinbench refuses to write (nothing was touched)."""


class OutputDirWarning(UserWarning):
  """The new output is in place, but part of the old one could not be removed (it is kept)."""


class Interrupted(BaseException):
  """SIGINT or SIGTERM under `handle_signals`; `signum` is the signal.

  `replaced` is True only when the signal came during the final swap, which
  was completed first (the folder then holds the complete new set).
  """

  def __init__(self, signum: int):
    super().__init__(f"interrupted by {signal.Signals(signum).name}")
    self.signum = signum
    self.replaced = False


# ----------------------------------------------------------------------------- checks


def _entries(root: str, rel: str = "") -> Iterator[tuple[str, str, int]]:
  """(relative path with '/', kind 'file'|'dir'|'other', size) of everything under `root`."""
  with os.scandir(os.path.join(root, rel)) as it:
    found = sorted(it, key=lambda e: e.name)
  for e in found:
    path = f"{rel}/{e.name}" if rel else e.name
    if e.is_dir(follow_symlinks=False):
      yield path, "dir", 0
      yield from _entries(root, path)
    elif e.is_file(follow_symlinks=False):
      yield path, "file", e.stat(follow_symlinks=False).st_size
    else:
      yield path, "other", 0  # a symlink, socket, ...: never ours


def _read_manifest(real: str) -> Optional[dict]:
  path = os.path.join(real, MANIFEST)
  if not os.path.lexists(path):
    return None
  try:
    with open(path) as f:
      m = json.load(f)
    files = m["files"]
    if m.get("written_by") != "twinbench" or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in files.items()):
      raise ValueError
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    raise OutputDirError(f"{real!r}: {MANIFEST!r} is not a readable twinbench manifest; give "
                         "another folder") from None
  return files


def _is_twinbench_report(path: str) -> bool:
  try:
    with open(path) as f:
      return "twinbench_version" in json.load(f)
  except (OSError, ValueError, TypeError):
    return False


def _legacy_name(rel: str, kind: str) -> bool:
  parts = rel.split("/")
  if len(parts) == 1:
    return (kind == "file" and rel in _REPORT_FILES | _DEMO_FILES) or (
        kind == "dir" and rel in _DEMO_FOLDERS)
  return len(parts) == 2 and parts[0] in _DEMO_FOLDERS and kind == "file" and (
      parts[1] in _REPORT_FILES)


def _foreign(real: str, rel: str, kind: str, why: str) -> OutputDirError:
  what = {"dir": "folder", "file": "file"}.get(kind, "link or special file")
  return OutputDirError(
      f"{real!r} holds the {what} {rel!r}, which {why}; twinbench replaces an output folder "
      "as a whole and never removes what it did not write: give a new or empty folder, or "
      "move that entry away")


def _parents(rel: str) -> list[str]:
  parts = rel.split("/")
  return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _check_listed(real: str, files: dict, entries: list) -> None:
  """Every entry must be listed, with its size, in the manifest of its nearest folder.

  A subfolder with a manifest of its own (a report saved again into the
  demo's `good/`, say) answers for its own files.
  """
  manifests = {"": files}
  for rel, kind, _ in entries:
    if kind == "file" and rel.endswith("/" + MANIFEST):
      folder = rel[:-len(MANIFEST) - 1]
      manifests[folder] = _read_manifest(os.path.join(real, *folder.split("/")))
  folders = set()
  for base, listed in manifests.items():
    folders.update(_parents(f"{base}/x") if base else ())
    for p in listed:
      folders.update(_parents(f"{base}/{p}" if base else p))
  for rel, kind, size in entries:
    if kind == "dir" and rel in folders:
      continue
    base = max((b for b in manifests if not b or rel.startswith(b + "/")), key=len)
    inner, listed = rel[len(base) + 1:] if base else rel, manifests[base]
    if kind == "file" and inner == MANIFEST:
      continue  # a subfolder's manifest, read above
    if kind != "file" or inner not in listed:
      raise _foreign(real, rel, kind, f"twinbench did not write (not in {MANIFEST})")
    if listed[inner] != size:
      raise _foreign(real, rel, kind, "changed after twinbench wrote it (size differs)")


def owned_files(real: str) -> list[str]:
  """The files in the existing folder `real` that twinbench wrote (relative, '/'-separated).

  Raises:
    OutputDirError: naming the first entry twinbench did not write.
  """
  files = _read_manifest(real)
  entries = [e for e in _entries(real) if e[0] != MANIFEST]
  if files is not None:
    _check_listed(real, files, entries)
    return [rel for rel, kind, _ in entries if kind == "file"]
  for rel, kind, _ in entries:
    if not _legacy_name(rel, kind):
      raise _foreign(real, rel, kind, "twinbench did not write (the folder has no manifest)")
  reports = [rel for rel, _, _ in entries if rel.split("/")[-1] == "report.json"]
  for rel in reports:
    if not _is_twinbench_report(os.path.join(real, rel)):
      raise _foreign(real, rel, "file", "is not a twinbench report")
  if entries and not reports:
    names = ", ".join(repr(rel) for rel, _, _ in entries[:3]) + (", ..." if entries[3:] else "")
    raise OutputDirError(f"{real!r} holds {names}, named like twinbench output, but no "
                         "twinbench report.json and no manifest, so twinbench cannot tell it "
                         "wrote them: give a new or empty folder")
  return [rel for rel, kind, _ in entries if kind == "file"]


def _refused_location(directory: str, real: str) -> Optional[str]:
  if not directory.strip():
    return "the output folder is an empty path (an unset variable?); give a folder name"
  if os.path.dirname(real) == real:
    return f"{directory!r} is a filesystem root; give a folder of its own"
  if real == os.path.realpath(os.path.expanduser("~")):
    return f"{directory!r} is the home folder; give a folder of its own"
  cwd = os.path.realpath(os.getcwd())
  if cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
    where = "the current folder" if cwd == real else "a folder above the current one"
    return (f"{directory!r} is {where}; twinbench replaces its output folder as a whole, so "
            "give a folder of its own (e.g. ./report)")
  return None


def check(directory) -> tuple[str, list[str]]:
  """Refuses an unsafe output folder before any work.

  Args:
    directory: the output folder (`str` or path-like); it need not exist.

  Returns:
    `(real, owned)`: the resolved path (symlinks followed) and the files of
    a previous twinbench output there (empty when new or empty).

  Raises:
    OutputDirError: the reason, naming the path or the offending entry.
    PermissionError: an old file there could not be removed (read-only
      folder, immutable file).
  """
  directory = os.fspath(directory)
  real = os.path.realpath(directory) if directory.strip() else ""
  reason = _refused_location(directory, real)
  if reason is not None:
    raise OutputDirError(reason)
  if os.path.lexists(real) and not os.path.isdir(real):
    raise OutputDirError(f"output path {directory!r} exists and is not a folder")
  owned, where = [], real
  if os.path.lexists(real):
    owned = owned_files(real)
    _check_removable(real, owned)
    where = os.path.dirname(real)
  while not os.path.lexists(where):
    where = os.path.dirname(where)
  if not os.path.isdir(where):
    raise OutputDirError(f"cannot create output folder {directory!r}: {where!r} is not a folder")
  if not os.access(where, os.W_OK | os.X_OK) or (
      where == os.path.dirname(real) and not _can_create_in(where)):
    raise OutputDirError(f"cannot write to output folder {directory!r}: {where!r} is not "
                         "writable")
  return real, owned


def _can_create_in(parent: str) -> bool:
  """Whether a folder can be made in `parent` (also catches read-only mounts, immutable flags)."""
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".twinbench-probe-", dir=parent))
  except OSError:
    return False
  return True


def _locked(path: str) -> bool:
  """Whether `path` carries an immutable or append-only flag (False where unknown)."""
  flags = getattr(os.lstat(path), "st_flags", 0)
  if flags:
    return bool(flags & _BSD_LOCKED)
  if not sys.platform.startswith("linux") or os.path.islink(path):
    return False
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
  except OSError:
    return False
  try:
    import fcntl

    buf = bytearray(8)
    fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf)
    return bool(int.from_bytes(bytes(buf[:4]), sys.byteorder) & _FS_LOCKED)
  except OSError:
    return False
  finally:
    os.close(fd)


def _check_removable(real: str, owned: list[str]) -> None:
  """Raises `PermissionError` naming the first old file that could not be removed after a swap."""
  folders = {real}
  for rel in owned:
    path = os.path.join(real, *rel.split("/"))
    folders.add(os.path.dirname(path))
    if _locked(path):
      raise PermissionError(f"cannot replace {real!r}: {rel!r} is immutable or append-only "
                            "(chattr), so the old files could not be removed; nothing was "
                            "changed")
  for folder in sorted(folders):
    if _locked(folder) or not os.access(folder, os.W_OK | os.X_OK):
      raise PermissionError(f"cannot replace {real!r}: the folder {folder!r} is read-only or "
                            "immutable, so the old files could not be removed; nothing was "
                            "changed")


# ----------------------------------------------------------------------------- signals


@contextlib.contextmanager
def handle_signals():
  """SIGINT and SIGTERM raise `Interrupted` in the block (for the command line).

  Each signal is also remembered (the yielded list), so a run whose
  `Interrupted` was swallowed (raised inside a finaliser, say) still never
  commits its output. Such swallowed interrupts print nothing. Outside the
  main thread this does nothing.
  """
  if threading.current_thread() is not threading.main_thread():
    yield []
    return

  def raise_interrupted(signum, frame):
    _pending.append(signum)
    raise Interrupted(signum)

  def hook(unraisable):
    if not isinstance(unraisable.exc_value, Interrupted):
      old_hook(unraisable)

  old_hook = sys.unraisablehook
  old = {s: signal.signal(s, raise_interrupted) for s in _python_handled()}
  sys.unraisablehook = hook
  try:
    yield _pending
  finally:
    for s, h in old.items():
      signal.signal(s, h)
    sys.unraisablehook = old_hook
    _pending.clear()


def _python_handled() -> list[int]:
  """SIGINT/SIGTERM unless a handler installed outside Python (which we cannot restore) owns it."""
  return [s for s in _SIGNALS if signal.getsignal(s) is not None]


@contextlib.contextmanager
def _signals_deferred():
  """Holds SIGINT/SIGTERM during the block, then delivers them to the previous handlers."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  got: list[int] = []
  old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in _python_handled()}
  try:
    yield
  finally:
    for s, h in old.items():
      signal.signal(s, h)
    if got:
      signal.raise_signal(got[0])


# ----------------------------------------------------------------------------- writing


def _exchange(a: str, b: str) -> bool:
  """Swaps two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    fn = ctypes.CDLL(None, use_errno=True).renameat2
  except (OSError, AttributeError):
    return False
  fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
  if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
    return False
  raise OSError(f"cannot replace {b!r}: {os.strerror(err)}; nothing was changed")


def _swap(staging: str, real: str) -> str:
  """Puts `staging` at `real`; returns where the old folder now is."""
  if _exchange(staging, real):
    return staging
  aside = staging + "-old"
  os.rename(real, aside)
  try:
    os.rename(staging, real)
  except BaseException:
    os.rename(aside, real)
    raise
  return aside


def _remove_old(folder: str, owned: list[str]) -> None:
  """Removes the listed files of the swapped-out folder, then its folders once empty."""
  problem = None
  for rel in owned:
    try:
      os.unlink(os.path.join(folder, *rel.split("/")))
    except FileNotFoundError:
      pass
    except OSError as e:
      problem = problem or f"{rel!r}: {e.strerror or e}"
  dirs = [rel for rel, kind, _ in _entries(folder) if kind == "dir"]
  with contextlib.suppress(FileNotFoundError):
    os.unlink(os.path.join(folder, MANIFEST))
  for rel in sorted(dirs, key=lambda r: -r.count("/")):
    with contextlib.suppress(OSError):
      os.rmdir(os.path.join(folder, *rel.split("/")))
  try:
    os.rmdir(folder)
  except OSError:
    warnings.warn(f"the new output is complete, but the previous one was kept in {folder!r} ("
                  f"{problem or 'it holds files twinbench did not write'})", OutputDirWarning,
                  stacklevel=4)


def _write_manifest(staging: str) -> None:
  files = {rel: size for rel, kind, size in _entries(staging) if kind == "file"}
  with open(os.path.join(staging, MANIFEST), "w") as f:
    json.dump({"written_by": "twinbench", "format": 1, "files": files}, f, indent=1)
    f.write("\n")


def _make_parents(real: str) -> list[str]:
  """Creates the missing parents of `real`; returns them, outermost first."""
  created, parent = [], os.path.dirname(real)
  while not os.path.lexists(parent):
    created.insert(0, parent)
    parent = os.path.dirname(parent)
  for p in created:
    os.mkdir(p)
  return created


def _remove_folders(created: list[str]) -> None:
  for p in reversed(created):
    with contextlib.suppress(OSError):
      os.rmdir(p)  # only while still empty


def _new_staging(real: str) -> str:
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(real)}.tmp-", dir=os.path.dirname(real))
  umask = os.umask(0o022)
  os.umask(umask)
  os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
  return staging


def _commit(staging: str, real: str) -> tuple[Optional[str], list[str]]:
  """Moves `staging` to `real`; returns the swapped-out old folder and its files to remove."""
  _write_manifest(staging)
  if not os.path.lexists(real):
    os.rename(staging, real)
    return None, []
  owned = owned_files(real)  # again: the folder may have changed during the run
  _check_removable(real, owned)
  return _swap(staging, real), owned


@contextlib.contextmanager
def staged(directory):
  """Yields an empty staging folder that replaces `directory` when the block succeeds.

  Checks `directory` first (see `check`); on success writes the manifest,
  re-checks that `directory` still holds only twinbench's files, checks they
  are removable, swaps the staging folder into place and removes the old
  files. On any exception (or an interrupt seen by `handle_signals`) the
  staging folder and any parent folders created for it are removed and
  `directory` is untouched. Signals are held while the swap or the clean-up
  runs, and delivered after it.

  Raises:
    OutputDirError: an unsafe `directory` (before the block runs, or when
      it gained a foreign entry meanwhile).
    OSError: the folder could not be written or replaced.
  """
  real, _ = check(directory)
  with _signals_deferred():
    created = _make_parents(real)
    try:
      staging = _new_staging(real)
    except BaseException:
      _remove_folders(created)
      raise
  committed = False
  try:
    yield staging
    with _signals_deferred():
      if _pending:
        raise Interrupted(_pending[0])
      old, owned = _commit(staging, real)
      committed = True  # from here on `staging` may hold the old set: never rmtree it
      if old is not None:
        _remove_old(old, owned)
  except Interrupted as e:
    e.replaced = committed
    raise
  finally:
    if not committed:
      with _signals_deferred():
        shutil.rmtree(staging, ignore_errors=True)
        _remove_folders(created)

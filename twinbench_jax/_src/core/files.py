"""Files the package keeps for itself (cache records), written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile


def write_whole(path: str, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file beside it and one rename.

  A reader sees the old file or all of the new one, never part of it; two
  processes writing the same path leave one whole file. The folder is
  created if missing. On failure the temporary file is removed and the
  `OSError` raised.
  """
  folder = os.path.dirname(path) or "."
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise

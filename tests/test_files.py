"""`core/files.write_whole`: the package's own records are written whole or not at all."""

from __future__ import annotations

import os

import pytest

from twinbench_jax._src.core import files


def test_writes_and_replaces_whole(tmp_path):
  path = tmp_path / "new" / "record.json"  # the folder is made
  files.write_whole(str(path), b"first")
  files.write_whole(str(path), b"second")
  assert path.read_bytes() == b"second"
  assert os.listdir(path.parent) == ["record.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / "record.json"
  path.write_bytes(b"old")

  def refuse(src, dst):
    raise PermissionError(f"cannot rename {src}")

  monkeypatch.setattr(os, "replace", refuse)
  with pytest.raises(PermissionError):
    files.write_whole(str(path), b"new")
  assert path.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["record.json"]

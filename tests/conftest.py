"""Shared test fixtures: the real data folder beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# `../shared/data` beside the checkout; TWINBENCH_DATA overrides it.
DATA_DIR = Path(os.environ.get("TWINBENCH_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
  if not DATA_DIR.is_dir():
    pytest.skip(f"real data folder not found at {DATA_DIR} (set TWINBENCH_DATA)")
  return DATA_DIR


@pytest.fixture(scope="session")
def papalexi_path(data_dir) -> Path:
  path = data_dir / "papalexi2021" / "papalexi2021_lowmoi.h5ad"
  if not path.is_file():
    pytest.skip(f"{path} not found")
  return path

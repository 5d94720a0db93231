"""Shared fixtures: the real dermoscopy data beside the checkout ($DERMEDGE_DATA, default ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DERMEDGE_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set DERMEDGE_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(DATA)


@pytest.fixture(scope="session")
def isic_dir() -> Path:
    return _need(DATA / "isic-mvb")


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    return _need(DATA / "ham10000-thumbs")

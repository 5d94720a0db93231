"""Shared fixtures: the real dermoscopy data beside the checkout ($DERMEDGE_DATA, default
../shared/data). The helpers tests import live in `dermedge_testing` (a name no other package owns)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dermedge_testing import DATA, _need


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(DATA)


@pytest.fixture(scope="session")
def isic_dir() -> Path:
    return _need(DATA / "isic-mvb")


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    return _need(DATA / "ham10000-thumbs")

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


def rewrite_tflite(blob: bytes, edit) -> bytes:
    """A .tflite rewritten through LiteRT's schema after `edit(schema, model)` changed its object
    tree (to make a damaged or foreign model from a real one); skips where LiteRT is absent."""
    import flatbuffers

    fb = pytest.importorskip("ai_edge_litert.schema_py_generated")
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(blob, 0))
    edit(fb, model)
    builder = flatbuffers.Builder(len(blob))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())

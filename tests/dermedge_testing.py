"""Helpers the tests share: where the real data is, small manifests of real photos, a .tflite
rewritten through LiteRT's schema. A module name of this project's own (never `conftest` or
`tests`, which another installed package can own: tf2onnx installs a top-level `tests`)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DERMEDGE_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    """`path`, or skip the test with the reason when the shared data is not there."""
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set DERMEDGE_DATA to the shared data folder)")
    return path


def isic_photos(isic: Path, split_dir: str, label: str, n: int, skip: int = 0) -> list[Path]:
    """`n` isic-mvb photos of `label` from its `split_dir` folder, in file-number order."""
    photos = sorted((isic / split_dir / label).glob("*.jpg"), key=lambda p: int(p.stem))
    return photos[skip : skip + n]


def write_isic_manifest(
    folder: Path, isic: Path, plan: list[tuple[str, int, str, int]], source: str
) -> Path:
    """A balanced split manifest of real isic-mvb photos in `folder`: for each (split, n per class,
    isic-mvb folder, skip) of `plan`, n benign and n malignant photos."""
    from dermedge.data.split import MANIFEST_COLUMNS

    rows = []
    for split, n, src, skip in plan:
        for label in ("benign", "malignant"):
            for p in isic_photos(isic, src, label, n, skip):
                sha = hashlib.sha256(p.read_bytes()).hexdigest()
                rows.append([p.relative_to(isic).as_posix(), sha, label, "", split, source, label])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    (folder / "manifest.json").write_text(json.dumps({"root": str(isic)}))
    return folder


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

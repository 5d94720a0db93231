"""Read a split manifest back: the exact images every later step (train, calibrate, evaluate) uses."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

from dermedge.data.index import Record

DATA_ENV = "DERMEDGE_DATA"


class ManifestError(ValueError):
    """A manifest that is missing, malformed or points at a data root that is not there."""


def manifest_sha256(path: str | Path) -> str:
    """Hash of the manifest CSV: names the exact data a model was trained and tested on."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _find_root(meta_root: str, rel_paths: list[str], override: str | None) -> Path:
    """The data root: an explicit override, the recorded root, or the recorded root's tail under
    $DERMEDGE_DATA (a committed manifest made on another machine)."""
    candidates = [Path(override)] if override else []
    candidates.append(Path(meta_root))
    env = os.environ.get(DATA_ENV)
    if env:
        tail = Path(meta_root).name
        candidates += [Path(env) / tail, Path(env)]
    probe = rel_paths[0] if rel_paths else ""
    for c in candidates:
        if (c / probe).exists():
            return c
    raise ManifestError(
        f"the manifest's data root {meta_root} is not here; pass --data-root or set {DATA_ENV}"
    )


def read_manifest(
    path: str | Path, root: str | None = None, splits: tuple[str, ...] | None = None
) -> list[Record]:
    """Records of a `manifest.csv` (a run folder or the CSV itself), with absolute paths."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise ManifestError(f"no split manifest at {path}; run `dermedge data split` first")
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"root": str(path.parent)}
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"path", "label", "split"} <= set(rows[0]):
        raise ManifestError(f"{path} is not a dermedge manifest (needs path, label, split columns)")
    base = _find_root(meta["root"], [r["path"] for r in rows], root)
    out = []
    for row in rows:
        if splits and row["split"] not in splits:
            continue
        p = Path(row["path"])
        out.append(
            Record(
                str(p if p.is_absolute() else base / p),
                row["label"],
                row.get("source") or "",
                row.get("group") or None,
                row["split"],
                row.get("dx") or None,
            )
        )
    return out

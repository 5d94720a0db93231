"""The pixels the gate and the int8 calibration read: one split's readable images through the input
contract (unreadable ones named, skipped), with labels 0/1 (benign/malignant)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dermedge.convert import ConvertError, log
from dermedge.data.contract import InputContract
from dermedge.data.images import load_images
from dermedge.runs import runs_root

LABELS = {"benign": 0, "malignant": 1}


def load_split(
    records: list[Any], split: str, contract: InputContract, what: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pixels, labels (0/1) and paths of one split's readable images; unreadable ones are named."""
    recs = [r for r in records if r.split == split]
    paths = [r.path for r in recs]
    x, kept, bad = load_images(paths, contract, cache_dir=str(runs_root() / "cache"), desc=what)
    if bad:
        first = next(iter(bad.items()))
        log(f"warning: {len(bad)} unreadable {split} images skipped (e.g. {first[0]}: {first[1]})")
    y = np.asarray([LABELS.get(recs[i].label, -1) for i in kept], dtype=np.int64)
    if (y < 0).any():
        raise ConvertError(f"the manifest's {split} split has labels other than benign/malignant")
    return x, y, [paths[i] for i in kept]


def load_calib(
    recs: list[Any], contract: InputContract
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pixels, labels and paths of the int8 calibration images; ConvertError on one class."""
    paths = [r.path for r in recs]
    x, kept, bad = load_images(
        paths, contract, cache_dir=str(runs_root() / "cache"), desc="calibration images"
    )
    if bad:
        log(f"warning: {len(bad)} unreadable calibration images skipped")
    y = np.asarray([LABELS.get(recs[i].label, -1) for i in kept], dtype=np.int64)
    present = {int(v) for v in y if v >= 0}
    if len(present) < 2:
        raise ConvertError(
            "the calibration set has one class after skipping unreadable images; "
            "int8 needs both classes in the training split"
        )
    if len(x) < 50:
        log(f"warning: only {len(x)} calibration images; int8 ranges may be poor (--calib-images)")
    return x, y, [paths[i] for i in kept]

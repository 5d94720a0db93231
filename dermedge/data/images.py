"""Decode and resize many images through the contract into one uint8 array, cached on disk.

Training, calibration and evaluation feed models from here, so they see exactly the pixels the
edge runner computes for the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dermedge.data.contract import ImageError, InputContract, preprocess
from dermedge.data.io import atomic_open


def _cache_path(paths: Sequence[str], contract: InputContract, cache_dir: Path) -> Path:
    key = json.dumps([contract.to_dict(), [(p, os.path.getsize(p)) for p in paths]])
    return cache_dir / f"images-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def load_images(
    paths: Sequence[str],
    contract: InputContract | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    desc: str = "loading images",
) -> tuple[np.ndarray, list[int], dict[str, str]]:
    """Preprocess `paths` into an (N, size, size, 3) uint8 array.

    Returns (images, indices of `paths` that loaded, unreadable path -> reason): a bad file is
    reported and skipped, never fatal.
    """
    contract = contract or InputContract()
    cache = None
    if cache_dir is not None:
        try:
            cache = _cache_path(paths, contract, Path(cache_dir))
            if cache.is_file():
                with np.load(cache, allow_pickle=False) as z:
                    return z["images"], z["kept"].tolist(), dict(json.loads(str(z["bad"])))
        except (OSError, ValueError, KeyError):
            cache = None
    size = contract.size
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    kept: list[int] = []
    bad: dict[str, str] = {}
    for i, p in enumerate(tqdm(paths, desc=desc, unit="img", disable=not progress, leave=False)):
        try:
            images[len(kept)] = preprocess(p, contract)
            kept.append(i)
        except ImageError as e:
            bad[p] = str(e)
    images = images[: len(kept)]
    if cache is not None:
        try:
            with atomic_open(cache, "wb") as fh:
                np.savez(fh, images=images, kept=np.asarray(kept, dtype=np.int64),
                         bad=np.asarray(json.dumps(sorted(bad.items()))))  # fmt: skip
        except OSError:
            pass
    return images, kept, bad

"""Dataset reading, de-duplication, leakage-free splits and the preprocessing contract (TF-free).

The public names, in the order a notebook meets them:
- `read_dataset(root) -> Index` (records + skipped problems), `Record`, `Problem`;
- `analyse(index, link=None) -> Analysis` (hashes, duplicates, lesion groups) and
  `make_split(analysis, ...) -> Split`, `write_manifest(split, analysis, folder)`,
  `read_manifest(csv)`, `split_counts(records)`, `leakage(records)` (lesions shared across splits);
- `InputContract`, `preprocess(photo, contract)`, `load_rgb`, `ImageError`, and
  `load_images(paths, contract) -> (pixels, kept, bad)` for many photos at once.
The names of `_LAZY` are imported on first use (PEP 562), so `import dermedge.data` (which the
edge runtime does) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from dermedge.data.contract import ImageError, InputContract, load_rgb, preprocess
from dermedge.data.index import Index, Problem, Record, read_dataset
from dermedge.data.manifest import ManifestError, read_manifest

_LAZY = {
    "Analysis": "analysis",
    "analyse": "analysis",
    "Split": "split",
    "make_split": "split",
    "split_counts": "split",
    "write_manifest": "split",
    "leakage": "analysis",
    "load_images": "images",
}

__all__ = [
    "ImageError",
    "Index",
    "InputContract",
    "ManifestError",
    "Problem",
    "Record",
    "load_rgb",
    "preprocess",
    "read_dataset",
    "read_manifest",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Import the lazily exported names on first use (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"dermedge.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dermedge.data' has no attribute {name!r}")

"""A model group's test images: its records (its split manifest, else --data), a fixed stratified
subset, preprocessed once through the card's input contract into the .npy files the workers read."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dermedge.benchmark.settings import Settings
from dermedge.benchmark.variants import Group


def _records(group: Group, data: str | None) -> list[Any]:
    """Test records from `data` (a manifest or a dataset), else from the group's split manifest."""
    from dermedge.data.manifest import read_manifest

    if data:
        p = Path(data)
        if p.suffix == ".csv" or (p / "manifest.csv").is_file():
            recs = read_manifest(p, splits=("test",))
            return recs or read_manifest(p)
        from dermedge.data.index import read_dataset

        recs = read_dataset(p).records
        tests = [r for r in recs if r.split == "test"]
        return tests or recs
    if group.manifest is None:
        raise ValueError(f"{group.name}: no split manifest found beside its models; pass --data")
    return read_manifest(group.manifest, splits=("test",))


def _subset(recs: list[Any], limit: int | None, seed: int) -> list[Any]:
    """At most `limit` records, both classes kept in proportion, in a fixed order."""
    recs = sorted(recs, key=lambda r: r.path)
    if not limit or len(recs) <= limit:
        return recs
    by = {lab: [r for r in recs if r.label == lab] for lab in ("benign", "malignant")}
    rng = random.Random(seed)
    for v in by.values():
        rng.shuffle(v)
    n_mal = max(1, round(limit * len(by["malignant"]) / len(recs))) if by["malignant"] else 0
    n_mal = min(n_mal, len(by["malignant"]), limit - (1 if by["benign"] else 0))
    picked = by["malignant"][:n_mal] + by["benign"][: limit - n_mal]
    return sorted(picked, key=lambda r: r.path)


def _contract(group: Group) -> Any:
    """The card's input contract, else one sized by a .tflite's input tensor, else the default."""
    from dermedge.data.contract import InputContract

    card = group.card or {}
    if "input" in card:
        return InputContract.from_dict(card["input"])
    for v in group.variants:
        if v.backend == "litert":
            from dermedge.edge.card import model_io

            shape = model_io(v.path)["inputs"][0]["shape"]
            return InputContract(size=int(shape[1]))
    return InputContract()


@dataclass
class TestSet:
    contract: dict[str, Any]  # the preprocessing the images went through
    images: Path  # .npy (N, size, size, 3) uint8
    labels: np.ndarray  # 0/1
    paths: list[str]
    samples: Path  # a few images for the timing loop
    skipped: dict[str, str]


def load_test_set(group: Group, settings: Settings, tmp: Path) -> TestSet:
    """Preprocess the group's test images (and 16 timing samples) into .npy files under `tmp`."""
    from dermedge.data.images import load_images
    from dermedge.runs import runs_root

    recs = _subset(_records(group, settings.data), settings.limit, settings.seed)
    if not recs:
        raise ValueError(f"{group.name}: no test images")
    contract = _contract(group)
    images, kept, bad = load_images(
        [r.path for r in recs],
        contract,
        cache_dir=runs_root() / "cache",
        desc=f"{group.name} test images",
    )
    labels = np.array([1 if recs[i].label == "malignant" else 0 for i in kept], dtype=np.int64)
    key = f"{group.name}-{contract.size}-{contract.crop}"
    img_path, sample_path = tmp / f"{key}-test.npy", tmp / f"{key}-samples.npy"
    np.save(img_path, images)
    np.save(sample_path, images[:16])
    return TestSet(
        contract.to_dict(), img_path, labels, [recs[i].path for i in kept], sample_path, bad
    )

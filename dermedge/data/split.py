"""Leakage-free, stratified, grouped, seeded train/val/test splits, written as a manifest.

No lesion group is in two splits; labels keep their proportions in each split; the same seed gives
the same split. Byte-identical copies are kept once, and lesions whose photos carry both labels are
left out as doubtful (both reported). The manifest (CSV + JSON) is what every later step reads.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dermedge.data.analysis import Analysis, leakage
from dermedge.data.dedup import FileHash, hash_files, near_duplicates
from dermedge.data.index import Index, Record
from dermedge.data.io import atomic_write_text

MODES = ("resplit", "given", "given-purged")
MANIFEST_COLUMNS = ["path", "sha256", "label", "group", "split", "source", "dx"]


@dataclass
class Split:
    """Records with their split assigned, plus what was left out and why."""

    records: list[Record]
    mode: str
    seed: int
    fractions: dict[str, float | str]
    dropped: list[dict[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {label: images}} of the split's records."""
        return split_counts(self.records)


def split_counts(records: list[Record]) -> dict[str, dict[str, int]]:
    """{split: {label: images}} of records (as model cards record them)."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        out[r.split or "?"][r.label] += 1
    return {s: dict(sorted(c.items())) for s, c in sorted(out.items())}


def assign_groups(
    groups: list[tuple[str, list[Record]]], fractions: dict[str, float], rng: random.Random
) -> None:
    """Fill the splits in order (test, val, then train) with whole groups, per label."""
    by_label: dict[str, list[tuple[str, list[Record]]]] = defaultdict(list)
    for g in groups:
        by_label[g[1][0].label].append(g)
    for label in sorted(by_label):
        items = sorted(by_label[label], key=lambda g: g[0])
        rng.shuffle(items)
        total = sum(len(m) for _, m in items)
        targets = [(name, frac * total) for name, frac in fractions.items() if frac > 0]
        filled = Counter[str]()
        for _, members in items:
            split = "train"
            for name, target in targets:
                if filled[name] + len(members) / 2 <= target:
                    split = name
                    break
            filled[split] += len(members)
            for r in members:
                r.split = split


def make_split(
    analysis: Analysis, mode: str = "resplit", val: float = 0.15, test: float = 0.15, seed: int = 0
) -> Split:
    """Split an analysed dataset. Modes: `resplit` (pool all, split leakage-free), `given` (keep
    the dataset's test split as is, carve val from train; leakage is reported, not removed),
    `given-purged` (keep the given test, drop train images whose lesion is in test)."""
    if mode not in MODES:
        raise ValueError(f"unknown split mode {mode!r}; expected one of {', '.join(MODES)}")
    has_given_test = any(r.split == "test" for r in analysis.records)
    if mode != "resplit" and not has_given_test:
        raise ValueError(f"mode {mode!r} needs a dataset with its own test split; use resplit")
    rng = random.Random(seed)
    dropped: list[dict[str, str]] = []
    conflicted = {p for paths in analysis.label_conflicts for p in paths}
    seen_sha: set[str] = set()
    records: list[Record] = []
    for r in sorted(analysis.records, key=lambda r: r.path):
        sha = analysis.hashes[r.path].sha256
        if r.path in conflicted:
            dropped.append({"path": r.path, "reason": "lesion has photos with both labels"})
        elif sha in seen_sha:
            dropped.append({"path": r.path, "reason": "byte-identical copy of another file"})
        else:
            seen_sha.add(sha)
            records.append(Record(r.path, r.label, r.source, r.group, r.split, r.dx))

    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.group or r.path].append(r)
    if mode == "resplit":
        assign_groups(sorted(groups.items()), {"test": test, "val": val}, rng)
        fractions: dict[str, float | str] = {"train": 1 - val - test, "val": val, "test": test}
    else:
        test_groups = {g for g, m in groups.items() if any(r.split == "test" for r in m)}
        if mode == "given-purged":
            keep = []
            for r in records:
                if r.split != "test" and (r.group or r.path) in test_groups:
                    dropped.append({"path": r.path, "reason": "same lesion as a test image"})
                else:
                    keep.append(r)
            records = keep
        pool = defaultdict(list)
        for r in records:
            if r.split != "test":
                pool[r.group or r.path].append(r)
        share = val / max(1e-9, 1 - test)
        assign_groups(sorted(pool.items()), {"val": share}, rng)
        fractions = {"train": 1 - share, "val": share, "test": "given"}
    return Split(records, mode, seed, fractions, dropped)


def extend_split(
    base: list[Record],
    extra: Analysis,
    own_splits: bool = False,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
) -> tuple[Split, Analysis]:
    """Add a second dataset to a manifest, leakage-free; the base's val and test stay as they were.

    An extra image is left out if its lesion (own group, or a near-identical photo) is in the base
    val/test, or it is a photo already in the base. The rest join train, or with `own_splits`
    are split (grouped, stratified, seeded) into train/val/test of their own, so the extra source
    is also validated and tested on (threshold choice across sources; a per-source test).
    """
    base_hashes, bad = hash_files([r.path for r in base], desc="hashing base manifest")
    if bad:
        raise ValueError(
            f"{len(bad)} images of the base manifest are unreadable, e.g. {next(iter(bad))}"
        )
    added, dropped = _screen_extras(base, base_hashes, extra)
    if own_splits:
        groups: dict[str, list[Record]] = defaultdict(list)
        for r in added:
            groups[r.group or r.path].append(r)
        assign_groups(sorted(groups.items()), {"test": test, "val": val}, random.Random(seed))
    records = [Record(r.path, r.label, r.source, r.group, r.split, r.dx) for r in base] + added
    fractions: dict[str, float | str] = (
        {"train": "base+extra", "val": f"base+extra {val}", "test": f"base+extra {test}"}
        if own_splits
        else {"train": "base+extra", "val": "base", "test": "base"}
    )
    return Split(
        records, "extend-splits" if own_splits else "extend", seed, fractions, dropped
    ), _combined_analysis(base, extra, records, base_hashes)


def _screen_extras(
    base: list[Record], base_hashes: dict[str, FileHash], extra: Analysis
) -> tuple[list[Record], list[dict[str, str]]]:
    """The extra records that may join the base (as train), and those left out with the reason."""
    extras = list(extra.records)
    pairs = near_duplicates(
        [extra.hashes[r.path] for r in extras], [base_hashes[r.path] for r in base]
    )
    base_sha = {base_hashes[r.path].sha256 for r in base}
    split_of_group: dict[str, set[str]] = defaultdict(set)
    twin: dict[str, Record] = {}
    for i, j, _ in pairs:
        split_of_group[extras[i].group or extras[i].path].add(base[j].split or "train")
        twin[extras[i].path] = base[j]
    added: list[Record] = []
    dropped: list[dict[str, str]] = []
    conflicted = {p for paths in extra.label_conflicts for p in paths}
    for r in sorted(extras, key=lambda r: r.path):
        splits = split_of_group.get(r.group or r.path, set())
        if r.path in conflicted:
            dropped.append({"path": r.path, "reason": "lesion has photos with both labels"})
        elif splits & {"val", "test"}:
            dropped.append({"path": r.path, "reason": "same lesion as a base val/test image"})
        elif r.path in twin and twin[r.path].label != r.label:
            dropped.append({"path": r.path, "reason": "label differs from the base's photo"})
        elif r.path in twin or extra.hashes[r.path].sha256 in base_sha:
            dropped.append({"path": r.path, "reason": "same photo already in the base manifest"})
        else:
            group = f"{extra.index.layout}:{r.group}" if r.group and ":" not in r.group else r.group
            added.append(Record(r.path, r.label, r.source, group, "train", r.dx))
    return added, dropped


def _combined_analysis(
    base: list[Record], extra: Analysis, records: list[Record], base_hashes: dict[str, FileHash]
) -> Analysis:
    """An Analysis of base + extra records, rooted at the two datasets' common folder."""
    roots = [Path(os.path.commonpath([r.path for r in base])), Path(extra.index.root)]
    return Analysis(
        Index(os.path.commonpath([str(p) for p in roots]), "combined"),
        records,
        {**base_hashes, **extra.hashes},
        link_source=extra.index.root,
    )


def _relative(path: str, root: Path) -> str:
    """`path` relative to `root` in POSIX form, or absolute when it lies outside `root`."""
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


def write_manifest(
    split: Split, analysis: Analysis, out_dir: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write `manifest.csv` (paths relative to the data root) and `manifest.json` (with `extra`
    keys, e.g. a recipe's datasets); returns the CSV."""
    out_dir = Path(out_dir)
    root = Path(analysis.index.root).resolve()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    order = {"train": 0, "val": 1, "test": 2}
    for r in sorted(split.records, key=lambda r: (order.get(r.split or "", 3), r.path)):
        sha = analysis.hashes[r.path].sha256
        writer.writerow(
            [_relative(r.path, root), sha, r.label, r.group or "", r.split, r.source, r.dx or ""]
        )
    text = buf.getvalue()
    csv_path = out_dir / "manifest.csv"
    atomic_write_text(csv_path, text)
    meta: dict[str, Any] = {
        "root": str(root),
        "layout": analysis.index.layout,
        "linked_to": analysis.link_source,
        "mode": split.mode,
        "seed": split.seed,
        "fractions": split.fractions,
        "counts": split.counts(),
        "leakage": leakage(split.records),
        "dropped": split.dropped,
        "csv_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    atomic_write_text(out_dir / "manifest.json", json.dumps(meta, indent=2))
    return csv_path

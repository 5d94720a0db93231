"""Check a dataset before anyone trains on it: unreadable files, duplicates, label conflicts, leakage.

`analyse` hashes every image, merges byte-identical files, near-duplicates (pHash) and the
dataset's own lesion groups into one group per lesion, and counts how many images of each split
have a twin in another split. Optionally it borrows lesion ids from a second dataset (`link`):
`isic-mvb` images are HAM10000 photos, so HAM's `lesion_id` reveals different photos of one lesion.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermedge.data.dedup import (
    NEAR_DUP_BITS,
    NEAR_DUP_LEVELS,
    FileHash,
    UnionFind,
    hash_files,
    near_duplicates,
)
from dermedge.data.index import Index, Problem, Record


@dataclass
class Analysis:
    """An index with every readable image hashed and grouped by lesion, plus what was found."""

    index: Index
    records: list[Record]
    hashes: dict[str, FileHash]
    exact_duplicates: list[list[str]] = field(default_factory=list)
    near_duplicates: list[tuple[str, str, int]] = field(default_factory=list)
    label_conflicts: list[list[str]] = field(default_factory=list)
    linked: int = 0
    link_source: str | None = None
    link_label_disagreements: list[dict[str, str]] = field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        return self.index.problems

    def groups(self) -> dict[str, list[Record]]:
        """Lesion group -> its records."""
        out: dict[str, list[Record]] = defaultdict(list)
        for r in self.records:
            out[r.group or r.path].append(r)
        return out


def _link_groups(records: list[Record], hashes: dict[str, FileHash], other: Index, max_bits: int,
                 disagreements: list[dict[str, str]]) -> tuple[dict[str, str], int]:  # fmt: skip
    """Map our paths to the other dataset's lesion groups, through near-identical photos; note
    photos whose label differs from the linked dataset's (a doubtful label in one of them)."""
    theirs = [r for r in other.records if r.group]
    other_hashes, _ = hash_files([r.path for r in theirs], desc="hashing link set")
    theirs = [r for r in theirs if r.path in other_hashes]
    pairs = near_duplicates(
        [hashes[r.path] for r in records], [other_hashes[r.path] for r in theirs], max_bits
    )
    links: dict[str, str] = {}
    for i, j, _ in pairs:
        links.setdefault(records[i].path, f"{other.layout}:{theirs[j].group}")
        if records[i].label != theirs[j].label:
            disagreements.append({"path": records[i].path, "label": records[i].label,
                                  "linked_path": theirs[j].path, "linked_label": theirs[j].label,
                                  "linked_dx": theirs[j].dx or ""})  # fmt: skip
    return links, len({records[i].path for i, _, _ in pairs})


def _name_groups(records: list[Record], uf: UnionFind, link_names: dict[str, str],
                 root_dir: Path) -> None:  # fmt: skip
    """Name each merged group by a lesion id it contains, else by its first file (relative)."""
    names: dict[str, str] = {}
    for r in sorted(records, key=lambda r: r.path):
        root = uf.find(r.path)
        lesion = r.group or link_names.get(r.path)
        if lesion and (root not in names or names[root].startswith("file:")):
            names[root] = lesion
        elif root not in names:
            names[root] = "file:" + os.path.relpath(r.path, root_dir)
    for r in records:
        r.group = names[uf.find(r.path)]


def analyse(index: Index, link: Index | None = None, max_bits: int = NEAR_DUP_BITS,
            progress: bool = True) -> Analysis:  # fmt: skip
    """Hash, de-duplicate and group an index; unreadable images become problems."""
    hashes, bad = hash_files([r.path for r in index.records], progress=progress)
    for path, reason in bad.items():
        index.problems.append(Problem(path, reason))
    records = [r for r in index.records if r.path in hashes]
    uf = UnionFind(r.path for r in records)

    by_group: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.group:
            by_group[r.group].append(r)
    for members in by_group.values():
        for r in members[1:]:
            uf.union(members[0].path, r.path)

    by_sha: dict[str, list[str]] = defaultdict(list)
    for r in records:
        by_sha[hashes[r.path].sha256].append(r.path)
    exact = [paths for paths in by_sha.values() if len(paths) > 1]
    for paths in exact:
        for p in paths[1:]:
            uf.union(paths[0], p)

    near = near_duplicates([hashes[r.path] for r in records], max_bits=max_bits)
    near_named = [(records[i].path, records[j].path, d) for i, j, d in near]
    for a, b, _ in near_named:
        uf.union(a, b)

    analysis = Analysis(index, records, hashes, exact, near_named)
    links: dict[str, str] = {}
    if link is not None:
        links, analysis.linked = _link_groups(records, hashes, link, max_bits,
                                              analysis.link_label_disagreements)  # fmt: skip
        analysis.link_source = link.root
        first_by_group: dict[str, str] = {}
        for path, group in links.items():
            uf.union(first_by_group.setdefault(group, path), path)

    _name_groups(records, uf, links, Path(index.root))
    for members in analysis.groups().values():
        if len({m.label for m in members}) > 1:
            analysis.label_conflicts.append(sorted(m.path for m in members))
    return analysis


def leakage(records: list[Record]) -> dict[str, Any]:
    """Per split pair, how many images of the later split have a same-lesion twin in the earlier."""
    splits_of_group: dict[str, set[str]] = defaultdict(set)
    for r in records:
        splits_of_group[r.group or r.path].add(r.split or "all")
    out: dict[str, Any] = {}
    order = {"train": 0, "val": 1, "test": 2}
    names = sorted({r.split or "all" for r in records}, key=lambda s: (order.get(s, 3), s))
    for ia, a in enumerate(names):
        for b in names[ia + 1 :]:
            pair = [r for r in records if (r.split or "all") == b
                    and a in splits_of_group[r.group or r.path]]  # fmt: skip
            shared = {r.group for r in pair}
            out[f"{a}/{b}"] = {"images_in_" + b + "_with_twin_in_" + a: len(pair),
                               "shared_groups": len(shared)}  # fmt: skip
    return out


def summary(analysis: Analysis) -> dict[str, Any]:
    """JSON-ready report: counts per class and split, sizes, duplicates, leakage, problems."""
    recs = analysis.records
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in recs:
        counts[r.split or "all"][r.label] += 1
    sizes = Counter(f"{h.width}x{h.height}" for h in analysis.hashes.values())
    groups = analysis.groups()
    exact_extra = sum(len(p) - 1 for p in analysis.exact_duplicates)
    return {
        "root": analysis.index.root,
        "layout": analysis.index.layout,
        "images": len(recs),
        "counts": {s: dict(c) for s, c in sorted(counts.items())},
        "image_sizes": dict(sizes.most_common(10)),
        "groups": len(groups),
        "multi_image_groups": sum(1 for g in groups.values() if len(g) > 1),
        "exact_duplicate_sets": len(analysis.exact_duplicates),
        "exact_duplicate_extra_files": exact_extra,
        "exact_duplicates": analysis.exact_duplicates,
        "near_duplicate_pairs": len(analysis.near_duplicates),
        "near_duplicate_rule": f"pHash <= {NEAR_DUP_BITS} bits and thumbnail MAD <= {NEAR_DUP_LEVELS}",
        "near_duplicates": [list(p) for p in analysis.near_duplicates],
        "linked_to": analysis.link_source,
        "linked_images": analysis.linked,
        "link_label_disagreements": analysis.link_label_disagreements,
        "label_conflict_groups": len(analysis.label_conflicts),
        "label_conflicts": analysis.label_conflicts,
        "leakage": leakage(recs),
        "problems": [{"path": p.path, "reason": p.reason} for p in analysis.problems],
    }

"""Check a dataset before anyone trains on it: unreadable files, duplicates, label conflicts, leakage.

`analyse` hashes every image, merges byte-identical files, near-duplicates (pHash) and the
dataset's own lesion groups into one group per lesion, and names every image of each split that
has a twin in an earlier split (same photo, or same lesion id). Optionally it borrows lesion ids
from a second dataset (`link`): `isic-mvb` images are HAM10000 photos, so HAM's `lesion_id`
reveals different photos of one lesion. `shortcut_audit` checks the label balance per source (and
per linked / unlinked part): a source that is nearly all one class lets a model learn where a
photo comes from instead of what the lesion is.
"""

from __future__ import annotations

import math
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
    thumb_distance,
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
    linked_paths: set[str] = field(default_factory=set)
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


def _link_groups(
    records: list[Record],
    hashes: dict[str, FileHash],
    other: Index,
    max_bits: int,
    disagreements: list[dict[str, str]],
) -> dict[str, str]:
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
            disagreements.append(
                {
                    "path": records[i].path,
                    "label": records[i].label,
                    "linked_path": theirs[j].path,
                    "linked_label": theirs[j].label,
                    "linked_dx": theirs[j].dx or "",
                }
            )
    return links


def _name_groups(
    records: list[Record], uf: UnionFind, link_names: dict[str, str], root_dir: Path
) -> None:
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


def analyse(
    index: Index, link: Index | None = None, max_bits: int = NEAR_DUP_BITS, progress: bool = True
) -> Analysis:
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
        links = _link_groups(records, hashes, link, max_bits, analysis.link_label_disagreements)
        analysis.linked_paths = set(links)
        analysis.linked = len(links)
        analysis.link_source = link.root
        first_by_group: dict[str, str] = {}
        for path, group in links.items():
            uf.union(first_by_group.setdefault(group, path), path)

    _name_groups(records, uf, links, Path(index.root))
    for members in analysis.groups().values():
        if len({m.label for m in members}) > 1:
            analysis.label_conflicts.append(sorted(m.path for m in members))
    return analysis


SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
SAME_PHOTO, SAME_LESION = "same photo", "same lesion id"


def _twin_reason(a: FileHash | None, b: FileHash | None) -> str:
    """Why two files share a lesion: byte-identical or confirmed near-duplicate, else by id."""
    if a is None or b is None:
        return SAME_LESION
    if a.sha256 == b.sha256:
        return SAME_PHOTO
    close = bin(a.phash ^ b.phash).count("1") <= NEAR_DUP_BITS
    return SAME_PHOTO if close and thumb_distance(a, b) <= NEAR_DUP_LEVELS else SAME_LESION


def _leaking_image(r: Record, twins: list[Record], hashes: dict[str, FileHash]) -> dict[str, Any]:
    """One leaking image with its twins in the earlier split, each with the reason."""
    named = [
        {
            "path": t.path,
            "split": t.split or "all",
            "reason": _twin_reason(hashes.get(r.path), hashes.get(t.path)),
        }
        for t in sorted(twins, key=lambda t: t.path)
    ]
    reason = SAME_PHOTO if any(t["reason"] == SAME_PHOTO for t in named) else SAME_LESION
    return {"path": r.path, "label": r.label, "group": r.group, "reason": reason, "twins": named}


def leakage(records: list[Record], hashes: dict[str, FileHash] | None = None) -> dict[str, Any]:
    """Per split pair, how many images of the later split have a same-lesion twin in the earlier;
    given the hashes, also every such image with its twins and why ("same photo"/"same lesion id")."""
    members: dict[str, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        members[r.group or r.path][r.split or "all"].append(r)
    out: dict[str, Any] = {}
    names = sorted({r.split or "all" for r in records}, key=lambda s: (SPLIT_ORDER.get(s, 3), s))
    for ia, a in enumerate(names):
        for b in names[ia + 1 :]:
            pair = [
                r for r in records if (r.split or "all") == b and a in members[r.group or r.path]
            ]
            shared = {r.group for r in pair}
            entry: dict[str, Any] = {
                "images_in_" + b + "_with_twin_in_" + a: len(pair),
                "shared_groups": len(shared),
            }
            if hashes is not None:
                images = [
                    _leaking_image(r, members[r.group or r.path][a], hashes)
                    for r in sorted(pair, key=lambda r: r.path)
                ]
                reasons = Counter(i["reason"] for i in images)
                entry["same_photo"] = reasons[SAME_PHOTO]
                entry["same_lesion_id"] = reasons[SAME_LESION]
                entry["images"] = images
            out[f"{a}/{b}"] = entry
    return out


SHORTCUT_MIN_IMAGES = 20  # smaller parts are too few to warn about
SHORTCUT_MAX_SHARE = 0.95  # a part with at least this share of one class is a shortcut


def _balance(name: str, records: list[Record], **keys: Any) -> dict[str, Any]:
    """Label counts of one part of the data, its majority class and that class's share."""
    c = Counter(r.label for r in records)
    majority, n = max(sorted(c.items()), key=lambda kv: kv[1]) if c else ("", 0)
    return {
        "name": name,
        **keys,
        "images": len(records),
        "benign": c["benign"],
        "malignant": c["malignant"],
        "majority": majority,
        "share": round(n / len(records), 4) if records else 0.0,
    }


def _percent(share: float) -> str:
    """A share as a percentage that never rounds up to 100% (99.6%, 100%)."""
    return f"{math.floor(share * 1000) / 10:g}%"


def shortcut_warning(part: dict[str, Any]) -> str:
    """The plain-words warning for a part of the data that is (nearly) all one class."""
    return (
        f"WARNING shortcut: {part['name']} is {_percent(part['share'])} {part['majority']} "
        f"({part['images']} images): a model can learn where a photo comes from instead of "
        "what the lesion is"
    )


def shortcut_audit(
    records: list[Record],
    linked_paths: set[str] | None = None,
    link_name: str | None = None,
    by_split: bool = False,
) -> dict[str, Any]:
    """Label balance per source, per linked / unlinked part of a source and (by_split) per
    source x split, with a warning for each source or part that is (nearly) all one class."""
    by_source: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_source[r.source].append(r)
    sources = [_balance(s, rs, source=s) for s, rs in sorted(by_source.items())]
    linked_paths = linked_paths or set()
    other = link_name or "the linked dataset"
    subs = []
    for s, rs in sorted(by_source.items()):
        inside = [r for r in rs if r.path in linked_paths]
        if inside:
            outside = [r for r in rs if r.path not in linked_paths]
            subs.append(_balance(f"{s} linked to {other}", inside, source=s, linked=True))
            subs.append(_balance(f"{s} not linked to {other}", outside, source=s, linked=False))
    splits: list[dict[str, Any]] = []
    if by_split:
        cells: dict[tuple[str, str], list[Record]] = defaultdict(list)
        for r in records:
            cells[(r.source, r.split or "all")].append(r)
        order = sorted(cells, key=lambda k: (k[0], SPLIT_ORDER.get(k[1], 3), k[1]))
        splits = [_balance(f"{s} {sp}", cells[(s, sp)], source=s, split=sp) for s, sp in order]
    warn = [
        shortcut_warning(p)
        for p in sources + subs
        if p["images"] >= SHORTCUT_MIN_IMAGES and p["share"] >= SHORTCUT_MAX_SHARE
    ]
    return {
        "rule": {"min_images": SHORTCUT_MIN_IMAGES, "max_share": SHORTCUT_MAX_SHARE},
        "sources": sources,
        "sub_sources": subs,
        "source_splits": splits,
        "warnings": warn,
    }


def link_name(analysis: Analysis) -> str | None:
    """The linked dataset's name (its folder's name), if the analysis was linked to one."""
    return Path(analysis.link_source).name if analysis.link_source else None


def summary(analysis: Analysis) -> dict[str, Any]:
    """JSON-ready report: counts per class and split, sizes, duplicates, shortcuts, leakage,
    problems and notes (rows kept after a repair)."""
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
        "shortcut_audit": shortcut_audit(recs, analysis.linked_paths, link_name(analysis)),
        "leakage": leakage(recs, analysis.hashes),
        "problems": [{"path": p.path, "reason": p.reason} for p in analysis.problems],
        "notes": [{"path": p.path, "reason": p.reason} for p in analysis.index.notes],
    }

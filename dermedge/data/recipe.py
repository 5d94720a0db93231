"""One multi-source split from a small data file: several datasets, each with a role.

A recipe (TOML or JSON) names datasets in order of priority:

    seed = 0
    val = 0.15
    test = 0.15
    [[dataset]]
    path = "isic-mvb"        # under the data root ($DERMEDGE_DATA, --data-root) or absolute
    mode = "given"           # keep the splits it gives, carve the missing ones (val/test)
    [[dataset]]
    path = "ham10000"
    source_by = "dataset"    # a CSV column naming sub-sources (ham10000:vidir_molemax, ...)
    [[dataset]]
    path = "ham10000-thumbs"
    role = "link"            # grouping only: ties other sets' photos to its lesion ids
    [[dataset]]
    path = "derm7pt"
    role = "external"        # never trained on: overlap with it is removed from the others

Roles: `split` (train/val/test of its own: `resplit`, or `given`), `train` (train only),
`link` and `external` (never in the manifest). Every image of every dataset is hashed and grouped
once (lesion ids, byte-identical and near-identical photos, the same ISIC image id in two sets),
so a lesion is in one split whichever datasets hold it; the same photo in several sets is kept
once, from the first dataset that has it; a lesion that is also in an external set is left out.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermedge.data.analysis import Analysis, analyse
from dermedge.data.dedup import UnionFind
from dermedge.data.index import Index, Record, read_dataset
from dermedge.data.manifest import DATA_ENV
from dermedge.data.split import Split, assign_groups

ROLES = ("split", "train", "link", "external")
RECIPE_MODES = ("resplit", "given")
DATASET_KEYS = {"path", "role", "mode", "source_by", "name"}
TOP_KEYS = {"name", "seed", "val", "test", "dataset", "description"}
ISIC_ID = re.compile(r"^ISIC_\d{7}$")


class RecipeError(ValueError):
    """A recipe that cannot be read or used; the message is one line a person can act on."""


@dataclass
class DatasetSpec:
    """One dataset of a recipe: where it is, what it is for and how it is split."""

    path: Path
    role: str = "split"
    mode: str = "resplit"
    source_by: str | None = None

    @property
    def name(self) -> str:
        """The dataset's name: its folder's name."""
        return self.path.name


@dataclass
class Recipe:
    """The datasets of a multi-source split, in priority order, and the split's fractions."""

    datasets: list[DatasetSpec]
    seed: int = 0
    val: float = 0.15
    test: float = 0.15
    name: str | None = None
    text: dict[str, Any] = field(default_factory=dict)  # the file as read, for the manifest


def _parse(path: Path) -> dict[str, Any]:
    """The recipe file's content: TOML (.toml) or JSON (anything else)."""
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError as e:  # Python 3.10
                raise RecipeError(f"{path}: TOML needs Python 3.11+; write it as JSON") from e
            return tomllib.loads(path.read_text(encoding="utf-8"))
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the recipe: {e.strerror}") from e
    except ValueError as e:  # json.JSONDecodeError and tomllib.TOMLDecodeError
        raise RecipeError(f"{path}: not a valid recipe file: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a table (JSON object) with a `dataset` list")
    return data


def data_root(recipe_path: Path, override: str | None) -> Path:
    """Where relative dataset paths live: --data-root, $DERMEDGE_DATA, else the recipe's folder."""
    return Path(override or os.environ.get(DATA_ENV) or recipe_path.parent).expanduser()


def _spec(item: Any, root: Path, where: str) -> DatasetSpec:
    """One `[[dataset]]` entry, checked: known keys, a role, a mode, an existing folder."""
    if not isinstance(item, dict) or "path" not in item:
        raise RecipeError(f"{where}: each dataset needs a `path`")
    unknown = set(item) - DATASET_KEYS
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    role, mode = item.get("role", "split"), item.get("mode", "resplit")
    if role not in ROLES:
        raise RecipeError(f"{where}: role {role!r}; expected one of {', '.join(ROLES)}")
    if mode not in RECIPE_MODES:
        raise RecipeError(f"{where}: mode {mode!r}; expected one of {', '.join(RECIPE_MODES)}")
    path = Path(str(item["path"])).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_dir():
        raise RecipeError(f"{where}: dataset folder not found: {path} (set {DATA_ENV})")
    return DatasetSpec(path.resolve(), role, mode, item.get("source_by") or None)


def _fraction(data: dict[str, Any], key: str, default: float, path: Path) -> float:
    """A split fraction of the recipe, refused outside [0, 0.5]."""
    value = data.get(key, default)
    if not isinstance(value, int | float) or not 0 <= value <= 0.5:
        raise RecipeError(f"{path}: {key} = {value!r}; expected a fraction between 0 and 0.5")
    return float(value)


def read_recipe(path: str | Path, root: str | None = None) -> Recipe:
    """Read and check a recipe file; dataset paths resolved against `data_root`."""
    path = Path(path)
    data = _parse(path)
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise RecipeError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    items = data.get("dataset")
    if not isinstance(items, list) or not items:
        raise RecipeError(f"{path}: no datasets (a `[[dataset]]` list with a `path` each)")
    base = data_root(path, root)
    specs = [_spec(item, base, f"{path} dataset {i + 1}") for i, item in enumerate(items)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise RecipeError(f"{path}: a dataset is named twice ({', '.join(names)})")
    if not any(s.role in ("split", "train") for s in specs):
        raise RecipeError(f"{path}: no dataset to train on (role split or train)")
    seed = data.get("seed", 0)
    if not isinstance(seed, int):
        raise RecipeError(f"{path}: seed = {seed!r}; expected an integer")
    val, test = _fraction(data, "val", 0.15, path), _fraction(data, "test", 0.15, path)
    return Recipe(specs, seed, val, test, data.get("name"), data)


# --- pooling ------------------------------------------------------------------------------------


def _namespaced(index: Index) -> None:
    """Prefix each record's group with its layout, so that lesion ids of two readers of one
    dataset meet (ham10000 and ham10000-thumbs) and ids of different datasets never collide."""
    for r in index.records:
        if r.group:
            r.group = f"{index.layout}:{r.group}"


def read_all(recipe: Recipe) -> list[Index]:
    """Every dataset of the recipe read, with namespaced groups; RecipeError if one is unusable."""
    out = []
    for spec in recipe.datasets:
        try:
            index = read_dataset(spec.path, spec.source_by)
        except (FileNotFoundError, ValueError, OSError) as e:
            raise RecipeError(f"{spec.name}: {e}") from e
        if not index.records:
            raise RecipeError(f"{spec.name}: no usable labelled images")
        _namespaced(index)
        out.append(index)
    return out


def pool(indexes: list[Index], progress: bool = True) -> Analysis:
    """All records in one analysis: hashed, near-duplicates found across every dataset, grouped."""
    roots = [ix.root for ix in indexes]
    combined = Index(os.path.commonpath(roots), "recipe")
    for ix in indexes:
        combined.records += ix.records
        combined.problems += ix.problems
        combined.notes += ix.notes
    return analyse(combined, progress=progress)


def photo_clusters(analysis: Analysis) -> UnionFind:
    """Sets of records that are one photo: byte-identical, near-identical, or one ISIC image id."""
    uf = UnionFind(r.path for r in analysis.records)
    for paths in analysis.exact_duplicates:
        for p in paths[1:]:
            uf.union(paths[0], p)
    for a, b, _ in analysis.near_duplicates:
        uf.union(a, b)
    by_id: dict[str, str] = {}
    for r in analysis.records:
        stem = Path(r.path).stem
        if ISIC_ID.match(stem):
            uf.union(by_id.setdefault(stem, r.path), r.path)
    return uf


@dataclass
class _Pooled:
    """Records of the pool sorted into kept ones, left-out ones and what the external sets share."""

    kept: list[Record] = field(default_factory=list)
    dropped: list[dict[str, str]] = field(default_factory=list)
    external_overlap: Counter[str] = field(default_factory=Counter)


def _dataset_of(records: list[Record], specs: list[DatasetSpec]) -> dict[str, DatasetSpec]:
    """Path -> the spec of the dataset that holds it (the longest root that contains it)."""
    roots = sorted(specs, key=lambda s: len(str(s.path)), reverse=True)
    out = {}
    for r in records:
        out[r.path] = next(s for s in roots if Path(r.path).is_relative_to(s.path))
    return out


def _conflicted(records: list[Record], photos: UnionFind) -> set[str]:
    """Paths of photos, or lesions (patients are not lesions), that carry both labels."""
    labels: dict[str, set[str]] = defaultdict(set)
    keys: dict[str, list[str]] = defaultdict(list)
    for r in records:
        key = [f"photo:{photos.find(r.path)}"]
        if r.group and ":patient:" not in r.group and not r.group.startswith("file:"):
            key.append(f"lesion:{r.group}")
        for k in key:
            labels[k].add(r.label)
            keys[k].append(r.path)
    return {p for k, ls in labels.items() if len(ls) > 1 for p in keys[k]}


def _keep_first_copies(analysis: Analysis, specs: list[DatasetSpec]) -> _Pooled:
    """One record per photo (the first dataset's, in recipe order), never a link or external
    set's; lesions shared with an external set and photos/lesions with both labels left out."""
    of = _dataset_of(analysis.records, specs)
    rank = {s.name: i for i, s in enumerate(specs)}
    photos = photo_clusters(analysis)
    conflicted = _conflicted(analysis.records, photos)
    external_groups = {
        r.group or r.path: of[r.path].name
        for r in analysis.records
        if of[r.path].role == "external"
    }
    out = _Pooled()
    first: dict[str, Record] = {}
    order = sorted(analysis.records, key=lambda r: (rank[of[r.path].name], r.path))
    for r in order:
        spec = of[r.path]
        if spec.role in ("link", "external"):
            continue
        ext = external_groups.get(r.group or r.path)
        twin = first.get(photos.find(r.path))
        entry = {"path": r.path}
        if ext:
            out.external_overlap[f"{spec.name} ~ {ext}"] += 1
            entry["reason"] = f"same lesion or photo as an image of the external set {ext}"
        elif r.path in conflicted:
            entry["reason"] = "photo or lesion has both labels across the datasets"
        elif twin is not None:
            entry["reason"] = f"same photo as an image of {of[twin.path].name}"
            entry["twin"] = twin.path
        else:
            first[photos.find(r.path)] = r
            out.kept.append(Record(r.path, r.label, r.source, r.group, r.split, r.dx))
            continue
        out.dropped.append(entry)
    return out


def _missing_fractions(
    spec: DatasetSpec, given: set[str], val: float, test: float
) -> dict[str, float]:
    """The split fractions a dataset's groups are drawn into: all for resplit, else only the
    splits it does not give (val/test), as shares of what it gives as train."""
    if spec.role == "train":
        return {}
    if spec.mode == "resplit":
        return {"test": test, "val": val}
    taken = (test if "test" in given else 0.0) + (val if "val" in given else 0.0)
    rest = max(1e-9, 1 - taken)
    return {k: f / rest for k, f in (("test", test), ("val", val)) if k not in given}


def assign_splits(
    kept: list[Record], specs: list[DatasetSpec], val: float, test: float, seed: int
) -> list[dict[str, str]]:
    """Give every lesion group one split, drawn by its first dataset (recipe order; grouped,
    stratified, seeded); a `given` dataset's val/test pull their whole group along. Returns the
    records left out (a train-only dataset's image whose lesion went to val/test)."""
    of = _dataset_of(kept, specs)
    rank = {s.name: i for i, s in enumerate(specs)}
    given_by = {
        s.name: {str(r.split) for r in kept if of[r.path] is s and r.split in ("val", "test")}
        for s in specs
        if s.mode == "given"
    }
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in kept:
        groups[r.group or r.path].append(r)
    home: dict[str, list[tuple[str, list[Record]]]] = defaultdict(list)
    for g, members in sorted(groups.items()):
        given = {
            m.split for m in members if of[m.path].mode == "given" and m.split in ("val", "test")
        }
        forced = "test" if "test" in given else ("val" if given else None)
        first = min(members, key=lambda m: rank[of[m.path].name])
        if forced or of[first.path].role == "train":
            for m in members:
                m.split = forced or "train"
        else:
            for m in members:
                m.split = "train"
            home[of[first.path].name].append((g, members))
    rng = random.Random(seed)
    for spec in specs:
        fractions = _missing_fractions(spec, given_by.get(spec.name, set()), val, test)
        if home.get(spec.name) and fractions:
            assign_groups(home[spec.name], fractions, rng)
    return _drop_train_only_in_eval(kept, of)


def _drop_train_only_in_eval(
    kept: list[Record], of: dict[str, DatasetSpec]
) -> list[dict[str, str]]:
    """Remove (in place) records of train-only datasets whose group went to val or test."""
    dropped = []
    for r in list(kept):
        if of[r.path].role == "train" and r.split in ("val", "test"):
            kept.remove(r)
            why = f"same lesion as a {r.split} image; its dataset is train-only"
            dropped.append({"path": r.path, "reason": why})
    return dropped


def recipe_split(recipe: Recipe, progress: bool = True) -> tuple[Split, Analysis, dict[str, Any]]:
    """(Split, pooled Analysis, report) of a recipe: read, pool, de-duplicate, assign."""
    indexes = read_all(recipe)
    analysis = pool(indexes, progress=progress)
    pooled = _keep_first_copies(analysis, recipe.datasets)
    dropped = pooled.dropped + assign_splits(
        pooled.kept, recipe.datasets, recipe.val, recipe.test, recipe.seed
    )
    fractions: dict[str, float | str] = {
        s.name: ("external" if s.role == "external" else s.role if s.role != "split" else s.mode)
        for s in recipe.datasets
    }
    fractions.update({"val": recipe.val, "test": recipe.test})
    split = Split(pooled.kept, "recipe", recipe.seed, fractions, dropped)
    return split, analysis, _report(recipe, indexes, split, pooled)


def _report(recipe: Recipe, indexes: list[Index], split: Split, pooled: _Pooled) -> dict[str, Any]:
    """What the manifest's JSON records beside the split: the recipe, missing images per
    dataset, why images were left out (counted), and the external sets' overlap."""
    reasons = Counter(d["reason"] for d in split.dropped)
    return {
        "recipe": recipe.text,
        "datasets": [
            {
                "name": s.name,
                "path": str(s.path),
                "role": s.role,
                "mode": s.mode,
                "source_by": s.source_by,
                "images_read": len(ix.records),
                "missing_images": len(ix.missing),
            }
            for s, ix in zip(recipe.datasets, indexes, strict=True)
        ],
        "missing_images": [
            {"path": p.path, "reason": p.reason} for ix in indexes for p in ix.missing
        ],
        "dropped_by_reason": dict(reasons.most_common()),
        "external": [s.name for s in recipe.datasets if s.role == "external"],
        "external_overlap": dict(pooled.external_overlap),
    }

"""Read the dataset layouts users arrive with into one index of (path, label, group, source).

Layouts: class folders (`ROOT/<split>/<class>/*` or `ROOT/<class>/*`), HAM10000
(`HAM10000_metadata.csv` + image folders) and ISIC Archive exports from `isic-cli`
(`metadata.csv` with `isic_id` and `benign_malignant`/`diagnosis` columns). Problems (unknown
class folders, rows without a file, unlabelled rows) are collected as `Problem`s, never raised.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}  # fmt: skip

# Lesion names and HAM10000 / ISIC diagnosis codes -> binary label.
MALIGNANT_NAMES = {
    "malignant", "melanoma", "mel", "bcc", "basal cell carcinoma", "akiec",
    "actinic keratosis", "actinic keratoses", "squamous cell carcinoma", "scc",
    "intraepithelial carcinoma", "melanoma metastasis", "cancer",
}  # fmt: skip
BENIGN_NAMES = {
    "benign", "nevus", "nevi", "naevus", "nv", "bkl", "benign keratosis",
    "seborrheic keratosis", "solar lentigo", "lentigo nos", "lichenoid keratosis",
    "df", "dermatofibroma", "vasc", "vascular lesion", "angioma", "pyogenic granuloma",
    "hemorrhage", "atypical melanocytic proliferation",
}  # fmt: skip
HAM_MALIGNANT_DX = {"mel", "bcc", "akiec"}


@dataclass
class Record:
    """One labelled image. `group` ties images of one lesion together (None: its own group)."""

    path: str
    label: str
    source: str
    group: str | None = None
    split: str | None = None
    dx: str | None = None


@dataclass
class Problem:
    """A file or row that was skipped, with the reason a person can act on."""

    path: str
    reason: str


@dataclass
class Index:
    """The images of one dataset, plus everything that was skipped and why."""

    root: str
    layout: str
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def label_for_name(name: str) -> str | None:
    """Map a class folder or diagnosis name to "benign"/"malignant", case-insensitively."""
    key = name.strip().lower().replace("_", " ").replace("-", " ")
    if key in MALIGNANT_NAMES:
        return "malignant"
    if key in BENIGN_NAMES:
        return "benign"
    return None


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_class_folders(root: Path) -> Index:
    """Read `ROOT/<split>/<class>/*` or `ROOT/<class>/*`."""
    index = Index(root=str(root), layout="class-folders")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_NAMES]
    if split_dirs:
        for d in subdirs:
            if d not in split_dirs:
                index.problems.append(Problem(str(d), "folder is not a split (train/val/test)"))
        pairs: list[tuple[str | None, Path]] = [
            (SPLIT_NAMES[d.name.lower()], d) for d in split_dirs
        ]
    else:
        pairs = [(None, root)]
    for split, base in pairs:
        for class_dir in sorted(d for d in base.iterdir() if d.is_dir()):
            label = label_for_name(class_dir.name)
            if label is None:
                index.problems.append(
                    Problem(str(class_dir), f"unknown class folder {class_dir.name!r}")
                )
                continue
            for f in _files_in(class_dir):
                if not _is_image_name(f):
                    index.problems.append(Problem(str(f), "not an image file name"))
                    continue
                index.records.append(Record(str(f), label, "folders", split=split,
                                            dx=class_dir.name.lower()))  # fmt: skip
    return index


def _image_lookup(root: Path) -> dict[str, Path]:
    """Image stem -> path for every image under root (HAM10000 ships several part folders)."""
    return {p.stem: p for p in sorted(root.rglob("*")) if p.is_file() and _is_image_name(p)}


def read_ham10000(root: Path, csv_path: Path | None = None) -> Index:
    """Read HAM10000: metadata CSV (lesion_id, image_id, dx, ...) plus its image folders."""
    csv_path = csv_path or root / "HAM10000_metadata.csv"
    index = Index(root=str(root), layout="ham10000")
    images = _image_lookup(root)
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            image_id, dx = (
                (row.get("image_id") or "").strip(),
                (row.get("dx") or "").strip().lower(),
            )
            path = images.get(image_id)
            if path is None:
                index.problems.append(
                    Problem(f"{csv_path}:{image_id}", "CSV row has no image file")
                )
                continue
            label = "malignant" if dx in HAM_MALIGNANT_DX else label_for_name(dx)
            if label is None:
                index.problems.append(Problem(str(path), f"unknown dx {dx!r}"))
                continue
            group = (row.get("lesion_id") or "").strip() or None
            index.records.append(Record(str(path), label, "ham10000", group=group, dx=dx))
    return index


def read_isic_csv(root: Path, csv_path: Path) -> Index:
    """Read an `isic-cli` export: `isic_id` plus `benign_malignant` and/or `diagnosis` columns."""
    index = Index(root=str(root), layout="isic-csv")
    images = _image_lookup(root)
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            isic_id = (row.get("isic_id") or "").strip()
            path = images.get(isic_id)
            if path is None:
                index.problems.append(Problem(f"{csv_path}:{isic_id}", "CSV row has no image file"))
                continue
            bm = (row.get("benign_malignant") or "").strip().lower()
            dx = (row.get("diagnosis") or row.get("diagnosis_1") or "").strip().lower()
            label = label_for_name(bm) if bm and "indeterminate" not in bm else None
            label = label or (label_for_name(dx) if dx else None)
            if label is None:
                why = f"no usable label (benign_malignant={bm!r}, diagnosis={dx!r})"
                index.problems.append(Problem(str(path), why))
                continue
            group = (row.get("lesion_id") or row.get("patient_id") or "").strip() or None
            index.records.append(Record(str(path), label, "isic", group=group, dx=dx or bm))
    return index


def detect_layout(root: Path) -> tuple[str, Path | None]:
    """Name the layout under root, and its metadata CSV if it has one."""
    ham = root / "HAM10000_metadata.csv"
    if ham.is_file():
        return "ham10000", ham
    for csv_path in sorted(root.glob("*.csv")):
        with open(csv_path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
        if "isic_id" in header:
            return "isic-csv", csv_path
        if "image_id" in header and "dx" in header:
            return "ham10000", csv_path
    return "class-folders", None


def read_dataset(root: str | Path) -> Index:
    """Read any supported layout under root into an Index."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    layout, csv_path = detect_layout(root)
    if layout == "ham10000":
        return read_ham10000(root, csv_path)
    if layout == "isic-csv":
        assert csv_path is not None
        return read_isic_csv(root, csv_path)
    index = read_class_folders(root)
    if not index.records:
        raise ValueError(
            f"no labelled images found in {root}: expected class folders "
            "(benign/malignant, nevus/melanoma, dx codes), HAM10000_metadata.csv or an isic-cli metadata CSV"
        )
    return index

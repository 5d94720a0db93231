"""Read the dataset layouts users arrive with into one index of (path, label, group, source).

Layouts: class folders (`ROOT/<split>/<class>/*` or `ROOT/<class>/*`), HAM10000
(`HAM10000_metadata.csv` + image folders), ISIC Archive exports from `isic-cli` (`metadata.csv`
with `isic_id` and `benign_malignant`/`diagnosis` columns), ISIC challenge ground-truth CSVs
(2017 flags or 2018/2019 one-hot columns; one CSV per given split), the ISIC 2020 download
(`ISIC_2020_Training_GroundTruth.csv`: `image_name, patient_id, ..., target`, grouped by patient)
and the Derm7pt release (`meta/meta.csv`). A record's `source` is its dataset (the root folder's
name), whatever the layout; with `source_by` a CSV column names a sub-source (HAM10000's `dataset`:
`ham10000:vidir_molemax`), so balance, thresholds and the shortcut audit see each for what it is. Problems (unknown class folders, rows without a file, unlabelled rows) are collected as
`Problem`s, never raised; rows kept after a repair (a path resolved by case) are `notes`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from dermedge.data.io import entry_problem

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}

# Lesion names and HAM10000 / ISIC diagnosis codes -> binary label.
MALIGNANT_NAMES = {
    "malignant",
    "melanoma",
    "mel",
    "bcc",
    "basal cell carcinoma",
    "akiec",
    "actinic keratosis",
    "actinic keratoses",
    "squamous cell carcinoma",
    "scc",
    "intraepithelial carcinoma",
    "melanoma metastasis",
    "cancer",
}
BENIGN_NAMES = {
    "benign",
    "nevus",
    "nevi",
    "naevus",
    "nv",
    "bkl",
    "benign keratosis",
    "seborrheic keratosis",
    "solar lentigo",
    "lentigo nos",
    "lichenoid keratosis",
    "df",
    "dermatofibroma",
    "vasc",
    "vascular lesion",
    "angioma",
    "pyogenic granuloma",
    "hemorrhage",
    "atypical melanocytic proliferation",
}
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
    notes: list[Problem] = field(default_factory=list)  # kept, but a person should know

    @property
    def source(self) -> str:
        """The dataset's name: its root folder's name (isic-mvb, ham10000-thumbs, derm7pt, ...)."""
        return Path(self.root).name

    @property
    def missing(self) -> list[Problem]:
        """CSV rows whose image file is absent (a partial download): counted and listed apart."""
        return [p for p in self.problems if p.reason == MISSING_IMAGE]


MISSING_IMAGE = "CSV row has no image file"


def sub_source(index: Index, row: dict[str, str], column: str | None) -> str:
    """The record's source: the dataset's name, or `name:value` of the CSV column `column`."""
    value = (row.get(column) or "").strip() if column else ""
    return f"{index.source}:{value}" if value else index.source


def check_source_column(csv_path: Path, column: str | None) -> None:
    """Refuse a `source_by` column the CSV does not have (one line, the columns it has)."""
    if column is None:
        return
    with open(csv_path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    if column not in header:
        raise ValueError(
            f"{csv_path.name} has no column {column!r} to name sub-sources by "
            f"(it has: {', '.join(header)})"
        )


def label_for_name(name: str) -> str | None:
    """Map a class folder or diagnosis name to "benign"/"malignant", case-insensitively."""
    key = name.strip().lower().replace("_", " ").replace("-", " ")
    if key in MALIGNANT_NAMES:
        return "malignant"
    if key in BENIGN_NAMES:
        return "benign"
    return None


def _is_image_name(path: Path) -> bool:
    """Whether the file name has an image suffix (IMAGE_SUFFIXES), in any letter case."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _files_in(folder: Path, problems: list[Problem]) -> list[Path]:
    """The files of a class folder; a nested folder, a broken link or a FIFO is a problem."""
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        why = entry_problem(p)
        if why is None and p.is_dir():
            why = "folder inside a class folder: its images are not read (move them up)"
        if why:
            problems.append(Problem(str(p), why))
        else:
            files.append(p)
    return files


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
            for f in _files_in(class_dir, index.problems):
                if not _is_image_name(f):
                    index.problems.append(Problem(str(f), "not an image file name"))
                    continue
                index.records.append(
                    Record(str(f), label, index.source, split=split, dx=class_dir.name.lower())
                )
    return index


def _image_lookup(root: Path) -> dict[str, Path]:
    """Image stem -> path for every image under root (HAM10000 ships several part folders)."""
    return {p.stem: p for p in sorted(root.rglob("*")) if p.is_file() and _is_image_name(p)}


def read_ham10000(root: Path, csv_path: Path | None = None, source_by: str | None = None) -> Index:
    """Read HAM10000: metadata CSV (lesion_id, image_id, dx, ...) plus its image folders (the
    thumbnails' `images/` or the Dataverse `HAM10000_images_part_1/2`)."""
    csv_path = csv_path or root / "HAM10000_metadata.csv"
    check_source_column(csv_path, source_by)
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
                index.problems.append(Problem(f"{csv_path}:{image_id}", MISSING_IMAGE))
                continue
            label = "malignant" if dx in HAM_MALIGNANT_DX else label_for_name(dx)
            if label is None:
                index.problems.append(Problem(str(path), f"unknown dx {dx!r}"))
                continue
            group = (row.get("lesion_id") or "").strip() or None
            source = sub_source(index, row, source_by)
            index.records.append(Record(str(path), label, source, group=group, dx=dx))
    return index


def read_isic_csv(root: Path, csv_path: Path, source_by: str | None = None) -> Index:
    """Read an `isic-cli` export: `isic_id` plus `benign_malignant` and/or `diagnosis` columns."""
    check_source_column(csv_path, source_by)
    index = Index(root=str(root), layout="isic-csv")
    images = _image_lookup(root)
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            isic_id = (row.get("isic_id") or "").strip()
            path = images.get(isic_id)
            if path is None:
                index.problems.append(Problem(f"{csv_path}:{isic_id}", MISSING_IMAGE))
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
            source = sub_source(index, row, source_by)
            index.records.append(Record(str(path), label, source, group=group, dx=dx or bm))
    return index


# ISIC challenge ground truth: 2018/2019 one-hot columns, 2017 per-diagnosis flags.
ISIC_ONE_HOT = {
    "MEL": "melanoma",
    "NV": "nevus",
    "BCC": "basal cell carcinoma",
    "AKIEC": "actinic keratosis",
    "AK": "actinic keratosis",
    "BKL": "benign keratosis",
    "DF": "dermatofibroma",
    "VASC": "vascular lesion",
    "SCC": "squamous cell carcinoma",
    "UNK": "unknown",
}
DERM7PT_BENIGN = {
    "clark nevus",
    "reed or spitz nevus",
    "seborrheic keratosis",
    "dermal nevus",
    "vascular lesion",
    "blue nevus",
    "lentigo",
    "dermatofibroma",
    "congenital nevus",
    "melanosis",
    "combined nevus",
    "recurrent nevus",
}


def _split_of_csv(name: str) -> str | None:
    """train/val/test from a challenge CSV's file name (ISIC-2017_Validation_Classes.csv -> val)."""
    words = name.lower().replace("-", "_").replace(".", "_").split("_")
    for w in words:
        if w in SPLIT_NAMES:
            return SPLIT_NAMES[w]
    return None


def _is_challenge_header(header: list[str]) -> bool:
    """Whether CSV columns are ISIC challenge ground truth: an image id and diagnosis flags."""
    cols = set(header)
    has_id = bool(cols & {"image", "image_id"})
    return has_id and ("melanoma" in cols or len(cols & set(ISIC_ONE_HOT)) >= 3)


def _challenge_dx(row: dict[str, str]) -> str | None:
    """The diagnosis of one ground-truth row, or None if no flag is set."""

    def flag(k: str) -> bool:
        """Whether column `k` of the row is set (>= 0.5); a missing or non-numeric value is not."""
        try:
            return float(row.get(k) or 0) >= 0.5
        except ValueError:
            return False

    if "melanoma" in row:  # 2017 style
        if flag("melanoma"):
            return "melanoma"
        if flag("seborrheic_keratosis"):
            return "seborrheic keratosis"
        return "nevus or seborrheic keratosis" if "seborrheic_keratosis" not in row else "nevus"
    hits = [dx for code, dx in ISIC_ONE_HOT.items() if code in row and flag(code)]
    return hits[0] if len(hits) == 1 else None


def read_isic_challenge(root: Path, csv_paths: list[Path]) -> Index:
    """Read ISIC challenge ground-truth CSVs (one per given split) and the image folders beside them."""
    index = Index(root=str(root), layout="isic-challenge")
    images = _image_lookup(root)
    for csv_path in csv_paths:
        split = _split_of_csv(csv_path.name)
        with open(csv_path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                image_id = (row.get("image") or row.get("image_id") or "").strip()
                path = images.get(image_id)
                if path is None:
                    index.problems.append(Problem(f"{csv_path}:{image_id}", MISSING_IMAGE))
                    continue
                dx = _challenge_dx(row)
                if dx is None or dx == "unknown":
                    index.problems.append(
                        Problem(str(path), "no usable diagnosis flag (unknown or none set)")
                    )
                    continue
                label = "benign" if dx == "nevus or seborrheic keratosis" else label_for_name(dx)
                if label is None:
                    index.problems.append(Problem(str(path), f"unknown diagnosis {dx!r}"))
                    continue
                group = (row.get("lesion_id") or "").strip() or None
                index.records.append(
                    Record(str(path), label, index.source, group=group, split=split, dx=dx)
                )
    return index


ISIC2020_CSV = "ISIC_2020_Training_GroundTruth.csv"


def _is_isic2020_header(header: list[str]) -> bool:
    """Whether CSV columns are the ISIC 2020 ground truth: `image_name` and `target`."""
    return "image_name" in header and bool({"target", "benign_malignant"} & set(header))


def _isic2020_label(row: dict[str, str]) -> str | None:
    """`target` 1/0 (melanoma or not), else `benign_malignant`; None when neither is usable."""
    target = (row.get("target") or "").strip()
    if target in ("0", "1", "0.0", "1.0"):
        return "malignant" if float(target) == 1 else "benign"
    return label_for_name(row.get("benign_malignant") or "")


def read_isic2020(root: Path, csv_path: Path, source_by: str | None = None) -> Index:
    """Read the ISIC 2020 download: ground truth (`image_name`, `patient_id`, `diagnosis`,
    `target`) and `train/<image_name>.jpg`; grouped by patient (the release has no lesion id)."""
    check_source_column(csv_path, source_by)
    index = Index(root=str(root), layout="isic2020")
    images = _image_lookup(root)
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            name = (row.get("image_name") or "").strip()
            path = images.get(name)
            if path is None:
                index.problems.append(Problem(f"{csv_path}:{name}", MISSING_IMAGE))
                continue
            label = _isic2020_label(row)
            if label is None:
                index.problems.append(Problem(str(path), "no usable label (target)"))
                continue
            patient = (row.get("patient_id") or "").strip()
            index.records.append(
                Record(
                    str(path),
                    label,
                    sub_source(index, row, source_by),
                    group=f"patient:{patient}" if patient else None,
                    dx=(row.get("diagnosis") or "").strip().lower() or None,
                )
            )
    return index


def derm7pt_label(diagnosis: str) -> str | None:
    """Derm7pt diagnosis -> label: every melanoma variant and BCC malignant; None = unknown."""
    dx = diagnosis.strip().lower()
    if dx.startswith("melanoma") or dx == "basal cell carcinoma":
        return "malignant"
    return "benign" if dx in DERM7PT_BENIGN else None


def _resolve_case(images_dir: Path, rel: str, by_lower: dict[str, Path]) -> Path | None:
    """`images_dir/rel` when it exists, else the image whose path matches `rel` ignoring case."""
    exact = images_dir / rel
    if exact.is_file():
        return exact
    return by_lower.get(rel.replace("\\", "/").lower())


def read_derm7pt(root: Path, csv_path: Path) -> Index:
    """Read the Derm7pt release: `meta/meta.csv` (`diagnosis`, `derm` = path under `images/`)."""
    index = Index(root=str(root), layout="derm7pt")
    images_dir = root / "images"
    by_lower = (
        {
            p.relative_to(images_dir).as_posix().lower(): p
            for p in images_dir.rglob("*")
            if p.is_file()
        }
        if images_dir.is_dir()
        else {}
    )
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rel = (row.get("derm") or "").strip()
            dx = (row.get("diagnosis") or "").strip().lower()
            path = _resolve_case(images_dir, rel, by_lower) if rel else None
            if path is None:
                index.problems.append(Problem(f"{csv_path}:{rel}", MISSING_IMAGE))
                continue
            if path.relative_to(images_dir).as_posix() != rel:
                index.notes.append(Problem(str(path), f"meta.csv names {rel!r}: resolved by case"))
            label = derm7pt_label(dx)
            if label is None:
                why = (
                    "diagnosis 'miscellaneous' has no known label"
                    if dx == "miscellaneous"
                    else f"unknown diagnosis {dx!r}"
                )
                index.problems.append(Problem(str(path), why))
                continue
            case = (row.get("case_num") or row.get("case_id") or "").strip()
            index.records.append(
                Record(
                    str(path), label, index.source, group=f"case:{case}" if case else None, dx=dx
                )
            )
    return index


def _challenge_csvs(root: Path) -> list[Path]:
    """The CSVs directly in `root` whose header is that of ISIC challenge ground truth."""
    out = []
    for csv_path in sorted(root.glob("*.csv")):
        with open(csv_path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
        if _is_challenge_header(header):
            out.append(csv_path)
    return out


def detect_layout(root: Path) -> tuple[str, Path | None]:
    """Name the layout under root, and its metadata CSV if it has one."""
    ham = root / "HAM10000_metadata.csv"
    if ham.is_file():
        return "ham10000", ham
    d7 = root / "meta" / "meta.csv"
    if d7.is_file():
        return "derm7pt", d7
    if _challenge_csvs(root):
        return "isic-challenge", None
    for csv_path in sorted(root.glob("*.csv")):
        with open(csv_path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
        if _is_isic2020_header(header):
            return "isic2020", csv_path
        if "isic_id" in header:
            return "isic-csv", csv_path
        if "image_id" in header and "dx" in header:
            return "ham10000", csv_path
    return "class-folders", None


def read_dataset(root: str | Path, source_by: str | None = None) -> Index:
    """Read any supported layout under root into an Index; `source_by`: a CSV column that names
    each record's sub-source (HAM10000's `dataset`), refused for a layout without that column."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    layout, csv_path = detect_layout(root)
    if source_by and layout not in ("ham10000", "isic-csv", "isic2020"):
        raise ValueError(f"{root.name} ({layout}): --source-by needs a metadata CSV layout")
    if layout == "ham10000":
        return read_ham10000(root, csv_path, source_by)
    if layout == "isic2020":
        assert csv_path is not None
        return read_isic2020(root, csv_path, source_by)
    if layout == "isic-csv":
        assert csv_path is not None
        return read_isic_csv(root, csv_path, source_by)
    if layout == "derm7pt":
        assert csv_path is not None
        return read_derm7pt(root, csv_path)
    if layout == "isic-challenge":
        return read_isic_challenge(root, _challenge_csvs(root))
    index = read_class_folders(root)
    if not index.records:
        raise ValueError(
            f"no labelled images found in {root}: expected class folders "
            "(benign/malignant, nevus/melanoma, dx codes), HAM10000_metadata.csv or an isic-cli metadata CSV"
        )
    return index

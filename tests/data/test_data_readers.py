"""The ISIC challenge and Derm7pt readers, sources named by dataset, and --extend --own-splits."""

from __future__ import annotations

import csv
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from dermedge.cli import main
from dermedge.data.analysis import analyse, leakage
from dermedge.data.index import read_dataset
from dermedge.data.manifest import read_manifest
from dermedge.data.split import extend_split, make_split, write_manifest


def _shared(data_dir: Path, name: str) -> Path:
    path = data_dir / name
    if not path.is_dir():
        pytest.skip(f"{name}/ is not in the shared data at {data_dir} (see its PROVENANCE.md)")
    return path


@pytest.fixture(scope="module")
def isic2017_dir(data_dir):
    return _shared(data_dir, "isic2017")


@pytest.fixture(scope="module")
def derm7pt_dir(data_dir):
    return _shared(data_dir, "derm7pt")


def test_isic2017_challenge_csvs_give_labels_and_splits(isic2017_dir):
    index = read_dataset(isic2017_dir)
    assert index.layout == "isic-challenge" and index.source == "isic2017"
    assert len(index.records) == 2150 and index.problems == []
    assert Counter(r.label for r in index.records) == {"benign": 1746, "malignant": 404}
    assert Counter(r.split for r in index.records) == {"train": 2000, "val": 150}
    assert Counter((r.split, r.label) for r in index.records)[("val", "malignant")] == 30
    assert {r.source for r in index.records} == {"isic2017"}
    assert {r.dx for r in index.records if r.label == "benign"} == {"nevus or seborrheic keratosis"}


def test_derm7pt_case_resolved_row_is_kept_and_miscellaneous_left_out(derm7pt_dir):
    index = read_dataset(derm7pt_dir)
    assert index.layout == "derm7pt" and {r.source for r in index.records} == {"derm7pt"}
    assert len(index.records) == 1003
    assert Counter(r.label for r in index.records) == {"benign": 709, "malignant": 294}
    assert [p.reason for p in index.problems] == [
        "diagnosis 'miscellaneous' has no known label"
    ] * 8
    (note,) = index.notes
    assert note.path.endswith("FCL/Fcl068.jpg") and "'FCl/Fcl068.jpg'" in note.reason
    assert "resolved by case" in note.reason
    assert note.path in {r.path for r in index.records}  # reported, and kept
    r = CliRunner().invoke(main, ["data", "inspect", str(derm7pt_dir)])
    assert r.exit_code == 0, r.output
    assert "1003 readable images" in r.output
    assert "Fcl068.jpg: meta.csv names 'FCl/Fcl068.jpg': resolved by case" in r.output
    assert r.output.count("diagnosis 'miscellaneous' has no known label") == 8


def test_isic2019_one_hot_csvs_in_tmp(isic_dir, tmp_path):
    root = tmp_path / "isic2019"
    (root / "ISIC_2019_Training_Input").mkdir(parents=True)
    (root / "ISIC_2019_Test_Input").mkdir()
    srcs = sorted((isic_dir / "train" / "malignant").glob("*.jpg"))[:7]
    names = [f"ISIC_00{i:05d}" for i in range(7)]
    for i, (src, name) in enumerate(zip(srcs, names, strict=True)):
        shutil.copy(
            src,
            root
            / ("ISIC_2019_Test_Input" if i >= 5 else "ISIC_2019_Training_Input")
            / f"{name}.jpg",
        )
    cols = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]

    def row(name: str, code: str | None) -> list[str]:
        return [name] + ["1.0" if c == code else "0.0" for c in cols[1:]]

    train = [
        cols,
        row(names[0], "MEL"),
        row(names[1], "NV"),
        row(names[2], "SCC"),
        row(names[3], "UNK"),
        row(names[4], None),
        row("ISIC_0099999", "BCC"),
    ]
    test = [cols, row(names[5], "BKL"), row(names[6], "AK")]
    for name, rows in (
        ("ISIC_2019_Training_GroundTruth.csv", train),
        ("ISIC_2019_Test_GroundTruth.csv", test),
    ):
        with open(root / name, "w", newline="") as fh:
            csv.writer(fh).writerows(rows)
    index = read_dataset(root)
    assert index.layout == "isic-challenge" and index.source == "isic2019"
    got = {Path(r.path).stem: (r.label, r.split, r.dx, r.source) for r in index.records}
    assert got == {
        names[0]: ("malignant", "train", "melanoma", "isic2019"),
        names[1]: ("benign", "train", "nevus", "isic2019"),
        names[2]: ("malignant", "train", "squamous cell carcinoma", "isic2019"),
        names[5]: ("benign", "test", "benign keratosis", "isic2019"),
        names[6]: ("malignant", "test", "actinic keratosis", "isic2019"),
    }
    problems = {Path(p.path.split(":")[-1]).stem: p.reason for p in index.problems}
    assert problems == {
        names[3]: "no usable diagnosis flag (unknown or none set)",  # UNK
        names[4]: "no usable diagnosis flag (unknown or none set)",  # no flag
        "ISIC_0099999": "CSV row has no image file",
    }


def test_sources_are_named_by_dataset_folder(isic_dir, ham_dir, tmp_path):
    assert {r.source for r in read_dataset(isic_dir).records} == {"isic-mvb"}
    assert {r.source for r in read_dataset(ham_dir).records} == {"ham10000-thumbs"}
    folders = tmp_path / "clinic-a"
    for cls, given in (("nevus", "benign"), ("melanoma", "malignant")):
        (folders / cls).mkdir(parents=True)
        src = sorted((isic_dir / "train" / given).glob("*.jpg"))[0]
        shutil.copy(src, folders / cls / src.name)
    index = read_dataset(folders)
    assert index.layout == "class-folders" and {r.source for r in index.records} == {"clinic-a"}
    ham = tmp_path / "ham-part"
    (ham / "images").mkdir(parents=True)
    with open(ham_dir / "HAM10000_metadata.csv", newline="") as fh:
        rows = list(csv.reader(fh))[:4]
    for r in rows[1:]:
        shutil.copy(ham_dir / "images" / f"{r[1]}.jpg", ham / "images" / f"{r[1]}.jpg")
    with open(ham / "HAM10000_metadata.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    index = read_dataset(ham)
    assert index.layout == "ham10000" and len(index.records) == 3
    assert {r.source for r in index.records} == {"ham-part"}


def test_extend_own_splits_keeps_base_and_splits_the_extra_set(isic_dir, isic2017_dir, tmp_path):
    base_analysis = analyse(read_dataset(isic_dir), progress=False)
    write_manifest(make_split(base_analysis, seed=0), base_analysis, tmp_path / "base")
    base = read_manifest(tmp_path / "base")
    extra = analyse(read_dataset(isic2017_dir), progress=False)
    split, combined = extend_split(base, extra, own_splits=True, seed=0)
    assert split.mode == "extend-splits"
    recs = split.records
    of_base = sorted((r.path, r.split) for r in recs if r.source == "isic-mvb")
    assert of_base == sorted((r.path, r.split) for r in base)  # the base's splits untouched
    added = [r for r in recs if r.source == "isic2017"]
    per_split = Counter(r.split for r in added)
    assert set(per_split) == {"train", "val", "test"}
    assert 0.10 < per_split["val"] / len(added) < 0.20
    assert 0.10 < per_split["test"] / len(added) < 0.20
    assert Counter(r.label for r in added if r.split == "test")["malignant"] > 0  # stratified
    where: dict[str, set[str]] = defaultdict(set)
    for r in recs:
        where[r.group or r.path].add(r.split or "")
    assert all(len(s) == 1 for s in where.values())  # no lesion group in two splits
    leaks = leakage(recs, combined.hashes)
    assert all(v["shared_groups"] == 0 and v["images"] == [] for v in leaks.values())
    # isic-mvb's malignant photos include ISIC 2017 photos: those are left out, not split again
    reasons = Counter(d["reason"] for d in split.dropped)
    assert reasons["same photo already in the base manifest"] > 100
    assert len(added) + len(split.dropped) == len(extra.records)

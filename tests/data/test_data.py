"""Dataset reading, duplicates, leakage and splits on the real shared datasets."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from dermedge.cli import main
from dermedge.data.analysis import analyse, shortcut_audit, summary
from dermedge.data.index import Record, label_for_name, read_dataset
from dermedge.data.manifest import ManifestError, read_manifest
from dermedge.data.split import make_split, write_manifest


@pytest.fixture(scope="module")
def isic(isic_dir):
    return analyse(read_dataset(isic_dir), progress=False)


@pytest.fixture(scope="module")
def isic_linked(isic_dir, ham_dir):
    return analyse(read_dataset(isic_dir), link=read_dataset(ham_dir), progress=False)


def test_class_names_map_case_insensitively():
    assert label_for_name("Melanoma") == "malignant"
    assert label_for_name("NV") == "benign"
    assert label_for_name("Basal_Cell_Carcinoma") == "malignant"
    assert label_for_name("cats") is None


def test_class_folders_read_with_their_splits(isic_dir):
    index = read_dataset(isic_dir)
    counts = Counter((r.split, r.label) for r in index.records)
    assert counts == {
        ("train", "benign"): 1440,
        ("train", "malignant"): 1197,
        ("test", "benign"): 360,
        ("test", "malignant"): 300,
    }
    assert index.problems == []


def test_ham10000_reads_labels_and_lesion_groups(ham_dir):
    index = read_dataset(ham_dir)
    assert index.layout == "ham10000" and len(index.records) == 10015
    labels = Counter(r.label for r in index.records)
    assert labels == {"benign": 8061, "malignant": 1954}
    assert len({r.group for r in index.records}) == 7470  # HAM10000's lesion count
    assert Counter(r.dx for r in index.records)["akiec"] == 327


def test_isic_cli_export_with_bad_rows(isic_dir, tmp_path):
    root = tmp_path / "isic"
    (root / "images").mkdir(parents=True)
    srcs = sorted((isic_dir / "train" / "malignant").glob("*.jpg"))[:3]
    for i, src in enumerate(srcs):
        shutil.copy(src, root / "images" / f"ISIC_000000{i}.jpg")
    (root / "images" / "ISIC_0000009.jpg").write_bytes(b"")  # zero-byte file
    rows = [
        ["isic_id", "benign_malignant", "diagnosis", "lesion_id"],
        ["ISIC_0000000", "malignant", "melanoma", "L1"],
        ["ISIC_0000001", "", "nevus", "L1"],
        ["ISIC_0000002", "indeterminate", "", ""],
        ["ISIC_0000005", "benign", "nevus", ""],  # no file
        ["ISIC_0000009", "benign", "nevus", ""],
    ]
    with open(root / "metadata.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    index = read_dataset(root)
    assert index.layout == "isic-csv"
    assert [(r.label, r.group) for r in index.records[:2]] == [
        ("malignant", "L1"),
        ("benign", "L1"),
    ]
    reasons = " ".join(p.reason for p in index.problems)
    assert "no usable label" in reasons and "no image file" in reasons
    a = analyse(index, progress=False)
    assert any("empty file" in p.reason for p in a.problems)  # reported, skipped, not a crash
    assert len(a.label_conflicts) == 1  # one lesion labelled both ways


def test_bad_files_in_class_folders_are_reported_not_fatal(isic_dir, tmp_path):
    root = tmp_path / "ds"
    for cls in ("Nevus", "Melanoma"):
        (root / cls).mkdir(parents=True)
        for src in sorted(
            (isic_dir / "train" / ("benign" if cls == "Nevus" else "malignant")).glob("*.jpg")
        )[:4]:
            shutil.copy(src, root / cls / src.name)
    (root / "Nevus" / "zero.jpg").write_bytes(b"")
    (root / "Nevus" / "trunc.jpg").write_bytes(
        (root / "Nevus" / src.name).read_bytes()[:1500]
        if (root / "Nevus" / src.name).exists()
        else b"\xff\xd8"
    )
    (root / "Melanoma" / "notes.txt").write_text("hello")
    (root / "Melanoma" / "fake.jpg").write_text("not a jpeg")
    (root / "cats").mkdir()
    result = CliRunner().invoke(main, ["data", "inspect", str(root)])
    assert result.exit_code == 0, result.output
    for needle in (
        "zero.jpg: empty file",
        "trunc.jpg: corrupt or truncated",
        "notes.txt: not an image",
        "fake.jpg: not an image",
        "unknown class folder 'cats'",
    ):
        assert needle in result.output
    assert "8 readable images" in result.output


def test_isic_duplicates_and_given_split_leakage(isic):
    s = summary(isic)
    assert s["exact_duplicate_sets"] >= 1
    assert any(
        {p.rsplit("/", 1)[1] for p in dup} == {"768.jpg", "769.jpg"}
        for dup in s["exact_duplicates"]
    )
    assert s["near_duplicate_pairs"] >= 10
    assert s["leakage"]["train/test"]["images_in_test_with_twin_in_train"] > 0


def test_linking_to_ham_reveals_more_same_lesion_leakage(isic, isic_linked):
    plain = summary(isic)["leakage"]["train/test"]["images_in_test_with_twin_in_train"]
    linked = summary(isic_linked)
    assert linked["linked_images"] > 2000  # most isic-mvb photos are HAM10000 photos
    assert linked["leakage"]["train/test"]["images_in_test_with_twin_in_train"] > plain


def test_shortcut_audit_warns_on_single_class_parts():
    recs = [Record(f"a/{i}.jpg", "malignant", "a", split="train") for i in range(25)]
    recs += [
        Record(
            f"b/{i}.jpg",
            "benign" if i % 2 else "malignant",
            "b",
            split="train" if i < 30 else "test",
        )
        for i in range(40)
    ]
    recs += [Record(f"c/{i}.jpg", "benign", "c") for i in range(19)]  # too few to warn about
    linked = {f"b/{i}.jpg" for i in range(40) if i % 2 or i < 4}  # b's benign + 2 malignant
    audit = shortcut_audit(recs, linked, "other", by_split=True)
    assert [(p["name"], p["images"], p["malignant"]) for p in audit["sources"]] == [
        ("a", 25, 25),
        ("b", 40, 20),
        ("c", 19, 0),
    ]
    assert [(p["name"], p["images"], p["benign"]) for p in audit["sub_sources"]] == [
        ("b linked to other", 22, 20),
        ("b not linked to other", 18, 0),
    ]
    assert [p["name"] for p in audit["source_splits"]] == ["a train", "b train", "b test", "c all"]
    assert audit["warnings"] == [
        "WARNING shortcut: a is 100% malignant (25 images): a model can learn where a photo "
        "comes from instead of what the lesion is"
    ]  # b's unlinked part is all malignant too, but 18 images are too few
    recs.append(Record("a/x.jpg", "benign", "a"))
    assert "a is 96.1% malignant (26 images)" in shortcut_audit(recs)["warnings"][0]


def test_isic_mvb_photos_not_in_ham_are_all_malignant(isic_linked, isic_dir, ham_dir, tmp_path):
    audit = summary(isic_linked)["shortcut_audit"]
    assert [(p["name"], p["benign"], p["malignant"]) for p in audit["sources"]] == [
        ("isic-mvb", 1800, 1497)
    ]
    parts = {p["name"]: (p["benign"], p["malignant"]) for p in audit["sub_sources"]}
    assert parts == {
        "isic-mvb linked to ham10000-thumbs": (1800, 688),  # mixed labels
        "isic-mvb not linked to ham10000-thumbs": (0, 809),
    }
    warning = (
        "WARNING shortcut: isic-mvb not linked to ham10000-thumbs is 100% malignant "
        "(809 images): a model can learn where a photo comes from instead of what the "
        "lesion is"
    )
    assert audit["warnings"] == [warning]
    r = CliRunner().invoke(
        main, ["data", "split", str(isic_dir), "--link", str(ham_dir), "--out", str(tmp_path)]
    )
    assert r.exit_code == 0, r.output
    assert "WARNING shortcut: isic-mvb not linked to ham10000-thumbs is 100% malignant" in r.output
    split_audit = json.loads((tmp_path / "inspect.json").read_text())["shortcut_audit"]
    cells = {p["name"]: p for p in split_audit["source_splits"]}
    assert list(cells) == ["isic-mvb train", "isic-mvb val", "isic-mvb test"]
    assert sum(p["images"] for p in cells.values()) == 3296  # one byte-identical copy left out


def test_leakage_report_names_every_leaking_image_and_why(isic, isic_linked):
    plain = summary(isic)["leakage"]["train/test"]
    assert plain["images_in_test_with_twin_in_train"] == plain["same_photo"] == 8
    assert len(plain["images"]) == 8
    leak = summary(isic_linked)["leakage"]["train/test"]
    assert leak["images_in_test_with_twin_in_train"] == 104 and leak["shared_groups"] == 102
    assert (leak["same_photo"], leak["same_lesion_id"]) == (8, 96)
    assert len(leak["images"]) == 104 and len({i["group"] for i in leak["images"]}) == 102
    assert {i["path"] for i in leak["images"]} >= {i["path"] for i in plain["images"]}
    for image in leak["images"]:
        assert "/test/" in image["path"] and image["twins"]
        assert all("/train/" in t["path"] and t["split"] == "train" for t in image["twins"])
        reasons = {t["reason"] for t in image["twins"]}
        assert image["reason"] == ("same photo" if "same photo" in reasons else "same lesion id")
    by_path = {i["path"]: i for i in leak["images"]}
    assert all(by_path[i["path"]]["reason"] == "same photo" for i in plain["images"])


def _groups_per_split(records):
    where = defaultdict(set)
    for r in records:
        where[r.group].add(r.split)
    return where


@pytest.mark.parametrize("mode", ["resplit", "given-purged"])
def test_splits_are_leakage_free_stratified_and_seeded(isic_linked, mode):
    split = make_split(isic_linked, mode=mode, seed=3)
    assert all(len(s) == 1 for s in _groups_per_split(split.records).values())
    again = make_split(isic_linked, mode=mode, seed=3)
    assert [(r.path, r.split) for r in split.records] == [(r.path, r.split) for r in again.records]
    other = make_split(isic_linked, mode=mode, seed=4)
    assert [r.split for r in split.records] != [r.split for r in other.records]
    counts = split.counts()
    for name in ("train", "val", "test"):
        frac = counts[name]["malignant"] / sum(counts[name].values())
        assert 0.40 < frac < 0.50  # isic-mvb is 45% malignant; each split keeps it
    if mode == "given-purged":
        assert sum(counts["test"].values()) == 660 - 0  # the given test split is kept whole
        assert any(d["reason"] == "same lesion as a test image" for d in split.dropped)


def test_given_mode_keeps_leakage_and_reports_it(isic_linked, tmp_path):
    split = make_split(isic_linked, mode="given", seed=0)
    write_manifest(split, isic_linked, tmp_path)
    meta = json.loads((tmp_path / "manifest.json").read_text())
    assert meta["leakage"]["train/test"]["images_in_test_with_twin_in_train"] > 0


def test_manifest_round_trip_and_relocation(isic_linked, tmp_path, monkeypatch, isic_dir):
    split = make_split(isic_linked, seed=0)
    csv_path = write_manifest(split, isic_linked, tmp_path)
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"path", "sha256", "label", "group", "split", "source", "dx"}
    assert not rows[0]["path"].startswith("/")
    back = read_manifest(tmp_path)
    here = Path(isic_dir).resolve()  # resolved on both sides: ../shared may be a symlink
    assert len(back) == len(split.records) and all(
        Path(r.path).resolve().is_relative_to(here) for r in back
    )
    assert (
        len(read_manifest(tmp_path, splits=("test",)))
        == split.counts()["test"]["benign"] + split.counts()["test"]["malignant"]
    )
    meta = json.loads((tmp_path / "manifest.json").read_text())
    meta["root"] = "/elsewhere/isic-mvb"  # a committed manifest made on another machine
    (tmp_path / "manifest.json").write_text(json.dumps(meta))
    monkeypatch.delenv("DERMEDGE_DATA", raising=False)  # else it finds the data through it
    with pytest.raises(ManifestError, match="not here"):
        read_manifest(tmp_path)
    monkeypatch.setenv("DERMEDGE_DATA", str(isic_dir.parent))
    assert len(read_manifest(tmp_path)) == len(back)


def test_split_cli_writes_manifest_for_ham(ham_dir, tmp_path):
    result = CliRunner().invoke(
        main, ["data", "split", str(ham_dir), "--out", str(tmp_path), "--seed", "1"]
    )
    assert result.exit_code == 0, result.output
    recs = read_manifest(tmp_path)
    assert all(len(s) == 1 for s in _groups_per_split(recs).values())
    assert (tmp_path / "inspect.json").is_file()
    assert "'train/test': 0" in result.output


def test_cli_errors_are_one_line(tmp_path):
    r = CliRunner().invoke(main, ["data", "inspect", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["data", "inspect", str(tmp_path)])
    assert r.exit_code == 1 and "no labelled images" in r.output
    r = CliRunner().invoke(main, ["data", "split", str(tmp_path), "--mode", "given"])
    assert r.exit_code == 1


def test_extend_adds_ham_to_train_only_without_leakage(isic_linked, ham_dir, tmp_path):
    base_dir = tmp_path / "base"
    write_manifest(make_split(isic_linked, seed=0), isic_linked, base_dir)
    out = tmp_path / "ext"
    r = CliRunner().invoke(
        main, ["data", "split", str(ham_dir), "--extend", str(base_dir), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    base, ext = read_manifest(base_dir), read_manifest(out)
    held = lambda recs: sorted((x.path, x.split) for x in recs if x.split != "train")  # noqa: E731
    assert held(ext) == held(base)  # val and test untouched
    assert sum(x.split == "train" for x in ext) > 5000
    assert all(len(s) == 1 for s in _groups_per_split(ext).values())
    reasons = Counter(
        d["reason"] for d in json.loads((out / "manifest.json").read_text())["dropped"]
    )
    assert reasons["same lesion as a base val/test image"] > 100
    assert reasons["same photo already in the base manifest"] > 1000
    assert {x.source for x in ext} == {"isic-mvb", "ham10000-thumbs"}  # sources named by dataset
    audit = json.loads((out / "inspect.json").read_text())["shortcut_audit"]
    assert [p["name"] for p in audit["sources"]] == ["ham10000-thumbs", "isic-mvb"]
    assert [p["name"] for p in audit["source_splits"]] == [
        "ham10000-thumbs train",
        "isic-mvb train",
        "isic-mvb val",
        "isic-mvb test",
    ]

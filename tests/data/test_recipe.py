"""ISIC 2020 and HAM10000 Dataverse readers, sub-sources, missing images, and `data split --recipe`
(one grouped, de-duplicated split of several datasets) on small subsets of the real shared data."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from dermedge.cli import main
from dermedge.data.index import MISSING_IMAGE, read_dataset
from dermedge.data.manifest import read_manifest
from dermedge.data.recipe import RecipeError, read_recipe, recipe_split

REPO = Path(__file__).resolve().parents[2]


def _shared(data_dir: Path, name: str) -> Path:
    path = data_dir / name
    if not path.is_dir():
        pytest.skip(f"{name}/ is not in the shared data at {data_dir} (see its PROVENANCE.md)")
    return path


@pytest.fixture(scope="module")
def isic2020_dir(data_dir):
    return _shared(data_dir, "isic2020")


@pytest.fixture(scope="module")
def ham_full_dir(data_dir):
    return _shared(data_dir, "ham10000")


def test_isic2020_ground_truth_is_read_and_grouped_by_patient(isic2020_dir):
    index = read_dataset(isic2020_dir)
    assert index.layout == "isic2020" and index.source == "isic2020"
    assert len(index.records) == 1144 and index.problems == []
    assert Counter(r.label for r in index.records) == {"benign": 560, "malignant": 584}
    assert all(Path(r.path).parent.name == "train" for r in index.records)
    by_patient = defaultdict(set)
    for r in index.records:
        assert r.group and r.group.startswith("patient:IP_")
        by_patient[r.group].add(r.label)
    assert sum(1 for labels in by_patient.values() if len(labels) == 2) == 81  # as PROVENANCE says
    assert Counter(r.dx for r in index.records)["nevus"] == 104


def test_ham10000_dataverse_layout_with_sub_sources(ham_full_dir):
    index = read_dataset(ham_full_dir, source_by="dataset")
    assert index.layout == "ham10000" and len(index.records) == 10015 and index.problems == []
    parts = Counter(Path(r.path).parent.name for r in index.records)
    assert set(parts) == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    c = Counter((r.source, r.label) for r in index.records)
    assert c[("ham10000:vidir_molemax", "benign")] == 3928
    assert c[("ham10000:vidir_molemax", "malignant")] == 26
    assert {s for s, _ in c} == {
        "ham10000:vidir_modern",
        "ham10000:vidir_molemax",
        "ham10000:vienna_dias",
        "ham10000:rosendahl",
    }
    assert {r.source for r in read_dataset(ham_full_dir).records} == {"ham10000"}
    with pytest.raises(ValueError, match="no column 'clinic'.*it has: lesion_id"):
        read_dataset(ham_full_dir, source_by="clinic")


def test_source_by_refused_for_class_folders(isic_dir):
    with pytest.raises(ValueError, match="--source-by needs a metadata CSV layout"):
        read_dataset(isic_dir, source_by="dataset")
    r = CliRunner().invoke(main, ["data", "inspect", str(isic_dir), "--source-by", "dataset"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "--source-by needs a metadata CSV layout" in r.output


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


def test_isic2020_rows_without_an_image_are_counted_and_listed(isic2020_dir, tmp_path):
    with open(isic2020_dir / "ISIC_2020_Training_GroundTruth.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:6]
    root = tmp_path / "isic2020-part"
    for row in rows[:4]:  # a partial download: two images never arrived
        name = row["image_name"] + ".jpg"
        _link(isic2020_dir / "train" / name, root / "train" / name)
    with open(root / "ISIC_2020_Training_GroundTruth.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    index = read_dataset(root)
    assert len(index.records) == 4 and len(index.missing) == 2
    assert all(p.reason == MISSING_IMAGE for p in index.missing)
    out = tmp_path / "report.json"
    r = CliRunner().invoke(main, ["data", "inspect", str(root), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "CSV rows whose image is absent: 2" in r.output
    missing = json.loads(out.read_text())["missing_images"]
    assert missing["count"] == 2
    assert sorted(m.rsplit(":", 1)[1] for m in missing["rows"]) == sorted(
        row["image_name"] for row in rows[4:]
    )


# --- recipes ------------------------------------------------------------------------------------


def _ham_rows(ham_dir: Path) -> list[dict[str, str]]:
    """30 HAM10000 metadata rows: whole lesions, both labels, several sub-sources."""
    with open(ham_dir / "HAM10000_metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    benign = rows[:18]
    mel = [r for r in rows if r["dx"] == "mel"][:12]
    return benign + mel


def _write_ham(root: Path, rows: list[dict[str, str]], images: dict[str, Path], sub: str) -> None:
    for row in rows:
        _link(images[row["image_id"]], root / sub / f"{row['image_id']}.jpg")
    with open(root / "HAM10000_metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def small_sources(tmp_path_factory, data_dir, isic_dir, ham_dir, ham_full_dir):
    """A data root of small real subsets: `hamfull` (Dataverse layout), `hamthumbs` (the same
    photos as thumbnails), `folders` (isic-mvb photos plus two HAM thumbnails, byte-identical to
    hamthumbs'), `ext` (an external set sharing one photo with `folders`)."""
    root = tmp_path_factory.mktemp("data")
    rows = _ham_rows(ham_full_dir)
    full = {p.stem: p for p in ham_full_dir.glob("HAM10000_images_part_*/*.jpg")}
    _write_ham(root / "hamfull", rows, full, "HAM10000_images_part_1")
    thumbs = {r["image_id"]: ham_dir / "images" / f"{r['image_id']}.jpg" for r in rows}
    _write_ham(root / "hamthumbs", rows, thumbs, "images")
    mvb = {
        lab: sorted((isic_dir / "train" / lab).glob("*.jpg"), key=lambda p: int(p.stem))[:12]
        for lab in ("benign", "malignant")
    }
    for lab, photos in mvb.items():
        for p in photos:
            _link(p, root / "folders" / "train" / lab / p.name)
    for p in sorted((isic_dir / "test" / "benign").glob("*.jpg"))[:4]:
        _link(p, root / "folders" / "test" / "benign" / p.name)
    twins = [rows[0]["image_id"], rows[-1]["image_id"]]  # a benign and a melanoma thumbnail
    for image_id, lab in zip(twins, ("benign", "malignant"), strict=True):
        _link(thumbs[image_id], root / "folders" / "train" / lab / f"copy-{image_id}.jpg")
    _link(mvb["benign"][0], root / "ext" / "benign" / "shared.jpg")
    own = sorted((isic_dir / "test" / "malignant").glob("*.jpg"))[0]
    _link(own, root / "ext" / "malignant" / "own.jpg")
    return root, twins


RECIPE = """
seed = 3
val = 0.2
test = 0.2
[[dataset]]
path = "hamfull"
source_by = "dataset"
[[dataset]]
path = "folders"
mode = "given"
[[dataset]]
path = "hamthumbs"
role = "link"
[[dataset]]
path = "ext"
role = "external"
"""


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_recipe_split_groups_and_deduplicates_across_datasets(small_sources, tmp_path):
    root, twins = small_sources
    recipe_file = tmp_path / "small.toml"
    recipe_file.write_text(RECIPE)
    out = tmp_path / "manifest"
    r = CliRunner().invoke(
        main,
        [
            "data",
            "split",
            "--recipe",
            str(recipe_file),
            "--data-root",
            str(root),
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "label balance per source" in r.output and "manifest:" in r.output
    records = read_manifest(out)
    sources = {x.source for x in records}
    assert "folders" in sources and any(s.startswith("hamfull:") for s in sources)
    assert not sources & {"hamthumbs", "ext"}  # link and external sets never in the manifest
    assert {x.split for x in records} == {"train", "val", "test"}
    # every lesion in exactly one split
    splits_of = defaultdict(set)
    for x in records:
        splits_of[x.group or x.path].add(x.split)
    assert all(len(s) == 1 for s in splits_of.values())
    # the same photo is kept once: the HAM copies in `folders` are left out for hamfull's
    names = {Path(x.path).name for x in records}
    assert not any(n.startswith("copy-") for n in names)
    assert {f"{t}.jpg" for t in twins} <= names
    assert len({_sha(x.path) for x in records}) == len(records)
    # the photo shared with the external set is left out of the training data
    meta = json.loads((out / "manifest.json").read_text())
    shared = (root / "ext" / "benign" / "shared.jpg").resolve()
    assert shared not in {Path(x.path).resolve() for x in records}
    assert meta["external_overlap"] == {"folders ~ ext": 1}
    assert meta["dropped_by_reason"]["same photo as an image of hamfull"] == 2
    assert [d["name"] for d in meta["datasets"]] == ["hamfull", "folders", "hamthumbs", "ext"]
    assert meta["missing_images"] == [] and meta["mode"] == "recipe"
    # given test images stay test; the lesions of a HAM group stay together
    given_test = [x for x in records if x.source == "folders" and "/test/" in x.path]
    assert len(given_test) == 4 and {x.split for x in given_test} == {"test"}


def test_recipe_split_is_seeded(small_sources, tmp_path):
    root, _ = small_sources
    recipe_file = tmp_path / "small.json"
    recipe_file.write_text(
        json.dumps(
            {
                "seed": 1,
                "dataset": [
                    {"path": "hamfull", "source_by": "dataset"},
                    {"path": "folders", "mode": "given"},
                ],
            }
        )
    )
    runs = [recipe_split(read_recipe(recipe_file, str(root)), progress=False) for _ in range(2)]
    assert [(x.path, x.split) for x in runs[0][0].records] == [
        (x.path, x.split) for x in runs[1][0].records
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[dataset]]\npath = "hamfull"\nrole = "teach"', "role 'teach'"),
        ('[[dataset]]\npath = "nowhere"', "dataset folder not found"),
        ('[[dataset]]\npath = "hamfull"\nsplit = "x"', "unknown key(s) split"),
        ('[[dataset]]\npath = "ext"\nrole = "external"', "no dataset to train on"),
        ("val = 0.9\n[[dataset]]\npath = 'hamfull'", "val = 0.9"),
        ("[[dataset]\npath = 1", "not a valid recipe file"),
        ("seed = 0", "no datasets"),
        ('[[dataset]]\npath = "hamfull"\nsource_by = "clinic"', "no column 'clinic'"),
    ],
)
def test_bad_recipes_fail_in_one_line(small_sources, tmp_path, text, message):
    root, _ = small_sources
    recipe_file = tmp_path / "bad.toml"
    recipe_file.write_text(text)
    r = CliRunner().invoke(
        main,
        [
            "data",
            "split",
            "--recipe",
            str(recipe_file),
            "--data-root",
            str(root),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "manifest.csv").exists()


def test_split_needs_root_or_recipe_not_both(tmp_path):
    r = CliRunner().invoke(main, ["data", "split"])
    assert r.exit_code == 2 and "give a dataset ROOT or --recipe FILE" in r.output
    recipe = REPO / "dermedge/data/recipes/all-sources.toml"
    r = CliRunner().invoke(main, ["data", "split", "--recipe", str(recipe), "--seed", "3"])
    assert r.exit_code == 2 and "--recipe names its datasets" in r.output


def test_shipped_all_sources_recipe_reads(data_dir):
    for name in ("isic-mvb", "ham10000", "ham10000-thumbs", "isic2017", "isic2020", "derm7pt"):
        _shared(data_dir, name)
    recipe = read_recipe(REPO / "dermedge/data/recipes/all-sources.toml", str(data_dir))
    roles = {d.name: d.role for d in recipe.datasets}
    assert roles == {
        "isic2017": "split",
        "isic-mvb": "split",
        "ham10000": "split",
        "ham10000-thumbs": "link",
        "isic2020": "split",
        "derm7pt": "external",
    }
    assert next(d for d in recipe.datasets if d.name == "ham10000").source_by == "dataset"
    with pytest.raises(RecipeError, match="not found"):
        read_recipe(REPO / "dermedge/data/recipes/all-sources.toml", "/nonexistent")

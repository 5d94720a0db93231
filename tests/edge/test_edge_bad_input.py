"""Bad input found by a hostile test run gets one line and a non-zero exit, never a traceback:
wrong-typed cards (in every command that reads them), an impossible port, a bad JSON card beside
a served model, a file name that is not UTF-8 (with --csv, and under a strict UTF-8 stdout)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dermedge_testing import DATA, _need

from dermedge import DISCLAIMER
from dermedge.edge.card import read_card

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "dermedge" / "models" / "tiny.tflite"
NOCARD = REPO / "tests" / "assets" / "tiny_fp32_nocard.tflite"


def _run(
    *args: str, env: dict[str, str] | None = None, module: str = "dermedge.edge.cli"
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _one_line_error(r: subprocess.CompletedProcess, code: int | None = None) -> str:
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode != 0 and (code is None or r.returncode == code), (r.returncode, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("Usage:", "Try "))]
    assert len(lines) == 1, err  # (click's usage lines above a usage error are fine)
    return lines[0]


def _with_raw_card(card: dict) -> bytes:
    """tiny.tflite with a card that embed_card itself would refuse to write (hand-edited)."""
    from dermedge.edge import card as K

    return K.seal(K._embed(TINY.read_bytes(), K._card_json({"file_sha256": "0" * 64, **card})))


@pytest.fixture(scope="module")
def photo() -> Path:
    return sorted((_need(DATA / "isic-mvb") / "test" / "benign").glob("*.jpg"))[0]


@pytest.mark.parametrize(
    ("name", "edit", "says"),
    [
        ("input_str", lambda c: {**c, "input": "x"}, "'input' must be a dict"),
        (
            "size_null",
            lambda c: {**c, "input": {**c["input"], "size": None}},
            "input size must be an integer",
        ),
        ("thr_list", lambda c: {**c, "threshold": [0.5]}, "'threshold' must be a int or float"),
        ("classes_int", lambda c: {**c, "classes": 3}, "'classes' must be a list"),
    ],
)
def test_wrong_typed_cards(tmp_path: Path, photo: Path, name: str, edit, says: str) -> None:
    model = tmp_path / f"{name}.tflite"
    model.write_bytes(_with_raw_card(edit(read_card(TINY))))
    assert says in _one_line_error(_run("-m", str(model), str(photo)), 2)
    assert says in _one_line_error(_run("convert", "--inspect", str(model), module="dermedge.cli"))
    assert says in _one_line_error(_run("card", str(model), module="dermedge.cli"))
    assert says in _one_line_error(_run("--serve", "--model", str(model), "--port", "0"), 2)


def test_impossible_port_and_bad_card_beside_a_served_model(tmp_path: Path) -> None:
    assert "--port" in _one_line_error(_run("--serve", "--port", "70000"), 2)
    model = tmp_path / "m.tflite"
    shutil.copy(NOCARD, model)
    (tmp_path / "m.tflite.json").write_text("{bad")
    assert "m.tflite.json" in _one_line_error(
        _run("--serve", "--model", str(model), "--port", "0"), 2
    )


def test_a_file_name_that_is_not_utf8(tmp_path: Path, photo: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"lesion-\xff.jpg")
    shutil.copy(photo, folder / name)
    out = tmp_path / "out.csv"
    r = _run(
        "-m", str(TINY), "--csv", str(out), str(folder), env={"PYTHONIOENCODING": "utf-8:strict"}
    )
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert b"lesion-\\udcff.jpg" in r.stdout  # shown, escaped
    with open(out, encoding="utf-8", errors="surrogateescape", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert Path(row["file"]).name == name and row["decision"] in (
        "refer",
        "routine",
    )  # the exact name
    assert row["disclaimer"] == DISCLAIMER


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--serve", "--camera", "0"], "not used with --serve: --camera"),
        (["--serve", "--csv", "x.csv"], "not used with --serve: --csv"),
        (["--serve", "--threshold", "0.3", "--size", "64"], "--threshold, --size"),
        (["--port", "9000", "README.md"], "not used with classifying images: --port"),
        (["--tls-cert", "c.pem", "README.md"], "--tls-cert"),
        (["--camera", "0", "--picamera"], "--camera with --picamera"),
        (["--camera", "0", "--csv", "a.csv"], "not used with --camera/--picamera: --csv"),
        (["--save", "d", "README.md"], "not used with classifying images: --save"),
    ],
)
def test_options_a_mode_does_not_use_are_refused(args: list[str], says: str) -> None:
    assert says in _one_line_error(_run(*args), 2)


@pytest.fixture
def odd_folder(tmp_path: Path, photo: Path) -> Path:
    """Two real photos beside a dangling link, a link loop, a FIFO and a linked folder."""
    d = tmp_path / "odd"
    (d / "sub").mkdir(parents=True)
    shutil.copy(photo, d / "a.jpg")
    shutil.copy(photo, d / "sub" / "b.jpg")
    (d / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (d / "loop.jpg").symlink_to(d / "loop.jpg")
    (d / "sub" / "up").symlink_to(d)  # a folder loop
    os.mkfifo(d / "pipe.jpg")
    return d


def test_a_folder_reports_every_entry_it_cannot_read(odd_folder: Path) -> None:
    for arg in (str(odd_folder), str(odd_folder / "**" / "*.jpg")):
        r = _run("-m", str(TINY), "--json", arg)  # must return (a FIFO opened would hang)
        rows = {Path(row["file"]).name: row for row in map(json.loads, r.stdout.splitlines())}
        assert r.returncode == 1 and b"Traceback" not in r.stderr
        assert {"a.jpg", "b.jpg"} <= {n for n, row in rows.items() if "error" not in row}, rows
        assert rows["dangling.jpg"]["error"] == "dangling symbolic link"
        assert rows["loop.jpg"]["error"] == "symbolic link loop"
        assert rows["pipe.jpg"]["error"] == "not a regular file (FIFO)"
    rows = [
        json.loads(x) for x in _run("-m", str(TINY), "--json", str(odd_folder)).stdout.splitlines()
    ]
    assert any(row["file"].endswith("sub/up") and "not followed" in row["error"] for row in rows)


def test_data_inspect_reports_nested_folders_links_and_fifos(tmp_path: Path, photo: Path) -> None:
    root = tmp_path / "site"
    for label in ("benign", "malignant"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            shutil.copy(photo, root / label / f"{label}{i}.jpg")
    (root / "benign" / "more").mkdir()
    shutil.copy(photo, root / "benign" / "more" / "x.jpg")
    os.mkfifo(root / "malignant" / "pipe.jpg")
    (root / "malignant" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    r = _run("data", "inspect", str(root), module="dermedge.cli")
    out = (r.stdout + r.stderr).decode()
    assert "Traceback" not in out
    assert "benign/more: folder inside a class folder" in out
    assert (
        "pipe.jpg: not a regular file (FIFO)" in out and "gone.jpg: dangling symbolic link" in out
    )


def test_csv_target_that_is_a_folder_is_refused_before_the_run(tmp_path: Path, photo: Path) -> None:
    line = _one_line_error(_run("-m", str(TINY), "--csv", str(tmp_path), str(photo)), 2)
    assert "is a folder: give a file name" in line


def test_a_dataset_with_no_usable_rows_and_a_huge_csv_field(tmp_path: Path, photo: Path) -> None:
    ham = tmp_path / "ham"
    (ham / "images").mkdir(parents=True)
    shutil.copy(photo, ham / "images" / "ISIC_0000001.jpg")
    (ham / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\nHAM_1,ISIC_0000009,mel\n")
    assert "no usable labelled images" in _one_line_error(
        _run("data", "inspect", str(ham), module="dermedge.cli")
    )
    (ham / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx\nHAM_2," + "x" * 140000 + ",nv\n"
    )
    assert "field larger than field limit" in _one_line_error(
        _run("data", "inspect", str(ham), module="dermedge.cli")
    )


def test_a_folder_nested_a_thousand_deep_is_walked(tmp_path: Path, photo: Path) -> None:
    """~990 nested folders gave a RecursionError traceback (Path.rglob recurses): now the photo at
    the bottom is classified, and a ** glob over the same tree fails in one line."""
    top = bottom = tmp_path / "deep"
    top.mkdir()
    for _ in range(1000):  # one at a time: os.makedirs recurses too
        bottom = bottom / "d"
        bottom.mkdir()
    (bottom / "lesion.jpg").symlink_to(photo)
    try:
        r = _run("-m", str(TINY), str(top))
        out, err = r.stdout.decode(), r.stderr.decode()
        assert r.returncode == 0 and "Traceback" not in err, err[-500:]
        assert "lesion.jpg" in out and "1 images:" in out
        r = _run("-m", str(TINY), f"{top}/**/*.jpg")
        out, err = r.stdout.decode(), r.stderr.decode()
        assert "Traceback" not in err, err[-500:]
        assert r.returncode == 1 or "lesion.jpg" in out  # refused in one line, or walked
    finally:  # bottom up, here: pytest's cleanup (shutil.rmtree) recurses and would fail on it
        (bottom / "lesion.jpg").unlink()
        while bottom != tmp_path:
            bottom.rmdir()
            bottom = bottom.parent


def test_a_file_name_cannot_forge_a_table_row_or_drive_the_terminal(
    tmp_path: Path, photo: Path
) -> None:
    """A newline in a name printed a second, forged row; an escape sequence reached the terminal."""
    folder = tmp_path / "names"
    folder.mkdir()
    forged = "a.jpg\nREFER      0.999  malignant  forged.jpg"
    for name in (forged, "\x1b[2Jb.jpg", "c\u202egpj.exe.jpg"):
        (folder / name).symlink_to(photo)
    r = _run("-m", str(TINY), str(folder))
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    rows = [ln for ln in out.splitlines() if str(folder) in ln]
    assert len(rows) == 3 and not any(ln.startswith("REFER") for ln in out.splitlines())
    assert any("a.jpg\\nREFER" in ln for ln in rows)
    assert "\x1b" not in out and "\u202e" not in out and "\\x1b[2Jb.jpg" in out


def test_formula_file_names_are_neutralised_in_the_csv(tmp_path: Path, photo: Path) -> None:
    """`=cmd|...` and the other formula starts went into the CSV as they were: a spreadsheet
    opening it would run them. Each now starts with ' (and reads as the name otherwise)."""
    names = ["=cmd|' -C calc'!A1.jpg", "+1.jpg", "-2.jpg", "@SUM(1).jpg", "\tx.jpg", "plain.jpg"]
    for name in names:
        (tmp_path / name).symlink_to(photo)
    r = subprocess.run(
        [sys.executable, "-m", "dermedge.edge.cli", "-m", str(TINY), "--csv", "out.csv", "--"]
        + names,
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr.decode()
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as f:
        files = [row["file"] for row in csv.DictReader(f)]
    assert sorted(files) == sorted(n if n == "plain.jpg" else "'" + n for n in names)

"""edge-classify on still images: table, JSON lines, CSV, bad files, flags and their errors."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dermedge import DISCLAIMER
from dermedge.edge.cli import main

ASSETS = Path(__file__).parents[1] / "assets"
INT8 = str(ASSETS / "tiny_int8.tflite")
NOCARD = str(ASSETS / "tiny_fp32_nocard.tflite")
REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def folder(isic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real photos and the usual field mess: corrupt, empty, truncated, not images."""
    d = tmp_path_factory.mktemp("photos")
    sources = (
        sorted(isic_dir.glob("test/benign/*.jpg"))[:2]
        + sorted(isic_dir.glob("test/malignant/*.jpg"))[:2]
    )
    for i, src in enumerate(sources):
        shutil.copy(src, d / f"{i}_{src.parent.name}.JPG")
    data = sources[0].read_bytes()
    (d / "sub").mkdir()
    (d / "sub" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (d / "notes.jpeg").write_text("this is not a photo")
    (d / "readme.txt").write_text("ignored: no image extension")
    (d / ".hidden.jpg").write_bytes(b"")
    return d


def test_table_reports_every_file_and_fails_with_exit_1(folder: Path) -> None:
    code, out, _ = run("-m", INT8, str(folder))
    assert code == 1
    assert out.count(DISCLAIMER) == 1
    lines = out.splitlines()
    ok = [line for line in lines if line.startswith(("REFER", "routine"))]
    failed = dict(
        line.split(None, 3)[3].split(": ", 1) for line in lines if line.startswith("FAILED")
    )
    assert len(ok) == 4
    assert len(failed) == 4 and not any("hidden" in line for line in lines)
    assert "empty file (0 bytes)" in failed[str(folder / "empty.jpg")]
    assert "truncated" in failed[str(folder / "sub" / "truncated.jpg")]
    assert "not an image" in failed[str(folder / "notes.jpeg")]
    assert (
        "corrupt" in failed[str(folder / "corrupt.png")]
        or "not an image" in failed[str(folder / "corrupt.png")]
    )
    assert (
        "8 images: " in out and "4 failed" in out and "1 non-image files in folders ignored" in out
    )


def test_all_good_exit_0_and_globs(folder: Path) -> None:
    code, out, _ = run("-m", INT8, str(folder / "*_benign.JPG"), str(folder / "*_malignant.JPG"))
    assert code == 0, out
    assert "4 images:" in out and "0 failed" in out
    code, out, _ = run("-m", INT8, str(folder / "nothing-*.jpg"))
    assert code == 1 and "no files match" in out


def test_json_lines(folder: Path) -> None:
    code, out, err = run("-m", INT8, "--json", str(folder))
    assert code == 1
    rows = [json.loads(line) for line in out.splitlines()]  # stdout is pure JSON lines
    assert len(rows) == 8
    good = [r for r in rows if "error" not in r]
    assert all(
        set(r) == {"file", "prob", "label", "decision", "threshold", "disclaimer"} for r in good
    )
    assert all(r["disclaimer"] == DISCLAIMER for r in rows)  # every record says so, errors too
    assert all(
        r["decision"] == ("refer" if r["prob"] >= r["threshold"] else "routine") for r in good
    )
    assert DISCLAIMER in err


def test_csv_is_written_whole(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "results.csv"
    code, _, _ = run("-m", INT8, "--csv", str(target), str(folder))
    assert code == 1
    with open(target, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and rows[0].keys() == {
        "file",
        "prob",
        "label",
        "decision",
        "threshold",
        "warning",
        "unfamiliar",
        "guard_score",
        "reason",
        "error",
        "disclaimer",
    }
    assert sum(bool(r["error"]) for r in rows) == 4 and all(
        r["disclaimer"] == DISCLAIMER for r in rows
    )
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temp file left behind
    code, _, err = run("-m", INT8, "--csv", str(tmp_path / "no" / "dir" / "x.csv"), str(folder))
    assert code == 2 and "cannot write --csv" in err


def test_flags_override_the_card(folder: Path) -> None:
    images = str(folder / "*.JPG")
    _, out, _ = run("-m", INT8, "--threshold", "0", images)
    assert "4 refer, 0 cannot assess (refer), 0 routine" in out
    _, out, _ = run("-m", INT8, "--threshold", "1", images)
    assert "0 refer, 0 cannot assess (refer), 4 routine" in out
    code, out, _ = run("-m", INT8, "--crop", "center", images)
    assert code == 0
    code, _, err = run("-m", INT8, "--size", "96", images)
    assert code == 2 and "does not match the model input 64x64" in err


def test_model_without_card(folder: Path) -> None:
    code, _, err = run("-m", NOCARD, str(folder / "0_benign.JPG"))
    assert code == 2 and "--crop" in err and "--threshold" in err
    code, out, _ = run(
        "-m", NOCARD, "--crop", "squash", "--threshold", "0.5", str(folder / "0_benign.JPG")
    )
    assert code == 0 and "1 images:" in out


def test_model_errors(folder: Path, tmp_path: Path) -> None:
    code, _, err = run(str(folder / "0_benign.JPG"))  # no --model and nothing bundled (yet)
    if code == 2:
        assert "--model PATH" in err
    code, _, err = run("-m", str(tmp_path / "missing.tflite"), str(folder))
    assert code == 2 and "model file not found" in err
    code, _, err = run("-m", INT8, "--delegate", str(folder / "notes.jpeg"), str(folder))
    assert code == 2 and "cannot load delegate" in err


def test_usage_errors() -> None:
    code, _, err = run("-m", INT8)
    assert code == 2 and "give images" in err
    code, _, err = run("-m", INT8, "--camera", "0", "x.jpg")
    assert code == 2 and "not both" in err
    code, _, err = run("-m", INT8, "--camera", "0", "--smooth", "2/5")
    assert code == 2 and "more than half" in err
    code, _, err = run("-m", INT8, "--save", "out", "--max-frames", "3", "x.jpg")
    assert code == 2 and "not used with classifying images: --save, --max-frames" in err
    code, _, err = run("-m", INT8, "--camera", "0", "--csv", "out.csv")
    assert code == 2 and "not used with --camera/--picamera: --csv" in err


def test_version_names_the_runtime() -> None:
    code, out, _ = run("--version")
    assert code == 0 and "runtime" in out
    assert any(name in out for name in ("ai-edge-litert", "tflite-runtime", "tensorflow"))


def test_installed_entry_point_prints_a_result_fast(folder: Path) -> None:
    """The real process, as on the device: first result on stdout, no tracebacks."""
    start = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "dermedge.edge", "-m", INT8, str(folder / "0_benign.JPG"), "-v"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert "0_benign.JPG" in r.stdout and "runtime" in r.stderr
    assert "INFO:" not in r.stderr  # the runtime's native chatter is filtered
    assert elapsed < 20  # generous: a loaded CI box; the benchmark measures it properly


def test_low_resolution_and_blurred_photos_are_flagged(
    isic_dir: Path, ham_dir: Path, tmp_path: Path
) -> None:
    """The shipped default misses more melanomas in 100x75 thumbnails: such files get a warning."""
    from PIL import Image, ImageFilter

    sharp = sorted(isic_dir.glob("test/malignant/*.jpg"))[0]
    shutil.copy(sharp, tmp_path / "sharp.jpg")
    shutil.copy(sorted((ham_dir / "images").glob("*.jpg"))[0], tmp_path / "thumb.jpg")
    Image.open(sharp).filter(ImageFilter.GaussianBlur(3)).save(tmp_path / "blurred.jpg", quality=95)
    target = tmp_path / "out.csv"
    code, out, _ = run("-m", "default", "--json", "--csv", str(target), str(tmp_path / "*.jpg"))
    assert code == 0
    rows = {Path(r["file"]).name: r for r in map(json.loads, out.splitlines())}
    assert "warning" not in rows["sharp.jpg"]
    assert rows["thumb.jpg"]["warning"].startswith("low resolution (100x75)")
    assert rows["blurred.jpg"]["warning"].startswith("blurred")
    with open(target, newline="") as f:
        by_name = {Path(r["file"]).name: r["warning"] for r in csv.DictReader(f)}
    assert by_name["sharp.jpg"] == "" and by_name["thumb.jpg"].startswith("low resolution")
    code, out, _ = run("-m", "default", str(tmp_path / "thumb.jpg"))
    assert "[low resolution (100x75)" in out and "1 with a quality warning" in out


def test_help_groups_options_by_mode():
    from dermedge.edge.cli import HELP_SECTIONS, MODE_OPTIONS

    text = CliRunner().invoke(main, ["--help"]).output
    titles = [f"{t}:" for t in HELP_SECTIONS.values()] + ["Other:"]
    starts = [text.index(t) for t in titles]
    assert starts == sorted(starts)  # every section, in order
    ends = starts[1:] + [len(text)]

    def section_of(flag: str) -> str:
        at = text.index(f"  {flag} ")
        return next(t for t, a, b in zip(titles, starts, ends, strict=True) if a < at < b)

    assert section_of("--csv") == "Photos (edge-classify IMG...):"
    assert (
        section_of("--camera") == section_of("--duration") == "Camera (--camera SRC, --picamera):"
    )
    assert section_of("--tls-cert") == "Phone server (--serve):"
    assert section_of("--threshold") == "Photos and camera:"
    assert "csv_path" in MODE_OPTIONS["images"] and "csv_path" not in MODE_OPTIONS["camera"]


def test_verbose_alone_shows_the_model_card() -> None:
    """`edge-classify -v` with nothing to classify used to be a usage error; it shows the card."""
    code, out, err = run("-m", INT8, "-v")
    assert code == 0, err
    assert "threshold" in out and "refer at or above it" in out and DISCLAIMER in out
    assert "give images" not in err and "threads" in err  # the runtime details, as with images


@pytest.mark.parametrize(
    ("flag", "value"), [("--width", "-640"), ("--height", "0"), ("--fps", "-5"), ("--fps", "0")]
)
def test_impossible_camera_sizes_are_refused(flag: str, value: str) -> None:
    """Negative (or zero) sizes and rates went to the camera as they were; refused in one line."""
    result = CliRunner().invoke(main, ["-m", INT8, "--camera", "0", flag, value])
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and f"Invalid value for '{flag}'" in errors[0], result.stderr


def test_threads_help_says_what_threads_do() -> None:
    """The help said only "Interpreter threads": they run the model (LiteRT's pool; on the
    2-core test machine 4 or 8 of them start 3 or 7 worker threads), nothing else."""
    _, out, _ = run("--help")
    text = " ".join(out.split())
    assert "decoding is not threaded" in text and "slower, not faster" in text
    code, _, err = run("-m", INT8, "-v", "--threads", "3")
    assert code == 0 and "3 threads" in err


def _pty_run(args: list[str], stdout_file: Path | None = None) -> str:
    """What a terminal shows of `edge-classify ARGS` (stderr, and stdout unless it goes to
    `stdout_file`): a real pseudo-terminal of 120 columns, so tqdm draws its bar."""
    import fcntl
    import os
    import struct

    pty = pytest.importorskip("pty")
    termios = pytest.importorskip("termios")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    out = open(stdout_file, "wb") if stdout_file else None  # noqa: SIM115
    cmd = [sys.executable, "-m", "dermedge.edge.cli", *args]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=out or slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(60)
    os.close(master)
    if out:
        out.close()
    return b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_never_glues_onto_the_table(folder: Path, tmp_path: Path) -> None:
    """At a terminal the bar is drawn and every row is printed through it (cleared first); with
    stdout in a file the file holds the table alone; without a terminal there is no bar."""
    piped = subprocess.run(
        [sys.executable, "-m", "dermedge.edge.cli", "-m", INT8, str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "\r" not in piped.stdout + piped.stderr and "img/s" not in piped.stderr
    n = piped.stdout.count(str(folder))
    assert n >= 5
    screen = _pty_run(["-m", INT8, str(folder)])
    assert "img/s" in screen  # the bar was drawn: the check below means something
    rows = [ln for ln in screen.split("\n") if str(folder) in ln]
    assert len(rows) == n, screen
    for ln in rows:  # what stays on screen of a line is what follows its last carriage return
        shown = ln.rstrip("\r").rsplit("\r", 1)[-1]
        assert shown.split()[0] in ("routine", "REFER", "FAILED", "none", "CANNOT"), repr(ln)
    table = tmp_path / "table.txt"
    _pty_run(["-m", INT8, str(folder)], stdout_file=table)
    text = table.read_text()
    assert "\r" not in text and "img/s" not in text and text.count(str(folder)) == n

"""Fuzzed model headers: every one-byte edit of the first 200 bytes of the shipped tiny model (the
root table, the vtables and the card's buffer and metadata vectors live there) is refused with a
one-line ValueError / EdgeError, never a TypeError or other traceback from the flatbuffer walk,
and never loaded. In-process for the whole set; a few of the worst through the real CLIs."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from dermedge.edge.card import check_model_file, model_io, read_card
from dermedge.edge.runtime import EdgeError, EdgeModel

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "dermedge" / "models" / "tiny.tflite"
HEAD = 200
VALUES = (0x00, 0xFF, 0x01, 0x80)  # zero, all ones, and the lowest / highest bit flipped


def _edits(blob: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, new byte, edited file) for each byte of the head set to each value it is not,
    and to itself with the low and high bit flipped."""
    out = []
    for offset in range(HEAD):
        for value in {VALUES[0], VALUES[1], blob[offset] ^ VALUES[2], blob[offset] ^ VALUES[3]}:
            if value != blob[offset]:
                edited = bytearray(blob)
                edited[offset] = value
                out.append((offset, value, bytes(edited)))
    return out


EDITS = _edits(TINY.read_bytes())


def _one_line(e: BaseException) -> bool:
    return bool(str(e)) and "\n" not in str(e).strip()


def test_every_head_edit_is_refused_in_one_line_by_the_readers() -> None:
    """read_card (dermedge card), model_io (edge-classify's contract for a card-less model) and
    check_model_file (before any interpreter) raise ValueError or nothing: no other exception."""
    assert len(EDITS) > 600
    crashes, multi_line = [], []
    for offset, value, blob in EDITS:
        for name, read in (
            ("read_card", read_card),
            ("model_io", model_io),
            ("check_model_file", check_model_file),
        ):
            try:
                read(blob)
            except ValueError as e:
                if not _one_line(e):
                    multi_line.append((offset, value, name, str(e)))
            except Exception as e:  # noqa: BLE001 - the point: nothing else may escape
                crashes.append((offset, value, name, f"{type(e).__name__}: {e}"))
    assert crashes == [], crashes[:5]
    assert multi_line == [], multi_line[:5]


def test_every_head_edit_is_refused_by_edge_model(tmp_path: Path) -> None:
    """None loads (the digest, or a card with no readable digest, refuses each one), and each
    refusal is one EdgeError line."""
    path = tmp_path / "edited.tflite"
    loaded, crashes = [], []
    for offset, value, blob in EDITS:
        path.write_bytes(blob)
        try:
            EdgeModel(path)
            loaded.append((offset, value))
        except EdgeError as e:
            assert _one_line(e), str(e)
        except Exception as e:  # noqa: BLE001
            crashes.append((offset, value, f"{type(e).__name__}: {e}"))
    assert crashes == [], crashes[:5]
    assert loaded == []


@cache
def _worst_edits(n: int) -> list[bytes]:
    """`n` edits whose walk ends in an offset past 32 bits (the flatbuffers TypeError that used
    to escape as a traceback), spread over the head."""
    worst = []
    for _, _, blob in EDITS:
        try:
            read_card(blob)
        except ValueError as e:
            if "bad number" in str(e):
                worst.append(blob)
    assert len(worst) >= n, len(worst)
    return worst[:: len(worst) // n][:n]


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "dermedge.edge.cli", "-m", "{model}", "{photo}"],
        ["-m", "dermedge.cli", "card", "{model}"],
        [
            "-m",
            "dermedge.cli",
            "calibrate",
            "{model}",
            "--data",
            "{dir}",
            "--out",
            "{dir}/o.tflite",
        ],
    ],
    ids=["edge-classify", "dermedge card", "dermedge calibrate"],
)
def test_the_clis_refuse_the_worst_edits_in_one_line(tmp_path: Path, command: list[str]) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG not read: the model is refused first")
    for k, blob in enumerate(_worst_edits(2)):
        model = tmp_path / f"worst{k}.tflite"
        model.write_bytes(blob)
        args = [a.format(model=model, photo=photo, dir=tmp_path) for a in command]
        r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "corrupt TFLite flatbuffer" in lines[0], r.stderr

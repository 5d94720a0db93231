"""benchmarks/field_video.py end to end: a real MJPG video of Derm7pt photos through the camera session."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from dermedge.edge.runtime import CANNOT_ASSESS, SENDS_ON

pytestmark = pytest.mark.slow  # trains, converts or runs a whole benchmark

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "field_video.py"
PER_CLASS, FPS, CLIP_S, GAP = 4, 15, 0.6, 5


def _script() -> Any:
    """The benchmark script, imported from its file."""
    spec = importlib.util.spec_from_file_location("field_video", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _can_write_mjpg(folder: Path) -> bool:
    """Whether this OpenCV build writes MJPG .avi files that it reads back."""
    path = folder / "probe.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (64, 48))
    if not writer.isOpened():
        return False
    for _ in range(3):
        writer.write(np.full((48, 64, 3), 128, np.uint8))
    writer.release()
    cap = cv2.VideoCapture(str(path))
    ok = cap.read()[0]
    cap.release()
    return ok


@pytest.fixture(scope="module")
def run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict, Path]:
    derm7pt = data_dir / "derm7pt"
    if not derm7pt.is_dir():
        pytest.skip(f"Derm7pt not found at {derm7pt} (set DERMEDGE_DATA to the shared data folder)")
    out = tmp_path_factory.mktemp("field_video")
    if not _can_write_mjpg(out):
        pytest.skip("this OpenCV build cannot write/read MJPG .avi video (no video I/O backend)")
    fv = _script()
    argv = ["--model", "tiny", "--data", str(derm7pt), "--per-class", str(PER_CLASS)]
    argv += ["--fps", str(FPS), "--clip-s", str(CLIP_S), "--gap", str(GAP), "--out", str(out)]
    return fv, fv.main(argv), out


def test_the_video_is_real(run: tuple[Any, dict, Path]) -> None:
    fv, result, out = run
    video = out / "field_video.avi"
    assert video.read_bytes()[:4] == b"RIFF"
    lesions, clip = 2 * PER_CLASS, round(CLIP_S * FPS)
    frames = GAP + lesions * (clip + GAP)
    assert result["video"]["frames"] == frames == fv.video_frame_count(video)
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    _, first = cap.read()
    cap.set(cv2.CAP_PROP_POS_FRAMES, GAP + 2)
    _, a = cap.read()
    _, b = cap.read()
    cap.release()
    assert first.shape == (480, 640, 3) and first.mean() < 20  # a dark lead-in frame
    assert a.mean() > 40 and not np.array_equal(a, b)  # the lesion moves: a video, not a still
    corner, centre = a[:20, :20].mean(), a[220:260, 300:340].mean()
    assert corner < 20 < centre  # the dark vignette around the field of view
    assert result["session"]["frames"] == frames and result["session"]["corrupt"] == 0


def test_every_lesion_accounted_for(run: tuple[Any, dict, Path]) -> None:
    _, result, _ = run
    lesions = result["lesions"]
    assert len(lesions) == 2 * PER_CLASS
    assert sorted(r["class"] for r in lesions) == ["benign"] * PER_CLASS + ["melanoma"] * PER_CLASS
    assert all(r["dx"].startswith("melanoma") for r in lesions if r["class"] == "melanoma")
    assert len({r["path"] for r in lesions}) == len(lesions)
    for r in lesions:
        assert r["outcome"] in ("decided", "gate refused", "no vote")
        assert (r["outcome"] == "decided") == bool(r["decisions"])
        assert r["classified"] + sum(r["gated"].values()) == r["frames"]
        assert all(r["first_frame"] <= d["frame"] <= r["last_frame"] for d in r["decisions"])
    n_decisions = sum(len(r["decisions"]) for r in lesions) + len(result["stray_decisions"])
    assert n_decisions == sum(result["session"]["decisions"].values())
    for cls, c in result["per_class"].items():
        d = c["decision"]
        assert d["decided"] + d["gate_refused"] + d["no_vote"] == c["lesions"] == PER_CLASS, cls


def test_blank_stretches_decide_nothing(run: tuple[Any, dict, Path]) -> None:
    _, result, _ = run
    v = result["video"]
    assert result["stray_decisions"] == []
    assert v["gap_frames"] == GAP * (2 * PER_CLASS + 1) and v["gap_frames_classified"] == 0
    assert result["session"]["gated"].get("too dark", 0) >= v["gap_frames"]


def test_figures_match_the_decisions(run: tuple[Any, dict, Path]) -> None:
    _, result, out = run
    saved = json.loads((out / "results.json").read_text())
    assert saved["per_class"] == result["per_class"] and saved["target"] == result["target"]
    threshold = result["model"]["threshold"]
    for cls, c in saved["per_class"].items():
        rows = [r for r in saved["lesions"] if r["class"] == cls]
        decided = [r for r in rows if r["decisions"]]
        refer = [r for r in decided if r["decisions"][-1]["decision"] in SENDS_ON]
        assert c["decision"]["decided"] == len(decided) and c["decision"]["refer"] == len(refer)
        if decided:
            assert c["decision"]["refer_of_decided"] == pytest.approx(len(refer) / len(decided))
        for d in (d for r in decided for d in r["decisions"]):  # prob: the agreeing votes' mean
            if d["decision"] == CANNOT_ASSESS:  # unsure frames vote to send on at any prob
                continue
            assert (
                (d["prob"] >= threshold - 1e-4)
                if d["decision"] == "refer"
                else (d["prob"] < threshold + 1e-4)
            )
        seen = [r for r in rows if r["classified"]]
        frame_refer = [r for r in seen if r["median_prob"] >= threshold]
        assert c["per_frame"]["classified"] == len(seen)
        assert c["per_frame"]["refer"] == len(frame_refer)
        assert c["per_frame"]["never_classified"] == len(rows) - len(seen)
    md = (out / "results.md").read_text()
    assert "| benign | 4 |" in md and "| melanoma | 4 |" in md and "Target" in md
    assert (out / "results.png").stat().st_size > 1000 or "no plot" in md


def test_selection_is_seeded_and_stratified(run: tuple[Any, dict, Path], data_dir: Path) -> None:
    fv, _, _ = run
    from dermedge.data.index import read_dataset

    records = read_dataset(data_dir / "derm7pt").records
    a, b = fv.choose(records, 40, 3), fv.choose(records, 40, 3)
    assert [r.path for _, r in a] == [r.path for _, r in b]
    benign_dx = {r.dx for cls, r in a if cls == "benign"}
    assert {"clark nevus", "reed or spitz nevus"} <= benign_dx and len(benign_dx) >= 8
    assert fv.allocate({"a": 7, "b": 2, "c": 1}, 5) == {"a": 4, "b": 1, "c": 0}

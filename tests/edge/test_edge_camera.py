"""Camera mode on real video files and a real loopback MJPEG stream made from real photos."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from dermedge import DISCLAIMER
from dermedge.data.contract import InputContract, load_rgb, preprocess
from dermedge.edge.camera import (
    OpenCVSource,
    Saver,
    Session,
    SessionOptions,
    Smoother,
    SourceError,
    contract_box,
    draw_overlay,
    model_input,
)
from dermedge.edge.cli import main
from dermedge.edge.quality import measure, scene_change, signature
from dermedge.edge.runtime import EdgeError, EdgeModel

ASSETS = Path(__file__).parents[1] / "assets"
INT8 = ASSETS / "tiny_int8.tflite"
REPO = Path(__file__).resolve().parents[2]
W, H = 320, 240
PER_LESION = 20


@pytest.fixture(scope="module")
def model() -> EdgeModel:
    return EdgeModel(INT8, threads=2)


@pytest.fixture(scope="module")
def lesions(isic_dir: Path, model: EdgeModel) -> list[np.ndarray]:
    """Real photos (RGB): the most and least suspicious of a few of each class, then a third."""
    paths = (
        sorted(isic_dir.glob("test/malignant/*.jpg"))[:10]
        + sorted(isic_dir.glob("test/benign/*.jpg"))[:10]
    )
    probs = [model.classify(p)["prob"] for p in paths]
    order = np.argsort(probs)
    picks = [paths[order[-1]], paths[order[0]], paths[order[len(order) // 2]]]
    return [np.asarray(load_rgb(p)) for p in picks]


def frame_of(rgb: np.ndarray, k: int) -> np.ndarray:
    """A BGR camera frame of a photo, jittered by a pixel or two like a hand-held camera."""
    frame = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (W, H), interpolation=cv2.INTER_AREA)
    return np.roll(frame, (k % 3 - 1, k % 2), axis=(0, 1))


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (W, H))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


@pytest.fixture(scope="module")
def videos(lesions: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    frames = [frame_of(rgb, k) for rgb in lesions for k in range(PER_LESION)]
    normal = write_video(d / "normal.avi", frames)
    data = normal.read_bytes()
    (d / "truncated.avi").write_bytes(data[: int(len(data) * 0.5)])
    corrupt = bytearray(data)
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\xff\xd8\xff"]
    rng = np.random.default_rng(1)
    for k in (10, 25, 40):  # wreck three frames' JPEG headers
        corrupt[starts[k] + 2 : starts[k] + 400] = rng.integers(
            0, 256, 398, dtype=np.uint8
        ).tobytes()
    (d / "corrupt.avi").write_bytes(bytes(corrupt))
    good = frame_of(lesions[0], 0)
    gated = [cv2.GaussianBlur(good, (0, 0), 6)] * 8 + [(good * 0.15).astype(np.uint8)] * 8
    write_video(d / "gated.avi", gated + [frame_of(lesions[0], k) for k in range(10)])
    return {p.stem: p for p in d.iterdir()}


def run_session(model: EdgeModel, source: Any, **options: Any) -> tuple[Any, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    summary = Session(model, source, SessionOptions(**options), events.append).run()
    return summary, events


def test_video_file_session(model: EdgeModel, videos: dict[str, Path]) -> None:
    summary, events = run_session(model, OpenCVSource(str(videos["normal"])))
    assert summary.frames == summary.classified == 3 * PER_LESION
    assert summary.ended == "end of video" and not summary.fault and summary.corrupt == 0
    decisions = [e for e in events if e["event"] == "decision"]
    # One stable decision per lesion: the scene change between photos resets the vote.
    assert len(decisions) == 3 and [d["decision"] for d in decisions[:2]] == ["refer", "routine"]
    assert all(d["votes"] == "3/3" and d["frame"] in (3, 23, 43) for d in decisions)
    assert decisions[0]["prob"] >= model.threshold > decisions[1]["prob"]
    assert "refer" in summary.text() and summary.fps > 0


def test_truncated_video_ends_with_a_fault(model: EdgeModel, videos: dict[str, Path]) -> None:
    summary, _ = run_session(model, OpenCVSource(str(videos["truncated"])))
    assert 0 < summary.frames < 3 * PER_LESION
    assert summary.fault and "ended early" in summary.ended and "of 60 frames" in summary.ended


def test_corrupt_frames_are_skipped(model: EdgeModel, videos: dict[str, Path]) -> None:
    summary, _ = run_session(model, OpenCVSource(str(videos["corrupt"])))
    assert summary.corrupt >= 1
    assert summary.frames + summary.corrupt == 3 * PER_LESION
    assert summary.ended == "end of video" and not summary.fault


def test_quality_gate_before_inference(model: EdgeModel, videos: dict[str, Path]) -> None:
    summary, events = run_session(model, OpenCVSource(str(videos["gated"])))
    assert summary.gated["hold still"] >= 6 and summary.gated["too dark"] >= 6
    assert summary.classified == summary.frames - sum(summary.gated.values()) >= 8
    reasons = [e["reason"] for e in events if e["event"] == "quality"]
    assert reasons == ["hold still", "too dark"]  # reported once per change, not per frame
    assert events[-1]["event"] == "decision" and events[-1]["decision"] == "refer"


def test_bounds(model: EdgeModel, videos: dict[str, Path]) -> None:
    summary, _ = run_session(model, OpenCVSource(str(videos["normal"])), max_frames=7)
    assert summary.frames == 7 and summary.ended == "--max-frames 7 reached" and not summary.fault
    summary, _ = run_session(model, OpenCVSource(str(videos["normal"])), duration=1e-6)
    assert summary.frames <= 1 and summary.ended.startswith("--duration")


def test_missing_source(model: EdgeModel, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="video file not found"):
        run_session(model, OpenCVSource(str(tmp_path / "missing.avi")))
    with pytest.raises(SourceError, match="cannot open camera /dev/video99"):
        run_session(model, OpenCVSource("/dev/video99"))
    code = CliRunner().invoke(main, ["-m", str(INT8), "--camera", "/dev/video99"])
    assert code.exit_code == 2 and "cannot open camera" in code.stderr


def test_reconnect_until_the_file_appears(
    model: EdgeModel, videos: dict[str, Path], tmp_path: Path
) -> None:
    late = tmp_path / "late.avi"
    threading.Timer(0.5, shutil.copy, (videos["normal"], late)).start()
    summary, events = run_session(model, OpenCVSource(str(late)), reconnect=8, backoff=0.1)
    retries = [e for e in events if e["event"] == "reconnect"]
    assert retries and "not found" in retries[0]["error"] and retries[1]["wait_s"] == 0.2
    assert summary.frames == 3 * PER_LESION and not summary.fault


class MjpegCamera:
    """A loopback HTTP MJPEG camera from real photos; can drop and come back on the same port."""

    def __init__(
        self,
        jpegs: list[bytes],
        per_connection: int | None,
        fps: float = 100,
        down_after_first: float = 0,
    ) -> None:
        self.jpegs, self.per_connection, self.fps = jpegs, per_connection, fps
        self.down_after_first = down_after_first
        self.server: ThreadingHTTPServer | None = None
        self.port = 0
        self.connections = 0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                camera.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                k = 0
                try:
                    while camera.per_connection is None or k < camera.per_connection:
                        jpeg = camera.jpegs[(k // PER_LESION) % len(camera.jpegs)]
                        head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                        self.wfile.write(head.encode() + jpeg + b"\r\n")
                        k += 1
                        time.sleep(1 / camera.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if camera.connections == 1 and camera.down_after_first:
                    threading.Thread(target=camera.bounce, args=(camera.down_after_first,)).start()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def bounce(self, down_for: float) -> None:
        """Go away (connections refused) for a while, then come back."""
        self.stop()
        time.sleep(down_for)
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"


@pytest.fixture
def jpegs(lesions: list[np.ndarray]) -> list[bytes]:
    return [cv2.imencode(".jpg", frame_of(rgb, 0))[1].tobytes() for rgb in lesions]


@pytest.fixture
def camera(jpegs: list[bytes]) -> Iterator[MjpegCamera]:
    cam = MjpegCamera(jpegs, per_connection=15)
    cam.start()
    yield cam
    cam.stop()


def test_stream_drop_without_reconnect_is_a_fault(model: EdgeModel, camera: MjpegCamera) -> None:
    summary, _ = run_session(model, OpenCVSource(camera.url))
    assert summary.frames == 15 and summary.fault and "--reconnect" in summary.ended


def test_stream_that_drops_and_comes_back(model: EdgeModel, jpegs: list[bytes]) -> None:
    cam = MjpegCamera(jpegs, per_connection=15, down_after_first=0.7)  # drops, away for 0.7 s
    cam.start()
    try:
        options = {"reconnect": 6, "backoff": 0.2, "max_frames": 25}
        summary, events = run_session(model, OpenCVSource(cam.url), **options)
    finally:
        cam.stop()
    assert summary.frames == 25 and summary.reconnects == 1 and not summary.fault
    failed = [e for e in events if e["event"] == "reconnect"]
    assert failed and "cannot open stream" in failed[0]["error"]
    assert cam.connections == 2


def test_ctrl_c_ends_cleanly_with_a_summary(jpegs: list[bytes]) -> None:
    cam = MjpegCamera(jpegs, per_connection=None, fps=30)
    cam.start()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dermedge.edge", "-m", str(INT8), "--camera", cam.url, "--json"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        # wait for a decision from the live stream, bounded: under load the start can be slow,
        # and a SIGINT before the loop runs would test the import, not the loop
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=120)
        sel.close()
        if not ready:
            proc.kill()
            pytest.fail(f"no decision within 120 s: {proc.communicate()[1][-2000:]}")
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "decision"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        cam.stop()
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["event"] == "summary" and summary["ended"] == "interrupted (Ctrl-C)"
    assert "Traceback" not in err and DISCLAIMER in err


def test_save_writes_frames_crops_records_and_logs(
    model: EdgeModel, videos: dict[str, Path], tmp_path: Path
) -> None:
    saver = Saver(tmp_path / "session")
    events: list[dict[str, Any]] = []
    summary = Session(
        model, OpenCVSource(str(videos["normal"])), SessionOptions(), events.append, saver
    ).run()
    decisions = [e for e in events if e["event"] == "decision"]
    assert summary.saved == len(decisions) == 3 and not summary.fault
    for record in decisions:
        frame = cv2.imread(str(saver.dir / record["frame_file"]))
        crop = cv2.imread(str(saver.dir / record["crop_file"]))
        assert frame.shape == (H, W, 3) and crop.shape == (H, W, 3)  # squash: the whole frame
        stored = json.loads((saver.dir / record["frame_file"]).with_suffix(".json").read_text())
        assert stored == record
    log = [json.loads(line) for line in saver.jsonl.read_text().splitlines()]
    assert [r["decision"] for r in log] == [d["decision"] for d in decisions]
    assert len(saver.csv.read_text().splitlines()) == 4  # header + 3
    assert not [p for p in saver.dir.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_save_folder(model: EdgeModel, videos: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(EdgeError, match="cannot write to --save folder"):
        Saver(blocker / "sub")
    result = CliRunner().invoke(
        main, ["-m", str(INT8), "--camera", str(videos["normal"]), "--save", str(blocker)]
    )
    assert result.exit_code == 2 and "cannot write to --save folder" in result.stderr
    # The folder going away mid-session (disk pulled, full): reported once, the session goes on.
    saver = Saver(tmp_path / "gone")
    shutil.rmtree(saver.dir)
    saver.dir.write_text("now a file")
    events: list[dict[str, Any]] = []
    summary = Session(
        model, OpenCVSource(str(videos["normal"])), SessionOptions(), events.append, saver
    ).run()
    assert summary.frames == 3 * PER_LESION and summary.save_error and summary.fault
    assert [e["event"] for e in events].count("error") == 1
    assert sum(e["event"] == "decision" for e in events) == 3


def test_cli_camera_json_and_save(videos: dict[str, Path], tmp_path: Path) -> None:
    args = [
        "-m",
        str(INT8),
        "--camera",
        str(videos["corrupt"]),
        "--json",
        "--save",
        str(tmp_path),
        "--smooth",
        "4/6",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[-1]["event"] == "summary" and lines[-1]["corrupt"] >= 1
    decisions = [e for e in lines if e["event"] == "decision"]
    assert decisions and all(d["votes"] == "4/4" for d in decisions)
    assert all((tmp_path / d["frame_file"]).is_file() for d in decisions)
    assert result.stderr.count(DISCLAIMER) == 1


def test_cli_camera_table(videos: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["-m", str(INT8), "--camera", str(videos["truncated"])])
    assert result.exit_code == 1  # ended by a fault
    assert "REFER" in result.stdout and "ended early" in result.stdout
    assert result.stdout.count(DISCLAIMER) == 1


def test_preview_and_picamera_explain_themselves(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["-m", str(INT8)]
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = CliRunner().invoke(main, [*base, "--camera", str(videos["normal"]), "--preview"])
    assert result.exit_code == 2 and "--preview needs a display" in result.stderr
    monkeypatch.setenv("DISPLAY", ":99")
    result = CliRunner().invoke(main, [*base, "--camera", str(videos["normal"]), "--preview"])
    if (
        "GUI: NONE" in cv2.getBuildInformation()
        or "NONE" in cv2.getBuildInformation().split("GUI:")[1][:40]
    ):
        assert result.exit_code == 2 and "GUI support" in result.stderr
    try:
        import picamera2  # noqa: F401
    except ImportError:
        result = CliRunner().invoke(main, [*base, "--picamera", "--max-frames", "1"])
        assert (
            result.exit_code == 2
            and "picamera2" in result.stderr
            and "apt install" in result.stderr
        )


def test_gate_on_real_photos(lesions: list[np.ndarray]) -> None:
    photo = cv2.resize(lesions[0], (480, 480))
    assert measure(photo).ok
    glare = photo.copy()
    cv2.circle(glare, (240, 240), 110, (255, 255, 255), -1)
    cases = {
        "hold still": cv2.GaussianBlur(photo, (0, 0), 5),
        "too dark": (photo * 0.15).astype(np.uint8),
        "too bright": np.clip(photo.astype(int) + 150, 0, 255).astype(np.uint8),
        "blank frame": np.full_like(photo, 128),
        "glare": glare,
    }
    for reason, img in cases.items():
        q = measure(img)
        assert q.reason == reason and not q.ok, (reason, q)
    assert measure(cv2.resize(lesions[1], (1280, 960))).ok  # resolution-normalised


def test_scene_change(lesions: list[np.ndarray]) -> None:
    a, b = (cv2.resize(x, (W, H)) for x in lesions[:2])
    shifted = np.roll(a, (4, -3), axis=(0, 1))
    assert not scene_change(signature(a), signature(shifted))
    assert scene_change(signature(a), signature(b))


def test_smoother() -> None:
    s = Smoother(3, 5, threshold=0.5)
    got = [s.add(p) for p in (0.9, 0.2, 0.8, 0.7)]
    assert got[:3] == [None, None, None] and got[3] == {
        "decision": "refer",
        "prob": pytest.approx(0.8),
        "votes": "3/4",
    }
    assert s.add(0.95) is None  # still refer: not reported again
    assert [s.add(p) for p in (0.1, 0.1, 0.1)][-1]["decision"] == "routine"
    s.reset()
    assert s.stable is None and s.add(0.1) is None
    with pytest.raises(ValueError):
        Smoother(2, 5, 0.5)


def vignetted(rgb: np.ndarray) -> np.ndarray:
    """A dermatoscope-style frame: the photo inside a bright circle, black around it."""
    frame = np.zeros((H, W, 3), np.uint8)
    inner = cv2.resize(rgb, (200, 200))
    mask = np.zeros((200, 200), np.uint8)
    cv2.circle(mask, (100, 100), 100, 255, -1)
    frame[20:220, 60:260][mask > 0] = inner[mask > 0]
    return frame


@pytest.mark.parametrize("crop", ["squash", "center", "fov"])
def test_camera_crop_matches_the_contract(
    model: EdgeModel, lesions: list[np.ndarray], crop: str
) -> None:
    m = copy.copy(model)  # shares the interpreter; only the contract differs
    m.contract = InputContract(size=64, crop=crop)
    frame = vignetted(lesions[0])
    left, top, right, bottom = contract_box(frame, m)
    if crop == "fov":
        assert (right - left, bottom - top) != (W, H) and right - left == bottom - top
    np.testing.assert_array_equal(
        model_input(frame[top:bottom, left:right], m), preprocess(frame, m.contract)
    )


def test_draw_overlay(lesions: list[np.ndarray]) -> None:
    frame = cv2.resize(lesions[0], (W, H))
    for state in ({"reason": "hold still"}, {"decision": "refer", "prob": 0.8, "votes": "3/5"}, {}):
        img = draw_overlay(frame, state)
        assert img.shape == frame.shape and not np.array_equal(img, frame)
    assert os.environ.get("OPENCV_FFMPEG_LOGLEVEL")  # camera import quiets FFmpeg's frame noise


def test_a_kill_during_save_leaves_whole_decisions_and_the_next_start_cleans(
    videos: dict[str, Path], lesions: list[np.ndarray], tmp_path: Path
) -> None:
    """SIGKILL mid-session: every decision folder holds frame, crop and record; what a kill left
    half-made (staging folders, temporary files) is removed, with a word, at the next start."""
    import signal
    import subprocess
    import sys
    import time

    save = tmp_path / "save"
    long = write_video(
        tmp_path / "long.avi",
        [frame_of(rgb, k) for _ in range(6) for rgb in lesions for k in range(PER_LESION)],
    )
    cmd = [
        sys.executable,
        "-m",
        "dermedge.edge.cli",
        "-m",
        str(INT8),
        "--camera",
        str(long),
        "--save",
        str(save),
        "--smooth",
        "2/3",
        "--json",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not (
        save.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in save.iterdir())
    ):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    folders = [p for p in save.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert folders, proc.stderr.read().decode()[-2000:] if proc.stderr else "no decision saved"
    for d in folders:
        record = json.loads((d / f"{d.name}.json").read_text())
        assert (save / record["frame_file"]).is_file() and (save / record["crop_file"]).is_file()
        assert record["disclaimer"] == DISCLAIMER
    # what a kill can leave: a staging folder and an atomic write's temporary file
    (save / ".staging-x").mkdir(exist_ok=True)
    (save / ".staging-x" / "x.jpg").write_bytes(b"half")
    (save / ".session.csv.abc.tmp").write_bytes(b"half")
    result = CliRunner().invoke(
        main,
        [
            "-m",
            str(INT8),
            "--camera",
            str(videos["normal"]),
            "--save",
            str(save),
            "--max-frames",
            "3",
        ],
    )
    assert "unfinished file(s) of an interrupted session" in result.stderr, result.output
    assert not [
        p for p in save.iterdir() if p.name.startswith(".staging-") or p.name.endswith(".tmp")
    ]
    assert all(p.stat().st_mode & 0o044 for p in save.rglob("*.jpg"))  # readable like the logs


def test_a_second_save_session_leaves_the_running_sessions_files_alone(
    videos: dict[str, Path], tmp_path: Path
) -> None:
    """Two `--save` sessions in one folder: the second used to delete the first's decision being
    written ("removed an interrupted session"), and the first stopped saving. A live session's
    files are left alone; a killed one's (its lock no longer held) are still cleaned."""
    import subprocess
    import sys

    save = tmp_path / "save"
    first = Saver(save)  # a live session: holds its lock for as long as it runs
    writing = save / f".staging-{first.session}-0001-frame000007"  # its decision mid-write
    writing.mkdir()
    (writing / "half.jpg").write_bytes(b"half")
    dead = "20200101-000000-000"  # a killed session: its lock file is left, the lock is not held
    (save / f".session-{dead}.lock").write_text("999999\n")
    (save / f".staging-{dead}-0003-frame000042").mkdir()
    cmd = [sys.executable, "-m", "dermedge.edge.cli", "-m", str(INT8), "--camera"]
    second = subprocess.run(
        [*cmd, str(videos["normal"]), "--save", str(save), "--max-frames", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stderr
    assert writing.is_dir() and (writing / "half.jpg").read_bytes() == b"half", second.stderr
    assert not (save / f".staging-{dead}-0003-frame000042").exists()
    assert not (save / f".session-{dead}.lock").exists()
    assert f"pid {os.getpid()}" in second.stderr  # told another session saves here too
    # the first session goes on saving
    shutil.rmtree(writing)
    frame = np.zeros((H, W, 3), np.uint8)
    record = first.save({"frame": 7, "decision": "refer"}, frame, frame[:50, :50])
    assert (save / record["crop_file"]).is_file() and first.csv.read_text().count("\n") == 2
    lock = save / f".session-{first.session}.lock"
    assert lock.read_text().strip() == str(os.getpid())
    del first
    import gc

    gc.collect()
    assert not lock.exists()  # a session that ends takes its lock file with it


def test_the_session_csv_neutralises_formulas(tmp_path: Path) -> None:
    """The label comes from the model card: a class named like a formula reaches the session CSV
    with a leading ' (a spreadsheet shows it, does not run it); the JSONL keeps it as it is."""
    saver = Saver(tmp_path / "save")
    frame = np.zeros((H, W, 3), np.uint8)
    saver.save({"frame": 1, "label": '=HYPERLINK("x")', "decision": "refer"}, frame, frame)
    import csv as csv_module

    with open(saver.csv, newline="", encoding="utf-8") as f:
        (row,) = list(csv_module.DictReader(f))
    assert row["label"] == '\'=HYPERLINK("x")' and row["decision"] == "refer"
    assert json.loads(saver.jsonl.read_text())["label"] == '=HYPERLINK("x")'

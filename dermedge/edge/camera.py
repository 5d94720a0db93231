"""Live input for edge-classify: cameras, video files and network streams, frame by frame.

Each frame is cropped per the model's contract, passed through the quality gate, classified, and
fed to an N-of-M vote; a decision is reported (and saved) only when it is stable. Faults end the
session with a summary rather than a traceback: corrupt frames are skipped, a dropped live source
is retried with backoff when asked, Ctrl-C stops cleanly.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # per-frame decode noise; we count them
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dermedge import DISCLAIMER  # noqa: E402
from dermedge.data.contract import crop_box, preprocess  # noqa: E402
from dermedge.edge.files import atomic_write, check_writable  # noqa: E402
from dermedge.edge.quality import (  # noqa: E402
    Gate,
    Quality,
    analysis_image,
    measure,
    scene_change,
    signature,
)
from dermedge.edge.runtime import EdgeError, EdgeModel  # noqa: E402

URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
STREAM_TIMEOUT_MS = 5000
NO_LESION = "no lesion in view (unlike the training images)"  # the guard's gate reason
PICAMERA_MISSING = (
    "--picamera needs the picamera2 package, which is not installed. On Raspberry Pi OS: "
    "sudo apt install python3-picamera2, and create the virtualenv with --system-site-packages. "
    "(OpenCV cannot read the Pi's CSI camera on the libcamera stack; a USB camera works with "
    "--camera 0.)"
)
NORMAL_ENDINGS = ("end of video", "--max-frames", "--duration", "interrupted", "quit")
Emit = Callable[[dict[str, Any]], None]


class SourceError(RuntimeError):
    """A frame source that cannot be opened (now); retried when --reconnect allows."""


class FrameSource(Protocol):
    description: str
    live: bool
    expected: int | None

    def open(self) -> None: ...
    def read(self) -> np.ndarray | None: ...
    def close(self) -> None: ...


def _usable(frame: Any) -> bool:
    """A decoded HxWx3 image with pixels (not an empty or odd-shaped buffer)."""
    return (
        isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3 and frame.size > 0
    )


class OpenCVSource:
    """A camera index or /dev/videoN, a video file, or an RTSP/HTTP stream URL, via OpenCV."""

    def __init__(
        self,
        spec: str,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
    ) -> None:
        self.spec = spec
        self.is_url = spec.lower().startswith(URL_SCHEMES)
        self.is_device = spec.isdigit() or spec.startswith("/dev/")
        self.live = self.is_url or self.is_device
        self.description = f"camera {spec}" if self.is_device else spec
        self.requested = {
            cv2.CAP_PROP_FRAME_WIDTH: width,
            cv2.CAP_PROP_FRAME_HEIGHT: height,
            cv2.CAP_PROP_FPS: fps,
        }
        self.expected: int | None = None
        self.cap: Any = None

    def _capture(self) -> Any:
        if self.is_url:
            timeouts = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                STREAM_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                STREAM_TIMEOUT_MS,
            ]
            return cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, timeouts)
        if self.spec.isdigit():
            return cv2.VideoCapture(int(self.spec))
        return cv2.VideoCapture(self.spec)

    def _open_error(self) -> str:
        if self.is_url:
            return f"cannot open stream {self.spec} (unreachable, wrong path or not a video stream)"
        if self.is_device:
            return (
                f"cannot open camera {self.spec}: no such device, or it is busy "
                "(list cameras with: v4l2-ctl --list-devices)"
            )
        if not os.path.isfile(self.spec):
            return f"video file not found: {self.spec}"
        return f"cannot decode video file {self.spec} (unsupported or corrupt container)"

    def open(self) -> None:
        self.close()
        if not self.live and not os.path.isfile(self.spec):
            raise SourceError(self._open_error())
        cap = self._capture()
        if not cap.isOpened():
            cap.release()
            raise SourceError(self._open_error())
        if self.is_device:
            for prop, value in self.requested.items():
                if value:
                    cap.set(prop, value)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a stale queue
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.expected = count if not self.live and count > 0 else None
        self.cap = cap

    def read(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        return frame if ok and _usable(frame) else None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class PiCameraSource:
    """The Raspberry Pi camera through picamera2 (libcamera)."""

    live: bool = True
    expected: int | None = None
    description: str = "Raspberry Pi camera"

    def __init__(
        self, width: int | None = None, height: int | None = None, fps: float | None = None
    ) -> None:
        self.size = (width or 640, height or 480)
        self.fps = fps
        self.camera: Any = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as e:
            raise EdgeError(PICAMERA_MISSING) from e
        self.close()
        try:
            camera = Picamera2()
            controls = {"FrameRate": float(self.fps)} if self.fps else {}
            # "RGB888" is B,G,R in memory: OpenCV's order, like the other sources.
            config = camera.create_video_configuration(
                main={"size": self.size, "format": "RGB888"}, controls=controls
            )
            camera.configure(config)
            camera.start()
        except Exception as e:  # noqa: BLE001 - libcamera raises many kinds
            raise SourceError(f"cannot start the Raspberry Pi camera: {e}") from e
        self.camera = camera

    def read(self) -> np.ndarray | None:
        try:
            frame = self.camera.capture_array("main")
        except Exception:  # noqa: BLE001 - a dropped frame, retried by the session
            return None
        return frame[..., :3] if _usable(frame[..., :3]) else None

    def close(self) -> None:
        if self.camera is not None:
            self.camera.stop()
            self.camera.close()
            self.camera = None


def contract_box(rgb: np.ndarray, model: EdgeModel) -> tuple[int, int, int, int]:
    """The part of an RGB frame the model's contract feeds it (whole, centre square or FOV)."""
    left, top, right, bottom = crop_box(Image.fromarray(rgb), model.contract)
    return int(left), int(top), int(right), int(bottom)


def model_input(crop: np.ndarray, model: EdgeModel) -> np.ndarray:
    """Resize a contract crop to the model input, exactly as preprocess() would the frame."""
    return preprocess(np.ascontiguousarray(crop), replace(model.contract, crop="squash"))


class Smoother:
    """N-of-M vote over classified frames: a decision is stable once N of the last M agree."""

    def __init__(self, n: int, m: int, threshold: float) -> None:
        if not (0 < n <= m and 2 * n > m):
            raise ValueError(f"--smooth {n}/{m}: need 0 < N <= M and N more than half of M")
        self.n, self.threshold = n, threshold
        self.window: deque[float] = deque(maxlen=m)
        self.stable: str | None = None

    def reset(self) -> None:
        self.window.clear()
        self.stable = None

    def add(self, prob: float) -> dict[str, Any] | None:
        """Add a frame's P(malignant); return the new stable decision when it appears/changes."""
        self.window.append(prob)
        for decision in ("refer", "routine"):
            agree = [p for p in self.window if (p >= self.threshold) == (decision == "refer")]
            if len(agree) >= self.n:
                if decision == self.stable:
                    return None
                self.stable = decision
                votes = f"{len(agree)}/{len(self.window)}"
                return {"decision": decision, "prob": float(np.mean(agree)), "votes": votes}
        return None


LOG_FIELDS = [
    "time",
    "frame",
    "t_s",
    "prob",
    "label",
    "decision",
    "votes",
    "threshold",
    "trigger",
    "frame_file",
    "crop_file",
    "disclaimer",
]


STAGING = ".staging-"  # a decision folder being written


class Saver:
    """Saves frame, crop and JSON record per decision, plus a session log (JSONL and CSV)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        try:
            self.dir = check_writable(directory)
        except OSError as e:
            raise EdgeError(f"cannot write to --save folder {directory}: {e.strerror or e}") from e
        self.session = datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]  # to the ms
        self.jsonl = self.dir / f"session-{self.session}.jsonl"
        self.csv = self.dir / f"session-{self.session}.csv"
        self.count = 0
        self.cleaned = self._clean_stale()

    def _image(self, folder: Path, name: str, bgr: np.ndarray) -> None:
        ok, data = cv2.imencode(Path(name).suffix, bgr)
        if not ok:
            raise OSError(f"could not encode {name}")
        atomic_write(folder / name, data.tobytes())

    def _clean_stale(self) -> list[str]:
        """Remove what a killed session left: half-made decision folders and temporary files."""
        stale = [p for p in self.dir.iterdir()
                 if p.name.startswith(STAGING) or (p.name.startswith(".") and p.name.endswith(".tmp"))]  # fmt: skip
        for p in stale:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return [p.name for p in stale]

    def _log(self, record: dict[str, Any]) -> None:
        row = io.StringIO()
        writer = csv.DictWriter(row, LOG_FIELDS, extrasaction="ignore")
        if not self.csv.exists():
            writer.writeheader()
        writer.writerow(record)
        for path, text in ((self.jsonl, json.dumps(record) + "\n"), (self.csv, row.getvalue())):
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

    def save(self, record: dict[str, Any], frame_bgr: np.ndarray, crop_rgb: np.ndarray) -> dict:
        """Write one decision as a unit: frame, crop and record in a staging folder renamed into
        place (a kill leaves either the whole folder or a staging one, cleaned at the next
        start), then the session log. Returns the record with the file names; OSError on failure."""
        self.count += 1
        stem = f"{self.session}-{self.count:04d}-frame{record['frame']:06d}"
        record = {
            **record,
            "frame_file": f"{stem}/{stem}.jpg",
            "crop_file": f"{stem}/{stem}-crop.png",
        }
        staging = self.dir / f"{STAGING}{stem}"
        staging.mkdir()
        try:
            self._image(staging, f"{stem}.jpg", frame_bgr)
            self._image(staging, f"{stem}-crop.png", cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR))
            atomic_write(staging / f"{stem}.json", json.dumps(record, indent=1).encode())
            os.replace(staging, self.dir / stem)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._log(record)
        return record


def draw_overlay(frame_bgr: np.ndarray, state: dict[str, Any]) -> np.ndarray:
    """The preview image: frame, circular guide, quality, probability, decision, disclaimer."""
    img = frame_bgr.copy()
    h, w = img.shape[:2]
    decision, reason = state.get("decision"), state.get("reason")
    color = (0, 200, 255) if reason else (0, 0, 255) if decision == "refer" else (0, 200, 0)
    cv2.circle(img, (w // 2, h // 2), int(0.45 * min(h, w)), color, 2, cv2.LINE_AA)
    scale = max(0.4, min(h, w) / 800)
    if reason:
        line = reason.upper()
    elif decision:
        line = f"{decision.upper()}  P(malignant)={state['prob']:.2f}  ({state['votes']})"
    else:
        line = "hold steady..."
    for y, text, s, c in (
        (int(40 * scale), line, scale, color),
        (h - 12, DISCLAIMER, scale * 0.45, (255, 255, 255)),
    ):
        cv2.putText(img, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, s, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, s, c, 1, cv2.LINE_AA)
    return img


class Preview:
    """A highgui window; `s` saves the current frame, `q`/Esc quits."""

    WINDOW = "dermedge edge-classify"

    def __init__(self) -> None:
        if os.name == "posix" and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            raise EdgeError("--preview needs a display (DISPLAY is not set); run without --preview")
        try:
            cv2.namedWindow(self.WINDOW, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            raise EdgeError(
                "--preview needs OpenCV with GUI support, and this install is headless "
                "(opencv-python-headless): pip install opencv-python, or run without --preview"
            ) from e

    def show(self, frame_bgr: np.ndarray, state: dict[str, Any]) -> str | None:
        cv2.imshow(self.WINDOW, draw_overlay(frame_bgr, state))
        key = cv2.waitKey(1) & 0xFF
        return "save" if key == ord("s") else "quit" if key in (ord("q"), 27) else None

    def close(self) -> None:
        cv2.destroyWindow(self.WINDOW)


@dataclass
class SessionOptions:
    """Bounds and behaviour of a camera session."""

    smooth: tuple[int, int] = (3, 5)
    max_frames: int | None = None
    duration: float | None = None
    reconnect: int = 0  # attempts to reopen a source that fails to open or drops
    backoff: float = 0.5  # first wait between attempts, doubled up to 8 s
    gate: Gate = field(default_factory=Gate)
    bad_reads_file: int = 10  # consecutive failed reads before a video file counts as ended
    bad_reads_live: int = 3  # ... before a live source counts as dropped
    fov_every: int = 15  # frames between field-of-view searches (the vignette is fixed optics)


@dataclass
class Summary:
    """What happened in a session."""

    source: str
    frames: int = 0
    corrupt: int = 0
    classified: int = 0
    gated: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    saved: int = 0
    save_error: str | None = None
    ended: str = ""
    fault: bool = False  # ended by a fault (open failure, lost source, truncation)
    elapsed_s: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in vars(self).items()}
        return {
            "event": "summary",
            **d,
            "elapsed_s": round(self.elapsed_s, 3),
            "fps": round(self.fps, 2),
        }

    def text(self) -> str:
        parts = [
            f"{self.frames} frames in {self.elapsed_s:.1f} s ({self.fps:.1f}/s)",
            f"{self.classified} classified",
        ]
        if self.gated:
            parts.append("gated: " + ", ".join(f"{k} {v}" for k, v in self.gated.most_common()))
        if self.corrupt:
            parts.append(f"{self.corrupt} corrupt frames skipped")
        n = sum(self.decisions.values())
        parts.append(
            f"{n} decisions ({self.decisions['refer']} refer, {self.decisions['routine']} routine)"
        )
        if self.reconnects:
            parts.append(f"{self.reconnects} reconnects")
        if self.saved or self.save_error:
            parts.append(
                f"{self.saved} saved"
                + (f" (saving failed: {self.save_error})" if self.save_error else "")
            )
        return f"{self.source}: " + "; ".join(parts) + f". Ended: {self.ended}."


@dataclass
class _Frame:
    """A frame made ready for inference: crop, gate verdict, and (if it passed) model input."""

    index: int  # 1-based frame number in the session
    frame: np.ndarray  # BGR, as read
    crop: np.ndarray  # RGB, the contract's crop
    quality: Quality
    signature: np.ndarray | None = None
    pixels: np.ndarray | None = None


class _Quit(Exception):
    """The user closed the session from the preview window."""


class Session:
    """One run over a frame source: read, crop, gate, classify, smooth, report."""

    def __init__(
        self,
        model: EdgeModel,
        source: FrameSource,
        options: SessionOptions,
        emit: Emit,
        saver: Saver | None = None,
        preview: Preview | None = None,
    ) -> None:
        self.model, self.source, self.options, self.emit = model, source, options, emit
        self.saver, self.preview = saver, preview
        self.smoother = Smoother(*options.smooth, threshold=model.threshold)
        self.summary = Summary(source.description)
        self.state: dict[str, Any] = {}
        self._start = 0.0
        self._signature: np.ndarray | None = None
        self._reason: str | None = None
        self._failures = 0
        self._box: tuple[int, int, int, int] | None = None
        self._box_age = 0
        self._shape: tuple[int, ...] = ()

    def _t(self) -> float:
        return round(time.monotonic() - self._start, 3)

    def _open(self) -> None:
        """Open the source, retrying with backoff up to `reconnect` times."""
        delay = self.options.backoff
        for attempt in range(self.options.reconnect + 1):
            try:
                self.source.open()
                return
            except SourceError as e:
                if attempt == self.options.reconnect:
                    raise
                self.emit(
                    {
                        "event": "reconnect",
                        "t_s": self._t(),
                        "attempt": attempt + 1,
                        "of": self.options.reconnect,
                        "wait_s": delay,
                        "error": str(e),
                    }
                )
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    def _read_failed(self) -> str | None:
        """Handle a failed read; the reason the session ends, or None to go on."""
        self._failures += 1
        if not self.source.live:
            if self._failures <= self.options.bad_reads_file:
                return None
            total, seen = self.source.expected, self.summary.frames + self.summary.corrupt
            if total and seen < total:
                return f"video ended early after {seen} of {total} frames (truncated file?)"
            return "end of video"
        if self._failures < self.options.bad_reads_live:
            return None
        if not self.options.reconnect:
            return "the source stopped delivering frames (pass --reconnect to retry)"
        self.source.close()
        try:
            self._open()
        except SourceError as e:
            return f"source lost, gave up after {self.options.reconnect} attempts: {e}"
        self.summary.reconnects += 1
        self._failures = 0
        return None

    def _limit(self) -> str | None:
        if self.options.max_frames is not None and self.summary.frames >= self.options.max_frames:
            return f"--max-frames {self.options.max_frames} reached"
        if self.options.duration is not None and self._t() >= self.options.duration:
            return f"--duration {self.options.duration:g} s reached"
        return None

    def _record(self, result: dict[str, Any], trigger: str, index: int) -> dict[str, Any]:
        return {
            "event": "decision",
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "frame": index,
            "t_s": self._t(),
            "prob": round(result["prob"], 4),
            "label": self.model.decide(result["prob"])["label"],
            "decision": result["decision"],
            "votes": result.get("votes", "1/1"),
            "threshold": self.model.threshold,
            "trigger": trigger,
            "source": self.source.description,
            "model": self.model.name,
            "disclaimer": DISCLAIMER,
        }

    def _save(self, record: dict[str, Any], frame: np.ndarray, crop: np.ndarray) -> dict[str, Any]:
        if self.saver is None:
            return record
        try:
            record = self.saver.save(record, frame, crop)
            self.summary.saved += 1
        except OSError as e:
            self.summary.save_error = f"{self.saver.dir}: {e.strerror or e}"
            self.emit(
                {
                    "event": "error",
                    "t_s": self._t(),
                    "error": f"saving failed ({self.summary.save_error}); saving is off now",
                }
            )
            self.saver = None
        return record

    def _crop(self, rgb: np.ndarray) -> np.ndarray:
        """The contract's crop; the FOV search (slow) is redone every `fov_every` frames."""
        if rgb.shape[:2] != self._shape:  # first frame, or a new resolution after a reconnect
            self._shape, self._box = rgb.shape[:2], None
        fov = self.model.contract.crop == "fov"
        if self._box is None or not fov or self._box_age >= self.options.fov_every:
            self._box, self._box_age = contract_box(rgb, self.model), 0
        self._box_age += 1
        left, top, right, bottom = self._box
        return rgb[top:bottom, left:right]

    def _prepare(self, index: int, frame: np.ndarray) -> _Frame:
        """Everything before inference (runs in the worker thread): crop, gate, resize."""
        crop = self._crop(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        small = analysis_image(crop)
        quality = measure(small, self.options.gate)
        if not quality.ok:
            return _Frame(index, frame, crop, quality)
        return _Frame(index, frame, crop, quality, signature(small), model_input(crop, self.model))

    def _gated(self, f: _Frame) -> None:
        reason = f.quality.reason
        self.summary.gated[reason or ""] += 1
        self.state["reason"] = reason
        if reason != self._reason:
            event = {"event": "quality", "frame": f.index, "t_s": self._t(), "reason": reason}
            self.emit({**event, **f.quality.to_dict()})

    def _infer(self, f: _Frame) -> float | None:
        """P(malignant) of a frame through the gate, or None when the model's guard finds it
        unlike the training images: then it is gated like a bad frame ("no lesion in view")."""
        assert f.pixels is not None
        prob, feats = self.model.predict_features(f.pixels)
        result = self.model.decide(float(prob[0]), feats)
        if result.get("unfamiliar"):
            f.quality = replace(f.quality, reason=NO_LESION)
            self.smoother.reset()
            for key in ("prob", "decision"):  # nothing of an earlier frame is shown for it
                self.state.pop(key, None)
            return None
        return float(result["prob"])

    def _finish(self, f: _Frame) -> None:
        """Inference, smoothing, reporting, saving, preview for a prepared frame (main thread)."""
        stable = None
        prob = None
        if f.pixels is not None and f.signature is not None:
            if scene_change(self._signature, f.signature):
                self.smoother.reset()
            self._signature = f.signature
            prob = self._infer(f)
        if prob is None:
            self._gated(f)
        else:
            self.summary.classified += 1
            self.state.update(prob=prob, reason=None)
            stable = self.smoother.add(prob)
        self._reason = f.quality.reason
        if stable:
            record = self._save(self._record(stable, "stable", f.index), f.frame, f.crop)
            self.summary.decisions[stable["decision"]] += 1
            self.state.update(stable)
            self.emit(record)
        elif f.pixels is not None and self.smoother.stable is None:
            self.state.pop("decision", None)
        if self.preview is not None:
            self._preview(f)

    def _preview(self, f: _Frame) -> None:
        assert self.preview is not None
        action = self.preview.show(f.frame, self.state)
        if action == "save" and "prob" in self.state:
            result = self.model.decide(self.state["prob"])
            self._save(self._record(result, "key", f.index), f.frame, f.crop)
        elif action == "quit":
            raise _Quit("quit from the preview window")

    def run(self) -> Summary:
        """Run until the source ends, a bound is reached, or Ctrl-C.

        Raises SourceError only if the source cannot be opened at all; later faults end the
        session, and the summary says why.
        """
        self._start = time.monotonic()
        ended = None
        try:
            self._open()
        except SourceError:
            self.source.close()
            raise
        pending: Future[_Frame] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="dermedge-frames") as worker:
            try:
                while (ended := self._limit()) is None:
                    frame = self.source.read()
                    if frame is None:
                        ended = self._read_failed()
                        if ended:
                            break
                        continue
                    self.summary.corrupt += self._failures
                    self._failures = 0
                    self.summary.frames += 1
                    # Frame k is prepared in the worker while frame k-1 is being inferred.
                    job = worker.submit(self._prepare, self.summary.frames, frame)
                    if pending is not None:
                        self._finish(pending.result())
                    pending = job
                if pending is not None:
                    self._finish(pending.result())
            except _Quit as e:
                ended = str(e)
            except KeyboardInterrupt:
                ended = "interrupted (Ctrl-C)"
            finally:
                self.source.close()
                if self.preview is not None:
                    self.preview.close()
        self.summary.ended = ended or "done"
        self.summary.fault = bool(self.summary.save_error) or not self.summary.ended.startswith(
            NORMAL_ENDINGS
        )
        self.summary.elapsed_s = time.monotonic() - self._start
        return self.summary

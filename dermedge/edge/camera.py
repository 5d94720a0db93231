"""Live input for edge-classify: cameras, video files and network streams, frame by frame.

Each frame is cropped per the model's contract, passed through the quality gate, classified, and
fed to an N-of-M vote; a decision is reported (and saved) only when it is stable. Faults end the
session with a summary rather than a traceback: corrupt frames are skipped, a dropped live source
is retried with backoff when asked, Ctrl-C stops cleanly.

This module is the session (options, vote, loop); frame sources are in `sources`, the preview in
`overlay`, saved decisions and the summary in `session_outputs` (their names are re-exported).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # per-frame decode noise; we count them
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dermedge import DISCLAIMER  # noqa: E402
from dermedge.data.contract import crop_box, preprocess  # noqa: E402
from dermedge.edge.overlay import Preview, draw_overlay  # noqa: E402
from dermedge.edge.quality import (  # noqa: E402
    Gate,
    Quality,
    analysis_image,
    measure,
    scene_change,
    signature,
)
from dermedge.edge.runtime import CANNOT_ASSESS, EdgeModel  # noqa: E402
from dermedge.edge.session_outputs import Saver, Summary  # noqa: E402
from dermedge.edge.sources import (  # noqa: E402
    FrameSource,
    OpenCVSource,
    PiCameraSource,
    SourceError,
)

__all__ = [  # the session's own names, and those of the rooms it uses that callers import here
    "NO_LESION",
    "Ending",
    "FrameSource",
    "OpenCVSource",
    "PiCameraSource",
    "Preview",
    "Saver",
    "Session",
    "SessionOptions",
    "Smoother",
    "SourceError",
    "Summary",
    "contract_box",
    "draw_overlay",
    "model_input",
]

NO_LESION = "no lesion in view (not a lesion photo)"  # the guard's gate reason
Emit = Callable[[dict[str, Any]], None]


def contract_box(rgb: np.ndarray, model: EdgeModel) -> tuple[int, int, int, int]:
    """The part of an RGB frame the model's contract feeds it (whole, centre square or FOV)."""
    left, top, right, bottom = crop_box(Image.fromarray(rgb), model.contract)
    return int(left), int(top), int(right), int(bottom)


def model_input(crop: np.ndarray, model: EdgeModel) -> np.ndarray:
    """Resize a contract crop to the model input, exactly as preprocess() would the frame."""
    return preprocess(np.ascontiguousarray(crop), replace(model.contract, crop="squash"))


class Smoother:
    """N-of-M vote over classified frames: a decision is stable once N of the last M agree.
    A frame the guard finds unlike the training images ("unsure") votes to send the patient on,
    never for routine: N sending frames give refer, or "cannot assess" when most were unsure."""

    def __init__(self, n: int, m: int, threshold: float) -> None:
        """N of the last M frames must agree; ValueError unless N is a majority of M."""
        if not (0 < n <= m and 2 * n > m):
            raise ValueError(f"--smooth {n}/{m}: need 0 < N <= M and N more than half of M")
        self.n, self.threshold = n, threshold
        self.window: deque[tuple[float, bool]] = deque(maxlen=m)
        self.stable: str | None = None

    def reset(self) -> None:
        """Forget the window and the stable decision (a new scene, or a frame nothing like skin)."""
        self.window.clear()
        self.stable = None

    def add(self, prob: float, unsure: bool = False) -> dict[str, Any] | None:
        """Add a frame's P(malignant) (and whether the guard was unsure of it); return the new
        stable decision when it appears or changes."""
        self.window.append((prob, unsure))
        routine = [p for p, u in self.window if not u and p < self.threshold]
        send = [(p, u) for p, u in self.window if u or p >= self.threshold]
        if len(routine) >= self.n:
            decision, agree = "routine", routine
        elif len(send) >= self.n:
            unsure_votes = sum(u for _, u in send)
            decision = CANNOT_ASSESS if 2 * unsure_votes >= len(send) else "refer"
            agree = [p for p, _ in send]
        else:
            return None
        if decision == self.stable:
            return None
        self.stable = decision
        votes = f"{len(agree)}/{len(self.window)}"
        return {"decision": decision, "prob": float(np.mean(agree)), "votes": votes}


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


@dataclass(frozen=True)
class Ending:
    """Why a session ended, and whether that was a fault (open failure, lost source, truncation)."""

    reason: str
    fault: bool = False


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
        """A session of `model` over `source`, reporting via `emit`; saver and preview optional."""
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
        """Seconds since the session started (ms resolution)."""
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

    def _read_failed(self) -> Ending | None:
        """Handle a failed read; how the session ends, or None to go on."""
        self._failures += 1
        if not self.source.live:
            if self._failures <= self.options.bad_reads_file:
                return None
            total, seen = self.source.expected, self.summary.frames + self.summary.corrupt
            if total and seen < total:
                reason = f"video ended early after {seen} of {total} frames (truncated file?)"
                return Ending(reason, fault=True)
            return Ending("end of video")
        if self._failures < self.options.bad_reads_live:
            return None
        if not self.options.reconnect:
            reason = "the source stopped delivering frames (pass --reconnect to retry)"
            return Ending(reason, fault=True)
        self.source.close()
        try:
            self._open()
        except SourceError as e:
            reason = f"source lost, gave up after {self.options.reconnect} attempts: {e}"
            return Ending(reason, fault=True)
        self.summary.reconnects += 1
        self._failures = 0
        return None

    def _limit(self) -> Ending | None:
        """The end of the session when --max-frames or --duration is reached, else None."""
        if self.options.max_frames is not None and self.summary.frames >= self.options.max_frames:
            return Ending(f"--max-frames {self.options.max_frames} reached")
        if self.options.duration is not None and self._t() >= self.options.duration:
            return Ending(f"--duration {self.options.duration:g} s reached")
        return None

    def _record(self, result: dict[str, Any], trigger: str, index: int) -> dict[str, Any]:
        """The decision event of frame `index`, as emitted, logged and saved."""
        return {
            "event": "decision",
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "frame": index,
            "t_s": self._t(),
            "prob": round(result["prob"], 4),
            "label": "unknown"
            if result["decision"] == CANNOT_ASSESS
            else self.model.decide(result["prob"])["label"],
            "decision": result["decision"],
            "votes": result.get("votes", "1/1"),
            "threshold": self.model.threshold,
            "trigger": trigger,
            "source": self.source.description,
            "model": self.model.name,
            "disclaimer": DISCLAIMER,
        }

    def _save(self, record: dict[str, Any], frame: np.ndarray, crop: np.ndarray) -> dict[str, Any]:
        """Save a decision when saving is on; a failure is reported once and turns saving off."""
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
        """Count a frame the gate (or guard) refused; emit the reason when it changes."""
        reason = f.quality.reason
        self.summary.gated[reason or ""] += 1
        self.state["reason"] = reason
        if reason != self._reason:
            event = {"event": "quality", "frame": f.index, "t_s": self._t(), "reason": reason}
            self.emit({**event, **f.quality.to_dict()})

    def _infer(self, f: _Frame) -> tuple[float, bool] | None:
        """(P(malignant), unsure) of a frame through the gate; unsure when the guard finds it a
        lesion unlike the training images (it votes "send on"). None when the guard finds it no
        lesion photo at all: then it is gated like a bad frame ("no lesion in view")."""
        assert f.pixels is not None
        prob, feats = self.model.predict_features(f.pixels)
        result = self.model.decide(float(prob[0]), feats, f.pixels)
        if result["decision"] == "none":
            f.quality = replace(f.quality, reason=NO_LESION)
            self.smoother.reset()
            for key in ("prob", "decision"):  # nothing of an earlier frame is shown for it
                self.state.pop(key, None)
            return None
        return float(prob[0]), result["decision"] == CANNOT_ASSESS

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
            self.state.update(prob=prob[0], unsure=prob[1], reason=None)
            stable = self.smoother.add(*prob)
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
        """Show the frame; `s` saves the current decision, `q` ends the session."""
        assert self.preview is not None
        action = self.preview.show(f.frame, self.state)
        if action == "save" and "prob" in self.state:
            result = self.model.decide(self.state["prob"])
            if self.state.get("unsure"):  # the guard's verdict on this frame, not the prob's
                result = {**result, "decision": CANNOT_ASSESS}
            self._save(self._record(result, "key", f.index), f.frame, f.crop)
        elif action == "quit":
            raise _Quit("quit from the preview window")

    def _loop(self, worker: ThreadPoolExecutor) -> Ending:
        """Read and process frames until the source ends or a bound is reached."""
        pending: Future[_Frame] | None = None
        while (ended := self._limit()) is None:
            frame = self.source.read()
            if frame is None:
                ended = self._read_failed()
                if ended is not None:
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
        return ended

    def run(self) -> Summary:
        """Run until the source ends, a bound is reached, or Ctrl-C.

        Raises SourceError only if the source cannot be opened at all; later faults end the
        session, and the summary says why.
        """
        self._start = time.monotonic()
        try:
            self._open()
        except SourceError:
            self.source.close()
            raise
        with ThreadPoolExecutor(1, thread_name_prefix="dermedge-frames") as worker:
            try:
                ended = self._loop(worker)
            except _Quit as e:
                ended = Ending(str(e))
            except KeyboardInterrupt:
                ended = Ending("interrupted (Ctrl-C)")
            finally:
                self.source.close()
                if self.preview is not None:
                    self.preview.close()
        self.summary.ended = ended.reason
        self.summary.fault = bool(self.summary.save_error) or ended.fault
        self.summary.elapsed_s = time.monotonic() - self._start
        return self.summary

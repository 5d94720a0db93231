"""Benchmark the whole `edge-classify --camera` loop on a video: frames/s and time per stage.

It runs the real `dermedge.edge.camera.Session` (the same crop, quality gate, preprocessing,
inference and N-of-M vote as on the device, with its own pipelining: frame k is prepared in a
worker thread while frame k-1 is inferred) over a video file, with timers wrapped around the
functions it calls, so nothing of the loop is reimplemented here:
decode (`source.read`), crop (the session's contract crop), quality gate (`analysis_image` +
`measure`), preprocess (`model_input`), inference (`model.predict_features`). Because preparation and
inference overlap, the stage times need not add up to the frame period (1 / frames per second).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dermedge.benchmark.rows import latency_stats
from dermedge.benchmark.settings import Settings, log

if TYPE_CHECKING:
    from dermedge.edge.camera import Session
    from dermedge.edge.runtime import EdgeModel

STAGES = {
    "decode": ("read",),
    "crop": ("_crop",),
    "quality gate": ("analysis_image", "measure"),
    "preprocess": ("model_input",),
    "inference": ("predict_features",),
}


class _Timers:
    """Durations of every call of each wrapped function (thread-safe)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` wrapped so that the duration of each of its calls is recorded under `name`."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            """Call the wrapped function and record how long it took, even when it raises."""
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                with self.lock:
                    self.calls.setdefault(name, []).append(dt)

        return timed

    def stage(self, names: tuple[str, ...]) -> list[float]:
        """Per-frame time of a stage: its functions' n-th calls added up."""
        lists = [self.calls.get(n, []) for n in names]
        if not all(lists):
            return []
        n = min(len(x) for x in lists)
        return list(np.sum([x[:n] for x in lists], axis=0))


class _TimedModel:
    """The EdgeModel with `predict_features` (what the camera loop calls) timed; everything else
    passed through."""

    def __init__(self, model: Any, timers: _Timers) -> None:
        self._model = model
        self.predict_features = timers.wrap("predict_features", model.predict_features)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@contextlib.contextmanager
def _patched(module: Any, names: dict[str, Callable[..., Any]]) -> Iterator[list[str]]:
    """Replace module attributes for the duration; yields the names the module does not have."""
    old = {n: getattr(module, n) for n in names if hasattr(module, n)}
    try:
        for n in old:
            setattr(module, n, names[n])
        yield [n for n in names if n not in old]
    finally:
        for n, fn in old.items():
            setattr(module, n, fn)


def _pick(results: dict[str, Any], variant: str | None) -> dict[str, Any]:
    """The loaded .tflite row for the camera loop: `variant`, else tflite-int8, else the first."""
    rows = [r for r in results["rows"] if r["variant"].startswith("tflite") and not r.get("error")]
    if variant:
        rows = [r for r in rows if r["variant"] == variant]
    if not rows:
        raise ValueError(
            "--camera-source needs a .tflite variant that loaded (the camera loop runs "
            "on the edge runtime)"
        )
    return next((r for r in rows if r["variant"] == "tflite-int8"), rows[0])


def camera_benchmark(
    results: dict[str, Any],
    video: Path,
    frames: int,
    settings: Settings,
    variant: str | None = None,
) -> dict[str, Any]:
    """Run the camera session over `video` (at most `frames` frames) with the int8 .tflite (or
    `variant`) of the first model; per-stage statistics and frames/s."""
    from dermedge.edge import camera
    from dermedge.edge.runtime import EdgeModel

    row = _pick(results, variant)
    threads = min(max(settings.threads), os.cpu_count() or 1)
    model = EdgeModel(row["path"], threads=threads)
    timers = _Timers()
    session, missing = _timed_session(model, timers, video, frames)
    log(f"camera loop: {video} through {row['model']}/{row['variant']} at {threads} thread(s)")
    wrapped = {
        n: timers.wrap(n, getattr(camera, n, lambda *a, **k: None))
        for n in ("analysis_image", "measure", "model_input")
    }
    with _patched(camera, wrapped) as absent:
        summary = session.run()
    missing += absent
    out = {
        "source": str(video),
        "model": f"{row['model']}/{row['variant']}",
        "runtime": model.runtime,
        "threads": threads,
        "frames": summary.frames,
        "classified": summary.classified,
        "rejected": sum(summary.gated.values()),
        "gated": dict(summary.gated),
        "corrupt": summary.corrupt,
        "ended": summary.ended,
        "seconds": summary.elapsed_s,
        "fps": summary.fps,
        "frame_period_ms": 1e3 * summary.elapsed_s / max(1, summary.frames),
        "stages": _stage_stats(timers, summary.frames),
    }
    if missing:
        out["untimed"] = missing  # the camera module changed: these stages could not be timed
    return out


def _timed_session(
    model: EdgeModel, timers: _Timers, video: Path, frames: int
) -> tuple[Session, list[str]]:
    """A camera session over `video` with its decode, crop and inference timed; the names of
    the session's functions that could not be wrapped (the camera module changed)."""
    from dermedge.edge import camera

    source = camera.OpenCVSource(str(video))
    source.read = timers.wrap("read", source.read)  # type: ignore[method-assign]
    session = camera.Session(
        _TimedModel(model, timers),  # type: ignore[arg-type]
        source,
        camera.SessionOptions(max_frames=frames),
        emit=lambda event: None,
    )
    missing = []
    if hasattr(session, "_crop"):
        session._crop = timers.wrap("_crop", session._crop)  # type: ignore[method-assign]
    else:
        missing.append("_crop")
    return session, missing


def _stage_stats(timers: _Timers, frames: int) -> dict[str, dict[str, Any]]:
    """Latency statistics of each stage in STAGES, with its mean time per frame."""
    stages = {}
    for stage, names in STAGES.items():
        per_frame = timers.stage(names)
        st = latency_stats(per_frame)
        st.pop("warnings", None)
        st["mean_per_frame_ms"] = 1e3 * sum(per_frame) / max(1, frames)
        stages[stage] = st
    return stages

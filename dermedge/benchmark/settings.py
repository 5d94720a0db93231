"""What one benchmark run is asked to do (`Settings`, the runtimes it knows) and its progress log:
shared by the stage (`core`) and its rooms, so that none of them has to import the stage."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

RUNTIMES = ("keras", "tflite", "onnx")


@dataclass
class Settings:
    threads: list[int] = field(default_factory=lambda: [1, 2, 4])
    runs: int = 100  # timed single-image inferences per variant x threads
    warmup: int = 10
    block: int = 1  # inferences per turn in the round-robin
    runtimes: tuple[str, ...] = RUNTIMES
    variants: tuple[str, ...] | None = None  # e.g. ("tflite-int8", "keras"); None: all
    data: str | None = None
    limit: int | None = None  # at most this many test images (stratified, fixed seed)
    batch: int = 16  # accuracy pass batch
    accuracy_threads: int | None = None
    include_rejected: bool = False  # also the variants the converter's accuracy gate refused
    peak_runs: int = 20
    timeout: float = 900.0  # seconds one worker reply may take
    onnx_opset: int = 17
    seed: int = 0


_T0 = time.monotonic()


def log(msg: str) -> None:
    """Print a progress line to stderr, stamped with the seconds since this module was imported."""
    print(f"[benchmark {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)

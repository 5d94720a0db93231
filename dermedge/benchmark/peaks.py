"""The runtimes' peak GMAC/s: an fp32 and an int8 matrix multiply (PEAK_SHAPE) timed in the timing
workers at each thread count; the yardstick each variant's MAC rate is held against."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dermedge.benchmark.compute import peak_model
from dermedge.benchmark.settings import Settings, log
from dermedge.benchmark.variants import Variant
from dermedge.benchmark.workers import Worker

PEAK_SHAPE = (256, 1024, 1024)  # M x K x N of the peak matrix multiply


def measure_peaks(
    workers: Sequence[tuple[Variant, int, Worker]],
    tmp: Path,
    settings: Settings,
    peaks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Peak GMAC/s of each runtime at each thread count: an fp32 and an int8 matrix multiply
    (PEAK_SHAPE) run in one of that runtime's timing workers. A peak is the best rate seen (the
    fastest of the runs; other load only slows a run down), and calling this again with the
    previous result keeps the better of both sessions (it runs before and after the accuracy
    pass, minutes apart, so that one busy moment of a shared machine does not set it).
    {"runtimes": {backend: {"name", "fp32": {threads: GMAC/s}, "int8": {...}}}, "machine": ...}"""
    paths = _peak_models(tmp)
    if peaks is None:
        peaks = _new_peaks(settings)
    peaks["sessions"] += 1
    done: set[tuple[str, int]] = set()
    for v, t, w in workers:
        if w.error or (v.backend, t) in done:
            continue
        done.add((v.backend, t))
        rt = peaks["runtimes"].setdefault(
            v.backend, {"name": w.hello.get("runtime"), "fp32": {}, "int8": {}, "median_gmacs": {}}
        )
        _measure_peak(rt, v.backend, t, w, paths, settings.peak_runs)
    peaks["machine"] = _machine_peak(peaks["runtimes"])
    return peaks


def _peak_models(tmp: Path) -> dict[str, Path]:
    """The fp32 and int8 PEAK_SHAPE matrix-multiply models under `tmp`, written if missing."""
    m, k, n = PEAK_SHAPE
    paths = {dt: tmp / f"peak_{dt}.tflite" for dt in ("fp32", "int8")}
    for dt, path in paths.items():
        if not path.exists():
            path.write_bytes(peak_model(dt, m, k, n))
    return paths


def _new_peaks(settings: Settings) -> dict[str, Any]:
    """An empty peak record, before its first session."""
    m, k, n = PEAK_SHAPE
    return {
        "shape": [m, k, n],
        "macs": m * k * n,
        "runs": settings.peak_runs,
        "statistic": "fastest run, best of the sessions before and after the accuracy pass",
        "sessions": 0,
        "runtimes": {},
    }


def _measure_peak(
    rt: dict[str, Any], backend: str, t: int, w: Worker, paths: dict[str, Path], runs: int
) -> None:
    """Time both peak models in worker `w` at `t` threads; keep the best rate in `rt`, log it."""
    m, k, n = PEAK_SHAPE
    for dt in ("fp32", "int8"):
        r = w.ask(cmd="peak", dtype=dt, shape=[m, k, n], path=str(paths[dt]), n=runs, warmup=3)
        if "times" in r:
            best = m * k * n / float(min(r["times"])) / 1e9
            rt[dt][str(t)] = max(rt[dt].get(str(t), 0.0), best)
            med = m * k * n / float(np.median(r["times"])) / 1e9
            rt["median_gmacs"].setdefault(f"{dt}@{t}", []).append(med)
        elif dt == "fp32" or backend != "keras":
            rt.setdefault("errors", []).append(f"{dt} at {t} thread(s): {r.get('error')}")
    log(
        f"peak of {backend} at {t} thread(s): "
        + ", ".join(
            f"{dt} {rt[dt][str(t)]:.1f} GMAC/s" for dt in ("fp32", "int8") if str(t) in rt[dt]
        )
    )


def _machine_peak(runtimes: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The best peak of any runtime, per data type and thread count."""
    machine_peak: dict[str, dict[str, float]] = {"fp32": {}, "int8": {}}
    for rt in runtimes.values():
        for dt in ("fp32", "int8"):
            for t, g in rt[dt].items():
                machine_peak[dt][t] = max(machine_peak[dt].get(t, 0.0), g)
    return machine_peak

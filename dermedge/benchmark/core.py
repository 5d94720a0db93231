"""The benchmark itself: variants x threads in worker processes, timed interleaved, then scored.

Order of work:
1. find the variants (`variants.discover`), export ONNX ones where tf2onnx converts;
2. load each group's test images through the preprocessing contract (`dermedge.data`);
3. count MACs per image from the .tflite graphs; measure the CPU's peak GMAC/s with fp32 and int8
   matrix multiplies through the edge runtime, at each thread count;
4. start one worker per variant x threads (load time, first inference); warm up, then time
   single-image inferences round-robin over all workers (A B C A B C ...) so that drift on a
   noisy machine hits every variant alike;
5. score each variant once on the test images in a fresh worker (accuracy does not depend on
   threads); quit the timing workers and read their peak resident memory.

This module is the stage (`run` and its steps); its rooms are `settings` (Settings, the progress
log), `workers` (the worker processes, parent side), `testset` (the test images), `onnx_variants`
(the tf2onnx exports), `peaks` (the runtimes' peak GMAC/s) and `rows` (latency statistics, the
results rows). The names callers use are re-exported here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dermedge.benchmark import machine
from dermedge.benchmark.compute import count_macs
from dermedge.benchmark.onnx_variants import export_onnx, onnx_status
from dermedge.benchmark.peaks import measure_peaks
from dermedge.benchmark.rows import Measurements, latency_stats, result_rows
from dermedge.benchmark.settings import RUNTIMES, Settings, log
from dermedge.benchmark.testset import TestSet, load_test_set
from dermedge.benchmark.variants import Group, Variant, discover
from dermedge.benchmark.workers import Worker

__all__ = [  # the stage's own names, and those of its rooms that callers import from here
    "RUNTIMES",
    "Measurements",
    "Settings",
    "TestSet",
    "Worker",
    "export_onnx",
    "latency_stats",
    "load_test_set",
    "log",
    "measure_peaks",
    "onnx_status",
    "run",
]


def _spec(v: Variant, threads: int, test: TestSet) -> dict[str, Any]:
    """The worker spec of a variant at `threads`: backend, files, contract, threshold, I/O."""
    card = v.card or {}
    spec: dict[str, Any] = {
        "backend": v.backend,
        "path": str(v.path),
        "threads": threads,
        "samples": str(test.samples),
        "contract": card.get("input") or test.contract,
        "threshold": card.get("threshold", 0.5),
    }
    for key in ("input_quant", "output_quant"):
        if key in v.extra:
            spec[key] = v.extra[key]
    return spec


def _select(groups: list[Group], settings: Settings, notes: list[str]) -> None:
    """Keep the variants of the chosen runtimes and names that can run here; note the others."""
    runtimes = set(settings.runtimes)
    tf_missing = "tensorflow" if machine.missing("tensorflow") else None
    for g in groups:
        keep = []
        for v in g.variants:
            family = v.base.split("-")[0]
            if family not in runtimes:
                continue
            if settings.variants and not {v.name, v.base} & set(settings.variants):
                continue
            if v.backend == "keras" and tf_missing:
                notes.append(
                    f"{g.name}: keras not benchmarked: TensorFlow is not installed "
                    "(edge install: .tflite variants only)"
                )
                continue
            if v.backend == "onnx" and machine.missing("onnxruntime"):
                notes.append(f"{g.name}: {v.name} not benchmarked: onnxruntime is not installed")
                continue
            keep.append(v)
        g.variants = keep


def run(
    sources: Sequence[str | Path],
    out: Path,
    settings: Settings,
    progress: Callable[[str], None] = log,
) -> dict[str, Any]:
    """Benchmark every variant of `sources` x `settings.threads`; returns the results dict."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    notes: list[str] = []
    started = time.time()
    load_before = machine.loadavg()
    groups = discover(list(sources), include_rejected=settings.include_rejected)
    if "onnx" in settings.runtimes and (
        not settings.variants or any(v.startswith("onnx") for v in settings.variants)
    ):
        why = onnx_status()
        if why:
            notes.append(f"ONNX Runtime variants not benchmarked: {why}")
        else:
            export_onnx(groups, out, settings.onnx_opset, notes)
    _select(groups, settings, notes)
    groups = [g for g in groups if g.variants]
    if not groups:
        raise ValueError("nothing to benchmark: no variant is left after --runtime/--variant")
    tmp = Path(tempfile.mkdtemp(prefix="dermedge-bench-"))
    try:
        return _run(groups, out, settings, notes, tmp, started, load_before, progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(
    groups: list[Group],
    out: Path,
    settings: Settings,
    notes: list[str],
    tmp: Path,
    started: float,
    load_before: Any,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Load the test sets, start the workers, time them interleaved, read their memory, score each
    variant once, measure the runtimes' peaks, and gather it all into the results dict."""
    cpus = os.cpu_count() or 1
    tests = {g.name: load_test_set(g, settings, tmp) for g in groups}
    notes += _variant_notes(groups, tests)
    over = [t for t in settings.threads if t > cpus]
    if over:
        notes.append(
            f"threads {', '.join(map(str, over))} exceed this machine's {cpus} CPUs: "
            "those rows show oversubscription, not extra speed"
        )
    macs = _count_all_macs(groups, notes)
    workers = _start_workers(groups, tests, out, settings, notes, progress)
    times = _time_interleaved(workers, settings, notes, progress)
    # memory first (the accuracy pass loads the test images), then accuracy: it does not depend on
    # threads, so each variant is scored once
    finals = {id(w): w.ask(cmd="stats") for _, _, w in workers}
    peaks = measure_peaks(workers, tmp, settings)  # after the memory was read: it adds buffers
    acc_threads = settings.accuracy_threads or min(max(settings.threads), cpus)
    scores = _score(groups, workers, tests, settings.batch, acc_threads, notes, progress)
    peaks = measure_peaks(workers, tmp, settings, peaks)
    _close_all(workers)

    measured = Measurements(macs=macs, times=times, finals=finals, scores=scores, peaks=peaks)
    rows, raw = result_rows(groups, workers, tests, measured)
    load_after = machine.loadavg()
    if load_before and load_before[0] > 0.5 * cpus:
        notes.append(
            f"the machine was busy when the benchmark started (load average "
            f"{load_before[0]:.2f} on {cpus} CPUs): latencies are pessimistic"
        )
    return {
        "schema": "dermedge.benchmark/1",
        "machine": machine.facts(),
        "load_average": {"before": load_before, "after": load_after},
        "settings": _settings_record(settings, acc_threads),
        "peak": peaks,
        "groups": _groups_record(groups, tests, settings.data),
        "rows": rows,
        "raw_times_ms": raw,
        "notes": notes,
        "seconds": time.time() - started,
    }


def _variant_notes(groups: list[Group], tests: dict[str, TestSet]) -> list[str]:
    """What the reader must know about the variants: refused ones, cards missing, images skipped."""
    notes = []
    for g in groups:
        if g.rejected:
            notes.append(
                f"{g.name}: not benchmarked, refused by the converter's accuracy gate: "
                + ", ".join(p.name for p in g.rejected)
            )
        for v in g.variants:
            if v.rejected:
                notes.append(
                    f"{v.label}: benchmarked although the converter's accuracy gate "
                    f"refused it (see its convert report)"
                )
            if not v.card:
                notes.append(
                    f"{v.label}: no model card; assumed the contract "
                    f"{tests[g.name].contract['size']}px {tests[g.name].contract['crop']} "
                    "and threshold 0.5"
                )
        if tests[g.name].skipped:
            notes.append(f"{g.name}: {len(tests[g.name].skipped)} unreadable test images skipped")
    return notes


def _count_all_macs(groups: list[Group], notes: list[str]) -> dict[str, dict[str, Any]]:
    """`count_macs` of each variant that has a .tflite graph to count, by variant label."""
    macs: dict[str, dict[str, Any]] = {}
    for g in groups:
        for v in g.variants:
            if v.macs_from is not None:
                try:
                    macs[v.label] = count_macs(v.macs_from)
                except ValueError as e:
                    notes.append(f"{v.label}: MACs not counted ({e})")
    return macs


def _start_workers(
    groups: list[Group],
    tests: dict[str, TestSet],
    out: Path,
    settings: Settings,
    notes: list[str],
    progress: Callable[[str], None],
) -> list[tuple[Variant, int, Worker]]:
    """One timing worker per variant x threads, started one by one so that load times are taken
    on a quiet machine; those that fail to load are kept (with their error) and noted."""
    workers: list[tuple[Variant, int, Worker]] = []
    for g in groups:
        for v in g.variants:
            for t in settings.threads:
                progress(f"loading {v.label} at {t} thread(s)")
                spec = _spec(v, t, tests[g.name])
                w = Worker(spec, out / "logs" / f"{g.name}-{v.name}-t{t}.log", settings.timeout)
                if w.error:
                    notes.append(f"{v.label} at {t} thread(s) failed to load: {w.error}")
                workers.append((v, t, w))
    return workers


def _time_interleaved(
    workers: list[tuple[Variant, int, Worker]],
    settings: Settings,
    notes: list[str],
    progress: Callable[[str], None],
) -> dict[int, list[float]]:
    """Warm up, then time single-image inferences round-robin over all live workers (A B C A B C
    ...), `settings.block` per turn, so drift on a noisy machine hits every variant alike; the
    timed seconds by id(worker)."""
    live = [x for x in workers if not x[2].error]
    times: dict[int, list[float]] = {id(w): [] for _, _, w in workers}
    rounds_warm = max(0, -(-settings.warmup // settings.block))
    rounds = max(1, -(-settings.runs // settings.block))
    progress(
        f"timing {len(live)} workers: {rounds_warm} warm-up and {rounds} timed rounds, "
        f"{settings.block} inference(s) per turn, interleaved"
    )
    for r in range(rounds_warm + rounds):
        for v, t, w in live:
            if w.error:
                continue
            reply = w.ask(cmd="run", n=settings.block)
            if "times" not in reply:
                w.error = w.error or str(reply.get("error"))
                notes.append(f"{v.label} at {t} thread(s) failed while timing: {w.error}")
                continue
            if r >= rounds_warm:
                times[id(w)].extend(reply["times"])
        if rounds > 10 and (r - rounds_warm + 1) % max(1, rounds // 5) == 0 and r >= rounds_warm:
            progress(f"  timed round {r - rounds_warm + 1}/{rounds}")
    return times


def _score(
    groups: list[Group],
    workers: list[tuple[Variant, int, Worker]],
    tests: dict[str, TestSet],
    batch: int,
    acc_threads: int,
    notes: list[str],
    progress: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Each variant's P(malignant) on its group's test images, once, by its live worker whose
    thread count is nearest `acc_threads` (the larger on a tie): {label: probs, seconds, threads}."""
    scores: dict[str, dict[str, Any]] = {}
    for g in groups:
        ts = tests[g.name]
        for v in g.variants:
            mine = [(t, w) for vv, t, w in workers if vv is v and not w.error]
            if not mine:
                continue
            t, w = min(mine, key=lambda tw: (abs(tw[0] - acc_threads), -tw[0]))
            progress(f"scoring {v.label} on {len(ts.labels)} test images ({t} thread(s))")
            reply = w.ask(cmd="accuracy", images=str(ts.images), batch=batch)
            if "probs" not in reply:
                notes.append(f"{v.label}: not scored: {reply.get('error') or w.error}")
                continue
            scores[v.label] = {
                "probs": np.asarray(reply["probs"]),
                "seconds": reply["seconds"],
                "threads": t,
            }
    return scores


def _close_all(workers: list[tuple[Variant, int, Worker]]) -> None:
    """Ask every worker to quit first (their exits overlap), then wait for each."""
    for _, _, w in workers:
        w.quit()
    for _, _, w in workers:
        w.close()


def _settings_record(settings: Settings, acc_threads: int) -> dict[str, Any]:
    """The results' `settings`: what was run, and how latency and throughput are defined."""
    return {
        "threads": settings.threads,
        "runs": settings.runs,
        "warmup": settings.warmup,
        "block": settings.block,
        "batch": settings.batch,
        "accuracy_threads": acc_threads,
        "limit": settings.limit,
        "data": settings.data,
        "runtimes": list(settings.runtimes),
        "order": "round-robin over all variant x threads workers, "
        f"{settings.block} single-image inference(s) per turn",
        "latency": "wall time of one predict() call on one uint8 image, including "
        "input quantization and output dequantization",
        "throughput": "1 / mean single-image latency (images/s, one stream)",
    }


def _groups_record(
    groups: list[Group], tests: dict[str, TestSet], data: str | None
) -> dict[str, dict[str, Any]]:
    """The results' `groups`: each model's test images, malignant count, manifest and threshold."""
    return {
        g.name: {
            "test_images": len(tests[g.name].labels),
            "malignant": int(tests[g.name].labels.sum()),
            "manifest": str(g.manifest) if g.manifest else None,
            "data": data,
            "card_threshold": (g.card or {}).get("threshold"),
        }
        for g in groups
    }

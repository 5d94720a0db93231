"""The results rows: latency statistics, and one row per variant x threads shaped from what the run
measured (start-up, latency and memory; accuracy against the group's reference; MACs against the
peaks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dermedge.benchmark.testset import TestSet
from dermedge.benchmark.variants import Group, Variant
from dermedge.benchmark.workers import Worker

WIDE_SPREAD = 0.10  # IQR / median above this: the timing is noisy, say so

TAIL = 2.0  # p99 / median above this: a heavy tail, say so


def latency_stats(times_s: Sequence[float]) -> dict[str, Any]:
    """Median, p90, p99, mean, IQR etc. in milliseconds, with warnings for a wide spread."""
    t = np.asarray(times_s, dtype=np.float64) * 1e3
    if t.size == 0:
        return {"n_runs": 0}
    q25, med, q75, p90, p99 = np.percentile(t, [25, 50, 75, 90, 99])
    iqr = float(q75 - q25)
    out: dict[str, Any] = {
        "n_runs": int(t.size),
        "median_ms": float(med),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "max_ms": float(t.max()),
        "std_ms": float(t.std(ddof=1)) if t.size > 1 else 0.0,
        "q25_ms": float(q25),
        "q75_ms": float(q75),
        "iqr_ms": iqr,
        "iqr_rel": iqr / float(med) if med > 0 else float("nan"),
        "throughput_ips": 1e3 / float(t.mean()),
    }
    warnings = []
    if out["iqr_rel"] > WIDE_SPREAD:
        warnings.append(f"wide spread: IQR is {100 * out['iqr_rel']:.0f}% of the median")
    if med > 0 and p99 / med > TAIL:
        warnings.append(f"heavy tail: p99 is {p99 / med:.1f}x the median")
    if t.size < 30:
        warnings.append(f"only {t.size} timed runs: p99 is the maximum, not a percentile")
    out["warnings"] = warnings
    return out


@dataclass
class Measurements:
    """What the run measured: MACs and scores by variant label, times and final stats by
    id(worker), and the runtimes' peaks."""

    macs: dict[str, dict[str, Any]]
    times: dict[int, list[float]]
    finals: dict[int, dict[str, Any]]  # each worker's "stats" reply (peak memory, CPU time)
    scores: dict[str, dict[str, Any]]
    peaks: dict[str, Any]


def result_rows(
    groups: list[Group],
    workers: list[tuple[Variant, int, Worker]],
    tests: dict[str, TestSet],
    measured: Measurements,
) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """One results row per variant x threads, and each one's timed latencies in ms."""
    refs = {g.name: (g.find("keras") or g.find("tflite-fp32")) for g in groups}
    rows = []
    raw: dict[str, list[float]] = {}
    for v, t, w in workers:
        times = measured.times[id(w)]
        row = _timing_row(v, t, w, times, measured.finals[id(w)])
        s = measured.scores.get(v.label)
        if s is not None:
            row.update(_accuracy_fields(v, s, tests[v.group], refs.get(v.group), measured.scores))
        mc = measured.macs.get(v.label)
        if mc:
            row.update(_compute_fields(v, t, mc["macs"], row.get("median_ms"), measured.peaks))
        rows.append(row)
        raw[f"{v.label}@t{t}"] = [round(x * 1e3, 4) for x in times]
    return rows, raw


def _timing_row(
    v: Variant, t: int, w: Worker, times: list[float], final: dict[str, Any]
) -> dict[str, Any]:
    """A row's variant, file, start-up times, latency statistics and the worker's peak memory."""
    hello = w.hello
    row: dict[str, Any] = {
        "model": v.group,
        "variant": v.name,
        "quantization": v.quantization,
        "threads": t,
        "runtime": hello.get("runtime"),
        "file": v.path.name,
        "path": str(v.path),
        "file_mb": v.size_bytes / 1e6,
        "import_ms": 1e3 * hello["import_s"] if "import_s" in hello else None,
        "load_ms": 1e3 * hello["load_s"] if "load_s" in hello else None,
        "first_ms": 1e3 * hello["first_s"] if "first_s" in hello else None,
        "rejected": v.rejected,
        "error": w.error,
    }
    row.update(latency_stats(times))
    rss = final.get("maxrss_kb")
    row["peak_rss_mb"] = rss / 1024 if rss else None
    row["worker_cpu_s"] = final.get("cpu_s")
    row["tensorflow_loaded"] = final.get("tensorflow_loaded")
    return row


def _accuracy_fields(
    v: Variant,
    s: dict[str, Any],
    ts: TestSet,
    ref: Variant | None,
    scores: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """A row's metrics at the card's threshold, and how far its outputs and decisions are from
    the group's reference variant (Keras, else the fp32 .tflite)."""
    from dermedge.metrics import binary_metrics

    thr = float((v.card or {}).get("threshold", 0.5))
    m = binary_metrics(ts.labels.tolist(), s["probs"].tolist(), thr)
    out: dict[str, Any] = {
        "threshold": thr,
        "n_test": int(len(ts.labels)),
        "auc": m["roc_auc"],
        "accuracy": m["accuracy"],
        "sensitivity": m["recall"],
        "specificity": m["specificity"],
        "tp": m["tp"],
        "fp": m["fp"],
        "tn": m["tn"],
        "fn": m["fn"],
        "batch_ips": len(ts.labels) / s["seconds"] if s["seconds"] else None,
        "accuracy_threads": s["threads"],
    }
    if ref is not None and ref.label in scores and ref is not v:
        rp = scores[ref.label]["probs"]
        out["max_abs_diff_vs_ref"] = float(np.abs(rp - s["probs"]).max())
        out["decision_agreement"] = float(np.mean((rp >= thr) == (s["probs"] >= thr)))
        out["reference"] = ref.name
    return out


def _compute_fields(
    v: Variant, t: int, macs: int, median_ms: float | None, peaks: dict[str, Any]
) -> dict[str, Any]:
    """A row's MACs per image, the GMAC/s its median latency implies, and what fraction that is
    of its runtime's and of the machine's peak at the same thread count."""
    out: dict[str, Any] = {"macs_m": macs / 1e6}
    if not median_ms:
        return out
    gmacs = macs / (median_ms * 1e-3) / 1e9
    kind = "int8" if v.quantization in ("int8", "dynamic") else "fp32"
    peak = peaks["runtimes"].get(v.backend, {}).get(kind, {}).get(str(t))
    best = peaks["machine"][kind].get(str(t))
    out.update(gmacs=gmacs, peak_kind=kind)
    if peak:
        out.update(peak_gmacs=peak, frac_peak=gmacs / peak)
    if best:
        out.update(machine_peak_gmacs=best, frac_machine_peak=gmacs / best)
    return out

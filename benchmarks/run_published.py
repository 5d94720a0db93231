"""Regenerate the README's published benchmark: table, chart and this machine's facts.

    python benchmarks/run_published.py [--runs 200] [--threads 1,2,4] [--wait-quiet 600]

Runs `dermedge benchmark` on the training runs behind the shipped models (--train-runs, with their
converted variants in runs/convert/), then copies what the README shows into
benchmarks/results/:
  benchmark.md / benchmark.csv / benchmark.json   the full results (machine facts, versions,
                                                  every row, raw latencies, notes)
  pareto.png, latency.png                         the charts
  published.md                                    the compact table for the README
The run folder runs/benchmark/published/ keeps the logs and ONNX exports (not committed).

Latency numbers only mean something on a quiet machine: --wait-quiet waits (up to that many
seconds) for the 1-minute load average to fall below half the CPU count before starting, and the
results say what the load was before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dermedge.benchmark import core, report  # noqa: E402
from dermedge.benchmark.machine import flag_summary  # noqa: E402
from dermedge.data.io import atomic_write_text  # noqa: E402
from dermedge.runs import format_table, new_run_dir  # noqa: E402

DEFAULT_RUNS = "lite0-isic-ham-src,simple-isic"  # the shipped default and tiny
OUT = REPO / "benchmarks" / "results"


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def wait_quiet(limit_s: float) -> list[float] | None:
    """Wait until the 1-minute load average is below half the CPUs, at most `limit_s` seconds."""
    cpus = os.cpu_count() or 1
    deadline = time.monotonic() + limit_s
    while True:
        load = os.getloadavg()
        if load[0] < 0.5 * cpus or time.monotonic() >= deadline:
            return [round(x, 2) for x in load]
        print(f"waiting for a quiet machine: load average {load[0]:.2f} on {cpus} CPUs", flush=True)
        time.sleep(min(30.0, max(1.0, deadline - time.monotonic())))


def published_table(results: dict) -> str:
    """The README's table: one row per variant x runtime x threads."""
    rows = []
    for r in results["rows"]:
        if r.get("error"):
            continue
        f = report.fmt_number
        rows.append(
            [
                r["model"],
                r["variant"],
                report.short_runtime(r.get("runtime")),
                r["threads"],
                f(r.get("file_mb"), 2),
                f(r.get("median_ms"), 1),
                f(r.get("p90_ms"), 1),
                f(r.get("throughput_ips"), 1),
                f(r.get("peak_rss_mb"), 0),
                f(r.get("auc"), 3),
                f(r.get("sensitivity"), 3),
                f(r.get("specificity"), 3),
                f(r.get("gmacs"), 1),
                f(100 * r["frac_peak"], 0) if report.is_finite_number(r.get("frac_peak")) else "-",
                "yes" if r.get("pareto") else "",
            ]
        )
    headers = [
        "model",
        "variant",
        "runtime",
        "threads",
        "MB",
        "median ms",
        "p90 ms",
        "img/s",
        "RSS MB",
        "AUC",
        "sens",
        "spec",
        "GMAC/s",
        "% peak",
        "Pareto",
    ]
    return format_table(rows, headers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200, help="timed runs per row")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--runtime", default="keras,tflite,onnx")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S")
    ap.add_argument("--camera-source", default=None, help="also time the camera loop on a video")
    ap.add_argument("--runs-root", default=str(REPO / "runs"))
    ap.add_argument(
        "--train-runs", default=DEFAULT_RUNS, help="run names under runs/train/, comma-separated"
    )
    ap.add_argument("--out", default=str(OUT), help="where the committed copies go")
    args = ap.parse_args()

    os.environ["DERMEDGE_RUNS"] = args.runs_root
    sources = [Path(args.runs_root) / "train" / r for r in args.train_runs.split(",")]
    missing = [str(s) for s in sources if not s.is_dir()]
    if missing:
        print(f"missing runs: {', '.join(missing)} (train and convert them first)", file=sys.stderr)
        return 1
    load = wait_quiet(args.wait_quiet)
    settings = core.Settings(
        threads=[int(t) for t in args.threads.split(",")],
        runs=args.runs,
        warmup=args.warmup,
        include_rejected=True,
        runtimes=tuple(args.runtime.split(",")),
    )
    out = new_run_dir("benchmark", "published", exist_ok=True)
    results = core.run([str(s) for s in sources], out, settings)
    if args.camera_source:
        from dermedge.benchmark.camera import camera_benchmark

        results["camera"] = camera_benchmark(results, Path(args.camera_source), 300, settings)
    results["published"] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": _git_commit(),
        "load_when_started": load,
        "sources": [
            str(s.relative_to(REPO)) if s.is_relative_to(REPO) else str(s) for s in sources
        ],
    }
    paths = report.write(results, out)
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    for key, name in (
        ("md", "benchmark.md"),
        ("csv", "benchmark.csv"),
        ("json", "benchmark.json"),
        ("pareto", "pareto.png"),
        ("latency", "latency.png"),
        ("camera", "camera.png"),
    ):
        if key in paths:
            shutil.copyfile(paths[key], dest / name)
    data = json.loads((dest / "benchmark.json").read_text())
    for r in data["rows"]:  # machine-independent paths in the committed copy
        r["path"] = os.path.relpath(r["path"], REPO) if r.get("path") else None
    for g in data["groups"].values():
        g["manifest"] = os.path.relpath(g["manifest"], REPO) if g.get("manifest") else None
    atomic_write_text(dest / "benchmark.json", json.dumps(data, indent=1) + "\n")
    m = results["machine"]
    text = "\n".join(
        [
            f"Measured on {m['cpu_model']} ({m['usable_cpus']} CPUs, {flag_summary(m['flags'])}), "
            f"{m['date'][:10]}; {settings.runs} timed single-image runs per row, variants interleaved; "
            f"AUC / sensitivity / specificity on the test split at each model card's threshold. "
            f"Regenerate: `python benchmarks/run_published.py`.",
            "",
            published_table(results),
            "",
            "![latency vs AUC](benchmarks/results/pareto.png)",
            "",
        ]
    )
    atomic_write_text(dest / "published.md", text)
    print(report.table(results["rows"]))
    for n in results["notes"]:
        print(f"note: {n}")
    print(f"\nwrote {dest}/ (benchmark.md/.csv/.json, pareto.png, latency.png, published.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dermedge.benchmark import machine
from dermedge.benchmark.compute import count_macs, peak_model
from dermedge.benchmark.variants import Group, Variant, discover, io_quant, onnx_variant

RUNTIMES = ("keras", "tflite", "onnx")
PEAK_SHAPE = (256, 1024, 1024)  # M x K x N of the peak matrix multiply
WIDE_SPREAD = 0.10  # IQR / median above this: the timing is noisy, say so
TAIL = 2.0  # p99 / median above this: a heavy tail, say so


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


# --- workers ------------------------------------------------------------------------------------


def _python() -> list[str]:
    """The command line that runs `python -m dermedge.benchmark` with this interpreter."""
    return [sys.executable, "-m", "dermedge.benchmark"]


def _worker_env() -> dict[str, str]:
    """A worker's environment: TensorFlow quieter, output unbuffered, this package importable."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # the package must be importable from the worker exactly as here (a source checkout too)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Worker:
    """A `python -m dermedge.benchmark --worker` process; JSON lines both ways."""

    def __init__(self, spec: dict[str, Any], log_path: Path, timeout: float) -> None:
        """Start the worker process, its stderr appended to `log_path`, and read its hello."""
        self.spec = spec
        self.timeout = timeout
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [*_python(), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=_worker_env(),
            text=True,
            bufsize=1,
        )
        self.hello = self._read()
        self.error: str | None = None if self.hello.get("ok") else self.hello.get("error", "failed")

    def _read(self) -> dict[str, Any]:
        """The next reply; an {"ok": False} error if the worker times out (killed) or exits."""
        import selectors

        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(self.timeout):
            self.proc.kill()
            return {"ok": False, "error": f"no reply in {self.timeout:.0f} s"}
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            return {
                "ok": False,
                "error": f"worker exited with code {self.proc.returncode} (see {self.log.name})",
            }
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, **cmd: Any) -> dict[str, Any]:
        """Send a command and return the reply; a failed worker answers its error at once."""
        if self.error:
            return {"error": self.error}
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            self.error = f"worker gone: {e}"
            return {"error": self.error}
        reply = self._read()
        if "error" in reply and reply.get("ok") is False:
            self.error = reply["error"]
        return reply

    def quit(self) -> None:
        """Ask the worker to exit, without waiting for it (a TensorFlow exit takes seconds)."""
        stdin = self.proc.stdin
        if stdin is None or stdin.closed:
            return
        try:
            if not self.error and self.proc.poll() is None:
                stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def close(self) -> None:
        """Ask the worker to quit, wait a minute (then kill it), and close its pipe and log."""
        self.quit()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


# --- data ---------------------------------------------------------------------------------------


def _records(group: Group, data: str | None) -> list[Any]:
    """Test records from `data` (a manifest or a dataset), else from the group's split manifest."""
    from dermedge.data.manifest import read_manifest

    if data:
        p = Path(data)
        if p.suffix == ".csv" or (p / "manifest.csv").is_file():
            recs = read_manifest(p, splits=("test",))
            return recs or read_manifest(p)
        from dermedge.data.index import read_dataset

        recs = read_dataset(p).records
        tests = [r for r in recs if r.split == "test"]
        return tests or recs
    if group.manifest is None:
        raise ValueError(f"{group.name}: no split manifest found beside its models; pass --data")
    return read_manifest(group.manifest, splits=("test",))


def _subset(recs: list[Any], limit: int | None, seed: int) -> list[Any]:
    """At most `limit` records, both classes kept in proportion, in a fixed order."""
    recs = sorted(recs, key=lambda r: r.path)
    if not limit or len(recs) <= limit:
        return recs
    by = {lab: [r for r in recs if r.label == lab] for lab in ("benign", "malignant")}
    rng = random.Random(seed)
    for v in by.values():
        rng.shuffle(v)
    n_mal = max(1, round(limit * len(by["malignant"]) / len(recs))) if by["malignant"] else 0
    n_mal = min(n_mal, len(by["malignant"]), limit - (1 if by["benign"] else 0))
    picked = by["malignant"][:n_mal] + by["benign"][: limit - n_mal]
    return sorted(picked, key=lambda r: r.path)


def _contract(group: Group) -> Any:
    """The card's input contract, else one sized by a .tflite's input tensor, else the default."""
    from dermedge.data.contract import InputContract

    card = group.card or {}
    if "input" in card:
        return InputContract.from_dict(card["input"])
    for v in group.variants:
        if v.backend == "litert":
            from dermedge.edge.card import model_io

            shape = model_io(v.path)["inputs"][0]["shape"]
            return InputContract(size=int(shape[1]))
    return InputContract()


@dataclass
class TestSet:
    contract: dict[str, Any]  # the preprocessing the images went through
    images: Path  # .npy (N, size, size, 3) uint8
    labels: np.ndarray  # 0/1
    paths: list[str]
    samples: Path  # a few images for the timing loop
    skipped: dict[str, str]


def load_test_set(group: Group, settings: Settings, tmp: Path) -> TestSet:
    """Preprocess the group's test images (and 16 timing samples) into .npy files under `tmp`."""
    from dermedge.data.images import load_images
    from dermedge.runs import runs_root

    recs = _subset(_records(group, settings.data), settings.limit, settings.seed)
    if not recs:
        raise ValueError(f"{group.name}: no test images")
    contract = _contract(group)
    images, kept, bad = load_images(
        [r.path for r in recs],
        contract,
        cache_dir=runs_root() / "cache",
        desc=f"{group.name} test images",
    )
    labels = np.array([1 if recs[i].label == "malignant" else 0 for i in kept], dtype=np.int64)
    key = f"{group.name}-{contract.size}-{contract.crop}"
    img_path, sample_path = tmp / f"{key}-test.npy", tmp / f"{key}-samples.npy"
    np.save(img_path, images)
    np.save(sample_path, images[:16])
    return TestSet(
        contract.to_dict(), img_path, labels, [recs[i].path for i in kept], sample_path, bad
    )


# --- ONNX ---------------------------------------------------------------------------------------


def onnx_status() -> str | None:
    """None when ONNX variants can be made and run here, else why not."""

    missing = [m for m in ("onnxruntime", "tf2onnx", "tensorflow", "onnx") if _missing(m)]
    return f"not installed: {', '.join(missing)}" if missing else None


def export_onnx(groups: list[Group], out: Path, opset: int, notes: list[str]) -> None:
    """Add onnx-fp32 (from the Keras model, else the fp32 .tflite) and onnx-int8 (from the int8
    .tflite) to each group, where tf2onnx converts; each failure becomes a note."""
    jobs = []
    for g in groups:
        src32 = g.find("keras") or g.find("tflite-fp32")
        if src32 is not None and g.find("onnx-fp32") is None:
            jobs.append((g, "fp32", src32))
        src8 = g.find("tflite-int8")
        if src8 is not None and g.find("onnx-int8") is None:
            jobs.append((g, "int8", src8))
    if not jobs:
        return
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    specs = [
        {
            "src": str(src.path),
            "kind": "keras" if src.backend == "keras" else "tflite",
            "dst": str(
                out / "onnx" / f"{g.name}-{quant}{'-rejected' if src.rejected else ''}.onnx"
            ),
            "opset": opset,
        }
        for g, quant, src in jobs
    ]
    log(f"exporting {len(specs)} variant(s) to ONNX with tf2onnx")
    results = _run_export(specs, out / "logs" / "onnx-export.log")
    for (g, quant, src), spec, res in zip(jobs, specs, results, strict=True):
        if not res.get("ok"):
            notes.append(
                f"{g.name}: onnx-{quant} not benchmarked: tf2onnx could not convert "
                f"{src.name} ({res.get('error')})"
            )
            continue
        tfl = g.find("tflite-fp32") if quant == "fp32" else src
        extra = {
            "exported_from": src.name,
            "method": res.get("method"),
            "tf2onnx": res.get("tf2onnx"),
            "opset": opset,
        }
        if quant == "int8":
            extra.update(io_quant(src.path))
        v = onnx_variant(
            g.name,
            Path(str(spec["dst"])),
            quant,
            src.card or g.card,
            tfl.path if tfl else None,
            extra,
        )
        g.variants.append(v.mark_rejected() if src.rejected else v)
    for g in groups:
        g.variants.sort(key=Variant.order)


def _run_export(specs: list[dict[str, Any]], log_path: Path) -> list[dict[str, Any]]:
    """Run the exporter process; one result per spec (a crash fails the ones not reported)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as fh:
        proc = subprocess.run(
            [*_python(), "--export-onnx", json.dumps(specs)],
            stdout=subprocess.PIPE,
            stderr=fh,
            env=_worker_env(),
            text=True,
            timeout=3600,
        )
    results = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    crash = {"ok": False, "error": f"exporter exited with code {proc.returncode} (see {log_path})"}
    return results + [crash] * (len(specs) - len(results))


# --- statistics ---------------------------------------------------------------------------------


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


# --- the run ------------------------------------------------------------------------------------


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
    tf_missing = "tensorflow" if _missing("tensorflow") else None
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
            if v.backend == "onnx" and _missing("onnxruntime"):
                notes.append(f"{g.name}: {v.name} not benchmarked: onnxruntime is not installed")
                continue
            keep.append(v)
        g.variants = keep


def _missing(module: str) -> bool:
    """True when `module` cannot be imported here (checked without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


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


@dataclass
class Measurements:
    """What the run measured: MACs and scores by variant label, times and final stats by
    id(worker), and the runtimes' peaks."""

    macs: dict[str, dict[str, Any]]
    times: dict[int, list[float]]
    finals: dict[int, dict[str, Any]]  # each worker's "stats" reply (peak memory, CPU time)
    scores: dict[str, dict[str, Any]]
    peaks: dict[str, Any]


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
    rows, raw = _rows(groups, workers, tests, measured)
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


def _rows(
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

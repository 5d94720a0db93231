"""Does the streaming shard cache keep training memory flat as the dataset grows? Measured.

Builds an N-image dataset (default 100,000) as a path list that REPEATS the shared photos
(isic-mvb train, ISIC 2017 training, HAM10000 thumbnails: about 14,700 distinct files, shuffled
once, then cycled; no files are copied or linked), so pixel content repeats while decode cost and
bytes on disk are real. Labels alternate 0/1 (a throughput and memory benchmark, not a model).
Reports decode throughput (images/s through `build_shards`, 1 vs 2 processes, on the first
--decode-n paths), the shard cache's size on disk for all N, and the peak RSS, wall time and
images/s of one training epoch of simple_cnn (batch 64, no augmentation) for each N in --sizes,
fed from memory (`np.asarray` of the images, as `load_images` gives them today) and streamed from
the shards (a `ShardArray`): each measurement in a fresh process of its own.

    python benchmarks/scale_cache.py                      # N = 100000, sizes 10k..100k, 64 px
    python benchmarks/scale_cache.py --n 3000 --sizes 1000,3000 --decode-n 600 --out /tmp/try
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dermedge.benchmark import machine
from dermedge.data.contract import InputContract
from dermedge.data.io import atomic_write_text
from dermedge.data.shards import ShardArray, build_shards, read_shard

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DERMEDGE_DATA", REPO.parent / "shared" / "data"))
SOURCES = (
    "isic-mvb/train/*/*.jpg",
    "isic2017/ISIC-2017_Training_Data/*.jpg",
    "ham10000-thumbs/images/*",
)
BATCH = 64
MB = 2**20


def find_photos(root: Path) -> dict[str, list[str]]:
    """The shared photos under `root`, per source glob (sorted; empty globs left out)."""
    found = {g: sorted(glob.glob(str(root / g))) for g in SOURCES}
    return {g: files for g, files in found.items() if files}


def repeat_paths(photos: list[str], n: int, seed: int = 0) -> list[str]:
    """`n` paths: the photos shuffled once with `seed`, then cycled (each repeats ~n/len times)."""
    order = list(photos)
    random.Random(seed).shuffle(order)
    return [order[i % len(order)] for i in range(n)]


def warm(paths: list[str]) -> int:
    """Read each distinct file once (so every timed decode sees the same warm page cache)."""
    return sum(len(Path(p).read_bytes()) for p in set(paths))


def time_decode(paths: list[str], contract: InputContract, workers: int, work: Path) -> dict:
    """Seconds and images/s of `build_shards` with `workers` processes into a fresh folder."""
    folder = Path(tempfile.mkdtemp(prefix=f"decode-w{workers}-", dir=work))
    try:
        t = time.perf_counter()
        x, _, bad = build_shards(paths, contract, folder, workers=workers, progress=False)
        sec = time.perf_counter() - t
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "workers": workers,
        "images": len(paths),
        "decoded": len(x),
        "bad": len(bad),
        "seconds": round(sec, 3),
        "images_per_s": round(len(paths) / sec, 1),
    }


def build_cache(paths: list[str], contract: InputContract, work: Path) -> tuple[ShardArray, dict]:
    """The shard cache of all `paths` (all cores) and its facts: time, size on disk, per image."""
    t = time.perf_counter()
    x, _, bad = build_shards(paths, contract, work / "cache", desc="shard cache")
    sec = time.perf_counter() - t
    disk = x.disk_bytes()
    return x, {
        "inputs": len(paths),
        "images": len(x),
        "bad": len(bad),
        "shards": len(x.shards),
        "images_per_shard": x.shards[0].n if x.shards else 0,
        "seconds": round(sec, 2),
        "images_per_s": round(len(paths) / sec, 1),
        "disk_bytes": disk,
        "disk_mb": round(disk / MB, 1),
        "bytes_per_image": round(disk / max(1, len(x)), 1),
        "pixel_bytes_per_image": x.record_bytes,
    }


def prefix_listing(x: ShardArray, n: int, work: Path) -> Path:
    """A file listing shard files that hold exactly the first `n` images of `x`: whole shards,
    then (when `n` ends inside one) a tail shard of the rest written beside them."""
    k = int(np.searchsorted(x.starts, n, "right")) - 1
    files = [str(s.path) for s in x.shards[:k]]
    lo = int(x.starts[k]) if k < len(x.shards) else n
    if n > lo:
        tail = work / f"prefix-{n}" / "tail.npy"
        tail.parent.mkdir(parents=True, exist_ok=True)
        np.save(tail, x[lo:n], allow_pickle=False)
        meta = {"n": n - lo, "kept": list(x.shards[k].kept[: n - lo]), "bad": []}
        atomic_write_text(tail.with_suffix(".json"), json.dumps(meta))
        files.append(str(tail))
    listing = work / f"prefix-{n}.txt"
    atomic_write_text(listing, "\n".join(files) + "\n")
    return listing


def _proc_kb(field: str) -> int:
    """A VmXXX line of /proc/self/status, in KiB (0 where unknown)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def child(mode: str, listing: Path, size: int) -> dict:
    """One epoch of simple_cnn on the listed shards, from memory or streamed; peak RSS and time."""
    import resource

    import keras

    from dermedge.train.data import Augment, SplitArrays, make_dataset
    from dermedge.train.models import build_model

    model = build_model("simple_cnn", size, None, 0.4)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc")],
    )
    base_kb = _proc_kb("VmHWM")  # TensorFlow, Keras and the model, before any data
    files = [Path(p) for p in listing.read_text().split()]
    shards = [read_shard(p, size) for p in files]
    if any(s is None for s in shards):
        raise SystemExit(f"unreadable shard among {listing}")
    x: np.ndarray | ShardArray = ShardArray(shards, size)
    if mode == "memory":
        x = np.asarray(x)
    y = (np.arange(len(x)) % 2).astype(np.float32)
    ds = make_dataset(
        SplitArrays("train", x, y, [], {}), BATCH, training=True, seed=0, augment=Augment.none()
    )
    t = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0)
    sec = time.perf_counter() - t
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": mode,
        "n": len(x),
        "size": size,
        "baseline_rss_mb": round(base_kb / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "epoch_s": round(sec, 2),
        "images_per_s": round(len(x) / sec, 1),
    }


def measure(mode: str, listing: Path, size: int) -> dict:
    """`child` in a fresh Python process (so its peak RSS is that run's alone)."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--listing",
        str(listing),
        "--size",
        str(size),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = round(time.perf_counter() - t, 1)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"mode": mode, "error": f"exit {proc.returncode}: {tail}", "process_s": wall}
    return {**json.loads(lines[-1]), "process_s": wall}


def epochs(x: ShardArray, sizes: list[int], size: int, work: Path) -> list[dict]:
    """For each N: one epoch in memory and one streamed, each in its own process."""
    rows = []
    for n in sizes:
        listing = prefix_listing(x, n, work)
        row: dict = {"n": n, "pixel_mb": round(n * x.record_bytes / MB, 1)}
        for mode in ("memory", "stream"):
            print(f"[scale_cache] epoch, N={n}, {mode} ...", flush=True)
            row[mode] = r = measure(mode, listing, size)
            print(f"[scale_cache]   {_fmt_run(r)}", flush=True)
        rows.append(row)
    return rows


def _fmt_run(r: dict) -> str:
    """One run in a line: peak RSS, epoch time, images/s (or its error)."""
    if "error" in r:
        return f"failed: {r['error']}"
    return f"peak RSS {r['peak_rss_mb']:.0f} MB, epoch {r['epoch_s']:.1f} s, {r['images_per_s']:.0f} img/s"


def markdown(res: dict) -> str:
    """The report: epoch table, decode throughput, cache size, and how the dataset was made."""
    c, m = res["cache"], res["machine"]
    lines = [
        f"# Streaming shard cache at scale ({res['size']} px, simple_cnn, batch {BATCH})",
        "",
        f"{res['dataset']['note']}",
        "",
        f"Machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, {m['mem_total_gb']} GB RAM; "
        f"Python {m['versions'].get('python')}, TensorFlow {m['versions'].get('tensorflow')}; "
        f"load average {res['loadavg_before']} before, {res['loadavg_after']} after.",
        "",
        "## One training epoch (each run in a fresh process; no augmentation)",
        "",
        "| N | pixels MB | in-memory peak RSS MB | streamed peak RSS MB | in-memory epoch s (img/s) "
        "| streamed epoch s (img/s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in res["epochs"]:
        mem, st = row["memory"], row["stream"]
        lines.append(
            f"| {row['n']} | {row['pixel_mb']:.0f} | {_cell(mem, 'peak_rss_mb')} | "
            f"{_cell(st, 'peak_rss_mb')} | {_epoch_cell(mem)} | {_epoch_cell(st)} |"
        )
    base = [
        r[k]["baseline_rss_mb"]
        for r in res["epochs"]
        for k in ("memory", "stream")
        if "error" not in r[k]
    ]
    if base:
        lines += [
            "",
            f"Peak RSS before any data is loaded (TensorFlow + model): {min(base):.0f}-{max(base):.0f} MB.",
        ]
    lines += [
        "",
        "## Decode throughput (`build_shards` into a fresh folder, files already in the page "
        "cache; the 2-process time includes starting the spawned pool)",
        "",
        "| processes | images | seconds | images/s |",
        "|---|---|---|---|",
    ]
    for d in res["decode"]:
        lines.append(
            f"| {d['workers']} | {d['images']} | {d['seconds']:.1f} | {d['images_per_s']:.0f} |"
        )
    lines += [
        "",
        "## Shard cache on disk",
        "",
        f"{c['images']} images ({c['bad']} unreadable) in {c['shards']} shard(s): "
        f"{c['disk_mb']:.1f} MB, {c['bytes_per_image']:.0f} bytes/image "
        f"({c['pixel_bytes_per_image']} of pixels); built in {c['seconds']:.0f} s "
        f"({c['images_per_s']:.0f} images/s, all cores).",
    ]
    return "\n".join(lines) + "\n"


def _cell(r: dict, key: str) -> str:
    """A table cell: the value, or 'failed'."""
    return "failed" if "error" in r else f"{r[key]:.0f}"


def _epoch_cell(r: dict) -> str:
    """Epoch seconds (images/s), or 'failed'."""
    return "failed" if "error" in r else f"{r['epoch_s']:.1f} ({r['images_per_s']:.0f})"


def plot(res: dict, path: Path) -> str | None:
    """Peak RSS vs N for both paths, and decode throughput bars; the reason if not drawn."""
    try:
        from dermedge.plotting import new_figure, save_png

        fig = new_figure((9.0, 3.8))
    except ImportError as e:  # pragma: no cover - matplotlib missing
        return f"no plot: {e}"
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for mode, label in (("memory", "in memory (today)"), ("stream", "streamed shards")):
        pts = [(r["n"], r[mode]["peak_rss_mb"]) for r in res["epochs"] if "error" not in r[mode]]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ns = [r["n"] for r in res["epochs"]]
    ax.plot(ns, [r["pixel_mb"] for r in res["epochs"]], "k--", linewidth=1, label="uint8 pixels")
    ax.set_xlabel("images (N)")
    ax.set_ylabel("peak RSS of one epoch, MB")
    ax.set_title(f"simple_cnn, {res['size']} px, batch {BATCH}", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    labels = [f"{d['workers']} process{'es' if d['workers'] > 1 else ''}" for d in res["decode"]]
    vals = [d["images_per_s"] for d in res["decode"]]
    bx.bar(labels, vals, color=["tab:gray", "tab:blue"][: len(vals)])
    for i, v in enumerate(vals):
        bx.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    bx.set_ylabel("decode images/s")
    bx.set_title(
        f"build_shards, {res['decode'][0]['images']} images, {res['machine']['usable_cpus']} CPUs",
        fontsize=9,
    )
    save_png(fig, path)
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="images in the dataset [100000]")
    ap.add_argument("--sizes", default="10000,25000,50000,100000", help="N of each epoch run")
    ap.add_argument("--size", type=int, default=64, help="image side, px [64]")
    ap.add_argument("--decode-n", type=int, default=3000, help="images per decode timing [3000]")
    ap.add_argument("--data", default=str(DATA), help="the shared data [$DERMEDGE_DATA]")
    ap.add_argument("--work", default="/tmp/dermedge-scale", help="where the caches go")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--keep", action="store_true", help="keep the cache folder")
    ap.add_argument("--child", choices=("memory", "stream"), help=argparse.SUPPRESS)
    ap.add_argument("--listing", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def fail(msg: str) -> None:
    """One-line error, exit status 2."""
    print(f"scale_cache: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def check(a: argparse.Namespace) -> tuple[list[int], dict[str, list[str]]]:
    """The epoch sizes and the photos, or a one-line error (exit 2) for bad input."""
    try:
        sizes = sorted({int(s) for s in a.sizes.split(",") if s.strip()})
    except ValueError:
        fail(f"--sizes must be comma-separated integers, got {a.sizes!r}")
    if not sizes or sizes[0] < 1 or sizes[-1] > a.n or a.decode_n < 1 or a.size < 8:
        fail(f"need 1 <= --sizes <= --n ({a.n}), --decode-n >= 1 and --size >= 8")
    photos = find_photos(Path(a.data))
    if not photos:
        fail(f"no photos under {a.data} ({', '.join(SOURCES)}); set DERMEDGE_DATA or --data")
    return sizes, photos


def run(a: argparse.Namespace, sizes: list[int], photos: dict[str, list[str]], work: Path) -> dict:
    """Every measurement, in order: decode 1 vs 2 processes, the full cache, the epochs."""
    every = [p for files in photos.values() for p in files]
    contract = InputContract(size=a.size)
    load_before = machine.loadavg()
    decode, subset = [], repeat_paths(every, a.decode_n)
    warm(subset)
    for w in (1, 2):
        print(f"[scale_cache] decode {a.decode_n} images, {w} process(es) ...", flush=True)
        decode.append(time_decode(subset, contract, w, work))
        print(f"[scale_cache]   {decode[-1]['images_per_s']:.0f} images/s", flush=True)
    print(f"[scale_cache] shard cache of {a.n} images under {work} ...", flush=True)
    x, cache = build_cache(repeat_paths(every, a.n), contract, work)
    print(
        f"[scale_cache]   {cache['disk_mb']:.1f} MB, {cache['bytes_per_image']:.0f} bytes/image",
        flush=True,
    )
    rows = epochs(x, [min(n, len(x)) for n in sizes], a.size, work)
    note = (
        f"Dataset: a path list of {a.n} images that repeats {len(every)} distinct shared "
        f"photos ({', '.join(f'{g}: {len(f)}' for g, f in photos.items())}), shuffled once "
        f"then cycled ({_uses(a.n, len(every))}; no copies or links): pixel "
        "content repeats, decode cost and bytes are real. Labels alternate 0/1."
    )
    return {
        "size": a.size,
        "batch": BATCH,
        "augment": "none",
        "model": "simple_cnn",
        "dataset": {
            "n": a.n,
            "distinct_photos": len(every),
            "sources": {g: len(f) for g, f in photos.items()},
            "repeat": "path list cycling the shuffled photos",
            "labels": "alternating 0/1",
            "note": note,
        },
        "decode": decode,
        "cache": cache,
        "epochs": rows,
        "loadavg_before": load_before,
        "loadavg_after": machine.loadavg(),
        "machine": machine.facts(),
    }


def _uses(n: int, distinct: int) -> str:
    """How often each photo appears in a path list of n."""
    if n <= distinct:
        return f"the first {n} of them, none repeated"
    return f"each used {n // distinct}-{-(-n // distinct)} times, ~{n / distinct:.1f} on average"


def main(argv: list[str] | None = None) -> dict | None:
    """Parse, measure (or run one child epoch), write JSON, Markdown and PNG."""
    a = parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, Path(a.listing), a.size)), flush=True)
        return None
    sizes, photos = check(a)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=a.work))
    try:
        res = run(a, sizes, photos, work)
    finally:
        if a.keep:
            print(f"[scale_cache] kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(a.out)
    atomic_write_text(out / "scale_cache.json", json.dumps(res, indent=2) + "\n")
    text = markdown(res)
    atomic_write_text(out / "scale_cache.md", text)
    why = plot(res, out / "scale_cache.png")
    print(text + (f"\n{why}" if why else ""))
    return res


if __name__ == "__main__":
    main()

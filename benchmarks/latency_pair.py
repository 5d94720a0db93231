"""Latency of two .tflite models on the same photos, interleaved in one run: median ms per photo
for the whole edge path (contract preprocessing from decoded RGB, then the interpreter), and the
ratio. A ratio on one machine in one run, not a promise for another device.

    python benchmarks/latency_pair.py --model dermedge/models/default.tflite \
        --peer previous=/tmp/previous_default.tflite --out benchmarks/results/latency_default.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from dermedge.data.contract import load_rgb, preprocess
from dermedge.data.io import atomic_write_text
from dermedge.edge.runtime import EdgeModel

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def time_one(model: EdgeModel, rgb: np.ndarray) -> float:
    """Seconds for one photo: preprocess (incl. the contract's margin) and predict."""
    t = time.perf_counter()
    model.predict(preprocess(rgb, model.contract))
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--peer", required=True, help="NAME=PATH of the model to compare with")
    ap.add_argument("--photos", default=str(DATA / "derm7pt"), help="a folder of photos")
    ap.add_argument("--n", type=int, default=40, help="photos")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    name, peer_path = a.peer.split("=", 1)
    models = {
        "model": EdgeModel(a.model, threads=a.threads),
        name: EdgeModel(peer_path, threads=a.threads),
    }
    every = sorted(Path(a.photos).rglob("*.jpg"))
    files = every[:: max(1, len(every) // a.n)][: a.n]
    photos = [np.asarray(load_rgb(f)) for f in files]
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(a.repeat):
        for rgb in photos:
            for k, m in models.items():  # interleaved: both see the same load
                times[k].append(time_one(m, rgb))
    med = {k: float(np.median(v) * 1000) for k, v in times.items()}
    report = {
        "model": a.model,
        "peer": {name: peer_path},
        "threads": a.threads,
        "photos": len(photos),
        "runs_each": len(times["model"]),
        "median_ms": med,
        "ratio_model_to_peer": med["model"] / med[name],
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
    }
    atomic_write_text(Path(a.out), json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

"""Do test-time flips pay for their latency on the device? Measured, not assumed.

For a `.tflite` and labelled datasets it never trained on, runs the edge runtime on the contract's
pixels as they are, averaged with the left-right flip (2 passes), and with all four flips
(4 passes); reports ROC AUC (bootstrap CI) and sensitivity/specificity at the card threshold for
each, and the median latency per photo of each (same run, same machine: a ratio, not a promise).

    python benchmarks/tta.py --model dermedge/models/default.tflite \
        --data ../shared/data/derm7pt --out benchmarks/results/tta_default
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dermedge.data.images import load_images
from dermedge.data.index import read_dataset
from dermedge.data.io import atomic_write_text
from dermedge.edge.runtime import EdgeModel
from dermedge.metrics import binary_metrics, bootstrap_ci, roc_auc

FLIPS = {
    "none": [lambda x: x],
    "flip2": [lambda x: x, lambda x: x[:, :, ::-1]],
    "flip4": [
        lambda x: x,
        lambda x: x[:, :, ::-1],
        lambda x: x[:, ::-1],
        lambda x: x[:, ::-1, ::-1],
    ],
}


def predict_tta(model: EdgeModel, x: np.ndarray, mode: str) -> tuple[np.ndarray, float]:
    """Mean P(malignant) over the mode's flips, and the median seconds per photo."""
    views = FLIPS[mode]
    probs = np.zeros(len(x))
    times = []
    for i in range(len(x)):
        t = time.perf_counter()
        probs[i] = np.mean([model.predict(np.ascontiguousarray(v(x[i : i + 1])))[0] for v in views])
        times.append(time.perf_counter() - t)
    return probs, float(np.median(times))


def evaluate(model: EdgeModel, root: str, n_boot: int) -> dict[str, dict]:
    """Each TTA mode on one dataset (all its labelled images)."""
    records = read_dataset(root).records
    x, kept, bad = load_images([r.path for r in records], model.contract, desc=Path(root).name)
    y = np.asarray([records[i].label == "malignant" for i in kept], dtype=int)
    out = {}
    for mode in FLIPS:
        p, sec = predict_tta(model, x, mode)
        at = binary_metrics(y, p, model.threshold)
        ci = bootstrap_ci(y, p, model.threshold, n_boot=n_boot).get("roc_auc")
        out[mode] = {
            "n": int(len(y)),
            "skipped": len(bad),
            "roc_auc": roc_auc(y, p),
            "roc_auc_ci95": ci,
            "sensitivity": at["recall"],
            "specificity": at["specificity"],
            "median_ms_per_photo": round(sec * 1000, 2),
        }
    return out


def markdown(model_path: str, threshold: float, results: dict[str, dict]) -> str:
    """One table per dataset: mode, passes, AUC, sens/spec at the card threshold, latency."""
    lines = [f"# Test-time flips: {model_path} (card threshold {threshold:.4f})", ""]
    for name, modes in results.items():
        base = modes["none"]["median_ms_per_photo"]
        lines += [
            f"## {name}",
            "",
            "| mode | passes | ROC AUC [95% CI] | sensitivity | specificity | ms/photo | x none |",
            "|---|---|---|---|---|---|---|",
        ]
        for mode, m in modes.items():
            ci = m["roc_auc_ci95"] or [float("nan")] * 2
            lines.append(
                f"| {mode} | {len(FLIPS[mode])} | {m['roc_auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
                f"{m['sensitivity']:.3f} | {m['specificity']:.3f} | {m['median_ms_per_photo']:.1f} | "
                f"{m['median_ms_per_photo'] / base:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", nargs="+", required=True, help="labelled dataset folders")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bootstrap", type=int, default=500)
    a = ap.parse_args(argv)
    model = EdgeModel(a.model, threads=a.threads)
    results = {Path(d).name: evaluate(model, d, a.bootstrap) for d in a.data}
    out = Path(a.out)
    atomic_write_text(
        out / "tta.json",
        json.dumps({"model": a.model, "threshold": model.threshold, "results": results}, indent=2),
    )
    text = markdown(a.model, model.threshold, results)
    atomic_write_text(out / "tta.md", text + "\n")
    print(text)
    return results


if __name__ == "__main__":
    main()

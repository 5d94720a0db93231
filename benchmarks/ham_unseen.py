"""Evaluate a shipped .tflite on HAM10000 lesions it never saw, per diagnosis.

A model trained on isic-mvb (nevus vs melanoma) has never seen basal cell carcinoma, actinic
keratosis or benign keratosis. This script takes every HAM10000 image whose lesion is absent from
the model's training manifest (lesion ids linked through identical photos by `dermedge data`),
runs it through the edge runtime at the card's threshold and reports, per dx code, the fraction
referred: sensitivity for mel/bcc/akiec, 1 - specificity for nv/bkl/df/vasc.

    python benchmarks/ham_unseen.py --model runs/convert/lite0-isic/model_int8.tflite \
        --manifest runs/train/lite0-isic/manifest.csv --out benchmarks/results/ham_unseen_lite0-isic
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from dermedge.data.analysis import analyse
from dermedge.data.images import load_images
from dermedge.data.index import HAM_MALIGNANT_DX, read_dataset
from dermedge.data.io import atomic_write_text
from dermedge.data.manifest import read_manifest
from dermedge.edge.runtime import EdgeModel
from dermedge.metrics import binary_metrics, bootstrap_ci
from dermedge.plotting import new_figure, save_png

DX_ORDER = ["mel", "bcc", "akiec", "nv", "bkl", "df", "vasc"]


def unseen_records(
    ham_root: str, manifest: str, splits: tuple[str, ...] | None = None
) -> tuple[list, int]:
    """HAM10000 records whose lesion is not in the manifest's `splits` (all if None), and how many
    were excluded."""
    seen = {r.group for r in read_manifest(manifest, splits=splits) if r.group}
    ham = analyse(read_dataset(ham_root), progress=False).records
    keep = [r for r in ham if f"ham10000:{r.group}" not in seen and r.group not in seen]
    return keep, len(ham) - len(keep)


def per_dx(records: list, prob: np.ndarray, threshold: float) -> dict[str, dict]:
    """Referral rate per diagnosis at the operating threshold."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by[r.dx].append(i)
    out = {}
    for dx in DX_ORDER:
        idx = by.get(dx, [])
        if not idx:
            continue
        referred = float(np.mean(prob[idx] >= threshold))
        out[dx] = {
            "n": len(idx),
            "malignant": dx in HAM_MALIGNANT_DX,
            "referred": referred,
            "median_prob": float(np.median(prob[idx])),
        }
    return out


def plot(result: dict, path: Path) -> None:
    """Bar chart of the referral rate per diagnosis."""
    dxs = list(result["per_dx"])
    rates = [result["per_dx"][d]["referred"] for d in dxs]
    colors = ["#c0392b" if result["per_dx"][d]["malignant"] else "#2e86c1" for d in dxs]
    fig = new_figure((6.0, 3.5))
    ax = fig.add_subplot()
    ax.bar(dxs, rates, color=colors)
    for i, d in enumerate(dxs):
        ax.text(
            i,
            rates[i] + 0.02,
            f"{rates[i]:.0%}\nn={result['per_dx'][d]['n']}",
            ha="center",
            fontsize=7,
        )
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("referred at the card threshold")
    ax.set_title(f"{result['model']}: unseen HAM10000 lesions (red: malignant)", fontsize=9)
    save_png(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--manifest", required=True, help="the model's training manifest")
    data = Path(
        os.environ.get("DERMEDGE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    ap.add_argument("--ham", default=str(data / "ham10000-thumbs"))
    ap.add_argument("--out", required=True, help="output path prefix (.json, .md, .png)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--seen-splits",
        default="train,val,test",
        help="manifest splits whose lesions count as seen (train: also keep the HAM10000 "
        "photos of val/test lesions, which the model was never trained on)",
    )
    args = ap.parse_args()

    model = EdgeModel(args.model, threads=args.threads)
    records, excluded = unseen_records(args.ham, args.manifest, tuple(args.seen_splits.split(",")))
    images, kept, bad = load_images(
        [r.path for r in records], model.contract, cache_dir="runs/cache"
    )
    records = [records[i] for i in kept]
    prob = np.concatenate([model.predict(images[i : i + 64]) for i in range(0, len(images), 64)])
    y = np.array([r.label == "malignant" for r in records], dtype=int)
    metrics = binary_metrics(y, prob, model.threshold)
    ci = bootstrap_ci(y, prob, model.threshold, n_boot=500)
    result = {
        "model": Path(args.model).name,
        "runtime": model.runtime,
        "threshold": model.threshold,
        "images": len(records),
        "seen_splits": args.seen_splits,
        "excluded_seen_lesion_images": excluded,
        "unreadable": bad,
        "metrics": metrics,
        "ci95": ci,
        "per_dx": per_dx(records, prob, model.threshold),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2, default=float))
    rows = [
        f"| {dx} | {'malignant' if v['malignant'] else 'benign'} | {v['n']} | {v['referred']:.1%} | {v['median_prob']:.3f} |"
        for dx, v in result["per_dx"].items()
    ]
    md = "\n".join(
        [
            f"Unseen HAM10000 lesions ({len(records)} images; {excluded} images of lesions in the manifest's {args.seen_splits} splits excluded), "
            f"{result['model']} at threshold {model.threshold:.3f}: ROC AUC {metrics['roc_auc']:.3f}, "
            f"sensitivity {metrics['sensitivity']:.3f}, specificity {metrics['specificity']:.3f}.",
            "",
            "| dx | class | images | referred | median P(malignant) |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    atomic_write_text(out.with_suffix(".md"), md + "\n")
    plot(result, out.with_suffix(".png"))
    print(md)


if __name__ == "__main__":
    main()

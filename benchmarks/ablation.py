"""The field-validity ablation: each training option, measured on Derm7pt (never trained on) and the
internal test split, every model at a threshold chosen the same way.

For each run (a `runs/train/NAME` folder or a `.tflite`), predicts the manifest's val and test
splits and every labelled Derm7pt image, chooses the operating threshold on val with the
project's policy (sensitivity >= 0.95 in every validation source, `choose_threshold_across_sources`)
and reports AUC (bootstrap CI) and sensitivity/specificity at it, per test source and on
Derm7pt, with the training minutes from the card. Runs trained before a policy change are thus
compared at the same rule. Writes ablation.json, ablation.md and ablation.png.

    python benchmarks/ablation.py --manifest runs/data/isic-ham-2017 \
        --run shipped=dermedge/models/default.tflite --run +isic2017=runs/train/abl-2017 ... \
        --out benchmarks/results/ablation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from dermedge.data.contract import InputContract
from dermedge.data.index import read_dataset
from dermedge.data.io import atomic_write_text
from dermedge.data.manifest import read_manifest
from dermedge.plotting import new_figure, save_png
from dermedge.train.data import load_split
from dermedge.train.evaluate import (
    binary_metrics,
    bootstrap_ci,
    choose_threshold_across_sources,
    roc_auc,
)


def load_predictor(target: str) -> tuple[Any, dict[str, Any]]:
    """(predict(uint8 pixels) -> P, card) of a run folder's Keras model or a .tflite."""
    p = Path(target)
    if p.suffix == ".tflite":
        from dermedge.edge.runtime import EdgeModel

        em = EdgeModel(p)
        return em.predict, em.card
    import keras

    from dermedge.train.trainer import predict

    model = keras.models.load_model(p / "model.keras", compile=False)
    card = json.loads((p / "model_card.json").read_text())
    return (lambda x: predict(model, x)), card


def metrics_at(y: np.ndarray, prob: np.ndarray, thr: float, n_boot: int) -> dict[str, Any]:
    """AUC with CI, sensitivity and specificity at `thr`."""
    at = binary_metrics(y, prob, thr)
    ci = bootstrap_ci(y, prob, thr, n_boot=n_boot, metrics=("roc_auc",)).get("roc_auc")
    return {
        "n": int(y.size),
        "positives": int(y.sum()),
        "roc_auc": roc_auc(y, prob),
        "roc_auc_ci95": ci,
        "sensitivity": at["recall"],
        "specificity": at["specificity"],
    }


def measure(target: str, records: list, derm7pt: list, n_boot: int) -> dict[str, Any]:
    """One row: threshold on val by the policy; per-source test and Derm7pt figures at it."""
    predict, card = load_predictor(target)
    contract = InputContract.from_dict(card["input"])
    splits = {
        s: load_split(records, s, contract, "runs/cache", progress=False) for s in ("val", "test")
    }
    ext = load_split(derm7pt, "all", contract, "runs/cache", progress=False)
    p_val = predict(splits["val"].x)
    thr = choose_threshold_across_sources(splits["val"].y, p_val, splits["val"].sources, 0.95, 1.0)
    p_test = predict(splits["test"].x)
    src = np.asarray(splits["test"].sources)
    test = {
        s: metrics_at(splits["test"].y[src == s], p_test[src == s], thr["threshold"], n_boot)
        for s in sorted(set(src))
    }
    p_ext = predict(ext.x)
    training = card.get("training") or {}
    return {
        "model": target,
        "threshold": thr["threshold"],
        "binding_source": thr.get("binding_source"),
        "card_threshold": card.get("threshold"),
        "input": contract.to_dict(),
        "config": training.get("config"),
        "minutes": round((training.get("wall_seconds") or 0) / 60, 1),
        "test": test,
        "derm7pt": metrics_at(ext.y, p_ext, thr["threshold"], n_boot),
        "derm7pt_at_card_threshold": metrics_at(ext.y, p_ext, float(card["threshold"]), 100),
    }


def markdown(rows: dict[str, dict]) -> str:
    """The ablation table."""
    head = (
        "| option | input | Derm7pt AUC [95% CI] | Derm7pt sens | Derm7pt spec | isic-mvb test AUC | "
        "isic2017 test AUC | threshold (val) | train min |"
    )
    lines = [head, "|" + "---|" * 9]
    for name, r in rows.items():
        d, t = r["derm7pt"], r["test"]
        ci = d["roc_auc_ci95"] or [float("nan")] * 2
        cc = r["input"].get("color_constancy", "none")
        inp = f"{r['input']['size']} px{', ' + cc if cc != 'none' else ''}"

        def auc(s: str, t: dict = t) -> str:
            return f"{t[s]['roc_auc']:.3f}" if s in t else "–"

        lines.append(
            f"| {name} | {inp} | {d['roc_auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {d['sensitivity']:.3f} | "
            f"{d['specificity']:.3f} | {auc('isic-mvb')} | {auc('isic2017')} | {r['threshold']:.3f} | "
            f"{r['minutes'] or '–'} |"
        )
    return "\n".join(lines)


def plot(rows: dict[str, dict], path: Path) -> None:
    """Derm7pt AUC (with CI) per option, beside the internal isic-mvb test AUC."""
    fig = new_figure((7.0, 3.8))
    ax = fig.add_subplot(111)
    names = list(rows)
    xs = np.arange(len(names))
    ext = [rows[n]["derm7pt"]["roc_auc"] for n in names]
    cis = [rows[n]["derm7pt"]["roc_auc_ci95"] or [e, e] for n, e in zip(names, ext, strict=True)]
    err = [
        [e - c[0] for e, c in zip(ext, cis, strict=True)],
        [c[1] - e for e, c in zip(ext, cis, strict=True)],
    ]
    ax.bar(xs - 0.2, ext, 0.4, yerr=err, label="Derm7pt (external)", color="#c0504d")
    ax.bar(
        xs + 0.2,
        [rows[n]["test"].get("isic-mvb", {}).get("roc_auc", np.nan) for n in names],
        0.4,
        label="isic-mvb test (internal)",
        color="#4f81bd",
    )
    ax.axhline(0.88, ls="--", color="gray", lw=1, label="Derm7pt target 0.88")
    ax.set_xticks(xs, names, rotation=20, ha="right")
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("ROC AUC")
    ax.legend(fontsize=8, loc="lower right")
    save_png(fig, path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True, help="the split manifest whose val/test are used")
    ap.add_argument("--run", action="append", required=True, metavar="NAME=RUN_OR_TFLITE")
    ap.add_argument("--derm7pt", default="../shared/data/derm7pt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bootstrap", type=int, default=1000)
    a = ap.parse_args(argv)
    records = read_manifest(a.manifest, splits=("val", "test"))
    derm7pt = read_dataset(a.derm7pt).records
    for r in derm7pt:
        r.split = "all"
    rows = {}
    for spec in a.run:
        name, _, target = spec.partition("=")
        print(f"measuring {name}: {target}", flush=True)
        rows[name] = measure(target, records, derm7pt, a.bootstrap)
    out = Path(a.out)
    atomic_write_text(out / "ablation.json", json.dumps(rows, indent=2))
    text = markdown(rows)
    atomic_write_text(out / "ablation.md", text + "\n")
    plot(rows, out / "ablation.png")
    print(text)
    return rows


if __name__ == "__main__":
    main()

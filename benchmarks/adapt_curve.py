"""Site adaptation (`dermedge calibrate --adapt`) on Derm7pt: the issue's targets and the curve.

Derm7pt is another atlas and dermatoscope than the shipped models' training data. Its features are
computed once through the edge runtime and cached under runs/adapt/ (gitignored). Then, for each
seeded split of the cases in two halves (grouped by case), the head is adapted on one half (or on
n cases per class drawn from it) with the card's policy (target sensitivity 0.95 + its margin) and
checked on every case it was not fitted on, against today's threshold-only calibration on the same
cases. Also: the time to adapt on 500 cases, features included (decode + inference + fit), and the
head's cost per classification. Writes benchmarks/results/adapt_<name>.{json,md,png}.

    python benchmarks/adapt_curve.py --model dermedge/models/default.tflite --name default
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from dermedge.benchmark.machine import facts
from dermedge.data.images import load_images
from dermedge.data.index import read_dataset
from dermedge.data.io import atomic_write_text
from dermedge.edge import adapt as ad
from dermedge.edge.adapt_site import curve_table, plot_curve
from dermedge.edge.runtime import EdgeModel
from dermedge.metrics import binary_metrics, choose_threshold, roc_auc
from dermedge.runs import format_table

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DERMEDGE_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"
CACHE = REPO / "runs" / "adapt"
SPLITS = 5
CHECK_SENSITIVITY = 0.93  # the operating point: specificity at sensitivity >= 0.93


def features(model_path: Path, name: str) -> dict[str, np.ndarray]:
    """Shipped P(malignant), features, labels and case ids of every Derm7pt case (cached)."""
    cache = CACHE / f"derm7pt_{name}.npz"
    if cache.is_file() and cache.stat().st_mtime > model_path.stat().st_mtime:
        with np.load(cache) as z:
            return {k: z[k] for k in z}
    model = EdgeModel(model_path)
    index = read_dataset(DATA / "derm7pt")
    x, kept, _ = load_images([r.path for r in index.records], model.contract, progress=False)
    parts = [model.predict_features(x[i : i + 32], adapted=False) for i in range(0, len(kept), 32)]
    recs = [index.records[i] for i in kept]
    out = {
        "prob": np.concatenate([p for p, _ in parts]),
        "features": np.concatenate([f for _, f in parts]).astype(np.float32),
        "y": np.asarray([r.label == "malignant" for r in recs], dtype=np.int64),
        "group": np.asarray([r.group or r.path for r in recs]),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, prob=out["prob"], features=out["features"], y=out["y"], group=out["group"])
    return out


def half_splits(
    data: tuple[np.ndarray, ...], target: float, margin: float, per_class: int | None = None
) -> dict[str, Any]:
    """Adapt on one half (or `per_class` cases of each class from it), check on every case it
    was not fitted on: mean over SPLITS seeded grouped splits."""
    f, p, y, g = data
    rows = []
    for seed in range(SPLITS):
        idx = ad.per_class_sample(
            np.flatnonzero(ad.grouped_folds(y, g, 2, seed) == 0), y, per_class, seed
        )
        half = np.zeros(y.size, dtype=bool)
        half[idx] = True
        rest = ~np.isin(g, g[half])
        a = ad.adapt(f[half], p[half], y[half], g[half], target, margin, seed)
        pc = a.head.prob(f[rest], p[rest])
        at = binary_metrics(y[rest], pc, a.threshold["threshold"])
        t_only = choose_threshold(y[half], p[half], target, margin)["threshold"]
        old = binary_metrics(y[rest], p[rest], t_only)
        rows.append(
            {
                "auc": at["roc_auc"],
                "sensitivity": at["recall"],
                "specificity": at["specificity"],
                f"spec_at_{CHECK_SENSITIVITY}": ad.spec_at_sensitivity(
                    y[rest], pc, CHECK_SENSITIVITY
                ),
                "shipped_auc": roc_auc(y[rest], p[rest]),
                "threshold_only_sensitivity": old["recall"],
                "threshold_only_specificity": old["specificity"],
                f"shipped_spec_at_{CHECK_SENSITIVITY}": ad.spec_at_sensitivity(
                    y[rest], p[rest], CHECK_SENSITIVITY
                ),
                "lambda": a.lam,
                "adapt_counts": {
                    "malignant": int(y[half].sum()),
                    "benign": int((1 - y[half]).sum()),
                },
            }
        )
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "adapt_counts"}
    return {"mean": mean, "splits": rows}


SKIMAGE = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "moon",
    "page",
    "rocket",
    "text",
)


def not_lesions(model: EdgeModel) -> np.ndarray:
    """Features of scikit-image's sample photographs (no lesion in any of them)."""
    import skimage.data
    from PIL import Image

    from dermedge.data.contract import preprocess

    x = [
        preprocess(
            np.asarray(Image.fromarray(getattr(skimage.data, n)()).convert("RGB")), model.contract
        )
        for n in SKIMAGE
    ]
    feats = model.predict_features(np.stack(x), adapted=False)[1]
    assert feats is not None
    return feats


def guard_check(model_path: Path, data: tuple[np.ndarray, ...]) -> list[dict[str, Any]]:
    """The guard refitted on the site (half, 50 and 20 per class): the pass rate of the site's
    held-out cases and the share of non-lesion photos still flagged, against the shipped guard."""
    model = EdgeModel(model_path)
    f, _, y, g = data
    other = not_lesions(model)
    old = model.guard
    rows = []
    for per_class in (None, 50, 20):
        vals = []
        for seed in range(SPLITS):
            idx = np.flatnonzero(ad.grouped_folds(y, g, 2, seed) == 0)
            fit = ad.per_class_sample(idx, y, per_class, seed)
            rest = ~np.isin(g, g[fit])
            folds = ad.grouped_folds(y[fit], g[fit], ad.FOLDS, seed)
            new, fig = ad.refit_guard(old, f[fit], y[fit], folds)
            vals.append(
                [
                    float((new.score(f[rest]) <= new.cutoff).mean()),
                    float((old.score(f[rest]) <= old.cutoff).mean()),
                    float((new.score(other) > new.cutoff).mean()),
                    float((old.score(other) > old.cutoff).mean()),
                ]
            )
        m = np.mean(vals, axis=0)
        rows.append(
            {
                "per_class": "all" if per_class is None else per_class,
                "refit": fig["refit"],
                "site_pass_rate": m[0],
                "site_pass_rate_shipped_guard": m[1],
                "not_lesion_flagged": m[2],
                "not_lesion_flagged_shipped_guard": m[3],
                "not_lesion_photos": len(SKIMAGE),
            }
        )
    return rows


def fit_time(model_path: Path, n: int = 500) -> dict[str, float]:
    """Seconds to adapt on `n` Derm7pt cases from their files: decode, inference, fit (CV)."""
    index = read_dataset(DATA / "derm7pt")
    rng = np.random.default_rng(0)
    recs = [index.records[i] for i in np.sort(rng.choice(len(index.records), n, replace=False))]
    t0 = time.perf_counter()
    model = EdgeModel(model_path)
    t1 = time.perf_counter()
    x, kept, _ = load_images([r.path for r in recs], model.contract, progress=False)
    t2 = time.perf_counter()
    parts = [model.predict_features(x[i : i + 32], adapted=False) for i in range(0, len(kept), 32)]
    t3 = time.perf_counter()
    p = np.concatenate([q for q, _ in parts])
    f = np.concatenate([q for _, q in parts])
    y = np.asarray([recs[i].label == "malignant" for i in kept], dtype=np.int64)
    a = ad.adapt(f, p, y, [recs[i].path for i in kept], 0.95, 1.0)
    t4 = time.perf_counter()
    # the head's cost per classification against the model's own inference
    one = x[:1]
    reps = 50
    s0 = time.perf_counter()
    prob, feats = model.predict_features(one, adapted=False)
    assert feats is not None
    for _ in range(reps):
        model.predict_features(one, adapted=False)
    s1 = time.perf_counter()
    for _ in range(reps * 20):
        a.head.prob(feats, prob)
    s2 = time.perf_counter()
    return {
        "cases": len(kept),
        "load_s": t1 - t0,
        "decode_s": t2 - t1,
        "inference_s": t3 - t2,
        "fit_s": t4 - t3,
        "total_s": t4 - t0,
        "inference_ms_per_image": 1000 * (s1 - s0) / reps,
        "head_ms_per_image": 1000 * (s2 - s1) / (reps * 20),
    }


def markdown(name: str, res: dict[str, Any]) -> str:
    """The results as Markdown: the issue's targets, the learning curve, the timing."""
    m = res["half"]["mean"]
    c50 = res["fifty"]["mean"]
    t = res["timing"]
    s = CHECK_SENSITIVITY
    lines = [
        f"# Site adaptation on Derm7pt: `{name}`",
        "",
        f"Mean of {SPLITS} seeded splits grouped by case; the head adapted with the card's policy "
        f"(target sensitivity {res['target']} + {res['margin_se']} SE margin, threshold on "
        "out-of-fold scores) and checked on the cases it was not fitted on. Threshold-only: "
        "today's `dermedge calibrate` on the same adaptation cases.",
        "",
        "| adapt on | AUC | sens / spec at the policy's threshold | spec at sens >= 0.93 (ROC) |",
        "|---|---|---|---|",
        f"| half: threshold only | {m['shipped_auc']:.3f} | "
        f"{m['threshold_only_sensitivity']:.3f} / {m['threshold_only_specificity']:.3f} | "
        f"{m[f'shipped_spec_at_{s}']:.3f} |",
        f"| half: adapted | **{m['auc']:.3f}** | {m['sensitivity']:.3f} / "
        f"{m['specificity']:.3f} | **{m[f'spec_at_{s}']:.3f}** |",
    ]
    h = res["half_at_check"]["mean"]
    lines += [
        f"| half, `--target-sensitivity {s}`: threshold only | {h['shipped_auc']:.3f} | "
        f"{h['threshold_only_sensitivity']:.3f} / {h['threshold_only_specificity']:.3f} | "
        f"{h[f'shipped_spec_at_{s}']:.3f} |",
        f"| half, `--target-sensitivity {s}`: adapted | **{h['auc']:.3f}** | "
        f"{h['sensitivity']:.3f} / **{h['specificity']:.3f}** | {h[f'spec_at_{s}']:.3f} |",
    ]
    lines += [
        f"| 50 per class: threshold only | {c50['shipped_auc']:.3f} | "
        f"{c50['threshold_only_sensitivity']:.3f} / {c50['threshold_only_specificity']:.3f} | "
        f"{c50[f'shipped_spec_at_{s}']:.3f} |",
        f"| 50 per class: adapted | **{c50['auc']:.3f}** | {c50['sensitivity']:.3f} / "
        f"{c50['specificity']:.3f} | **{c50[f'spec_at_{s}']:.3f}** |",
    ]
    lines += [
        "",
        "## Learning curve (held out: every case not used to adapt; mean ± SD over repeats)",
        "",
        curve_table(res["curve"]),
        "",
        "`kept`: the share of repeats in which `calibrate --adapt` keeps the new layer (its "
        "out-of-fold AUC gain's 95% CI above 0); sens/spec: at the policy's threshold; "
        f"spec@target: the held-out ROC's at sensitivity {res['target']}.",
        "",
    ]
    if res.get("curve_prior"):
        lines += [
            "With the prior toward the shipped head (its logit as a barely penalised input):",
            "",
            curve_table(res["curve_prior"]),
            "",
        ]
    lines += [
        "## The guard learns the site (held-out Derm7pt cases that pass; scikit-image photos "
        "still flagged)",
        "",
        format_table(
            [
                [
                    str(r["per_class"]),
                    r["refit"],
                    f"{r['site_pass_rate_shipped_guard']:.3f} -> {r['site_pass_rate']:.3f}",
                    f"{r['not_lesion_flagged_shipped_guard']:.3f} -> {r['not_lesion_flagged']:.3f}",
                ]
                for r in res["guard"]
            ],
            [
                "per class",
                "refitted",
                "site cases passing",
                f"{len(SKIMAGE)} non-lesion photos flagged",
            ],
        ),
        "",
    ]
    lines += [
        f"## Time ({t['cases']} cases from their files; {res['machine'].get('cpu_model', '?')}, "
        f"{res['machine'].get('usable_cpus')} CPUs shared with other jobs; load average "
        f"{res['loadavg_start']} at the start, {res['loadavg_end']} at the end)",
        "",
        format_table(
            [[f"{t[k]:.2f}" for k in ("load_s", "decode_s", "inference_s", "fit_s", "total_s")]],
            ["model load s", "decode s", "inference s", "fit (CV + head) s", "total s"],
        ),
        "",
        f"The head per classification: {t['head_ms_per_image']:.3f} ms against "
        f"{t['inference_ms_per_image']:.1f} ms for the model's own inference.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "dermedge" / "models" / "default.tflite")
    ap.add_argument("--name", default="default")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prior", action="store_true", help="also the curve with the prior")
    args = ap.parse_args()
    card = EdgeModel(args.model).card or {}
    target = float((card.get("threshold_policy") or {}).get("target_sensitivity", 0.95))
    margin = float((card.get("threshold_policy") or {}).get("margin_se", 1.0))
    z = features(args.model, args.name)
    data = (z["features"].astype(np.float64), z["prob"], z["y"], z["group"])
    res: dict[str, Any] = {
        "model": str(args.model),
        "name": args.name,
        "target": target,
        "margin_se": margin,
        "n": int(z["y"].size),
        "positives": int(z["y"].sum()),
        "machine": facts(),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "half": half_splits(data, target, margin),
        "fifty": half_splits(data, target, margin, per_class=50),
        "half_at_check": half_splits(data, CHECK_SENSITIVITY, margin),
        "curve": ad.learning_curve(data, target, margin, repeats=args.repeats),
    }
    if args.prior:
        res["curve_prior"] = ad.learning_curve(
            data, target, margin, repeats=args.repeats, prior=True
        )
    res["guard"] = guard_check(args.model, data)
    res["timing"] = fit_time(args.model)
    res["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"adapt_{args.name}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(res, indent=1, default=str) + "\n")
    atomic_write_text(stem.with_suffix(".md"), markdown(args.name, res))
    plot_curve(res["curve"], stem.with_suffix(".png"), f"{args.name} adapted to Derm7pt")
    print(markdown(args.name, res))


if __name__ == "__main__":
    main()

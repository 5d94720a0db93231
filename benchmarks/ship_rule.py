"""The ship rule, applied: judge candidate .tflite models the way the default is chosen.

Each candidate runs through the edge runtime (int8 as shipped) on
  - Derm7pt, every labelled image (external, never trained on): AUC with a 95% CI, and
    sensitivity / specificity at the card's threshold;
  - the test split of every training source, each on its own (HAM10000 pooled and by sub-source,
    ISIC 2017, ISIC 2020, isic-mvb) from an all-source manifest (`dermedge data split --recipe`);
    test images whose lesion or photo the candidate trained on (its own training manifest, if
    known) are left out and counted, so an older model is not scored on photos it learnt;
  - Derm7pt after site adaptation: a last layer refitted (dermedge.edge.adapt) on one half
    (grouped by case, stratified), checked on the other half; mean over seeded halvings.
The rule (README, Model): a candidate *holds up* when its per-source test AUCs reach the floors
(HAM10000 >= 0.92, ISIC 2017 >= 0.82, ISIC 2020 >= 0.80), each measured on at least 20 malignant
test images it never saw (isic-mvb is reported, never a criterion: its benign photos are all
HAM10000 nevi). Among those that hold up, the shipped model is
the one with the best Derm7pt AUC, as shipped and adapted (their mean). When none holds up, the
best-scoring candidate that improves on the shipped `default` on every figure replaces it. Features and
probabilities are computed once per model file and cached under runs/ship_rule/.

    python benchmarks/ship_rule.py --model dermedge/models/default.tflite \
        --model dermedge/models/tiny.tflite --manifest runs/data/all-sources \
        --train-manifest default=runs/data/isic-ham --train-manifest tiny=runs/data/isic-mvb \
        --out benchmarks/results/ship_rule
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from dermedge.data.images import load_images
from dermedge.data.index import Record, read_dataset
from dermedge.data.io import atomic_write_bytes, atomic_write_text
from dermedge.data.manifest import ManifestError, read_manifest
from dermedge.edge.runtime import EdgeModel
from dermedge.metrics import binary_metrics, bootstrap_ci, choose_threshold, clean_json, roc_auc
from dermedge.plotting import new_figure, save_png

FLOORS = {"ham10000": 0.92, "isic2017": 0.82, "isic2020": 0.80}  # per-source test AUC floors
DERM7PT_TARGETS = {"auc": 0.85, "sensitivity": 0.90, "specificity": 0.30}
MIN_POSITIVES = 20  # a floor is judged on at least this many malignant test images unseen
ADAPT_SEEDS = (0, 1, 2, 3, 4)
TARGET_SENSITIVITY, MARGIN_SE = 0.95, 1.0  # the card's threshold policy, for the adapted head
N_BOOT = 1000
ISIC_ID = re.compile(r"^ISIC_\d{7}$")
CACHE = Path("runs/ship_rule")
INCUMBENT = "default"  # the shipped model, as named on the command line


def data_root() -> Path:
    """The shared data: $DERMEDGE_DATA, else ../shared/data beside the checkout."""
    here = Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(os.environ.get("DERMEDGE_DATA", here))


# --- what a model saw ---------------------------------------------------------------------------


def seen_keys(manifest: str | None) -> set[str] | None:
    """Lesion groups, photo digests and ISIC ids of a training manifest's train and val splits
    (None: the candidate's training data is not known, overlap is not checked)."""
    if not manifest:
        return None
    records = read_manifest(manifest, splits=("train", "val"))
    sha = _manifest_sha(manifest)
    keys = {f"group:{r.group}" for r in records if r.group}
    keys |= {f"id:{Path(r.path).stem}" for r in records if ISIC_ID.match(Path(r.path).stem)}
    return keys | {f"sha:{s}" for s in sha}


def _manifest_sha(manifest: str) -> set[str]:
    """The sha256 column of the manifest's train and val rows."""
    import csv

    path = Path(manifest)
    path = path / "manifest.csv" if path.is_dir() else path
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["sha256"] for r in csv.DictReader(fh) if r["split"] in ("train", "val")}


def is_seen(r: Record, sha: str, keys: set[str] | None) -> bool:
    """Whether the candidate trained (or chose its threshold) on this lesion or photo."""
    if not keys:
        return False
    stem = Path(r.path).stem
    return (
        (r.group is not None and f"group:{r.group}" in keys)
        or f"sha:{sha}" in keys
        or (ISIC_ID.match(stem) is not None and f"id:{stem}" in keys)
    )


# --- features, once per model file ----------------------------------------------------------------


def file_sha(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_outputs(model: EdgeModel, paths: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """(P(malignant), features or None) of every path, from the cache under runs/ship_rule/
    (keyed by the model file's digest), computing only what is missing."""
    cache = CACHE / f"{file_sha(model.path)[:16]}.npz"
    store: dict[str, tuple[float, np.ndarray | None]] = {}
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        feats = z["feat"] if z["feat"].size else None
        for i, p in enumerate(z["paths"].tolist()):
            store[p] = (float(z["prob"][i]), None if feats is None else feats[i])
    todo = [p for p in dict.fromkeys(paths) if p not in store]
    if todo:
        images, kept, bad = load_images(todo, model.contract, cache_dir="runs/cache")
        if bad:
            raise SystemExit(f"unreadable images, e.g. {next(iter(bad.items()))}")
        for s in range(0, len(todo), 64):
            prob, feat = model.predict_features(images[s : s + 64])
            for j, p in enumerate(todo[s : s + 64]):
                store[p] = (float(prob[j]), None if feat is None else np.asarray(feat[j]))
        _save_cache(cache, store)
    prob = np.array([store[p][0] for p in paths])
    first = store[paths[0]][1] if paths else None
    feats = None if first is None else np.stack([store[p][1] for p in paths])  # type: ignore[misc]
    return prob, feats


def _save_cache(cache: Path, store: dict[str, tuple[float, np.ndarray | None]]) -> None:
    """Write the cached outputs of a model file atomically (.npz)."""
    import io

    keys = sorted(store)
    has_feat = store[keys[0]][1] is not None
    feat = np.stack([store[k][1] for k in keys]) if has_feat else np.zeros(0)  # type: ignore[misc]
    buf = io.BytesIO()
    np.savez(buf, paths=np.array(keys), prob=np.array([store[k][0] for k in keys]), feat=feat)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cache, buf.getvalue())


# --- the sets -------------------------------------------------------------------------------------


def test_sets(manifest: str) -> dict[str, list[tuple[Record, str]]]:
    """{set name: [(record, sha256)]}: each source's test split, HAM10000 pooled over its
    sub-sources and each sub-source on its own."""
    import csv

    records = read_manifest(manifest, splits=("test",))
    path = Path(manifest)
    path = path / "manifest.csv" if path.is_dir() else path
    with open(path, newline="", encoding="utf-8") as fh:
        sha = [r["sha256"] for r in csv.DictReader(fh) if r["split"] == "test"]
    sets: dict[str, list[tuple[Record, str]]] = defaultdict(list)
    for r, s in zip(records, sha, strict=True):
        top = r.source.split(":")[0]
        sets[top].append((r, s))
        if ":" in r.source:
            sets[r.source].append((r, s))
    return dict(sorted(sets.items()))


def evaluate_set(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUC and sensitivity / specificity at the threshold, each with a bootstrap 95% CI."""
    if y.size == 0 or y.min() == y.max():
        return {"n": int(y.size), "positives": int(y.sum()), "auc": None}
    m = binary_metrics(y, prob, threshold)
    ci = bootstrap_ci(
        y, prob, threshold, n_boot=N_BOOT, metrics=("roc_auc", "sensitivity", "specificity")
    )
    return {
        "n": int(y.size),
        "positives": int(y.sum()),
        "auc": m["roc_auc"],
        "auc_ci95": list(ci["roc_auc"]),
        "sensitivity": m["sensitivity"],
        "sensitivity_ci95": list(ci["sensitivity"]),
        "specificity": m["specificity"],
        "specificity_ci95": list(ci["specificity"]),
    }


# --- site adaptation on half of Derm7pt ---------------------------------------------------------


def halves(y: np.ndarray, groups: list[str], seed: int) -> np.ndarray:
    """A boolean mask (True: the adaptation half), whole cases on one side, each class halved."""
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by[g].append(i)
    mask = np.zeros(y.size, dtype=bool)
    for label in (0, 1):
        keys = sorted(g for g, idx in by.items() if int(y[idx[0]]) == label)
        rng.shuffle(keys)
        for g in keys[: len(keys) // 2]:
            mask[by[g]] = True
    return mask


def fit_and_score(
    feat: np.ndarray,
    prob: np.ndarray,
    y: np.ndarray,
    groups: list[str],
    fit: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, float, str]:
    """(P(malignant) of the checking half, threshold chosen on the fitting half, adapter used)."""
    try:
        from dermedge.edge.adapt import adapt
    except ImportError:
        adapt = None
    if adapt is not None:
        a = adapt(
            feat[fit],
            prob[fit],
            y[fit],
            [groups[i] for i in np.flatnonzero(fit)],
            TARGET_SENSITIVITY,
            MARGIN_SE,
            seed=seed,
        )
        p = a.head.prob(feat[~fit], prob[~fit])
        return p, float(a.threshold["threshold"]), "dermedge.edge.adapt"
    w, b, mean, scale = _logreg(feat[fit], y[fit])
    p_fit = _sigmoid(((feat[fit] - mean) / scale) @ w + b)
    thr = choose_threshold(y[fit], p_fit, TARGET_SENSITIVITY, MARGIN_SE)["threshold"]
    return _sigmoid(((feat[~fit] - mean) / scale) @ w + b), float(thr), "numpy logreg (fallback)"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _logreg(x: np.ndarray, y: np.ndarray, lam: float = 100.0, steps: int = 300) -> tuple:
    """A standardised L2 logistic regression fitted by gradient descent (the fallback head)."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    w, b = np.zeros(z.shape[1]), 0.0
    lr = 1.0 / (0.25 * (np.linalg.norm(z, 2) ** 2 / len(y)) + lam / len(y))
    for _ in range(steps):
        g = _sigmoid(z @ w + b) - y
        w -= lr * (z.T @ g / len(y) + lam * w / len(y))
        b -= lr * float(g.mean())
    return w, b, mean, scale


def adapted_derm7pt(
    feat: np.ndarray | None, prob: np.ndarray, y: np.ndarray, groups: list[str]
) -> dict[str, Any]:
    """Mean over seeded halvings: the adapted AUC, sensitivity / specificity on the checking
    half, and the shipped model's AUC on the same halves."""
    if feat is None:
        return {"auc": None, "why": "the model has no feature output (no guard)"}
    rows, adapter = [], ""
    for seed in ADAPT_SEEDS:
        fit = halves(y, groups, seed)
        p, thr, adapter = fit_and_score(feat, prob, y, groups, fit, seed)
        m = binary_metrics(y[~fit], p, thr)
        rows.append(
            {
                "seed": seed,
                "auc": m["roc_auc"],
                "shipped_auc": roc_auc(y[~fit], prob[~fit]),
                "sensitivity": m["sensitivity"],
                "specificity": m["specificity"],
                "threshold": thr,
                "n_fit": int(fit.sum()),
                "n_check": int((~fit).sum()),
            }
        )
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "seed"}
    sd = float(np.std([r["auc"] for r in rows]))
    return {**mean, "auc_sd": sd, "adapter": adapter, "seeds": rows}


# --- one model ----------------------------------------------------------------------------------


def judge(
    name: str, path: str, manifest: str, derm7pt: Path, train_manifest: str | None
) -> dict[str, Any]:
    """Every figure of the rule for one candidate, and whether it holds up."""
    model = EdgeModel(path, threads=2)
    keys = seen_keys(train_manifest)
    d7 = read_dataset(derm7pt).records
    sets = test_sets(manifest)
    paths = [r.path for r in d7] + [r.path for rows in sets.values() for r, _ in rows]
    prob_all, feat_all = model_outputs(model, paths)
    at = {p: i for i, p in enumerate(paths)}
    out: dict[str, Any] = {
        "model": name,
        "file": path,
        "file_sha256": file_sha(path),
        "card_name": model.name,
        "threshold": model.threshold,
        "runtime": model.runtime,
        "train_manifest": train_manifest,
        "overlap_checked": keys is not None,
    }
    idx = [at[r.path] for r in d7]
    y7 = np.array([r.label == "malignant" for r in d7], dtype=int)
    out["derm7pt"] = evaluate_set(y7, prob_all[idx], model.threshold)
    groups = [r.group or r.path for r in d7]
    feats = None if feat_all is None else feat_all[idx]
    out["derm7pt_adapted"] = adapted_derm7pt(feats, prob_all[idx], y7, groups)
    out["sources"] = {}
    for set_name, rows in sets.items():
        unseen = [r for r, s in rows if not is_seen(r, s, keys)]
        ii = [at[r.path] for r in unseen]
        y = np.array([r.label == "malignant" for r in unseen], dtype=int)
        row = evaluate_set(y, prob_all[ii], model.threshold)
        row["left_out_seen"] = len(rows) - len(unseen)
        out["sources"][set_name] = row
    out["verdict"] = verdict(out)
    return out


def verdict(res: dict[str, Any]) -> dict[str, Any]:
    """Whether the per-source floors hold, which fail, the Derm7pt targets met, and the score
    that ranks those that hold up (mean of Derm7pt AUC as shipped and adapted)."""
    failed = []
    for src, floor in FLOORS.items():
        row = res["sources"].get(src, {})
        auc, pos = row.get("auc"), row.get("positives", MIN_POSITIVES)
        if auc is not None and pos < MIN_POSITIVES:
            failed.append(f"{src} not measurable ({pos} malignant test images unseen)")
        elif auc is None or auc < floor:
            failed.append(f"{src} {'n/a' if auc is None else f'{auc:.3f}'} < {floor}")
    d7, ad = res["derm7pt"], res["derm7pt_adapted"]
    targets = {
        "auc": d7["auc"] >= DERM7PT_TARGETS["auc"],
        "sensitivity": d7["sensitivity"] >= DERM7PT_TARGETS["sensitivity"],
        "specificity": d7["specificity"] >= DERM7PT_TARGETS["specificity"],
    }
    score = d7["auc"] if ad.get("auc") is None else (d7["auc"] + ad["auc"]) / 2
    return {"holds_up": not failed, "failed": failed, "derm7pt_targets": targets, "score": score}


# --- reports --------------------------------------------------------------------------------------


def _fmt(row: dict[str, Any], key: str = "auc") -> str:
    """A figure with its CI, or n/a."""
    v = row.get(key)
    if v is None:
        return "n/a"
    ci = row.get(f"{key}_ci95")
    return f"{v:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{v:.3f}"


def markdown(results: list[dict[str, Any]], incumbent: str = INCUMBENT) -> str:
    """The ship-rule table: one column per candidate, and the choice."""
    names = [r["model"] for r in results]
    head = f"| figure | {' | '.join(names)} |\n|---|{'---|' * len(names)}"
    lines = [head]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | {' | '.join(cells)} |")

    row("card threshold", [f"{r['threshold']:.4f}" for r in results])
    row("Derm7pt AUC (external, 1003)", [_fmt(r["derm7pt"]) for r in results])
    row("Derm7pt sensitivity @card", [_fmt(r["derm7pt"], "sensitivity") for r in results])
    row("Derm7pt specificity @card", [_fmt(r["derm7pt"], "specificity") for r in results])
    row(
        "Derm7pt adapted AUC (half -> half, mean of 5)",
        [_adapted(r["derm7pt_adapted"]) for r in results],
    )
    row(
        "  same halves, as shipped",
        [_opt(r["derm7pt_adapted"].get("shipped_auc")) for r in results],
    )
    row(
        "  adapted sens / spec @its threshold",
        [
            "n/a"
            if r["derm7pt_adapted"].get("auc") is None
            else f"{r['derm7pt_adapted']['sensitivity']:.3f} / "
            f"{r['derm7pt_adapted']['specificity']:.3f}"
            for r in results
        ],
    )
    sources = sorted({s for r in results for s in r["sources"]})
    for s in sources:
        label = f"test {s}" + (f" (floor {FLOORS[s]})" if s in FLOORS else "")
        row(label, [_source_cell(r["sources"].get(s)) for r in results])
    row("holds up (floors)", ["yes" if r["verdict"]["holds_up"] else "no" for r in results])
    row("score (Derm7pt shipped+adapted)/2", [f"{r['verdict']['score']:.3f}" for r in results])
    best = choose(results, incumbent)
    lines += [
        "",
        "Each source's test split is the all-source manifest's; n = images scored (malignant), "
        "minus those of lesions or photos the model trained on (its training manifest's train and "
        "val), shown as 'seen'. HAM10000 sub-sources: vidir_molemax has no malignant test image "
        "(AUC n/a).",
        "",
        f"Choice by the rule: **{best}**" if best else "No candidate holds up on the floors.",
    ]
    inc = next((r for r in results if r["model"] == incumbent), None)
    if inc and not any(r["verdict"]["holds_up"] for r in results):
        lines.append(
            f"None holds up, so a candidate replaces the shipped `{incumbent}` only if it improves on it "
            "on every figure (score, each floor source, Derm7pt specificity at sensitivity >= 0.90):"
        )
        for r in results:
            if r is not inc:
                why = improves_on(r, inc)
                lines.append(
                    f"- {r['model']}: "
                    + ("improves on every figure" if not why else "no: " + ", ".join(why))
                )
    for r in results:
        if r["verdict"]["failed"]:
            lines.append(f"- {r['model']}: fails the floors: {', '.join(r['verdict']['failed'])}")
        if not r["overlap_checked"]:
            lines.append(f"- {r['model']}: its training data is unknown; overlap not checked")
    return "\n".join(lines) + "\n"


def _opt(v: float | None) -> str:
    """A number to 3 places, or n/a."""
    return "n/a" if v is None else f"{v:.3f}"


def _adapted(a: dict[str, Any]) -> str:
    """The adapted AUC with its spread over the halvings."""
    return "n/a" if a.get("auc") is None else f"{a['auc']:.3f} ± {a['auc_sd']:.3f}"


def _source_cell(row: dict[str, Any] | None) -> str:
    """A test split's AUC with CI, its size and how many seen images were left out."""
    if row is None:
        return "-"
    seen = f", {row['left_out_seen']} seen" if row.get("left_out_seen") else ""
    return f"{_fmt(row)} n={row['n']} ({row['positives']}){seen}"


def improves_on(cand: dict[str, Any], inc: dict[str, Any]) -> list[str]:
    """Why `cand` is not better than the shipped model `inc` on every figure of the rule (empty:
    it is): a higher score, every floor source's AUC at least as high (where both are measured on
    >= MIN_POSITIVES unseen malignant images), Derm7pt specificity at the card threshold at least
    as high with sensitivity >= the target."""
    why = []
    if cand["verdict"]["score"] <= inc["verdict"]["score"]:
        why.append(f"score {cand['verdict']['score']:.3f} <= {inc['verdict']['score']:.3f}")
    for src in FLOORS:
        a, b = cand["sources"].get(src, {}), inc["sources"].get(src, {})
        measured = [
            r.get("auc") is not None and r.get("positives", 0) >= MIN_POSITIVES for r in (a, b)
        ]
        if all(measured) and a["auc"] < b["auc"]:
            why.append(f"{src} {a['auc']:.3f} < {b['auc']:.3f}")
    d7, d7_inc = cand["derm7pt"], inc["derm7pt"]
    if d7["sensitivity"] < DERM7PT_TARGETS["sensitivity"]:
        why.append(
            f"Derm7pt sensitivity {d7['sensitivity']:.3f} < {DERM7PT_TARGETS['sensitivity']}"
        )
    if d7["specificity"] < d7_inc["specificity"]:
        why.append(f"Derm7pt specificity {d7['specificity']:.3f} < {d7_inc['specificity']:.3f}")
    return why


def choose(results: list[dict[str, Any]], incumbent: str = INCUMBENT) -> str | None:
    """The candidate the rule ships: best score among those that hold up; when none does, the
    best-scoring one that improves on the shipped model on every figure (`improves_on`), so a
    better model is not held back by floors the shipped one misses too."""
    ok = [r for r in results if r["verdict"]["holds_up"]]
    if not ok:
        inc = next((r for r in results if r["model"] == incumbent), None)
        ok = [r for r in results if inc and r is not inc and not improves_on(r, inc)]
    return max(ok, key=lambda r: r["verdict"]["score"])["model"] if ok else None


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """AUC with 95% CI per set and candidate (Derm7pt shipped and adapted first)."""
    sets = ["derm7pt", "derm7pt adapted"] + sorted({s for r in results for s in r["sources"]})
    fig = new_figure((max(6.0, 0.7 * len(sets) * len(results)), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / len(results)
    for k, r in enumerate(results):
        vals, errs = [], [[], []]
        for s in sets:
            row = (
                r["derm7pt"]
                if s == "derm7pt"
                else r["derm7pt_adapted"]
                if s == "derm7pt adapted"
                else r["sources"].get(s, {})
            )
            v = row.get("auc")
            ci = row.get("auc_ci95") or [v, v]
            vals.append(np.nan if v is None else v)
            errs[0].append(0 if v is None else v - ci[0])
            errs[1].append(0 if v is None else ci[1] - v)
        xs = np.arange(len(sets)) + k * width
        ax.bar(xs, vals, width, yerr=errs, capsize=2, label=r["model"])
    for s, floor in FLOORS.items():
        if s in sets:
            i = sets.index(s)
            ax.hlines(floor, i - 0.1, i + 0.9, colors="k", linestyles="dashed", linewidth=1)
    ax.set_xticks(np.arange(len(sets)) + 0.4 - width / 2)
    ax.set_xticklabels(sets, rotation=35, ha="right", fontsize=7)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("ROC AUC (95% CI); dashed: floor")
    ax.legend(fontsize=7)
    save_png(fig, path)


def _named(values: list[str]) -> dict[str, str]:
    """NAME=PATH pairs (a bare PATH is named by its file stem)."""
    out = {}
    for v in values:
        name, _, path = v.rpartition("=")
        out[name or Path(path).stem] = path
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="[NAME=]PATH.tflite")
    ap.add_argument("--manifest", required=True, help="the all-source manifest (test splits)")
    ap.add_argument("--derm7pt", default=str(data_root() / "derm7pt"))
    ap.add_argument(
        "--train-manifest",
        action="append",
        default=[],
        help="NAME=MANIFEST: the candidate's training manifest (its lesions left out of tests)",
    )
    ap.add_argument("--out", default="benchmarks/results/ship_rule", help="path prefix")
    ap.add_argument(
        "--incumbent",
        default=INCUMBENT,
        help="the --model NAME of the shipped model the candidates must improve on [default]",
    )
    args = ap.parse_args()
    models, trained = _named(args.model), _named(args.train_manifest)
    try:
        results = [
            judge(n, p, args.manifest, Path(args.derm7pt), trained.get(n))
            for n, p in models.items()
        ]
    except (ManifestError, OSError, ValueError) as e:
        sys.exit(f"ship_rule: {str(e).splitlines()[0]}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"floors": FLOORS, "derm7pt_targets": DERM7PT_TARGETS, "candidates": results}
    report["choice"] = choose(results, args.incumbent)
    atomic_write_text(out.with_suffix(".json"), json.dumps(clean_json(report), indent=2))
    atomic_write_text(out.with_suffix(".md"), markdown(results, args.incumbent))
    plot(results, out.with_suffix(".png"))
    print(markdown(results, args.incumbent))


if __name__ == "__main__":
    main()

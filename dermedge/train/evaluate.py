"""Binary screening metrics, bootstrap confidence intervals, threshold choice and plots.

TensorFlow-free on purpose (numpy, scikit-learn, matplotlib): the converter and the benchmark call
`binary_metrics`, `bootstrap_ci`, `choose_threshold` and `evaluate_predictions` on the outputs of
TFLite models. The positive class is "malignant" (label 1); `prob` is P(malignant) and the
decision rule is `prob >= threshold` -> refer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dermedge.data.io import atomic_write_text
from dermedge.plotting import new_figure, save_png

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")
_LABELS = {"benign": 0, "malignant": 1}


def _arrays(y_true: Sequence[Any], prob: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(
        [_LABELS.get(v, v) if isinstance(v, str) else v for v in y_true], dtype=np.int64
    ).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 or 'benign'/'malignant'")
    if not np.isfinite(p).all():
        raise ValueError("probabilities contain NaN or inf")
    return y, p


def roc_auc(y_true: Sequence[Any], prob: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN with a single class."""
    y, p = _arrays(y_true, prob)
    return _auc(y, p)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sp = p[order]
    ranks = np.empty(p.size, dtype=np.float64)
    # average ranks over ties
    _, first, counts = np.unique(sp, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def confusion(y_true: Sequence[Any], prob: Sequence[float], threshold: float) -> dict[str, int]:
    """tp, fp, tn, fn for the rule prob >= threshold -> malignant."""
    y, p = _arrays(y_true, prob)
    pred = p >= threshold
    return {"tp": int((pred & (y == 1)).sum()), "fp": int((pred & (y == 0)).sum()),
            "tn": int((~pred & (y == 0)).sum()), "fn": int((~pred & (y == 1)).sum())}  # fmt: skip


def _from_counts(tp: float, fp: float, tn: float, fn: float) -> dict[str, float]:
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    return {"accuracy": _safe_div(tp + tn, tp + tn + fp + fn), "precision": precision,
            "recall": recall, "sensitivity": recall, "specificity": _safe_div(tn, tn + fp),
            "f1": f1}  # fmt: skip


def binary_metrics(
    y_true: Sequence[Any], prob: Sequence[float], threshold: float = 0.5
) -> dict[str, Any]:
    """Accuracy, precision, recall (= sensitivity), specificity, F1, ROC AUC and counts.

    `y_true` holds 0/1 (or "benign"/"malignant"), `prob` P(malignant); a case is called
    malignant when prob >= threshold. Undefined ratios (no positives...) are NaN.
    """
    y, p = _arrays(y_true, prob)
    c = confusion(y, p, threshold)
    out: dict[str, Any] = {"threshold": float(threshold), "n": int(y.size),
                           "positives": int(y.sum()), "negatives": int(y.size - y.sum())}  # fmt: skip
    out.update(_from_counts(c["tp"], c["fp"], c["tn"], c["fn"]))
    out["roc_auc"] = _auc(y, p)
    out.update(c)
    return out


def bootstrap_ci(
    y_true: Sequence[Any],
    prob: Sequence[float],
    threshold: float = 0.5,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    metrics: Sequence[str] = METRICS,
    stratified: bool = True,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap (1 - alpha) confidence intervals of `metrics` at `threshold`.

    Resamples cases with replacement (within each class when `stratified`, so every resample has
    both classes); the same resamples serve every metric. Returns {metric: (low, high)}.
    """
    y, p = _arrays(y_true, prob)
    if y.size == 0:
        return {m: (float("nan"), float("nan")) for m in metrics}
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    pred = p >= threshold
    values: dict[str, list[float]] = {m: [] for m in metrics}
    for _ in range(int(n_boot)):
        if stratified and pos.size and neg.size:
            idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        else:
            idx = rng.integers(0, y.size, y.size)
        yb, pb, db = y[idx], p[idx], pred[idx]
        tp = float((db & (yb == 1)).sum())
        fp = float((db & (yb == 0)).sum())
        fn = float((~db & (yb == 1)).sum())
        tn = float(yb.size) - tp - fp - fn
        m = _from_counts(tp, fp, tn, fn)
        if "roc_auc" in values:
            m["roc_auc"] = _auc(yb, pb)
        for k in metrics:
            values[k].append(m[k])
    out = {}
    for k, v in values.items():
        arr = np.asarray(v, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            out[k] = (float("nan"), float("nan"))
        else:
            lo, hi = np.quantile(arr, [alpha / 2, 1 - alpha / 2])
            out[k] = (float(lo), float(hi))
    return out


def choose_threshold(y_true: Sequence[Any], prob: Sequence[float], target_sensitivity: float = 0.95,
                     margin_se: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """The highest threshold whose sensitivity on these cases is >= the target.

    `margin_se` raises the target by that many binomial standard errors of a sensitivity
    estimated on this many positives (sqrt(t(1-t)/n_pos)), so that the threshold still meets the
    target on new cases more often than half the time. Choose it on the validation split, never
    on the test split. Returns the threshold and what it achieves on these cases.
    """
    y, p = _arrays(y_true, prob)
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target sensitivity {target_sensitivity} not in (0, 1]")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError(
            "cannot choose a threshold for a sensitivity target without positive cases"
        )
    t = float(target_sensitivity)
    goal = min(1.0, t + margin_se * math.sqrt(t * (1 - t) / n_pos))
    need = math.ceil(goal * n_pos - 1e-9)  # positives that must score >= threshold
    pos_scores = np.sort(p[y == 1])[::-1]
    thr = float(pos_scores[max(need, 1) - 1])
    achieved = binary_metrics(y, p, thr)
    return {"threshold": thr, "target_sensitivity": t, "margin_se": float(margin_se),
            "effective_target": goal, "sensitivity": achieved["recall"],
            "specificity": achieved["specificity"], "n_pos": n_pos, "n": int(y.size)}  # fmt: skip


MIN_SOURCE_POSITIVES = 20  # fewer malignant val images than this: a source is reported, not binding


def choose_threshold_across_sources(y_true: Sequence[Any], prob: Sequence[float],
                                    sources: Sequence[str] | None, target_sensitivity: float = 0.95,
                                    margin_se: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """A threshold that meets the sensitivity target in every validation source, not only pooled.

    The pooled threshold keeps its margin of `margin_se` standard errors; each source with at
    least MIN_SOURCE_POSITIVES malignant images gets its own threshold for the point target (a
    margin on a source of 27 positives would demand every one of them, i.e. the single lowest
    score); the lowest of these is used, so the source where the model scores malignant lesions
    lowest (a device it knows least) still meets the target. With one source, or `sources`
    None, this is `choose_threshold` on the pool.
    """
    y, p = _arrays(y_true, prob)
    pooled = choose_threshold(y, p, target_sensitivity, margin_se)
    names = sorted(set(sources)) if sources is not None else []
    if len(names) < 2:
        return {**pooled, "pool": "pooled"}
    src = np.asarray(sources)
    own: dict[str, float | None] = {}
    for name in names:
        m = src == name
        n_pos = int(y[m].sum())
        own[name] = (choose_threshold(y[m], p[m], target_sensitivity, 0.0)["threshold"]
                     if n_pos >= MIN_SOURCE_POSITIVES else None)  # fmt: skip
    binding = [n for n in names if own[n] is not None]
    if not binding:
        return {**pooled, "pool": "pooled"}
    worst = min(binding, key=lambda n: own[n])  # type: ignore[arg-type, return-value]
    thr = min(float(own[worst]), pooled["threshold"])  # type: ignore[arg-type]
    achieved = binary_metrics(y, p, thr)
    per_source = {}
    for name in names:
        m = src == name
        at = binary_metrics(y[m], p[m], thr)
        per_source[name] = {"n": int(m.sum()), "n_pos": int(y[m].sum()), "own_threshold": own[name],
                            "sensitivity": at["recall"], "specificity": at["specificity"]}  # fmt: skip
    return {**pooled, "threshold": thr, "sensitivity": achieved["recall"],
            "specificity": achieved["specificity"], "pool": "worst-source",
            "binding_source": worst if thr < pooled["threshold"] else "pooled",
            "per_source": per_source}  # fmt: skip


def per_source_metrics(y_true: Sequence[Any], prob: Sequence[float], sources: Sequence[str],
                       threshold: float) -> dict[str, dict[str, Any]]:  # fmt: skip
    """AUC, sensitivity and specificity of each source at one threshold (no CIs: a quick view)."""
    y, p = _arrays(y_true, prob)
    src = np.asarray(sources)
    out = {}
    for name in sorted(set(sources)):
        m = src == name
        at = binary_metrics(y[m], p[m], threshold)
        auc = roc_auc(y[m], p[m]) if 0 < y[m].sum() < m.sum() else float("nan")
        out[name] = {"n": int(m.sum()), "positives": int(y[m].sum()), "roc_auc": auc,
                     "recall": at["recall"], "specificity": at["specificity"]}  # fmt: skip
    return out


def calibration(y_true: Sequence[Any], prob: Sequence[float], n_bins: int = 10) -> dict[str, Any]:
    """Reliability-diagram bins (equal width on [0, 1]) and the expected calibration error."""
    y, p = _arrays(y_true, prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        conf = float(p[mask].mean()) if n else float("nan")
        freq = float(y[mask].mean()) if n else float("nan")
        if n:
            ece += n / max(1, y.size) * abs(freq - conf)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": n,
                     "mean_prob": conf, "frac_malignant": freq})  # fmt: skip
    brier = float(np.mean((p - y) ** 2)) if y.size else float("nan")
    return {"ece": float(ece), "brier": brier, "n_bins": n_bins, "bins": bins}


def roc_points(
    y_true: Sequence[Any], prob: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of the ROC curve."""
    import warnings

    from sklearn.metrics import roc_curve

    y, p = _arrays(y_true, prob)
    with warnings.catch_warnings():  # one class only: sklearn warns, the curve is degenerate
        warnings.simplefilter("ignore")
        fpr, tpr, thr = roc_curve(y, p)
    return fpr, tpr, thr


# --- plots (matplotlib's object API with the Agg canvas: no pyplot, no global backend) ---------


def plot_confusion(counts: dict[str, int], path: str | Path, title: str = "") -> Path:
    """Confusion matrix (rows true, columns predicted) with counts and row percentages."""
    fig = new_figure((4.6, 4.0))
    ax = fig.add_subplot(111)
    m = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=float)
    ax.imshow(m, cmap="Blues")
    rows = m.sum(axis=1, keepdims=True)
    for i in range(2):
        for j in range(2):
            pct = 100 * m[i, j] / rows[i, 0] if rows[i, 0] else 0
            ax.text(j, i, f"{int(m[i, j])}\n{pct:.1f}%", ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black")  # fmt: skip
    ax.set_xticks([0, 1], ["benign", "malignant"])
    ax.set_yticks([0, 1], ["benign", "malignant"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    return save_png(fig, Path(path))


def plot_roc(y_true: Sequence[Any], prob: Sequence[float], path: str | Path,
             operating: dict[str, float] | None = None, title: str = "") -> Path:  # fmt: skip
    """ROC curve with its AUC, the operating threshold's point and the 0.5 point marked."""
    y, p = _arrays(y_true, prob)
    fig = new_figure()
    ax = fig.add_subplot(111)
    fpr, tpr, _ = roc_points(y, p)
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC {_auc(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    for thr, style, name in (
        (0.5, "s", "0.5"),
        ((operating or {}).get("threshold"), "o", "operating"),
    ):
        if thr is None:
            continue
        m = binary_metrics(y, p, thr)
        ax.plot(1 - m["specificity"], m["recall"], style, ms=9,
                label=f"{name} t={thr:.3f}: sens {m['recall']:.3f}, spec {m['specificity']:.3f}")  # fmt: skip
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title or "ROC")
    return save_png(fig, Path(path))


def plot_pr(y_true: Sequence[Any], prob: Sequence[float], path: str | Path,
            operating: dict[str, float] | None = None, title: str = "") -> Path:  # fmt: skip
    """Precision-recall curve with average precision and the operating point."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, p = _arrays(y_true, prob)
    fig = new_figure()
    ax = fig.add_subplot(111)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prec, rec, _ = precision_recall_curve(y, p)
        ap = average_precision_score(y, p) if y.sum() else float("nan")
    ax.plot(rec, prec, lw=2, label=f"PR (AP {ap:.3f})")
    ax.axhline(y.mean() if y.size else 0, ls="--", c="grey", lw=1, label="prevalence")
    if operating and operating.get("threshold") is not None:
        m = binary_metrics(y, p, operating["threshold"])
        ax.plot(m["recall"], m["precision"], "o", ms=9,
                label=f"operating t={operating['threshold']:.3f}")  # fmt: skip
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title(title or "precision-recall")
    return save_png(fig, Path(path))


def plot_reliability(cal: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Reliability diagram: observed malignant fraction vs mean predicted probability per bin."""
    fig = new_figure()
    ax = fig.add_subplot(111)
    bins = [b for b in cal["bins"] if b["n"]]
    width = 1.0 / cal["n_bins"]
    ax.bar([b["low"] for b in bins], [b["frac_malignant"] for b in bins], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="observed")  # fmt: skip
    ax.plot([b["mean_prob"] for b in bins], [b["frac_malignant"] for b in bins], "o-", c="C1",
            label="bin mean prob")  # fmt: skip
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect")
    ax.set_xlabel("predicted P(malignant)")
    ax.set_ylabel("fraction malignant")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title(title or f"reliability (ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f})")
    return save_png(fig, Path(path))


def plot_history(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Training curves (loss and AUC, train and validation) from history rows."""
    fig = new_figure((9.0, 3.8))
    ep = [int(r["epoch"]) for r in history]
    for i, key in enumerate(("loss", "auc")):
        ax = fig.add_subplot(1, 2, i + 1)
        for prefix, style in (("", "-"), ("val_", "--")):
            vals = [float(r[prefix + key]) if r.get(prefix + key) not in (None, "") else np.nan
                    for r in history]  # fmt: skip
            ax.plot(ep, vals, style, marker=".", label=(prefix or "train_") + key)
        phases = [r.get("phase") for r in history]
        for j in range(1, len(phases)):
            if phases[j] != phases[j - 1]:
                ax.axvline(ep[j] - 0.5, c="grey", ls=":", lw=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    return save_png(fig, Path(path))


# --- the whole report ---------------------------------------------------------------------------


def _clean(v: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def evaluate_predictions(
    y_true: Sequence[Any],
    prob: Sequence[float],
    threshold: float,
    out_dir: str | Path | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    title: str = "",
    extra: dict[str, Any] | None = None,
    paths: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics with bootstrap CIs at `threshold` and at 0.5, calibration, and (with `out_dir`)
    `metrics.json`, `predictions.csv`, and confusion/ROC/PR/reliability PNGs written there."""
    y, p = _arrays(y_true, prob)
    report: dict[str, Any] = {"n": int(y.size), "positives": int(y.sum()),
                              "negatives": int(y.size - y.sum()), "operating_threshold": float(threshold)}  # fmt: skip
    for key, thr in (("operating", float(threshold)), ("at_0.5", 0.5)):
        m = binary_metrics(y, p, thr)
        ci = bootstrap_ci(y, p, thr, n_boot=n_boot, seed=seed)
        m["ci95"] = {k: list(v) for k, v in ci.items()}
        report[key] = m
    report["roc_auc"] = report["operating"]["roc_auc"]
    report["roc_auc_ci95"] = report["operating"]["ci95"]["roc_auc"]
    report["calibration"] = calibration(y, p)
    report["ece"] = report["calibration"]["ece"]
    report["bootstrap"] = {
        "n_boot": int(n_boot),
        "seed": int(seed),
        "method": "percentile, stratified",
    }
    if extra:
        report.update(extra)
    report = _clean(report)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        op = {"threshold": float(threshold)}
        plots = {
            "confusion_matrix": plot_confusion(
                confusion(y, p, threshold),
                out / "confusion_matrix.png",
                f"{title} confusion at t={threshold:.3f}".strip(),
            ),  # fmt: skip
            "roc": plot_roc(y, p, out / "roc.png", op, f"{title} ROC".strip()),
            "pr": plot_pr(y, p, out / "pr.png", op, f"{title} precision-recall".strip()),
            "reliability": plot_reliability(report["calibration"], out / "reliability.png"),
        }
        report["plots"] = {k: v.name for k, v in plots.items()}
        if paths is not None:
            lines = ["path,label,prob_malignant"]
            lines += [
                f"{q},{'malignant' if t else 'benign'},{v:.6f}"
                for q, t, v in zip(paths, y, p, strict=True)
            ]
            atomic_write_text(out / "predictions.csv", "\n".join(lines) + "\n")
        atomic_write_text(out / "metrics.json", json.dumps(report, indent=2))
    return report


def _fmt_ci(v: float | None, ci: Sequence[float | None] | None) -> str:
    if v is None:
        return "n/a"
    if not ci or ci[0] is None:
        return f"{v:.4f}"
    return f"{v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def report_table(report: dict[str, Any]) -> str:
    """The printed table: each metric with its 95% CI, at the operating threshold and at 0.5."""
    from dermedge.runs import format_table

    op, half = report["operating"], report["at_0.5"]
    rows = []
    for k in METRICS:
        label = "recall (sensitivity)" if k == "recall" else k
        rows.append(
            [
                label,
                _fmt_ci(op.get(k), op["ci95"].get(k)),
                _fmt_ci(half.get(k), half["ci95"].get(k)),
            ]
        )
    rows.append(["tp / fp / tn / fn", f"{op['tp']} / {op['fp']} / {op['tn']} / {op['fn']}",
                 f"{half['tp']} / {half['fp']} / {half['tn']} / {half['fn']}"])  # fmt: skip
    rows.append(["ECE / Brier", f"{report['ece']:.4f} / {report['calibration']['brier']:.4f}", ""])
    headers = ["metric (95% CI)", f"operating t={op['threshold']:.4f}", "t=0.5"]
    return format_table(rows, headers)


def summarize(report: dict[str, Any], keys: Sequence[str] = METRICS) -> dict[str, Any]:
    """A compact {metric: value, metric_ci95: [lo, hi]} view of one report's operating point."""
    op = report["operating"]
    out: dict[str, Any] = {"threshold": op["threshold"], "n": report["n"]}
    for k in keys:
        out[k] = op.get(k)
        out[f"{k}_ci95"] = op["ci95"].get(k)
    out["accuracy_at_0.5"] = report["at_0.5"]["accuracy"]
    out["ece"] = report["ece"]
    return out


# --- operating points and group rates (external evaluation) ------------------------------------


def wilson_ci(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (NaN for n = 0); sound for small groups."""
    if n <= 0:
        return float("nan"), float("nan")
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    return lo, 1.0 if k == n else min(1.0, centre + half)


def youden_threshold(y_true: Sequence[Any], prob: Sequence[float]) -> float:
    """The threshold maximising sensitivity + specificity - 1 on these cases (NaN: one class)."""
    y, p = _arrays(y_true, prob)
    if y.sum() == 0 or y.sum() == y.size:
        return float("nan")
    fpr, tpr, thr = roc_points(y, p)
    finite = np.isfinite(thr)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thr[int(np.argmax(j))])


def plot_roc_marked(y_true: Sequence[Any], prob: Sequence[float], path: str | Path,
                    marks: Sequence[tuple[str, float]], title: str = "") -> Path:  # fmt: skip
    """ROC curve with its AUC and each named threshold's (1 - spec, sens) point marked."""
    y, p = _arrays(y_true, prob)
    fig = new_figure()
    ax = fig.add_subplot(111)
    fpr, tpr, _ = roc_points(y, p)
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC {_auc(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    for (name, thr), style in zip(marks, ("o", "s", "^", "D", "v"), strict=False):
        if thr is None or not math.isfinite(thr):
            continue
        m = binary_metrics(y, p, thr)
        ax.plot(1 - m["specificity"], m["recall"], style, ms=9,
                label=f"{name} t={thr:.3f}: sens {m['recall']:.3f}, spec {m['specificity']:.3f}")  # fmt: skip
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title or "ROC")
    return save_png(fig, Path(path))


def group_referral_rates(groups: Sequence[str], labels: Sequence[Any], prob: Sequence[float],
                         threshold: float) -> list[dict[str, Any]]:  # fmt: skip
    """Per group (e.g. diagnosis): n, label, referred count/fraction at `threshold`, Wilson CI."""
    y, p = _arrays(labels, prob)
    g = np.asarray(list(groups), dtype=object)
    rows = []
    for name in sorted(set(g.tolist()), key=lambda s: (-int((g == s).sum()), str(s))):
        m = g == name
        n, k = int(m.sum()), int((p[m] >= threshold).sum())
        pos = int(y[m].sum())
        label = "malignant" if pos == n else "benign" if pos == 0 else "mixed"
        rows.append({"group": str(name), "label": label, "n": n, "referred": k,
                     "referred_fraction": k / n, "ci95": list(wilson_ci(k, n))})  # fmt: skip
    return rows


def plot_referral_rates(rows: Sequence[dict[str, Any]], path: str | Path, threshold: float,
                        title: str = "") -> Path:  # fmt: skip
    """Horizontal bars: the referred fraction of each group (Wilson 95% CI), red = malignant."""
    fig = new_figure((6.4, max(2.5, 0.34 * len(rows) + 1.2)))
    ax = fig.add_subplot(111)
    colours = {"malignant": "#c0392b", "benign": "#2e86c1", "mixed": "#7f8c8d"}
    pos = np.arange(len(rows))[::-1]
    frac = [r["referred_fraction"] for r in rows]
    err = np.array([[f - r["ci95"][0] for f, r in zip(frac, rows, strict=True)],
                    [r["ci95"][1] - f for f, r in zip(frac, rows, strict=True)]])  # fmt: skip
    err = np.clip(err, 0.0, None)  # rounding at 0 % / 100 %
    ax.barh(pos, frac, xerr=err, color=[colours[r["label"]] for r in rows], alpha=0.85,
            error_kw={"lw": 1, "capsize": 2})  # fmt: skip
    ax.set_yticks(pos, [f"{r['group']} (n={r['n']})" for r in rows], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"referred fraction at t={threshold:.3f} (red: malignant, blue: benign)")
    ax.set_title(title or "referral rate per diagnosis")
    return save_png(fig, Path(path))

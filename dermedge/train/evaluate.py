"""The evaluation report and its plots: metrics with CIs, calibration, ROC/PR/confusion PNGs.

TensorFlow-free (numpy, scikit-learn, matplotlib); the numbers themselves live in
`dermedge.metrics` (numpy only) and are re-exported here. The positive class is "malignant" (label 1); `prob` is P(malignant) and the
decision rule is `prob >= threshold` -> refer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from dermedge.data.io import atomic_write_text
from dermedge.metrics import (  # noqa: F401  (re-exported: this module's public API)
    METRICS,
    MIN_SOURCE_POSITIVES,
    binary_metrics,
    bootstrap_ci,
    calibration,
    choose_threshold,
    choose_threshold_across_sources,
    clean_json,
    confusion,
    label_arrays,
    per_source_metrics,
    roc_auc,
    threshold_for_policy,
    wilson_ci,
)
from dermedge.plotting import new_figure, save_png


def roc_points(y_true: ArrayLike, prob: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of the ROC curve."""
    import warnings

    from sklearn.metrics import roc_curve

    y, p = label_arrays(y_true, prob)
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
            ax.text(
                j,
                i,
                f"{int(m[i, j])}\n{pct:.1f}%",
                ha="center",
                va="center",
                color="white" if m[i, j] > m.max() / 2 else "black",
            )
    ax.set_xticks([0, 1], ["benign", "malignant"])
    ax.set_yticks([0, 1], ["benign", "malignant"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    return save_png(fig, Path(path))


def plot_roc(
    y_true: ArrayLike,
    prob: ArrayLike,
    path: str | Path,
    operating: dict[str, float] | None = None,
    title: str = "",
) -> Path:
    """ROC curve with its AUC, the operating threshold's point and the 0.5 point marked."""
    marks = [("0.5", 0.5), ("operating", (operating or {}).get("threshold"))]
    return plot_roc_marked(y_true, prob, path, marks, title, styles=("s", "o"))


def plot_pr(
    y_true: ArrayLike,
    prob: ArrayLike,
    path: str | Path,
    operating: dict[str, float] | None = None,
    title: str = "",
) -> Path:
    """Precision-recall curve with average precision and the operating point."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, p = label_arrays(y_true, prob)
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
        ax.plot(
            m["recall"],
            m["precision"],
            "o",
            ms=9,
            label=f"operating t={operating['threshold']:.3f}",
        )
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
    ax.bar(
        [b["low"] for b in bins],
        [b["frac_malignant"] for b in bins],
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="observed",
    )
    ax.plot(
        [b["mean_prob"] for b in bins],
        [b["frac_malignant"] for b in bins],
        "o-",
        c="C1",
        label="bin mean prob",
    )
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
            vals = [
                float(r[prefix + key]) if r.get(prefix + key) not in (None, "") else np.nan
                for r in history
            ]
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


def evaluate_predictions(
    y_true: ArrayLike,
    prob: ArrayLike,
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
    y, p = label_arrays(y_true, prob)
    report = _metrics_report(y, p, threshold, n_boot, seed)
    if extra:
        report.update(extra)
    report = clean_json(report)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plots = _report_plots(y, p, threshold, report["calibration"], out, title)
        report["plots"] = {k: v.name for k, v in plots.items()}
        if paths is not None:
            atomic_write_text(out / "predictions.csv", _predictions_csv(paths, y, p))
        atomic_write_text(out / "metrics.json", json.dumps(report, indent=2))
    return report


def _metrics_report(
    y: np.ndarray, p: np.ndarray, threshold: float, n_boot: int, seed: int
) -> dict[str, Any]:
    """Counts, metrics with bootstrap CIs at `threshold` and at 0.5, and calibration."""
    report: dict[str, Any] = {
        "n": int(y.size),
        "positives": int(y.sum()),
        "negatives": int(y.size - y.sum()),
        "operating_threshold": float(threshold),
    }
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
    return report


def _report_plots(
    y: np.ndarray, p: np.ndarray, threshold: float, cal: dict[str, Any], out: Path, title: str
) -> dict[str, Path]:
    """The confusion, ROC, PR and reliability PNGs of the report, written under `out`."""
    op = {"threshold": float(threshold)}
    return {
        "confusion_matrix": plot_confusion(
            confusion(y, p, threshold),
            out / "confusion_matrix.png",
            f"{title} confusion at t={threshold:.3f}".strip(),
        ),
        "roc": plot_roc(y, p, out / "roc.png", op, f"{title} ROC".strip()),
        "pr": plot_pr(y, p, out / "pr.png", op, f"{title} precision-recall".strip()),
        "reliability": plot_reliability(cal, out / "reliability.png"),
    }


def _predictions_csv(paths: Sequence[str], y: np.ndarray, p: np.ndarray) -> str:
    """predictions.csv: each image's path, true label and P(malignant)."""
    lines = ["path,label,prob_malignant"]
    lines += [
        f"{q},{'malignant' if t else 'benign'},{v:.6f}" for q, t, v in zip(paths, y, p, strict=True)
    ]
    return "\n".join(lines) + "\n"


def _fmt_ci(v: float | None, ci: Sequence[float | None] | None) -> str:
    """`v [lo, hi]` with 4 decimals, `v` alone without a CI, or n/a for None."""
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
    rows.append(
        [
            "tp / fp / tn / fn",
            f"{op['tp']} / {op['fp']} / {op['tn']} / {op['fn']}",
            f"{half['tp']} / {half['fp']} / {half['tn']} / {half['fn']}",
        ]
    )
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


def youden_threshold(y_true: ArrayLike, prob: ArrayLike) -> float:
    """The threshold maximising sensitivity + specificity - 1 on these cases (NaN: one class)."""
    y, p = label_arrays(y_true, prob)
    if y.sum() == 0 or y.sum() == y.size:
        return float("nan")
    fpr, tpr, thr = roc_points(y, p)
    finite = np.isfinite(thr)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thr[int(np.argmax(j))])


def plot_roc_marked(
    y_true: ArrayLike,
    prob: ArrayLike,
    path: str | Path,
    marks: Sequence[tuple[str, float | None]],
    title: str = "",
    styles: Sequence[str] = ("o", "s", "^", "D", "v"),
) -> Path:
    """ROC curve with its AUC and each named threshold's (1 - spec, sens) point marked."""
    y, p = label_arrays(y_true, prob)
    fig = new_figure()
    ax = fig.add_subplot(111)
    fpr, tpr, _ = roc_points(y, p)
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC {roc_auc(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    for (name, thr), style in zip(marks, styles, strict=False):
        if thr is None or not math.isfinite(thr):
            continue
        m = binary_metrics(y, p, thr)
        ax.plot(
            1 - m["specificity"],
            m["recall"],
            style,
            ms=9,
            label=f"{name} t={thr:.3f}: sens {m['recall']:.3f}, spec {m['specificity']:.3f}",
        )
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title or "ROC")
    return save_png(fig, Path(path))


def group_referral_rates(
    groups: Sequence[str], labels: ArrayLike, prob: ArrayLike, threshold: float
) -> list[dict[str, Any]]:
    """Per group (e.g. diagnosis): n, label, referred count/fraction at `threshold`, Wilson CI."""
    y, p = label_arrays(labels, prob)
    g = np.asarray(list(groups), dtype=object)
    rows = []
    for name in sorted(set(g.tolist()), key=lambda s: (-int((g == s).sum()), str(s))):
        m = g == name
        n, k = int(m.sum()), int((p[m] >= threshold).sum())
        pos = int(y[m].sum())
        label = "malignant" if pos == n else "benign" if pos == 0 else "mixed"
        rows.append(
            {
                "group": str(name),
                "label": label,
                "n": n,
                "referred": k,
                "referred_fraction": k / n,
                "ci95": list(wilson_ci(k, n)),
            }
        )
    return rows


def plot_referral_rates(
    rows: Sequence[dict[str, Any]], path: str | Path, threshold: float, title: str = ""
) -> Path:
    """Horizontal bars: the referred fraction of each group (Wilson 95% CI), red = malignant."""
    fig = new_figure((6.4, max(2.5, 0.34 * len(rows) + 1.2)))
    ax = fig.add_subplot(111)
    colours = {"malignant": "#c0392b", "benign": "#2e86c1", "mixed": "#7f8c8d"}
    pos = np.arange(len(rows))[::-1]
    frac = [r["referred_fraction"] for r in rows]
    err = np.array(
        [
            [f - r["ci95"][0] for f, r in zip(frac, rows, strict=True)],
            [r["ci95"][1] - f for f, r in zip(frac, rows, strict=True)],
        ]
    )
    err = np.clip(err, 0.0, None)  # rounding at 0 % / 100 %
    ax.barh(
        pos,
        frac,
        xerr=err,
        color=[colours[r["label"]] for r in rows],
        alpha=0.85,
        error_kw={"lw": 1, "capsize": 2},
    )
    ax.set_yticks(pos, [f"{r['group']} (n={r['n']})" for r in rows], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"referred fraction at t={threshold:.3f} (red: malignant, blue: benign)")
    ax.set_title(title or "referral rate per diagnosis")
    return save_png(fig, Path(path))

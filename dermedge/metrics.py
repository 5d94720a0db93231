"""Screening metrics on plain numpy: AUC, bootstrap CIs, the threshold policy, calibration.

The one home of the numbers every stage reports, free of TensorFlow, scikit-learn and matplotlib,
so the converter, the benchmark, the trainer and the on-device `dermedge calibrate` share them.
The positive class is "malignant" (label 1); `prob` is P(malignant) and a case is referred when
`prob >= threshold`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")
_LABELS = {"benign": 0, "malignant": 1}


def label_arrays(y_true: ArrayLike, prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Labels as 0/1 int64 and probabilities as float64, checked (same length, finite)."""
    raw = np.asarray(y_true, dtype=object).ravel()
    y = np.asarray([_LABELS.get(v, v) if isinstance(v, str) else v for v in raw], dtype=np.int64)
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 or 'benign'/'malignant'")
    if not np.isfinite(p).all():
        raise ValueError("probabilities contain NaN or inf")
    return y, p


def roc_auc(y_true: ArrayLike, prob: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN with a single class."""
    y, p = label_arrays(y_true, prob)
    return _auc(y, p)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC of checked 0/1 labels and probabilities from average ranks; NaN with one class."""
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
    """a / b, or NaN when b is 0."""
    return float(a / b) if b else float("nan")


def confusion(y_true: ArrayLike, prob: ArrayLike, threshold: float) -> dict[str, int]:
    """tp, fp, tn, fn for the rule prob >= threshold -> malignant."""
    y, p = label_arrays(y_true, prob)
    pred = p >= threshold
    return {
        "tp": int((pred & (y == 1)).sum()),
        "fp": int((pred & (y == 0)).sum()),
        "tn": int((~pred & (y == 0)).sum()),
        "fn": int((~pred & (y == 1)).sum()),
    }


def _from_counts(tp: float, fp: float, tn: float, fn: float) -> dict[str, float]:
    """Accuracy, precision, recall (= sensitivity), specificity and F1 from counts; NaN for 0/0."""
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    return {
        "accuracy": _safe_div(tp + tn, tp + tn + fp + fn),
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "specificity": _safe_div(tn, tn + fp),
        "f1": f1,
    }


def binary_metrics(y_true: ArrayLike, prob: ArrayLike, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, precision, recall (= sensitivity), specificity, F1, ROC AUC and counts.

    `y_true` holds 0/1 (or "benign"/"malignant"), `prob` P(malignant); a case is called
    malignant when prob >= threshold. Undefined ratios (no positives...) are NaN.
    """
    y, p = label_arrays(y_true, prob)
    c = confusion(y, p, threshold)
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "n": int(y.size),
        "positives": int(y.sum()),
        "negatives": int(y.size - y.sum()),
    }
    out.update(_from_counts(c["tp"], c["fp"], c["tn"], c["fn"]))
    out["roc_auc"] = _auc(y, p)
    out.update(c)
    return out


def bootstrap_ci(
    y_true: ArrayLike,
    prob: ArrayLike,
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
    y, p = label_arrays(y_true, prob)
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


def choose_threshold(
    y_true: ArrayLike, prob: ArrayLike, target_sensitivity: float = 0.95, margin_se: float = 0.0
) -> dict[str, Any]:
    """The highest threshold whose sensitivity on these cases is >= the target.

    `margin_se` raises the target by that many binomial standard errors of a sensitivity
    estimated on this many positives (sqrt(t(1-t)/n_pos)), so that the threshold still meets the
    target on new cases more often than half the time. Choose it on the validation split, never
    on the test split. Returns the threshold and what it achieves on these cases.
    """
    y, p = label_arrays(y_true, prob)
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
    return {
        "threshold": thr,
        "target_sensitivity": t,
        "margin_se": float(margin_se),
        "effective_target": goal,
        "sensitivity": achieved["recall"],
        "specificity": achieved["specificity"],
        "n_pos": n_pos,
        "n": int(y.size),
    }


MIN_SOURCE_POSITIVES = 20  # fewer malignant val images than this: a source is reported, not binding
# "pooled-floor": the pooled target (with its margin), and no validation source under this one
SOURCE_FLOOR_SENSITIVITY = 0.90
THRESHOLD_POOLS = ("worst-source", "pooled", "pooled-floor")


def threshold_for_policy(
    y_true: ArrayLike,
    prob: ArrayLike,
    sources: Sequence[str] | None,
    pool: str,
    target_sensitivity: float = 0.95,
    margin_se: float = 0.0,
) -> dict[str, Any]:
    """The threshold a card's policy chooses: `pool` "pooled" (the target on the pooled split),
    "worst-source" (the target in every source) or "pooled-floor" (the pooled target, and at
    least SOURCE_FLOOR_SENSITIVITY in every source: the worst source can no longer drag the
    threshold, and with it every other source's specificity, down to its own lowest scores)."""
    if pool not in THRESHOLD_POOLS:
        raise ValueError(f"unknown threshold pool {pool!r}; expected one of {THRESHOLD_POOLS}")
    if pool == "pooled":
        sources = None
    floor = SOURCE_FLOOR_SENSITIVITY if pool == "pooled-floor" else None
    return choose_threshold_across_sources(
        y_true, prob, sources, target_sensitivity, margin_se, floor
    )


def threshold_for_card_policy(
    y_true: ArrayLike, prob: ArrayLike, sources: Sequence[str] | None, policy: dict[str, Any]
) -> dict[str, Any]:
    """`threshold_for_policy` with a card's `threshold_policy` (pool, target, margin_se); a card
    that names no pool is pooled."""
    return threshold_for_policy(
        y_true,
        prob,
        sources,
        policy.get("pool") or "pooled",
        float(policy["target_sensitivity"]),
        float(policy.get("margin_se", 0.0)),
    )


def choose_threshold_across_sources(
    y_true: ArrayLike,
    prob: ArrayLike,
    sources: Sequence[str] | None,
    target_sensitivity: float = 0.95,
    margin_se: float = 0.0,
    floor: float | None = None,
) -> dict[str, Any]:
    """A threshold that meets the sensitivity target in every validation source, not only pooled
    (or, given `floor`, the pooled target and `floor` in every source: pool "pooled-floor").

    The pooled threshold keeps its margin of `margin_se` standard errors; each source with at
    least MIN_SOURCE_POSITIVES malignant images gets its own threshold for the point target (a
    margin on a source of 27 positives would demand every one of them, i.e. the single lowest
    score); the lowest of these is used, so the source where the model scores malignant lesions
    lowest (a device it knows least) still meets the target. With one source, or `sources`
    None, this is `choose_threshold` on the pool.
    """
    y, p = label_arrays(y_true, prob)
    pooled = choose_threshold(y, p, target_sensitivity, margin_se)
    names = sorted(set(sources)) if sources is not None else []
    if len(names) < 2:
        return {**pooled, "pool": "pooled"}
    src = np.asarray(sources)
    own = _source_thresholds(y, p, src, names, target_sensitivity if floor is None else floor)
    binding = {n: t for n, t in own.items() if t is not None}
    if not binding:
        return {**pooled, "pool": "pooled"}
    worst = min(binding, key=binding.__getitem__)
    thr = min(float(binding[worst]), pooled["threshold"])
    achieved = binary_metrics(y, p, thr)
    per_source = _per_source_at(y, p, src, own, thr)
    return {
        **pooled,
        "threshold": thr,
        "sensitivity": achieved["recall"],
        "specificity": achieved["specificity"],
        "pool": "worst-source" if floor is None else "pooled-floor",
        **({} if floor is None else {"source_floor": float(floor)}),
        "binding_source": worst if thr < pooled["threshold"] else "pooled",
        "per_source": per_source,
    }


def _source_thresholds(
    y: np.ndarray, p: np.ndarray, src: np.ndarray, names: Sequence[str], target: float
) -> dict[str, float | None]:
    """Each source's own threshold for the point target, None where it has too few positives."""
    own: dict[str, float | None] = {}
    for name in names:
        m = src == name
        n_pos = int(y[m].sum())
        own[name] = (
            choose_threshold(y[m], p[m], target, 0.0)["threshold"]
            if n_pos >= MIN_SOURCE_POSITIVES
            else None
        )
    return own


def _per_source_at(
    y: np.ndarray, p: np.ndarray, src: np.ndarray, own: dict[str, float | None], thr: float
) -> dict[str, dict[str, Any]]:
    """Size, own threshold, sensitivity and specificity at `thr` of each source in `own`."""
    per_source = {}
    for name in own:
        m = src == name
        at = binary_metrics(y[m], p[m], thr)
        per_source[name] = {
            "n": int(m.sum()),
            "n_pos": int(y[m].sum()),
            "own_threshold": own[name],
            "sensitivity": at["recall"],
            "specificity": at["specificity"],
        }
    return per_source


def per_source_metrics(
    y_true: ArrayLike, prob: ArrayLike, sources: Sequence[str], threshold: float
) -> dict[str, dict[str, Any]]:
    """AUC, sensitivity and specificity of each source at one threshold (no CIs: a quick view)."""
    y, p = label_arrays(y_true, prob)
    src = np.asarray(sources)
    out = {}
    for name in sorted(set(sources)):
        m = src == name
        at = binary_metrics(y[m], p[m], threshold)
        auc = roc_auc(y[m], p[m]) if 0 < y[m].sum() < m.sum() else float("nan")
        out[name] = {
            "n": int(m.sum()),
            "positives": int(y[m].sum()),
            "roc_auc": auc,
            "recall": at["recall"],
            "specificity": at["specificity"],
        }
    return out


def calibration(y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10) -> dict[str, Any]:
    """Reliability-diagram bins (equal width on [0, 1]) and the expected calibration error."""
    y, p = label_arrays(y_true, prob)
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
        bins.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": n,
                "mean_prob": conf,
                "frac_malignant": freq,
            }
        )
    brier = float(np.mean((p - y) ** 2)) if y.size else float("nan")
    return {"ece": float(ece), "brier": brier, "n_bins": n_bins, "bins": bins}


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


def clean_json(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars and arrays -> Python, tuples -> lists, keys ->
    str (json.dumps refuses numpy keys)."""
    if isinstance(v, dict):
        return {str(k): clean_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean_json(x) for x in v]
    if isinstance(v, np.ndarray):
        return clean_json(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def roc_curve(y_true: ArrayLike, prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the ROC curve at every distinct score, from (0, 0) to (1, 1)."""
    y, p = label_arrays(y_true, prob)
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), ys.size - 1] if ys.size else np.array([], int)
    tp, fp = np.cumsum(ys)[last], np.cumsum(1 - ys)[last]
    tpr = np.r_[0.0, tp / max(1, int(y.sum()))]
    fpr = np.r_[0.0, fp / max(1, int(y.size - y.sum()))]
    return fpr, tpr

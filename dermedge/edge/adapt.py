"""Site adaptation: a clinic's own labelled cases re-fit the model's last layer, on the device.

A guarded `.tflite` has a second output, its 1280 (or so) penultimate features. On a dermatoscope
the model never saw, moving the threshold cannot add ranking the scores lack; a new last layer
fitted on the clinic's own cases can. The head here is an L2-regularised logistic regression on
the standardised features; optionally (`prior`) the shipped model's own logit is one more,
barely penalised input, a prior toward the shipped head (with strong regularisation the head is
then the shipped model, recalibrated; on Derm7pt it did not help, so it is off by default). With a
few hundred cases and ~1000 features it is fitted by Newton's method in the sample space (every
iterate is a combination of the cases, so each step solves an n x n system, not a d x d one).

The strength is chosen by cross-validation grouped by lesion; the threshold on the out-of-fold
scores (never on scores of cases a head was fitted on). The head lives in the model card
(`head`), applied on top of the untouched `.tflite` output, so the shipped head is always there.
numpy only: this runs on the edge install, and web/src/head.js computes the same number.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dermedge.metrics import binary_metrics, choose_threshold, roc_auc, roc_curve

KIND = "logistic-standardised/1"
FOLDS = 5
LAMBDAS = (3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)  # L2 strengths tried by CV
OFFSET_LAMBDA = 0.1  # the shipped logit's weight is barely penalised: the prior toward it
BIAS_LAMBDA = 1e-3  # the bias is (nearly) free
EPS = 1e-4  # the shipped probability is clipped to [EPS, 1 - EPS] before its logit
MAX_ITER = 50
TOL = 1e-8
GUARD_PASS_RATE = 0.95  # of the site's own cases that pass the refitted guard (out of fold)


def _b64(a: np.ndarray) -> str:
    """An array as base64 of its little-endian float32 bytes, as the card stores it."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _unb64(s: str, n: int) -> np.ndarray:
    """A base64 float32 card array of `n` values as float64; ValueError when the size differs."""
    a = np.frombuffer(base64.b64decode(s), dtype="<f4").astype(np.float64)
    if a.size != n:
        raise ValueError(f"head array of {a.size} values, expected {n}")
    return a


def shipped_logit(prob: np.ndarray) -> np.ndarray:
    """The shipped model's logit from its P(malignant), clipped so 0 and 1 stay finite."""
    p = np.clip(np.asarray(prob, dtype=np.float64).ravel(), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


@dataclass
class Head:
    """A site's last layer: logit = ((features - mean) / scale) . weights + offset * shipped
    logit + bias; P(malignant) is its sigmoid."""

    weights: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    bias: float
    offset: float

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    def logit(self, features: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """The head's logit per row of features, given the shipped P(malignant) of each."""
        f = np.asarray(features, dtype=np.float64).reshape(-1, self.dim)
        z = (f - self.mean) / self.scale
        return z @ self.weights + self.offset * shipped_logit(prob) + self.bias

    def prob(self, features: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """The head's P(malignant) per row of features, given the shipped P(malignant)."""
        return sigmoid(self.logit(features, prob))

    def to_card(self) -> dict[str, Any]:
        """The head as the card's `head` entry (arrays as base64 float32, as deployed)."""
        return {
            "kind": KIND,
            "dim": self.dim,
            "weights": _b64(self.weights),
            "mean": _b64(self.mean),
            "scale": _b64(self.scale),
            "bias": float(self.bias),
            "offset": float(self.offset),
        }

    @classmethod
    def from_card(cls, h: dict[str, Any]) -> Head:
        """The head a card describes; ValueError when it is malformed."""
        if not isinstance(h, dict) or h.get("kind") != KIND:
            raise ValueError(f"unknown head kind {h.get('kind') if isinstance(h, dict) else h!r}")
        try:
            d = int(h["dim"])
            head = cls(
                _unb64(h["weights"], d),
                _unb64(h["mean"], d),
                _unb64(h["scale"], d),
                float(h["bias"]),
                float(h["offset"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed head in the model card: {e}") from e
        if not (np.isfinite(head.weights).all() and (head.scale > 0).all()):
            raise ValueError("malformed head in the model card: non-finite weights or scale <= 0")
        return head

    def deployed(self) -> Head:
        """This head as the card stores it (float32 arrays): score with what the device uses."""
        return Head.from_card(self.to_card())


# --- fitting ------------------------------------------------------------------------------------


@dataclass
class Design:
    """Standardised features, the shipped logit and the standardisation, of the fitting cases."""

    z: np.ndarray
    s: np.ndarray
    mean: np.ndarray
    scale: np.ndarray


def design(features: np.ndarray, prob: np.ndarray, prior: bool = False) -> Design:
    """Standardise the features on these cases (constant ones get scale 1); the shipped logit,
    or zeros without the prior."""
    f = np.asarray(features, dtype=np.float64)
    mean = f.mean(axis=0)
    sd = f.std(axis=0)
    scale = np.where(sd > 1e-6, sd, 1.0)
    s = shipped_logit(prob) if prior else np.zeros(f.shape[0])
    return Design((f - mean) / scale, s, mean, scale)


def _objective(f: np.ndarray, y: np.ndarray, a: np.ndarray, k: np.ndarray) -> float:
    """Log-loss of the logits `f` plus the penalty a' K a / 2 (the weights' L2 norm)."""
    return float(np.logaddexp(0.0, f).sum() - (y * f).sum() + 0.5 * a @ (k @ a))


def newton_dual(k: np.ndarray, y: np.ndarray, a0: np.ndarray | None = None) -> np.ndarray:
    """The sample-space coefficients `a` of the L2 logistic regression with kernel `k`
    (weights = Lambda^-1 X' a, logits = K a): Newton's method with step halving."""
    n = y.size
    a = np.zeros(n) if a0 is None else a0.copy()
    f = k @ a
    obj = _objective(f, y, a, k)
    for _ in range(MAX_ITER):
        p = sigmoid(f)
        v = p - y + a  # the gradient is X' v
        w = np.sqrt(np.maximum(p * (1 - p), 1e-12))
        m = np.eye(n) + w[:, None] * k * w[None, :]
        step = v - w * np.linalg.solve(m, w * (k @ v))  # H^-1 X' v = Lambda^-1 X' step
        t = 1.0
        while True:
            a_new = a - t * step
            f_new = k @ a_new
            obj_new = _objective(f_new, y, a_new, k)
            if obj_new <= obj + 1e-12 or t < 1e-6:
                break
            t *= 0.5
        done = obj - obj_new < TOL * max(1.0, abs(obj))
        a, f, obj = a_new, f_new, obj_new
        if done:
            break
    return a


def kernel(zz: np.ndarray, s: np.ndarray, lam: float) -> np.ndarray:
    """X Lambda^-1 X' for X = [z, s, 1] with penalties (lam, OFFSET_LAMBDA, BIAS_LAMBDA)."""
    return zz / lam + np.outer(s, s) / OFFSET_LAMBDA + 1.0 / BIAS_LAMBDA


def head_from_dual(d: Design, a: np.ndarray, lam: float) -> Head:
    """The head whose weights are Lambda^-1 X' a."""
    return Head(
        d.z.T @ a / lam,
        d.mean,
        d.scale,
        float(a.sum() / BIAS_LAMBDA),
        float(d.s @ a / OFFSET_LAMBDA),
    )


def fit_head(
    features: np.ndarray, prob: np.ndarray, y: np.ndarray, lam: float, prior: bool = False
) -> Head:
    """The L2 logistic head of strength `lam` on these cases (standardised on them)."""
    d = design(features, prob, prior)
    yy = np.asarray(y, dtype=np.float64)
    a = newton_dual(kernel(d.z @ d.z.T, d.s, lam), yy)
    return head_from_dual(d, a, lam)


# --- cross-validation ---------------------------------------------------------------------------


def grouped_folds(
    y: np.ndarray, groups: Sequence[str] | np.ndarray, k: int, seed: int
) -> np.ndarray:
    """A fold number per case: whole lesions (groups) in one fold, each class dealt out evenly."""
    y = np.asarray(y)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(str(g), []).append(i)
    rng = np.random.default_rng(seed)
    fold = np.zeros(y.size, dtype=np.int64)
    for label in (0, 1):
        keys = sorted(g for g, idx in by_group.items() if int(y[idx].max()) == label)
        rng.shuffle(keys)
        start = int(rng.integers(k))  # so that small classes do not all start in fold 0
        for j, g in enumerate(keys):
            fold[by_group[g]] = (start + j) % k
    return fold


def cv_scores(
    features: np.ndarray,
    prob: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    lambdas: Sequence[float] = LAMBDAS,
    prior: bool = False,
) -> np.ndarray:
    """Out-of-fold P(malignant) of each case for each strength: shape (len(lambdas), n).
    Each fold is standardised on its own training cases, as the final head will be."""
    f = np.asarray(features, dtype=np.float64)
    yy = np.asarray(y, dtype=np.float64)
    out = np.zeros((len(lambdas), yy.size))
    for j in np.unique(folds):
        tr, te = folds != j, folds == j
        d = design(f[tr], prob[tr], prior)
        zz = d.z @ d.z.T
        zt = (f[te] - d.mean) / d.scale
        st = shipped_logit(prob[te]) if prior else np.zeros(int(te.sum()))
        a = None
        for i, lam in sorted(enumerate(lambdas), key=lambda t: -t[1]):  # warm start: strong first
            a = newton_dual(kernel(zz, d.s, lam), yy[tr], a)
            head = head_from_dual(d, a, lam)
            out[i, te] = sigmoid(zt @ head.weights + head.offset * st + head.bias)
    return out


def choose_lambda(y: np.ndarray, scores: np.ndarray, lambdas: Sequence[float]) -> int:
    """The strength whose out-of-fold scores rank best (AUC); ties go to the stronger."""
    aucs = [roc_auc(y, s) for s in scores]
    best = max(aucs)
    return max((i for i, a in enumerate(aucs) if a >= best - 1e-12), key=lambda i: lambdas[i])


@dataclass
class Adaptation:
    """A fitted head with its chosen strength, out-of-fold scores and threshold."""

    head: Head
    lam: float
    oof: np.ndarray  # out-of-fold P(malignant) at the chosen strength
    cv_auc: dict[str, float]  # AUC per strength tried (keys: the strengths)
    threshold: dict[str, Any]  # choose_threshold on the out-of-fold scores
    folds: np.ndarray


def adapt(
    features: np.ndarray,
    prob: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    target: float,
    margin_se: float,
    seed: int = 0,
    lambdas: Sequence[float] = LAMBDAS,
    prior: bool = False,
) -> Adaptation:
    """Choose the strength by grouped CV, fit the head on every case, and choose its threshold
    on the out-of-fold scores with the card's policy (target sensitivity + margin)."""
    y = np.asarray(y, dtype=np.int64)
    k = min(FOLDS, int(y.sum()), int((1 - y).sum()))
    if k < 2:
        raise ValueError("adaptation needs at least 2 malignant and 2 benign cases")
    folds = grouped_folds(y, groups, k, seed)
    scores = cv_scores(features, prob, y, folds, lambdas, prior)
    best = choose_lambda(y, scores, lambdas)
    lam = float(lambdas[best])
    head = fit_head(features, prob, y, lam, prior).deployed()
    oof = scores[best]
    return Adaptation(
        head,
        lam,
        oof,
        {f"{lam_i:g}": roc_auc(y, s) for lam_i, s in zip(lambdas, scores, strict=True)},
        choose_threshold(y, oof, target, margin_se),
        folds,
    )


def paired_auc_gain(
    y: np.ndarray, new: np.ndarray, old: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """AUC(new) - AUC(old) on the same cases with a stratified paired bootstrap 95% CI."""
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    diffs = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        diffs.append(roc_auc(y[idx], new[idx]) - roc_auc(y[idx], old[idx]))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return {"gain": roc_auc(y, new) - roc_auc(y, old), "ci95": [float(lo), float(hi)]}


def cases_digest(digests: Sequence[str], labels: Sequence[str]) -> str:
    """sha256 over each case's label and file digest, order-free."""
    lines = sorted(f"{lab} {d}" for lab, d in zip(labels, digests, strict=True))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --- how many cases? ----------------------------------------------------------------------------

CURVE_SIZES: tuple[int | None, ...] = (10, 20, 50, 100, None)  # cases per class; None: all


def spec_at_sensitivity(y: np.ndarray, prob: np.ndarray, target: float) -> float:
    """The best specificity among thresholds whose sensitivity is >= target (the ROC's point)."""
    fpr, tpr = roc_curve(y, prob)
    ok = tpr >= target - 1e-12
    return float((1.0 - fpr[ok]).max()) if ok.any() else 0.0


def per_class_sample(idx: np.ndarray, y: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """`n` cases of each class drawn from `idx` (all of them for None), seeded."""
    if n is None:
        return idx
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(idx[y[idx] == c], n, replace=False) for c in (0, 1)]))


def curve_point(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    fit_idx: np.ndarray,
    check: np.ndarray,
    target: float,
    margin_se: float,
    seed: int,
    prior: bool = False,
) -> dict[str, float]:
    """Adapt on `fit_idx`, check on `check`: the adapted head against the shipped model with a
    threshold chosen on the same cases (today's calibrate)."""
    features, prob, y, groups = data
    t0 = time.perf_counter()
    a = adapt(
        features[fit_idx],
        prob[fit_idx],
        y[fit_idx],
        groups[fit_idx],
        target,
        margin_se,
        seed,
        prior=prior,
    )
    fit_s = time.perf_counter() - t0
    yc, pc = y[check], a.head.prob(features[check], prob[check])
    at = binary_metrics(yc, pc, a.threshold["threshold"])
    t_only = choose_threshold(y[fit_idx], prob[fit_idx], target, margin_se)["threshold"]
    old = binary_metrics(yc, prob[check], t_only)
    gain = paired_auc_gain(y[fit_idx], a.oof, prob[fit_idx], 1000, seed)
    return {
        "adopted": float(gain["ci95"][0] > 0),  # would `calibrate --adapt` keep the new layer?
        "auc": at["roc_auc"],
        "sensitivity": at["recall"],
        "specificity": at["specificity"],
        "spec_at_target": spec_at_sensitivity(yc, pc, target),
        "cv_auc": roc_auc(y[fit_idx], a.oof),
        "lambda": a.lam,
        "shipped_auc": old["roc_auc"],
        "threshold_only_sensitivity": old["recall"],
        "threshold_only_specificity": old["specificity"],
        "shipped_spec_at_target": spec_at_sensitivity(yc, prob[check], target),
        "fit_s": fit_s,
    }


def learning_curve(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    target: float,
    margin_se: float,
    sizes: Sequence[int | None] = CURVE_SIZES,
    repeats: int = 5,
    prior: bool = False,
) -> list[dict[str, Any]]:
    """Held-out figures by cases per class: each repeat splits the lesions in two halves
    (grouped, seeded), adapts on `size` cases per class of one half (None: all of it) and checks
    on every lesion it was not fitted on. Sizes larger than a class's share of the half are
    skipped. Mean and SD over repeats."""
    features, prob, y, groups = data
    rows = []
    for size in sizes:
        points = []
        for r in range(repeats):
            half = grouped_folds(y, groups, 2, r) == 0
            idx = np.flatnonzero(half)
            if size is not None and min((y[idx] == c).sum() for c in (0, 1)) < size:
                break
            fit_idx = per_class_sample(idx, y, size, r)
            rest = ~np.isin(np.asarray(groups), np.asarray(groups)[fit_idx])
            points.append(curve_point(data, fit_idx, rest, target, margin_se, r, prior))
        if not points:
            continue
        row: dict[str, Any] = {"per_class": "all" if size is None else size, "repeats": len(points)}
        row["counts"] = (
            {"malignant": int(y[half].sum()), "benign": int((1 - y[half]).sum())}
            if size is None
            else {"malignant": size, "benign": size}
        )
        for key in points[0]:
            vals = np.asarray([p[key] for p in points], dtype=np.float64)
            row[key] = float(vals.mean())
            row[key + "_sd"] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        rows.append(row)
    return rows


# --- the guard learns the site ------------------------------------------------------------------


def _f32(a: np.ndarray) -> np.ndarray:
    """Rounded to float32 as the card stores it: score with what the device uses."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _site_guard(old: Any, f: np.ndarray, y: np.ndarray) -> Any:
    """The shipped guard around the site's class means (its covariance kept: refitted on the
    site's cases it let far more non-lesion photos pass on `tiny`, benchmarks/adapt_curve.py)."""
    return dataclasses.replace(old, means=_f32(np.stack([f[y == c].mean(axis=0) for c in (0, 1)])))


def refit_guard(
    old: Any, features: np.ndarray, y: np.ndarray, folds: np.ndarray
) -> tuple[Any, dict[str, Any]]:
    """The model's unfamiliar-input guard refitted on the site's own features: the class means
    are the site's, and the cut-off passes GUARD_PASS_RATE of the site's cases out of fold (each
    fold scored by means from the other folds); any `far_cutoff` moves by the same factor as the
    cut-off. Returns (guard, figures)."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    oof = np.zeros(f.shape[0])
    for j in np.unique(folds):
        tr, te = folds != j, folds == j
        oof[te] = _site_guard(old, f[tr], y[tr]).score(f[te])
    cutoff = float(np.quantile(oof, GUARD_PASS_RATE, method="higher"))
    changes: dict[str, Any] = {"cutoff": cutoff}
    far = getattr(old, "far_cutoff", None)
    if far is not None and old.cutoff > 0:
        changes["far_cutoff"] = float(far) * cutoff / float(old.cutoff)
    new = dataclasses.replace(_site_guard(old, f, y), **changes)
    figures = {
        "refit": "class means and cut-off",
        "cutoff": cutoff,
        "old_cutoff": float(old.cutoff),
        "far_cutoff": changes.get("far_cutoff"),
        "site_pass_rate_out_of_fold": float((oof <= cutoff).mean()),
        "site_pass_rate_old_guard": float((old.score(f) <= old.cutoff).mean()),
    }
    return new, figures

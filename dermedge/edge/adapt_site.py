"""`dermedge calibrate MODEL --data ROOT --out NEW --adapt`: the site's own cases re-fit the last
layer (dermedge.edge.adapt), reported side by side with threshold-only calibration and with the
model as shipped, and written into the card of a copy of the model.

The head is kept only when it ranks the site's cases better than the shipped model by more than
the paired bootstrap's 95% CI (out-of-fold, so no case scores itself); otherwise the shipped head
is kept and the threshold only is calibrated, and the report says so. The unfamiliar-input guard
is refitted on the site's own features either way. Edge install only (numpy, Pillow, LiteRT).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np

from dermedge import DISCLAIMER, __version__
from dermedge.data.index import Index, Record
from dermedge.data.io import atomic_write_text
from dermedge.edge import adapt as ad
from dermedge.edge.calibrate import (
    LOW_SENSITIVITY,
    N_BOOT,
    CalibrationError,
    Cases,
    calibrated_card,
    calibration_record,
    check_sample,
    data_digest,
    holdout_split,
    margin_of,
    new_threshold,
    operating_point,
    referral_warning,
    refuse_refer_all,
    sensitivity_floor,
    site_pixels,
    training_policy,
    warn,
    write_model,
)
from dermedge.metrics import bootstrap_ci, clean_json, roc_auc
from dermedge.runs import format_table

ROWS = {
    "shipped": "model as shipped",
    "threshold_only": "threshold only (today's calibrate)",
    "adapted": "adapted last layer",
}


@dataclass
class Options:
    """What `calibrate --adapt` was asked for."""

    site: str
    target: float | None
    holdout: float
    seed: int
    min_cases: int
    curve: bool
    prior: bool = False


@dataclass
class SiteCases:
    """Scored cases (shipped P(malignant)) with their penultimate features."""

    cases: Cases
    features: np.ndarray

    def subset(self, mask: np.ndarray) -> SiteCases:
        """The cases where `mask` is true."""
        return SiteCases(self.cases.subset(mask), self.features[mask])

    @property
    def groups(self) -> np.ndarray:
        """Each case's lesion (its file when the layout has no lesion ids)."""
        return np.asarray([r.group or r.path for r in self.cases.records])


def score_features(
    model: Any, records: list[Record], batch: int = 32
) -> tuple[SiteCases, dict[str, str]]:
    """The shipped model's P(malignant) (its own output, not a site head already in the card)
    and the feature output of each readable case."""
    from dermedge.edge.runtime import EdgeError

    x, kept, bad = site_pixels(model, records)
    probs, feats = [], []
    try:
        for i in range(0, len(kept), batch):
            p, f = model.predict_features(x[i : i + batch], adapted=False)
            if f is None:
                raise CalibrationError(
                    f"{model.path} has no feature output (a guarded model has one): "
                    "adaptation needs it; calibrate the threshold only (drop --adapt)"
                )
            probs.append(p)
            feats.append(f)
    except EdgeError as e:
        raise CalibrationError(str(e).splitlines()[0]) from e
    recs = [records[i] for i in kept]
    y = np.asarray([r.label == "malignant" for r in recs], dtype=np.int64)
    prob = np.concatenate(probs) if probs else np.zeros(0)
    f = np.concatenate(feats) if feats else np.zeros((0, 1))
    return SiteCases(Cases(y, prob.astype(np.float64), recs), f.astype(np.float64)), bad


# --- the figures --------------------------------------------------------------------------------


def point(y: np.ndarray, prob: np.ndarray, threshold: float, seed: int = 0) -> dict[str, Any]:
    """operating_point plus the AUC with its bootstrap 95% CI, for one set of scores."""
    pt = operating_point(Cases(y, prob, []), threshold, seed)
    ci = bootstrap_ci(y, prob, threshold, n_boot=N_BOOT, seed=seed, metrics=("roc_auc",))
    pt["auc"] = roc_auc(y, prob)
    pt["auc_ci95"] = list(ci["roc_auc"])
    return clean_json(pt)


def original_threshold(card: dict[str, Any]) -> float:
    """The threshold the model was shipped with (a calibrated card keeps it)."""
    cal = card.get("calibration") or {}
    return float(cal.get("original_threshold", card.get("threshold", 0.5)))


def compare(
    site: SiteCases,
    fit: ad.Adaptation,
    thr_only: dict[str, Any],
    shipped_t: float,
) -> dict[str, Any]:
    """Shipped, threshold-only and adapted (out of fold) side by side on the site's cases."""
    y, p = site.cases.y, site.cases.prob
    return {
        "shipped": point(y, p, shipped_t),
        "threshold_only": point(y, p, thr_only["threshold"]),
        "adapted": point(y, fit.oof, fit.threshold["threshold"]),
    }


def compare_held(
    held: SiteCases,
    fit: ad.Adaptation,
    thr_only: dict[str, Any],
    shipped_t: float,
) -> dict[str, Any]:
    """The three on held-out cases: the head and both thresholds as they would be deployed."""
    y, p = held.cases.y, held.cases.prob
    return {
        "counts": held.cases.counts(),
        "shipped": point(y, p, shipped_t),
        "threshold_only": point(y, p, thr_only["threshold"]),
        "adapted": point(y, fit.head.prob(held.features, p), fit.threshold["threshold"]),
    }


def comparison_table(points: dict[str, Any], held: dict[str, Any] | None) -> str:
    """AUC, threshold, sensitivity and specificity with 95% CIs and counts, per row."""
    rows = []
    for where, pts in (("site cases", points), ("held-out", held)):
        if not pts:
            continue
        for key, name in ROWS.items():
            pt = pts[key]
            rows.append(
                [
                    f"{where}: {name}"
                    + (" (out of fold)" if pts is points and key == "adapted" else ""),
                    _ci(pt["auc"], pt["auc_ci95"]),
                    f"{pt['threshold']:.4f}",
                    _ci(pt["sensitivity"], pt["ci95"]["sensitivity"]),
                    _ci(pt["specificity"], pt["ci95"]["specificity"]),
                    f"{pt['tp']}/{pt['fn']}/{pt['tn']}/{pt['fp']}",
                ]
            )
    return format_table(
        rows,
        [
            "cases: scores",
            "AUC (95% CI)",
            "t",
            "sensitivity (95% CI)",
            "specificity (95% CI)",
            "tp/fn/tn/fp",
        ],
    )


def _ci(v: float | None, ci: list[float | None]) -> str:
    """`v [lo, hi]`, or n/a."""
    if v is None:
        return "n/a"
    lo, hi = ci
    return f"{v:.3f} [{lo if lo is not None else math.nan:.3f}, {hi if hi is not None else math.nan:.3f}]"


# --- the card -----------------------------------------------------------------------------------


def head_record(
    opts: Options,
    site: SiteCases,
    fit: ad.Adaptation,
    gain: dict[str, Any],
    points: dict[str, Any],
    held: dict[str, Any] | None,
    guard_fig: dict[str, Any] | None,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """The head's `record`: where, on what, when, with which tool, and the CV figures."""
    return clean_json(
        {
            "site": opts.site,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tool": {"dermedge": __version__},
            "counts": site.cases.counts(),
            "data_sha256": data_digest(site.cases.records),
            "lambda": fit.lam,
            "prior": opts.prior,
            "folds": int(np.unique(fit.folds).size),
            "cv_auc": points["adapted"]["auc"],
            "cv_auc_ci95": points["adapted"]["auc_ci95"],
            "cv_auc_by_lambda": fit.cv_auc,
            "shipped_auc": points["shipped"]["auc"],
            "auc_gain": gain,
            "threshold": fit.threshold,
            "out_of_fold": points["adapted"],
            "holdout": held,
            "guard": guard_fig,
            "previous": previous,
        }
    )


def adapted_card(
    card: dict[str, Any],
    cal_record: dict[str, Any],
    head: ad.Head | None,
    record: dict[str, Any],
    guard: Any,
    site: str,
) -> dict[str, Any]:
    """The card at the site's threshold, with the site head (or none: the shipped head) and the
    site's guard. The `.tflite` itself is untouched: its own output is the shipped head."""
    new = calibrated_card(card, cal_record)
    new.pop("head", None)  # re-adapting replaces the record; no head: the shipped head
    if head is not None:
        new["head"] = {**head.to_card(), "site": site, "record": record}
    else:
        new["calibration"] = {**new["calibration"], "adaptation": record}
    if guard is not None:
        new["guard"] = {**(card.get("guard") or {}), **guard.to_card(), "site": site}
    return new


# --- the command --------------------------------------------------------------------------------


def split(site: SiteCases, holdout: float, seed: int) -> tuple[SiteCases, SiteCases | None]:
    """(adaptation cases, held-out cases or None): whole lesions held out, per class."""
    if not holdout:
        return site, None
    calib, held = holdout_split(site.cases.records, holdout, seed)
    return site.subset(calib), site.subset(held)


def run(
    model: Any,
    src: Path,
    dst: Path,
    index: Index,
    opts: Options,
) -> None:
    """Score, adapt, compare, decide, write the model and the report, print the summary."""
    card = model.card or {}
    all_cases, bad = score_features(model, index.records)
    site, held = split(all_cases, opts.holdout, opts.seed)
    check_sample(site.cases, opts.min_cases)
    target = opts.target or float(training_policy(card).get("target_sensitivity", 0.95))
    margin = margin_of(card)
    y = site.cases.y
    try:
        fit = ad.adapt(
            site.features,
            site.cases.prob,
            y,
            site.groups,
            target,
            margin,
            opts.seed,
            prior=opts.prior,
        )
    except (ValueError, np.linalg.LinAlgError) as e:
        raise CalibrationError(f"adaptation failed: {e}") from e
    thr_only = new_threshold(site.cases, target, margin)
    shipped_t = original_threshold(card)
    points = compare(site, fit, thr_only, shipped_t)
    held_pts = compare_held(held, fit, thr_only, shipped_t) if held and len(held.cases.y) else None
    gain = ad.paired_auc_gain(y, fit.oof, site.cases.prob, N_BOOT, opts.seed)
    adopt = gain["ci95"][0] > 0
    guard, guard_fig = _refit_guard(model, site, fit, held)
    previous = _previous(card)
    if previous or card.get("calibration"):
        old = previous or card["calibration"]
        warn(
            f"{src.name} was {'adapted' if previous else 'calibrated'} for {old.get('site')!r} "
            f"({(old.get('date') or '')[:10]}): that record is replaced"
        )
    record = head_record(opts, site, fit, gain, points, held_pts, guard_fig, previous)
    record["adopted"] = adopt
    chosen = fit.threshold if adopt else thr_only
    key = "adapted" if adopt else "threshold_only"
    cal_points: dict[str, Any] = {"before": points["shipped"], "after": points[key]}
    if held_pts:
        cal_points["holdout"] = {
            "counts": held_pts["counts"],
            "before": held_pts["shipped"],
            "after": held_pts[key],
        }
    refuse_refer_all(points[key], Cases(y, fit.oof if adopt else site.cases.prob, []), chosen)
    scored = Cases(y, fit.oof if adopt else site.cases.prob, site.cases.records)
    cal_record = calibration_record(
        card, opts.site, index, scored, chosen, cal_points, len(index.problems) + len(bad)
    )
    new = adapted_card(card, cal_record, fit.head if adopt else None, record, guard, opts.site)
    write_model(src, new, dst)
    curve = _curve(site, target, margin, opts) if opts.curve else None
    report = {
        "model": str(src),
        "out": str(dst),
        "site": opts.site,
        "adopted": adopt,
        "target_sensitivity": target,
        "margin_se": margin,
        "points": points,
        "holdout": held_pts,
        "record": record,
        "curve": curve,
        "skipped": {**{p.path: p.reason for p in index.problems}, **bad},
        "disclaimer": DISCLAIMER,
    }
    folder = write_report(dst, report, site, fit)
    print_summary(report, card, dst, folder)


def _previous(card: dict[str, Any]) -> dict[str, Any] | None:
    """The replaced adaptation's site, date and counts, if the model was adapted before."""
    old = (card.get("head") or {}).get("record") or (card.get("calibration") or {}).get(
        "adaptation"
    )
    if not old:
        return None
    return {k: old.get(k) for k in ("site", "date", "counts", "data_sha256", "adopted")}


def _refit_guard(
    model: Any, site: SiteCases, fit: ad.Adaptation, held: SiteCases | None
) -> tuple[Any, dict[str, Any] | None]:
    """The guard refitted on the site's features (None for a model without a guard), with the
    pass rates of the site's held-out cases under the old and the new guard."""
    if model.guard is None:
        return None, None
    guard, fig = ad.refit_guard(model.guard, site.features, site.cases.y, fit.folds)
    if held is not None and len(held.cases.y):
        fig["holdout_pass_rate"] = float((guard.score(held.features) <= guard.cutoff).mean())
        fig["holdout_pass_rate_old_guard"] = float(
            (model.guard.score(held.features) <= model.guard.cutoff).mean()
        )
    return guard, fig


def _curve(site: SiteCases, target: float, margin: float, opts: Options) -> list[dict[str, Any]]:
    """The learning curve on the site's own cases (halves of them: adapt on one, check on the
    other), for `--curve`."""
    data = (site.features, site.cases.prob, site.cases.y, site.groups)
    return ad.learning_curve(data, target, margin, prior=opts.prior)


# --- report -------------------------------------------------------------------------------------


def curve_table(rows: list[dict[str, Any]]) -> str:
    """The learning curve as a table: held-out AUC and specificity by cases per class."""
    return format_table(
        [
            [
                str(r["per_class"]),
                f"{r['counts']['malignant']}/{r['counts']['benign']}",
                f"{r['auc']:.3f} ± {r['auc_sd']:.3f}",
                f"{r['sensitivity']:.3f}",
                f"{r['specificity']:.3f} ± {r['specificity_sd']:.3f}",
                f"{r['spec_at_target']:.3f}",
                f"{r['shipped_auc']:.3f}",
                f"{r['threshold_only_sensitivity']:.3f}",
                f"{r['threshold_only_specificity']:.3f}",
                f"{r['fit_s']:.2f}",
                f"{r['adopted']:.0%}",
                str(r["repeats"]),
            ]
            for r in rows
        ],
        [
            "per class",
            "mal/ben",
            "adapted AUC",
            "sens",
            "spec",
            "spec@target (ROC)",
            "shipped AUC",
            "thr-only sens",
            "thr-only spec",
            "fit s",
            "kept",
            "repeats",
        ],
    )


def plot_curve(rows: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Held-out AUC and specificity against cases per class (matplotlib optional)."""
    try:
        from dermedge.plotting import new_figure, save_png

        fig = new_figure()
    except ImportError:
        warn("learning-curve plot skipped: matplotlib is not installed (pip install matplotlib)")
        return None
    x = np.arange(len(rows))
    labels = [str(r["per_class"]) for r in rows]
    ax = fig.add_subplot(111)
    for key, label, style in (
        ("auc", "adapted: AUC", "o-"),
        ("specificity", "adapted: specificity at the policy's threshold", "s-"),
        ("shipped_auc", "shipped: AUC", "o--"),
        ("threshold_only_specificity", "threshold only: specificity", "s--"),
    ):
        ax.errorbar(
            x,
            [r[key] for r in rows],
            yerr=[r.get(key + "_sd", 0.0) for r in rows],
            fmt=style,
            capsize=3,
            label=label,
        )
    ax.set_xticks(x, labels)
    ax.set_xlabel("site cases per class used to adapt")
    ax.set_ylabel("on held-out cases")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(0.01, 0.58), fontsize=7)
    ax.set_title(title, fontsize=9)
    return save_png(fig, path)


def plot_roc(site: SiteCases, fit: ad.Adaptation, report: dict[str, Any], path: Path) -> None:
    """ROC of the shipped scores and of the adapted head's out-of-fold scores, with both chosen
    operating points (matplotlib optional)."""
    try:
        from dermedge.plotting import new_figure, save_png

        fig = new_figure()
    except ImportError:
        warn("ROC plot skipped: matplotlib is not installed (pip install matplotlib)")
        return
    from dermedge.metrics import roc_curve

    ax = fig.add_subplot(111)
    y = site.cases.y
    for key, scores in (("threshold_only", site.cases.prob), ("adapted", fit.oof)):
        pt = report["points"][key]
        fpr, tpr = roc_curve(y, scores)
        (line,) = ax.plot(fpr, tpr, lw=2, label=f"{ROWS[key]}: AUC {pt['auc']:.3f}")
        ax.plot(
            1 - pt["specificity"],
            pt["sensitivity"],
            "o",
            ms=8,
            color=line.get_color(),
            label=f"t={pt['threshold']:.3f}: sens {pt['sensitivity']:.3f}, spec "
            f"{pt['specificity']:.3f}",
        )
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(f"site {report['site']}: shipped vs adapted (n={y.size})", fontsize=9)
    save_png(fig, path)


def write_report(dst: Path, report: dict[str, Any], site: SiteCases, fit: ad.Adaptation) -> Path:
    """`<out>.calibration/`: report.json, predictions.csv (shipped and out-of-fold adapted
    scores), roc.png, and with --curve curve.md / curve.png."""
    folder = dst.with_name(dst.stem + ".calibration")
    folder.mkdir(parents=True, exist_ok=True)
    plot_roc(site, fit, report, folder / "roc.png")
    lines = ["path,label,prob_shipped,prob_adapted_out_of_fold"] + [
        f"{r.path},{r.label},{p:.6f},{q:.6f}"
        for r, p, q in zip(site.cases.records, site.cases.prob, fit.oof, strict=True)
    ]
    atomic_write_text(folder / "predictions.csv", "\n".join(lines) + "\n")
    if report["curve"]:
        atomic_write_text(folder / "curve.md", curve_table(report["curve"]) + "\n")
        plot_curve(report["curve"], folder / "curve.png", f"learning curve on {report['site']}")
    atomic_write_text(folder / "report.json", json.dumps(clean_json(report), indent=2) + "\n")
    return folder


def print_summary(report: dict[str, Any], card: dict[str, Any], dst: Path, folder: Path) -> None:
    """The side-by-side table, the decision, the guard, warnings and what was written."""
    rec, pts = report["record"], report["points"]
    click.echo(comparison_table(pts, report["holdout"]))
    c = rec["counts"]
    g = rec["auc_gain"]
    click.echo(
        f"\nsite {report['site']!r}: {c['malignant']} malignant + {c['benign']} benign cases; "
        f"out-of-fold AUC {pts['adapted']['auc']:.3f} vs shipped {pts['shipped']['auc']:.3f}: "
        f"gain {g['gain']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}] (paired bootstrap 95% CI)"
    )
    key = "adapted" if report["adopted"] else "threshold_only"
    if report["adopted"]:
        click.echo(
            f"adapted: the new last layer is in the card (L2 strength {rec['lambda']:g}, chosen "
            f"by {rec['folds']}-fold CV grouped by lesion); threshold "
            f"{pts['adapted']['threshold']:.4f} chosen on out-of-fold scores"
        )
    else:
        warn(
            "kept the shipped head: adaptation did not beat threshold-only calibration by more "
            "than its 95% CI; the threshold only is calibrated "
            f"({pts['threshold_only']['threshold']:.4f})"
        )
    if report["holdout"]:
        h = report["holdout"][key]
        click.echo(
            f"held-out check ({report['holdout']['counts']['malignant']} malignant + "
            f"{report['holdout']['counts']['benign']} benign): sens {h['sensitivity']:.3f}, "
            f"spec {h['specificity']:.3f}, AUC {h['auc']:.3f}"
        )
    if rec.get("guard"):
        gf = rec["guard"]
        old = gf.get("site_pass_rate_old_guard")
        click.echo(
            f"guard refitted on the site's features: {100 * gf['site_pass_rate_out_of_fold']:.1f}% "
            f"of the site's cases pass (out of fold; {100 * old:.1f}% passed the shipped guard)"
            if old is not None
            else "guard refitted on the site's features"
        )
    too_many = referral_warning(pts[key])
    if too_many:
        warn(too_many)
    floor = sensitivity_floor(pts[key])
    if math.isfinite(floor) and floor < LOW_SENSITIVITY:
        warn(
            f"with {c['malignant']} malignant cases the sensitivity at the new threshold may be as "
            f"low as {floor:.2f} (95% CI); collect more malignant cases before relying on it"
        )
    if report["curve"]:
        click.echo("\nlearning curve (held-out half of the site's cases, mean ± SD over repeats):")
        click.echo(curve_table(report["curve"]))
    click.echo(
        f"wrote {dst} and {folder}/ (report.json, predictions.csv, roc.png"
        + (", curve.md, curve.png)" if report["curve"] else ")")
    )
    click.echo(DISCLAIMER)

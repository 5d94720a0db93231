"""`dermedge calibrate MODEL.tflite --data ROOT --out NEW.tflite`: a clinic's own cases, a threshold
that fits its dermatoscope.

A model's scores still rank lesions on another clinic's device, but its threshold does not travel
(the shipped default refers nearly every benign lesion from other clinics at its card threshold).
This runs the model through the edge runtime on the clinic's labelled cases, chooses the threshold
with the trainer's policy (target sensitivity plus the card's standard-error margin), and writes a
copy of the model whose card carries the new threshold and a `calibration` record. Edge install
only: numpy, Pillow and the LiteRT interpreter, so it runs on the Raspberry Pi itself; the ROC plot
is drawn when matplotlib is installed.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np

from dermedge import DISCLAIMER, __version__
from dermedge.data.images import load_images
from dermedge.data.index import Index, Record, read_dataset
from dermedge.data.io import atomic_write_bytes, atomic_write_text
from dermedge.metrics import binary_metrics, bootstrap_ci, choose_threshold, clean_json, wilson_ci
from dermedge.runs import format_table

MIN_PER_CLASS = 20  # fewer malignant or benign cases than this: refuse, a threshold would be noise
LOW_SENSITIVITY = 0.85  # warn when the sensitivity's 95% CI reaches below this
MAX_REFERRED = 0.90  # warn when the new threshold refers more of the site's cases than this
MIN_SPECIFICITY = 0.25  # ... or sends on fewer than this share of its benign lesions as routine
DEFAULT_MARGIN_SE = 1.0  # the trainer's margin, for a card that does not record one
N_BOOT = 2000


class CalibrationError(click.ClickException):
    """Calibration cannot go on (too few cases, unreadable model or data); exit code 2."""

    exit_code = 2


def warn(msg: str) -> None:
    """Print `msg` as a bold yellow WARNING line on stderr."""
    click.secho(f"WARNING: {msg}", fg="yellow", bold=True, err=True)


@dataclass
class Cases:
    """Labelled cases the model has scored: labels (1 = malignant), P(malignant), their files."""

    y: np.ndarray
    prob: np.ndarray
    records: list[Record]

    def subset(self, mask: np.ndarray) -> Cases:
        """The cases where `mask` is true."""
        return Cases(
            self.y[mask], self.prob[mask], [r for r, m in zip(self.records, mask, strict=True) if m]
        )

    def counts(self) -> dict[str, int]:
        """How many benign and how many malignant cases there are."""
        return {"benign": int((self.y == 0).sum()), "malignant": int(self.y.sum())}


# --- the clinic's cases -------------------------------------------------------------------------


def report_skipped(skipped: dict[str, str], what: str) -> None:
    """One warning per reason: how many were skipped and an example (all are in report.json)."""
    by_reason: dict[str, list[str]] = {}
    for path, why in skipped.items():
        by_reason.setdefault(why, []).append(path)
    for why, paths in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        warn(f"skipped {len(paths)} {what}: {why} (e.g. {paths[0]})")


def read_site_data(root: str) -> Index:
    """Every dataset layout `dermedge data` reads (a plain benign/ + malignant/ folder included);
    skipped files are reported, never dropped without a word."""
    try:
        index = read_dataset(root)
    except (OSError, ValueError) as e:
        raise CalibrationError(str(e).splitlines()[0]) from e
    report_skipped({p.path: p.reason for p in index.problems}, "rows/files")
    return index


def holdout_split(
    records: list[Record], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(calibration mask, held-out mask): whole lesions (groups) go to one side, per class, seeded."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r.group or r.path, []).append(i)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(records), dtype=bool)
    for label in ("benign", "malignant"):
        keys = sorted(
            k
            for k, idx in groups.items()
            if ("malignant" if any(records[i].label == "malignant" for i in idx) else "benign")
            == label
        )
        rng.shuffle(keys)
        for k in keys[: round(fraction * len(keys))]:
            held[groups[k]] = True
    return ~held, held


def site_pixels(model: Any, records: list[Record]) -> tuple[Any, list[int], dict[str, str]]:
    """The readable cases' pixels by the model's contract, their indices, and the unreadable
    files with their reasons (reported); a bar only at a terminal."""
    x, kept, bad = load_images(
        [r.path for r in records],
        model.contract,
        desc="site images",
        progress=sys.stderr.isatty(),  # a bar in a log or pipe glues onto the table
    )
    report_skipped(bad, "unreadable images")
    return x, kept, bad


def score(model: Any, records: list[Record], batch: int = 32) -> tuple[Cases, dict[str, str]]:
    """P(malignant) of each readable case through the model's own contract; unreadable files
    are returned with their reason."""
    x, kept, bad = site_pixels(model, records)
    prob = np.concatenate(
        [model.predict(x[i : i + batch]) for i in range(0, len(kept), batch)] or [np.zeros(0)]
    )
    recs = [records[i] for i in kept]
    y = np.asarray([r.label == "malignant" for r in recs], dtype=np.int64)
    return Cases(y, prob.astype(np.float64), recs), bad


def check_sample(cases: Cases, minimum: int = MIN_PER_CLASS) -> None:
    """Refuse a sample too small to choose a threshold from."""
    c = cases.counts()
    if c["malignant"] < minimum or c["benign"] < minimum:
        raise CalibrationError(
            f"too few cases to calibrate: {c['malignant']} malignant and {c['benign']} benign "
            f"readable images; need at least {minimum} of each (50-200 of each is better)"
        )


def data_digest(records: list[Record]) -> str:
    """sha256 over each case's label and file content, order-free: which cases chose the threshold."""
    lines = sorted(
        f"{r.label} {hashlib.sha256(Path(r.path).read_bytes()).hexdigest()}" for r in records
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --- the threshold ------------------------------------------------------------------------------


def operating_point(cases: Cases, threshold: float, seed: int = 0) -> dict[str, Any]:
    """Sensitivity and specificity at a threshold, with bootstrap and Wilson 95% CIs and counts."""
    m = binary_metrics(cases.y, cases.prob, threshold)
    ci = bootstrap_ci(
        cases.y, cases.prob, threshold, n_boot=N_BOOT, seed=seed, metrics=("recall", "specificity")
    )
    return clean_json(
        {
            "threshold": float(threshold),
            "sensitivity": m["recall"],
            "specificity": m["specificity"],
            "ci95": {"sensitivity": list(ci["recall"]), "specificity": list(ci["specificity"])},
            "wilson95": {
                "sensitivity": list(wilson_ci(m["tp"], m["tp"] + m["fn"])),
                "specificity": list(wilson_ci(m["tn"], m["tn"] + m["fp"])),
            },
            "tp": m["tp"],
            "fn": m["fn"],
            "tn": m["tn"],
            "fp": m["fp"],
            "referred_fraction": (m["tp"] + m["fp"]) / max(1, m["n"]),
        }
    )


def training_policy(card: dict[str, Any]) -> dict[str, Any]:
    """The trainer's threshold policy, also on a card calibrated before (kept apart there)."""
    policy = card.get("threshold_policy") or {}
    return policy.get("training_policy") or policy


def margin_of(card: dict[str, Any]) -> float:
    """The card's standard-error margin on the sensitivity target (the trainer's policy)."""
    margin = training_policy(card).get("margin_se")
    return DEFAULT_MARGIN_SE if margin is None else float(margin)


def new_threshold(cases: Cases, target: float, margin_se: float) -> dict[str, Any]:
    """The highest threshold meeting target + margin_se standard errors on these cases."""
    return choose_threshold(cases.y, cases.prob, target, margin_se)


TRADEOFF_TARGETS = (0.85, 0.90, 0.95, 0.98)


def tradeoff(cases: Cases, margin_se: float) -> list[dict[str, Any]]:
    """What other sensitivity targets would cost on these cases: the clinic's choice, in numbers."""
    rows = []
    for t in TRADEOFF_TARGETS:
        c = new_threshold(cases, t, margin_se)
        m = binary_metrics(cases.y, cases.prob, c["threshold"])
        rows.append(
            {
                "target_sensitivity": t,
                "threshold": c["threshold"],
                "sensitivity": m["recall"],
                "specificity": m["specificity"],
                "referred_fraction": (m["tp"] + m["fp"]) / m["n"],
            }
        )
    return rows


def tradeoff_table(rows: list[dict[str, Any]]) -> str:
    """The `tradeoff` rows as a table: target, threshold, sensitivity, specificity, referred."""
    return format_table(
        [
            [
                f">= {r['target_sensitivity']:.2f}",
                f"{r['threshold']:.4f}",
                f"{r['sensitivity']:.3f}",
                f"{r['specificity']:.3f}",
                f"{100 * r['referred_fraction']:.1f}%",
            ]
            for r in rows
        ],
        ["target sensitivity", "t", "sensitivity", "specificity", "referred"],
    )


def sensitivity_floor(point: dict[str, Any]) -> float:
    """The lower 95% bound of sensitivity: the lower of bootstrap and Wilson (the bootstrap
    collapses to 1.0 when every malignant case scores above the threshold)."""
    return min(point["ci95"]["sensitivity"][0], point["wilson95"]["sensitivity"][0])


def refuse_refer_all(point: dict[str, Any], cases: Cases, chosen: dict[str, Any]) -> None:
    """Refuse a threshold that refers every case: such a model sorts nothing (the trade-offs of
    other targets are shown, so the clinic can choose one that does)."""
    if point["tn"] > 0:
        return
    click.echo("other targets on the calibration cases (pass --target-sensitivity):", err=True)
    click.echo(tradeoff_table(tradeoff(cases, chosen["margin_se"])), err=True)
    raise CalibrationError(
        f"refusing: to keep sensitivity {chosen['target_sensitivity']} at this site the threshold "
        f"would be {chosen['threshold']:.4f}, which refers every one of these cases "
        "(specificity 0): the model cannot tell this site's benign lesions apart at that target; "
        "choose a lower --target-sensitivity from the table above, or do not use it here"
    )


def referral_warning(point: dict[str, Any]) -> str | None:
    """Why the new threshold sorts too little (refers most cases / few benign sent on), or None."""
    referred, spec = point["referred_fraction"], point["specificity"]
    if referred <= MAX_REFERRED and (spec is None or spec >= MIN_SPECIFICITY):
        return None
    return (
        f"the new threshold refers {100 * referred:.1f}% of these cases (specificity "
        f"{spec:.3f}): at this site the model sorts few benign lesions out at this target; "
        "see the other targets' trade-offs above before relying on it"
    )


def holdout_verdict(points: dict[str, Any], target: float) -> tuple[bool, str] | None:
    """(met, one line) whether the held-out sensitivity at the new threshold met the target,
    with its 95% CI; None without held-out cases."""
    held = (points.get("holdout") or {}).get("after")
    if not held or held["sensitivity"] is None:
        return None
    sens, (lo, hi) = held["sensitivity"], held["wilson95"]["sensitivity"]
    n = held["tp"] + held["fn"]
    met = sens >= target
    note = ""
    if not met:
        note = (
            " (within this sample's noise: its 95% CI reaches the target)"
            if hi >= target
            else " (its 95% CI stays below the target: the threshold does not hold at this site)"
        )
    return met, (
        f"held-out check: sensitivity {sens:.3f} [{lo:.3f}, {hi:.3f}] on {n} malignant held-out "
        f"cases {'met' if met else 'did NOT meet'} the target {target}{note}"
    )


# --- the new card -------------------------------------------------------------------------------


def calibration_record(
    card: dict[str, Any],
    site: str,
    index: Index,
    cases: Cases,
    chosen: dict[str, Any],
    points: dict[str, Any],
    skipped: int,
) -> dict[str, Any]:
    """The card's `calibration` block; the training threshold survives recalibration."""
    previous = card.get("calibration")
    original = previous["original_threshold"] if previous else card.get("threshold")
    return {
        "site": site,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool": {"dermedge": __version__},
        "threshold": chosen["threshold"],
        "original_threshold": original,
        "replaced_threshold": card.get("threshold"),
        "target_sensitivity": chosen["target_sensitivity"],
        "margin_se": chosen["margin_se"],
        "effective_target": chosen["effective_target"],
        "data": {
            "root": index.root,
            "layout": index.layout,
            "sha256": data_digest(cases.records),
            "counts": cases.counts(),
            "skipped": skipped,
        },
        "before": points["before"],
        "after": points["after"],
        "holdout": points.get("holdout"),
        "previous": (
            {k: previous.get(k) for k in ("site", "date", "threshold", "data")}
            if previous
            else None
        ),
    }


def site_policy(card: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The card's threshold policy after calibration: the site's target, margin and own figures;
    the training policy (its validation figures) kept apart under `training_policy`, so that no
    training figure is read as the site's."""
    old = card.get("threshold_policy") or {}
    after = record["after"]
    return {
        "chosen_on": f"site calibration ({record['site']})",
        "target_sensitivity": record["target_sensitivity"],
        "margin_se": record["margin_se"],
        "effective_target": record["effective_target"],
        "site_sensitivity": after["sensitivity"],
        "site_specificity": after["specificity"],
        "site_referred_fraction": after["referred_fraction"],
        "site_cases": record["data"]["counts"],
        "training_policy": old.get("training_policy", old),
    }


def calibrated_card(card: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """A copy of the card at the site's threshold, with the calibration record."""
    new = dict(card)
    new["threshold"] = record["threshold"]
    new["threshold_policy"] = site_policy(card, record)
    new["calibration"] = record
    return new


def write_model(src: Path, card: dict[str, Any], out: Path) -> None:
    """The model bytes with the new card embedded, read back and checked, written atomically."""
    from dermedge.edge.card import embed_card

    data = embed_card(src.read_bytes(), card)  # read back and checked there
    atomic_write_bytes(out, data)


# --- report -------------------------------------------------------------------------------------


def _ci(point: dict[str, Any], key: str) -> str:
    """`value [lo, hi]` of a point's `key` with its bootstrap 95% CI, or n/a when it has none."""
    lo, hi = point["ci95"][key]
    v = point[key]
    return "n/a" if v is None else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def summary_table(points: dict[str, Any]) -> str:
    """Before/after sensitivity and specificity with CIs and counts, on each set of cases."""
    names = {
        "before": "calibration cases, old threshold",
        "after": "calibration cases, new threshold",
        "holdout_before": "held-out cases, old threshold",
        "holdout_after": "held-out cases, new threshold",
    }
    rows = []
    flat = dict(points)
    if points.get("holdout"):
        flat["holdout_before"], flat["holdout_after"] = (
            points["holdout"]["before"],
            points["holdout"]["after"],
        )
    for key, label in names.items():
        p = flat.get(key)
        if p:
            rows.append(
                [
                    label,
                    f"{p['threshold']:.4f}",
                    _ci(p, "sensitivity"),
                    _ci(p, "specificity"),
                    f"{p['tp']}/{p['fn']}/{p['tn']}/{p['fp']}",
                    f"{100 * p['referred_fraction']:.1f}%",
                ]
            )
    return format_table(
        rows,
        [
            "cases, threshold",
            "t",
            "sensitivity (95% CI)",
            "specificity (95% CI)",
            "tp/fn/tn/fp",
            "referred",
        ],
    )


def plot_roc(cases: Cases, points: dict[str, Any], path: Path, title: str) -> Path | None:
    """ROC of the calibration cases with the old and new operating points (matplotlib optional)."""
    try:
        from dermedge.plotting import new_figure, save_png

        fig = new_figure()
    except ImportError:
        warn("ROC plot skipped: matplotlib is not installed (pip install matplotlib)")
        return None
    from dermedge.metrics import roc_auc, roc_curve

    ax = fig.add_subplot(111)
    fpr, tpr = roc_curve(cases.y, cases.prob)
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC {roc_auc(cases.y, cases.prob):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    for key, style in (("before", "s"), ("after", "o")):
        p = points[key]
        ax.plot(
            1 - p["specificity"],
            p["sensitivity"],
            style,
            ms=9,
            label=f"{'old' if key == 'before' else 'new'} t={p['threshold']:.3f}: "
            f"sens {p['sensitivity']:.3f}, spec {p['specificity']:.3f}",
        )
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title)
    return save_png(fig, path)


def write_report(out: Path, report: dict[str, Any], cases: Cases) -> Path:
    """`<out>.calibration/`: report.json, predictions.csv and roc.png beside the new model."""
    folder = out.with_name(out.stem + ".calibration")
    folder.mkdir(parents=True, exist_ok=True)
    plot_roc(
        cases,
        report["points"],
        folder / "roc.png",
        f"calibration on {report['site']} (n={len(cases.y)})",
    )
    lines = ["path,label,prob_malignant"] + [
        f"{r.path},{r.label},{p:.6f}" for r, p in zip(cases.records, cases.prob, strict=True)
    ]
    atomic_write_text(folder / "predictions.csv", "\n".join(lines) + "\n")
    atomic_write_text(folder / "report.json", json.dumps(clean_json(report), indent=2) + "\n")
    return folder


# --- the command --------------------------------------------------------------------------------


def _load_model(path: str, threads: int | None, allow_unsealed: bool = False) -> Any:
    """The model under the edge runtime; CalibrationError with the first line of why not."""
    from dermedge.edge.runtime import EdgeError, EdgeModel

    try:
        return EdgeModel(path, threads=threads, allow_unsealed=allow_unsealed)
    except (EdgeError, ValueError, OSError) as e:
        raise CalibrationError(str(e).splitlines()[0]) from e


def _score(model: Any, records: list[Record]) -> tuple[Cases, dict[str, str]]:
    """`score`, with a model that fails when run on a case as one CalibrationError line."""
    from dermedge.edge.runtime import EdgeError

    try:
        return score(model, records)
    except EdgeError as e:
        raise CalibrationError(str(e).splitlines()[0]) from e


def _split_cases(cases: Cases, holdout: float, seed: int) -> tuple[Cases, Cases | None]:
    """(calibration cases, held-out cases or None): whole lesions held out when `holdout` > 0."""
    if not holdout:
        return cases, None
    calib, held = holdout_split(cases.records, holdout, seed)
    return cases.subset(calib), cases.subset(held)


def _points(model: Any, calib: Cases, held: Cases | None, threshold: float) -> dict[str, Any]:
    """Operating points at the old and new thresholds, on calibration and held-out cases."""
    points = {
        "before": operating_point(calib, model.threshold),
        "after": operating_point(calib, threshold),
    }
    if held is not None and len(held.y):
        points["holdout"] = {
            "counts": held.counts(),
            "before": operating_point(held, model.threshold),
            "after": operating_point(held, threshold),
        }
    return points


@click.command("calibrate")
@click.argument("model_path", metavar="MODEL.tflite", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    "root",
    required=True,
    metavar="ROOT",
    help="The site's labelled cases: benign/ + malignant/ folders or any layout `dermedge data` reads.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="The calibrated model to write (a copy; MODEL is left as it is).",
)
@click.option(
    "--target-sensitivity",
    default=None,
    type=click.FloatRange(0.5, 1.0, max_open=True),
    help="Sensitivity to keep at this site [default: the card's, 0.95].",
)
@click.option(
    "--site", default=None, help="Name of the site/device [default: the data folder's name]."
)
@click.option(
    "--holdout",
    default=0.0,
    type=click.FloatRange(0.0, 0.9),
    help="Fraction of lesions held out (grouped, per class) to check the new threshold on.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the held-out split.")
@click.option(
    "--min-cases",
    default=MIN_PER_CLASS,
    show_default=True,
    type=click.IntRange(1),
    help="Refuse with fewer malignant or benign cases than this.",
)
@click.option("--threads", default=None, type=click.IntRange(1), help="Interpreter threads.")
@click.option(
    "--allow-unsealed",
    is_flag=True,
    help="Use a model whose card records no readable file digest (loud warning) [refuse].",
)
@click.option(
    "--adapt",
    "adapt_head",
    is_flag=True,
    help="Also re-fit the last layer on the site's cases (the model's feature output), kept only "
    "when it beats threshold-only calibration; the guard learns the site's features.",
)
@click.option(
    "--curve",
    is_flag=True,
    help="With --adapt: a learning curve on the site's cases (curve.md, curve.png): would more "
    "cases pay?",
)
def calibrate(
    model_path: str,
    root: str,
    out: str,
    target_sensitivity: float | None,
    site: str | None,
    holdout: float,
    seed: int,
    min_cases: int,
    threads: int | None,
    allow_unsealed: bool,
    adapt_head: bool,
    curve: bool,
) -> None:
    """Choose the referral threshold for one site from its own labelled cases, and write a copy
    of the model with it (the card records the calibration). Runs on the edge install."""
    src, dst = Path(model_path), Path(out)
    if dst.resolve() == src.resolve():
        raise CalibrationError("--out must differ from MODEL: the uncalibrated model is kept")
    model = _load_model(model_path, threads, allow_unsealed)
    card = model.card or {}
    index = read_site_data(root)
    if curve and not adapt_head:
        raise CalibrationError("--curve needs --adapt")
    if adapt_head:
        from dermedge.edge import adapt_site

        opts = adapt_site.Options(
            site or Path(index.root).name, target_sensitivity, holdout, seed, min_cases, curve
        )
        adapt_site.run(model, src, dst, index, opts)
        return
    cases, bad = _score(model, index.records)
    calib, held = _split_cases(cases, holdout, seed)
    check_sample(calib, min_cases)
    target = target_sensitivity or float(training_policy(card).get("target_sensitivity", 0.95))
    chosen = new_threshold(calib, target, margin_of(card))
    points = _points(model, calib, held, chosen["threshold"])
    refuse_refer_all(points["after"], calib, chosen)
    if "holdout" in points:
        verdict = holdout_verdict(points, target)
        points["holdout"]["met_target"] = verdict[0] if verdict else None
    site = site or Path(index.root).name
    if card.get("calibration"):
        warn(
            f"{src.name} was calibrated for {card['calibration'].get('site')!r} "
            f"({(card['calibration'].get('date') or '')[:10]}): that calibration is replaced"
        )
    record = calibration_record(
        card, site, index, calib, chosen, points, len(index.problems) + len(bad)
    )
    write_model(src, calibrated_card(card, record), dst)
    report = {
        "model": str(src),
        "out": str(dst),
        "site": site,
        "chosen": chosen,
        "points": points,
        "counts": calib.counts(),
        "tradeoff": tradeoff(calib, chosen["margin_se"]),
        "skipped": {**{p.path: p.reason for p in index.problems}, **bad},
        "disclaimer": DISCLAIMER,
    }
    folder = write_report(dst, report, calib)
    _print_summary(model, record, report, dst, folder)


def _print_summary(
    model: Any, record: dict[str, Any], report: dict[str, Any], dst: Path, folder: Path
) -> None:
    """Print the before/after table, the trade-offs, the new threshold and any warning."""
    c, points = record["data"]["counts"], report["points"]
    click.echo(summary_table(points))
    click.echo("\nother targets on the calibration cases (same margin; pass --target-sensitivity):")
    click.echo(tradeoff_table(report["tradeoff"]))
    click.echo(
        f"\nsite {record['site']!r}: {c['malignant']} malignant + {c['benign']} benign cases; "
        f"threshold {model.threshold:.4f} -> {record['threshold']:.4f} (target sensitivity "
        f"{record['target_sensitivity']} + {record['margin_se']} SE = "
        f"{record['effective_target']:.3f} on these cases)"
    )
    too_many = referral_warning(points["after"])
    if too_many:
        warn(too_many)
    verdict = holdout_verdict(points, record["target_sensitivity"])
    if verdict:
        (click.echo if verdict[0] else warn)(verdict[1])
    floor = sensitivity_floor(points["after"])
    if math.isfinite(floor) and floor < LOW_SENSITIVITY:
        warn(
            f"with {c['malignant']} malignant cases the sensitivity at the new threshold may be as "
            f"low as {floor:.2f} (95% CI); collect more malignant cases before relying on it"
        )
    click.echo(
        f"wrote {dst} (card: threshold and calibration) and {folder}/ "
        "(report.json, predictions.csv, roc.png)"
    )
    click.echo(DISCLAIMER)

"""External evaluation: a model on a dataset it never trained on, and its record in the card.

`dermedge evaluate MODEL --data ROOT --external` first checks, with the project's own content
hashes (`dermedge.data.dedup`: sha256 plus pHash/thumbnail near-duplicates), that no external
photo is in the model's training manifest (every split of it: val chose the threshold, test was
looked at), and refuses when one is. It then reports AUC with a bootstrap CI; sensitivity and
specificity at the card threshold (what a field worker lives with), at the Youden threshold and
at the threshold giving sensitivity 0.95 on this set (both chosen on the test set itself: for
information only); the referral rate per diagnosis; calibration. `dermedge card --add-external`
stores a compact summary under card["external"][dataset].

Import-light on purpose: numpy, PIL and matplotlib are imported by the functions that need them,
so `edge-classify -v` and `dermedge convert --inspect` can format the card's external results.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from dermedge import DISCLAIMER, __version__
from dermedge.data.index import Record
from dermedge.edge.card_text import EXTERNAL_KIND as KIND
from dermedge.metrics import clean_json

SENS_TARGET = 0.95
TEST_SET_NOTE = "chosen on this test set itself: for information only, not an operating point"


class ExternalError(click.ClickException):
    """External evaluation cannot go on (overlap, no threshold, bad file); exit code 2."""

    exit_code = 2


def _one_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def warn(msg: str) -> None:
    """A loud warning on stderr."""
    click.secho(f"WARNING: {msg}", fg="yellow", bold=True, err=True)


# --- which data the model trained on ------------------------------------------------------------


def _sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def training_manifest(
    run_dir: Path | None, card: dict[str, Any] | None, explicit: str | None
) -> tuple[Path | None, str]:
    """The training manifest CSV (--train-manifest, RUN/manifest.csv, or the card's own data
    source when its sha256 matches the card's) and how it was found, or (None, why not)."""
    if explicit:
        p = Path(explicit)
        p = p / "manifest.csv" if p.is_dir() else p
        if not p.is_file():
            raise ExternalError(f"--train-manifest {explicit}: no manifest.csv there")
        return p, "given with --train-manifest"
    if run_dir is not None and (run_dir / "manifest.csv").is_file():
        return run_dir / "manifest.csv", "the run folder's"
    data = (card or {}).get("data") or {}
    want, src = data.get("manifest_sha256"), data.get("source")
    if src and want:
        cand = Path(src) / (data.get("manifest") or "manifest.csv")
        if cand.is_file() and _sha256(cand) == want:
            return cand, "the card's data source (sha256 matches the card)"
        if cand.is_file():
            return None, (
                f"{cand} (named by the card) is not the manifest the model was trained "
                "on (sha256 differs)"
            )
        return None, f"the card's training manifest {cand} is not here"
    return None, "the model has no run folder and its card names no training manifest"


@dataclass
class Overlap:
    """External photos that are also in the training manifest (byte-identical or near-duplicate)."""

    checked: bool
    manifest: str | None = None
    how: str = ""
    train_images: int = 0
    exact: list[tuple[str, str]] = field(default_factory=list)  # (external path, training path)
    near: list[tuple[str, str, int]] = field(default_factory=list)  # (..., pHash bits)
    train_split: dict[str, str] = field(default_factory=dict)  # training path -> its split

    @property
    def images(self) -> list[str]:
        """The external images that overlap, each once."""
        return sorted({a for a, _ in self.exact} | {a for a, _, _ in self.near})

    def by_split(self) -> dict[str, int]:
        """Overlapping external images per split of the training manifest they match."""
        first: dict[str, str] = {}
        for a, b in [*self.exact, *((x, y) for x, y, _ in self.near)]:
            first.setdefault(a, self.train_split.get(b, "?"))
        return dict(Counter(first.values()))

    def to_dict(self) -> dict[str, Any]:
        """The JSON view (metrics.json), examples capped at 20 of each kind."""
        return {
            "checked": self.checked,
            "manifest": self.manifest,
            "how": self.how,
            "train_images": self.train_images,
            "overlapping": len(self.images),
            "exact": len({a for a, _ in self.exact}),
            "near": len({a for a, _, _ in self.near}),
            "by_training_split": self.by_split(),
            "examples_exact": [list(x) for x in self.exact[:20]],
            "examples_near": [list(x) for x in self.near[:20]],
        }


def check_overlap(
    external: list[Record], train: list[Record], manifest: str, how: str, progress: bool = True
) -> Overlap:
    """Hash both sets (cached) and pair every external photo with training photos of same bytes
    or the same picture (pHash candidate confirmed by the thumbnail)."""
    from dermedge.data.dedup import hash_files, near_duplicates

    ext_h, _ = hash_files([r.path for r in external], progress, "hashing external images")
    tr_h, _ = hash_files([r.path for r in train], progress, "hashing training images")
    by_sha: dict[str, str] = {}
    for p, h in tr_h.items():
        by_sha.setdefault(h.sha256, p)
    ov = Overlap(True, manifest, how, len(tr_h), train_split={r.path: r.split or "" for r in train})
    ov.exact = [(p, by_sha[h.sha256]) for p, h in ext_h.items() if h.sha256 in by_sha]
    exact = {a for a, _ in ov.exact}
    ep, tp = list(ext_h), list(tr_h)
    pairs = near_duplicates([ext_h[p] for p in ep], [tr_h[p] for p in tp])
    seen: set[str] = set()
    for i, j, d in sorted(pairs, key=lambda t: t[2]):
        if ep[i] not in exact and ep[i] not in seen:
            seen.add(ep[i])
            ov.near.append((ep[i], tp[j], d))
    return ov


def overlap_for(
    records: list[Record],
    run_dir: Path | None,
    card: dict[str, Any] | None,
    explicit: str | None,
    allow: bool,
    progress: bool = True,
) -> Overlap:
    """Check overlap with the training data; refuse (exit 2) on any, unless `allow` (warned)."""
    from dermedge.data.manifest import ManifestError, read_manifest

    path, how = training_manifest(run_dir, card, explicit)
    if path is None:
        warn(
            f"overlap with the training data NOT CHECKED: {how}. The figures below may "
            "include photos the model was trained on; pass --train-manifest PATH."
        )
        return Overlap(False, None, how)
    try:
        train = read_manifest(path)
    except (ManifestError, OSError, ValueError) as e:
        raise ExternalError(f"cannot read the training manifest {path}: {_one_line(e)}") from e
    ov = check_overlap(records, train, str(path), how, progress)
    n = len(ov.images)
    if n == 0:
        click.echo(
            f"overlap check: none of {len(records)} external images is among the "
            f"{ov.train_images} images of {path} (sha256 + pHash/thumbnail)"
        )
        return ov
    d = ov.to_dict()
    msg = (
        f"{n} of {len(records)} external images are in the model's training data {path} "
        f"({d['exact']} byte-identical, {d['near']} near-duplicate; by split "
        f"{d['by_training_split']})"
    )
    if not allow:
        raise ExternalError(f"refusing: {msg}; remove them, or pass --allow-overlap")
    warn(
        f"--allow-overlap: {msg}. These figures are NOT an external evaluation: they are "
        "inflated by photos the model has seen."
    )
    return ov


# --- predictions --------------------------------------------------------------------------------


@dataclass
class Predictions:
    """P(malignant) of the readable external images, with labels and diagnoses."""

    y: Any
    prob: Any
    paths: list[str]
    dx: list[str]
    skipped: dict[str, str]


def _contract(model_path: Path, card: dict[str, Any] | None) -> Any:
    """The card's input contract; ExternalError when the model has no card with one."""
    from dermedge.data.contract import InputContract

    if card is None or "input" not in card:
        raise ExternalError(f"{model_path}: no model card with an input contract")
    return InputContract.from_dict(card["input"])


def _predictor(model_path: Path, batch: int) -> Any:
    """A function pixels -> P(malignant) for a .tflite (edge runtime) or a .keras model."""
    if model_path.suffix == ".tflite":
        from dermedge.edge.runtime import EdgeError, EdgeModel

        try:
            return EdgeModel(model_path).predict
        except EdgeError as e:
            raise ExternalError(_one_line(e)) from e
    import keras

    from dermedge.train.trainer import predict

    model = keras.models.load_model(model_path, compile=False)
    return lambda x: predict(model, x, batch)


def predict_records(
    model_path: Path,
    card: dict[str, Any] | None,
    records: list[Record],
    batch: int = 64,
    progress: bool = True,
) -> Predictions:
    """Load the images through the card's contract and run the model on them in batches."""
    import numpy as np

    from dermedge.data.images import load_images
    from dermedge.runs import runs_root

    contract = _contract(model_path, card)
    run = _predictor(model_path, batch)
    paths = [r.path for r in records]
    x, kept, bad = load_images(
        paths, contract, cache_dir=runs_root() / "cache", progress=progress, desc="external images"
    )
    if not kept:
        raise ExternalError("no readable images to evaluate")
    prob = np.concatenate(
        [
            np.asarray(run(x[i : i + batch]), dtype=np.float64).ravel()
            for i in range(0, len(kept), batch)
        ]
    )
    recs = [records[i] for i in kept]
    y = np.asarray([1 if r.label == "malignant" else 0 for r in recs], dtype=np.int64)
    return Predictions(y, prob, [r.path for r in recs], [r.dx or r.label for r in recs], bad)


# --- the report ---------------------------------------------------------------------------------


def _point(y: Any, p: Any, thr: float, n_boot: int, seed: int) -> dict[str, Any]:
    """Sensitivity and specificity at one threshold, with counts and bootstrap 95% CIs."""
    from dermedge.train import evaluate as ev

    m = ev.binary_metrics(y, p, thr)
    ci = ev.bootstrap_ci(y, p, thr, n_boot=n_boot, seed=seed, metrics=("recall", "specificity"))
    return {
        "threshold": float(thr),
        "sensitivity": m["recall"],
        "specificity": m["specificity"],
        "ci95": {"sensitivity": list(ci["recall"]), "specificity": list(ci["specificity"])},
        "tp": m["tp"],
        "fn": m["fn"],
        "tn": m["tn"],
        "fp": m["fp"],
        "referred_fraction": (m["tp"] + m["fp"]) / max(1, m["n"]),
    }


def dataset_name(source: str, records: list[Record]) -> str:
    """The records' one source dataset (Record.source), else the data folder's name."""
    names = {r.source for r in records if r.source}
    return names.pop() if len(names) == 1 else Path(source).resolve().name


def build_report(
    pred: Predictions, threshold: float, threshold_from: str, n_boot: int, seed: int = 0
) -> dict[str, Any]:
    """Metrics of an external evaluation: evaluate_predictions' report plus the three operating
    points, referral rates per diagnosis and the date and tool version."""
    from dermedge.train import evaluate as ev

    y, p = pred.y, pred.prob
    report = ev.evaluate_predictions(y, p, threshold, None, n_boot=n_boot, seed=seed)
    points: dict[str, Any] = {
        "card": {**_point(y, p, threshold, n_boot, seed), "from": threshold_from}
    }
    yt = ev.youden_threshold(y, p)
    if math.isfinite(yt):
        points["youden"] = {**_point(y, p, yt, n_boot, seed), "note": TEST_SET_NOTE}
    if y.sum():
        st = ev.choose_threshold(y, p, SENS_TARGET)["threshold"]
        points["sensitivity_0.95"] = {**_point(y, p, st, n_boot, seed), "note": TEST_SET_NOTE}
    report.update(
        {
            "kind": KIND,
            "thresholds": points,
            "per_dx": ev.group_referral_rates(pred.dx, y, p, threshold),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tool": {"dermedge": __version__},
            "skipped": pred.skipped,
        }
    )
    return clean_json(report)


def _model_info(model_path: Path, card: dict[str, Any] | None) -> dict[str, Any]:
    """The model's path and file sha256 with its card's main fields, for the report."""
    c = card or {}
    return {
        "model": str(model_path),
        "model_sha256": _sha256(model_path),
        "model_card": {
            k: c.get(k) for k in ("name", "arch", "quantization", "created", "threshold")
        },
    }


def _pct(v: float | None) -> str:
    """A fraction as a percentage with one decimal, or n/a for None."""
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _ci(v: float | None, ci: list[float | None] | None, pct: bool = False) -> str:
    """`value [lo, hi]` (3 decimals, or percentages with `pct`); the value alone without a CI."""
    f = _pct if pct else (lambda x: "n/a" if x is None else f"{x:.3f}")
    if not ci or ci[0] is None:
        return f(v)
    return f"{f(v)} [{f(ci[0])}, {f(ci[1])}]"


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """Rows of the printed summary: AUC, then sens/spec (CI, counts) at each threshold."""
    rows = [["ROC AUC", _ci(report["roc_auc"], report["roc_auc_ci95"]), "", ""]]
    names = {
        "card": "card threshold",
        "youden": "Youden (test-set)",
        "sensitivity_0.95": "sens 0.95 (test-set)",
    }
    for key, pt in report["thresholds"].items():
        sens = f"{_ci(pt['sensitivity'], pt['ci95']['sensitivity'])} ({pt['tp']}/{pt['tp'] + pt['fn']})"
        spec = f"{_ci(pt['specificity'], pt['ci95']['specificity'])} ({pt['tn']}/{pt['tn'] + pt['fp']})"
        rows.append(
            [f"{names[key]} t={pt['threshold']:.4f}", sens, spec, _pct(pt["referred_fraction"])]
        )
    cal = report["calibration"]
    rows.append(["ECE / Brier", f"{report['ece']:.4f} / {cal['brier']:.4f}", "", ""])
    return rows


def summary_table(report: dict[str, Any]) -> str:
    """The printed tables: operating points, then referral rate per diagnosis."""
    from dermedge.runs import format_table

    head = format_table(
        summary_rows(report), ["metric (95% CI)", "sensitivity", "specificity", "referred"]
    )
    dx = [
        [
            r["group"],
            r["label"],
            r["n"],
            r["referred"],
            _ci(r["referred_fraction"], r["ci95"], True),
        ]
        for r in report["per_dx"]
    ]
    thr = report["thresholds"]["card"]["threshold"]
    tail = format_table(
        dx, ["diagnosis", "label", "n", "referred", f"referred at t={thr:.4f} [95% CI]"]
    )
    return f"{head}\n\n{tail}"


def _overlap_md(ov: dict[str, Any]) -> str:
    """The report.md sentence on the overlap check: not checked, overlap allowed, or none found."""
    if not ov["checked"]:
        return f"**NOT CHECKED** ({ov['how']}): these images may include training photos."
    if ov["overlapping"]:
        return (
            f"**{ov['overlapping']} overlapping images evaluated anyway (--allow-overlap)**: "
            f"{ov['exact']} byte-identical, {ov['near']} near-duplicate, against "
            f"`{ov['manifest']}`. Not an external evaluation."
        )
    return (
        f"none: no image is among the {ov['train_images']} images of `{ov['manifest']}` "
        f"({ov['how']}; sha256 + pHash/thumbnail near-duplicates)"
    )


def report_markdown(report: dict[str, Any]) -> str:
    """report.md: what was evaluated, the overlap check, the tables and the plots."""
    mc = report["model_card"]
    lines = [
        f"# External evaluation: {mc.get('name') or Path(report['model']).stem} on "
        f"{report['dataset']}",
        "",
        f"> {DISCLAIMER}",
        "",
        f"- model: `{report['model']}` ({mc.get('arch')}, {mc.get('quantization')}), "
        f"sha256 `{report['model_sha256'][:16]}`",
        f"- data: `{report['data']}` ({report['dataset']}), {report['n']} images, "
        f"{report['positives']} malignant; {len(report['skipped'])} unreadable skipped",
        f"- overlap with the training data: {_overlap_md(report['overlap'])}",
        f"- card threshold {report['thresholds']['card']['threshold']:.4f} "
        f"({report['thresholds']['card']['from']}); the Youden and sensitivity-0.95 "
        f"thresholds are {TEST_SET_NOTE}",
        f"- {report['bootstrap']['n_boot']} stratified bootstrap resamples; per-diagnosis "
        "intervals are Wilson 95%",
        f"- {report['date']}, dermedge {report['tool']['dermedge']}",
        "",
        summary_table(report),
        "",
    ]
    lines += [f"![{k}]({v})" for k, v in report.get("plots", {}).items()]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict[str, Any], pred: Predictions, out_dir: Path, title: str) -> None:
    """PNGs, predictions.csv, report.md, then metrics.json (last: its presence means complete)."""
    from dermedge.data.io import atomic_write_text
    from dermedge.train import evaluate as ev

    out_dir.mkdir(parents=True, exist_ok=True)
    pts = report["thresholds"]
    marks = [("card", pts["card"]["threshold"])]
    marks += [
        (n, pts[k]["threshold"])
        for k, n in (("youden", "Youden"), ("sensitivity_0.95", "sens 0.95"))
        if k in pts
    ]
    plots = {
        "roc": ev.plot_roc_marked(pred.y, pred.prob, out_dir / "roc.png", marks, f"{title} ROC"),
        "reliability": ev.plot_reliability(report["calibration"], out_dir / "reliability.png"),
        "per_dx": ev.plot_referral_rates(
            report["per_dx"],
            out_dir / "per_dx.png",
            pts["card"]["threshold"],
            f"{title}: referred per diagnosis",
        ),
    }
    report["plots"] = {k: v.name for k, v in plots.items()}
    rows = ["path,label,dx,prob_malignant,decision"]
    thr = pts["card"]["threshold"]
    rows += [
        f"{q},{'malignant' if t else 'benign'},{d},{v:.6f},{'refer' if v >= thr else 'routine'}"
        for q, t, d, v in zip(pred.paths, pred.y, pred.dx, pred.prob, strict=True)
    ]
    atomic_write_text(out_dir / "predictions.csv", "\n".join(rows) + "\n")
    atomic_write_text(out_dir / "report.md", report_markdown(report))
    atomic_write_text(
        out_dir / "metrics.json", json.dumps(report, indent=2, allow_nan=False) + "\n"
    )


def default_out(model_path: Path, run_dir: Path | None, dataset: str) -> Path:
    """RUN/eval-<dataset>/ for a run, runs/eval/<model>-<dataset>/ for a bare model file."""
    if run_dir is not None:
        return run_dir / f"eval-{dataset}"
    from dermedge.runs import new_run_dir

    return new_run_dir("eval", f"{model_path.stem}-{dataset}", exist_ok=True)


def run_external(
    model_path: Path,
    run_dir: Path | None,
    card: dict[str, Any] | None,
    records: list[Record],
    source: str,
    out: str | None,
    threshold: float | None,
    train_manifest: str | None,
    allow_overlap: bool,
    n_boot: int,
    batch: int,
    progress: bool = True,
) -> tuple[dict[str, Any], Path]:
    """The whole stage: overlap check, predictions, report and files; (report, out folder)."""
    if not records:
        raise ExternalError(f"--data {source}: no labelled images")
    thr = threshold if threshold is not None else (card or {}).get("threshold")
    if thr is None:
        raise ExternalError(f"{model_path}: no card threshold; pass --threshold")
    dataset = dataset_name(source, records)
    overlap = overlap_for(records, run_dir, card, train_manifest, allow_overlap, progress)
    pred = predict_records(model_path, card, records, batch, progress)
    if pred.y.sum() in (0, pred.y.size):
        raise ExternalError(f"{dataset}: only one class among {pred.y.size} images; AUC undefined")
    report = build_report(
        pred, float(thr), "--threshold" if threshold is not None else "card", n_boot
    )
    report.update(
        {
            "dataset": dataset,
            "data": str(source),
            **_model_info(model_path, card),
            "overlap": overlap.to_dict(),
        }
    )
    out_dir = Path(out) if out else default_out(model_path, run_dir, dataset)
    write_outputs(
        report, pred, out_dir, f"{(card or {}).get('name', model_path.stem)} on {dataset}"
    )
    return report, out_dir


# --- the command (its card record: dermedge.edge.card_text.card_entry) --------------------------


def evaluate_external(
    model_path: Path,
    run_dir: Path | None,
    card: dict[str, Any] | None,
    records: list[Record],
    source: str,
    split: str | None,
    threshold: float | None,
    out: str | None,
    train_manifest: str | None,
    allow_overlap: bool,
    n_boot: int,
    batch: int,
) -> None:
    """`dermedge evaluate --external`: run the stage on every image (or `split`) and print it."""
    import sys

    if split and split != "all":
        records = [r for r in records if r.split == split]
        if not records:
            raise ExternalError(f"--data {source}: no images in split {split!r}")
    try:
        report, out_dir = run_external(
            model_path,
            run_dir,
            card,
            records,
            source,
            out,
            threshold,
            train_manifest,
            allow_overlap,
            n_boot,
            batch,
            progress=sys.stderr.isatty(),
        )
    except (OSError, ValueError) as e:
        raise ExternalError(_one_line(e)) from e
    click.echo(
        f"{model_path} on {report['dataset']} (external, {source}): {report['n']} images "
        f"({report['positives']} malignant)"
    )
    click.echo(summary_table(report))
    click.echo(f"Youden and sens-0.95 thresholds: {TEST_SET_NOTE}")
    click.echo(
        f"written: {out_dir}/metrics.json, report.md, predictions.csv, "
        + ", ".join(report["plots"].values())
    )
    click.echo(
        f"record it in the card: dermedge card {run_dir or model_path} "
        f"--add-external {out_dir}/metrics.json"
    )

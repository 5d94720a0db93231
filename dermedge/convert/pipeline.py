"""`dermedge convert`: export once, make each variant, gate it through the edge runtime, deliver.

Everything is written into a temporary folder beside the output and moved into place at the end,
so an error (or Ctrl-C) leaves nothing behind. Variants that pass go to `OUT/model_<v>.tflite`
(+ `.tflite.json` sidecar); variants that fail go to `OUT/rejected/` for inspection only.

This module is the stage (`run` and its named steps, the GateContext every variant shares); its
rooms are `variants` (convert, gate and file one variant), `gate_report` (report.json/.md) and
`gate_images` (the test, val and calibration pixels; `load_split` is re-exported here).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from dermedge import __version__
from dermedge.convert import (
    FILE_NAMES,
    REJECTED_DIR,
    ConvertError,
    gate,
    gate_report,
    log,
    quantize,
    source,
    variants,
)
from dermedge.convert.gate_images import load_calib, load_split
from dermedge.data.contract import InputContract
from dermedge.data.io import atomic_write_text
from dermedge.data.manifest import manifest_sha256
from dermedge.metrics import THRESHOLD_POOLS, clean_json, threshold_for_card_policy
from dermedge.runs import runs_root

__all__ = [  # the stage's own names, and load_split (its room gate_images) that callers import here
    "GateContext",
    "Options",
    "Result",
    "keras_predict",
    "load_split",
    "run",
]


@dataclass
class Options:
    quant: list[str]
    io: str = "uint8"
    calib_images: int = 300
    tolerances: gate.Tolerances = field(default_factory=gate.Tolerances)
    allow_float_fallback: bool = False
    data: str | None = None
    card: str | None = None
    out: str | None = None
    threads: int | None = None
    seed: int = 0
    rethreshold: bool = True
    guard: bool = True  # give each passing variant its unfamiliar-input guard (convert/guard.py)
    margin: float | None = None  # serve with this contract margin (contract.add_margin)
    # choose the threshold with this pool (metrics.THRESHOLD_POOLS)
    threshold_pool: str | None = None


@dataclass
class Result:
    out_dir: Path
    rows: list[dict[str, Any]]
    report: dict[str, Any]
    markdown: str
    passed: bool


def _versions() -> dict[str, str]:
    """Versions of dermedge, Python and the installed TensorFlow, Keras, LiteRT and numpy."""
    out = {"dermedge": __version__, "python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "ai-edge-litert", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def keras_predict(model: Any, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """P(malignant) of the Keras model for uint8 pixels (fed as float32 0..255)."""
    out = []
    for i in range(0, len(x), batch):
        p = model.predict_on_batch(x[i : i + batch].astype(np.float32))
        out.append(np.asarray(p, dtype=np.float64).reshape(len(x[i : i + batch]), -1)[:, 0])
    p = np.concatenate(out) if out else np.zeros(0)
    if p.size and (p.min() < -1e-6 or p.max() > 1 + 1e-6 or not np.isfinite(p).all()):
        raise ConvertError(
            f"the model's outputs ({p.min():.3g}..{p.max():.3g}) are not "
            "probabilities: its last layer must be a sigmoid (P(malignant))"
        )
    return p


def _recorded_test_metrics(
    card: dict[str, Any], manifest_hash: str, n_test: int
) -> tuple[dict | None, str]:
    """The training-time test metrics, when they were measured on exactly these images."""
    test = (card.get("metrics") or {}).get("test")
    if not isinstance(test, dict):
        return None, "the card records no test metrics"
    if (card.get("data") or {}).get("manifest_sha256") != manifest_hash:
        return None, "the card's test metrics come from another manifest"
    if test.get("n") not in (None, n_test):
        return None, f"the card's test metrics cover {test.get('n')} images, not {n_test}"
    return test, "checked against the card's recorded test metrics"


ValSet = tuple[np.ndarray, np.ndarray, list[str]]  # val pixels, labels and sources


@dataclass
class GateContext:
    """What every variant is converted and gated with: the source, the options, the test (and
    val) pixels, the Keras reference and the failures every variant shares."""

    src: source.Source
    opts: Options
    conversion: dict[str, Any]  # the card's conversion record, shared by every variant
    records: list[Any]
    x_test: np.ndarray
    y_test: np.ndarray
    p_ref: np.ndarray  # the Keras model's P(malignant) on x_test
    ref: dict[str, Any]  # its metrics at the card's threshold
    contract_failures: list[str]
    work: Path  # the temporary folder files are made in
    calib: np.ndarray | None = None  # int8 calibration pixels
    val: ValSet | None = None


def run(arg: str, opts: Options) -> Result:
    """Convert the model `arg` names into each variant of `opts.quant`, gate every one through the
    edge runtime against the Keras model, and deliver the files with report.json/.md."""
    t0 = time.time()
    src = _reframe(source.resolve(arg, opts.data, opts.card), opts)
    records = source.records(src.manifest)
    _check_test_split(records, src.manifest)
    calib_recs = (
        quantize.calibration_sample(records, opts.calib_images, opts.seed)
        if "int8" in opts.quant
        else []
    )
    out_dir = _out_dir(src, opts)
    quantize.quiet_tf()
    log(f"loading {src.model_path}")
    model = source.load_keras(src.model_path)
    contract_failures, notes = _check_contract(model, src)
    x_test, y_test, val = _gate_images(records, src.contract, opts.rethreshold or _reframed(src))
    if _reframed(src):
        src = _keras_threshold_reframed(model, src, val)
    calib, y_cal = None, np.zeros(0)
    if calib_recs:
        calib, y_cal, _ = load_calib(calib_recs, src.contract)
    mhash = manifest_sha256(src.manifest)
    p_ref, ref, recorded_failures, recorded_note = _keras_reference(
        model, src, mhash, x_test, y_test, opts.tolerances
    )
    contract_failures += recorded_failures
    notes.append(f"Keras through the card's contract: {recorded_note}")
    conversion = _conversion_record(src, opts, mhash, calib, y_cal)
    with _work_dir(out_dir) as work:
        ctx = GateContext(
            src=src,
            opts=opts,
            conversion=conversion,
            records=records,
            x_test=x_test,
            y_test=y_test,
            p_ref=p_ref,
            ref=ref,
            contract_failures=contract_failures,
            work=work,
            calib=calib,
            val=val,
        )
        rows, produced = _convert_all(ctx, model)
        all_rows = [gate_report.reference_row(src, ref), *rows]
        passed = all(r["verdict"] == "pass" for r in rows) and not contract_failures
        report = gate_report.report(ctx, all_rows, notes, passed, round(time.time() - t0, 1))
        md = gate_report.markdown(report, opts)
        atomic_write_text(
            work / "report.json", json.dumps(clean_json(report), indent=2, allow_nan=False) + "\n"
        )
        atomic_write_text(work / "report.md", md)
        _deliver(work, out_dir, produced, opts.quant)
    return Result(out_dir, all_rows, report, md, passed)


def _reframed(src: source.Source) -> bool:
    """Whether --margin / --threshold-pool changed the card the model was trained with."""
    return "reframed" in src.card


def _reframe(src: source.Source, opts: Options) -> source.Source:
    """The source served with --margin and/or --threshold-pool instead of the trained card's.

    The training-time metrics and threshold were measured without them: they move to
    card["reframed"] and the Keras threshold is chosen again on val (`_keras_threshold_reframed`).
    """
    if opts.margin is None and opts.threshold_pool is None:
        return src
    if opts.threshold_pool is not None and opts.threshold_pool not in THRESHOLD_POOLS:
        raise ConvertError(
            f"--threshold-pool {opts.threshold_pool}: expected one of {THRESHOLD_POOLS}"
        )
    policy = dict(src.card.get("threshold_policy") or {})
    if "target_sensitivity" not in policy:
        raise ConvertError("--margin/--threshold-pool need the card's threshold_policy (target)")
    try:
        contract = replace(
            src.contract, margin=src.contract.margin if opts.margin is None else opts.margin
        )
    except ValueError as e:
        raise ConvertError(f"--margin: {e}") from None
    card = {k: v for k, v in src.card.items() if k != "metrics"}
    card["reframed"] = {
        "trained": {
            "margin": src.contract.margin,
            "threshold": src.threshold,
            "threshold_pool": policy.get("pool"),
            "metrics": src.card.get("metrics"),
        },
        "served": {
            "margin": contract.margin,
            "threshold_pool": opts.threshold_pool or policy.get("pool"),
        },
    }
    card["input"] = contract.to_dict()
    card["threshold_policy"] = {**policy, "pool": opts.threshold_pool or policy.get("pool")}
    return replace(src, card=card, contract=contract)


def _keras_threshold_reframed(model: Any, src: source.Source, val: ValSet | None) -> source.Source:
    """The Keras threshold chosen again, by the card's policy, on val through the new contract."""
    if val is None:
        raise ConvertError("--margin/--threshold-pool need a val split with both classes")
    x_val, y_val, val_sources = val
    log(f"Keras on {len(y_val)} val images: the threshold for the served contract and policy")
    policy = src.card["threshold_policy"]
    chosen = threshold_for_card_policy(y_val, keras_predict(model, x_val), val_sources, policy)
    card = {**src.card, "threshold": chosen["threshold"]}
    card["threshold_policy"] = {
        **policy,
        "margin_se": chosen["margin_se"],
        "effective_target": chosen["effective_target"],
        "binding_source": chosen.get("binding_source"),
        "per_source": chosen.get("per_source"),
    }
    card["metrics"] = {"val": {"n": len(y_val), **chosen}}
    return replace(src, card=card, threshold=chosen["threshold"])


def _check_test_split(records: list[Any], manifest: Path) -> None:
    """Refuse a manifest whose test split is missing or has one class: the gate cannot measure."""
    test_recs = [r for r in records if r.split == "test"]
    if not test_recs:
        raise ConvertError(
            f"manifest {manifest} has no test split: the gate needs labelled test images"
        )
    if len({r.label for r in test_recs}) < 2:
        raise ConvertError(
            f"the test split of {manifest} has one class: AUC and sensitivity cannot be measured"
        )


def _out_dir(src: source.Source, opts: Options) -> Path:
    """--out, else runs/convert/<name>; refused when it is a file."""
    out_dir = Path(opts.out) if opts.out else runs_root() / "convert" / src.name
    if out_dir.exists() and not out_dir.is_dir():
        raise ConvertError(f"--out {out_dir} is a file, not a folder")
    return out_dir


def _check_contract(model: Any, src: source.Source) -> tuple[list[str], list[str]]:
    """The card's input contract against the model itself: (failures, notes)."""
    contract_failures = gate.check_size(src.contract.size, source.image_size(model))
    if contract_failures:  # the pixels would not even fit: nothing to convert
        raise ConvertError(contract_failures[0])
    norm = source.layer_normalization(model)
    contract_failures += gate.check_normalization(src.card["input"], norm)
    notes = (
        [] if norm else ["the model has no `normalize` layer: the card's mean/std were not checked"]
    )
    return contract_failures, notes


def _gate_images(
    records: list[Any], contract: InputContract, rethreshold: bool
) -> tuple[np.ndarray, np.ndarray, ValSet | None]:
    """Test pixels and labels, and (to re-choose thresholds) val pixels, labels and sources."""
    x_test, y_test, _ = load_split(records, "test", contract, "test images")
    val = None
    if rethreshold and any(r.split == "val" for r in records):
        x_val, y_val, val_paths = load_split(records, "val", contract, "val images")
        if len(set(y_val.tolist())) == 2:
            source_of = {r.path: r.source for r in records}
            val = (x_val, y_val, [source_of.get(p, "") for p in val_paths])
    if len(set(y_test.tolist())) < 2:
        raise ConvertError("the readable test images have one class: the gate cannot measure AUC")
    return x_test, y_test, val


def _keras_reference(
    model: Any,
    src: source.Source,
    mhash: str,
    x_test: np.ndarray,
    y_test: np.ndarray,
    tolerances: gate.Tolerances,
) -> tuple[np.ndarray, dict[str, Any], list[str], str]:
    """The Keras model's outputs and metrics on the test images, and how they compare with the
    card's recorded test metrics: (p_ref, ref, failures, note)."""
    log(f"Keras reference on {len(y_test)} test images")
    p_ref = keras_predict(model, x_test)
    ref = gate.metrics(y_test, p_ref, src.threshold)
    recorded, recorded_note = _recorded_test_metrics(src.card, mhash, len(y_test))
    return p_ref, ref, gate.check_recorded(ref, recorded, tolerances), recorded_note


def _conversion_record(
    src: source.Source, opts: Options, mhash: str, calib: np.ndarray | None, y_cal: np.ndarray
) -> dict[str, Any]:
    """The card's `conversion` section: tool, converter, settings, versions, calibration."""
    conversion: dict[str, Any] = {
        "tool": f"dermedge convert {__version__}",
        "converter": quantize.CONVERTER_PATH,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_sha256": source.sha256_file(src.model_path),
        "manifest": str(src.manifest),
        "manifest_sha256": mhash,
        "io": opts.io,
        "float_fallback": opts.allow_float_fallback,
        "per_channel": True,
        "tolerances": opts.tolerances.to_dict(),
        "versions": _versions(),
    }
    if calib is not None:
        conversion["calibration"] = {
            "split": "train",
            "images": int(len(calib)),
            "seed": opts.seed,
            "stratified": True,
            "per_class": _counts(y_cal),
        }
    return conversion


@contextlib.contextmanager
def _work_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside `out_dir`, always removed; on an error (or Ctrl-C) also the
    parent folder when it was made for it, so nothing is left behind."""
    out_parent_existed = out_dir.parent.exists()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.convert-", dir=out_dir.parent))
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if not out_parent_existed:
            with contextlib.suppress(OSError):
                out_dir.parent.rmdir()
        raise
    shutil.rmtree(work, ignore_errors=True)


def _convert_all(ctx: GateContext, model: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Export the Keras model once (a temporary SavedModel) and make every variant from it: the
    report's rows and the files made under `ctx.work`."""
    rows: list[dict[str, Any]] = []
    produced: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dermedge-savedmodel-") as sm_dir:
        log("exporting the Keras model (SavedModel)")
        saved = quantize.export_saved_model(model, Path(sm_dir) / "saved_model")
        for variant in ctx.opts.quant:
            rows.append(variants.variant_row(ctx, saved, variant, produced))
    return rows, produced


def _counts(y: np.ndarray) -> dict[str, int]:
    """How many benign (0) and malignant (1) labels there are."""
    return {"benign": int((y == 0).sum()), "malignant": int((y == 1).sum())}


def _file_mode() -> int:
    """rw for everyone the umask allows (mkstemp's 0600 would hide a model from a web server)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _deliver(work: Path, out_dir: Path, produced: list[str], requested: list[str]) -> None:
    """Move the new files into `out_dir`, replacing older copies of the requested variants."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (
        FILE_NAMES[v] for v in requested
    ):  # no stale copy of a variant re-made (or failed) now
        for old in (out_dir / name, out_dir / REJECTED_DIR / name):
            for p in (old, old.with_name(old.name + ".json")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
    mode = _file_mode()
    for rel in [*produced, *(r + ".json" for r in produced), "report.json", "report.md"]:
        dst = out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(work / rel, mode)
        os.replace(work / rel, dst)
    rej = out_dir / REJECTED_DIR
    if rej.is_dir() and not any(rej.iterdir()):
        rej.rmdir()

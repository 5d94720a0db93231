"""`dermedge convert`: export once, make each variant, gate it through the edge runtime, deliver.

Everything is written into a temporary folder beside the output and moved into place at the end,
so an error (or Ctrl-C) leaves nothing behind. Variants that pass go to `OUT/model_<v>.tflite`
(+ `.tflite.json` sidecar); variants that fail go to `OUT/rejected/` for inspection only.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from dermedge import __version__
from dermedge.convert import FILE_NAMES, REJECTED_DIR, ConvertError, gate, quantize, source
from dermedge.data.contract import InputContract
from dermedge.data.images import load_images
from dermedge.data.io import atomic_write_bytes, atomic_write_text
from dermedge.data.manifest import manifest_sha256
from dermedge.metrics import clean_json
from dermedge.runs import runs_root

LABELS = {"benign": 0, "malignant": 1}


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


@dataclass
class Result:
    out_dir: Path
    rows: list[dict[str, Any]]
    report: dict[str, Any]
    markdown: str
    passed: bool


def _log(msg: str) -> None:
    """Print a progress line to stderr."""
    print(msg, file=sys.stderr, flush=True)


def _versions() -> dict[str, str]:
    """Versions of dermedge, Python and the installed TensorFlow, Keras, LiteRT and numpy."""
    out = {"dermedge": __version__, "python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "ai-edge-litert", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def load_split(
    records: list[Any], split: str, contract: InputContract, what: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pixels, labels (0/1) and paths of one split's readable images; unreadable ones are named."""
    recs = [r for r in records if r.split == split]
    paths = [r.path for r in recs]
    x, kept, bad = load_images(paths, contract, cache_dir=str(runs_root() / "cache"), desc=what)
    if bad:
        first = next(iter(bad.items()))
        _log(f"warning: {len(bad)} unreadable {split} images skipped (e.g. {first[0]}: {first[1]})")
    y = np.asarray([LABELS.get(recs[i].label, -1) for i in kept], dtype=np.int64)
    if (y < 0).any():
        raise ConvertError(f"the manifest's {split} split has labels other than benign/malignant")
    return x, y, [paths[i] for i in kept]


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


def _variant_card(
    base: dict[str, Any],
    variant: str,
    src: source.Source,
    opts: Options,
    conversion: dict[str, Any],
    gate_info: dict[str, Any] | None,
) -> dict[str, Any]:
    """The variant's card: the run's card with its quantization, source, conversion and gate."""
    card = copy.deepcopy(base)
    card["quantization"] = variant
    card.setdefault("schema", "dermedge.card/1")
    card["source"] = {
        "run": str(src.run_dir) if src.run_dir else None,
        "model": str(src.model_path),
        "model_sha256": conversion["model_sha256"],
        "card": str(src.card_path),
    }
    card["conversion"] = {k: v for k, v in conversion.items() if k != "model_sha256"}
    card["conversion"]["variant"] = variant
    if variant != "int8":
        card["conversion"].pop("calibration", None)
        card["conversion"]["io"] = "float32"
    if gate_info is not None:
        card["gate"] = gate_info
    return clean_json(card)


def _embed(tflite: bytes, card: dict[str, Any]) -> bytes:
    """The .tflite with `card` embedded (read back and checked by `embed_card`)."""
    from dermedge.edge.card import embed_card

    data = embed_card(tflite, card)  # read back and checked there
    return data


def _evaluate_variant(
    path: Path,
    pixels: dict[str, np.ndarray],
    contract: InputContract,
    records: list[Any],
    threads: int | None,
) -> tuple[dict[str, np.ndarray], str]:
    """P(malignant) per split through the device code path (the file loaded once), contract from
    the file's card."""
    from dermedge.edge.runtime import EdgeError, EdgeModel

    try:
        em = EdgeModel(path, threads=threads)
    except EdgeError as e:
        raise ConvertError(f"the edge runtime cannot load {path.name}: {e}") from e
    probs = {}
    for split, x in pixels.items():
        if em.contract != contract:  # the embedded card is the source of truth on the device
            x, _, _ = load_split(records, split, em.contract, f"{split} images (card contract)")
        try:
            probs[split] = em.predict(x)
        except (EdgeError, ValueError, RuntimeError) as e:
            raise ConvertError(f"the edge runtime failed on {path.name}: {e}") from e
    return probs, em.runtime


def _variant_threshold(
    card: dict[str, Any],
    y_val: np.ndarray | None,
    p_val: np.ndarray | None,
    val_sources: list[str] | None = None,
) -> dict[str, Any]:
    """The variant's own operating threshold: the card's policy (target sensitivity on val, in
    every source when the card's pool is worst-source) applied to the variant's outputs, since
    quantization moves probabilities near the threshold (int8 outputs come in steps of ~0.02).
    fp32 computes what Keras does and keeps its threshold."""
    keep = {"threshold": float(card["threshold"]), "policy": {"variant_threshold": "keras"}}
    policy = card.get("threshold_policy") or {}
    if y_val is None or p_val is None or "target_sensitivity" not in policy:
        return keep
    from dermedge.metrics import choose_threshold_across_sources

    pool = val_sources if policy.get("pool") == "worst-source" else None
    chosen = choose_threshold_across_sources(
        y_val, p_val, pool, float(policy["target_sensitivity"]), float(policy.get("margin_se", 0.0))
    )
    return {
        "threshold": chosen["threshold"],
        "policy": {
            "variant_threshold": "rechosen on val through the edge runtime",
            "keras_threshold": float(card["threshold"]),
            "val_sensitivity": chosen["sensitivity"],
            "val_specificity": chosen["specificity"],
            "pool": chosen["pool"],
            "per_source": chosen.get("per_source"),
        },
    }


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
    src = source.resolve(arg, opts.data, opts.card)
    records = source.records(src.manifest)
    _check_test_split(records, src.manifest)
    calib_recs = (
        quantize.calibration_sample(records, opts.calib_images, opts.seed)
        if "int8" in opts.quant
        else []
    )
    out_dir = _out_dir(src, opts)
    quantize.quiet_tf()
    _log(f"loading {src.model_path}")
    model = source.load_keras(src.model_path)
    contract_failures, notes = _check_contract(model, src)
    x_test, y_test, val = _gate_images(records, src.contract, opts.rethreshold)
    calib, y_cal = None, np.zeros(0)
    if calib_recs:
        calib, y_cal, _ = _load_calib(calib_recs, src.contract)
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
        all_rows = [_reference_row(src, ref), *rows]
        passed = all(r["verdict"] == "pass" for r in rows) and not contract_failures
        report = _report(ctx, all_rows, notes, passed, round(time.time() - t0, 1))
        md = _markdown(report, opts)
        atomic_write_text(
            work / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n"
        )
        atomic_write_text(work / "report.md", md)
        _deliver(work, out_dir, produced, opts.quant)
    return Result(out_dir, all_rows, report, md, passed)


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
    _log(f"Keras reference on {len(y_test)} test images")
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
        _log("exporting the Keras model (SavedModel)")
        saved = quantize.export_saved_model(model, Path(sm_dir) / "saved_model")
        for variant in ctx.opts.quant:
            rows.append(_variant(ctx, saved, variant, produced))
    return rows, produced


def _reference_row(src: source.Source, ref: dict[str, Any]) -> dict[str, Any]:
    """The Keras model's row of the report: the reference every variant is compared with."""
    return {
        "variant": "keras",
        "file": str(src.model_path),
        "size_bytes": src.model_path.stat().st_size,
        **ref,
        "agreement": 1.0,
        "max_abs_dp": 0.0,
        "verdict": "reference",
        "failures": [],
    }


def _report(
    ctx: GateContext, rows: list[dict[str, Any]], notes: list[str], passed: bool, seconds: float
) -> dict[str, Any]:
    """report.json: the source, the gate's data and tolerances, every row and the verdict."""
    src, conversion = ctx.src, ctx.conversion
    return clean_json(
        {
            "source": {
                "name": src.name,
                "run": str(src.run_dir) if src.run_dir else None,
                "model": str(src.model_path),
                "card": str(src.card_path),
            },
            "manifest": str(src.manifest),
            "manifest_sha256": conversion["manifest_sha256"],
            "split": "test",
            "test_images": int(len(ctx.y_test)),
            "threshold": src.threshold,
            "contract": src.contract.to_dict(),
            "tolerances": ctx.opts.tolerances.to_dict(),
            "contract_failures": ctx.contract_failures,
            "notes": notes,
            "rows": rows,
            "verdict": "pass" if passed else "fail",
            "converter": quantize.CONVERTER_PATH,
            "versions": conversion["versions"],
            "calibration": conversion.get("calibration"),
            "seconds": seconds,
        }
    )


def _counts(y: np.ndarray) -> dict[str, int]:
    """How many benign (0) and malignant (1) labels there are."""
    return {"benign": int((y == 0).sum()), "malignant": int((y == 1).sum())}


def _load_calib(
    recs: list[Any], contract: InputContract
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pixels, labels and paths of the int8 calibration images; ConvertError on one class."""
    paths = [r.path for r in recs]
    x, kept, bad = load_images(
        paths, contract, cache_dir=str(runs_root() / "cache"), desc="calibration images"
    )
    if bad:
        _log(f"warning: {len(bad)} unreadable calibration images skipped")
    y = np.asarray([LABELS.get(recs[i].label, -1) for i in kept], dtype=np.int64)
    present = {int(v) for v in y if v >= 0}
    if len(present) < 2:
        raise ConvertError(
            "the calibration set has one class after skipping unreadable images; "
            "int8 needs both classes in the training split"
        )
    if len(x) < 50:
        _log(f"warning: only {len(x)} calibration images; int8 ranges may be poor (--calib-images)")
    return x, y, [paths[i] for i in kept]


def _variant(ctx: GateContext, saved: Path, variant: str, produced: list[str]) -> dict[str, Any]:
    """Convert, gate and file one variant: its report row (verdict "error" when it could not be
    made); the file it made is added to `produced`."""
    t = time.time()
    _log(f"{variant}: converting")
    row: dict[str, Any] = {"variant": variant, "file": None, "size_bytes": None}
    try:
        _make_variant(ctx, saved, variant, row, produced)
    except ConvertError as e:
        row.update(
            {"verdict": "error", "failures": [str(e)], "advice": gate.advice(variant, [str(e)])}
        )
    finally:
        shutil.rmtree(ctx.work / ".trial", ignore_errors=True)
    row["seconds"] = round(time.time() - t, 1)
    _log(f"{variant}: {row['verdict']} ({row['seconds']} s)")
    return row


def _make_variant(
    ctx: GateContext, saved: Path, variant: str, row: dict[str, Any], produced: list[str]
) -> None:
    """The steps of `_variant`: convert, run through the edge runtime, judge, file; fills `row`."""
    src, name = ctx.src, FILE_NAMES[variant]
    tfl, conv = _convert(ctx, saved, variant)
    # first with the card minus the gate, so the edge runtime reads the contract from the file
    trial = ctx.work / ".trial" / name
    atomic_write_bytes(
        trial, _embed(tfl, _variant_card(src.card, variant, src, ctx.opts, conv, None))
    )
    p_var, thr, runtime = _run_on_edge(ctx, variant, trial)
    cmp = gate.compare(ctx.y_test, ctx.p_ref, p_var, src.threshold, thr["threshold"])
    own = gate.judge(ctx.ref, cmp, ctx.opts.tolerances)
    failures = list(ctx.contract_failures) + own
    verdict = "pass" if not failures else "fail"
    card = _variant_card(
        src.card,
        variant,
        src,
        ctx.opts,
        conv,
        _gate_info(ctx, verdict, failures, thr, runtime, cmp),
    )
    card["threshold"] = thr["threshold"]
    card["threshold_policy"] = {**(src.card.get("threshold_policy") or {}), **thr["policy"]}
    rel = name if verdict == "pass" else f"{REJECTED_DIR}/{name}"
    final = _file_variant(ctx, tfl, card, rel, verdict == "pass", row)
    produced.append(rel)
    row.update(
        {
            "file": rel,
            "size_bytes": len(final),
            **cmp,
            "verdict": verdict,
            "failures": failures,
            "runtime": runtime,
        }
    )
    step = gate.output_step(p_var, src.threshold) if variant == "int8" else None
    if variant == "int8":
        row.update(
            io_quantization=conv["io_quantization"],
            float_ops=conv["float_ops"],
            output_step_at_threshold=step,
        )
    if own:
        n_cal = len(ctx.calib) if ctx.calib is not None else None
        row["advice"] = gate.advice(variant, own, n_cal, step)


def _convert(ctx: GateContext, saved: Path, variant: str) -> tuple[bytes, dict[str, Any]]:
    """The variant's .tflite bytes and its conversion record (int8: I/O quantization, float ops;
    refused when not fully integer unless float fallback is allowed)."""
    opts = ctx.opts
    tfl = quantize.convert(
        saved, variant, opts.io, ctx.calib if variant == "int8" else None, opts.allow_float_fallback
    )
    conv = dict(ctx.conversion)
    if variant == "int8":
        conv["io_quantization"] = quantize.io_details(tfl)
        fl = quantize.float_ops(tfl)
        conv["float_ops"] = fl
        if fl and not opts.allow_float_fallback:
            raise ConvertError(
                f"int8 is not fully integer: float ops {fl}; pass "
                "--allow-float-fallback to accept them"
            )
    return tfl, conv


def _run_on_edge(
    ctx: GateContext, variant: str, trial: Path
) -> tuple[np.ndarray, dict[str, Any], str]:
    """The trial file through the edge runtime: test P(malignant), the variant's own threshold
    (re-chosen on val; fp32 keeps Keras') and the runtime's name."""
    _log(f"{variant}: gating {len(ctx.y_test)} test images through the edge runtime")
    use_val = ctx.val if variant != "fp32" else None  # fp32 keeps Keras' threshold
    pixels = {"test": ctx.x_test, **({"val": use_val[0]} if use_val else {})}
    probs, runtime = _evaluate_variant(
        trial, pixels, ctx.src.contract, ctx.records, ctx.opts.threads
    )
    thr = _variant_threshold(
        ctx.src.card,
        use_val[1] if use_val else None,
        probs.get("val"),
        use_val[2] if use_val else None,
    )
    return probs["test"], thr, runtime


def _gate_info(
    ctx: GateContext,
    verdict: str,
    failures: list[str],
    thr: dict[str, Any],
    runtime: str,
    cmp: dict[str, Any],
) -> dict[str, Any]:
    """The card's `gate` section: verdict, failures, the test data and the metrics compared."""
    return {
        "verdict": verdict,
        "failures": failures,
        "split": "test",
        "test_images": int(len(ctx.y_test)),
        "manifest_sha256": ctx.conversion["manifest_sha256"],
        "threshold": thr["threshold"],
        "keras_threshold": ctx.src.threshold,
        "runtime": runtime,
        "tolerances": ctx.opts.tolerances.to_dict(),
        "keras": ctx.ref,
        "metrics": cmp,
    }


def _file_variant(
    ctx: GateContext, tfl: bytes, card: dict[str, Any], rel: str, passed: bool, row: dict[str, Any]
) -> bytes:
    """Write the variant with its card (a passing one then gets its guard, summary in `row`) and
    the card's .json sidecar under `ctx.work`; the final bytes."""
    final = _embed(tfl, card)
    atomic_write_bytes(ctx.work / rel, final)
    if passed and ctx.opts.guard:
        final, card, row["guard"] = _add_guard(ctx.work / rel, ctx.src.manifest)
    atomic_write_text(
        ctx.work / (rel + ".json"), json.dumps(card, indent=2, allow_nan=False) + "\n"
    )
    return final


def _file_mode() -> int:
    """rw for everyone the umask allows (mkstemp's 0600 would hide a model from a web server)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _add_guard(path: Path, manifest: Path) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """The variant with its guard, fitted on the run's own train split (its probabilities are
    checked bit-identical on val, so the gate's figures hold); bytes, card, fit summary."""
    from dermedge.convert.guard import add_guard
    from dermedge.edge.card import read_card, without_digest

    tmp = path.parent / f".guard-{path.stem}"
    try:
        fit = add_guard(str(path), str(manifest), tmp)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data = path.read_bytes()
    fit.pop("model", None)
    return data, without_digest(read_card(data) or {}), fit


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


def _markdown(report: dict[str, Any], opts: Options) -> str:
    """report.md: the gate table, tolerances, failures with advice, int8 I/O, notes and verdict."""
    rows = report["rows"]
    lines = [
        f"# dermedge convert: {report['source']['name']}",
        "",
        f"Gate on the test split of `{report['manifest']}` ({report['test_images']} images, "
        f"manifest sha256 {report['manifest_sha256'][:12]}), threshold "
        f"{report['threshold']:.4f}, variants run through the edge runtime.",
        "",
        gate.markdown_table(rows),
        "",
        "Tolerances: AUC drop <= {max_auc_drop}, accuracy drop <= {max_acc_drop}, sensitivity "
        "drop <= {max_sens_drop}, agreement >= {min_agreement}.".format(**report["tolerances"]),
    ]
    failed = [r for r in rows if r.get("failures")]
    if report["contract_failures"]:
        lines += [
            "",
            "## Input contract (fails every variant)",
            *(f"- FAIL: {f}" for f in report["contract_failures"]),
            f"- try: {gate.advice('', report['contract_failures'])}",
        ]
    own = [(r, [f for f in r["failures"] if f not in report["contract_failures"]]) for r in failed]
    if any(fs for _, fs in own):
        lines += ["", "## Failures"]
        for r, fs in own:
            if not fs:
                continue
            lines += [f"- **{r['variant']}** ({r['verdict']}):", *(f"  - {f}" for f in fs)]
            if r.get("advice"):
                lines += [f"  - try: {r['advice']}"]
    int8 = next((r for r in rows if r["variant"] == "int8" and r.get("io_quantization")), None)
    if int8:
        q, cal = int8["io_quantization"], report.get("calibration") or {}
        lines += [
            "",
            f"int8: {q['input']['dtype']} input (scale {q['input'].get('scale')}, zero point "
            f"{q['input'].get('zero_point')}), {q['output']['dtype']} output; calibrated on "
            f"{cal.get('images')} training images {cal.get('per_class')}; float ops: "
            f"{int8.get('float_ops') or 'none'}.",
        ]
    if report.get("notes"):
        lines += ["", "## Notes", *(f"- {n}" for n in report["notes"])]
    lines += ["", f"Verdict: **{report['verdict'].upper()}**", ""]
    return "\n".join(lines)

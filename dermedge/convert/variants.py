"""One variant from the exported SavedModel: convert it, run it through the edge runtime on the test
(and val) images, judge it against the Keras reference, write it with its card (and guard) under
the work folder; the report row says how it went."""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dermedge.convert import FILE_NAMES, REJECTED_DIR, ConvertError, gate, log, quantize, source
from dermedge.convert.gate_images import load_split
from dermedge.data.contract import InputContract
from dermedge.data.io import atomic_write_bytes, atomic_write_text
from dermedge.metrics import clean_json

if TYPE_CHECKING:
    from dermedge.convert.pipeline import GateContext, Options


def variant_row(ctx: GateContext, saved: Path, variant: str, produced: list[str]) -> dict[str, Any]:
    """Convert, gate and file one variant: its report row (verdict "error" when it could not be
    made); the file it made is added to `produced`."""
    t = time.time()
    log(f"{variant}: converting")
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
    log(f"{variant}: {row['verdict']} ({row['seconds']} s)")
    return row


def _make_variant(
    ctx: GateContext, saved: Path, variant: str, row: dict[str, Any], produced: list[str]
) -> None:
    """The steps of `variant_row`: convert, run through the edge runtime, judge, file; fills `row`."""
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
    # clean: a source without malignant val images has a NaN sensitivity in the policy
    card["threshold_policy"] = clean_json(
        {**(src.card.get("threshold_policy") or {}), **thr["policy"]}
    )
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
    log(f"{variant}: gating {len(ctx.y_test)} test images through the edge runtime")
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
    from dermedge.metrics import threshold_for_card_policy

    chosen = threshold_for_card_policy(y_val, p_val, val_sources, policy)
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

"""`dermedge convert`: export once, make each variant, gate it through the edge runtime, deliver.

Everything is written into a temporary folder beside the output and moved into place at the end,
so an error (or Ctrl-C) leaves nothing behind. Variants that pass go to `OUT/model_<v>.tflite`
(+ `.tflite.json` sidecar); variants that fail go to `OUT/rejected/` for inspection only.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
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
    print(msg, file=sys.stderr, flush=True)


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _versions() -> dict[str, str]:
    out = {"dermedge": __version__, "python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "ai-edge-litert", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def load_split(records: list[Any], split: str, contract: InputContract, what: str
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:  # fmt: skip
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
        raise ConvertError(f"the model's outputs ({p.min():.3g}..{p.max():.3g}) are not "
                           "probabilities: its last layer must be a sigmoid (P(malignant))")  # fmt: skip
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


def _variant_card(base: dict[str, Any], variant: str, src: source.Source, opts: Options,
                  conversion: dict[str, Any], gate_info: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    card = copy.deepcopy(base)
    card["quantization"] = variant
    card.setdefault("schema", "dermedge.card/1")
    card["source"] = {"run": str(src.run_dir) if src.run_dir else None, "model": str(src.model_path),
                      "model_sha256": conversion["model_sha256"], "card": str(src.card_path)}  # fmt: skip
    card["conversion"] = {k: v for k, v in conversion.items() if k != "model_sha256"}
    card["conversion"]["variant"] = variant
    if variant != "int8":
        card["conversion"].pop("calibration", None)
        card["conversion"]["io"] = "float32"
    if gate_info is not None:
        card["gate"] = gate_info
    return _clean(card)


def _embed(tflite: bytes, card: dict[str, Any]) -> bytes:
    from dermedge.edge.card import embed_card

    data = embed_card(tflite, card)  # read back and checked there
    return data


def _evaluate_variant(path: Path, pixels: dict[str, np.ndarray], contract: InputContract,
                      records: list[Any], threads: int | None
                      ) -> tuple[dict[str, np.ndarray], str]:  # fmt: skip
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


def _variant_threshold(card: dict[str, Any], y_val: np.ndarray | None, p_val: np.ndarray | None,
                       val_sources: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
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
    chosen = choose_threshold_across_sources(y_val, p_val, pool, float(policy["target_sensitivity"]),
                                             float(policy.get("margin_se", 0.0)))  # fmt: skip
    return {"threshold": chosen["threshold"],
            "policy": {"variant_threshold": "rechosen on val through the edge runtime",
                       "keras_threshold": float(card["threshold"]),
                       "val_sensitivity": chosen["sensitivity"],
                       "val_specificity": chosen["specificity"], "pool": chosen["pool"],
                       "per_source": chosen.get("per_source")}}  # fmt: skip


def run(arg: str, opts: Options) -> Result:
    t0 = time.time()
    src = source.resolve(arg, opts.data, opts.card)
    records = source.records(src.manifest)
    mhash = manifest_sha256(src.manifest)
    test_recs = [r for r in records if r.split == "test"]
    if not test_recs:
        raise ConvertError(
            f"manifest {src.manifest} has no test split: the gate needs labelled test images"
        )
    if len({r.label for r in test_recs}) < 2:
        raise ConvertError(f"the test split of {src.manifest} has one class: AUC and sensitivity "
                           "cannot be measured")  # fmt: skip
    calib_recs = quantize.calibration_sample(records, opts.calib_images, opts.seed) \
        if "int8" in opts.quant else []  # fmt: skip
    out_dir = Path(opts.out) if opts.out else runs_root() / "convert" / src.name
    if out_dir.exists() and not out_dir.is_dir():
        raise ConvertError(f"--out {out_dir} is a file, not a folder")

    quantize.quiet_tf()
    _log(f"loading {src.model_path}")
    model = source.load_keras(src.model_path)
    size = source.image_size(model)
    contract = src.contract

    # the card's contract against the model itself
    contract_failures = gate.check_size(contract.size, size)
    if contract_failures:  # the pixels would not even fit: nothing to convert
        raise ConvertError(contract_failures[0])
    norm = source.layer_normalization(model)
    contract_failures += gate.check_normalization(src.card["input"], norm)
    notes = (
        [] if norm else ["the model has no `normalize` layer: the card's mean/std were not checked"]
    )

    x_test, y_test, _ = load_split(records, "test", contract, "test images")
    val = None
    if opts.rethreshold and any(r.split == "val" for r in records):
        x_val, y_val, val_paths = load_split(records, "val", contract, "val images")
        if len(set(y_val.tolist())) == 2:
            source_of = {r.path: r.source for r in records}
            val = (x_val, y_val, [source_of.get(p, "") for p in val_paths])
    if len(set(y_test.tolist())) < 2:
        raise ConvertError("the readable test images have one class: the gate cannot measure AUC")
    calib, y_cal = None, np.zeros(0)
    if calib_recs:
        calib, y_cal, _ = _load_calib(calib_recs, contract)

    _log(f"Keras reference on {len(y_test)} test images")
    p_ref = keras_predict(model, x_test)
    thr = src.threshold
    ref = gate.metrics(y_test, p_ref, thr)
    recorded, recorded_note = _recorded_test_metrics(src.card, mhash, len(y_test))
    contract_failures += gate.check_recorded(ref, recorded, opts.tolerances)
    notes.append(f"Keras through the card's contract: {recorded_note}")

    conversion: dict[str, Any] = {
        "tool": f"dermedge convert {__version__}", "converter": quantize.CONVERTER_PATH,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_sha256": source.sha256_file(src.model_path), "manifest": str(src.manifest),
        "manifest_sha256": mhash, "io": opts.io, "float_fallback": opts.allow_float_fallback,
        "per_channel": True, "tolerances": opts.tolerances.to_dict(), "versions": _versions(),
    }  # fmt: skip
    if calib is not None:
        conversion["calibration"] = {"split": "train", "images": int(len(calib)), "seed": opts.seed,
                                     "stratified": True, "per_class": _counts(y_cal)}  # fmt: skip

    out_parent_existed = out_dir.parent.exists()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.convert-", dir=out_dir.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="dermedge-savedmodel-") as sm_dir:
            _log("exporting the Keras model (SavedModel)")
            saved = quantize.export_saved_model(model, Path(sm_dir) / "saved_model")
            rows, produced = _variants(src, opts, saved, calib, conversion, contract, x_test, y_test,
                                       p_ref, ref, contract_failures, records, work, val)  # fmt: skip
        ref_row = {"variant": "keras", "file": str(src.model_path),
                   "size_bytes": src.model_path.stat().st_size, **ref, "agreement": 1.0,
                   "max_abs_dp": 0.0, "verdict": "reference", "failures": []}  # fmt: skip
        all_rows = [ref_row, *rows]
        passed = all(r["verdict"] == "pass" for r in rows) and not contract_failures
        report = _clean({
            "source": {"name": src.name, "run": str(src.run_dir) if src.run_dir else None,
                       "model": str(src.model_path), "card": str(src.card_path)},
            "manifest": str(src.manifest), "manifest_sha256": mhash, "split": "test",
            "test_images": int(len(y_test)), "threshold": thr, "contract": contract.to_dict(),
            "tolerances": opts.tolerances.to_dict(), "contract_failures": contract_failures,
            "notes": notes, "rows": all_rows, "verdict": "pass" if passed else "fail",
            "converter": quantize.CONVERTER_PATH, "versions": conversion["versions"],
            "calibration": conversion.get("calibration"), "seconds": round(time.time() - t0, 1),
        })  # fmt: skip
        md = _markdown(report, opts)
        atomic_write_text(
            work / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n"
        )
        atomic_write_text(work / "report.md", md)
        _deliver(work, out_dir, produced, opts.quant)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if not out_parent_existed:
            with contextlib.suppress(OSError):
                out_dir.parent.rmdir()
        raise
    shutil.rmtree(work, ignore_errors=True)
    return Result(out_dir, all_rows, report, md, passed)


def _counts(y: np.ndarray) -> dict[str, int]:
    return {"benign": int((y == 0).sum()), "malignant": int((y == 1).sum())}


def _load_calib(
    recs: list[Any], contract: InputContract
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    paths = [r.path for r in recs]
    x, kept, bad = load_images(paths, contract, cache_dir=str(runs_root() / "cache"),
                               desc="calibration images")  # fmt: skip
    if bad:
        _log(f"warning: {len(bad)} unreadable calibration images skipped")
    y = np.asarray([LABELS.get(recs[i].label, -1) for i in kept], dtype=np.int64)
    present = {int(v) for v in y if v >= 0}
    if len(present) < 2:
        raise ConvertError("the calibration set has one class after skipping unreadable images; "
                           "int8 needs both classes in the training split")  # fmt: skip
    if len(x) < 50:
        _log(f"warning: only {len(x)} calibration images; int8 ranges may be poor (--calib-images)")
    return x, y, [paths[i] for i in kept]


def _variants(src: source.Source, opts: Options, saved: Path, calib: np.ndarray | None,
              conversion: dict[str, Any], contract: InputContract, x_test: np.ndarray,
              y_test: np.ndarray, p_ref: np.ndarray, ref: dict[str, Any],
              contract_failures: list[str], records: list[Any], work: Path,
              val: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
              ) -> tuple[list[dict[str, Any]], list[str]]:  # fmt: skip
    """Convert, embed, evaluate and file each variant; rows of the report and files made."""
    rows: list[dict[str, Any]] = []
    produced: list[str] = []
    for variant in opts.quant:
        t = time.time()
        _log(f"{variant}: converting")
        name = FILE_NAMES[variant]
        row: dict[str, Any] = {"variant": variant, "file": None, "size_bytes": None}
        try:
            tfl = quantize.convert(saved, variant, opts.io, calib if variant == "int8" else None,
                                   opts.allow_float_fallback)  # fmt: skip
            conv = dict(conversion)
            if variant == "int8":
                conv["io_quantization"] = quantize.io_details(tfl)
                fl = quantize.float_ops(tfl)
                conv["float_ops"] = fl
                if fl and not opts.allow_float_fallback:
                    raise ConvertError(f"int8 is not fully integer: float ops {fl}; pass "
                                       "--allow-float-fallback to accept them")  # fmt: skip
            # first with the card minus the gate, so the edge runtime reads the contract from the file
            trial = work / ".trial" / name
            atomic_write_bytes(
                trial, _embed(tfl, _variant_card(src.card, variant, src, opts, conv, None))
            )
            _log(f"{variant}: gating {len(y_test)} test images through the edge runtime")
            use_val = val if variant != "fp32" else None  # fp32 keeps Keras' threshold
            pixels = {"test": x_test, **({"val": use_val[0]} if use_val else {})}
            probs, runtime = _evaluate_variant(trial, pixels, contract, records, opts.threads)
            p_var = probs["test"]
            thr = _variant_threshold(src.card, use_val[1] if use_val else None, probs.get("val"),
                                     use_val[2] if use_val else None)  # fmt: skip
            cmp = gate.compare(y_test, p_ref, p_var, src.threshold, thr["threshold"])
            own = gate.judge(ref, cmp, opts.tolerances)
            failures = list(contract_failures) + own
            verdict = "pass" if not failures else "fail"
            gate_info = {"verdict": verdict, "failures": failures, "split": "test",
                         "test_images": int(len(y_test)), "manifest_sha256": conversion["manifest_sha256"],
                         "threshold": thr["threshold"], "keras_threshold": src.threshold, "runtime": runtime,
                         "tolerances": opts.tolerances.to_dict(), "keras": ref, "metrics": cmp}  # fmt: skip
            card = _variant_card(src.card, variant, src, opts, conv, gate_info)
            card["threshold"] = thr["threshold"]
            card["threshold_policy"] = {**(src.card.get("threshold_policy") or {}), **thr["policy"]}
            final = _embed(tfl, card)
            rel = name if verdict == "pass" else f"{REJECTED_DIR}/{name}"
            atomic_write_bytes(work / rel, final)
            if verdict == "pass" and opts.guard:
                final, card, row["guard"] = _add_guard(work / rel, src.manifest)
            atomic_write_text(
                work / (rel + ".json"), json.dumps(card, indent=2, allow_nan=False) + "\n"
            )
            produced.append(rel)
            row.update({"file": rel, "size_bytes": len(final), **cmp, "verdict": verdict,
                        "failures": failures, "runtime": runtime})  # fmt: skip
            step = gate.output_step(p_var, src.threshold) if variant == "int8" else None
            if variant == "int8":
                row.update(io_quantization=conv["io_quantization"], float_ops=conv["float_ops"],
                           output_step_at_threshold=step)  # fmt: skip
            if own:
                n_cal = len(calib) if calib is not None else None
                row["advice"] = gate.advice(variant, own, n_cal, step)
        except ConvertError as e:
            row.update(
                {"verdict": "error", "failures": [str(e)], "advice": gate.advice(variant, [str(e)])}
            )
        finally:
            shutil.rmtree(work / ".trial", ignore_errors=True)
        row["seconds"] = round(time.time() - t, 1)
        _log(f"{variant}: {row['verdict']} ({row['seconds']} s)")
        rows.append(row)
    return rows, produced


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
    rows = report["rows"]
    lines = [f"# dermedge convert: {report['source']['name']}", "",
             f"Gate on the test split of `{report['manifest']}` ({report['test_images']} images, "
             f"manifest sha256 {report['manifest_sha256'][:12]}), threshold "
             f"{report['threshold']:.4f}, variants run through the edge runtime.", "",
             gate.markdown_table(rows), "",
             "Tolerances: AUC drop <= {max_auc_drop}, accuracy drop <= {max_acc_drop}, sensitivity "
             "drop <= {max_sens_drop}, agreement >= {min_agreement}.".format(**report["tolerances"])]  # fmt: skip
    failed = [r for r in rows if r.get("failures")]
    if report["contract_failures"]:
        lines += ["", "## Input contract (fails every variant)",
                  *(f"- FAIL: {f}" for f in report["contract_failures"]),
                  f"- try: {gate.advice('', report['contract_failures'])}"]  # fmt: skip
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
        lines += ["", f"int8: {q['input']['dtype']} input (scale {q['input'].get('scale')}, zero point "
                  f"{q['input'].get('zero_point')}), {q['output']['dtype']} output; calibrated on "
                  f"{cal.get('images')} training images {cal.get('per_class')}; float ops: "
                  f"{int8.get('float_ops') or 'none'}."]  # fmt: skip
    if report.get("notes"):
        lines += ["", "## Notes", *(f"- {n}" for n in report["notes"])]
    lines += ["", f"Verdict: **{report['verdict'].upper()}**", ""]
    return "\n".join(lines)

"""The ONNX Runtime variants: whether they can be made and run here, and adding them to the groups
by exporting with tf2onnx in a child process (`onnx_export.py`, which imports TensorFlow)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from dermedge.benchmark import machine
from dermedge.benchmark.settings import log
from dermedge.benchmark.variants import Group, Variant, io_quant, onnx_variant
from dermedge.benchmark.workers import python, worker_env


def onnx_status() -> str | None:
    """None when ONNX variants can be made and run here, else why not."""

    missing = [m for m in ("onnxruntime", "tf2onnx", "tensorflow", "onnx") if machine.missing(m)]
    return f"not installed: {', '.join(missing)}" if missing else None


def export_onnx(groups: list[Group], out: Path, opset: int, notes: list[str]) -> None:
    """Add onnx-fp32 (from the Keras model, else the fp32 .tflite) and onnx-int8 (from the int8
    .tflite) to each group, where tf2onnx converts; each failure becomes a note."""
    jobs = []
    for g in groups:
        src32 = g.find("keras") or g.find("tflite-fp32")
        if src32 is not None and g.find("onnx-fp32") is None:
            jobs.append((g, "fp32", src32))
        src8 = g.find("tflite-int8")
        if src8 is not None and g.find("onnx-int8") is None:
            jobs.append((g, "int8", src8))
    if not jobs:
        return
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    specs = [
        {
            "src": str(src.path),
            "kind": "keras" if src.backend == "keras" else "tflite",
            "dst": str(
                out / "onnx" / f"{g.name}-{quant}{'-rejected' if src.rejected else ''}.onnx"
            ),
            "opset": opset,
        }
        for g, quant, src in jobs
    ]
    log(f"exporting {len(specs)} variant(s) to ONNX with tf2onnx")
    results = _run_export(specs, out / "logs" / "onnx-export.log")
    for (g, quant, src), spec, res in zip(jobs, specs, results, strict=True):
        if not res.get("ok"):
            notes.append(
                f"{g.name}: onnx-{quant} not benchmarked: tf2onnx could not convert "
                f"{src.name} ({res.get('error')})"
            )
            continue
        tfl = g.find("tflite-fp32") if quant == "fp32" else src
        extra = {
            "exported_from": src.name,
            "method": res.get("method"),
            "tf2onnx": res.get("tf2onnx"),
            "opset": opset,
        }
        if quant == "int8":
            extra.update(io_quant(src.path))
        v = onnx_variant(
            g.name,
            Path(str(spec["dst"])),
            quant,
            src.card or g.card,
            tfl.path if tfl else None,
            extra,
        )
        g.variants.append(v.mark_rejected() if src.rejected else v)
    for g in groups:
        g.variants.sort(key=Variant.order)


def _run_export(specs: list[dict[str, Any]], log_path: Path) -> list[dict[str, Any]]:
    """Run the exporter process; one result per spec (a crash fails the ones not reported)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as fh:
        proc = subprocess.run(
            [*python(), "--export-onnx", json.dumps(specs)],
            stdout=subprocess.PIPE,
            stderr=fh,
            env=worker_env(),
            text=True,
            timeout=3600,
        )
    results = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    crash = {"ok": False, "error": f"exporter exited with code {proc.returncode} (see {log_path})"}
    return results + [crash] * (len(specs) - len(results))

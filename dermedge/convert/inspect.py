"""`dermedge convert --inspect FILE.tflite`: what a model file holds, without TensorFlow."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from dermedge.convert import ConvertError
from dermedge.convert.gate import human_size


def inspect_file(path: str) -> dict[str, Any]:
    """`dermedge.edge.card.inspect_model` plus the ops that touch float tensors."""
    from dermedge.convert.quantize import float_ops
    from dermedge.edge.card import inspect_model

    p = Path(path)
    if not p.is_file():
        raise ConvertError(f"{path}: no such file")
    try:
        info = inspect_model(p)
        info["float_ops"] = float_ops(p.read_bytes())
    except (ValueError, struct.error, IndexError, TypeError, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConvertError(
            f"{path} is not a readable TFLite model (corrupt or truncated?): {msg}"
        ) from e
    return info


def _tensor(t: dict[str, Any]) -> str:
    """One tensor as `name: dtype [shape]`, with its scale and zero point or channel count."""
    shape = t.get("shape_signature") or t.get("shape") or []
    q = t.get("quantization")
    qs = ""
    if q and q.get("scale"):
        sc, zp = q["scale"], q.get("zero_point") or [0]
        qs = (
            f"  scale={sc[0]:.6g} zero_point={zp[0]}"
            if len(sc) == 1
            else f"  per-channel ({len(sc)} scales)"
        )
    return f"{t.get('name', '')}: {t['dtype']} {list(shape)}{qs}"


def format_inspect(info: dict[str, Any]) -> str:
    """The `--inspect` report as aligned lines: file, tensors, ops, metadata and the card."""
    lines = [
        f"file      {info['path']}  ({human_size(info['size_bytes'])}, {info['size_bytes']} bytes)",
        f"schema    v{info.get('schema_version')}, {info.get('subgraphs')} subgraph(s)",
    ]
    lines += [f"input     {_tensor(t)}" for t in info.get("inputs", [])]
    lines += [f"output    {_tensor(t)}" for t in info.get("outputs", [])]
    ops = ", ".join(f"{k} x{v}" for k, v in info.get("ops", {}).items())
    lines.append(f"ops       {info.get('num_ops', 0)}: {ops}")
    fl = info.get("float_ops") or {}
    lines.append(
        "float ops "
        + (", ".join(f"{k} x{v}" for k, v in fl.items()) if fl else "none (fully integer)")
    )
    lines.append(f"metadata  {', '.join(info.get('metadata', [])) or '-'}")
    card = info.get("card")
    if card is None:
        lines.append("card      none: give the input contract and threshold as flags to run it")
        return "\n".join(lines)
    inp = card.get("input", {})
    lines += [
        f"card      {card.get('name')} ({card.get('arch')}), quantization {card.get('quantization')}",
        f"contract  {inp.get('size')}px, crop {inp.get('crop')}, resize {inp.get('resize')}, "
        f"mean {inp.get('mean')} std {inp.get('std')} (inside the model)",
        f"threshold {card.get('threshold')} -> refer (P(malignant) >= threshold)",
    ]
    data = card.get("data") or {}
    if data.get("manifest_sha256"):
        lines.append(f"data      manifest sha256 {data['manifest_sha256']}")
    src = card.get("source") or {}
    if src.get("run") or src.get("model"):
        lines.append(f"source    {src.get('run') or src.get('model')}")
    g = card.get("gate")
    if g:
        m = g.get("metrics", {})
        k = g.get("keras", {})
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(
            f"gate      {g.get('verdict')} on {g.get('test_images')} test images via "
            f"{g.get('runtime')}: AUC {fmt(m.get('auc'))} (Keras {fmt(k.get('auc'))}), "
            f"acc {fmt(m.get('accuracy'))}, sens {fmt(m.get('sensitivity'))}, "
            f"spec {fmt(m.get('specificity'))}, agreement {fmt(m.get('agreement'))}, "
            f"max|dp| {fmt(m.get('max_abs_dp'))}"
        )
        lines += [f"          FAIL {f}" for f in g.get("failures", [])]
    from dermedge.edge.card_text import calibration_lines, external_lines

    lines += [f"{'site' if i == 0 else '':<9} {x}" for i, x in enumerate(calibration_lines(card))]
    lines += [f"{'external' if i == 0 else '':<9} {x}" for i, x in enumerate(external_lines(card))]
    versions = (card.get("conversion") or {}).get("versions") or card.get("versions") or {}
    if versions:
        lines.append("versions  " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if card.get("disclaimer"):
        lines.append(f"note      {card['disclaimer']}")
    return "\n".join(lines)

"""`dermedge convert --add-guard MODEL.tflite --data SPLIT`: give a converted model its
unfamiliar-input guard.

Two steps: the model's penultimate features (the input of its last fully connected layer) become
a second output of the graph, with LiteRT's own flatbuffer schema (`ai_edge_litert`), so the
probability output and every weight stay as they were; then the guard (`dermedge.edge.guard`) is
fitted on the features of the training split through the edge runtime, its cut-off chosen on the
validation split, and written into the card. The result is checked: same probabilities as the
source model on the validation images, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dermedge.convert import FEATURES, ConvertError
from dermedge.convert.quantize import op_names, schema
from dermedge.data.split import split_counts

if TYPE_CHECKING:
    from dermedge.edge.guard import Guard

_PASS_THROUGH = {"QUANTIZE", "DEQUANTIZE", "LOGISTIC", "SOFTMAX", "RESHAPE"}


def _op_name(fb: Any, model: Any, op: Any) -> str:
    """The builtin operator name of `op` (its code number when the name is unknown)."""
    code = model.operatorCodes[op.opcodeIndex]
    value = max(code.builtinCode, code.deprecatedBuiltinCode)
    return op_names().get(value, str(value))


def feature_tensor(fb: Any, model: Any) -> int:
    """The input tensor of the fully connected layer that feeds the probability output."""
    sg = model.subgraphs[0]
    producer = {int(t): op for op in sg.operators for t in op.outputs}
    tensor = int(sg.outputs[0])
    for _ in range(8):
        op = producer.get(tensor)
        if op is None:
            break
        name = _op_name(fb, model, op)
        if name == "FULLY_CONNECTED":
            return int(op.inputs[0])
        if name not in _PASS_THROUGH:
            break
        tensor = int(op.inputs[0])
    raise ConvertError("no fully connected layer feeds the model's output: cannot add a guard")


def _dequantized(fb: Any, model: Any, idx: int) -> int:
    """A float32 copy of tensor `idx` made by a DEQUANTIZE op at the end of the graph (LiteRT.js
    reads no int8 outputs); `idx` itself when it is float already."""
    sg = model.subgraphs[0]
    src = sg.tensors[idx]
    if src.type == fb.TensorType.FLOAT32:
        return idx
    codes = model.operatorCodes
    op_index = next(
        (
            i
            for i, c in enumerate(codes)
            if max(c.builtinCode, c.deprecatedBuiltinCode) == fb.BuiltinOperator.DEQUANTIZE
        ),
        None,
    )
    if op_index is None:
        code = fb.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.DEQUANTIZE
        code.version = 2  # int8 input
        codes.append(code)
        op_index = len(codes) - 1
    out = fb.TensorT()
    out.shape, out.type, out.buffer, out.name = (
        src.shape,
        fb.TensorType.FLOAT32,
        0,
        FEATURES.encode(),
    )
    sg.tensors.append(out)
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs = op_index, np.asarray([idx], dtype=np.int32)
    op.outputs = np.asarray([len(sg.tensors) - 1], dtype=np.int32)
    sg.operators.append(op)
    return len(sg.tensors) - 1


def _has_feature_output(fb: Any, model: Any, idx: int) -> bool:
    """Whether output 1 is already the features (guarded before), as is or dequantized."""
    sg = model.subgraphs[0]
    if len(sg.outputs) != 2:
        return False
    out = int(sg.outputs[1])
    producer = {int(t): op for op in sg.operators for t in op.outputs}.get(out)
    return out == idx or (
        producer is not None
        and _op_name(fb, model, producer) == "DEQUANTIZE"
        and int(producer.inputs[0]) == idx
    )


def add_feature_output(data: bytes) -> tuple[bytes, int]:
    """The model with its penultimate features, as float32, as output 1 (and in its
    signature); the feature dimension."""
    import flatbuffers

    fb = schema()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    sg = model.subgraphs[0]
    idx = feature_tensor(fb, model)
    dim = int(np.prod(sg.tensors[idx].shape[1:]))
    if _has_feature_output(fb, model, idx):
        return data, dim
    if len(sg.outputs) != 1:
        raise ConvertError(f"the model has {len(sg.outputs)} outputs; a guard needs exactly one")
    out = _dequantized(fb, model, idx)
    sg.outputs = np.append(np.asarray(sg.outputs, dtype=np.int32), np.int32(out))
    for sig in model.signatureDefs or []:
        m = fb.TensorMapT()
        m.name, m.tensorIndex = FEATURES, out
        sig.outputs = [*(sig.outputs or []), m]
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    from dermedge.edge.card import seal

    return seal(bytes(builder.Output())), dim


def _sample(records: list[Any], n: int, seed: int) -> list[Any]:
    """At most `n` of the records, drawn at random with `seed`, kept in their order."""
    if len(records) <= n:
        return records
    idx = np.random.default_rng(seed).choice(len(records), n, replace=False)
    return [records[i] for i in sorted(idx)]


def split_mismatch(card: dict[str, Any], records: list[Any], manifest: str) -> str | None:
    """Why a manifest is not the split the card says the model was trained on (its counts per
    split and class differ), or None: the guard must describe the model's own training images."""
    want = (card.get("data") or {}).get("counts")
    if not isinstance(want, dict):
        return None
    have = split_counts(records)
    for split in ("train", "val"):
        if split in want and want[split] != have.get(split):
            return (
                f"{manifest}: its {split} split {have.get(split)} is not the one the model was "
                f"trained with {want[split]}"
            )
    return None


def add_guard(
    model_path: str,
    manifest: str,
    out_dir: Path,
    max_train: int = 4000,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Write `<out_dir>/<model name>` with the guard and `guard.json`; return the summary. A
    guarded model is guarded again in place of its old guard."""
    from dermedge.data.io import atomic_write_bytes, atomic_write_text
    from dermedge.edge import guard as g
    from dermedge.edge.card import embed_card, read_card

    src = Path(model_path)
    card = read_card(src)
    if not card:
        raise ConvertError(f"{src}: no model card: convert it with dermedge first")
    train, val, mismatch = _guard_split(card, manifest, max_train, seed, force)
    data, dim = add_feature_output(src.read_bytes())
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (src.stem + ".features.tflite")
    atomic_write_bytes(tmp, data)
    ft, yt, fv, yv = _split_features(tmp, src, train, val)
    guard = g.fit(ft, yt, fv)
    summary = _guard_summary(guard, ft, fv, len(yt), len(yv), dim, manifest)
    if mismatch:
        summary["warning"] = f"forced: {mismatch}"
    if "guard" in card:
        summary["replaced"] = "the model's previous guard"
    new_card = {**card, "guard": {**guard.to_card(), "fit": summary}}
    out = out_dir / src.name
    atomic_write_bytes(out, embed_card(data, new_card))
    tmp.unlink()
    atomic_write_text(out_dir / "guard.json", json.dumps(summary, indent=2) + "\n")
    return {**summary, "model": str(out)}


def _guard_split(
    card: dict[str, Any], manifest: str, max_train: int, seed: int, force: bool
) -> tuple[list[Any], list[Any], str | None]:
    """The manifest's train sample and val records, and why it is not the card's split (or None);
    refused unless `force` when it is not."""
    from dermedge.data.manifest import read_manifest

    records = read_manifest(manifest)
    mismatch = split_mismatch(card, records, manifest)
    if mismatch and not force:
        raise ConvertError(f"{mismatch}: give the model's own split (or --force)")
    train = _sample([r for r in records if r.split == "train"], max_train, seed)
    val = [r for r in records if r.split == "val"]
    return train, val, mismatch


def _split_features(
    tmp: Path, src: Path, train: list[Any], val: list[Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and val features and labels through the feature model `tmp`, after checking that
    its val probabilities are those of the source model, bit for bit."""
    from dermedge.convert.gate_images import load_split  # the gate's loader: reports bad files
    from dermedge.edge.runtime import EdgeModel

    model = EdgeModel(tmp)
    xt, yt, _ = load_split(train, "train", model.contract, "guard: train images")
    xv, yv, _ = load_split(val, "val", model.contract, "guard: val images")
    _, ft = model.predict_features(xt)
    pv, fv = model.predict_features(xv)
    if ft is None or fv is None:  # add_feature_output gave the model one: it did not load
        raise ConvertError(f"{tmp.name}: the edge runtime finds no feature output in it")
    if not np.array_equal(pv, EdgeModel(src).predict(xv)):
        raise ConvertError("the guarded model's probabilities differ from the source model's")
    return ft, yt, fv, yv


def _guard_summary(
    guard: Guard, ft: np.ndarray, fv: np.ndarray, n_train: int, n_val: int, dim: int, manifest: str
) -> dict[str, Any]:
    """What guard.json and the card record about the fit."""
    return {
        "train_images": n_train,
        "val_images": n_val,
        "dim": dim,
        "k": guard.components.shape[0],
        "cutoff": guard.cutoff,
        "val_pass_rate": float(np.mean(guard.score(fv) <= guard.cutoff)),
        "train_pass_rate": float(np.mean(guard.score(ft) <= guard.cutoff)),
        "probabilities_identical_on_val": True,  # _split_features refuses any difference
        "manifest": str(manifest),
    }

"""Keras 3 model -> TFLite bytes, one variant at a time, plus the op check of an int8 file.

The path that works with Keras 3 on TF 2.21 (checked in tests): `model.export(dir,
format="tf_saved_model")` once, then `tf.lite.TFLiteConverter.from_saved_model(dir)` for every
variant. `from_concrete_functions` on a Keras 3 model keeps the weights as resource variables
(READ_VARIABLE ops) and its int8 calibration fails ("variable != nullptr"); `from_keras_model`
works but re-exports a SavedModel on every call.

int8 is full integer: TFLITE_BUILTINS_INT8 only, uint8 (or int8) input and output, calibrated on
raw 0..255 pixels of a stratified sample of the *training* split; `float_ops` proves no float op
is left unless float fallback was asked for.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dermedge.convert import FEATURES, ConvertError

CONVERTER_PATH = (
    "keras.Model.export(format='tf_saved_model') + tf.lite.TFLiteConverter.from_saved_model"
)
FLOAT_TYPES = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"}


def quiet_tf() -> None:
    """Keep TensorFlow's C++ and absl chatter off the terminal (set before TF is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


def import_tf() -> Any:
    """Import TensorFlow and Keras with their start-up chatter (CUDA probing...) kept quiet."""
    quiet_tf()
    with captured_fds():
        import keras  # noqa: F401
        import tensorflow as tf
    return tf


@contextlib.contextmanager
def captured_fds() -> Iterator[list[str]]:
    """Send fd 1/2 (the MLIR converter's C++ logging) to a temp file; yields its lines after."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        import sys

        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        saved = []
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(tmp.fileno(), fd)
        except OSError:  # no real fds (embedded); log normally
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            yield lines
            return
        try:
            yield lines
        finally:
            for s in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    s.flush()
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def _reason(e: BaseException, log: Sequence[str]) -> str:
    """The most telling line of a converter failure: an `error:` line of its log, else the message."""
    for line in [*str(e).splitlines(), *log]:
        if "error:" in line.lower():
            return line.split("error:", 1)[1].strip() or line.strip()
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def export_saved_model(model: Any, directory: Path) -> Path:
    """The inference graph of a Keras 3 model as a SavedModel (the converter's input)."""
    quiet_tf()
    with captured_fds() as log:
        try:
            model.export(str(directory), format="tf_saved_model", verbose=False)
        except Exception as e:  # noqa: BLE001
            raise ConvertError(
                f"cannot export the Keras model to a SavedModel: {_reason(e, log)}"
            ) from e
    return directory


def calibration_sample(records: Sequence[Any], n: int, seed: int = 0) -> list[Any]:
    """A stratified random sample of `n` training records (class proportions kept, >= 1 each)."""
    train = [r for r in records if r.split == "train"]
    by_label: dict[str, list[Any]] = defaultdict(list)
    for r in train:
        by_label[r.label].append(r)
    if not train:
        raise ConvertError("the manifest has no training split to calibrate int8 on")
    if len(by_label) < 2:
        only = next(iter(by_label))
        raise ConvertError(
            f"the calibration set (training split) has one class ({only}); int8 "
            "ranges calibrated on it would not cover the other - use a manifest "
            "with both classes in train"
        )
    if n >= len(train):
        return sorted(train, key=lambda r: r.path)
    rng = random.Random(seed)
    total = len(train)
    labels = sorted(by_label)
    want = {lab: max(1, round(n * len(by_label[lab]) / total)) for lab in labels}
    while sum(want.values()) > n:  # rounding: trim the largest class
        big = max(labels, key=lambda lab: want[lab])
        want[big] -= 1
    out = []
    for lab in labels:
        pool = sorted(by_label[lab], key=lambda r: r.path)
        out += rng.sample(pool, min(want[lab], len(pool)))
    return out


def convert(
    saved_model: Path,
    variant: str,
    io: str = "uint8",
    calib: np.ndarray | None = None,
    float_fallback: bool = False,
) -> bytes:
    """One variant's `.tflite` bytes; `calib` (uint8 N,S,S,3 raw pixels) is needed for int8."""
    tf = import_tf()
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if variant == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        if calib is None or len(calib) == 0:
            raise ConvertError("int8 needs calibration images")

        def representative() -> Iterator[list[np.ndarray]]:
            """Each calibration image as a one-image float32 batch, as the converter asks for."""
            for i in range(len(calib)):
                yield [calib[i : i + 1].astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if float_fallback:
            ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        conv.target_spec.supported_ops = ops
        conv.inference_input_type = tf.uint8 if io == "uint8" else tf.int8
        conv.inference_output_type = tf.uint8 if io == "uint8" else tf.int8
    elif variant != "fp32":
        raise ConvertError(f"unknown variant {variant}")
    with captured_fds() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = conv.convert()
        except Exception as e:  # noqa: BLE001 - the converter raises ConverterError, RuntimeError...
            hint = (
                " (some op has no int8 kernel: --allow-float-fallback keeps it in float)"
                if variant == "int8" and not float_fallback
                else ""
            )
            raise ConvertError(
                f"{variant}: the TFLite converter failed: {_reason(e, log)}{hint}"
            ) from e
    return bytes(out)


# --- what is inside a .tflite (LiteRT's generated flatbuffer schema; no TensorFlow needed) -------


def schema() -> Any:
    """LiteRT's generated flatbuffer schema (from TensorFlow where LiteRT is not installed)."""
    try:
        from ai_edge_litert import schema_py_generated as s
    except ImportError:  # pragma: no cover - converter installs have TF
        from tensorflow.lite.python import schema_py_generated as s
    return s


@functools.cache
def op_names() -> dict[int, str]:
    """Builtin operator code -> name, from the schema."""
    return {v: k for k, v in vars(schema().BuiltinOperator).items() if isinstance(v, int)}


GUARD_OUTPUT = FEATURES.encode()  # the guard's feature output


def float_ops(tflite: bytes) -> dict[str, int]:
    """Ops (by name) that read or write a float tensor, counted; empty for a full-integer model.
    The guard's DEQUANTIZE of the penultimate features (a side output read by no other op) is
    not on the classification path and is left out."""
    s = schema()
    types = {v: k for k, v in vars(s.TensorType).items() if isinstance(v, int)}
    names = op_names()
    model = s.Model.GetRootAs(tflite, 0)
    found: Counter[str] = Counter()
    for gi in range(model.SubgraphsLength()):
        g = model.Subgraphs(gi)
        for i in range(g.OperatorsLength()):
            op = g.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = names.get(builtin, f"op{builtin}")
            if name == "CUSTOM" and code.CustomCode():
                name = code.CustomCode().decode()
            tensors = (
                [*op.InputsAsNumpy().tolist(), *op.OutputsAsNumpy().tolist()]
                if op.InputsLength() or op.OutputsLength()
                else []
            )
            floats = [
                t for t in tensors if t >= 0 and types.get(g.Tensors(t).Type()) in FLOAT_TYPES
            ]
            if floats and not (
                name == "DEQUANTIZE" and all(g.Tensors(t).Name() == GUARD_OUTPUT for t in floats)
            ):
                found[name] += 1
    return dict(sorted(found.items()))


def io_details(tflite: bytes) -> dict[str, Any]:
    """dtype, shape and quantization of the first input and output."""
    s = schema()
    types = {v: k for k, v in vars(s.TensorType).items() if isinstance(v, int)}
    model = s.Model.GetRootAs(tflite, 0)
    g = model.Subgraphs(0)

    def info(idx: int) -> dict[str, Any]:
        """dtype, shape (its signature if any) and first scale/zero point of tensor `idx`."""
        t = g.Tensors(idx)
        q = t.Quantization()
        d: dict[str, Any] = {
            "dtype": types.get(t.Type(), "?").lower(),
            "shape": t.ShapeSignatureAsNumpy().tolist()
            if t.ShapeSignatureLength()
            else t.ShapeAsNumpy().tolist(),
        }
        if q is not None and q.ScaleLength():
            d["scale"] = float(q.Scale(0))
            d["zero_point"] = int(q.ZeroPoint(0)) if q.ZeroPointLength() else 0
        return d

    return {"input": info(int(g.Inputs(0))), "output": info(int(g.Outputs(0)))}

"""Export a variant to ONNX with tf2onnx, in its own process (it imports TensorFlow).

    python -m dermedge.benchmark --export-onnx '[SPEC, ...]'

SPEC: {"src": path, "kind": "keras" | "tflite", "dst": path.onnx, "opset": 17}. The Keras model is
exported through `tf2onnx.convert.from_keras` (falling back to a traced `tf.function` when that
fails on a Keras 3 model); a quantized .tflite through tf2onnx's TFLite front end, which keeps
its int8 weights, scales and zero points (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime
fuses into integer kernels). Prints one JSON line per spec: {"ok", "error", "seconds", "method", ...}.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any


def _keras(src: str, dst: str, opset: int) -> str:
    """Export a .keras with tf2onnx (from_keras, else a traced function); the method used."""
    import keras
    import tensorflow as tf
    import tf2onnx

    model = keras.models.load_model(src, compile=False)
    shape = tuple(model.inputs[0].shape)
    sig = [tf.TensorSpec((None, *shape[1:]), tf.float32, name="image")]
    try:
        tf2onnx.convert.from_keras(model, input_signature=sig, opset=opset, output_path=dst)
        return "tf2onnx.convert.from_keras"
    except Exception as e:  # Keras 3 models trip parts of from_keras; a traced function does not
        print(
            f"from_keras failed ({type(e).__name__}: {e}); retrying from_function", file=sys.stderr
        )
    fn = tf.function(lambda x: model(x, training=False))
    tf2onnx.convert.from_function(fn, input_signature=sig, opset=opset, output_path=dst)
    return "tf2onnx.convert.from_function"


def _tflite(src: str, dst: str, opset: int) -> str:
    """Export a .tflite through tf2onnx's TFLite front end; the method used."""
    import tf2onnx

    tf2onnx.convert.from_tflite(src, opset=opset, output_path=dst)
    return "tf2onnx.convert.from_tflite"


def export(spec: dict[str, Any]) -> dict[str, Any]:
    """Convert; never raises (the error is the result)."""
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "ok": False,
        "dst": spec["dst"],
        "src": spec["src"],
        "kind": spec["kind"],
    }
    try:
        from importlib import metadata

        result["tf2onnx"] = metadata.version("tf2onnx")
        fn = _keras if spec["kind"] == "keras" else _tflite
        result["method"] = fn(spec["src"], spec["dst"], int(spec.get("opset", 17)))
        import onnx

        onnx.checker.check_model(spec["dst"])
        result["ok"] = True
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        msg = str(e).strip().splitlines()
        result["error"] = f"{type(e).__name__}: {msg[-1] if msg else ''}"[:400]
        if os.path.exists(spec["dst"]):
            os.unlink(spec["dst"])
    result["seconds"] = time.perf_counter() - t0
    return result


def main(argv: list[str]) -> int:
    """`--export-onnx SPECS_JSON` (a list of specs, one TensorFlow start for all): one JSON line
    per spec on the real stdout."""
    specs = json.loads(argv[argv.index("--export-onnx") + 1])
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for spec in specs if isinstance(specs, list) else [specs]:
        proto.write(json.dumps(export(spec)) + "\n")
        proto.flush()
    return 0

"""Low-level LiteRT probe for scripts/pi-check (`--probe`): no dermedge code involved.

    python tests/pi/probe.py make OUT.tflite IMG... # host, needs TensorFlow: small int8 CNN
    python tests/pi/probe.py run MODEL IMG...       # any arch: raw interpreter outputs as JSON

`make` builds a small CNN (conv, depthwise, 1x1, residual add, pooling, dense; random weights)
and converts it to full-int8 with uint8 I/O, calibrated on the given photos' pixels. Its 16
outputs are raw uint8 values, much more sensitive to a kernel difference than one sigmoid.
`run` feeds each photo (squash-resized with Pillow) and prints every output value, so the x86_64
and emulated ARM runs can be compared exactly. It uses ai_edge_litert, else tflite_runtime.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import numpy as np
from PIL import Image


def _pixels(path: str, size: int) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.uint8)


def make(out: str, images: list[str]) -> int:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    L = tf.keras.layers
    inp = tf.keras.Input((96, 96, 3))
    x = L.Rescaling(1 / 128.0, offset=-127 / 128.0)(inp)
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu6")(x)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    x = L.Conv2D(32, 1, activation="relu6")(x)
    y = L.Conv2D(32, 3, strides=2, padding="same", activation="relu6")(x)
    z = L.Conv2D(32, 3, strides=2, padding="same")(x)
    x = L.Add()([y, z])
    x = L.AveragePooling2D(2)(x)
    x = L.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inp, L.Dense(16)(x))

    calib = [_pixels(p, 96)[None].astype(np.float32) for p in images]

    def rep():
        for a in calib:
            yield [a]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    with open(out, "wb") as f:
        f.write(conv.convert())
    return 0


def run(model: str, images: list[str]) -> int:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # 32-bit ARM: only tflite-runtime has wheels there
        from tflite_runtime.interpreter import Interpreter
    it = Interpreter(model_path=model)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    size = int(inp["shape"][1])
    outputs = {}
    for path in images:
        x = _pixels(path, size)[None]
        if inp["dtype"] == np.float32:
            x = x.astype(np.float32)
        elif inp["dtype"] != np.uint8:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], x)
        it.invoke()
        outputs[path] = [
            np.asarray(it.get_tensor(o["index"])).ravel().tolist() for o in it.get_output_details()
        ]
    print(json.dumps({"machine": platform.machine(), "outputs": outputs}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["make", "run"])
    ap.add_argument("model")
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    return (make if args.cmd == "make" else run)(args.model, args.images)


if __name__ == "__main__":
    sys.exit(main())

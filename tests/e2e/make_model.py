"""Build a tiny int8 .tflite (uint8 in/out) with a model-card sidecar, for the phone-page tests.

Used only when no committed test model (tests/assets/*.tflite) is present. Needs TensorFlow.
    python tests/e2e/make_model.py OUT_DIR [--size 128] [--crop center]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys


def build(out_dir: str, size: int = 128, crop: str = "center", data_dir: str | None = None) -> str:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    from dermedge import DISCLAIMER
    from dermedge.data.contract import InputContract, preprocess

    contract = InputContract(size=size, crop=crop)
    tf.keras.utils.set_random_seed(7)
    inp = tf.keras.Input((size, size, 3), name="pixels")
    x = tf.keras.layers.Rescaling(
        1.0 / contract.std, offset=-contract.mean / contract.std, name="normalize"
    )(inp)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = tf.keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    x = tf.keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(1, activation="sigmoid")(x)
    model = tf.keras.Model(inp, out)

    files = []
    if data_dir:
        files = sorted(glob.glob(os.path.join(data_dir, "isic-mvb", "train", "*", "*.jpg")))[::40][
            :48
        ]
    rng = np.random.default_rng(0)
    samples = [preprocess(f, contract) for f in files] or [
        rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(16)
    ]
    if files:  # a few steps so the output is not a constant: labels from the folder name
        xs = np.stack(samples).astype("float32")
        ys = np.array([1.0 if "/malignant/" in f else 0.0 for f in files], dtype="float32")
        model.compile("adam", "binary_crossentropy")
        model.fit(xs, ys, epochs=15, batch_size=16, verbose=0)

    def rep():
        for s in samples:
            yield [s[None].astype("float32")]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    blob = conv.convert()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"tiny_int8_{size}_{crop}.tflite")
    with open(path, "wb") as f:
        f.write(blob)
    card = {
        "schema": "dermedge.card/1",
        "name": f"tiny-int8-{size}-{crop}",
        "arch": "tiny-cnn",
        "classes": ["benign", "malignant"],
        "positive_class": "malignant",
        "output": "sigmoid",
        "input": contract.to_dict(),
        "threshold": 0.5,
        "threshold_policy": {"target_sensitivity": 0.95, "chosen_on": "none (test model)"},
        "metrics": {},
        "data": {},
        "versions": {"tensorflow": tf.__version__},
        "created": "1970-01-01T00:00:00Z",
        "quantization": "int8",
        "disclaimer": DISCLAIMER,
    }
    with open(path + ".json", "w") as f:
        json.dump(card, f, indent=1)
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--crop", default="center")
    ap.add_argument("--data", default=os.environ.get("DERMEDGE_DATA"))
    a = ap.parse_args()
    print(build(a.out_dir, a.size, a.crop, a.data))
    sys.exit(0)

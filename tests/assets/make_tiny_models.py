"""Regenerate the tiny .tflite test models in tests/assets/ (needs TensorFlow and the shared data).

    python tests/assets/make_tiny_models.py [--data ../shared/data]

A 64x64 CNN shaped like the real models (float input 0..255, `normalize` Rescaling layer, sigmoid
P(malignant)) is trained for a few epochs on real isic-mvb photos, so its outputs vary with the
image, then converted to fp32, int8 with uint8 I/O and int8 with int8 I/O (calibrated on real
photos). Each gets an embedded model card; `tiny_fp32_nocard.tflite` is the raw fp32 conversion.
These are test fixtures only: tiny, barely trained, never for use on patients.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dermedge import CLASSES, DISCLAIMER  # noqa: E402
from dermedge.data.contract import InputContract, preprocess  # noqa: E402
from dermedge.edge.card import embed_card  # noqa: E402

OUT = Path(__file__).resolve().parent
CONTRACT = InputContract(size=64, crop="squash")
SEED = 1234


def load_split(data: Path, split: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed uint8 images and 0/1 labels, `per_class` of each class, fixed order."""
    images, labels = [], []
    for label, cls in enumerate(CLASSES):
        files = sorted((data / "isic-mvb" / split / cls).glob("*.jpg"))
        random.Random(SEED).shuffle(files)
        for f in files[:per_class]:
            images.append(preprocess(f, CONTRACT))
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.float32)


def build_model():
    """Tiny CNN per docs/INTERFACES.md: raw 0..255 float input, `normalize`, sigmoid output."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(SEED)
    inputs = keras.Input(shape=(CONTRACT.size, CONTRACT.size, 3), name="image")
    x = layers.Rescaling(1 / CONTRACT.std, offset=-CONTRACT.mean / CONTRACT.std, name="normalize")(
        inputs
    )
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(1, activation="sigmoid", name="prob")(x)
    return keras.Model(inputs, outputs, name="tiny_cnn")


def sensitivity_threshold(probs: np.ndarray, labels: np.ndarray, target: float = 0.95) -> float:
    """Largest threshold that still flags `target` of the malignant images."""
    positives = np.sort(probs[labels == 1])
    k = int(np.floor((1 - target) * len(positives)))
    return float(positives[k])


def convert(model, mode: str, calib: np.ndarray) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in calib)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = tf.uint8 if mode == "int8" else tf.int8
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    return converter.convert()


def card(name: str, quantization: str, threshold: float, metrics: dict) -> dict:
    import tensorflow as tf

    return {
        "schema": "dermedge.card/1",
        "name": name,
        "arch": "tiny-cnn (test fixture)",
        "classes": list(CLASSES),
        "positive_class": "malignant",
        "output": "sigmoid",
        "input": CONTRACT.to_dict(),
        "threshold": round(threshold, 4),
        "threshold_policy": {"target_sensitivity": 0.95, "chosen_on": "isic-mvb/test subset"},
        "metrics": metrics,
        "data": {"manifest_sha256": None, "note": "isic-mvb train subset; test fixture only"},
        "versions": {"tensorflow": tf.__version__},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quantization": quantization,
        "disclaimer": DISCLAIMER,
    }


def main() -> None:
    default = os.environ.get("DERMEDGE_DATA", ROOT.parent / "shared" / "data")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(default))
    args = parser.parse_args()

    x_train, y_train = load_split(args.data, "train", 300)
    x_test, y_test = load_split(args.data, "test", 100)
    model = build_model()
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x_train.astype(np.float32), y_train, epochs=8, batch_size=32, verbose=2)
    probs = model.predict(x_test.astype(np.float32), verbose=0)[:, 0]
    threshold = sensitivity_threshold(probs, y_test)
    metrics = {
        "test_subset_accuracy@0.5": round(float(np.mean((probs >= 0.5) == y_test)), 3),
        "test_subset_sensitivity@threshold": round(
            float(np.mean(probs[y_test == 1] >= threshold)), 3
        ),
        "test_subset_specificity@threshold": round(
            float(np.mean(probs[y_test == 0] < threshold)), 3
        ),
    }
    calib = x_train[::6]
    raw = convert(model, "fp32", calib)
    (OUT / "tiny_fp32_nocard.tflite").write_bytes(raw)
    outputs = {
        "tiny_fp32.tflite": embed_card(raw, card("tiny-fp32", "fp32", threshold, metrics)),
        "tiny_int8.tflite": convert(model, "int8", calib),
        "tiny_int8_int8io.tflite": convert(model, "int8io", calib),
    }
    for name in ("tiny_int8.tflite", "tiny_int8_int8io.tflite"):
        outputs[name] = embed_card(
            outputs[name], card(name[:-7].replace("_", "-"), "int8", threshold, metrics)
        )
    for name, data in outputs.items():
        (OUT / name).write_bytes(data)
    summary = {name: len(data) for name, data in outputs.items()} | {"threshold": threshold}
    print(json.dumps(summary | metrics, indent=1))


if __name__ == "__main__":
    main()

"""Keras model -> TFLite variants (fp32, fp16, dynamic, int8) behind an accuracy gate.

`dermedge convert RUN` exports the trained Keras model once (``keras.Model.export`` to a
SavedModel, then ``tf.lite.TFLiteConverter.from_saved_model``), makes each requested variant,
embeds the model card in every ``.tflite`` and evaluates each one on the run's test split through
``dermedge.edge.runtime.EdgeModel`` - the code that runs on the device - against the Keras model
on the same pixels. A variant outside the tolerances is kept under ``rejected/`` only.

Import-light on purpose: TensorFlow is imported only when a conversion runs, never for
``dermedge convert --inspect``. From Python: ``run(run_folder, Options(quant=["int8"])) ->
Result`` (``Result.passed``, ``.rows``, ``.markdown``, ``.out_dir``), with the gate's
``Tolerances``; these are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

VARIANTS = ("fp32", "fp16", "dynamic", "int8")
FILE_NAMES = {v: f"model_{v}.tflite" for v in VARIANTS}
REJECTED_DIR = "rejected"
FEATURES = "dermedge_features"  # a guarded model's second output: the penultimate features


class ConvertError(Exception):
    """Bad input or a conversion that cannot go on; the message is one line saying what to do."""


def log(msg: str) -> None:
    """Print a progress line to stderr."""
    print(msg, file=sys.stderr, flush=True)


def parse_quant(spec: str) -> list[str]:
    """`"fp32,int8"` or `"all"` -> the variants in canonical order; ConvertError on a typo."""
    items = [s.strip().lower() for s in spec.replace(" ", ",").split(",") if s.strip()]
    if not items:
        raise ConvertError("--quant is empty; pick from fp32, fp16, dynamic, int8 or all")
    if "all" in items:
        return list(VARIANTS)
    unknown = [s for s in items if s not in VARIANTS]
    if unknown:
        raise ConvertError(
            f"unknown --quant {', '.join(unknown)}; pick from {', '.join(VARIANTS)} or all"
        )
    return [v for v in VARIANTS if v in items]


_LAZY = {"run": "pipeline", "Options": "pipeline", "Result": "pipeline", "Tolerances": "gate"}
__all__ = [
    "FEATURES",
    "FILE_NAMES",
    "REJECTED_DIR",
    "VARIANTS",
    "ConvertError",
    "log",
    "parse_quant",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """`run`, `Options`, `Result`, `Tolerances` on first use: the stage imports this module."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"dermedge.convert.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dermedge.convert' has no attribute {name!r}")

"""What to convert: a training run folder or a `.keras` file, its model card and its manifest.

Everything here fails with a one-line ConvertError (never a traceback) before any file is
written: a missing or truncated model, a model whose input is not an image batch, a run folder
without a manifest, a card without an input contract or threshold.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dermedge.convert import ConvertError
from dermedge.data.contract import InputContract
from dermedge.data.manifest import ManifestError, read_manifest

CARD_FILE = "model_card.json"
MODEL_FILE = "model.keras"
MANIFEST_FILE = "manifest.csv"


@dataclass
class Source:
    """A model to convert and everything the gate needs about it."""

    name: str
    model_path: Path
    run_dir: Path | None
    card: dict[str, Any]
    card_path: Path
    manifest: Path
    contract: InputContract
    threshold: float


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON file's object; ConvertError naming `what` if unreadable or not an object."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"cannot read {what} {path}: {_first_line(e)}") from e
    if not isinstance(obj, dict):
        raise ConvertError(f"{what} {path} is not a JSON object")
    return obj


def _manifest_csv(p: Path) -> Path:
    """The manifest.csv of a folder, or the path itself for a file."""
    return p / MANIFEST_FILE if p.is_dir() else p


def resolve(arg: str, data: str | None = None, card: str | None = None) -> Source:
    """The model, card and manifest named by RUN_OR_MODEL (+ --data / --card overrides)."""
    p = Path(arg)
    if not p.exists():
        raise ConvertError(f"{arg}: no such run folder or model file")
    if p.is_dir():
        run_dir: Path | None = p
        model_path = p / MODEL_FILE
        if not model_path.is_file():
            raise ConvertError(f"run folder {p} has no {MODEL_FILE} (has the training finished?)")
    elif p.suffix == ".keras":
        run_dir = None
        model_path = p
    elif p.suffix == ".tflite":
        raise ConvertError(
            f"{arg} is already a TFLite model; `dermedge convert --inspect {arg}` "
            "shows what it holds"
        )
    else:
        raise ConvertError(f"{arg}: expected a training run folder or a .keras model file")
    folder = run_dir or model_path.parent

    card_path = Path(card) if card else folder / CARD_FILE
    if not card_path.is_file():
        raise ConvertError(
            f"no model card at {card_path}: convert a finished training run, or "
            "pass --card CARD.json (the input contract and threshold)"
        )
    card_obj = _read_json(card_path, "model card")
    if not isinstance(card_obj.get("input"), dict):
        raise ConvertError(f"model card {card_path} has no 'input' contract")
    try:
        contract = InputContract.from_dict(card_obj["input"])
    except (TypeError, ValueError) as e:
        raise ConvertError(f"model card {card_path}: bad input contract: {_first_line(e)}") from e
    thr = card_obj.get("threshold")
    if (
        not isinstance(thr, (int, float))
        or isinstance(thr, bool)
        or not 0.0 <= float(thr) <= 1.0
        or math.isnan(float(thr))
    ):
        raise ConvertError(
            f"model card {card_path}: 'threshold' must be a probability, got {thr!r}"
        )

    manifest = _manifest_csv(Path(data)) if data else folder / MANIFEST_FILE
    if not manifest.is_file():
        where = f"run folder {folder}" if not data else f"--data {data}"
        raise ConvertError(
            f"{where} has no {MANIFEST_FILE} (the split the model was trained and "
            "tested on); pass --data MANIFEST"
        )
    name = run_dir.name if run_dir is not None else (card_obj.get("name") or model_path.stem)
    return Source(
        str(name), model_path, run_dir, card_obj, card_path, manifest, contract, float(thr)
    )


def records(manifest: Path) -> list[Any]:
    """The manifest's records; any failure to read it becomes a one-line ConvertError."""
    try:
        return read_manifest(manifest)
    except ManifestError as e:
        raise ConvertError(str(e)) from e
    except (OSError, UnicodeDecodeError, ValueError, KeyError) as e:
        raise ConvertError(f"cannot read manifest {manifest}: {_first_line(e)}") from e


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- the Keras model (TensorFlow imported here, lazily) ------------------------------------------


def load_keras(path: Path) -> Any:
    """`keras.models.load_model` with a one-line error for a corrupt, truncated or foreign file."""
    if path.stat().st_size == 0:
        raise ConvertError(f"cannot load Keras model {path}: empty file")
    if not zipfile.is_zipfile(path):
        raise ConvertError(
            f"cannot load Keras model {path}: not a .keras archive (corrupt or truncated)"
        )
    from dermedge.convert.quantize import import_tf

    import_tf()
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - keras raises anything from a bad archive
        raise ConvertError(
            f"cannot load Keras model {path}: {_first_line(e)} "
            "(corrupt or truncated file, or layers this dermedge does not know)"
        ) from e


def image_size(model: Any) -> int:
    """The side of the model's square RGB input; ConvertError if it is not an image batch."""
    inputs = model.inputs
    if len(inputs) != 1:
        raise ConvertError(
            f"the model has {len(inputs)} inputs; expected one image batch (N, S, S, 3)"
        )
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[1] != shape[2]:
        raise ConvertError(
            f"the model's input {shape} is not an image batch: expected (N, S, S, 3) "
            "float RGB pixels 0..255"
        )
    outputs = model.outputs
    if len(outputs) != 1 or tuple(outputs[0].shape)[-1] != 1:
        shapes = [tuple(o.shape) for o in outputs]
        raise ConvertError(
            f"the model's output {shapes[0] if len(shapes) == 1 else shapes} is not "
            "one sigmoid unit (N, 1) = P(malignant)"
        )
    return int(shape[1])


def layer_normalization(model: Any) -> dict[str, Any] | None:
    """(x - mean) / std as computed by the model's `normalize` layer (Rescaling or Normalization).

    Looks for the layer named `normalize`, else a Rescaling/Normalization layer fed by the input.
    None when there is none (nothing to check the card against).
    """
    import numpy as np
    from keras import layers, ops

    def named(m: Any) -> Any:  # also inside nested models (a backbone used as a layer)
        """The layer named `normalize` in `m` or in a model nested in it, else None."""
        for ly in m.layers:
            if ly.name == "normalize":
                return ly
            if hasattr(ly, "layers") and (found := named(ly)) is not None:
                return found
        return None

    def first(m: Any) -> Any:
        """The first non-input layer of `m` (looking inside a nested model), else None."""
        body = [ly for ly in m.layers if not isinstance(ly, layers.InputLayer)][:1]
        if body and hasattr(body[0], "layers"):
            return first(body[0])
        return body[0] if body else None

    layer = named(model)
    if layer is None and isinstance(f := first(model), (layers.Rescaling, layers.Normalization)):
        layer = f
    if isinstance(layer, layers.Rescaling):
        scale = np.asarray(layer.scale, dtype=np.float64)
        offset = np.asarray(layer.offset, dtype=np.float64)
        if np.any(scale == 0):
            return None
        return {
            "layer": layer.name,
            "mean": (-offset / scale).ravel(),
            "std": (1.0 / scale).ravel(),
        }
    if isinstance(layer, layers.Normalization):
        mean = np.asarray(ops.convert_to_numpy(layer.mean), dtype=np.float64)
        var = np.asarray(ops.convert_to_numpy(layer.variance), dtype=np.float64)
        if getattr(layer, "invert", False):
            return None
        return {
            "layer": layer.name,
            "mean": mean.ravel(),
            "std": np.sqrt(np.maximum(var, 1e-12)).ravel(),
        }
    return None

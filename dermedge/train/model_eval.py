"""Metrics and plots of a saved model (Keras, or a .tflite through the edge runtime) on labelled
records: what `dermedge evaluate` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dermedge.data.contract import InputContract
from dermedge.data.index import Record
from dermedge.runs import runs_root
from dermedge.train import evaluate as ev
from dermedge.train.config import TrainError
from dermedge.train.run_state import log


def predict(model: Any, x: Any, batch: int = 64) -> np.ndarray:
    """P(malignant) for uint8 (N, S, S, 3) images (an array, or a lazy one read in slices)."""
    out = np.empty(len(x), dtype=np.float64)
    for i in range(0, len(x), batch):
        chunk = np.asarray(x[i : i + batch], dtype=np.float32)
        out[i : i + batch] = np.asarray(model(chunk, training=False)).reshape(-1)
    return out


def _load_for_eval(model_path: Path) -> tuple[Any, tuple]:
    """A Keras model, or an EdgeModel for a .tflite; and its input shape."""
    try:
        if Path(model_path).suffix == ".tflite":
            from dermedge.edge.runtime import EdgeModel

            edge = EdgeModel(model_path)
            return edge, (None, edge.contract.size, edge.contract.size, 3)
        import keras

        model = keras.models.load_model(model_path, compile=False)
        return model, model.input_shape
    except Exception as e:  # noqa: BLE001
        raise TrainError(
            f"cannot load model {model_path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e


def _eval_contract(card: dict[str, Any] | None, shape: tuple) -> InputContract:
    """The card's contract (or a default one of the model's input size), checked against it."""
    contract = (
        InputContract.from_dict(card["input"])
        if card is not None
        else InputContract(size=int(shape[1]))
    )
    if shape[1] is not None and int(shape[1]) != contract.size:
        raise TrainError(f"model input is {shape[1]}px but its card says {contract.size}px")
    return contract


def _eval_records(records: list[Record], split: str) -> tuple[list[Record], str]:
    """The records of `split`; or all of them (as split "all") when the data has no splits."""
    recs = [r for r in records if r.split == split]
    if recs:
        return recs, split
    if any(r.split in ("train", "val", "test") for r in records):
        have = sorted({str(r.split) for r in records})
        raise TrainError(f"no images in split {split!r} (have: {have})")
    return [Record(r.path, r.label, r.source, r.group, "all", r.dx) for r in records], "all"


def evaluate_model(
    model_path: Path,
    card: dict[str, Any] | None,
    records: list[Record],
    split: str,
    out_dir: Path,
    threshold: float | None = None,
    n_boot: int = 2000,
    batch: int = 64,
    cache_dir: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics and plots of a saved Keras model, or of a .tflite run through the edge runtime, on
    the labelled `records` (one split or all)."""
    from dermedge.train.data import load_split

    model, shape = _load_for_eval(model_path)
    contract = _eval_contract(card, shape)
    thr = float(threshold if threshold is not None else (card or {}).get("threshold", 0.5))
    recs, used = _eval_records(records, split)
    data = load_split(recs, used, contract, cache_dir or str(runs_root() / "cache"))
    if len(data) == 0:
        raise TrainError("no readable images to evaluate")
    if min(data.counts().values()) == 0:
        log(f"warning: only one class present {data.counts()}: AUC and some metrics are undefined")
    prob = (
        model.predict(data.x)
        if Path(model_path).suffix == ".tflite"
        else predict(model, data.x, batch)
    )
    info = {
        "split": used,
        "model": str(model_path),
        "skipped": data.skipped,
        "card_threshold": (card or {}).get("threshold"),
        **(extra or {}),
    }
    name = (card or {}).get("name", Path(model_path).stem)
    return ev.evaluate_predictions(
        data.y,
        prob,
        thr,
        out_dir,
        n_boot=n_boot,
        title=f"{name} {used}",
        paths=data.paths,
        extra=info,
    )

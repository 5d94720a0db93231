"""Training: data pipelines, models, trainer and evaluation (needs the `train` extra).

The public names, in the order a notebook meets them (each imported on first use, PEP 562, so
`import dermedge.train` stays cheap and TensorFlow loads only when a name that needs it is used):
- `TrainConfig`, `TrainError`, `check_config`: a run's settings (TensorFlow-free);
- `input_contract(arch, size)`, `build_model(arch, size, weights)`, `compile_model(model, lr,
  steps)`: the CNN as every training phase builds and compiles it;
- `load_split(records, split, contract)`, `make_dataset(split_arrays, batch, training)`,
  `augment_preset(name)`: decoded pixels and the tf.data pipeline with augmentation;
- `train(cfg) -> TrainResult`: the whole run (phases, early stopping, threshold on val, test
  report, model card) in `runs/train/<name>/`;
- `predict(model, pixels)`, `evaluate_model`, `evaluate_predictions(y, prob, threshold, out)`,
  `report_table(report)`, `plot_history(history, png)`: scores, metrics and their figures;
- `run_external(...)`, `ExternalError`: a model on a dataset it never trained on (overlap check,
  metrics at the card threshold, referral per diagnosis).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "config",
    "TrainError": "config",
    "check_config": "config",
    "input_contract": "models",
    "build_model": "models",
    "compile_model": "trainer",
    "load_split": "data",
    "make_dataset": "data",
    "augment_preset": "data",
    "train": "trainer",
    "TrainResult": "trainer",
    "predict": "model_eval",
    "evaluate_model": "model_eval",
    "evaluate_predictions": "evaluate",
    "report_table": "evaluate",
    "plot_history": "evaluate",
    "run_external": "external",
    "ExternalError": "external",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the exported names on first use (PEP 562), so the package import stays cheap."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dermedge.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dermedge.train' has no attribute {name!r}")

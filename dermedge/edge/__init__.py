"""On-device inference for dermedge, without TensorFlow: model card, .tflite runtime, camera loop.

`EdgeModel` (runtime), `read_card`/`embed_card`/`inspect_model` (card) are imported on first use,
so `import dermedge.edge` stays cheap; `resolve_model("tiny")` is the file of a bundled model
(or a path, checked). A site's own threshold, step by step (what `dermedge calibrate` does, from
`edge.calibrate`): `read_site_data(root)`, `score(model, records) -> (Cases, skipped)`,
`holdout_split(records, fraction, seed)`, `new_threshold(cases, target, margin_se)`,
`operating_point(cases, threshold)`, `calibration_record(...)`, `calibrated_card(card, record)`
and `write_model(src, card, out)` (a copy of the model file carrying that card).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EdgeModel": "runtime",
    "EdgeError": "runtime",
    "load_runtime": "runtime",
    "read_card": "card",
    "embed_card": "card",
    "inspect_model": "card",
    "resolve_model": "cli",
    "CalibrationError": "calibrate",
    "Cases": "calibrate",
    "read_site_data": "calibrate",
    "score": "calibrate",
    "holdout_split": "calibrate",
    "new_threshold": "calibrate",
    "operating_point": "calibrate",
    "margin_of": "calibrate",
    "calibration_record": "calibrate",
    "calibrated_card": "calibrate",
    "write_model": "calibrate",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the exported names on first use (PEP 562), so the package import stays cheap."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dermedge.edge.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dermedge.edge' has no attribute {name!r}")

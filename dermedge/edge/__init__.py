"""On-device inference for dermedge, without TensorFlow: model card, .tflite runtime, camera loop.

`EdgeModel` (runtime), `read_card`/`embed_card`/`inspect_model` (card) are imported on first use,
so `import dermedge.edge` stays cheap.
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
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the exported names on first use (PEP 562), so the package import stays cheap."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dermedge.edge.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dermedge.edge' has no attribute {name!r}")

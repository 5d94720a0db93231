"""`dermedge evaluate` on a .tflite: the deployed file itself, run through the edge runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from dermedge.cli import main

pytestmark = pytest.mark.slow  # trains, converts or runs a whole benchmark

ASSETS = Path(__file__).parents[1] / "assets"


@pytest.mark.slow
def test_evaluate_a_tflite_through_the_edge_runtime(isic_dir, tmp_path):
    pytest.importorskip("matplotlib")
    for cls in ("benign", "malignant"):
        (tmp_path / "ds" / cls).mkdir(parents=True)
        for src in sorted((isic_dir / "test" / cls).glob("*.jpg"))[:12]:
            shutil.copy(src, tmp_path / "ds" / cls / src.name)
    out = tmp_path / "eval"
    model = ASSETS / "tiny_int8.tflite"
    r = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(model),
            "--data",
            str(tmp_path / "ds"),
            "--out",
            str(out),
            "--bootstrap",
            "100",
        ],
    )
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    from dermedge.edge.card import read_card

    assert metrics["operating_threshold"] == pytest.approx(read_card(model)["threshold"])
    assert metrics["n"] == 24 and 0.0 <= metrics["operating"]["roc_auc"] <= 1.0
    assert (out / "roc.png").stat().st_size > 1000

    # without --out, a bare model file's results go under runs/eval/, never beside the model
    # (the shipped models live inside the installed package)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    shutil.copy(model, pkg / model.name)
    r = CliRunner(env={"DERMEDGE_RUNS": str(tmp_path / "runs")}).invoke(
        main,
        ["evaluate", str(pkg / model.name), "--data", str(tmp_path / "ds"), "--bootstrap", "100"],
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in pkg.iterdir()) == [model.name]
    assert (tmp_path / "runs" / "eval" / "tiny_int8-ds-test" / "metrics.json").is_file()

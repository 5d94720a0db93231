"""Metrics, bootstrap CIs, threshold choice, calibration and plots (TensorFlow-free)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dermedge.train import evaluate as ev


def _toy(n: int = 400, seed: int = 0, sep: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.45).astype(int)
    z = rng.normal(0, 1, n) + sep * y
    return y, 1 / (1 + np.exp(-(z - sep / 2)))


def test_importing_evaluate_does_not_import_tensorflow():
    code = (
        "import sys, dermedge.train.evaluate as e, dermedge.train.card, dermedge.train; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_binary_metrics_by_hand():
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    p = [0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.5, 0.8]
    m = ev.binary_metrics(y, p, 0.5)
    # predicted positive: 0.9 0.6 0.7 0.5 0.8 -> tp 3 (0.9, 0.6, 0.8), fp 2 (0.7, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 2, 2, 1)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # labels as names work too, and >= is the rule
    m2 = ev.binary_metrics(["malignant", "benign"], [0.5, 0.49], 0.5)
    assert (m2["tp"], m2["tn"]) == (1, 1)


def test_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    y, p = _toy(300)
    p = np.round(p, 1)  # many ties
    assert ev.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert np.isnan(ev.roc_auc([1, 1], [0.2, 0.3]))


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="labels but"):
        ev.binary_metrics([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        ev.binary_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="0/1"):
        ev.binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="positive"):
        ev.choose_threshold([0, 0], [0.1, 0.2])


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    y, p = _toy(400)
    ci = ev.bootstrap_ci(y, p, 0.5, n_boot=300, seed=1)
    m = ev.binary_metrics(y, p, 0.5)
    for k in ev.METRICS:
        lo, hi = ci[k]
        assert lo <= m[k] <= hi, k
        assert 0 < hi - lo < 0.2, k
    assert ci == ev.bootstrap_ci(y, p, 0.5, n_boot=300, seed=1)
    assert ci != ev.bootstrap_ci(y, p, 0.5, n_boot=300, seed=2)
    # bigger sample -> narrower interval
    y2, p2 = _toy(4000)
    ci2 = ev.bootstrap_ci(y2, p2, 0.5, n_boot=200, seed=1)
    assert ci2["roc_auc"][1] - ci2["roc_auc"][0] < ci["roc_auc"][1] - ci["roc_auc"][0]


def test_choose_threshold_meets_target():
    y, p = _toy(500, seed=3)
    t = ev.choose_threshold(y, p, 0.95)
    m = ev.binary_metrics(y, p, t["threshold"])
    assert m["recall"] >= 0.95
    # the highest such threshold: nudging it up loses the target
    assert ev.binary_metrics(y, p, np.nextafter(t["threshold"], 1))["recall"] < 0.95
    # a margin asks for more sensitivity, so the threshold can only go down
    t2 = ev.choose_threshold(y, p, 0.95, margin_se=1.0)
    assert t2["threshold"] <= t["threshold"]
    n_pos = int(np.sum(y))
    assert t2["effective_target"] == pytest.approx(0.95 + np.sqrt(0.95 * 0.05 / n_pos))
    assert t2["sensitivity"] >= t2["effective_target"]
    assert ev.choose_threshold(y, p, 1.0)["sensitivity"] == 1.0


def test_calibration_and_ece():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)  # perfectly calibrated
    cal = ev.calibration(y, p)
    assert cal["ece"] < 0.02 and len(cal["bins"]) == 10
    assert sum(b["n"] for b in cal["bins"]) == 20000
    bad = ev.calibration(y, np.clip(p * 0.5, 0, 1))  # under-confident by half
    assert bad["ece"] > 0.2


def test_evaluate_predictions_writes_everything(tmp_path):
    y, p = _toy(200)
    paths = [f"img{i}.jpg" for i in range(200)]
    rep = ev.evaluate_predictions(
        y, p, 0.3, tmp_path, n_boot=200, title="toy", paths=paths, extra={"split": "test"}
    )
    for f in (
        "metrics.json",
        "predictions.csv",
        "confusion_matrix.png",
        "roc.png",
        "pr.png",
        "reliability.png",
    ):
        assert (tmp_path / f).is_file() and (tmp_path / f).stat().st_size > 0, f
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["operating_threshold"] == 0.3
    for key in ("operating", "at_0.5"):
        for k in ev.METRICS:
            lo, hi = saved[key]["ci95"][k]
            assert lo <= saved[key][k] <= hi
    assert saved["at_0.5"]["threshold"] == 0.5
    assert 0 <= saved["ece"] <= 1 and saved["roc_auc_ci95"][0] < saved["roc_auc"]
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 201
    table = ev.report_table(rep)
    assert "roc_auc" in table and "t=0.5" in table and "[" in table
    s = ev.summarize(rep)
    assert s["roc_auc"] == rep["roc_auc"] and len(s["recall_ci95"]) == 2


def test_single_class_is_reported_not_crashing(tmp_path):
    rep = ev.evaluate_predictions([0, 0, 0], [0.1, 0.7, 0.2], 0.5, tmp_path, n_boot=100)
    assert rep["roc_auc"] is None and rep["operating"]["recall"] is None
    assert rep["operating"]["specificity"] == pytest.approx(2 / 3)
    json.loads((tmp_path / "metrics.json").read_text())  # NaN written as null, valid JSON


def test_plot_history(tmp_path):
    hist = [
        {
            "epoch": i + 1,
            "phase": "frozen" if i < 2 else "finetune",
            "loss": 1 / (i + 1),
            "auc": 0.5 + i / 10,
            "val_loss": 1.1 / (i + 1),
            "val_auc": 0.5 + i / 11,
        }
        for i in range(4)
    ]
    ev.plot_history(hist, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000

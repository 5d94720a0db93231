"""`dermedge calibrate`: a site's threshold from its own cases, on the shipped models and real photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dermedge_testing import DATA, REPO, _need

from dermedge.data.index import Record
from dermedge.edge.calibrate import data_digest, holdout_split
from dermedge.edge.card import read_card
from dermedge.metrics import choose_threshold, roc_curve

TINY = REPO / "dermedge" / "models" / "tiny.tflite"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DERMEDGE_RUNS": os.environ.get("DERMEDGE_RUNS", "/tmp/dermedge-test-runs"),
    }
    return subprocess.run(
        [sys.executable, "-m", "dermedge.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )


def _site(tmp: Path, n_benign: int, n_malignant: int) -> Path:
    """A clinic's folder as a person fills it: benign/ and malignant/, real photos linked in."""
    src = _need(DATA / "isic-mvb" / "test")
    root = tmp / "clinic"
    for label, n in (("benign", n_benign), ("malignant", n_malignant)):
        (root / label).mkdir(parents=True)
        for p in sorted((src / label).iterdir())[:n]:
            (root / label / p.name).symlink_to(p)
    return root


def _probs(model_path: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels and P(malignant) of a class-folder site, computed here independently."""
    from dermedge.data.contract import preprocess
    from dermedge.edge.runtime import EdgeModel

    model = EdgeModel(model_path)
    y, p = [], []
    for label in ("benign", "malignant"):
        for f in sorted((root / label).iterdir()):
            y.append(int(label == "malignant"))
            p.append(model.predict(preprocess(f, model.contract))[0])
    return np.asarray(y), np.asarray(p)


def test_calibrate_writes_a_model_at_the_sites_threshold(tmp_path: Path) -> None:
    site = _site(tmp_path, 30, 20)
    out = tmp_path / "clinic.tflite"
    before = TINY.read_bytes()
    r = _cli("calibrate", str(TINY), "--data", str(site), "--site", "clinic-a", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert TINY.read_bytes() == before  # the uncalibrated model is left as it was
    card, old = read_card(out), read_card(TINY)
    y, p = _probs(TINY, site)
    want = choose_threshold(y, p, 0.95, old["threshold_policy"]["margin_se"])["threshold"]
    assert card["threshold"] == pytest.approx(want)
    cal = card["calibration"]
    assert cal["site"] == "clinic-a" and cal["data"]["counts"] == {"benign": 30, "malignant": 20}
    assert cal["original_threshold"] == old["threshold"] and cal["previous"] is None
    assert cal["data"]["sha256"] and cal["tool"]["dermedge"]
    assert cal["after"]["sensitivity"] >= 0.95
    # only the card changed: the calibrated model gives the same probabilities
    assert np.array_equal(_probs(out, site)[1], p)
    # the policy line speaks of the site: its own figures, the training ones kept apart
    policy = card["threshold_policy"]
    assert policy["chosen_on"] == "site calibration (clinic-a)"
    assert policy["site_sensitivity"] == cal["after"]["sensitivity"]
    assert policy["site_specificity"] == cal["after"]["specificity"]
    assert not {k for k in policy if k.startswith("val_")}
    assert policy["training_policy"] == old["threshold_policy"]
    report = json.loads((tmp_path / "clinic.calibration" / "report.json").read_text())
    assert report["chosen"]["threshold"] == card["threshold"]
    assert "old threshold" in r.stdout and "new threshold" in r.stdout
    # 20 malignant cases cannot show sensitivity >= 0.85 with confidence: the user is told
    assert "collect more malignant cases" in r.stderr
    assert "\r" not in r.stderr and "site images" not in r.stderr  # no bar outside a terminal
    # every reader of the card shows it
    shown = _cli("card", str(out)).stdout
    assert "site 'clinic-a'" in shown and f"{card['threshold']:.3f}" in shown
    verbose = subprocess.run(
        [
            sys.executable,
            "-m",
            "dermedge.edge.cli",
            "-v",
            "--model",
            str(out),
            str(next((site / "benign").iterdir())),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verbose.returncode == 0 and "calibrated: site 'clinic-a'" in verbose.stderr

    # calibrating a calibrated model replaces the calibration and says so; the trained one stays
    again = tmp_path / "again.tflite"
    r2 = _cli(
        "calibrate",
        str(out),
        "--data",
        str(site),
        "--site",
        "clinic-b",
        "--out",
        str(again),
        "--target-sensitivity",
        "0.9",
    )
    assert r2.returncode == 0, r2.stderr
    assert "calibrated for 'clinic-a'" in r2.stderr and "replaced" in r2.stderr
    cal2 = read_card(again)["calibration"]
    assert cal2["original_threshold"] == old["threshold"]
    assert cal2["previous"]["site"] == "clinic-a" and cal2["target_sensitivity"] == 0.9
    assert read_card(again)["threshold_policy"]["training_policy"] == old["threshold_policy"]


def test_calibrate_refuses_too_few_cases(tmp_path: Path) -> None:
    site = _site(tmp_path, 40, 19)
    out = tmp_path / "x.tflite"
    r = _cli("calibrate", str(TINY), "--data", str(site), "--out", str(out))
    assert r.returncode == 2 and not out.exists()
    assert "19 malignant" in r.stderr and "Traceback" not in r.stderr
    assert len([x for x in r.stderr.splitlines() if x.startswith("Error")]) == 1


def test_calibrate_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(TINY.read_bytes())
    r = _cli("calibrate", str(model), "--data", str(tmp_path), "--out", str(model))
    assert r.returncode == 2 and "--out must differ" in r.stderr


def test_holdout_keeps_lesions_together_and_classes_balanced() -> None:
    recs = [
        Record(f"/x/{i}.jpg", "malignant" if i % 4 == 0 else "benign", "s", group=f"g{i // 2}")
        for i in range(200)
    ]
    calib, held = holdout_split(recs, 0.5, seed=3)
    assert not (calib & held).any() and (calib | held).all()
    for g in {r.group for r in recs}:
        sides = {bool(held[i]) for i, r in enumerate(recs) if r.group == g}
        assert len(sides) == 1, g
    mal = np.array([r.label == "malignant" for r in recs])
    assert abs(held[mal].mean() - 0.5) < 0.1 and abs(held[~mal].mean() - 0.5) < 0.1
    assert np.array_equal(holdout_split(recs, 0.5, seed=3)[1], held)
    assert not np.array_equal(holdout_split(recs, 0.5, seed=4)[1], held)


def test_data_digest_follows_labels_and_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    base = data_digest([Record(str(a), "benign", "s"), Record(str(b), "malignant", "s")])
    assert base == data_digest([Record(str(b), "malignant", "s"), Record(str(a), "benign", "s")])
    assert base != data_digest([Record(str(a), "malignant", "s"), Record(str(b), "benign", "s")])


def test_numpy_roc_curve_matches_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.5 + 0.4 * y, 2)  # ties, as int8 outputs have
    fpr, tpr = roc_curve(y, p)
    ref_fpr, ref_tpr, _ = metrics.roc_curve(y, p, drop_intermediate=False)
    assert np.allclose(fpr, ref_fpr) and np.allclose(tpr, ref_tpr)


def test_calibrate_is_edge_only() -> None:
    code = (
        "import sys, dermedge.edge.calibrate; "
        "bad = [m for m in ('tensorflow', 'sklearn', 'matplotlib', 'keras', 'dermedge.train') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_derm7pt_half_calibration_holds_on_the_other_half(tmp_path: Path) -> None:
    """The field-workflow demo: calibrate on a seeded, grouped half of another atlas, check on the
    other half that the new threshold keeps its sensitivity target (within the sample's noise)."""
    root = _need(DATA / "derm7pt")
    out = tmp_path / "tiny-derm7pt.tflite"
    r = _cli(
        "calibrate",
        str(TINY),
        "--data",
        str(root),
        "--holdout",
        "0.5",
        "--seed",
        "0",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    cal = read_card(out)["calibration"]
    held = cal["holdout"]
    assert held["counts"]["malignant"] > 100 and held["counts"]["benign"] > 300
    assert held["after"]["sensitivity"] >= 0.90
    assert cal["after"]["sensitivity"] >= cal["effective_target"]


DEFAULT = REPO / "dermedge" / "models" / "default.tflite"


def _derm7pt_site(tmp: Path, seed: int | None, n: int = 60) -> Path:
    """`n` benign + `n` malignant Derm7pt cases as a clinic's folder: the first of each in the
    atlas's order (seed None) or a seeded random draw; another device than the model was trained on."""
    import random

    from dermedge.data.index import read_dataset

    records = read_dataset(str(_need(DATA / "derm7pt"))).records
    root = tmp / f"derm7pt-{seed}"
    rng = random.Random(seed)
    for label in ("benign", "malignant"):
        (root / label).mkdir(parents=True)
        pick = [r for r in records if r.label == label]
        if seed is not None:
            rng.shuffle(pick)
        for r in pick[:n]:
            (root / label / Path(r.path).name).symlink_to(r.path)
    return root


def _site_it_cannot_sort(tmp: Path, n: int = 30) -> Path:
    """A clinic's folder of the `n` benign Derm7pt cases the default scores highest and the `n`
    malignant ones it scores lowest (of the first 150 of each): keeping sensitivity 0.95 there
    takes a threshold below every benign score."""
    from dermedge.data.contract import preprocess
    from dermedge.data.index import read_dataset
    from dermedge.edge.runtime import EdgeModel

    model = EdgeModel(DEFAULT)
    records = read_dataset(str(_need(DATA / "derm7pt"))).records
    root = tmp / "unsortable"
    for label, highest in (("benign", True), ("malignant", False)):
        pick = [r for r in records if r.label == label][:150]
        probs = [float(model.predict(preprocess(r.path, model.contract))[0]) for r in pick]
        order = sorted(range(len(pick)), key=probs.__getitem__, reverse=highest)[:n]
        (root / label).mkdir(parents=True)
        for i in order:
            (root / label / Path(pick[i].path).name).symlink_to(pick[i].path)
    return root


def test_calibrate_refuses_a_threshold_that_refers_every_case(tmp_path: Path) -> None:
    """On a site where the model scores its melanomas below its benign lesions, only a threshold
    under every benign score keeps sensitivity 0.95: it refers everyone. Such a model sorts
    nothing; it used to be written without a word."""
    out = tmp_path / "all.tflite"
    r = _cli(
        "calibrate", str(DEFAULT), "--data", str(_site_it_cannot_sort(tmp_path)), "--out", str(out)
    )
    assert r.returncode == 2 and not out.exists(), r.stdout + r.stderr
    assert "refers every one of these cases" in r.stderr and "Traceback" not in r.stderr
    assert "| >= 0.85" in r.stderr  # the trade-offs of other targets, to choose from


def test_calibrate_warns_when_the_threshold_refers_nearly_everyone(tmp_path: Path) -> None:
    """Another 60+60 draw: the default target refers about 96% of cases (specificity 0.07)."""
    out = tmp_path / "most.tflite"
    r = _cli(
        "calibrate", str(DEFAULT), "--data", str(_derm7pt_site(tmp_path, 1)), "--out", str(out)
    )
    assert r.returncode == 0, r.stderr
    after = read_card(out)["calibration"]["after"]
    assert after["referred_fraction"] > 0.9
    assert f"refers {100 * after['referred_fraction']:.1f}% of these cases" in r.stderr
    assert "WARNING" in r.stderr


def test_calibrate_holdout_says_whether_the_target_was_met(tmp_path: Path) -> None:
    """Calibrated on half of 60+60 Derm7pt cases, the threshold keeps 0.767 on the other half:
    the user is told it missed the target 0.95, and the card records it."""
    out = tmp_path / "held.tflite"
    site = _derm7pt_site(tmp_path, None)
    r = _cli("calibrate", str(DEFAULT), "--data", str(site), "--holdout", "0.5", "--out", str(out))
    assert r.returncode == 0, r.stderr
    held = read_card(out)["calibration"]["holdout"]
    sens = held["after"]["sensitivity"]
    assert sens < 0.95 and held["met_target"] is False
    assert f"sensitivity {sens:.3f}" in r.stderr and "did NOT meet the target 0.95" in r.stderr


def test_holdout_verdict_says_met_when_it_is() -> None:
    from dermedge.edge.calibrate import holdout_verdict

    point = {"sensitivity": 0.96, "wilson95": {"sensitivity": [0.9, 0.99]}, "tp": 48, "fn": 2}
    met, line = holdout_verdict({"holdout": {"after": point}}, 0.95)
    assert met and "met the target 0.95" in line and "NOT" not in line
    met, line = holdout_verdict({"holdout": {"after": {**point, "sensitivity": 0.94}}}, 0.95)
    assert not met and "within this sample's noise" in line
    assert holdout_verdict({"before": point}, 0.95) is None

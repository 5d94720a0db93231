"""convert on a run whose manifest has a source without malignant images (HAM10000's
vidir_molemax in the all-source manifest): the per-source threshold policy and the per-source
metrics hold NaN, and the card, its sidecar and report.json must still be written (NaN -> null)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dermedge.cli import main

pytestmark = pytest.mark.slow  # trains a small model and converts it

SIZE = 48


def _relabel_sources(manifest: Path) -> None:
    """Benign images of val and test get their own source ("clinic-b"): it has no malignant one."""
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["source"] = "clinic-b" if r["split"] != "train" and r["label"] == "benign" else "clinic-a"
    # clinic-a keeps some benign val/test images, so that its own threshold and AUC exist
    for split in ("val", "test"):
        benign = [r for r in rows if r["split"] == split and r["label"] == "benign"]
        for r in benign[: len(benign) // 2]:
            r["source"] = "clinic-a"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def test_convert_with_a_one_class_source_writes_nan_as_null(tmp_path, isic_dir, monkeypatch):
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    import keras
    from keras import layers

    from dermedge.data.contract import InputContract
    from dermedge.data.images import load_images
    from dermedge.data.manifest import manifest_sha256, read_manifest
    from dermedge.train.card import make_card, write_card

    monkeypatch.setenv("DERMEDGE_RUNS", str(tmp_path / "runs"))
    import dermedge.metrics

    # a small val split: let a source with a few melanomas bind (the real one has >= 20)
    monkeypatch.setattr(dermedge.metrics, "MIN_SOURCE_POSITIVES", 2)
    data = tmp_path / "isic-small"
    for label in ("benign", "malignant"):
        files = sorted((isic_dir / "train" / label).glob("*.jpg"), key=lambda p: int(p.stem))[:40]
        (data / label).mkdir(parents=True)
        for f in files:
            (data / label / f.name).symlink_to(f)
    man = tmp_path / "manifest"
    res = CliRunner().invoke(main, ["data", "split", str(data), "--out", str(man), "--test", "0.3"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "train" / "two-clinics"
    run.mkdir(parents=True)
    for f in ("manifest.csv", "manifest.json"):
        shutil.copy(man / f, run / f)
    _relabel_sources(run / "manifest.csv")
    recs = read_manifest(run / "manifest.csv")
    contract = InputContract(size=SIZE)
    rs = [r for r in recs if r.split == "train"]
    x, kept, _ = load_images([r.path for r in rs], contract, progress=False)
    y = np.array([rs[i].label == "malignant" for i in kept], dtype="float32")
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    h = layers.Rescaling(1 / 128.0, offset=-127 / 128.0, name="normalize")(inp)
    h = layers.Conv2D(8, 3, strides=2, activation="relu")(h)
    h = layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, layers.Dense(1, activation="sigmoid", name="predictions")(h))
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(x.astype("float32"), y, epochs=3, batch_size=16, verbose=0)
    model.save(run / "model.keras")
    data_info = {
        "manifest": "manifest.csv",
        "manifest_sha256": manifest_sha256(run / "manifest.csv"),
    }
    metrics = {"test": {"roc_auc": 0.5, "n": 1}}
    card = make_card("two-clinics", "tiny-cnn", contract, 0.5, 0.95, metrics, data_info)
    card["threshold_policy"]["pool"] = "worst-source"  # as a card of the trainer's previous default
    write_card(card, run)

    out = tmp_path / "out"
    loose = ["--max-auc-drop", "1", "--max-acc-drop", "1", "--max-sens-drop", "1"]
    res = CliRunner().invoke(
        main,
        ["convert", str(run), "--quant", "int8", "--calib-images", "40", "--rethreshold"]
        + ["--no-guard", "--out", str(out), *loose]
        + ["--min-agreement", "0"],
    )
    assert "not JSON compliant" not in res.output, res.output
    assert res.exit_code == 0, res.output
    card = json.loads((out / "model_int8.tflite.json").read_text())
    text = json.dumps(card["threshold_policy"])
    assert "clinic-b" in text and "NaN" not in text
    report = (out / "report.json").read_text()
    assert "NaN" not in report

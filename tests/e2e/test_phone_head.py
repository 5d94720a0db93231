"""The site head (`dermedge calibrate --adapt`) on the phone page: web/src/head.js against
dermedge.edge.adapt.Head on real Derm7pt photos, in node and in headless Chromium (LiteRT.js
reads the features; the page applies the card's head to them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_phone import ARTIFACTS, browser_env, write_y4m  # noqa: F401  (browser_env: a fixture)

from dermedge.data.contract import preprocess
from dermedge.edge.adapt import Head
from dermedge.edge.card import read_card
from dermedge.edge.runtime import EdgeModel
from dermedge.edge.serve import make_server

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("DERMEDGE_DATA", REPO.parent / "shared" / "data"))
TINY = REPO / "dermedge" / "models" / "tiny.tflite"
AGREE = 1e-5  # the page's head and Python's on the same features


def _photos(n: int) -> dict[str, list[Path]]:
    """The first `n` Derm7pt photos of each class (another dermatoscope than tiny's training)."""
    from dermedge.data.index import read_dataset

    root = DATA / "derm7pt"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set DERMEDGE_DATA)")
    out: dict[str, list[Path]] = {"benign": [], "malignant": []}
    for r in read_dataset(root).records:
        if len(out[r.label]) < n:
            out[r.label].append(Path(r.path))
    return out


@pytest.fixture(scope="module")
def adapted_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny adapted (`calibrate --adapt`) to 40 + 40 Derm7pt photos as site 'e2e-site'."""
    tmp = tmp_path_factory.mktemp("head")
    for label, files in _photos(40).items():
        (tmp / "site" / label).mkdir(parents=True)
        for f in files:
            (tmp / "site" / label / f.name).symlink_to(f)
    out = tmp / "adapted.tflite"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dermedge.cli",
            "calibrate",
            str(TINY),
            "--data",
            str(tmp / "site"),
            "--site",
            "e2e-site",
            "--adapt",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "head" in read_card(out), r.stdout + r.stderr  # the site head was kept
    return out


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_page_head_agrees_with_python_on_real_photos(adapted_model: Path) -> None:
    model = EdgeModel(adapted_model)
    card = read_card(adapted_model)
    photos = [f for files in _photos(45).values() for f in files[40:]]  # not the fitting cases
    x = np.stack([preprocess(f, model.contract) for f in photos])
    shipped, feats = model.predict_features(x, adapted=False)
    py = Head.from_card(card["head"]).prob(feats, shipped)
    assert np.allclose(py, model.predict(x), atol=1e-12)
    req = {"head": card["head"], "features": feats.tolist(), "shipped": shipped.tolist()}
    r = subprocess.run(
        ["node", str(REPO / "tests" / "e2e" / "head_cli.mjs"), str(REPO / "web" / "src")],
        input=json.dumps(req),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert np.abs(np.asarray(out["prob"]) - py).max() < AGREE
    assert out["text"].startswith("adapted to site e2e-site (last layer re-fitted on 40 malignant")


@pytest.mark.slow
def test_phone_page_applies_the_site_head(browser_env, adapted_model: Path, tmp_path: Path) -> None:  # noqa: F811
    """The served adapted model on the page: P(malignant) is the head's on the features
    LiteRT.js gave (as Python computes it, within 1e-5), and the page says 'adapted to'."""
    photo = _photos(1)["malignant"][0]
    rgb = np.asarray(Image.open(photo).convert("RGB").resize((640, 480), Image.Resampling.BICUBIC))
    video = tmp_path / "lesion.y4m"
    write_y4m(rgb, video)
    out = ARTIFACTS / "phone-head"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    srv = make_server(str(adapted_model), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        r = subprocess.run(
            ["node", str(REPO / "tests" / "e2e" / "head.mjs"), srv.url, str(video), str(out), "5"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
    finally:
        srv.shutdown()
        srv.server_close()
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))[7:])
    card = read_card(adapted_model)
    head = Head.from_card(card["head"])
    feats = np.asarray(res["adapted"]["features"], dtype=np.float64)
    assert feats.shape == (head.dim,)
    want = float(head.prob(feats, np.asarray([res["adapted"]["shipped"]]))[0])
    assert abs(res["last"]["prob"] - want) < AGREE
    assert abs(res["last"]["prob"] - res["last"]["shipped_prob"]) > 1e-3  # the head was applied
    assert res["last"]["adapted_to"] == "e2e-site"
    assert "adapted to site e2e-site" in res["calibration_text"]
    # the page's own features against Python's on the frame: same model, other runtime
    model = EdgeModel(adapted_model)
    _, py_feats = model.predict_features(preprocess(rgb, model.contract), adapted=False)
    print(
        json.dumps(
            {
                "page_prob": res["last"]["prob"],
                "python_head_on_page_features": want,
                "page_vs_python_features_max_abs": float(np.abs(feats - py_feats[0]).max()),
            }
        )
    )
    assert (out / "phone-adapted.png").stat().st_size > 1000

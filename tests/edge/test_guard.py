"""The unfamiliar-input guard: a second model output, a card record, and every runner using it,
on the shipped tiny model and real pictures (scikit-image's sample photos, shared dermoscopy)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from dermedge_testing import DATA, REPO, _need, rewrite_tflite
from PIL import Image

from dermedge.data.contract import preprocess
from dermedge.edge import guard as g
from dermedge.edge.camera import NO_LESION, OpenCVSource, Session, SessionOptions
from dermedge.edge.card import embed_card, read_card, without_digest
from dermedge.edge.quality import measure
from dermedge.edge.runtime import CANNOT_ASSESS, EdgeError, EdgeModel

TINY = REPO / "dermedge" / "models" / "tiny.tflite"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "page", "horse", "clock")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = np.asarray(getattr(skimage.data, name)())
    if a.dtype != np.uint8:  # horse is boolean
        a = (a.astype(np.float64) / (a.max() or 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3])


def _lesions(label: str, n: int, start: int = 0) -> list[Path]:
    return sorted((_need(DATA / "isic-mvb") / "test" / label).glob("*.jpg"))[start : start + n]


def _manifest(tmp: Path) -> Path:
    """A small split manifest of real photos: train 150 + 150 from isic-mvb/train, val 60 + 60."""
    src = _need(DATA / "isic-mvb")
    rows = []
    for label in ("benign", "malignant"):
        files = sorted((src / "train" / label).glob("*.jpg"))
        rows += [(f, label, "train") for f in files[:150]] + [
            (f, label, "val") for f in files[150:210]
        ]
    path = tmp / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows([(str(f), lab, s) for f, lab, s in rows])
    return path


def _strip_guard(src: Path, dst: Path) -> Path:
    """The shipped tiny model as it was before its guard: one output, no guard in the card."""

    def one_output(fb, model) -> None:
        model.subgraphs[0].outputs = model.subgraphs[0].outputs[:1]
        for sig in model.signatureDefs or []:
            sig.outputs = sig.outputs[:1]

    card = {k: v for k, v in read_card(src).items() if k != "guard"}
    dst.write_bytes(embed_card(rewrite_tflite(src.read_bytes(), one_output), card))
    return dst


def _add_guard(model: Path, manifest: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "dermedge.cli",
            "convert",
            "--add-guard",
            str(model),
            "--data",
            str(manifest),
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _strip_guard(TINY, tmp_path_factory.mktemp("plain") / "tiny.tflite")


@pytest.fixture(scope="module")
def guarded(plain: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plain tiny model guarded on a small split (not its own: --force)."""
    tmp = tmp_path_factory.mktemp("guard")
    manifest = _manifest(tmp)
    r = _add_guard(plain, manifest, tmp / "refused")
    assert r.returncode == 1 and "is not the one the model was trained with" in r.stderr, r.stderr
    r = _add_guard(plain, manifest, tmp / "out", "--force")
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "out" / "tiny.tflite"


def test_shipped_models_carry_a_guard_fitted_on_their_own_split() -> None:
    for name in ("tiny", "default"):
        card = read_card(REPO / "dermedge" / "models" / f"{name}.tflite")
        fit = card["guard"]["fit"]
        assert fit["probabilities_identical_on_val"] and "warning" not in fit, name
        assert fit["val_pass_rate"] >= g.PASS_RATE and fit["val_images"] == sum(
            card["data"]["counts"]["val"].values()
        )
        assert EdgeModel(REPO / "dermedge" / "models" / f"{name}.tflite").guard is not None


def test_guarded_model_keeps_its_probabilities_and_card(plain: Path, guarded: Path) -> None:
    bare, model = EdgeModel(plain), EdgeModel(guarded)
    assert bare.guard is None and model.guard is not None
    x = np.stack(
        [preprocess(p, model.contract) for p in _lesions("malignant", 8) + _lesions("benign", 8)]
    )
    prob, feats = model.predict_features(x)
    assert np.array_equal(prob, bare.predict(x))  # bit for bit: only an output was added
    assert feats is not None and feats.shape == (16, model.guard.dim)
    card, old = read_card(guarded), read_card(plain)
    assert without_digest({k: v for k, v in card.items() if k != "guard"}) == without_digest(old)
    assert np.array_equal(
        EdgeModel(TINY).predict(x), prob
    )  # the shipped guard changed nothing either
    fit = card["guard"]["fit"]
    assert fit["train_images"] == 300 and fit["val_images"] == 120
    assert abs(fit["val_pass_rate"] - g.PASS_RATE) <= 0.02
    assert (
        json.loads((guarded.parent / "guard.json").read_text())["cutoff"] == card["guard"]["cutoff"]
    )


def test_guard_flags_photos_that_are_not_lesions(guarded: Path) -> None:
    model = EdgeModel(guarded)
    flagged = [model.classify(_photo(n)).get("unfamiliar") for n in PHOTOS]
    assert sum(flagged) >= len(PHOTOS) // 2, dict(zip(PHOTOS, flagged, strict=True))
    lesions = _lesions("malignant", 40, 100) + _lesions("benign", 40, 100)
    passed = [not model.classify(p)["unfamiliar"] for p in lesions]
    assert np.mean(passed) >= 0.85
    for name in PHOTOS:  # flagged: no decision (no skin colours) or sent on, never routine
        r = model.classify(_photo(name))
        if r["unfamiliar"]:
            assert r["guard_score"] > model.guard.cutoff
            want = "none" if g.skin_share(preprocess(_photo(name), model.contract)) < 0.05 else None
            assert r["decision"] == (want or CANNOT_ASSESS), (name, r)
            assert (r["prob"] is None) == (r["decision"] == "none")


def test_edge_classify_reports_unfamiliar_inputs(guarded: Path, tmp_path: Path) -> None:
    pics = []
    for name in PHOTOS:
        p = tmp_path / f"{name}.png"
        Image.fromarray(_photo(name)).save(p)
        pics.append(p)
    lesion = _lesions("malignant", 1)[0]
    out_csv = tmp_path / "out.csv"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dermedge.edge.cli",
            "--model",
            str(guarded),
            "--csv",
            str(out_csv),
            *map(str, pics),
            str(lesion),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rows = {Path(row["file"]).stem: row for row in csv.DictReader(out_csv.read_text().splitlines())}
    flagged = [n for n in PHOTOS if rows[n]["unfamiliar"] == "True"]
    assert flagged and all(rows[n]["decision"] in ("none", CANNOT_ASSESS) for n in flagged)
    assert f"{len(flagged)} unlike the training images" in r.stdout
    assert rows[lesion.stem]["decision"] in ("refer", "routine", CANNOT_ASSESS)
    for n in flagged:  # a reason on every flagged row; no probability without its decision
        line = next(x for x in r.stdout.splitlines() if f"{n}.png" in x)
        if rows[n]["decision"] == "none":
            assert rows[n]["prob"] == "" and rows[n]["reason"] == g.NOT_A_LESION
            assert line.split()[:2] == ["none", "-"]
        else:
            assert rows[n]["reason"] == g.CANNOT_ASSESS and line.startswith("CANNOT ASSESS")
    none = sum(rows[n]["decision"] == "none" for n in PHOTOS)
    assert f"{none} no decision" in r.stdout


def test_camera_gates_unfamiliar_frames(guarded: Path, tmp_path: Path) -> None:
    """A video of a photo that is not a lesion: gated ("no lesion in view"), never a decision."""
    model = EdgeModel(guarded)
    frames = [cv2.resize(_photo(n), (320, 240)) for n in (*PHOTOS, "coins", "gravel", "brick")]
    rgb = next(f for f in frames if measure(f).ok and model.classify(f)["decision"] == "none")
    frame = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    video = tmp_path / "not-a-lesion.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    for k in range(20):
        writer.write(np.roll(frame, k % 2, axis=1))
    writer.release()
    events: list[dict] = []
    summary = Session(model, OpenCVSource(str(video)), SessionOptions(), events.append).run()
    assert not [e for e in events if e["event"] == "decision"]
    gated = summary.gated.get(NO_LESION, 0)
    assert gated > 0 and summary.classified + sum(summary.gated.values()) == summary.frames
    assert any(e.get("reason") == NO_LESION for e in events if e["event"] == "quality")


def test_a_guard_without_its_feature_output_is_refused(
    plain: Path, guarded: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(embed_card(plain.read_bytes(), read_card(guarded)))
    with pytest.raises(EdgeError, match="no such second output"):
        EdgeModel(bad)
    card = read_card(guarded)
    card["guard"]["means"] = card["guard"]["means"][:-8]
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(embed_card(guarded.read_bytes(), card))
    with pytest.raises(EdgeError, match="malformed guard"):
        EdgeModel(broken)


def test_fit_on_known_gaussians_flags_the_far_ones() -> None:
    rng = np.random.default_rng(0)
    d = 40
    means = np.stack([np.zeros(d), np.full(d, 0.5)])
    y = rng.integers(0, 2, 4000)
    x = means[y] + rng.normal(size=(4000, d)) * np.linspace(0.2, 2.0, d)
    val = means[rng.integers(0, 2, 1000)] + rng.normal(size=(1000, d)) * np.linspace(0.2, 2.0, d)
    guard = g.fit(x, y, val, k=8)
    assert abs(np.mean(guard.score(val) <= guard.cutoff) - 0.95) < 0.01
    far = rng.normal(size=(200, d)) * 2.0 + 6.0
    assert guard.unfamiliar(far).mean() > 0.99
    again = g.Guard.from_card(json.loads(json.dumps(guard.to_card())))
    assert np.allclose(again.score(val), guard.score(val), rtol=1e-5)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_phone_page_guard_matches_python() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(500, 24)), rng.integers(0, 2, 500)
    guard = g.Guard.from_card(g.fit(x, y, rng.normal(size=(200, 24)), k=6).to_card())
    feats = rng.normal(size=(10, 24)) * 2
    script = (
        "import { Guard } from '" + (REPO / "web" / "src" / "guard.js").as_uri() + "';"
        "let s = ''; process.stdin.on('data', (c) => { s += c; }); process.stdin.on('end', () => {"
        "const { spec, feats } = JSON.parse(s); const gd = new Guard(spec);"
        "console.log(JSON.stringify(feats.map((f) => gd.score(f)))); });"
    )
    r = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        input=json.dumps({"spec": guard.to_card(), "feats": feats.tolist()}),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert np.allclose(json.loads(r.stdout), guard.score(feats), rtol=1e-9)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_phone_page_skin_share_and_vote_match_python() -> None:
    """guard.js's skinShare equals guard.skin_share on real photos; the page's vote sends an
    unsure frame on, as the camera loop's does."""
    photos = _lesions("malignant", 3) + _lesions("benign", 3)
    contract = _contract()
    pixels = [preprocess(p, contract) for p in photos]
    pixels.append(np.full((224, 224, 3), 128, np.uint8))
    script = (
        "import { skinShare } from '" + (REPO / "web" / "src" / "guard.js").as_uri() + "';"
        "import { Smoother } from '" + (REPO / "web" / "src" / "quality.js").as_uri() + "';"
        "let s = ''; process.stdin.on('data', (c) => { s += c; }); process.stdin.on('end', () => {"
        "const shares = JSON.parse(s).map((p) => skinShare(Uint8Array.from(p)));"
        "const sm = new Smoother(3, 5); let d; for (let i = 0; i < 3; i++) d = sm.push(0.1, 0.5, true);"
        "console.log(JSON.stringify({ shares, decision: d.decision })); });"
    )
    r = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        input=json.dumps([p.ravel().tolist() for p in pixels]),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["shares"] == [g.skin_share(p) for p in pixels]
    assert out["decision"] == CANNOT_ASSESS


def _contract():
    """The shipped tiny model's contract (the page preprocesses by the card's)."""
    return EdgeModel(TINY).contract

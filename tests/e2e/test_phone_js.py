"""The phone page's JavaScript against the Python it mirrors, in node (no browser needed).

- preprocessing: crop ("squash"/"center"/"fov") + Pillow BILINEAR resize, bit for bit, and the
  optional Shades of Gray colour constancy on real photos of three datasets;
- the quality gate: same verdicts as dermedge.edge.quality.measure, measures close;
- the .tflite reader: the quantization LiteRT reports for the input and output tensors.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from dermedge.data.contract import InputContract, crop_box, preprocess

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "web" / "src"
ASSETS = REPO / "tests" / "assets"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def _run_js(cases: list[tuple[np.ndarray, InputContract]]) -> list[dict]:
    lines = "".join(
        json.dumps(
            {
                "w": a.shape[1],
                "h": a.shape[0],
                "rgb": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode(),
                "contract": c.to_dict(),
            }
        )
        + "\n"
        for a, c in cases
    )
    r = subprocess.run(
        ["node", str(REPO / "tests" / "e2e" / "preprocess_cli.mjs"), str(SRC)],
        input=lines,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(x) for x in r.stdout.splitlines()]


def _photos(isic_dir: Path, n: int = 3) -> list[np.ndarray]:
    files = sorted((isic_dir / "test" / "malignant").glob("*.jpg"))[:n]
    files += sorted((isic_dir / "test" / "benign").glob("*.jpg"))[:n]
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def _vignette(a: np.ndarray, r: float = 0.42, cx: float = 0.47, cy: float = 0.52) -> np.ndarray:
    h, w = a.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    out = a.copy()
    out[(xx - cx * w) ** 2 + (yy - cy * h) ** 2 > (r * min(w, h)) ** 2] = 6
    return out


@pytest.mark.slow
def test_preprocess_bit_exact_with_pil(isic_dir: Path) -> None:
    rng = np.random.default_rng(3)
    frames = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for w, h in [(640, 480), (101, 75), (37, 61)]
    ]
    photo = _photos(isic_dir, 1)[0]
    big = np.asarray(Image.fromarray(photo).resize((1280, 720), Image.Resampling.BICUBIC))
    frames += [big, _vignette(big), photo]
    # fields cut by the frame on one axis, on both, off-centre, squashed (every fov branch)
    frames += [_vignette(big, r, cx, cy) for r, cx, cy in [(0.62, 0.5, 0.45), (0.7, 0.56, 0.5)]]
    frames += [
        _vignette(big, 0.8, 0.5, 0.5),
        _vignette(big, 0.9, 0.5, 0.5),
        _vignette(photo, 0.45, 0.55, 0.4),
    ]
    frames += [np.asarray(Image.fromarray(_vignette(big, 0.5)).resize((300, 200)))]
    cases = [
        (a, InputContract(size=size, crop=crop))
        for a in frames
        for size in (64, 224, 300)
        for crop in ("squash", "center", "fov")
    ]
    out = _run_js(cases)
    assert len(out) == len(cases)
    for (a, c), r in zip(cases, out, strict=True):
        js = np.frombuffer(base64.b64decode(r["pixels"]), np.uint8).reshape(c.size, c.size, 3)
        assert tuple(r["box"]) == crop_box(Image.fromarray(a), c), (a.shape, c.crop)
        np.testing.assert_array_equal(js, preprocess(a, c), err_msg=f"{a.shape} {c.size} {c.crop}")


def _real_photos(data_dir: Path, per_set: int = 8) -> list[tuple[str, np.ndarray]]:
    """Photos spread over isic2017 (vignettes, casts), derm7pt and isic-mvb (every k-th file)."""
    sets = {
        "isic2017": sorted((data_dir / "isic2017").glob("ISIC-2017_*_Data/*.jpg")),
        "derm7pt": sorted((data_dir / "derm7pt" / "images").glob("*/*.jpg")),
        "isic-mvb": sorted((data_dir / "isic-mvb").glob("*/*/*.jpg")),
    }
    missing = [name for name, files in sets.items() if len(files) < per_set]
    if missing:
        pytest.skip(f"real photos missing under {data_dir}: {', '.join(missing)}")
    return [
        (str(f), np.asarray(Image.open(f).convert("RGB")))
        for files in sets.values()
        for f in files[:: len(files) // per_set][:per_set]
    ]


def test_color_constancy_matches_python_on_real_photos(data_dir: Path) -> None:
    photos = _real_photos(data_dir)
    assert len(photos) >= 20
    contracts = [
        InputContract(size=224, crop="squash", color_constancy="shades_of_gray"),
        InputContract(size=160, crop="fov", color_constancy="shades_of_gray"),
        InputContract(
            size=96, crop="center", color_constancy="shades_of_gray", color_constancy_p=2.0
        ),
    ]
    cases = [(a, c) for _, a in photos for c in contracts]
    out = _run_js(cases)
    worst, changed = 0, 0
    for (name, a), i in zip(photos, range(0, len(cases), len(contracts)), strict=True):
        for (_, c), r in zip(
            cases[i : i + len(contracts)], out[i : i + len(contracts)], strict=True
        ):
            js = np.frombuffer(base64.b64decode(r["pixels"]), np.uint8).reshape(c.size, c.size, 3)
            py = preprocess(a, c)
            assert tuple(r["box"]) == crop_box(Image.fromarray(a), c), (name, c.crop)
            worst = max(worst, int(np.abs(js.astype(int) - py.astype(int)).max()))
            changed += not np.array_equal(py, preprocess(a, replace(c, color_constancy="none")))
    print(f"colour constancy Python vs JS on {len(photos)} photos: max |diff| {worst}")
    assert worst <= 1
    assert changed >= len(cases) // 2  # the step really does something on real photos


def test_margin_matches_python_exactly_on_real_photos(data_dir: Path) -> None:
    """The page frames a photo with the card's margin pixel for pixel as Python does."""
    photos = _real_photos(data_dir, per_set=4)
    contracts = [
        InputContract(size=224, crop="squash", margin=0.2),
        InputContract(size=97, crop="fov", margin=0.15),
        InputContract(size=64, crop="center", margin=0.5, color_constancy="shades_of_gray"),
    ]
    cases = [(a, c) for _, a in photos for c in contracts]
    out = _run_js(cases)
    for (a, c), r in zip(cases, out, strict=True):
        js = np.frombuffer(base64.b64decode(r["pixels"]), np.uint8).reshape(c.size, c.size, 3)
        py = preprocess(a, c)
        assert np.array_equal(js, py), (c, int(np.abs(js.astype(int) - py.astype(int)).max()))
        assert not np.array_equal(py, preprocess(a, replace(c, margin=0.0)))


def test_quality_gate_matches_python(isic_dir: Path) -> None:
    quality = pytest.importorskip("dermedge.edge.quality")
    frames = []
    for p in _photos(isic_dir, 3):
        im = Image.fromarray(p).resize((640, 480), Image.Resampling.BICUBIC)
        a = np.asarray(im)
        frames += [
            a,
            np.asarray(im.filter(ImageFilter.GaussianBlur(6))),  # out of focus
            (a * 0.2).astype(np.uint8),  # too dark
            np.clip(a.astype(int) + 120, 0, 255).astype(np.uint8),  # too bright
            _vignette(a),
        ]
    frames.append(np.full((480, 640, 3), 128, np.uint8))  # blank
    contract = InputContract(size=224, crop="center")
    out = _run_js([(a, contract) for a in frames])
    verdicts = []
    for a, r in zip(frames, out, strict=True):
        box = crop_box(Image.fromarray(a), contract)
        crop = a[box[1] : box[3], box[0] : box[2]]
        py = quality.measure(crop)
        js = r["quality"]
        verdicts.append((py.reason, js["reason"]))
        assert js["reason"] == py.reason, (py, js)
        for k in ("dark", "bright", "glare"):
            assert abs(js[k] - getattr(py, k)) <= 0.01, (k, py, js)
        assert abs(js["brightness"] - py.brightness) <= 1.0
        assert abs(js["contrast"] - py.contrast) <= 0.5
        assert abs(js["sharpness"] - py.sharpness) <= 0.05 * py.sharpness + 0.5, (py, js)
        sig = np.array(r["signature"], np.float32).reshape(quality.SIGNATURE, quality.SIGNATURE, 3)
        assert float(np.abs(sig - quality.signature(crop)).mean()) < 1.0
    reasons = {p for p, _ in verdicts}
    assert None in reasons and len(reasons) >= 4, verdicts  # the cases really exercise the gate


def test_tflite_reader_matches_litert() -> None:
    interp = pytest.importorskip("ai_edge_litert.interpreter")
    models = sorted(ASSETS.glob("*.tflite"))
    if not models:
        pytest.skip("no tests/assets/*.tflite")
    script = (
        "import { readFileSync } from 'node:fs';"
        f"import {{ readTflite, readCard, fixBatchDimension }} from '{(SRC / 'tflite.js').as_uri()}';"
        "const out = {};"
        "for (const f of process.argv.slice(1)) {"
        "  const b = new Uint8Array(readFileSync(f)); const r = readTflite(b);"
        "  const fixed = readTflite(fixBatchDimension(b));"
        "  out[f] = { inputs: r.inputs, outputs: r.outputs, card: readCard(b), fixedLen: fixBatchDimension(b).length, n: b.length, fixedShape: fixed.inputs[0].shape };"
        "}"
        "console.log(JSON.stringify(out));"
    )
    r = subprocess.run(
        ["node", "--input-type=module", "-e", script, *map(str, models)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    from dermedge.edge.card import read_card

    for m in models:
        it = interp.Interpreter(model_path=str(m))
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        js = got[str(m)]
        for mine, theirs in ((js["inputs"][0], i), (js["outputs"][0], o)):
            assert mine["dtype"] == np.dtype(theirs["dtype"]).name
            assert mine["shape"] == list(theirs["shape"])
            s, z = theirs["quantization"]
            assert mine["scale"] == pytest.approx(s, rel=1e-7) and mine["zeroPoint"] == z
        assert js["card"] == read_card(str(m))
        assert js["fixedLen"] == js["n"] and js["fixedShape"] == list(i["shape"])

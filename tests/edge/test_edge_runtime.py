"""EdgeModel on real .tflite files and real photos: quantization, batching, cards, odd images."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermedge.data.contract import ImageError, InputContract, load_rgb, preprocess
from dermedge.edge.runtime import EdgeError, EdgeModel, load_runtime

ASSETS = Path(__file__).parents[1] / "assets"
FP32, INT8, INT8IO, NOCARD = (
    ASSETS / f"{n}.tflite"
    for n in ("tiny_fp32", "tiny_int8", "tiny_int8_int8io", "tiny_fp32_nocard")
)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def photos(isic_dir: Path) -> list[Path]:
    """Real lesion photos, both classes."""
    return (
        sorted(isic_dir.glob("test/benign/*.jpg"))[:12]
        + sorted(isic_dir.glob("test/malignant/*.jpg"))[:12]
    )


@pytest.fixture(scope="module")
def int8() -> EdgeModel:
    return EdgeModel(INT8, threads=2)


def test_runtime_is_named() -> None:
    assert load_runtime().name.split()[0] in ("ai-edge-litert", "tflite-runtime", "tensorflow")
    assert EdgeModel(INT8).runtime == load_runtime().name
    with pytest.raises(EdgeError, match="unknown runtime"):
        load_runtime("onnx")


def test_card_configures_the_model(int8: EdgeModel) -> None:
    assert int8.card is not None and int8.name == "tiny-int8"
    assert int8.contract == InputContract.from_dict(int8.card["input"])
    assert int8.threshold == int8.card["threshold"] and int8.classes == ["benign", "malignant"]
    assert int8.input_dtype == "uint8" and int8.threads == 2


def test_quantized_models_agree_with_fp32(photos: list[Path]) -> None:
    models = [EdgeModel(p) for p in (FP32, INT8, INT8IO)]
    pixels = np.stack([preprocess(p, models[0].contract) for p in photos])
    fp32, uint8_io, int8_io = (m.predict(pixels) for m in models)
    assert fp32.dtype == np.float64 and fp32.shape == (len(photos),)
    assert fp32.max() - fp32.min() > 0.3  # real photos give really different outputs
    assert np.abs(uint8_io - fp32).max() < 0.06
    assert np.abs(int8_io - uint8_io).max() <= 2 / 256  # int8 I/O: same model, other zero point


def test_batch_equals_single_and_validates(int8: EdgeModel, photos: list[Path]) -> None:
    pixels = np.stack([preprocess(p, int8.contract) for p in photos[:5]])
    batch = int8.predict(pixels)
    single = np.array([int8.predict(x)[0] for x in pixels])
    np.testing.assert_allclose(batch, single, atol=1e-6)
    assert int8.predict(pixels[:0]).shape == (0,)
    with pytest.raises(ValueError, match="uint8"):
        int8.predict(pixels.astype(np.float32))
    with pytest.raises(ValueError, match="64"):
        int8.predict(np.zeros((1, 32, 32, 3), np.uint8))


def test_classify_decision_follows_threshold(int8: EdgeModel, photos: list[Path]) -> None:
    results = [int8.classify(p) for p in photos]
    for r in results:
        assert 0 <= r["prob"] <= 1
        assert r["decision"] == ("refer" if r["prob"] >= int8.threshold else "routine")
        assert r["label"] == (
            "malignant" if r["prob"] >= int8.threshold else "benign"
        )  # as the page
    assert {r["decision"] for r in results} == {"refer", "routine"}
    lenient = EdgeModel(INT8, threshold=0.0)
    assert all(lenient.classify(p)["decision"] == "refer" for p in photos[:3])


def test_model_without_card_needs_contract_and_threshold(photos: list[Path]) -> None:
    with pytest.raises(EdgeError, match="--crop .*--threshold"):
        EdgeModel(NOCARD)
    with pytest.raises(EdgeError, match="no embedded"):
        EdgeModel(NOCARD, contract=InputContract(size=64))
    bare = EdgeModel(NOCARD, contract=InputContract(size=64, crop="squash"), threshold=0.4)
    carded = EdgeModel(FP32)
    assert bare.card is None and bare.name == "tiny_fp32_nocard"
    assert bare.classify(photos[0])["prob"] == pytest.approx(carded.classify(photos[0])["prob"])


def test_configuration_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match="not found"):
        EdgeModel(tmp_path / "missing.tflite")
    (tmp_path / "text.tflite").write_text("hello")
    with pytest.raises(EdgeError, match="not a TFLite model"):
        EdgeModel(tmp_path / "text.tflite")
    with pytest.raises(EdgeError, match="does not match the model input 64x64"):
        EdgeModel(INT8, contract=InputContract(size=96))
    with pytest.raises(EdgeError, match="probability"):
        EdgeModel(INT8, threshold=1.5)
    with pytest.raises(EdgeError, match="cannot load delegate"):
        EdgeModel(INT8, delegate=tmp_path / "text.tflite")
    with pytest.raises(EdgeError, match="cannot load delegate"):
        EdgeModel(INT8, delegate="libdoes-not-exist.so.1")
    with pytest.raises(EdgeError, match="delegate library not found"):
        EdgeModel(INT8, delegate=str(tmp_path / "nope.so"))


def test_without_xnnpack_same_answers(int8: EdgeModel, photos: list[Path]) -> None:
    plain = EdgeModel(INT8, xnnpack=False)
    pixels = np.stack([preprocess(p, int8.contract) for p in photos[:6]])
    np.testing.assert_allclose(plain.predict(pixels), int8.predict(pixels), atol=2 / 256)


def test_threads_share_one_model(int8: EdgeModel, photos: list[Path]) -> None:
    expected = [int8.classify(p)["prob"] for p in photos]
    got: dict[int, list[float]] = {}

    def work(k: int) -> None:
        got[k] = [int8.classify(p)["prob"] for p in photos]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(v == expected for v in got.values())


def _jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied(int8: EdgeModel, photos: list[Path]) -> None:
    raw = Image.open(photos[1])
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    tagged = _jpeg(raw, exif=exif)
    decoded = np.asarray(Image.open(io.BytesIO(tagged)).convert("RGB"))
    upright = np.ascontiguousarray(np.rot90(decoded, k=-1))
    assert int8.classify(tagged)["prob"] == int8.classify(upright)["prob"]
    wide = EdgeModel(INT8, contract=InputContract(size=64, crop="center"))
    portrait = Image.fromarray(np.asarray(raw)[:, :150])  # 224x150, tagged: shows as 150x224
    assert wide.classify(_jpeg(portrait, exif=exif)) == wide.classify(
        np.rot90(np.asarray(portrait), k=-1).copy()
    )


def test_image_modes(int8: EdgeModel, photos: list[Path], tmp_path: Path) -> None:
    rgb = load_rgb(photos[2])
    gray = rgb.convert("L")
    gray_rgb = np.asarray(gray.convert("RGB"))
    files = {
        "gray.png": gray,
        "gray16.png": Image.fromarray(np.asarray(gray).astype(np.uint16) * 257),  # 16-bit
        "rgba.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
    }
    for name, img in files.items():
        img.save(tmp_path / name)
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    expected = int8.classify(gray_rgb)["prob"]
    assert int8.classify(tmp_path / "gray.png")["prob"] == expected
    assert int8.classify(tmp_path / "gray16.png")["prob"] == expected
    assert int8.classify(tmp_path / "rgba.png")["prob"] == int8.classify(np.asarray(rgb))["prob"]
    assert 0 <= int8.classify(tmp_path / "palette.png")["prob"] <= 1
    cmyk = tmp_path / "cmyk.jpg"
    rgb.convert("CMYK").save(cmyk, quality=95)
    assert Image.open(cmyk).mode == "CMYK"
    assert abs(int8.classify(cmyk)["prob"] - int8.classify(np.asarray(rgb))["prob"]) < 0.1
    half_transparent = rgb.convert("RGBA")
    half_transparent.putalpha(128)
    half_transparent.save(tmp_path / "alpha.png")
    assert 0 <= int8.classify(tmp_path / "alpha.png")["prob"] <= 1


def test_unusable_images_raise_image_error(
    int8: EdgeModel, photos: list[Path], tmp_path: Path
) -> None:
    data = photos[0].read_bytes()
    cases = {"empty.jpg": b"", "truncated.jpg": data[: len(data) // 3], "text.jpg": b"hello"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageError):
            int8.classify(tmp_path / name)


def test_edge_never_imports_tensorflow(photos: list[Path]) -> None:
    """import dermedge.edge, the runtime, and a whole edge-classify run leave TensorFlow out."""
    code = (
        "import sys\n"
        "import dermedge.edge, dermedge.edge.card, dermedge.edge.runtime, dermedge.edge.cli\n"
        "import dermedge.edge.camera, dermedge.edge.quality\n"
        "from dermedge.edge.cli import main\n"
        "try:\n"
        f"    main(['-m', {str(INT8)!r}, {str(photos[0])!r}, '--json'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'))\n"
        "print('HEAVY', bad)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DERMEDGE_EDGE_RUNTIME"}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout, r.stdout
    assert '"prob"' in r.stdout


def test_data_and_edge_import_nothing_from_the_heavy_stages() -> None:
    """Dependencies point one way: no module of `data` or `edge` imports `train`, `convert` or
    `benchmark`, even lazily inside a function (a lazy import breaks only on the device)."""
    import ast

    heavy = [["dermedge", stage] for stage in ("train", "convert", "benchmark")]
    offenders = []
    for pkg in ("data", "edge"):
        for path in sorted((REPO / "dermedge" / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = ["dermedge." + node.module if node.level == 2 else node.module]
                for name in names:
                    if name.split(".")[:2] in heavy:
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    assert not offenders, offenders


def test_image_path_does_not_load_opencv(photos: list[Path]) -> None:
    """Still images need neither OpenCV nor the camera code (fast start on the device)."""
    code = (
        "import sys\n"
        "from dermedge.edge.cli import main\n"
        "try:\n"
        f"    main(['-m', {str(INT8)!r}, {str(photos[0])!r}])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('CV2', 'cv2' in sys.modules, 'dermedge.edge.camera' in sys.modules)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert "CV2 False False" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tensorflow_lite_is_the_last_fallback(photos: list[Path]) -> None:
    pytest.importorskip("tensorflow")
    tf_model = EdgeModel(INT8, runtime="tensorflow")
    assert tf_model.runtime.startswith("tensorflow") and "(tf.lite)" in tf_model.runtime
    assert tf_model.classify(photos[0]) == EdgeModel(INT8).classify(photos[0])

"""The phone page end to end in headless Chromium with a fake camera playing a real lesion photo.

Needs Debian's `chromium`, node and `npm ci` in web/ (playwright-core); `.ci/phone-e2e.sh` sets
them up and exports DERMEDGE_REQUIRE_E2E=1, which turns the "not installed" skips into failures.
Artifacts (screenshots, the capture, a summary with the in-browser inference time) are written to
runs/test-artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermedge.data.contract import InputContract, preprocess
from dermedge.edge.serve import load_card, make_server

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("DERMEDGE_DATA", REPO.parent / "shared" / "data"))
ARTIFACTS = REPO / "runs" / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ASSETS = REPO / "tests" / "assets"
TOLERANCE = 0.02
pytestmark = pytest.mark.slow  # a real browser


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("DERMEDGE_REQUIRE_E2E") == "1":
        pytest.fail(f"{reason} (DERMEDGE_REQUIRE_E2E=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser_env() -> None:
    if not Path(CHROMIUM).exists():
        _skip_or_fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (see .ci/phone-e2e.sh)")
    if shutil.which("node") is None:
        _skip_or_fail("node is not installed")
    if not (REPO / "web" / "node_modules" / "playwright-core").is_dir():
        _skip_or_fail("web/node_modules missing: run `npm ci` in web/")
    if not (REPO / "dermedge" / "edge" / "web" / "index.html").is_file():
        _skip_or_fail("phone page not built: `npm run build` in web/")


def _lesion_image() -> Path:
    files = sorted((DATA / "isic-mvb" / "test" / "malignant").glob("*.jpg"))
    if not files:
        pytest.skip(f"real lesion images not found under {DATA}/isic-mvb (set DERMEDGE_DATA)")
    return files[0]


def write_y4m(rgb: np.ndarray, path: Path, frames: int = 2) -> None:
    """A still video (4:2:0, BT.601 limited range, as cameras deliver) for Chromium's fake camera."""
    h, w = rgb.shape[:2]
    x = rgb.astype(np.float64) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b

    def sub(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    def q(a: np.ndarray) -> bytes:
        return np.clip(np.round(a), 0, 255).astype(np.uint8).tobytes()

    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + q(y) + q(sub(cb)) + q(sub(cr)))


class Reference:
    """The Python edge result for a frame: dermedge.edge.runtime.EdgeModel when it exists,
    else the same LiteRT interpreter directly (quantize input, dequantize output)."""

    def __init__(self, model: Path):
        self.card = load_card(model)
        self.contract = InputContract.from_dict(self.card["input"])
        self.threshold = float(self.card["threshold"])
        try:
            from dermedge.edge.runtime import EdgeModel  # type: ignore[import-not-found]

            em = EdgeModel(str(model))
            self.name = f"EdgeModel ({em.runtime})"
            self._predict = lambda x: float(em.predict(x)[0])
        except ImportError:
            from ai_edge_litert.interpreter import Interpreter

            it = Interpreter(model_path=str(model))
            it.allocate_tensors()
            i, o = it.get_input_details()[0], it.get_output_details()[0]

            def predict(x: np.ndarray) -> float:
                s, z = i["quantization"]
                xin = x[None].astype(np.float32)
                if i["dtype"] != np.float32 and s:
                    info = np.iinfo(i["dtype"])
                    xin = np.clip(np.round(xin / s + z), info.min, info.max)
                it.set_tensor(i["index"], xin.astype(i["dtype"]))
                it.invoke()
                out = it.get_tensor(o["index"]).reshape(-1)[0]
                s, z = o["quantization"]
                return float((float(out) - z) * s) if o["dtype"] != np.float32 and s else float(out)

            self.name = "ai_edge_litert.Interpreter"
            self._predict = predict

    def prob(self, frame: np.ndarray | Path | str) -> float:
        return self._predict(preprocess(frame, self.contract))

    def decision(self, p: float) -> str:
        return "refer" if p >= self.threshold else "routine"


def _run_page(
    url: str, video: Path, out: Path, srv, on_swap, flags=("--swap", "--offline")
) -> dict[str, dict]:
    cmd = ["node", str(REPO / "tests" / "e2e" / "phone.mjs"), url, str(video), str(out), *flags]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    results: dict[str, dict] = {}
    assert proc.stdout is not None and proc.stdin is not None
    timer = threading.Timer(300, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                r = json.loads(line[7:])
                results[r["phase"]] = r
            elif line.startswith("PAUSE swap"):
                on_swap()
                proc.stdin.write("go\n")
                proc.stdin.flush()
            elif line.startswith("PAUSE stop"):
                srv.shutdown()
                srv.server_close()
                proc.stdin.write("go\n")
                proc.stdin.flush()
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    print(err[-3000:])
    assert rc == 0, f"browser run failed (rc {rc}):\n{err[-4000:]}\nresults: {list(results)}"
    return results


def _calibrated(model: Path, tmp: Path) -> Path:
    """`dermedge calibrate` on 25 + 25 real photos linked into a clinic's benign/ + malignant/."""
    import sys

    site = tmp / "clinic"
    for label in ("benign", "malignant"):
        (site / label).mkdir(parents=True)
        for p in sorted((DATA / "isic-mvb" / "test" / label).glob("*.jpg"))[:25]:
            (site / label / p.name).symlink_to(p)
    out = tmp / "calibrated.tflite"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dermedge.cli",
            "calibrate",
            str(model),
            "--data",
            str(site),
            "--site",
            "e2e-clinic",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_phone_page_end_to_end(browser_env, tmp_path: Path) -> None:
    model_src = ASSETS / "tiny_int8.tflite"
    swap_src = ASSETS / "tiny_fp32.tflite"
    if not model_src.is_file() or not swap_src.is_file():
        pytest.skip("tests/assets tiny models not present")
    image = _lesion_image()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / "phone"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    # a 640x480 camera frame made from the real lesion photo
    rgb = np.asarray(Image.open(image).convert("RGB").resize((640, 480), Image.Resampling.BICUBIC))
    video = tmp_path / "lesion.y4m"
    write_y4m(rgb, video)

    model = tmp_path / "model.tflite"  # the served file; swapped for a new model mid-test
    shutil.copyfile(model_src, model)
    swap_src = _calibrated(swap_src, tmp_path)  # the new model comes site-calibrated
    ref = Reference(model)
    ref_new = Reference(swap_src)

    srv = make_server(str(model), "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    v1 = srv.model.version

    def swap() -> None:
        tmp = tmp_path / "new.tflite"
        shutil.copyfile(swap_src, tmp)
        os.replace(tmp, model)

    try:
        res = _run_page(srv.url, video, out, srv, swap)
    finally:
        srv.shutdown()
        srv.server_close()

    online, swapped, offline = res["online"], res["swapped"], res["offline"]
    # the same frame the page classified (its capture download) through the Python edge path
    capture_png = Path(online["downloads"]["png"])
    capture = json.loads(Path(online["downloads"]["json"]).read_text())
    frame = np.asarray(Image.open(capture_png).convert("RGB"))
    assert frame.shape == (480, 640, 3)
    p_py = ref.prob(frame)
    p_page = capture["prob"]
    assert abs(p_page - p_py) <= TOLERANCE, (p_page, p_py)
    assert abs(online["prob"] - p_py) <= TOLERANCE
    assert online["decision"] == ref.decision(online["smoothed_prob"]) == ref.decision(p_py)
    assert capture["decision"] == online["decision"]
    assert capture["threshold"] == ref.threshold
    # the original photo as the camera shows it (Chromium's own YUV->RGB): informational bound
    p_orig = ref.prob(rgb)

    # headers, disclaimer, version
    assert "'wasm-unsafe-eval'" in online["headers"]["content-security-policy"]
    assert "default-src 'none'" in online["headers"]["content-security-policy"]
    assert online["disclaimer_visible"]
    assert online["disclaimer_text"].strip() == ref.card["disclaimer"]
    assert online["version"] == v1
    assert online["quality"]["ok"]

    # the page says which threshold it uses: the training one, then the site's after the swap
    assert "not calibrated" in online["calibration_text"]
    assert (
        f"threshold {ref_new.threshold:.3f}: calibrated for e2e-clinic"
        in swapped["calibration_text"]
    )

    # a new model on the server is picked up on the next online load
    assert swapped["version"] != v1
    assert swapped["card_name"] == ref_new.card["name"]
    assert abs(swapped["prob"] - ref_new.prob(frame)) <= TOLERANCE

    # offline reload after the server stopped: same (new) model, same answer
    assert offline["version"] == swapped["version"]
    assert offline["card_name"] == ref_new.card["name"]
    assert abs(offline["prob"] - swapped["prob"]) <= 1e-6

    for name in ("phone.png", "phone-new-model.png", "phone-offline.png"):
        assert (out / name).stat().st_size > 1000
    shutil.copyfile(out / "phone.png", ARTIFACTS / "phone.png")
    summary = {
        "image": str(image),
        "reference": ref.name,
        "page_prob": p_page,
        "python_prob_same_frame": p_py,
        "python_prob_original_photo": p_orig,
        "decision": online["decision"],
        "threshold": ref.threshold,
        "runtime": online["runtime"],
        "infer_ms_median": online["infer_ms_median"],
        "infer_ms_mean": online["infer_ms_mean"],
        "preprocess_ms": online["preprocess_ms"],
        "model": ref.card["name"],
        "screenshot": str(ARTIFACTS / "phone.png"),
    }
    (ARTIFACTS / "phone-e2e.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def _photo_frames(names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """scikit-image sample photos as 640x480 camera frames (the page sees their centre square)."""
    import skimage.data

    return {
        n: np.asarray(
            Image.fromarray(getattr(skimage.data, n)())
            .convert("RGB")
            .resize((640, 480), Image.Resampling.BICUBIC)
        )
        for n in names
    }


def _page_run(model: Path, frame: np.ndarray, tmp_path: Path, name: str, flags: tuple) -> dict:
    """Serve `model`, show `frame` to the page as its camera, return the driver's RESULT."""
    video = tmp_path / f"{name}.y4m"
    write_y4m(frame, video)
    out = ARTIFACTS / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    srv = make_server(str(model), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        res = _run_page(srv.url, video, out, srv, None, flags=flags)
    finally:
        srv.shutdown()
        srv.server_close()
    return res


def test_phone_page_gates_a_picture_unlike_the_training_images(browser_env, tmp_path: Path) -> None:
    """The shipped tiny model's guard on the page (LiteRT.js, second output): a real photograph
    that is no lesion photo (flagged, without skin colours) gets no decision, as in Python."""
    from dermedge.edge.camera import NO_LESION
    from dermedge.edge.runtime import EdgeModel

    model = REPO / "dermedge" / "models" / "tiny.tflite"
    edge = EdgeModel(model)
    assert edge.guard is not None
    frames = _photo_frames(("coins", "brick"))
    gated = [n for n, f in frames.items() if edge.classify(f[:, 80:560])["decision"] == "none"]
    assert gated, "Python gives every photo a decision"
    res = _page_run(model, frames[gated[0]], tmp_path, "phone-guard", ("--gate", "--frames=5"))
    res = res["gate"]
    assert res["unfamiliar_frames"] >= 5 and res["good_frames"] == 0 and res["smoothed"] is None
    assert res["last"]["unfamiliar"] and res["last"]["prob"] is None
    assert res["last"]["guard_score"] > edge.guard.cutoff
    assert res["quality_text"].startswith(NO_LESION)  # the camera loop's reason, word for word
    assert "REFER" not in res["decision_text"] and "routine" not in res["decision_text"]
    assert (ARTIFACTS / "phone-guard" / "phone-guard.png").stat().st_size > 1000


def test_phone_page_sends_an_unfamiliar_lesion_on(browser_env, tmp_path: Path) -> None:
    """A skin-coloured picture the guard flags is never hidden or routine on the page: its
    decision is "cannot assess" (refer), as edge-classify's."""
    from dermedge.edge.runtime import CANNOT_ASSESS, EdgeModel

    model = REPO / "dermedge" / "models" / "tiny.tflite"
    edge = EdgeModel(model)
    frames = _photo_frames(("chelsea", "coffee", "astronaut"))
    unsure = [
        n for n, f in frames.items() if edge.classify(f[:, 80:560])["decision"] == CANNOT_ASSESS
    ]
    assert unsure, "Python sends none of the photos on as 'cannot assess'"
    res = _page_run(model, frames[unsure[0]], tmp_path, "phone-unsure", ("--unsure", "--frames=5"))
    res = res["unsure"]
    assert res["decision"] == CANNOT_ASSESS and res["last"]["unfamiliar"]
    assert res["decision_text"].startswith("CANNOT ASSESS: refer")

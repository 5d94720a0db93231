"""`dermedge benchmark`: MAC counting, the peak model, statistics, and the whole command end to end
on a tiny real model (Keras + TFLite fp32/int8 + ONNX where tf2onnx converts) and real photos.

Timing is never asserted: only that the files exist and hold the fields they should.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dermedge.benchmark import core, report
from dermedge.benchmark.compute import count_macs, peak_model
from dermedge.benchmark.machine import facts, flag_summary
from dermedge.benchmark.variants import discover

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets"
SIZE = 64


# --- fast, TensorFlow-free ----------------------------------------------------------------------


def test_count_macs_of_the_tiny_asset_models():
    # 64x64x3 -> Conv2D(8, 3, stride 2) -> 31x31x8, each output 3*3*3 MACs
    #         -> Conv2D(16, 3, stride 2) -> 15x15x16, each output 3*3*8 MACs
    #         -> GlobalAveragePooling -> Dense(1): 16 MACs
    expected = 31 * 31 * 8 * 27 + 15 * 15 * 16 * 72 + 16
    for name in ("tiny_fp32.tflite", "tiny_int8.tflite", "tiny_int8_int8io.tflite"):
        m = count_macs(ASSETS / name)
        assert m["macs"] == expected, name
        assert m["ops_counted"] == {"CONV_2D": 2, "FULLY_CONNECTED": 1}
    assert count_macs((ASSETS / "tiny_fp32.tflite").read_bytes())["macs"] == expected


def test_count_macs_rejects_non_models(tmp_path):
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ValueError):
        count_macs(bad)


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_peak_model_is_a_real_matrix_multiply(dtype, tmp_path):
    interp = pytest.importorskip("ai_edge_litert.interpreter")
    m, k, n = 4, 32, 8
    data = peak_model(dtype, m, k, n, seed=3)
    assert count_macs(data)["macs"] == k * n  # per row ("image") of the input
    it = interp.Interpreter(model_content=data)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    assert list(d["shape"]) == [m, k]
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, size=(m, k)).astype(np.float32 if dtype == "fp32" else np.int8)
    it.set_tensor(d["index"], x)
    it.invoke()
    y = it.get_tensor(it.get_output_details()[0]["index"])
    w_rng = np.random.default_rng(3)
    if dtype == "fp32":
        w = w_rng.standard_normal((n, k)).astype(np.float32)
        np.testing.assert_allclose(y, x @ w.T, rtol=1e-4, atol=1e-4)
    else:
        w = w_rng.integers(-127, 128, size=(n, k), dtype=np.int8)
        acc = x.astype(np.int64) @ w.T.astype(np.int64)
        want = np.clip(np.round(acc * 0.05 * 0.01 / 0.5), -128, 127)
        assert np.abs(y.astype(np.int64) - want).max() <= 1


def test_latency_stats_and_spread_warnings():
    steady = core.latency_stats([0.010] * 50 + [0.011] * 50)
    assert steady["n_runs"] == 100
    assert steady["median_ms"] == pytest.approx(10.5, abs=0.6)
    assert steady["warnings"] == []
    noisy = core.latency_stats(list(np.linspace(0.005, 0.05, 40)) + [0.5])
    assert any(w.startswith("wide spread") for w in noisy["warnings"])
    few = core.latency_stats([0.01, 0.011])
    assert any("only 2 timed runs" in w for w in few["warnings"])


def test_pareto_front():
    rows = [
        {"median_ms": 10.0, "auc": 0.80},  # front (fastest)
        {"median_ms": 20.0, "auc": 0.90},  # front
        {"median_ms": 25.0, "auc": 0.85},  # dominated by the 20 ms row
        {"median_ms": 40.0, "auc": 0.95},  # front (best)
        {"median_ms": 40.0, "auc": 0.95},  # a tie is not dominated either
        {"median_ms": None, "auc": 0.99},  # no latency: left out
    ]
    assert report.pareto_front(rows) == [0, 1, 3, 4]


def test_machine_facts():
    f = facts()
    for key in ("cpu_model", "logical_cpus", "flags", "versions", "mem_total_gb", "date"):
        assert key in f
    assert "numpy" in f["versions"]
    if sys.platform.startswith("linux") and f["machine"] in ("x86_64", "AMD64"):
        assert {"avx2", "avx512f", "avx512_vnni"} <= set(f["flags"])
        assert "VNNI" in flag_summary(f["flags"])


def test_discover_groups_a_train_run_with_its_converted_variants(tmp_path):
    train = tmp_path / "runs" / "train" / "tiny"
    conv = tmp_path / "runs" / "convert" / "tiny"
    train.mkdir(parents=True)
    conv.mkdir(parents=True)
    (train / "model.keras").write_bytes(b"x")
    (train / "model_card.json").write_text(json.dumps({"threshold": 0.3, "input": {"size": 64}}))
    (train / "manifest.csv").write_text("path,label,split\n")
    for q, src in (("fp32", "tiny_fp32"), ("int8", "tiny_int8")):
        (conv / f"model_{q}.tflite").write_bytes((ASSETS / f"{src}.tflite").read_bytes())
    for src in (train, conv):
        (group,) = discover([src])
        assert [v.name for v in group.variants] == ["keras", "tflite-fp32", "tflite-int8"]
        assert group.manifest == train / "manifest.csv"
        assert group.find("keras").card["threshold"] == 0.3
        assert group.find("tflite-int8").card["quantization"] == "int8"
        assert group.find("keras").macs_from == conv / "model_fp32.tflite"
    # a variant the converter's gate refused: listed, benchmarked only when asked
    (conv / "rejected").mkdir()
    (conv / "model_int8.tflite").rename(conv / "rejected" / "model_int8.tflite")
    (group,) = discover([train])
    assert [v.name for v in group.variants] == ["keras", "tflite-fp32"]
    assert group.rejected == [conv / "rejected" / "model_int8.tflite"]
    (group,) = discover([train], include_rejected=True)
    assert [v.name for v in group.variants] == ["keras", "tflite-fp32", "tflite-int8:rejected"]
    assert group.find("tflite-int8").extra["rejected"] is True


# --- end to end on a tiny real model ------------------------------------------------------------


def _photos(isic: Path, n_per_class: int) -> list[tuple[Path, str]]:
    out = []
    for label in ("benign", "malignant"):
        files = sorted((isic / "test" / label).glob("*.jpg"))[:n_per_class]
        out += [(f, label) for f in files]
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, request) -> Path:
    """runs/train/tiny (model.keras, model_card.json, manifest.csv with 20 real test photos) and
    runs/convert/tiny/model_{fp32,int8}.tflite with embedded cards."""
    tf = pytest.importorskip("tensorflow", reason="the end-to-end test builds a Keras model")
    import keras
    from keras import layers

    from dermedge import CLASSES, DISCLAIMER
    from dermedge.data.contract import InputContract, preprocess
    from dermedge.edge.card import embed_card

    data = Path(os.environ.get("DERMEDGE_DATA", REPO.parent / "shared" / "data"))
    isic = data / "isic-mvb"
    if not (isic / "test").is_dir():
        pytest.skip(
            f"real photos not found at {isic} (set DERMEDGE_DATA to the shared data folder)"
        )
    root = tmp_path_factory.mktemp("bench")
    train = root / "runs" / "train" / "tiny"
    conv = root / "runs" / "convert" / "tiny"
    train.mkdir(parents=True)
    conv.mkdir(parents=True)
    contract = InputContract(size=SIZE, crop="squash")
    photos = _photos(isic, 10)
    x = np.stack([preprocess(p, contract) for p, _ in photos]).astype(np.float32)
    y = np.array([CLASSES.index(lab) for _, lab in photos], dtype=np.float32)

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(SIZE, SIZE, 3), name="image")
    h = layers.Rescaling(1 / contract.std, offset=-contract.mean / contract.std, name="normalize")(
        inputs
    )
    h = layers.Conv2D(8, 3, strides=2, activation="relu")(h)
    h = layers.DepthwiseConv2D(3, activation="relu")(h)
    h = layers.Conv2D(16, 1, activation="relu")(h)
    h = layers.GlobalAveragePooling2D()(h)
    outputs = layers.Dense(1, activation="sigmoid", name="prob")(h)
    model = keras.Model(inputs, outputs, name="tiny")
    model.compile("adam", "binary_crossentropy")
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    model.save(train / "model.keras")
    card = {
        "schema": "dermedge.card/1",
        "name": "tiny",
        "arch": "tiny_cnn",
        "classes": list(CLASSES),
        "positive_class": "malignant",
        "output": "sigmoid",
        "input": contract.to_dict(),
        "threshold": 0.5,
        "threshold_policy": {"target_sensitivity": 0.95, "chosen_on": "val"},
        "metrics": {},
        "data": {},
        "versions": {},
        "created": "2026-01-01T00:00:00+00:00",
        "disclaimer": DISCLAIMER,
    }
    (train / "model_card.json").write_text(json.dumps(card))
    with open(train / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "sha256", "label", "group", "split", "source", "dx"])
        for p, lab in photos:
            w.writerow([str(p), "", lab, "", "test", "folders", lab])
    for q in ("fp32", "int8"):
        conv_ = tf.lite.TFLiteConverter.from_keras_model(model)
        if q == "int8":
            conv_.optimizations = [tf.lite.Optimize.DEFAULT]
            conv_.representative_dataset = lambda: ([im[None]] for im in x)
            conv_.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv_.inference_input_type = tf.uint8
            conv_.inference_output_type = tf.uint8
        (conv / f"model_{q}.tflite").write_bytes(
            embed_card(conv_.convert(), {**card, "quantization": q})
        )
    # a short video of the same photos for the camera loop
    import cv2

    video = root / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for p, _ in photos:
        writer.write(cv2.resize(cv2.imread(str(p)), (160, 120)))
    writer.release()
    return root


def _bench(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DERMEDGE_RUNS": str(root / "runs"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "dermedge.benchmark", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_benchmark_end_to_end(tiny_run):
    root = tiny_run
    proc = _bench(
        root,
        str(root / "runs" / "train" / "tiny"),
        "--threads",
        "1,2",
        "--runs",
        "6",
        "--warmup",
        "2",
        "--name",
        "e2e",
        "--camera-source",
        str(root / "clip.avi"),
        "--frames",
        "20",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "runs" / "benchmark" / "e2e"
    for name in (
        "results.csv",
        "results.json",
        "results.md",
        "pareto.png",
        "latency.png",
        "camera.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    onnx_ok = core.onnx_status() is None
    want = {"keras", "tflite-fp32", "tflite-int8"} | (
        {"onnx-fp32", "onnx-int8"} if onnx_ok else set()
    )
    variants = {r["variant"] for r in res["rows"]}
    # an ONNX variant tf2onnx cannot convert is left out with a note saying why
    missing = want - variants
    assert all(any(m in n for n in res["notes"]) for m in missing), (missing, res["notes"])
    assert {"keras", "tflite-fp32", "tflite-int8"} <= variants
    assert len(res["rows"]) == 2 * len(variants)  # every variant at 1 and 2 threads
    for r in res["rows"]:
        assert r["error"] is None, r
        assert r["n_runs"] == 6
        for key in (
            "file_mb",
            "load_ms",
            "first_ms",
            "median_ms",
            "p90_ms",
            "p99_ms",
            "iqr_ms",
            "throughput_ips",
            "peak_rss_mb",
            "auc",
            "accuracy",
            "sensitivity",
            "specificity",
            "macs_m",
            "gmacs",
            "peak_gmacs",
            "frac_peak",
            "frac_machine_peak",
        ):
            assert isinstance(r[key], (int, float)) and r[key] >= 0, (r["variant"], key, r[key])
        assert r["p99_ms"] >= r["p90_ms"] >= r["median_ms"] > 0
        assert r["n_test"] == 20 and 0 <= r["auc"] <= 1
        assert r["tensorflow_loaded"] == (r["variant"] == "keras")
        assert r["macs_m"] == pytest.approx(res["rows"][0]["macs_m"])  # one graph, one count
        assert isinstance(r["pareto"], bool)
    assert any(r["pareto"] for r in res["rows"])
    tfl = [r for r in res["rows"] if r["variant"] == "tflite-fp32"]
    assert all(r["max_abs_diff_vs_ref"] < 1e-3 for r in tfl)  # fp32 TFLite matches Keras
    peaks = res["peak"]["runtimes"]
    assert peaks["litert"]["fp32"]["1"] > 0 and peaks["litert"]["int8"]["2"] > 0
    assert peaks["keras"]["fp32"]["2"] > 0 and not peaks["keras"]["int8"]  # TF: fp32 only
    if onnx_ok:
        assert peaks["onnx"]["fp32"]["1"] > 0 and peaks["onnx"]["int8"]["1"] > 0
    assert res["peak"]["machine"]["fp32"]["1"] >= peaks["litert"]["fp32"]["1"]
    m = res["machine"]
    assert m["cpu_model"] and m["logical_cpus"]
    if m["machine"] == "x86_64":
        assert "avx2" in m["flags"] and "avx512_vnni" in m["flags"]
    assert {"numpy", "ai-edge-litert"} <= set(m["versions"])
    assert len(res["raw_times_ms"]) == len(res["rows"])
    cam = res["camera"]
    assert cam["frames"] == 20 and cam["fps"] > 0
    assert set(cam["stages"]) == {"decode", "crop", "quality gate", "preprocess", "inference"}
    assert not cam.get("untimed"), cam.get("untimed")
    assert cam["stages"]["inference"]["n_runs"] == cam["classified"]
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(res["rows"]) and {"median_ms", "auc", "frac_peak"} <= set(rows[0])
    md = (out / "results.md").read_text()
    assert "| median ms |" in md and "Camera loop" in md and "AVX" in md
    assert "| tflite-int8 |" in proc.stdout  # the table is printed at the end


BLOCK_TF = """
import importlib.abc, sys

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "onnxruntime", "onnx"):
            raise ModuleNotFoundError(f"No module named {name!r} (edge install)")

sys.meta_path.insert(0, _Block())
"""


def test_benchmark_edge_install_without_tensorflow(tiny_run, tmp_path):
    """What a device with only the edge install runs: TensorFlow, Keras and ONNX cannot be
    imported (blocked in every process by a sitecustomize), so only .tflite variants are timed."""
    root = tiny_run
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TF)
    env_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    proc = _bench(
        root,
        str(root / "runs" / "train" / "tiny"),
        "--threads",
        "1",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--name",
        "edge",
        "--no-plots",
        env={"PYTHONPATH": env_path},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((root / "runs" / "benchmark" / "edge" / "results.json").read_text())
    assert [r["variant"] for r in res["rows"]] == ["tflite-fp32", "tflite-int8"]
    assert not any(r["tensorflow_loaded"] for r in res["rows"])
    assert all(r["auc"] is not None and r["frac_peak"] > 0 for r in res["rows"])
    assert any("TensorFlow is not installed" in n for n in res["notes"])
    assert any(n.startswith("ONNX Runtime variants not benchmarked") for n in res["notes"])
    assert not (root / "runs" / "benchmark" / "edge" / "pareto.png").exists()


@pytest.mark.skipif(importlib.util.find_spec("click") is None, reason="click not installed")
def test_cli_is_wired():
    from click.testing import CliRunner

    from dermedge.cli import main

    res = CliRunner().invoke(main, ["benchmark", "--help"])
    assert res.exit_code == 0 and "--camera-source" in res.output
    res = CliRunner().invoke(
        main, ["benchmark", str(ASSETS / "tiny_fp32.tflite"), "--runtime", "cuda"]
    )
    assert res.exit_code != 0 and "unknown runtime" in res.output

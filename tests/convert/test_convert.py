"""`dermedge convert`: a small real Keras model -> four TFLite variants, gated through the edge runtime.

The model is tiny (64 px, two convolutions) and trained for a few seconds on ~120 real ISIC
images split by `dermedge data split`, so the whole file runs in well under two minutes on two
cores. Tests without TensorFlow (gate arithmetic, calibration sampling) come first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from dermedge.cli import main
from dermedge.convert import ConvertError, parse_quant
from dermedge.convert import gate as G
from dermedge.convert.quantize import calibration_sample
from dermedge.edge.card import without_digest

pytestmark = pytest.mark.slow  # trains and converts real models

REPO = Path(__file__).resolve().parents[2]


# --- no TensorFlow needed --------------------------------------------------------------------------


def test_parse_quant():
    assert parse_quant("all") == ["fp32", "fp16", "dynamic", "int8"]
    assert parse_quant("int8, fp32") == ["fp32", "int8"]
    with pytest.raises(ConvertError, match="unknown --quant int4"):
        parse_quant("int4")


def test_judge_names_the_failing_metric_and_by_how_much():
    tol = G.Tolerances()
    ref = {"auc": 0.90, "accuracy": 0.85, "sensitivity": 0.95, "specificity": 0.7}
    ok = {
        "auc": 0.895,
        "accuracy": 0.845,
        "sensitivity": 0.95,
        "specificity": 0.7,
        "agreement": 0.99,
        "n": 200,
    }
    assert G.judge(ref, ok, tol) == []
    bad = {
        "auc": 0.87,
        "accuracy": 0.85,
        "sensitivity": 0.92,
        "specificity": 0.7,
        "agreement": 0.95,
        "n": 200,
    }
    fails = G.judge(ref, bad, tol)
    assert len(fails) == 3
    assert fails[0].startswith("AUC dropped 0.0300") and "by 0.0200" in fails[0]
    assert fails[1].startswith("sensitivity dropped 0.0300")
    assert "agreement with Keras 0.9500 (10 of 200 decisions differ)" in fails[2]
    with pytest.raises(ValueError, match="max-auc-drop"):
        G.Tolerances(max_auc_drop=-0.1)


def test_compare_agreement_and_max_dp():
    y = np.array([0, 0, 1, 1])
    ref = np.array([0.1, 0.6, 0.4, 0.9])
    var = np.array([0.1, 0.45, 0.4, 0.95])
    m = G.compare(y, ref, var, threshold=0.5)
    assert m["agreement"] == 0.75 and m["max_abs_dp"] == pytest.approx(0.15)
    assert m["auc"] == 0.75 and m["accuracy"] == 0.75 and m["sensitivity"] == 0.5


def test_output_step_and_int8_advice():
    p = np.array([0.1, 0.39453, 0.42188, 0.42188, 0.44531, 0.9])
    step = G.output_step(p, 0.4393)
    assert step == pytest.approx(0.02343)
    assert G.output_step(p, 0.05) is None
    text = G.advice("int8", ["sensitivity dropped ..."], 300, step)
    assert "steps of 0.023" in text and "--calib-images 1000; used 300" in text
    assert "input contract" in G.advice("int8", ["input contract mismatch: ..."])


def test_contract_checks():
    layer = {"layer": "normalize", "mean": np.array([127.0]), "std": np.array([128.0])}
    assert G.check_normalization({"mean": 127, "std": 128}, layer) == []
    assert G.check_normalization({"mean": 127, "std": 128}, None) == []
    (msg,) = G.check_normalization({"mean": 0, "std": 255}, layer)
    assert "mean=0 std=255" in msg and "(x - 127) / 128" in msg
    assert G.check_size(224, 224) == [] and "card says 96px" in G.check_size(96, 64)[0]
    ref = {"auc": 0.80, "accuracy": 0.75}
    assert G.check_recorded(ref, {"roc_auc": 0.801, "accuracy": 0.75}, G.Tolerances()) == []
    (msg,) = G.check_recorded(ref, {"roc_auc": 0.90}, G.Tolerances())
    assert "training recorded 0.9000" in msg and "crop/size" in msg


def _rec(i: int, label: str, split: str) -> SimpleNamespace:
    return SimpleNamespace(path=f"/d/{split}/{label}/{i}.jpg", label=label, split=split)


def test_calibration_sample_is_stratified_and_from_train_only():
    recs = (
        [_rec(i, "benign", "train") for i in range(300)]
        + [_rec(i, "malignant", "train") for i in range(100)]
        + [_rec(i, "malignant", "test") for i in range(100)]
    )
    sample = calibration_sample(recs, 40, seed=0)
    assert len(sample) == 40 and all(r.split == "train" for r in sample)
    assert sum(r.label == "malignant" for r in sample) == 10
    assert [r.path for r in sample] == [r.path for r in calibration_sample(recs, 40, seed=0)]
    with pytest.raises(ConvertError, match="one class"):
        calibration_sample([r for r in recs if r.label == "benign"] + recs[-5:], 40)


def test_convert_package_imports_without_tensorflow():
    code = (
        "import sys; import dermedge.convert.cli, dermedge.convert.gate, dermedge.convert.inspect, "
        "dermedge.convert.pipeline; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- a small real model ----------------------------------------------------------------------------

SIZE = 64


@pytest.fixture(scope="module")
def env(tmp_path_factory, isic_dir):
    """DERMEDGE_RUNS in a temp folder, so caches and default outputs never land in the repo."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    tmp = tmp_path_factory.mktemp("convert")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERMEDGE_RUNS", str(tmp / "runs"))
        mp.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
        yield SimpleNamespace(tmp=tmp, isic=isic_dir)


@pytest.fixture(scope="module")
def run_dir(env):
    """A finished 'training run': model.keras, model_card.json and the split manifest."""
    import keras
    from keras import layers

    from dermedge.data.contract import InputContract
    from dermedge.data.images import load_images
    from dermedge.data.manifest import manifest_sha256, read_manifest
    from dermedge.train.card import make_card, write_card
    from dermedge.train.evaluate import binary_metrics

    data = env.tmp / "isic-small"
    for label in ("benign", "malignant"):
        src = env.isic / "train" / label
        files = sorted(src.glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)[:60]
        (data / label).mkdir(parents=True)
        for f in files:
            (data / label / f.name).symlink_to(f)
    man = env.tmp / "manifest"
    res = CliRunner().invoke(main, ["data", "split", str(data), "--out", str(man), "--test", "0.3"])
    assert res.exit_code == 0, res.output

    run = env.tmp / "runs" / "train" / "tiny"
    run.mkdir(parents=True)
    for f in ("manifest.csv", "manifest.json"):
        shutil.copy(man / f, run / f)
    recs = read_manifest(run / "manifest.csv")
    contract = InputContract(size=SIZE)

    def split(name):
        rs = [r for r in recs if r.split == name]
        x, kept, _ = load_images(
            [r.path for r in rs], contract, cache_dir=env.tmp / "cache", progress=False
        )
        return x.astype("float32"), np.array(
            [rs[i].label == "malignant" for i in kept], dtype="float32"
        )

    (xtr, ytr), (xv, _), (xte, yte) = split("train"), split("val"), split("test")
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = layers.Rescaling(1 / 128.0, offset=-127 / 128.0, name="normalize")(inp)
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, layers.Dense(1, activation="sigmoid", name="predictions")(x))
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(xtr, ytr, epochs=12, batch_size=16, verbose=0)
    thr = float(np.median(model.predict(xv, verbose=0)))
    m = binary_metrics(yte, model.predict(xte, verbose=0).ravel(), thr)
    model.save(run / "model.keras")
    metrics = {"test": {"roc_auc": m["roc_auc"], "accuracy": m["accuracy"], "n": len(yte)}}
    data_info = {
        "manifest": "manifest.csv",
        "manifest_sha256": manifest_sha256(run / "manifest.csv"),
    }
    write_card(make_card("tiny", "tiny-cnn", contract, thr, 0.95, metrics, data_info), run)
    return run


# loose enough for a 36-image test set (one flipped decision = 2.8 points); strictness is tested above
LOOSE = [
    "--max-auc-drop",
    "0.05",
    "--max-acc-drop",
    "0.1",
    "--max-sens-drop",
    "0.1",
    "--min-agreement",
    "0.9",
]


def _convert(*args: str) -> SimpleNamespace:
    res = CliRunner().invoke(main, ["convert", *args])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res


@pytest.fixture(scope="module")
def converted(env, run_dir):
    """`dermedge convert RUN --quant all`, counting calls into the edge runtime."""
    from dermedge.edge import runtime

    calls: list[str] = []
    orig = runtime.EdgeModel.predict

    def counting(self, pixels):
        calls.append(self.card["quantization"])
        return orig(self, pixels)

    out = env.tmp / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime.EdgeModel, "predict", counting)
        res = _convert(
            str(run_dir), "--quant", "all", "--calib-images", "60", "--out", str(out), *LOOSE
        )
    return SimpleNamespace(res=res, out=out, calls=calls)


@pytest.mark.slow
def test_converts_all_four_variants_through_the_gate(converted, run_dir):
    from dermedge.convert.quantize import float_ops, io_details
    from dermedge.data.manifest import manifest_sha256
    from dermedge.edge.card import read_card

    res, out = converted.res, converted.out
    assert res.exit_code == 0, res.output
    assert "| variant" in res.output and "Verdict: **PASS**" in res.output
    # the device code path: the test split, the val split for each quantized variant's threshold,
    # and the guard's check that the unguarded file gives the same probabilities on val
    assert sorted(converted.calls) == sorted(
        [
            "fp32",
            "fp32",
            "fp16",
            "fp16",
            "fp16",
            "dynamic",
            "dynamic",
            "dynamic",
            "int8",
            "int8",
            "int8",
        ]
    )
    for v in ("fp32", "fp16", "dynamic", "int8"):
        guarded = read_card(out / f"model_{v}.tflite")
        assert guarded["guard"]["fit"]["probabilities_identical_on_val"], v
    report = json.loads((out / "report.json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["keras", "fp32", "fp16", "dynamic", "int8"]
    assert (out / "report.md").read_text().count("| fp") == 2
    assert not (out / "rejected").exists()
    assert not [p for p in out.parent.iterdir() if ".convert-" in p.name]  # temp folder gone
    rows = {r["variant"]: r for r in report["rows"]}
    assert rows["fp32"]["max_abs_dp"] < 1e-4 and rows["fp32"]["agreement"] == 1.0
    sha = manifest_sha256(run_dir / "manifest.csv")
    for v in ("fp32", "fp16", "dynamic", "int8"):
        path = out / f"model_{v}.tflite"
        card = read_card(path)
        assert without_digest(card) == json.loads((out / f"model_{v}.tflite.json").read_text())
        assert card["quantization"] == v and card["name"] == "tiny"
        assert card["conversion"]["manifest_sha256"] == sha == card["data"]["manifest_sha256"]
        assert card["source"]["run"] == str(run_dir)
        assert card["gate"]["verdict"] == "pass" and card["gate"]["runtime"].startswith(
            "ai-edge-litert"
        )
        assert card["gate"]["tolerances"]["min_agreement"] == 0.9
        assert {"tensorflow", "keras", "ai-edge-litert"} <= set(card["conversion"]["versions"])
        assert rows[v]["size_bytes"] == path.stat().st_size
        # each quantized variant carries its own threshold, re-chosen on val with the card's policy
        assert card["threshold"] == rows[v]["threshold"] == card["gate"]["threshold"]
        policy = card["threshold_policy"]
        if v == "fp32":
            assert policy["variant_threshold"] == "keras"
        else:
            assert policy["variant_threshold"].startswith("rechosen on val")
            assert policy["val_sensitivity"] >= policy["target_sensitivity"]
    int8 = (out / "model_int8.tflite").read_bytes()
    assert float_ops(int8) == {}
    io = io_details(int8)
    assert io["input"]["dtype"] == "uint8" and io["output"]["dtype"] == "uint8"
    calib = read_card(out / "model_int8.tflite")["conversion"]["calibration"]
    assert (
        calib["split"] == "train"
        and calib["per_class"]["benign"] > 0
        and calib["per_class"]["malignant"] > 0
    )
    assert float_ops((out / "model_fp32.tflite").read_bytes())  # sanity: the check sees floats
    assert len(int8) < (out / "model_fp32.tflite").stat().st_size
    umask = os.umask(0o022)
    os.umask(umask)
    assert (
        out / "model_int8.tflite"
    ).stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.slow
def test_card_reads_back_without_tensorflow(converted, run_dir):
    img = next(p for p in (run_dir.parent.parent.parent / "isic-small" / "benign").iterdir())
    code = f"""
import json, sys
from dermedge.edge.card import read_card
from dermedge.edge.runtime import EdgeModel

card = read_card({str(converted.out / "model_int8.tflite")!r})
result = EdgeModel({str(converted.out / "model_int8.tflite")!r}).classify({str(img)!r})
assert 'tensorflow' not in sys.modules, 'tensorflow was imported'
print(json.dumps({{"card": card, "result": result}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "DERMEDGE_EDGE_RUNTIME"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["card"]["quantization"] == "int8" and got["card"]["input"]["size"] == SIZE
    assert got["result"]["decision"] in ("refer", "routine")


@pytest.mark.slow
def test_inspect(converted):
    res = CliRunner().invoke(
        main, ["convert", "--inspect", str(converted.out / "model_int8.tflite")]
    )
    assert res.exit_code == 0, res.output
    for text in (
        "uint8",
        "scale=",
        "float ops none (fully integer)",
        "dermedge_card",
        "quantization int8",
        "gate      pass",
    ):
        assert text in res.output
    res = CliRunner().invoke(
        main, ["convert", "--inspect", str(converted.out / "model_fp16.tflite"), "--json"]
    )
    info = json.loads(res.output)
    assert info["card"]["quantization"] == "fp16" and info["float_ops"]


@pytest.mark.slow
def test_gate_fails_when_the_card_claims_another_normalization(env, run_dir):
    broken = env.tmp / "broken-run"
    shutil.copytree(run_dir, broken)
    card = json.loads((broken / "model_card.json").read_text())
    card["input"].update(mean=0.0, std=255.0)  # the model's normalize layer does (x - 127) / 128
    (broken / "model_card.json").write_text(json.dumps(card))
    out = env.tmp / "out-broken"
    res = _convert(str(broken), "--quant", "fp32", "--out", str(out), *LOOSE)
    assert res.exit_code == 3, res.output
    assert "GATE FAILED (every variant): input contract mismatch" in res.output
    assert "mean=0 std=255" in res.output and "(x - 127) / 128" in res.output
    assert "Traceback" not in res.output
    assert not (out / "model_fp32.tflite").exists()
    assert (out / "rejected" / "model_fp32.tflite").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "fail" and report["contract_failures"]


@pytest.mark.slow
def test_gate_fails_on_an_accuracy_drop_and_says_what_to_try(env, run_dir, monkeypatch):
    from dermedge.edge import runtime

    orig = runtime.EdgeModel.predict
    monkeypatch.setattr(
        runtime.EdgeModel, "predict", lambda self, x: 1.0 - orig(self, x)
    )  # a wrecked int8
    out = env.tmp / "out-drop"
    res = _convert(str(run_dir), "--quant", "int8", "--calib-images", "30", "--out", str(out))
    assert res.exit_code == 3, res.output
    assert (
        "GATE FAILED int8: AUC dropped" in res.output
        and "more than the allowed 0.0100 by" in res.output
    )
    assert "--calib-images 1000; used 30" in res.output and "preprocessing mismatch" in res.output
    assert (
        not (out / "model_int8.tflite").exists()
        and (out / "rejected" / "model_int8.tflite").is_file()
    )


def _one_line_error(res, out: Path) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, res.output
    assert not out.exists(), "partial output left behind"
    return errors[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["not-an-image", "truncated", "corrupt", "no-manifest", "one-class", "card-size"]
)
def test_bad_input_is_one_clear_line(env, run_dir, case):
    bad = env.tmp / f"bad-{case}"
    shutil.copytree(run_dir, bad)
    if case == "not-an-image":
        import keras

        inp = keras.Input((10,))
        keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(inp)).save(bad / "model.keras")
        want = "is not an image batch"
    elif case == "truncated":
        blob = (bad / "model.keras").read_bytes()
        (bad / "model.keras").write_bytes(blob[: len(blob) // 2])
        want = "corrupt or truncated"
    elif case == "corrupt":
        blob = bytearray((bad / "model.keras").read_bytes())
        for i in range(200, len(blob) - 200, 5):
            blob[i] ^= 0x5A
        (bad / "model.keras").write_bytes(bytes(blob))
        want = "cannot load Keras model"
    elif case == "no-manifest":
        (bad / "manifest.csv").unlink()
        want = "has no manifest.csv"
    elif case == "one-class":
        lines = (bad / "manifest.csv").read_text().splitlines()
        keep = [lines[0]] + [
            ln for ln in lines[1:] if not (",train," in ln and ",malignant," in ln)
        ]
        (bad / "manifest.csv").write_text("\n".join(keep) + "\n")
        want = "calibration set (training split) has one class"
    else:
        card = json.loads((bad / "model_card.json").read_text())
        card["input"]["size"] = 96
        (bad / "model_card.json").write_text(json.dumps(card))
        want = "card says 96px"
    out = env.tmp / f"out-bad-{case}"
    msg = _one_line_error(_convert(str(bad), "--quant", "all", "--out", str(out)), out)
    assert want in msg, msg


def test_corrupt_tflite_is_one_clear_line(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"\x18\x00\x00\x00TFL3" + bytes(40))
    res = CliRunner().invoke(main, ["convert", "--inspect", str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.startswith("Error:") and "not a readable TFLite model" in res.output
    res = CliRunner().invoke(main, ["convert", str(path)])
    assert res.exit_code == 1 and "already a TFLite model" in res.output


@pytest.mark.slow
def test_normalization_found_in_nested_models(env):
    import keras
    from keras import layers

    from dermedge.convert.source import layer_normalization

    inp = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="normalize")(inp)
    backbone = keras.Model(inp, layers.Conv2D(4, 3)(x), name="backbone")
    outer_in = keras.Input((32, 32, 3))
    outer = keras.Model(outer_in, layers.Dense(1)(layers.Flatten()(backbone(outer_in))))
    norm = layer_normalization(outer)
    assert norm["mean"] == pytest.approx([127.5]) and norm["std"] == pytest.approx([127.5])
    n = layers.Normalization(
        mean=[120.0, 110.0, 100.0], variance=[3600.0, 2500.0, 1600.0], name="normalize"
    )
    m = keras.Model(outer_in, n(outer_in))
    norm = layer_normalization(m)
    assert norm["std"] == pytest.approx([60.0, 50.0, 40.0])
    assert "mean=[1, 2, 3]" in G.check_normalization({"mean": [1, 2, 3], "std": 1}, norm)[0]


@pytest.mark.slow
def test_int8_with_int8_io(env, run_dir):
    from dermedge.convert.quantize import float_ops, io_details

    out = env.tmp / "out-int8-io"
    res = _convert(
        str(run_dir),
        "--quant",
        "int8",
        "--io",
        "int8",
        "--calib-images",
        "40",
        "--out",
        str(out),
        *LOOSE,
    )
    assert res.exit_code == 0, res.output
    blob = (out / "model_int8.tflite").read_bytes()
    io = io_details(blob)
    assert (
        io["input"]["dtype"] == "int8"
        and io["input"]["zero_point"] == -128
        and float_ops(blob) == {}
    )
    report = json.loads((out / "report.json").read_text())
    assert report["rows"][1]["agreement"] >= 0.9


def test_margin_and_threshold_pool_reframe_the_served_card(env, run_dir):
    """`--margin/--threshold-pool`: the card serves the new contract, its threshold is chosen again
    on val through it, and what the model was trained with is kept under `reframed`."""
    import keras

    from dermedge.data.contract import InputContract
    from dermedge.data.images import load_images
    from dermedge.data.manifest import read_manifest
    from dermedge.edge.runtime import EdgeModel
    from dermedge.metrics import choose_threshold

    trained = json.loads((run_dir / "model_card.json").read_text())
    out = env.tmp / "out-margin"
    args = ["--quant", "fp32", "--margin", "0.2", "--threshold-pool", "pooled", "--out", str(out)]
    res = _convert(str(run_dir), *args, *LOOSE)
    assert res.exit_code == 0, res.output
    model = EdgeModel(out / "model_fp32.tflite")
    card = model.card
    assert model.contract.margin == 0.2 and card["input"]["margin"] == 0.2
    assert card["reframed"]["trained"]["margin"] == 0.0
    assert card["reframed"]["trained"]["threshold"] == trained["threshold"]
    assert card["threshold_policy"]["pool"] == "pooled"
    served = InputContract(size=SIZE, margin=0.2)
    val = [r for r in read_manifest(run_dir / "manifest.csv") if r.split == "val"]
    x, kept, _ = load_images(
        [r.path for r in val], served, cache_dir=env.tmp / "c2", progress=False
    )
    y = np.array([val[i].label == "malignant" for i in kept])
    p = keras.saving.load_model(run_dir / "model.keras").predict(x.astype("float32"), verbose=0)
    policy = card["threshold_policy"]
    expect = choose_threshold(y, p.ravel(), policy["target_sensitivity"], policy["margin_se"])
    assert card["threshold"] == pytest.approx(expect["threshold"], abs=1e-6)
    assert np.allclose(model.predict(x[:8]), p[:8].ravel(), atol=1e-4)  # the margin is applied
    bad = CliRunner().invoke(main, ["convert", str(run_dir), "--margin", "1.5"])
    assert bad.exit_code == 2 and "1.5" in bad.output

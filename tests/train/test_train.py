"""End-to-end `dermedge train` / `dermedge evaluate` on ~100 real images at tiny sizes.

Real dermoscopy images come from `${DERMEDGE_DATA:-<repo>/../shared/data}/isic-mvb`; without
them these tests skip. Each arch builds and trains (1-2 epochs, 64 px), plus resume after a kill,
the mirrored strategy on two logical CPUs, evaluation outputs and the one-line errors.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
from click.testing import CliRunner  # noqa: E402
from dermedge_testing import isic_photos, write_isic_manifest  # noqa: E402

from dermedge.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("DERMEDGE_DATA") or REPO.parent / "shared" / "data") / "isic-mvb"
COMMON = ["--img-size", "64", "--batch", "16", "--bootstrap", "200", "--quiet"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DATA / "train" / "benign").is_dir(),
        reason=f"real images not found at {DATA} (set DERMEDGE_DATA to the folder holding isic-mvb/)",
    ),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A runs root and a ~100-image manifest (60 train / 20 val / 20 test, balanced)."""
    root = tmp_path_factory.mktemp("train")
    plan = [("train", 30, "train", 0), ("val", 10, "train", 30), ("test", 10, "test", 0)]
    man = write_isic_manifest(root / "manifest", DATA, plan, "folders")
    # a small labelled class-folder dataset (no splits) for evaluate --data DIR and train --data DIR
    folder = root / "folder"
    for label in ("benign", "malignant"):
        (folder / label).mkdir(parents=True)
        for p in isic_photos(DATA, "test", label, 12, 20):
            shutil.copy(p, folder / label / p.name)
    old = os.environ.get("DERMEDGE_RUNS")
    os.environ["DERMEDGE_RUNS"] = str(root / "runs")
    yield {"root": root, "manifest": man, "folder": folder, "runs": root / "runs"}
    if old is None:
        os.environ.pop("DERMEDGE_RUNS", None)
    else:
        os.environ["DERMEDGE_RUNS"] = old


def _cli(args: list[str], ok: bool = True):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def _card(run: Path) -> dict:
    return json.loads((run / "model_card.json").read_text())


def _check_run(run: Path, arch: str, mean: float, std: float, epochs: int, manifest: Path) -> dict:
    for f in (
        "model.keras",
        "manifest.csv",
        "manifest.json",
        "history.csv",
        "curves.png",
        "model_card.json",
        "config.json",
    ):
        assert (run / f).is_file(), f
    for f in (
        "metrics.json",
        "confusion_matrix.png",
        "roc.png",
        "pr.png",
        "reliability.png",
        "predictions.csv",
    ):
        assert (run / "eval" / f).is_file(), f
    assert not list(run.rglob(".tmp-*")), "temporary files left behind"
    card = _card(run)
    assert card["schema"] == "dermedge.card/1" and card["arch"] == arch and card["name"] == run.name
    assert card["classes"] == ["benign", "malignant"] and card["positive_class"] == "malignant"
    assert card["output"] == "sigmoid" and "not a diagnosis" in card["disclaimer"]
    assert (
        card["input"]["size"] == 64
        and card["input"]["mean"] == mean
        and card["input"]["std"] == std
    )
    assert 0.0 <= card["threshold"] <= 1.0
    assert (
        card["threshold_policy"]["target_sensitivity"] == 0.95
        and card["threshold_policy"]["chosen_on"] == "val"
    )
    assert card["metrics"]["val"]["sensitivity"] >= 0.95
    test = card["metrics"]["test"]
    for k in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc"):
        assert k in test and len(test[f"{k}_ci95"]) == 2
    assert card["metrics"]["test"]["threshold"] == card["threshold"]
    sha = hashlib.sha256((run / "manifest.csv").read_bytes()).hexdigest()
    assert card["data"]["manifest_sha256"] == sha
    if manifest is not None:
        assert (run / "manifest.csv").read_bytes() == (manifest / "manifest.csv").read_bytes()
    assert card["data"]["counts"]["train"] == {"benign": 30, "malignant": 30} or manifest is None
    v = card["versions"]
    assert v["tensorflow"] and v["keras"] and v["dermedge"] and v["python"]
    assert card["created"].startswith("20")
    t = card["training"]
    assert set(t["class_weights"]) == {"benign", "malignant"} and t["wall_seconds"] > 0
    assert t["config"]["arch"] == arch and t["epochs_run"] == epochs
    hist = _history(run)
    assert [int(r["epoch"]) for r in hist] == list(range(1, epochs + 1))
    assert {"loss", "auc", "val_loss", "val_auc", "lr", "phase"} <= set(hist[0])
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["operating_threshold"] == card["threshold"] and metrics["split"] == "test"
    assert metrics["n"] == 20
    return card


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _load(run: Path):
    import keras

    return keras.models.load_model(run / "model.keras", compile=False)


def _check_model(model, size: int = 64) -> None:
    assert model.layers[1].name == "normalize"
    assert tuple(model.input_shape) == (None, size, size, 3)
    x = np.random.default_rng(0).integers(0, 256, (3, size, size, 3)).astype("float32")
    p = np.asarray(model(x, training=False))
    assert p.shape == (3, 1) and np.all((p >= 0) & (p <= 1))


def test_train_simple_cnn_and_evaluate(env):
    res = _cli(
        [
            "train",
            "--data",
            str(env["manifest"]),
            "--arch",
            "simple_cnn",
            "--epochs",
            "2",
            "--name",
            "simple",
            *COMMON,
        ]
    )
    assert "summary" in res.output and "class weights (balanced)" in res.output
    run = env["runs"] / "train" / "simple"
    card = _check_run(run, "simple_cnn", 127.0, 128.0, 2, env["manifest"])
    model = _load(run)
    _check_model(model)
    assert model.count_params() < 1_000_000  # Pi Zero sized
    # evaluate the run again (its own manifest, test split) into another folder
    out = env["root"] / "ev1"
    res = _cli(["evaluate", str(run), "--out", str(out), "--bootstrap", "200"])
    assert "roc_auc" in res.output and "t=0.5" in res.output
    m = json.loads((out / "metrics.json").read_text())
    first = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["operating_threshold"] == card["threshold"]
    assert m["roc_auc"] == pytest.approx(first["roc_auc"], abs=1e-6)
    for f in ("confusion_matrix.png", "roc.png", "pr.png", "reliability.png"):
        assert (out / f).stat().st_size > 1000
    # the model file itself, on a labelled folder without splits, with another threshold
    res = _cli(
        [
            "evaluate",
            str(run / "model.keras"),
            "--data",
            str(env["folder"]),
            "--threshold",
            "0.5",
            "--bootstrap",
            "200",
        ]
    )
    ev_dir = run / f"eval-{env['folder'].name}-test"
    m = json.loads((ev_dir / "metrics.json").read_text())
    assert m["n"] == 24 and m["split"] == "all" and m["operating_threshold"] == 0.5
    # the val split of the manifest
    _cli(["evaluate", str(run), "--split", "val", "--bootstrap", "200"])
    assert json.loads((run / f"eval-{run.name}-val" / "metrics.json").read_text())["n"] == 20


def test_training_is_deterministic(env):
    for name in ("det1", "det2"):
        _cli(
            [
                "train",
                "--data",
                str(env["manifest"]),
                "--arch",
                "simple_cnn",
                "--epochs",
                "1",
                "--name",
                name,
                *COMMON,
            ]
        )
    h1 = (env["runs"] / "train" / "det1" / "history.csv").read_text().splitlines()
    h2 = (env["runs"] / "train" / "det2" / "history.csv").read_text().splitlines()
    drop = lambda lines: [",".join(c for c in ln.split(",")[:-1]) for ln in lines]  # noqa: E731 - seconds differ
    assert drop(h1) == drop(h2)
    w1 = _load(env["runs"] / "train" / "det1").get_weights()
    w2 = _load(env["runs"] / "train" / "det2").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2, strict=True))


def test_train_on_dataset_folder_writes_split_manifest(env):
    _cli(
        [
            "train",
            "--data",
            str(env["folder"]),
            "--arch",
            "simple_cnn",
            "--epochs",
            "1",
            "--balance",
            "source",
            "--name",
            "fromdir",
            *COMMON,
        ]
    )
    run = env["runs"] / "train" / "fromdir"
    meta = json.loads((run / "manifest.json").read_text())
    assert meta["mode"] == "resplit" and sum(sum(c.values()) for c in meta["counts"].values()) == 24
    card = _card(run)
    assert (
        card["data"]["manifest_sha256"]
        == hashlib.sha256((run / "manifest.csv").read_bytes()).hexdigest()
    )
    # one source: balancing per source is the global balance, recorded per source in the card
    t = card["training"]
    assert t["config"]["balance"] == "source"
    [(src, w)] = t["class_weights_per_source"].items()
    assert w == pytest.approx(t["class_weights"]), src


def test_train_efficientnet_lite0_two_phases(env):
    try:
        from dermedge.train import efficientnet_lite

        efficientnet_lite.weights_path()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"EfficientNet-Lite0 ImageNet weights unavailable: {e}")
    from dermedge.train.models import build_model

    ref = build_model("efficientnet_lite0", 64, "imagenet")
    _cli(
        [
            "train",
            "--data",
            str(env["manifest"]),
            "--arch",
            "efficientnet_lite0",
            "--epochs",
            "1",
            "--fine-tune-epochs",
            "1",
            "--unfreeze-blocks",
            "2",
            "--name",
            "lite0",
            *COMMON,
        ]
    )
    run = env["runs"] / "train" / "lite0"
    card = _check_run(run, "efficientnet_lite0", 127.0, 128.0, 2, env["manifest"])
    hist = _history(run)
    assert [r["phase"] for r in hist] == ["frozen", "finetune"]
    info = card["training"]["phase_info"]
    assert info["frozen"]["trainable_params"] == 1281  # the sigmoid head only
    assert info["finetune"]["trainable_params"] > info["frozen"]["trainable_params"]
    model = _load(run)
    _check_model(model)

    def same(name: str) -> bool:
        a, b = ref.get_layer(name).get_weights(), model.get_layer(name).get_weights()
        return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

    # BatchNorm frozen everywhere (moving statistics untouched), lower blocks untouched,
    # the top 2 blocks (14, 15) and the head conv fine-tuned
    assert same("stem_conv") and same("block3_project_conv") and same("block13_project_conv")
    assert same("block15_project_bn") and same("head_bn") and same("block14_bn")
    assert (
        not same("block15_project_conv")
        and not same("block14_expand_conv")
        and not same("head_conv")
    )

    # continuing from the trained model: --epochs 0 skips the frozen phase, fine-tunes only
    _cli(
        [
            "train",
            "--data",
            str(env["manifest"]),
            "--arch",
            "efficientnet_lite0",
            "--weights",
            str(run / "model.keras"),
            "--epochs",
            "0",
            "--fine-tune-epochs",
            "1",
            "--unfreeze-blocks",
            "1",
            "--name",
            "lite0-more",
            *COMMON,
        ]
    )
    more = env["runs"] / "train" / "lite0-more"
    assert [r["phase"] for r in _history(more)] == ["finetune"]
    cont = _load(more)
    for name in (
        "stem_conv",
        "block14_expand_conv",
        "block15_project_bn",
    ):  # below the unfrozen block, or BN
        assert all(
            np.array_equal(a, b)
            for a, b in zip(
                model.get_layer(name).get_weights(), cont.get_layer(name).get_weights(), strict=True
            )
        )
    assert not np.array_equal(
        model.get_layer("block15_project_conv").get_weights()[0],
        cont.get_layer("block15_project_conv").get_weights()[0],
    )


def test_train_mobilenet_v2_from_scratch(env):
    _cli(
        [
            "train",
            "--data",
            str(env["manifest"]),
            "--arch",
            "mobilenet_v2",
            "--weights",
            "none",
            "--epochs",
            "1",
            "--name",
            "mnv2",
            *COMMON,
        ]
    )
    run = env["runs"] / "train" / "mnv2"
    card = _check_run(run, "mobilenet_v2", 127.5, 127.5, 1, env["manifest"])
    assert [p["name"] for p in card["training"]["phases"]] == ["train"]
    model = _load(run)
    _check_model(model)
    assert model.get_layer("normalize").scale == pytest.approx(1 / 127.5)


def _run_cli(args: list[str], env_vars: dict[str, str], **kw) -> subprocess.Popen:
    code = "import sys; from dermedge.cli import main; main(sys.argv[1:])"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env_vars,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_resume_after_kill_mid_epoch(env):
    e = {**os.environ, "DERMEDGE_RUNS": str(env["runs"]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = [
        "train",
        "--data",
        str(env["manifest"]),
        "--arch",
        "simple_cnn",
        "--epochs",
        "4",
        "--name",
        "resume",
        "--img-size",
        "64",
        "--batch",
        "4",
        "--bootstrap",
        "200",
    ]
    proc = _run_cli(args, e)
    seen = []
    deadline = time.time() + 150
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "phase train: epoch 3/4" in line:  # epochs 1-2 checkpointed, epoch 3 running
                proc.send_signal(signal.SIGKILL)  # at once: a tiny epoch can end within 0.5 s
                break
            assert time.time() < deadline, "".join(seen[-20:])
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    run = env["runs"] / "train" / "resume"
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    done_before = state["epochs_done"]  # 2, or 3 where epoch 3 ended before the signal landed
    assert done_before in (2, 3) and not state.get("finished")
    assert (run / "checkpoints" / state["last_checkpoint"]).is_file()
    assert not (run / "model.keras").exists()
    # resuming takes everything else from the run's config.json
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from dermedge.cli import main; main(sys.argv[1:])",
            "train",
            "--data",
            "ignored",
            "--name",
            "resume",
            "--resume",
            "--quiet",
        ],
        env=e,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming" in done.stdout and f"after {done_before} epochs" in done.stdout
    hist = _history(run)
    assert [int(r["epoch"]) for r in hist] == [1, 2, 3, 4]
    card = _card(run)
    assert card["training"]["resumes"] == 1 and card["training"]["epochs_run"] == 4
    assert (run / "model.keras").is_file() and (run / "eval" / "metrics.json").is_file()
    assert not list((run / "checkpoints").glob("epoch-*.keras"))
    # a finished run cannot be resumed again
    again = _cli(["train", "--data", "x", "--name", "resume", "--resume"], ok=False)
    assert again.exit_code != 0 and "already finished" in again.output


def test_mirrored_strategy_on_two_logical_cpus(env):
    code = (
        "import sys, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "from dermedge.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    e = {**os.environ, "DERMEDGE_RUNS": str(env["runs"]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = [
        "train",
        "--data",
        str(env["manifest"]),
        "--arch",
        "simple_cnn",
        "--epochs",
        "1",
        "--name",
        "mirrored",
        "--strategy",
        "mirrored",
        *COMMON,
    ]
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=e,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 replica(s)" in done.stdout
    card = _card(env["runs"] / "train" / "mirrored")
    assert card["training"]["replicas"] == 2 and card["training"]["strategy"] == "mirrored"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "/no/such/place"], "no such file or folder"),
        (["train", "--data", "{manifest}", "--weights", "/no/weights.h5"], "no such file"),
        (["train", "--data", "{manifest}", "--resume", "--name", "never-ran"], "nothing to resume"),
        (["train", "--data", "{manifest}", "--resume"], "--resume needs --name"),
        (["train", "--data", "{manifest}", "--name", "simple"], "already exists"),
        (["train", "--data", "{manifest}", "--img-size", "8"], "8"),
        (
            ["train", "--data", "{manifest}", "--epochs", "0", "--fine-tune-epochs", "0"],
            "nothing to train",
        ),
        (
            ["train", "--data", "{manifest}", "--arch", "simple_cnn", "--epochs", "0"],
            "nothing to train",
        ),
        (["evaluate", "/no/such/run"], "no such run folder"),
        (["evaluate", "{manifest}"], "has no model.keras"),
        (["evaluate", "{manifest}/manifest.csv"], "expected a run folder"),
        (["evaluate", "{runs}/train/simple", "--split", "nope"], "no images in split"),
        (["evaluate", "{runs}/train/simple", "--data", "/no/such/data"], "no such file"),
    ],
)
def test_bad_input_gives_one_line_errors(env, args, message):
    needs_simple = any("{runs}/train/simple" in a for a in args) or "simple" in args
    if needs_simple and not (env["runs"] / "train" / "simple" / "model.keras").is_file():
        pytest.skip("needs the simple_cnn run from test_train_simple_cnn_and_evaluate")
    args = [a.format(manifest=env["manifest"], runs=env["runs"]) for a in args]
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert message in res.output and "Traceback" not in res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1, res.output


def test_bad_data_error_in_a_real_process(env, tmp_path):
    empty = tmp_path / "empty"
    (empty / "benign").mkdir(parents=True)
    e = {**os.environ, "DERMEDGE_RUNS": str(tmp_path / "runs")}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from dermedge.cli import main; main()",
            "train",
            "--data",
            str(empty),
        ],
        env=e,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith(
        "Error:"
    )

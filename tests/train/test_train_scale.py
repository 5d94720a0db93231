"""Scale-out training on real photos: the streamed input equals the in-memory one, each worker
of a multi-worker run reads its own part of every epoch, two worker processes on 127.0.0.1
train as one (TF_CONFIG, MultiWorkerMirroredStrategy), and --mixed-precision builds and runs on
CPU. Data: `${DERMEDGE_DATA:-../shared/data}/isic-mvb`; these tests skip without it."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from dermedge_testing import isic_photos, write_isic_manifest  # noqa: E402

from dermedge.data.contract import InputContract  # noqa: E402
from dermedge.data.index import Record  # noqa: E402
from dermedge.train.data import Augment, load_split, make_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("DERMEDGE_DATA") or REPO.parent / "shared" / "data") / "isic-mvb"
C64 = InputContract(size=64)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DATA / "train" / "benign").is_dir(),
        reason=f"real images not found at {DATA} (set DERMEDGE_DATA)",
    ),
]


def _records(n_per_class: int) -> list[Record]:
    return [
        Record(str(p), label, "isic-mvb", split="train")
        for label in ("benign", "malignant")
        for p in isic_photos(DATA, "train", label, n_per_class)
    ]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """The same 101 photos in memory and streamed from shards (several small shards)."""
    import dermedge.data.shards as shards

    recs = _records(51)[:101]
    cache = tmp_path_factory.mktemp("cache")
    old, shards.SHARD_BYTES = shards.SHARD_BYTES, 64 * 64 * 3 * 16
    try:
        streamed = load_split(recs, "train", C64, cache, progress=False, stream=True)
    finally:
        shards.SHARD_BYTES = old
    memory = load_split(recs, "train", C64, None, progress=False)
    assert len(streamed.x.shards) == 7
    return memory, streamed


def _examples(ds) -> list[tuple[str, float]]:
    """(pixel digest, label) of every example of a dataset, in order."""
    out = []
    for x, y in ds.unbatch().as_numpy_iterator():
        out.append((hashlib.sha256(np.asarray(x, np.uint8).tobytes()).hexdigest(), float(y[0])))
    return out


def test_streamed_pixels_equal_in_memory(splits):
    memory, streamed = splits
    assert np.array_equal(np.asarray(streamed.x), memory.x) and np.array_equal(streamed.y, memory.y)
    ordered = [_examples(make_dataset(s, 16, False)) for s in (memory, streamed)]
    assert ordered[0] == ordered[1]  # validation order: the split's own, either way
    none = Augment.none()
    epoch = [_examples(make_dataset(s, 16, True, seed=3, augment=none)) for s in (memory, streamed)]
    assert sorted(epoch[1]) == sorted(ordered[0])  # each example once an epoch, with its label
    assert epoch[1] != ordered[0]  # shuffled across shards


@pytest.mark.parametrize("which", [0, 1], ids=["in-memory", "streamed"])
def test_each_worker_reads_its_own_part(splits, which):
    data = splits[which]
    parts = [
        _examples(make_dataset(data, 8, True, seed=5, augment=Augment.none(), pipelines=(2, i)))
        for i in (0, 1)
    ]
    assert len(parts[0]) == len(parts[1]) == 50  # equal steps: 101 cut to 100
    assert not set(parts[0]) & set(parts[1])  # no example on both workers
    assert set(parts[0]) | set(parts[1]) <= set(_examples(make_dataset(data, 8, False)))


def _manifest(folder: Path) -> Path:
    """100 train / 30 val / 30 test real photos, balanced."""
    plan = [("train", 50, "train", 0), ("val", 15, "train", 50), ("test", 15, "test", 0)]
    return write_isic_manifest(folder, DATA, plan, "isic-mvb")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _train(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dermedge", "train", *args]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


SMALL = shlex.split("--arch simple_cnn --img-size 64 --batch 32 --bootstrap 100 --cache stream")
TRAIN = [*SMALL, *shlex.split("--epochs 3 --augment none --strategy multiworker")]


def test_two_workers_train_as_one(tmp_path):
    """Two worker processes (TF_CONFIG on 127.0.0.1) against one, on the same data and seed.

    Both runs take the same examples in each global step (the seeded shuffle, then every other
    example to each worker), but BatchNormalization sees 16 images a replica instead of 32 and
    dropout draws differ, so their results agree within a tolerance, not bit for bit."""
    data = _manifest(tmp_path / "manifest")
    env = {
        **os.environ,
        "DERMEDGE_RUNS": str(tmp_path / "runs"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "DERMEDGE_CACHE": str(tmp_path / "cache"),
    }
    args = [*TRAIN, "--data", str(data), "--cache-dir", str(tmp_path / "cache")]
    one = _train([*args, "--name", "one"], env, tmp_path / "one.log")
    assert one.wait(timeout=600) == 0, (tmp_path / "one.log").read_text()[-3000:]
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    workers = []
    for i in (0, 1):
        wenv = {
            **env,
            "TMPDIR": str(scratch),
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
        }
        workers.append(_train([*args, "--name", "two"], wenv, tmp_path / f"worker{i}.log"))
    codes = [w.wait(timeout=600) for w in workers]
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in (0, 1)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    for log in logs:  # both workers trained every epoch
        assert "epoch 3/3" in log and "2 replica(s)" in log
    digests = [
        line.split("digest ")[1].split()[0]
        for log in logs
        for line in log.splitlines()
        if "trainable weights digest" in line
    ]
    assert len(digests) == 2 and digests[0] == digests[1]  # kept in sync by all-reduce
    runs = tmp_path / "runs" / "train"
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"]  # the chief's, and no other
    assert not list(scratch.glob("dermedge-worker-*"))  # worker 1's scratch run was removed
    cards = {n: json.loads((runs / n / "model_card.json").read_text()) for n in ("one", "two")}
    assert cards["one"]["training"]["replicas"] == 1 and cards["two"]["training"]["replicas"] == 2
    hist = {
        n: list(csv.DictReader((runs / n / "history.csv").read_text().splitlines()))
        for n in ("one", "two")
    }
    for n in ("one", "two"):
        loss = [float(r["loss"]) for r in hist[n]]
        assert len(loss) == 3 and loss[-1] < loss[0]  # both learned
    val_auc = {n: cards[n]["training"]["best_val_auc"] for n in ("one", "two")}
    assert abs(val_auc["one"] - val_auc["two"]) < 0.2, val_auc
    assert cards["two"]["data"]["counts"] == cards["one"]["data"]["counts"]


def test_streamed_mixed_precision_run(tmp_path):
    """--cache stream --mixed-precision: trains on CPU (bfloat16 compute), saves a float32 model."""
    data = _manifest(tmp_path / "manifest")
    env = {**os.environ, "DERMEDGE_RUNS": str(tmp_path / "runs"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    args = [*SMALL, "--epochs", "1", "--mixed-precision", "--data", str(data)]
    args += ["--cache-dir", str(tmp_path / "cache"), "--name", "mp"]
    proc = _train(args, env, tmp_path / "mp.log")
    log = tmp_path / "mp.log"
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert "pixels streamed from shards" in log.read_text()
    run = tmp_path / "runs" / "train" / "mp"
    card = json.loads((run / "model_card.json").read_text())
    assert card["training"]["precision"] == "mixed_bfloat16"
    assert card["training"]["config"]["cache"] == "stream"
    assert list((tmp_path / "cache").glob("shards-*/index.json"))
    import keras

    model = keras.models.load_model(run / "model.keras")
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    x = np.asarray(load_split(_records(4), "train", C64, None, progress=False).x, np.float32)
    p = np.asarray(model(x, training=False))
    assert p.shape == (8, 1) and np.isfinite(p).all()

"""The streaming image cache (`dermedge.data.shards`) on real photos: the pixels are the
contract's, unreadable files are named and skipped, and a decode killed mid-way leaves only
complete shards, which the next run keeps while it decodes the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dermedge.data import shards
from dermedge.data.contract import InputContract, preprocess
from dermedge.data.shards import build_shards, read_shard, shard_dir

C64 = InputContract(size=64)
PER_SHARD_BYTES = 64 * 64 * 3 * 40  # 40 images a shard: several shards from a few photos


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(shards, "SHARD_BYTES", PER_SHARD_BYTES)


def _photos(isic_dir: Path, n: int) -> list[str]:
    return sorted(str(p) for p in (isic_dir / "train").glob("*/*.jpg"))[:n]


def test_pixels_are_the_contracts_and_bad_files_are_reported(isic_dir, tmp_path, small_shards):
    paths = _photos(isic_dir, 100)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths.insert(57, str(bad))
    x, kept, skipped = build_shards(paths, C64, tmp_path / "cache", workers=2, progress=False)
    assert len(x) == x.shape[0] == 100 and 57 not in kept and list(skipped) == [str(bad)]
    assert skipped[str(bad)]  # a reason, in words
    assert len(x.shards) == 3  # 101 inputs at 40 a shard
    want = np.stack([preprocess(paths[i], C64) for i in kept])
    assert np.array_equal(np.asarray(x), want)
    assert np.array_equal(x[35:85], want[35:85])  # a slice across a shard boundary
    assert np.array_equal(x[-1], want[-1])
    index = json.loads((shard_dir(paths, C64, tmp_path / "cache") / "index.json").read_text())
    assert index["images"] == 100 and index["unreadable"] == 1 and len(index["shards"]) == 3


def test_a_short_shard_is_not_valid(isic_dir, tmp_path, small_shards):
    paths = _photos(isic_dir, 45)
    x, _, _ = build_shards(paths, C64, tmp_path, workers=1, progress=False)
    first = x.shards[0].path
    assert read_shard(first, 64) is not None
    with open(first, "r+b") as fh:
        fh.truncate(first.stat().st_size - 1)
    assert read_shard(first, 64) is None
    mtime_second = x.shards[1].path.stat().st_mtime_ns
    again, _, _ = build_shards(paths, C64, tmp_path, workers=1, progress=False)  # redoes shard 0
    assert np.array_equal(np.asarray(again), np.stack([preprocess(p, C64) for p in paths]))
    assert again.shards[1].path.stat().st_mtime_ns == mtime_second  # the good one was kept


KILLED_DECODE = """
import sys
from dermedge.data import shards
from dermedge.data.contract import InputContract
if __name__ == "__main__":
    shards.SHARD_BYTES = int(sys.argv[2])
    paths = open(sys.argv[1]).read().split()
    shards.build_shards(paths, InputContract(size=64), sys.argv[3], workers=2, progress=False)
"""


def test_a_killed_decode_resumes(isic_dir, tmp_path, small_shards):
    # the same real photos repeated to make a decode long enough to kill in the middle
    paths = _photos(isic_dir, 400) * 8
    (tmp_path / "paths.txt").write_text("\n".join(paths))
    (tmp_path / "decode.py").write_text(KILLED_DECODE)
    cache = tmp_path / "cache"
    folder = shard_dir(paths, C64, cache)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "decode.py"),
            str(tmp_path / "paths.txt"),
            str(PER_SHARD_BYTES),
            str(cache),
        ],
        start_new_session=True,
    )
    deadline = time.time() + 120
    while not (folder / "shard-00003.json").exists() and time.time() < deadline:
        assert proc.poll() is None, "the decode ended before it could be killed"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the decode and its worker processes, at once
    proc.wait()
    assert not (folder / "index.json").exists(), "the decode finished before the kill"
    done = [read_shard(p, 64) for p in sorted(folder.glob("shard-*.npy"))]
    valid = [s for s in done if s is not None]
    assert len(valid) >= 4
    for s in valid:  # every shard that reads as valid is whole and holds the right pixels
        assert s.n == 40 and np.load(s.path).shape == (40, 64, 64, 3)
        assert np.array_equal(np.load(s.path)[-1], preprocess(paths[s.kept[-1]], C64))
    kept_mtimes = {s.path: s.path.stat().st_mtime_ns for s in valid}
    x, kept, bad = build_shards(paths, C64, cache, workers=2, progress=False)
    assert len(x) == len(paths) and kept == list(range(len(paths))) and not bad
    assert all(p.stat().st_mtime_ns == t for p, t in kept_mtimes.items())  # not decoded again
    assert np.array_equal(x[len(paths) - 3 :], np.stack([preprocess(p, C64) for p in paths[-3:]]))
    assert (folder / "index.json").exists()

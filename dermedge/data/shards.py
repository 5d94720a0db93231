"""Decoded contract pixels on disk as `.npy` shards, for training sets that do not fit in memory.

A cache folder `shards-<key>/` (the key as for the in-memory cache: contract + every path and
size) holds `shard-00000.npy` (uint8 (n, S, S, 3), at most ~64 MB) with `shard-00000.json` beside
it (which inputs it holds, which were unreadable and why), and `index.json`, written last, when
every shard is done. Each file is written atomically (a temporary file renamed into place), the
JSON after its `.npy`, and a shard counts only when its JSON is there and the `.npy` header and file
size agree with it: a killed decode leaves no shard that reads as valid but short, and the next
run decodes only the shards that are missing.

Why `.npy` and not TFRecord: the same files serve NumPy (random access by offset for validation,
test and prediction; `np.load(mmap_mode="r")` for inspection) and tf.data, which streams them with
its C++ reader `tf.data.FixedLengthRecordDataset(file, S*S*3, header_bytes=...)` (no Python in
the input pipeline); and a fixed record length makes a short file detectable from its size.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dermedge.data.contract import InputContract
from dermedge.data.images import cache_key, decode_stream
from dermedge.data.io import atomic_open, atomic_write_text

SHARD_BYTES = 64 * 2**20  # target size of one shard file
FORMAT = 1


def shard_dir(paths: Sequence[str], contract: InputContract, cache_dir: str | Path) -> Path:
    """The cache folder for these paths under this contract."""
    return Path(cache_dir) / f"shards-{cache_key(paths, contract)}"


def images_per_shard(size: int) -> int:
    """How many S x S x 3 images fill one shard of about SHARD_BYTES."""
    return max(1, SHARD_BYTES // (size * size * 3))


@dataclass(frozen=True)
class Shard:
    """One shard file: where it is, where its records start, how many, which inputs they are."""

    path: Path
    header_bytes: int
    n: int
    kept: tuple[int, ...]  # indices into the input paths, one per record
    bad: tuple[tuple[str, str], ...]  # (path, reason) of the unreadable inputs of its range


def _header_bytes(path: Path) -> tuple[int, tuple[int, ...]]:
    """(header length, shape) of an `.npy` file, read from its header alone."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(fh)
        if dtype != np.uint8:
            raise ValueError(f"{path}: dtype {dtype}, expected uint8")
        return fh.tell(), tuple(shape)


def read_shard(npy: Path, size: int, span: tuple[int, int] | None = None) -> Shard | None:
    """The shard at `npy` when complete and consistent with its JSON (and made for inputs
    [span), when given: the shard size may have changed), else None (to redo)."""
    meta_path = npy.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        header, shape = _header_bytes(npy)
        n, kept = int(meta["n"]), tuple(int(i) for i in meta["kept"])
        bad = tuple((str(p), str(r)) for p, r in meta.get("bad", []))
        whole = npy.stat().st_size == header + n * size * size * 3
    except (OSError, ValueError, KeyError, TypeError):  # missing, half-written or hand-edited
        return None
    if shape != (n, size, size, 3) or not whole or len(kept) != n:
        return None
    if span is not None and tuple(meta.get("span", ())) != tuple(span):
        return None
    return Shard(npy, header, n, kept, bad)


def _write_shard(
    npy: Path,
    span: tuple[int, int],
    pixels: np.ndarray,
    kept: list[int],
    bad: list[tuple[str, str]],
) -> Shard:
    """Write one shard: the `.npy` atomically, then its JSON (which makes it count)."""
    with atomic_open(npy, "wb") as fh:
        np.save(fh, pixels, allow_pickle=False)
    meta = {"n": len(kept), "span": list(span), "kept": kept, "bad": bad}
    atomic_write_text(npy.with_suffix(".json"), json.dumps(meta))
    header, _ = _header_bytes(npy)
    return Shard(npy, header, len(kept), tuple(kept), tuple(bad))


class ShardArray:
    """The shards read as one lazy (N, S, S, 3) uint8 array: `len`, `shape`, and slices read from
    disk on demand (`x[i:j]`, `np.asarray(x)` for all of it), so nothing is held in memory."""

    dtype = np.dtype(np.uint8)

    def __init__(self, shards: Sequence[Shard], size: int) -> None:
        self.shards = list(shards)
        self.size = size
        self.starts = np.cumsum([0] + [s.n for s in self.shards])
        self.shape = (int(self.starts[-1]), size, size, 3)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def record_bytes(self) -> int:
        """Bytes of one image."""
        return self.size * self.size * 3

    def __getitem__(self, key: Any) -> np.ndarray:
        """One image for an index, an array for a slice, read from disk; TypeError otherwise."""
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            return self[i : i + 1][0]
        if not isinstance(key, slice):
            raise TypeError("a ShardArray takes an index or a slice")
        start, stop, step = key.indices(len(self))
        out = self._read(start, max(start, stop))
        return out if step == 1 else out[::step]

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Records [start, stop) from the shard files that hold them."""
        out = np.empty((stop - start, self.size, self.size, 3), dtype=np.uint8)
        for k in range(
            max(0, int(np.searchsorted(self.starts, start, "right")) - 1), len(self.shards)
        ):
            lo, hi = int(self.starts[k]), int(self.starts[k + 1])
            if lo >= stop:
                break
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                offset = self.shards[k].header_bytes + (a - lo) * self.record_bytes
                flat = np.fromfile(
                    self.shards[k].path, np.uint8, (b - a) * self.record_bytes, offset=offset
                )
                out[a - start : b - start] = flat.reshape(b - a, self.size, self.size, 3)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All the images read into memory (cast to `dtype` when given), for `np.asarray(x)`."""
        arr = self._read(0, len(self))
        return arr if dtype is None else arr.astype(dtype)

    def disk_bytes(self) -> int:
        """Bytes the shard files take on disk."""
        return sum(s.path.stat().st_size for s in self.shards)


def build_shards(
    paths: Sequence[str],
    contract: InputContract,
    cache_dir: str | Path,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "decoding images",
) -> tuple[ShardArray, list[int], dict[str, str]]:
    """Decode `paths` into shards (only those not already complete) and return (the lazy array,
    indices of `paths` that loaded, unreadable path -> reason), like `load_images`."""
    folder = shard_dir(paths, contract, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    per = images_per_shard(contract.size)
    ranges = [(lo, min(lo + per, len(paths))) for lo in range(0, len(paths), per)]
    shards: list[Shard | None] = [
        read_shard(_npy(folder, k), contract.size, span) for k, span in enumerate(ranges)
    ]
    todo = [k for k, s in enumerate(shards) if s is None]
    done = sum(hi - lo for k, (lo, hi) in enumerate(ranges) if shards[k] is not None)
    pending = [i for k in todo for i in range(*ranges[k])]
    decoded = decode_stream([paths[i] for i in pending], contract, workers, progress, desc, done)
    try:
        for k in todo:
            shards[k] = _decode_shard(folder, k, ranges[k], paths, contract.size, decoded)
    finally:
        decoded.close()  # stops the worker processes
    complete = [s for s in shards if s is not None]
    if todo or not (folder / "index.json").is_file():
        _write_index(folder, contract, len(paths), complete)
    kept = [i for s in complete for i in s.kept]
    bad = {p: r for s in complete for p, r in s.bad}
    return ShardArray(complete, contract.size), kept, bad


def _npy(folder: Path, k: int) -> Path:
    """The .npy file of shard `k` in `folder`."""
    return folder / f"shard-{k:05d}.npy"


def _decode_shard(
    folder: Path, k: int, span: tuple[int, int], paths: Sequence[str], size: int, decoded: Any
) -> Shard:
    """Take the next `span` results off the decode stream and write them as shard `k`."""
    lo, hi = span
    pixels = np.empty((hi - lo, size, size, 3), dtype=np.uint8)
    kept: list[int] = []
    bad: list[tuple[str, str]] = []
    for i in range(lo, hi):
        img, reason = next(decoded)
        if img is None:
            bad.append((paths[i], str(reason)))
        else:
            pixels[len(kept)] = img
            kept.append(i)
    return _write_shard(_npy(folder, k), span, pixels[: len(kept)], kept, bad)


def _write_index(folder: Path, contract: InputContract, n_inputs: int, shards: list[Shard]) -> None:
    """`index.json`: the cache is complete (what a reader or a person looks at first)."""
    index = {
        "format": FORMAT,
        "contract": contract.to_dict(),
        "inputs": n_inputs,
        "images": sum(s.n for s in shards),
        "unreadable": sum(len(s.bad) for s in shards),
        "shards": [{"file": s.path.name, "n": s.n, "header_bytes": s.header_bytes} for s in shards],
    }
    atomic_write_text(folder / "index.json", json.dumps(index, indent=1))

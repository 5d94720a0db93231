"""Decode and resize many images through the contract into one uint8 array, cached on disk.

Training, calibration and evaluation feed models from here, so they see exactly the pixels the
edge runner computes for the same file. Decoding runs in worker processes (all cores) when there
are enough images to pay for starting them; results come back in input order either way.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
from collections.abc import Generator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dermedge.data.contract import ImageError, InputContract, preprocess
from dermedge.data.io import atomic_open

PARALLEL_MIN = 128  # fewer images decode faster in-process than a pool takes to start
CHUNK = 16  # images per task sent to a worker process

_worker_contract: InputContract | None = None


def cache_key(paths: Sequence[str], contract: InputContract) -> str:
    """A digest of the contract and every (path, size): a changed file or contract is a new key."""
    key = json.dumps([contract.to_dict(), [(p, os.path.getsize(p)) for p in paths]])
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def _cache_path(paths: Sequence[str], contract: InputContract, cache_dir: Path) -> Path:
    """The .npz cache file of these paths under this contract."""
    return cache_dir / f"images-{cache_key(paths, contract)}.npz"


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _init_worker(contract: InputContract) -> None:
    """Give a decode worker process its contract (the pool's initializer)."""
    global _worker_contract
    _worker_contract = contract


def _decode_one(
    path: str, contract: InputContract | None = None
) -> tuple[np.ndarray | None, str | None]:
    """(pixels, None) or (None, the one-line reason the file is not a usable image); in a worker
    process the contract is the one the pool's initializer gave it."""
    try:
        return preprocess(path, contract or _worker_contract), None
    except ImageError as e:
        return None, str(e)


def decode_stream(
    paths: Sequence[str],
    contract: InputContract,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "decoding images",
    done: int = 0,
) -> Generator[tuple[np.ndarray | None, str | None], None, None]:
    """(pixels or None, reason or None) for each path, in order; `workers` processes (default:
    all cores; in-process for few images). `done` starts the progress bar (a resumed decode)."""
    workers = default_workers() if workers is None else max(1, int(workers))
    bar = tqdm(
        total=done + len(paths),
        initial=done,
        desc=desc,
        unit="img",
        disable=not progress,
        leave=False,
    )
    with bar:
        if workers == 1 or len(paths) < PARALLEL_MIN:
            for p in paths:
                yield _decode_one(p, contract)
                bar.update()
            return
        yield from _decode_parallel(paths, contract, workers, bar)


def _decode_parallel(
    paths: Sequence[str], contract: InputContract, workers: int, bar: tqdm
) -> Generator[tuple[np.ndarray | None, str | None], None, None]:
    """Decode in `workers` spawned processes (never forked: the caller may hold TensorFlow); if the
    pool breaks (a worker killed, a script that cannot be re-imported), the rest decode here."""
    n = 0
    spawn = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(
            workers, mp_context=spawn, initializer=_init_worker, initargs=(contract,)
        ) as pool:
            for result in pool.map(_decode_one, paths, chunksize=CHUNK):
                yield result
                n += 1
                bar.update()
    except BrokenProcessPool as e:
        print(
            f"[dermedge] decode worker processes failed ({e}); decoding in this process",
            file=sys.stderr,
            flush=True,
        )
        for p in paths[n:]:
            yield _decode_one(p, contract)
            bar.update()


def load_images(
    paths: Sequence[str],
    contract: InputContract | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    desc: str = "loading images",
    workers: int | None = None,
) -> tuple[np.ndarray, list[int], dict[str, str]]:
    """Preprocess `paths` into an (N, size, size, 3) uint8 array.

    Returns (images, indices of `paths` that loaded, unreadable path -> reason): a bad file is
    reported and skipped, never fatal.
    """
    contract = contract or InputContract()
    cache = None
    if cache_dir is not None:
        try:
            cache = _cache_path(paths, contract, Path(cache_dir))
            if cache.is_file():
                with np.load(cache, allow_pickle=False) as z:
                    return z["images"], z["kept"].tolist(), dict(json.loads(str(z["bad"])))
        except (OSError, ValueError, KeyError):
            cache = None
    size = contract.size
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    kept: list[int] = []
    bad: dict[str, str] = {}
    decoded = decode_stream(paths, contract, workers, progress, desc)
    for i, (pixels, reason) in enumerate(decoded):
        if pixels is None:
            bad[paths[i]] = str(reason)
        else:
            images[len(kept)] = pixels
            kept.append(i)
    images = images[: len(kept)]
    if cache is not None:
        try:
            with atomic_open(cache, "wb") as fh:
                np.savez(
                    fh,
                    images=images,
                    kept=np.asarray(kept, dtype=np.int64),
                    bad=np.asarray(json.dumps(sorted(bad.items()))),
                )
        except OSError:
            pass
    return images, kept, bad

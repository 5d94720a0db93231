"""Atomic file writes for the edge runner: a reader (or a power cut) never sees a half-written
file. One implementation, `dermedge.data.io.atomic_open` (fsync, rename, the umask's mode)."""

from __future__ import annotations

import os
from pathlib import Path

from dermedge.data.io import atomic_write_bytes


def atomic_write(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    atomic_write_bytes(path, data)
    return Path(path)


def check_writable(directory: str | os.PathLike[str]) -> Path:
    """Create `directory` if needed and prove a file can be written there; OSError if not."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / ".write-test", b"ok").unlink()
    return directory

"""What a camera session leaves: decisions saved to a folder (frame, crop, record, session log in
JSONL and CSV), written so a kill never leaves half a decision, and the session's summary."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import re
import shutil
import weakref
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dermedge.edge.files import atomic_write, check_writable
from dermedge.edge.runtime import EdgeError
from dermedge.edge.safe_text import csv_row

LOG_FIELDS = [
    "time",
    "frame",
    "t_s",
    "prob",
    "label",
    "decision",
    "votes",
    "threshold",
    "trigger",
    "frame_file",
    "crop_file",
    "disclaimer",
]


STAGING = ".staging-"  # a decision folder being written
LOCK = ".session-{}.lock"  # held (flock) by a live session for as long as it runs; holds its pid
_LOCK_NAME = re.compile(r"^\.session-(.+)\.lock$")
_STAGING_NAME = re.compile(r"^\.staging-(.+)-\d{4,}-frame\d+$")  # the session's id, then count


def _hold_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path` (created if need be, our pid written in it),
    or None when another live process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:  # a file system without locks: the file still names the session
        pass
    return fd


def _is_live(lock: Path) -> bool:
    """Whether a live session holds `lock` (a killed one's lock is released by the kernel);
    True when that cannot be told (another user's lock, no locks here): its files are left."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by a live session
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return os.fstat(fd).st_ino == st.st_ino and os.fstat(fd).st_dev == st.st_dev


def _release(fd: int, lock: Path) -> None:
    """Remove a session's lock file, then let go of the lock (at its end, or the process's);
    a folder removed or replaced meanwhile leaves nothing to remove."""
    with contextlib.suppress(OSError):
        lock.unlink(missing_ok=True)
    os.close(fd)


def _pid_of(lock: Path) -> str:
    """The pid written in a session's lock file, or '?' when unreadable."""
    try:
        return lock.read_text().strip() or "?"
    except OSError:
        return "?"


class Saver:
    """Saves frame, crop and JSON record per decision, plus a session log (JSONL and CSV)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        """Save into `directory` (EdgeError if unwritable); clean what a killed run left there."""
        try:
            self.dir = check_writable(directory)
        except OSError as e:
            raise EdgeError(f"cannot write to --save folder {directory}: {e.strerror or e}") from e
        self.session = self._claim(datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3])  # to the ms
        self.jsonl = self.dir / f"session-{self.session}.jsonl"
        self.csv = self.dir / f"session-{self.session}.csv"
        self.count = 0
        self.others = self._live_sessions()  # "<id> (pid N)" of other sessions saving here
        self.cleaned = self._clean_stale()

    def _claim(self, session: str) -> str:
        """Take this session's lock (a name no live session holds), held until the process
        ends or the Saver is collected, so that no other session cleans its files as stale."""
        for name in (session, f"{session}-{os.getpid()}", f"{session}-{os.getpid()}-2"):
            lock = self.dir / LOCK.format(name)
            if lock.exists():
                continue
            fd = _hold_lock(lock)
            if fd is None:
                continue
            if not _same_file(fd, lock):  # removed as dead by a session starting beside us
                os.close(fd)
                continue
            os.write(fd, f"{os.getpid()}\n".encode())
            weakref.finalize(self, _release, fd, lock)
            return name
        raise EdgeError(f"cannot take a session lock in --save folder {self.dir}")

    def _live_sessions(self) -> dict[str, str]:
        """Other sessions running in this folder (lock held): id -> pid; dead ones' locks go."""
        live = {}
        for p in self.dir.iterdir():
            m = _LOCK_NAME.match(p.name)
            if not m or m.group(1) == self.session:
                continue
            if _is_live(p):
                live[m.group(1)] = _pid_of(p)
            else:
                p.unlink(missing_ok=True)
        return live

    def _image(self, folder: Path, name: str, bgr: np.ndarray) -> None:
        """Encode a BGR image by the name's extension and write it atomically."""
        ok, data = cv2.imencode(Path(name).suffix, bgr)
        if not ok:
            raise OSError(f"could not encode {name}")
        atomic_write(folder / name, data.tobytes())

    def _is_stale(self, p: Path) -> bool:
        """A half-made decision folder or temporary file that no live session can be writing:
        its session's lock is not held (one that cannot be told whose: no session is live)."""
        if p.name.startswith(STAGING):
            m = _STAGING_NAME.match(p.name)
            if m:
                return m.group(1) != self.session and m.group(1) not in self.others
            return not self.others
        return p.name.startswith(".") and p.name.endswith(".tmp") and not self.others

    def _clean_stale(self) -> list[str]:
        """Remove what a killed session left (half-made decision folders, temporary files);
        never a file of a session still running here."""
        stale = [p for p in self.dir.iterdir() if self._is_stale(p)]
        for p in stale:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return [p.name for p in stale]

    def _log(self, record: dict[str, Any]) -> None:
        """Append a record to the session's JSONL and CSV logs, synced to disk."""
        row = io.StringIO()
        writer = csv.DictWriter(row, LOG_FIELDS, extrasaction="ignore")
        if not self.csv.exists():
            writer.writeheader()
        writer.writerow(csv_row(record))  # a card's class name may read as a formula
        for path, text in ((self.jsonl, json.dumps(record) + "\n"), (self.csv, row.getvalue())):
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

    def save(self, record: dict[str, Any], frame_bgr: np.ndarray, crop_rgb: np.ndarray) -> dict:
        """Write one decision as a unit: frame, crop and record in a staging folder renamed into
        place (a kill leaves either the whole folder or a staging one, cleaned at the next
        start), then the session log. Returns the record with the file names; OSError on failure."""
        self.count += 1
        stem = f"{self.session}-{self.count:04d}-frame{record['frame']:06d}"
        record = {
            **record,
            "frame_file": f"{stem}/{stem}.jpg",
            "crop_file": f"{stem}/{stem}-crop.png",
        }
        staging = self.dir / f"{STAGING}{stem}"
        staging.mkdir()
        try:
            self._image(staging, f"{stem}.jpg", frame_bgr)
            self._image(staging, f"{stem}-crop.png", cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR))
            atomic_write(staging / f"{stem}.json", json.dumps(record, indent=1).encode())
            os.replace(staging, self.dir / stem)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._log(record)
        return record


@dataclass
class Summary:
    """What happened in a session."""

    source: str
    frames: int = 0
    corrupt: int = 0
    classified: int = 0
    gated: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    saved: int = 0
    save_error: str | None = None
    ended: str = ""
    fault: bool = False  # ended by a fault (open failure, lost source, truncation)
    elapsed_s: float = 0.0

    @property
    def fps(self) -> float:
        """Frames read per second of the session."""
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON event (`--json`)."""
        d = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in vars(self).items()}
        return {
            "event": "summary",
            **d,
            "elapsed_s": round(self.elapsed_s, 3),
            "fps": round(self.fps, 2),
        }

    def text(self) -> str:
        """The summary as one line for people."""
        parts = [
            f"{self.frames} frames in {self.elapsed_s:.1f} s ({self.fps:.1f}/s)",
            f"{self.classified} classified",
        ]
        if self.gated:
            parts.append("gated: " + ", ".join(f"{k} {v}" for k, v in self.gated.most_common()))
        if self.corrupt:
            parts.append(f"{self.corrupt} corrupt frames skipped")
        n = sum(self.decisions.values())
        parts.append(
            f"{n} decisions ({self.decisions['refer']} refer, "
            f"{self.decisions['cannot assess']} cannot assess (refer), "
            f"{self.decisions['routine']} routine)"
        )
        if self.reconnects:
            parts.append(f"{self.reconnects} reconnects")
        if self.saved or self.save_error:
            parts.append(
                f"{self.saved} saved"
                + (f" (saving failed: {self.save_error})" if self.save_error else "")
            )
        return f"{self.source}: " + "; ".join(parts) + f". Ended: {self.ended}."

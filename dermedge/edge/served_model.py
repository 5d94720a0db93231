"""The model `--serve` hands out, with its card: checked as `--model` checks it, and reloaded when
its file changes (so a new model needs no restart). A replacement that fails the check, crashes
or hangs the interpreter, or is too large is refused in one logged line, and the last good model
stays in service: the check runs in a child process, so nothing in the file can take the server
down."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from dermedge.edge.assets import Asset, make_asset
from dermedge.edge.card import read_card
from dermedge.edge.serve_errors import ServeError

MAX_MODEL_BYTES = 512 * 1024 * 1024
MAX_SIDECAR_BYTES = 16 * 1024 * 1024
CHECK_TIMEOUT_S = 120  # a model the interpreter cannot load in this time is refused
Stamp = tuple[int, int, int, int]  # (model inode, mtime, size, sidecar mtime)


def _sidecar_card(path: Path) -> Any:
    """The `<model>.json` sidecar's content, or None when there is no sidecar."""
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        return None
    try:
        if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
            raise ServeError(f"model card {sidecar} is over {MAX_SIDECAR_BYTES} bytes")
        return json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ServeError(f"unreadable model card {sidecar}: {e}") from e


def load_card(model_path: str | os.PathLike[str], blob: bytes | None = None) -> dict[str, Any]:
    """The model card: embedded in the .tflite, else the `<model>.json` sidecar. Raises
    ServeError when there is none, it is malformed, or it lacks what the page needs (input
    contract, threshold)."""
    path = Path(model_path)
    blob = path.read_bytes() if blob is None else blob
    try:
        card = read_card(blob)
    except ValueError as e:
        raise ServeError(f"{path}: {e}") from e
    if card is None:
        card = _sidecar_card(path)
    if not isinstance(card, dict):
        raise ServeError(
            f"{path} has no model card (embedded or {path.name}.json); the page needs its input "
            "contract and threshold: convert the model with `dermedge convert`"
        )
    missing = [k for k in ("input", "threshold") if k not in card]
    if missing or not isinstance(card.get("input"), dict) or "size" not in card["input"]:
        raise ServeError(f"model card of {path} lacks {', '.join(missing) or 'input.size'}")
    if "disclaimer" not in card:
        from dermedge import DISCLAIMER

        card = {**card, "disclaimer": DISCLAIMER}
    return card


def checked_card(path: Path, blob: bytes) -> dict[str, Any]:
    """The card of a model file `--model` would run, checked as `--model` checks it (digest and
    graph, then the interpreter loads it with the card's contract and threshold); ServeError
    with the reason otherwise. In this process: see `checked_card_isolated` for the server."""
    from dermedge.data.contract import InputContract
    from dermedge.edge.runtime import EdgeError, EdgeModel

    card = load_card(path, blob)
    with tempfile.TemporaryDirectory(prefix="dermedge-serve-") as d:
        tmp = Path(d) / "model.tflite"
        tmp.write_bytes(blob)  # the bytes that will be served, not the file, which may change
        try:
            contract = InputContract.from_dict(card["input"])
            EdgeModel(tmp, threads=1, contract=contract, threshold=card["threshold"])
        except (EdgeError, ValueError) as e:
            raise ServeError(str(e).replace(str(tmp), str(path))) from None
    return card


def one_line(text: str, limit: int = 300) -> str:
    """`text` as one printable line of at most `limit` characters (a log line cannot be forged)."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _crash_reason(returncode: int) -> str:
    """What a child's negative return code means: the signal that killed it."""
    try:
        return f"the interpreter crashed loading it ({signal.Signals(-returncode).name})"
    except ValueError:
        return f"the interpreter crashed loading it (signal {-returncode})"


# The child of checked_card_isolated: this dermedge (installed or a checkout), then _check_main.
_CHILD = (
    "import sys; p = sys.argv.pop(1); p in sys.path or sys.path.insert(0, p); "
    "from dermedge.edge.served_model import _check_main; sys.exit(_check_main(sys.argv[1:]))"
)


def checked_card_isolated(path: Path, blob: bytes) -> dict[str, Any]:
    """checked_card in a child process (the bytes on its stdin, the card as JSON on its stdout):
    a file that crashes or hangs the interpreter, or trips any bug of the check, is
    refused with a one-line ServeError instead of taking the server down."""
    here = str(Path(__file__).resolve().parents[2])  # where this dermedge is imported from
    command = [sys.executable, "-c", _CHILD, here, str(path)]
    try:
        done = subprocess.run(command, input=blob, capture_output=True, timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ServeError(
            f"{path}: the interpreter did not load it in {CHECK_TIMEOUT_S} s"
        ) from None
    except OSError as e:
        raise ServeError(f"cannot check {path}: {e}") from None
    out = done.stdout.decode("utf-8", "replace")
    if done.returncode < 0:
        raise ServeError(f"{path}: {_crash_reason(done.returncode)}")
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ServeError(one_line(out or (err[-1] if err else f"check failed ({done.returncode})")))
    try:
        card = json.loads(out)
    except json.JSONDecodeError:
        card = None
    if not isinstance(card, dict):
        raise ServeError(f"{path}: the model check gave no card")
    return card


def _check_main(argv: list[str]) -> int:
    """The child of checked_card_isolated: the card as JSON on stdout (0), or the reason (1)."""
    try:
        card = checked_card(Path(argv[0]), sys.stdin.buffer.read())
    except ServeError as e:
        print(one_line(str(e)), flush=True)
        return 1
    except Exception as e:  # any bug of the check is a refusal of this file, in one line
        print(one_line(f"{argv[0]}: {type(e).__name__}: {e}"), flush=True)
        return 1
    print(json.dumps(card), flush=True)
    return 0


def log(message: str) -> None:
    """One line on stderr: what the server did with a model file."""
    print(one_line(message, 500), file=sys.stderr, flush=True)


class ServedModel:
    """The served model, reloaded when its file changes (so a new model needs no restart)."""

    def __init__(self, path: str | os.PathLike[str], web_digest: str):
        """Load `path` now (ServeError if unfit); the page's `web_digest` is part of the version."""
        self.path = Path(path)
        self.web_digest = web_digest
        self._lock = threading.Lock()
        self._stamp: Stamp | None = None
        self._refused: Stamp | None = None  # a file seen and found unfit
        self.version = ""
        self.card: dict[str, Any] = {}
        self.model: Asset | None = None
        self.card_asset: Asset | None = None
        self.refresh()

    def _current_stamp(self) -> Stamp | None:
        """The model file's stamp now; None (keep the last good model) if it is gone for now."""
        sidecar = self.path.with_name(self.path.name + ".json")
        try:
            st = self.path.stat()
            side_m = sidecar.stat().st_mtime_ns if sidecar.is_file() else 0
        except OSError as e:
            if self.model is not None:
                return None  # keep serving the last good model
            raise ServeError(f"model not found: {self.path}") from e
        return (st.st_ino, st.st_mtime_ns, st.st_size, side_m)

    def refresh(self) -> None:
        """Load the model file again if it changed since the last look (cheap when it did not).

        One request checks a new file; the others meanwhile get the last good model. After
        start this never raises: an unfit file is refused in one logged line.
        """
        stamp = self._current_stamp()
        if stamp is None or stamp in (self._stamp, self._refused):
            return
        if not self._lock.acquire(blocking=self.model is None):
            return  # another request is checking the new file
        try:
            if stamp not in (self._stamp, self._refused):
                self._load(stamp)
        finally:
            self._lock.release()

    def _read(self, stamp: Stamp) -> bytes:
        """The model file's bytes; ServeError if it is too large to serve or unreadable."""
        too_large = f"{self.path}: too large to serve (over {MAX_MODEL_BYTES} bytes)"
        if stamp[2] > MAX_MODEL_BYTES:
            raise ServeError(too_large)
        try:  # non-blocking: a FIFO put in its place must not hang the server
            with open(os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise ServeError(f"{self.path}: not a regular file")
                blob = f.read(MAX_MODEL_BYTES + 1)  # it may have grown since the stat
        except OSError as e:
            raise ServeError(f"cannot read {self.path}: {e.strerror or e}") from None
        if len(blob) > MAX_MODEL_BYTES:
            raise ServeError(too_large)
        return blob

    def _load(self, stamp: Stamp) -> None:
        """Check the file of `stamp` and serve it, or (after start) refuse it and keep the last."""
        try:
            blob = self._read(stamp)
            card = checked_card_isolated(self.path, blob)
        except Exception as e:
            if self.model is None:
                raise
            # a half-copied, damaged or hostile replacement: keep serving the old one, say so once
            log(f"not serving the new {self.path.name}: {e}; still serving version {self.version}")
            self._refused = stamp
            return
        first = self.model is None
        self._install(stamp, blob, card)
        if not first:
            log(f"now serving the new {self.path.name}: version {self.version}")

    def _install(self, stamp: Stamp, blob: bytes, card: dict[str, Any]) -> None:
        """Serve `blob` with `card` from now on, under a version of card, model and page."""
        card_bytes = json.dumps(card, indent=1, sort_keys=True).encode()
        h = hashlib.sha256(card_bytes)
        h.update(hashlib.sha256(blob).digest())
        h.update(self.web_digest.encode())
        self.card = card
        self.card_asset = make_asset(card_bytes, "card.json")
        self.model = make_asset(blob, "model.tflite")
        self.version = h.hexdigest()[:16]
        self._stamp = stamp

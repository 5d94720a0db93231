"""The model `--serve` hands out, with its card: checked as `--model` checks it, and reloaded when
its file changes (so a new model needs no restart; a damaged replacement is refused)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from dermedge.edge.assets import Asset, make_asset
from dermedge.edge.card import read_card
from dermedge.edge.serve_errors import ServeError

MAX_MODEL_BYTES = 512 * 1024 * 1024
Stamp = tuple[int, int, int]  # (model mtime, model size, sidecar mtime)


def _sidecar_card(path: Path) -> Any:
    """The `<model>.json` sidecar's content, or None when there is no sidecar."""
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        return None
    try:
        return json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
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
    with the reason otherwise."""
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
        try:
            st = self.path.stat()
        except OSError as e:
            if self.model is not None:
                return None  # keep serving the last good model
            raise ServeError(f"model not found: {self.path}") from e
        sidecar = self.path.with_name(self.path.name + ".json")
        side_m = sidecar.stat().st_mtime_ns if sidecar.is_file() else 0
        return (st.st_mtime_ns, st.st_size, side_m)

    def refresh(self) -> None:
        """Load the model file again if it changed since the last look (cheap when it did not)."""
        stamp = self._current_stamp()
        if stamp is None or stamp in (self._stamp, self._refused):
            return
        with self._lock:
            if stamp in (self._stamp, self._refused):
                return
            if stamp[1] > MAX_MODEL_BYTES:
                raise ServeError(f"model too large to serve: {stamp[1]} bytes")
            blob = self.path.read_bytes()
            try:
                card = checked_card(self.path, blob)
            except ServeError as e:
                if self.model is None:
                    raise
                # a half-copied or damaged replacement: keep serving the old one, say so once
                msg = f"not serving the new {self.path.name}: {e}"
                print(f"{msg}; still serving version {self.version}", file=sys.stderr, flush=True)
                self._refused = stamp
                return
            self._install(stamp, blob, card)

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

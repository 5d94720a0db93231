"""The phone page bundle as an in-memory table: every servable file, loaded once at start.

No file system path is ever built from a URL: a request is an exact key lookup in this table,
so path traversal has nothing to reach.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from dermedge.edge.serve_errors import ServeError

WEB_DIR = Path(__file__).with_name("web")
VERSION_PLACEHOLDER = b"__DERMEDGE_VERSION__"
STAMPED = ("/index.html", "/sw.js")  # pages that carry the model version
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".webmanifest": "application/manifest+json",
    ".tflite": "application/octet-stream",
    ".txt": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    """One servable file: its bytes, type and ETag (the bytes' digest)."""

    body: bytes
    content_type: str
    gzipped: bool = False  # body is gzip-compressed (sent with Content-Encoding: gzip)
    etag: str = ""


def content_type(name: str) -> str:
    """The Content-Type of a file name, by its extension (unknown ones are octet streams)."""
    return CONTENT_TYPES.get(os.path.splitext(name)[1], "application/octet-stream")


def make_asset(body: bytes, name: str, gzipped: bool = False) -> Asset:
    """An Asset of `body` served as `name`, with an ETag from its digest."""
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, content_type(name), gzipped, etag)


def load_web_assets(web_dir: Path) -> dict[str, Asset]:
    """Every file of the built page, keyed by URL path. `name.gz` is served at `/name`."""
    if not (web_dir / "index.html").is_file():
        raise ServeError(
            f"the phone page is not built ({web_dir}/index.html missing): run `npm ci && npm run build` in web/"
        )
    assets: dict[str, Asset] = {}
    for p in sorted(web_dir.rglob("*")):
        if not p.is_file() or p.is_symlink():
            continue
        rel = p.relative_to(web_dir).as_posix()
        if rel.endswith(".gz"):
            assets["/" + rel[:-3]] = make_asset(p.read_bytes(), rel[:-3], gzipped=True)
        else:
            assets["/" + rel] = make_asset(p.read_bytes(), rel)
    return assets


def assets_digest(assets: dict[str, Asset]) -> str:
    """One digest of the whole bundle (part of the version, so a new page is a new version)."""
    digest = hashlib.sha256()
    for k in sorted(assets):
        digest.update(k.encode() + assets[k].etag.encode())
    return digest.hexdigest()


class AssetCache:
    """Derived bodies, made once each: pages stamped with a model version, gunzipped files."""

    def __init__(self) -> None:
        """An empty cache."""
        self._stamped: dict[tuple[str, str], Asset] = {}
        self._gunzipped: dict[str, bytes] = {}

    def stamped(self, path: str, asset: Asset, version: str) -> Asset:
        """index.html / sw.js with the model version written in (changes when the model does)."""
        key = (path, version)
        if key not in self._stamped:
            raw = gzip.decompress(asset.body) if asset.gzipped else asset.body
            body = raw.replace(VERSION_PLACEHOLDER, version.encode())
            self._stamped[key] = make_asset(body, path)
        return self._stamped[key]

    def gunzip(self, asset: Asset) -> bytes:
        """The plain body of a gzipped asset, for clients that do not accept gzip."""
        if asset.etag not in self._gunzipped:
            self._gunzipped[asset.etag] = gzip.decompress(asset.body)
        return self._gunzipped[asset.etag]

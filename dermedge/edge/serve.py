"""`edge-classify --serve`: the phone camera page, served with the model, classifying in the browser.

The page (built from `web/` into `dermedge/edge/web/`, shipped as package data) opens the rear
camera, applies the same quality gate, crop and PIL-exact bilinear resize as the Python runner,
and runs the int8 `.tflite` in the browser with LiteRT.js (WebAssembly). Frames never leave the
phone: this server only hands out static files, `/model.tflite` and `/card.json`.

Security: loopback by default; any other address needs TLS (browsers give the camera only to
secure pages), from `tls_cert`/`tls_key` or a generated self-signed certificate. Only GET and
HEAD, no upload endpoint, small request limits, a strict Content-Security-Policy, and no file
system path is ever built from a URL: every servable file is loaded into an in-memory table at
start, so path traversal has nothing to reach.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gzip
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dermedge.edge.card import read_card

WEB_DIR = Path(__file__).with_name("web")
VERSION_PLACEHOLDER = b"__DERMEDGE_VERSION__"

CSP = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self' blob: data:; media-src 'self' blob: mediastream:; connect-src 'self'; "
    "worker-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=(), payment=(), usb=()",
}
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
MAX_URL = 2048  # bytes of request target
MAX_HEADER_BYTES = 16 * 1024  # all request headers together
REQUEST_TIMEOUT_S = 30  # per connection read timeout (slow clients are dropped)
KEEPALIVE_IDLE_S = 5  # an idle kept-alive connection is closed after this (frees browser sockets)
MAX_MODEL_BYTES = 512 * 1024 * 1024
MAX_CONNECTIONS = (
    64  # concurrent connections; past it the oldest one still waiting for its headers is closed
)
MAX_PER_CLIENT = 32  # concurrent connections from one address, the same way
HEADER_DEADLINE_S = 10  # from accept (TLS handshake included) or the last response to the end of the next request's headers


try:  # raised inside a click command, click prints it as "Error: ..." and exits 2
    from click import ClickException as _ErrorBase
except ImportError:  # pragma: no cover - click is a declared dependency

    class _ErrorBase(Exception):  # type: ignore[no-redef]
        def __init__(self, message: str):
            super().__init__(message)
            self.message = message


class ServeError(_ErrorBase, ValueError):
    """A configuration the server refuses; the message is one line meant for the user."""

    exit_code = 2


# ----------------------------------------------------------------------------- model card


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
        sidecar = path.with_name(path.name + ".json")
        if sidecar.is_file():
            try:
                card = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise ServeError(f"unreadable model card {sidecar}: {e}") from e
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


# ----------------------------------------------------------------------------- assets


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    gzipped: bool = False  # body is gzip-compressed (sent with Content-Encoding: gzip)
    etag: str = ""


def _content_type(name: str) -> str:
    return CONTENT_TYPES.get(os.path.splitext(name)[1], "application/octet-stream")


def _make_asset(body: bytes, name: str, gzipped: bool = False) -> Asset:
    return Asset(
        body, _content_type(name), gzipped, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    )


def _load_web_assets(web_dir: Path) -> dict[str, Asset]:
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
            assets["/" + rel[:-3]] = _make_asset(p.read_bytes(), rel[:-3], gzipped=True)
        else:
            assets["/" + rel] = _make_asset(p.read_bytes(), rel)
    return assets


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
            EdgeModel(tmp, threads=1, contract=InputContract.from_dict(card["input"]),
                      threshold=card["threshold"])  # fmt: skip
        except (EdgeError, ValueError) as e:
            raise ServeError(str(e).replace(str(tmp), str(path))) from None
    return card


class _Model:
    """The served model, reloaded when its file changes (so a new model needs no restart)."""

    def __init__(self, path: str | os.PathLike[str], web_digest: str):
        self.path = Path(path)
        self.web_digest = web_digest
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._refused: tuple[int, int, int] | None = None  # a file seen and found unfit
        self.version = ""
        self.card: dict[str, Any] = {}
        self.model: Asset | None = None
        self.card_asset: Asset | None = None
        self.refresh()

    def refresh(self) -> None:
        try:
            st = self.path.stat()
        except OSError as e:
            if self.model is not None:
                return  # keep serving the last good model
            raise ServeError(f"model not found: {self.path}") from e
        sidecar = self.path.with_name(self.path.name + ".json")
        side_m = sidecar.stat().st_mtime_ns if sidecar.is_file() else 0
        stamp = (st.st_mtime_ns, st.st_size, side_m)
        if stamp in (self._stamp, self._refused):
            return
        with self._lock:
            if stamp in (self._stamp, self._refused):
                return
            if st.st_size > MAX_MODEL_BYTES:
                raise ServeError(f"model too large to serve: {st.st_size} bytes")
            blob = self.path.read_bytes()
            try:
                card = checked_card(self.path, blob)
            except ServeError as e:
                if self.model is None:
                    raise
                # a half-copied or damaged replacement: keep serving the old one, say so once
                print(f"not serving the new {self.path.name}: {e}; still serving version "
                      f"{self.version}", file=sys.stderr, flush=True)  # fmt: skip
                self._refused = stamp
                return
            card_bytes = json.dumps(card, indent=1, sort_keys=True).encode()
            h = hashlib.sha256(card_bytes)
            h.update(hashlib.sha256(blob).digest())
            h.update(self.web_digest.encode())
            self.card = card
            self.card_asset = _make_asset(card_bytes, "card.json")
            self.model = _make_asset(blob, "model.tflite")
            self.version = h.hexdigest()[:16]
            self._stamp = stamp


# ----------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server: DermServer
    protocol_version = "HTTP/1.1"
    server_version = "dermedge"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self.server.waiting()  # idle keep-alive: evictable again, with a fresh deadline
            self.connection.settimeout(KEEPALIVE_IDLE_S)
            self.handle_one_request()

    def parse_request(self) -> bool:
        """http.server's parsing, then: the headers are in (no more deadline) and the Host is one
        this server answers to (a DNS-rebinding page's Host is its own name)."""
        if not super().parse_request():
            return False
        self.server.busy()
        host = self.headers.get("Host")
        if host is not None and not self.server.host_allowed(host):
            self._send_plain(
                HTTPStatus.MISDIRECTED_REQUEST, f"this server does not answer to {host[:100]!r}"
            )
            return False
        return True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _send_plain(
        self, status: HTTPStatus, text: str = "", extra: dict[str, str] | None = None
    ) -> None:
        body = (text or status.phrase).encode() + b"\n"
        self.send_response(status)
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own errors (bad request line, 414, 431, 501): short, with our headers
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.BAD_REQUEST
        self.close_connection = True
        if not hasattr(self, "command") or self.command is None:
            self.command = "GET"
        self._send_plain(status, message or status.phrase)

    def _reject_oversized(self) -> bool:
        if len(self.path) > MAX_URL:
            self._send_plain(HTTPStatus.REQUEST_URI_TOO_LONG)
            return True
        size = sum(len(k) + len(v) + 4 for k, v in self.headers.items())
        if size > MAX_HEADER_BYTES:
            self._send_plain(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return True
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (length and length.strip() != "0"):
            self._send_plain(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request bodies are not accepted")
            return True
        return False

    def _resolve(self) -> Asset | None:
        target = urlsplit(self.path)
        path = unquote(target.path, errors="strict")
        if path in ("", "/"):
            path = "/index.html"
        srv = self.server
        if path in ("/model.tflite", "/card.json", "/index.html", "/sw.js"):
            srv.model.refresh()
        if path == "/model.tflite":
            return srv.model.model
        if path == "/card.json":
            return srv.model.card_asset
        asset = srv.assets.get(path)  # an exact key lookup: no path is ever joined or opened
        if asset is not None and path in ("/index.html", "/sw.js"):
            asset = srv.stamped(path, asset)
        return asset

    def _serve(self) -> None:
        if self._reject_oversized():
            return
        try:
            asset = self._resolve()
        except (UnicodeDecodeError, ValueError):
            self._send_plain(HTTPStatus.BAD_REQUEST)
            return
        if asset is None:
            self._send_plain(HTTPStatus.NOT_FOUND)
            return
        body, encoding = asset.body, None
        if asset.gzipped:
            accept = self.headers.get("Accept-Encoding", "")
            if "gzip" in accept.lower():
                encoding = "gzip"
            else:
                body = self.server.gunzip(asset)
        if self.headers.get("If-None-Match") == asset.etag:
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self.send_header("ETag", asset.etag)
            self.send_header("Cache-Control", "no-cache")
            if asset.gzipped:
                self.send_header("Vary", "Accept-Encoding")
            self.end_headers()
            return
        self.send_response(HTTPStatus.OK)
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Content-Type", asset.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", asset.etag)
        self.send_header("Cache-Control", "no-cache")  # revalidate; the service worker caches
        if asset.gzipped:
            self.send_header("Vary", "Accept-Encoding")
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._serve()

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve()

    def _not_allowed(self) -> None:
        self._send_plain(HTTPStatus.METHOD_NOT_ALLOWED, extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed  # noqa: N815


class DermServer(ThreadingHTTPServer):
    """The phone-page server. `url` is where to point a browser; start with serve_forever()."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 32

    def __init__(
        self,
        address: tuple[str, int],
        model_path: str,
        ssl_context: ssl.SSLContext | None = None,
        verbose: bool = False,
        web_dir: Path = WEB_DIR,
    ):
        self.assets = _load_web_assets(web_dir)
        digest = hashlib.sha256()
        for k in sorted(self.assets):
            digest.update(k.encode() + self.assets[k].etag.encode())
        self.model = _Model(model_path, digest.hexdigest())
        self.verbose = verbose
        self.ssl_context = ssl_context
        self.tls_cert: str | None = None  # the certificate file in use, when serving https
        self._conn_lock = threading.Lock()
        self._pending: dict[Any, tuple[float, str]] = {}  # socket -> (deadline, client address)
        self._per_client: Counter[str] = Counter()
        self._active = 0
        self._local = threading.local()
        self.host_names = _host_names(address[0])
        self._stamped: dict[tuple[str, str], Asset] = {}
        self._gunzipped: dict[str, bytes] = {}
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = host if ":" not in host else f"[{host}]"
        if host in ("0.0.0.0", "::"):
            shown = socket.gethostname()
        self.url = f"{'https' if ssl_context else 'http'}://{shown}:{port}/"

    def stamped(self, path: str, asset: Asset) -> Asset:
        """index.html / sw.js with the model version written in (changes when the model does)."""
        key = (path, self.model.version)
        if key not in self._stamped:
            raw = gzip.decompress(asset.body) if asset.gzipped else asset.body
            body = raw.replace(VERSION_PLACEHOLDER, self.model.version.encode())
            self._stamped[key] = _make_asset(body, path)
        return self._stamped[key]

    def gunzip(self, asset: Asset) -> bytes:
        if asset.etag not in self._gunzipped:
            self._gunzipped[asset.etag] = gzip.decompress(asset.body)
        return self._gunzipped[asset.etag]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        sock.settimeout(REQUEST_TIMEOUT_S)
        return sock, addr

    # Connections that have not yet sent their request headers (a TLS handshake, a slow request
    # line, an idle keep-alive) hold a slot and give nothing back: they are closed at their
    # deadline (service_actions, every poll) and, when the slots are full, oldest first to make
    # room for a new connection. Connections being answered are never closed.

    def _evictable(self, client: str | None = None) -> socket.socket | None:
        for sock, (_, ip) in self._pending.items():  # insertion order: oldest first
            if client is None or ip == client:
                return sock
        return None

    def _evict(self, sock: socket.socket) -> None:
        self._pending.pop(sock, None)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # its thread's read ends; the thread frees the slot

    def process_request(self, request: Any, client_address: Any) -> None:
        ip = str(client_address[0])
        with self._conn_lock:
            victim = None
            if self._per_client[ip] >= MAX_PER_CLIENT:
                victim = self._evictable(ip) or request
            elif self._active >= MAX_CONNECTIONS:
                victim = self._evictable() or request
            if self._active >= 2 * MAX_CONNECTIONS:  # evicted ones still finishing: a hard bound
                victim = request
            if victim is request:
                self.shutdown_request(request)  # every slot is busy answering: drop this one
                return
            if victim is not None:
                self._evict(victim)
            self._active += 1
            self._per_client[ip] += 1
            self._pending[request] = (time.monotonic() + HEADER_DEADLINE_S, ip)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request, ip)
            raise

    def _release(self, request: Any, ip: str) -> None:
        with self._conn_lock:
            self._active -= 1
            self._per_client[ip] -= 1
            self._pending.pop(request, None)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self._local.request, self._local.ip = request, str(client_address[0])
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request, str(client_address[0]))

    def busy(self) -> None:
        """The connection of this thread has sent its headers: not evictable while answered."""
        with self._conn_lock:
            self._pending.pop(getattr(self._local, "request", None), None)

    def waiting(self) -> None:
        """The connection of this thread waits for its next request (keep-alive)."""
        request = getattr(self._local, "request", None)
        if request is None:
            return
        with self._conn_lock:
            self._pending.pop(request, None)
            self._pending[request] = (time.monotonic() + HEADER_DEADLINE_S, self._local.ip)

    def service_actions(self) -> None:
        """Close connections past their header deadline (called by serve_forever each poll)."""
        now = time.monotonic()
        with self._conn_lock:
            for sock in [s for s, (deadline, _) in self._pending.items() if deadline <= now]:
                self._evict(sock)

    def host_allowed(self, host: str) -> bool:
        """An IP address, localhost, this machine's names or the name it was started on."""
        name = host.strip().lower()
        name = name[1 : name.find("]")] if name.startswith("[") else name.rsplit(":", 1)[0]
        name = name.rstrip(".")
        try:
            ipaddress.ip_address(name)
            return True  # a literal address is not a rebinding vector
        except ValueError:
            return name in self.host_names

    def finish_request(self, request: Any, client_address: Any) -> None:
        # runs in the connection's thread: a slow or broken TLS handshake blocks only that thread
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_RDWR)
            tls.close()

    def shutdown_request(self, request: Any) -> None:
        with contextlib.suppress(ssl.SSLError, OSError):
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.verbose:
            super().handle_error(request, client_address)  # quiet about client resets/bad TLS


# ----------------------------------------------------------------------------- TLS


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_names(host: str) -> set[str]:
    """The DNS names a browser may use for this server: localhost, the machine's names, --host."""
    names = {"localhost", "ip6-localhost", host.lower().strip("[]")}
    with contextlib.suppress(OSError):
        hostname = socket.gethostname().lower()
        names |= {hostname, f"{hostname}.local", socket.getfqdn().lower()}
    return {n.rstrip(".") for n in names if n}


def _cert_names(cert: str | os.PathLike[str]) -> set[str]:
    """The DNS names in a certificate's subjectAltName (needs `cryptography`; else none)."""
    try:
        from cryptography import x509
    except ImportError:
        return set()
    try:
        c = x509.load_pem_x509_certificate(Path(cert).read_bytes())
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return set()
    return {n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)}


def _cert_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = Path(base) / "dermedge" / "tls"
    try:
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        return d
    except OSError:
        return Path(tempfile.mkdtemp(prefix="dermedge-tls-"))


def _san_names(host: str) -> tuple[list[str], list[str]]:
    dns = {"localhost"}
    ips = {"127.0.0.1", "::1"}
    names = [host] if host not in ("0.0.0.0", "::", "") else []
    try:
        hostname = socket.gethostname()
        names.append(hostname)
        for info in socket.getaddrinfo(hostname, None):
            names.append(str(info[4][0]))
    except OSError:
        pass
    for n in names:
        try:
            ips.add(str(ipaddress.ip_address(n.strip("[]").split("%")[0])))
        except ValueError:
            if n:
                dns.add(n)
    return sorted(dns), sorted(ips)


def _self_signed_cryptography(cert: Path, key: Path, dns: list[str], ips: list[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pk = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "dermedge edge-classify (self-signed)")]
    )
    now = _dt.datetime.now(_dt.timezone.utc)
    alt = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pk.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(pk, hashes.SHA256())
    )
    key.write_bytes(
        pk.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key, 0o600)
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))


def _self_signed_openssl(cert: Path, key: Path, dns: list[str], ips: list[str]) -> None:
    exe = shutil.which("openssl")
    if not exe:
        raise ServeError(
            "--self-signed needs the `cryptography` package or the `openssl` command: "
            "pip install cryptography, or pass --tls-cert/--tls-key"
        )
    san = ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
    cmd = [
        exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "365", "-subj", "/CN=dermedge edge-classify (self-signed)",
        "-addext", f"subjectAltName={san}", "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise ServeError(
            f"openssl could not make a certificate: {r.stderr.strip().splitlines()[-1:]}"
        )
    os.chmod(key, 0o600)


def _cert_expiry(cert: Path) -> float | None:
    """When a certificate expires (epoch seconds), via `cryptography` or `openssl`; None if unknown."""
    try:
        from cryptography import x509

        return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc.timestamp()
    except ImportError:
        pass
    try:
        out = subprocess.run(["openssl", "x509", "-enddate", "-noout", "-in", str(cert)],
                             capture_output=True, text=True, timeout=10, check=True).stdout  # fmt: skip
        return ssl.cert_time_to_seconds(out.strip().split("=", 1)[1])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def self_signed_certificate(host: str, directory: Path | None = None) -> tuple[Path, Path]:
    """A self-signed certificate for `host` (reused while valid), via `cryptography` or `openssl`."""
    d = directory or _cert_dir()
    dns, ips = _san_names(host)
    tag = hashlib.sha256(",".join(dns + ips).encode()).hexdigest()[:10]
    cert, key = d / f"self-signed-{tag}.crt", d / f"self-signed-{tag}.key"
    if cert.is_file() and key.is_file():
        try:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
            expires = _cert_expiry(cert)
            if expires is not None and expires - _dt.datetime.now().timestamp() > 7 * 86400:
                return cert, key
        except (ssl.SSLError, OSError, KeyError, ValueError, AttributeError):
            pass
    try:
        _self_signed_cryptography(cert, key, dns, ips)
    except ImportError:
        _self_signed_openssl(cert, key, dns, ips)
    return cert, key


def certificate_fingerprint(cert: str | os.PathLike[str]) -> str:
    der = ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    h = hashlib.sha256(der).hexdigest().upper()
    return ":".join(h[i : i + 2] for i in range(0, len(h), 2))


def _ssl_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise ServeError(f"cannot load TLS certificate/key ({cert}, {key}): {e}") from e
    return ctx


# ----------------------------------------------------------------------------- entry points


def make_server(
    model_path: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    self_signed: bool = False,
    verbose: bool = False,
    web_dir: str | os.PathLike[str] | None = None,
) -> DermServer:
    """Build (bind, but do not start) the server. `port=0` picks a free port; see `.url`.

    Raises ServeError for a non-loopback host without TLS, half a cert/key pair, a model without
    a card, or an unbuilt page.
    """
    if bool(tls_cert) != bool(tls_key):
        raise ServeError("--tls-cert and --tls-key go together: pass both")
    if self_signed and tls_cert:
        raise ServeError("pass either --self-signed or --tls-cert/--tls-key, not both")
    if not is_loopback(host) and not (tls_cert or self_signed):
        raise ServeError(
            f"refusing to serve on {host} without TLS: phones allow the camera only on https pages; "
            "pass --tls-cert/--tls-key or --self-signed (or keep the default --host 127.0.0.1)"
        )
    if not Path(model_path).is_file():
        raise ServeError(f"model not found: {model_path}")
    ctx = None
    if self_signed:
        cert, key = self_signed_certificate(host)
        ctx = _ssl_context(cert, key)
        tls_cert = str(cert)
    elif tls_cert and tls_key:
        ctx = _ssl_context(tls_cert, tls_key)
    try:
        srv = DermServer(
            (host, int(port)), model_path, ctx, verbose, Path(web_dir) if web_dir else WEB_DIR
        )
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    srv.tls_cert = tls_cert
    if tls_cert:
        srv.host_names |= _cert_names(tls_cert)
    return srv


def serve(
    model_path: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    self_signed: bool = False,
) -> None:
    """Serve the phone page and `model_path` until Ctrl-C (`edge-classify --serve`)."""
    srv = make_server(model_path, host, port, tls_cert, tls_key, self_signed)
    card = srv.model.card
    print(
        f"dermedge phone page: {srv.url}  (model {card.get('name', Path(model_path).name)}, "
        f"version {srv.model.version})",
        flush=True,
    )
    if srv.ssl_context is not None and self_signed:
        print(
            f"self-signed certificate {srv.tls_cert}  SHA-256 "
            f"{certificate_fingerprint(srv.tls_cert or '')}",
            flush=True,
        )
        print("the phone will warn about it once: check the fingerprint, then accept", flush=True)
    print("frames are classified on the phone; nothing is uploaded. Ctrl-C stops.", flush=True)
    print(card.get("disclaimer", ""), flush=True)
    try:
        srv.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        print("\nstopped", flush=True)
    finally:
        srv.server_close()

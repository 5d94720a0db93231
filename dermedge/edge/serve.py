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

This module is the HTTP side (handler, connection cap, entry points); the asset table is in
`assets`, the served model and its card in `served_model`, certificates in `tls`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dermedge.edge.assets import (
    STAMPED,
    WEB_DIR,
    Asset,
    AssetCache,
    assets_digest,
    load_web_assets,
)
from dermedge.edge.serve_errors import ServeError
from dermedge.edge.served_model import ServedModel, checked_card, load_card, one_line
from dermedge.edge.tls import (
    cert_names,
    certificate_fingerprint,
    self_signed_certificate,
    server_context,
)

__all__ = [  # the names other modules and tests use from here; some live in the modules above
    "HEADER_DEADLINE_S",
    "MAX_CONNECTIONS",
    "MAX_PER_CLIENT",
    "WRITE_STALL_S",
    "WEB_DIR",
    "DermServer",
    "ServeError",
    "ServerOptions",
    "certificate_fingerprint",
    "checked_card",
    "is_loopback",
    "load_card",
    "make_server",
    "self_signed_certificate",
    "serve",
]

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
MAX_URL = 2048  # bytes of request target
MAX_HEADER_BYTES = 16 * 1024  # all request headers together
REQUEST_TIMEOUT_S = 30  # per connection read timeout (slow clients are dropped)
KEEPALIVE_IDLE_S = 5  # an idle kept-alive connection is closed after this (frees browser sockets)
# Connections (a thread each). Past a cap, the oldest connection still waiting for its headers
# is closed for the new one, or, when every one is being answered, the new one is.
MAX_CONNECTIONS = 128  # in all
MAX_PER_CLIENT = 16  # from one address (a browser opens about 6)
RESERVE = 32  # the last slots: only for addresses that hold fewer than FEW_PER_CLIENT
FEW_PER_CLIENT = 4
WRITE_STALL_S = 10  # a client must take each WRITE_CHUNK of an answer within this, or is dropped
WRITE_CHUNK = 64 * 1024
HEADER_DEADLINE_S = 10  # from accept (TLS handshake included) or the last response to the end of the next request's headers
# a request for one of these first looks whether the model file changed
REFRESHING = ("/model.tflite", "/card.json", *STAMPED)


# ----------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    """One connection: GET/HEAD of the in-memory table, everything else refused, short."""

    server: DermServer
    protocol_version = "HTTP/1.1"
    server_version = "dermedge"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S

    def handle(self) -> None:
        """Answer requests until the connection closes; an idle keep-alive has a short timeout."""
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
        """http.server's access log (a line a request), only with --verbose."""
        self.server.say(f"{self.address_string()} - {format % args}")

    def _send_plain(
        self, status: HTTPStatus, text: str = "", extra: dict[str, str] | None = None
    ) -> None:
        """A short text/plain answer with the security headers; an error closes the connection."""
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
        """http.server's own errors (bad request line, 414, 431, 501): short, with our headers."""
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.BAD_REQUEST
        self.close_connection = True
        if not hasattr(self, "command") or self.command is None:
            self.command = "GET"
        self._send_plain(status, message or status.phrase)

    def _reject_oversized(self) -> bool:
        """Answer (and return True) a request over the URL or header limits, or with a body."""
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
        """The asset a request names, by exact key (None: not found); ValueError if undecodable."""
        target = urlsplit(self.path)
        path = unquote(target.path, errors="strict")
        if path in ("", "/"):
            path = "/index.html"
        srv = self.server
        if path in REFRESHING:
            srv.model.refresh()
        if path == "/model.tflite":
            return srv.model.model
        if path == "/card.json":
            return srv.model.card_asset
        asset = srv.assets.get(path)  # an exact key lookup: no path is ever joined or opened
        if asset is not None and path in STAMPED:
            asset = srv.cache.stamped(path, asset, srv.model.version)
        return asset

    def _serve(self) -> None:
        """GET or HEAD: the asset, gzipped when the client takes it, or 304 for a known ETag."""
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
                body = self.server.cache.gunzip(asset)
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
            self._write_body(body)

    def _write_body(self, body: bytes) -> None:
        """Send `body` in chunks the client must each take within WRITE_STALL_S: a reader that
        stalls is dropped and frees its slot, a phone on a slow link keeps reading."""
        self.connection.settimeout(WRITE_STALL_S)
        view = memoryview(body)
        try:
            for start in range(0, len(view), WRITE_CHUNK):
                self.wfile.write(view[start : start + WRITE_CHUNK])
        except OSError as e:  # a stall or a reset: this connection is done
            self.close_connection = True
            self.log_message("dropped while sending %s: %s", self.path[:100], type(e).__name__)

    def do_GET(self) -> None:  # noqa: N802
        """GET: see _serve."""
        self._serve()

    def do_HEAD(self) -> None:  # noqa: N802
        """HEAD: see _serve (the headers of GET, no body)."""
        self._serve()

    def _not_allowed(self) -> None:
        """Every other method: 405."""
        self._send_plain(HTTPStatus.METHOD_NOT_ALLOWED, extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed  # noqa: N815


class DermServer(ThreadingHTTPServer):
    """The phone-page server. `url` is where to point a browser; start with serve_forever()."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # a burst of connections waits in the kernel, not refused

    def __init__(
        self,
        address: tuple[str, int],
        model_path: str,
        ssl_context: ssl.SSLContext | None = None,
        verbose: bool = False,
        web_dir: Path = WEB_DIR,
    ):
        """Load the page and the model, and bind `address` (port 0: a free port)."""
        self.assets = load_web_assets(web_dir)
        self.cache = AssetCache()
        self.model = ServedModel(model_path, assets_digest(self.assets))
        self.verbose = verbose
        self.ssl_context = ssl_context
        self.tls_cert: str | None = None  # the certificate file in use, when serving https
        self.self_signed = False  # that certificate was made here (its fingerprint is shown)
        self._conn_lock = threading.Lock()
        self._pending: dict[Any, tuple[float, str]] = {}  # socket -> (deadline, client address)
        self._per_client: Counter[str] = Counter()
        self._active = 0
        self._local = threading.local()
        self.host_names = _host_names(address[0])
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = host if ":" not in host else f"[{host}]"
        if host in ("0.0.0.0", "::"):
            shown = socket.gethostname()
        self.url = f"{'https' if ssl_context else 'http'}://{shown}:{port}/"

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection, with the read timeout set before any byte is read (TLS too)."""
        sock, addr = self.socket.accept()
        sock.settimeout(REQUEST_TIMEOUT_S)
        return sock, addr

    # Connections that have not yet sent their request headers (a TLS handshake, a slow request
    # line, an idle keep-alive) hold a slot and give nothing back: they are closed at their
    # deadline (service_actions, every poll) and, when the slots are full, oldest first to make
    # room for a new connection. Connections being answered are never closed.

    def _evictable(self, client: str | None = None) -> socket.socket | None:
        """The oldest connection still waiting for its headers (of `client`, if given)."""
        for sock, (_, ip) in self._pending.items():  # insertion order: oldest first
            if client is None or ip == client:
                return sock
        return None

    def _evict(self, sock: socket.socket) -> None:
        """Close a waiting connection; its thread then ends and frees the slot."""
        self._pending.pop(sock, None)
        with contextlib.suppress(OSError):  # the TCP shutdown, also under a TLS socket
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # its thread's read ends

    def _client_limit(self) -> int:
        """How many connections one address may hold now: fewer once the reserve is reached, so
        the last slots stay for addresses that hold few (a phone that just came)."""
        return MAX_PER_CLIENT if self._active < MAX_CONNECTIONS - RESERVE else FEW_PER_CLIENT

    def connections(self) -> int:
        """How many connections hold a slot now."""
        with self._conn_lock:
            return self._active

    def process_request(self, request: Any, client_address: Any) -> None:
        """Take a slot for a new connection (evicting a waiting one when full), then serve it."""
        ip = str(client_address[0])
        with self._conn_lock:
            victim = None
            if self._per_client[ip] >= self._client_limit():
                victim = self._evictable(ip) or request
            elif self._active >= MAX_CONNECTIONS:
                victim = self._evictable() or request
            if self._active >= 2 * MAX_CONNECTIONS:  # evicted ones still finishing: a hard bound
                victim = request
            if victim is request:
                self.shutdown_request(request)  # every slot is busy answering: drop this one
                self.say(f"{ip} - connection closed: {self._per_client[ip]} open from there")
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
        """Give back a finished connection's slot."""
        with self._conn_lock:
            self._active -= 1
            self._per_client[ip] -= 1
            self._pending.pop(request, None)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The connection's thread: serve it, then free its slot whatever happened."""
        self._local.request, self._local.ip = request, str(client_address[0])
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(self._local.request, str(client_address[0]))

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

    def _rekey(self, request: Any, tls: ssl.SSLSocket) -> None:
        """The TLS socket now owns the connection (the plain one is detached): evict that one,
        in the plain one's place in the queue."""
        with self._conn_lock:
            self._local.request = tls
            self._pending = {(tls if k is request else k): v for k, v in self._pending.items()}

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
        """TLS handshake, then the requests, in the connection's own thread (a slow one blocks
        only that thread)."""
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        try:
            tls = self.ssl_context.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
        except (ssl.SSLError, OSError):
            return
        self._rekey(request, tls)
        try:
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError):
                return  # not TLS, gave up, or evicted while shaking hands
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_RDWR)
            tls.close()

    def shutdown_request(self, request: Any) -> None:
        """Close a connection, quiet about one the client already dropped."""
        with contextlib.suppress(ssl.SSLError, OSError):
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed: one line with --verbose, nothing otherwise."""
        error = sys.exc_info()[1]
        self.say(f"{client_address[0]} - connection failed: {type(error).__name__}: {error}")

    def say(self, line: str) -> None:
        """One log line on stderr, only with --verbose."""
        if self.verbose:
            sys.stderr.write(one_line(line, 500) + "\n")


# ----------------------------------------------------------------------------- host names


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (localhost or a loopback address): no TLS needed."""
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


# ----------------------------------------------------------------------------- entry points


@dataclass(frozen=True)
class ServerOptions:
    """Where and how the server listens: the arguments of make_server and serve after the model."""

    host: str = "127.0.0.1"
    port: int = 8000  # 0 picks a free port; see the server's `.url`
    tls_cert: str | None = None
    tls_key: str | None = None
    self_signed: bool = False
    verbose: bool = False
    web_dir: str | os.PathLike[str] | None = None  # the built page; the packaged one by default

    def check(self) -> None:
        """ServeError for half a cert/key pair, both TLS sources, or a network host without TLS."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ServeError("--tls-cert and --tls-key go together: pass both")
        if self.self_signed and self.tls_cert:
            raise ServeError("pass either --self-signed or --tls-cert/--tls-key, not both")
        if not is_loopback(self.host) and not (self.tls_cert or self.self_signed):
            raise ServeError(
                f"refusing to serve on {self.host} without TLS: phones allow the camera only on "
                "https pages; pass --tls-cert/--tls-key or --self-signed (or keep the default "
                "--host 127.0.0.1)"
            )

    def tls(self) -> tuple[ssl.SSLContext | None, str | None]:
        """The server TLS context and the certificate file in use; (None, None) for plain http."""
        if self.self_signed:
            cert, key = self_signed_certificate(self.host)
            return server_context(cert, key), str(cert)
        if self.tls_cert and self.tls_key:
            return server_context(self.tls_cert, self.tls_key), self.tls_cert
        return None, None


def make_server(model_path: str, *args: Any, **kwargs: Any) -> DermServer:
    """Build (bind, but do not start) the server; the arguments after the model are those of
    ServerOptions (host, port, tls_cert, tls_key, self_signed, verbose, web_dir).

    Raises ServeError for a non-loopback host without TLS, half a cert/key pair, a model without
    a card, or an unbuilt page.
    """
    options = ServerOptions(*args, **kwargs)
    options.check()
    if not Path(model_path).is_file():
        raise ServeError(f"model not found: {model_path}")
    ctx, tls_cert = options.tls()
    web_dir = Path(options.web_dir) if options.web_dir else WEB_DIR
    address = (options.host, int(options.port))
    try:
        srv = DermServer(address, model_path, ctx, options.verbose, web_dir)
    except OSError as e:
        raise ServeError(
            f"cannot listen on {options.host}:{options.port}: {e.strerror or e}"
        ) from e
    srv.tls_cert, srv.self_signed = tls_cert, options.self_signed
    if tls_cert:
        srv.host_names |= cert_names(tls_cert)
    return srv


def serve(model_path: str, *args: Any, **kwargs: Any) -> None:
    """Serve the phone page and `model_path` until Ctrl-C (`edge-classify --serve`); the other
    arguments are make_server's."""
    srv = make_server(model_path, *args, **kwargs)
    card = srv.model.card
    print(
        f"dermedge phone page: {srv.url}  (model {card.get('name', Path(model_path).name)}, "
        f"version {srv.model.version})",
        flush=True,
    )
    if srv.ssl_context is not None and srv.self_signed:
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

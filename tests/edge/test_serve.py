"""`edge-classify --serve`: the phone-page server (no browser needed here; see tests/e2e/)."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dermedge.edge import serve as S

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets"
MODEL = ASSETS / "tiny_int8.tflite"

pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="tests/assets/tiny_int8.tflite missing")


def _start(srv: S.DermServer) -> S.DermServer:
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return srv


@pytest.fixture
def model(tmp_path: Path) -> Path:
    p = tmp_path / "model.tflite"
    shutil.copyfile(MODEL, p)
    return p


@pytest.fixture
def server(model: Path) -> Iterator[S.DermServer]:
    srv = _start(S.make_server(str(model), "127.0.0.1", 0))
    yield srv
    srv.shutdown()
    srv.server_close()


def request(
    srv: S.DermServer,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    host, port = srv.server_address[:2]
    if srv.ssl_context is not None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=10, context=ctx
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def raw_request(srv: S.DermServer, data: bytes) -> bytes:
    with socket.create_connection(srv.server_address[:2], timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_page_headers_and_version(server: S.DermServer) -> None:
    status, h, body = request(server, "GET", "/")
    assert status == 200 and h["content-type"].startswith("text/html")
    csp = h["content-security-policy"]
    for directive in (
        "default-src 'none'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "frame-ancestors 'none'",
    ):
        assert directive in csp
    assert "unsafe-inline" not in csp and "'unsafe-eval'" not in csp
    assert h["x-content-type-options"] == "nosniff"
    assert "camera=(self)" in h["permissions-policy"]
    version = server.model.version
    assert f'content="{version}"'.encode() in body and b"__DERMEDGE_VERSION__" not in body
    status, h, sw = request(server, "GET", "/sw.js")
    assert status == 200 and h["content-type"].startswith("text/javascript")
    assert f"'{version}'".encode() in sw
    # no inline scripts or styles anywhere in the page (the CSP would block them)
    assert b"<script>" not in body and b"style=" not in body and b"onclick" not in body


def test_model_and_card(server: S.DermServer) -> None:
    from dermedge.edge.card import read_card

    status, h, body = request(server, "GET", "/model.tflite?v=whatever")
    assert status == 200 and body == MODEL.read_bytes()
    assert h["content-type"] == "application/octet-stream"
    status, h, body = request(server, "GET", "/card.json")
    card = json.loads(body)
    assert card == read_card(str(MODEL))
    assert {"input", "threshold", "classes", "disclaimer"} <= set(card)


def test_gzip_assets_and_etag(server: S.DermServer) -> None:
    path = "/litert/litert_wasm_internal.wasm"
    status, h, gz = request(server, "GET", path, {"Accept-Encoding": "gzip, deflate, br"})
    assert (
        status == 200
        and h["content-encoding"] == "gzip"
        and h["content-type"] == "application/wasm"
    )
    status, h2, plain = request(server, "GET", path)
    assert status == 200 and "content-encoding" not in h2
    assert gzip.decompress(gz) == plain and plain[:4] == b"\0asm"
    status, h3, body = request(
        server, "GET", path, {"If-None-Match": h["etag"], "Accept-Encoding": "gzip"}
    )
    assert status == 304 and body == b""
    status, h4, body = request(server, "HEAD", "/app.js", {"Accept-Encoding": "gzip"})
    assert status == 200 and body == b"" and int(h4["content-length"]) > 0


@pytest.mark.parametrize(
    "path",
    [
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/litert/..%2f..%2fserve.py",
        "/..%5c..%5cserve.py",
        "//etc/passwd",
        "/serve.py",
        "/../serve.py",
        "/web/index.html",
        "/%00",
        "/litert/../../card.py",
        "/litert/%2e%2e/%2e%2e/__init__.py",
        "/" + "a" * 100,
        "/%ff%fe",
        "/index.html/..",
        str(REPO / "pyproject.toml"),
    ],
)
def test_path_traversal_is_impossible(server: S.DermServer, path: str) -> None:
    raw = raw_request(
        server, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    )
    status = int(raw.split(b" ", 2)[1])
    assert status in (400, 404), raw[:200]
    for secret in (b"DermServer", b"[build-system]", b"root:", b"__init__", b"read_card"):
        assert secret not in raw


def test_only_get_and_head(server: S.DermServer) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        status, h, _ = request(server, method, "/", body=b"x=1")
        assert status == 405 and h["allow"] == "GET, HEAD", method
    raw = raw_request(server, b"BREW / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 501")


def test_request_limits(server: S.DermServer) -> None:
    status, _, _ = request(server, "GET", "/" + "a" * 5000)
    assert status == 414
    status, _, _ = request(server, "GET", "/", {f"X-Pad-{i}": "y" * 900 for i in range(20)})
    assert status == 431
    status, _, _ = request(server, "GET", "/", body=b"z" * 100)
    assert status == 413
    raw = raw_request(
        server, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 413")
    raw = raw_request(server, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 414")
    assert request(server, "GET", "/")[0] == 200  # still serving


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "10.0.0.5", "::", "example.org"])
def test_refuses_lan_bind_without_tls(model: Path, host: str) -> None:
    with pytest.raises(S.ServeError) as e:
        S.make_server(str(model), host, 0)
    msg = str(e.value)
    assert "\n" not in msg and "without TLS" in msg and "--self-signed" in msg
    with pytest.raises(S.ServeError):
        S.serve(str(model), host, 0)


def test_loopback_detection() -> None:
    for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"):
        assert S.is_loopback(h)
    for h in ("0.0.0.0", "::", "192.168.0.2", "10.1.1.1", "example.org", ""):
        assert not S.is_loopback(h)


def test_tls_argument_errors(model: Path, tmp_path: Path) -> None:
    with pytest.raises(S.ServeError, match="go together"):
        S.make_server(str(model), tls_cert="a.pem")
    with pytest.raises(S.ServeError, match="cannot load"):
        S.make_server(
            str(model), port=0, tls_cert=str(tmp_path / "no.pem"), tls_key=str(tmp_path / "no.key")
        )
    with pytest.raises(S.ServeError, match="model not found"):
        S.make_server(str(tmp_path / "missing.tflite"))


def test_model_without_card_is_refused(tmp_path: Path) -> None:
    nocard = ASSETS / "tiny_fp32_nocard.tflite"
    if not nocard.is_file():
        pytest.skip("no card-less test model")
    with pytest.raises(S.ServeError, match="no model card"):
        S.make_server(str(nocard), port=0)
    # a sidecar card makes it servable
    m = tmp_path / "m.tflite"
    shutil.copyfile(nocard, m)
    card = S.load_card(MODEL)
    (tmp_path / "m.tflite.json").write_text(json.dumps(card))
    srv = S.make_server(str(m), port=0)
    try:
        assert srv.model.card["threshold"] == card["threshold"]
    finally:
        srv.server_close()


def test_self_signed_https(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    srv = _start(S.make_server(str(model), "127.0.0.1", 0, self_signed=True))
    try:
        assert srv.url.startswith("https://")
        status, h, body = request(srv, "GET", "/card.json")
        assert status == 200 and "content-security-policy" in h and json.loads(body)["threshold"]
        cert = Path(srv.tls_cert)
        assert cert.is_file() and len(S.certificate_fingerprint(cert).split(":")) == 32
        key = next(cert.parent.glob("*.key"))
        assert oct(key.stat().st_mode & 0o777) == "0o600"
        # plain HTTP to the TLS port gets nothing useful
        try:
            raw = raw_request(srv, b"GET /card.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        except ConnectionResetError:
            raw = b""
        assert b"threshold" not in raw
    finally:
        srv.shutdown()
        srv.server_close()
    # the certificate is reused while valid
    srv2 = S.make_server(str(model), "127.0.0.1", 0, self_signed=True)
    srv2.server_close()
    assert srv2.tls_cert == srv.tls_cert


def test_given_certificate(model: Path, tmp_path: Path) -> None:
    cert, key = S.self_signed_certificate("127.0.0.1", tmp_path)
    srv = _start(S.make_server(str(model), "127.0.0.1", 0, tls_cert=str(cert), tls_key=str(key)))
    try:
        assert request(srv, "GET", "/")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_new_model_changes_version(server: S.DermServer, model: Path) -> None:
    v1 = server.model.version
    _, _, sw1 = request(server, "GET", "/sw.js")
    other = ASSETS / "tiny_fp32.tflite"
    tmp = model.with_suffix(".new")
    shutil.copyfile(other, tmp)
    os.replace(tmp, model)
    _, _, sw2 = request(server, "GET", "/sw.js")
    v2 = server.model.version
    assert v2 != v1 and v2.encode() in sw2 and v1.encode() in sw1
    _, _, body = request(server, "GET", "/model.tflite")
    assert body == other.read_bytes()
    assert json.loads(request(server, "GET", "/card.json")[2])["name"] != ""


def test_unbuilt_page_is_a_clear_error(model: Path, tmp_path: Path) -> None:
    with pytest.raises(S.ServeError, match="not built"):
        S.make_server(str(model), port=0, web_dir=tmp_path)


def test_packaged_assets_are_small_and_complete() -> None:
    web = Path(S.WEB_DIR)
    names = {p.relative_to(web).as_posix() for p in web.rglob("*") if p.is_file()}
    for need in (
        "index.html",
        "sw.js",
        "app.css",
        "app.js.gz",
        "litert/litert_wasm_internal.wasm.gz",
    ):
        assert need in names
    total = sum(p.stat().st_size for p in web.rglob("*") if p.is_file())
    assert total < 8 * 1024 * 1024, total


def test_connection_cap(server: S.DermServer) -> None:
    """Slots full of idle connections: a new one is served, the oldest idle one closed for it."""
    idle = [
        socket.create_connection(server.server_address[:2], timeout=5)
        for _ in range(S.MAX_PER_CLIENT)
    ]
    try:
        time.sleep(0.3)
        with socket.create_connection(server.server_address[:2], timeout=5) as extra:
            extra.sendall(
                b"GET /card.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            assert extra.recv(12) == b"HTTP/1.1 200"
        idle[0].settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert idle[0].recv(100) == b""  # closed without an answer
    finally:
        for s in idle:
            s.close()

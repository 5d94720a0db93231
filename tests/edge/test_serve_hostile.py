"""The phone server under hostile clients, on loopback, bounded in time and count: slow and idle
sockets (plain and TLS) cannot keep normal requests out, stalled headers meet a deadline, one
address cannot take every slot, and a Host the server does not answer to (DNS rebinding) is refused."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dermedge.edge import serve as S

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "tests" / "assets" / "tiny_int8.tflite"
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="tests/assets/tiny_int8.tflite missing")


@contextlib.contextmanager
def running(srv: S.DermServer) -> Iterator[S.DermServer]:
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def timed_get(
    srv: S.DermServer, path: str = "/card.json", host: str | None = None
) -> tuple[int, float]:
    """(status, seconds) of one GET on a new connection."""
    addr, port = srv.server_address[:2]
    t0 = time.perf_counter()
    if srv.ssl_context is not None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            addr, port, timeout=10, context=ctx
        )
    else:
        conn = http.client.HTTPConnection(addr, port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        r.read()
        return r.status, time.perf_counter() - t0
    finally:
        conn.close()


def open_sockets(srv: S.DermServer, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        with contextlib.suppress(OSError):
            out.append(socket.create_connection(srv.server_address[:2], timeout=5))
    return out


def gets_while(srv: S.DermServer, n: int = 20) -> list[float]:
    """Seconds of n sequential GETs, each of which must succeed."""
    times = []
    for _ in range(n):
        status, dt = timed_get(srv)
        assert status == 200
        times.append(dt)
    return times


def test_normal_gets_are_served_while_100_sockets_trickle_headers(tmp_path: Path) -> None:
    with running(S.make_server(str(MODEL), "127.0.0.1", 0)) as srv:
        slow = open_sockets(srv, 100)
        stop = threading.Event()

        def trickle() -> None:  # one header byte per socket per 0.5 s, as a slowloris client
            for s in slow:
                with contextlib.suppress(OSError):
                    s.sendall(b"GET / HTTP/1.1\r\nX-a: ")
            while not stop.is_set():
                for s in slow:
                    with contextlib.suppress(OSError):
                        s.sendall(b"a")
                stop.wait(0.5)

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            time.sleep(0.5)
            times = gets_while(srv)
        finally:
            stop.set()
            t.join(5)
            for s in slow:
                s.close()
    print(
        f"normal GET during 100 trickling sockets: median {statistics.median(times) * 1000:.1f} ms"
    )
    assert statistics.median(times) < 1.0


def test_normal_gets_are_served_while_100_tls_sockets_idle(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with running(S.make_server(str(MODEL), "127.0.0.1", 0, self_signed=True)) as srv:
        idle = open_sockets(srv, 100)  # TCP connected, no TLS ClientHello ever sent
        try:
            time.sleep(0.5)
            times = gets_while(srv)
        finally:
            for s in idle:
                s.close()
    print(
        f"normal HTTPS GET during 100 idle sockets: median {statistics.median(times) * 1000:.1f} ms"
    )
    assert statistics.median(times) < 1.0


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closes the socket within `seconds` (whatever it sends first)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            if s.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def test_stalled_headers_meet_a_deadline(monkeypatch) -> None:
    monkeypatch.setattr(S, "HEADER_DEADLINE_S", 1.0)
    with running(S.make_server(str(MODEL), "127.0.0.1", 0)) as srv:
        with socket.create_connection(srv.server_address[:2], timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nX-a: ")  # and nothing more
            t0 = time.monotonic()
            assert _closed_within(s, 5.0)
            assert time.monotonic() - t0 < 3.0
        with socket.create_connection(srv.server_address[:2], timeout=5) as s:  # idle keep-alive
            s.sendall(b"GET /card.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert s.recv(12).startswith(b"HTTP/1.1 200")
            assert _closed_within(s, 8.0)  # the rest of the answer, then the idle close
        assert timed_get(srv)[0] == 200


def test_one_address_cannot_hold_every_slot() -> None:
    with running(S.make_server(str(MODEL), "127.0.0.1", 0)) as srv:
        socks = open_sockets(srv, S.MAX_PER_CLIENT + 5)
        try:
            assert _closed_within(socks[0], 3.0)  # the oldest idle ones make room
            assert not _closed_within(socks[-1], 0.3)  # the newest still stands
            assert timed_get(srv)[0] == 200
        finally:
            for s in socks:
                s.close()


def test_host_header_must_name_this_server() -> None:
    with running(S.make_server(str(MODEL), "127.0.0.1", 0)) as srv:
        port = srv.server_address[1]
        assert timed_get(srv, host=f"attacker.example:{port}")[0] == 421
        assert timed_get(srv, host="rebind.attacker.example")[0] == 421
        for ok in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            "localhost",
            f"[::1]:{port}",
            f"{socket.gethostname()}:{port}",
        ):
            assert timed_get(srv, host=ok)[0] == 200, ok

"""The phone server under hostile clients, on loopback, bounded in time and count: slow and idle
sockets (plain and TLS) and slow readers from several addresses cannot keep normal requests out,
stalled headers and stalled reads meet a deadline, one address cannot take every slot, a Host the
server does not answer to (DNS rebinding) is refused, and a bad model dropped into the served
folder (damaged, crashing the interpreter, a wrong card, too large) leaves the last good one served.
`--serve -v` logs each request and each reload in one line."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
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
            held = srv.connections()  # the evicted ones are gone, not stuck in their handshake
        finally:
            for s in idle:
                s.close()
    print(
        f"normal HTTPS GET during 100 idle sockets: median {statistics.median(times) * 1000:.1f} ms"
    )
    assert statistics.median(times) < 1.0
    assert held <= S.MAX_PER_CLIENT + 1


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


# ----------------------------------------------------------------------------- slow readers

DEFAULT_MODEL = REPO / "dermedge" / "models" / "default.tflite"  # 4 MB: more than socket buffers


def slow_readers(srv: S.DermServer, addresses: int, each: int) -> list[socket.socket]:
    """`addresses` x `each` connections from 127.0.0.2.. that ask for the model and read nothing."""
    host, port = srv.server_address[:2]
    socks = []
    for a in range(addresses):
        for _ in range(each):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window that fills fast
            s.settimeout(5)
            try:
                s.bind((f"127.0.0.{2 + a}", 0))
                s.connect((host, port))
                s.sendall(b"GET /model.tflite HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            except OSError:
                s.close()  # refused by the server: that is its right
                continue
            socks.append(s)
    for s in socks:  # each is answered or closed: the server has taken every one in
        with contextlib.suppress(OSError):
            s.recv(12)
    return socks


def outcomes_while(srv: S.DermServer, n: int, path: str = "/card.json") -> list[int | str]:
    """n sequential GETs on new connections: each status, or the name of the error it met."""
    out: list[int | str] = []
    for _ in range(n):
        try:
            out.append(timed_get(srv, path)[0])
        except (OSError, http.client.HTTPException) as e:
            out.append(type(e).__name__)
    return out


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="dermedge/models/default.tflite missing")
@pytest.mark.parametrize("addresses,each", [(4, 16), (2, 32), (8, 16)])
def test_new_clients_are_served_under_slow_model_readers(addresses: int, each: int) -> None:
    """64 slow readers from 4 or 2 addresses, and 128 from 8 (the reserve keeps slots free)."""
    with running(S.make_server(str(DEFAULT_MODEL), "127.0.0.1", 0)) as srv:
        socks = slow_readers(srv, addresses, each)
        try:
            time.sleep(0.5)
            held = srv.connections()
            statuses = outcomes_while(srv, 10)
            statuses += outcomes_while(srv, 2, "/model.tflite")  # a whole model, too
            times = gets_while(srv, 10)
        finally:
            for s in socks:
                s.close()
    print(
        f"{addresses * each} slow readers from {addresses} addresses: {held} held a slot; normal "
        f"GETs median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms"
    )
    assert statuses == [200] * 12
    assert statistics.median(times) < 1.0
    assert held <= min(addresses * each, addresses * S.MAX_PER_CLIENT, S.MAX_CONNECTIONS)


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="dermedge/models/default.tflite missing")
def test_a_reader_that_takes_nothing_is_dropped(monkeypatch) -> None:
    monkeypatch.setattr(S, "WRITE_STALL_S", 1.0)
    with running(S.make_server(str(DEFAULT_MODEL), "127.0.0.1", 0)) as srv:
        (s,) = slow_readers(srv, 1, 1)
        with s:
            time.sleep(0.3)
            assert srv.connections() == 1
            deadline = time.monotonic() + 5
            while srv.connections() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert srv.connections() == 0  # its slot is free again


# ----------------------------------------------------------------------------- served folder


def _one_byte(blob: bytes, at: int, value: int) -> bytes:
    out = bytearray(blob)
    out[at] = value
    return bytes(out)


def _classes_null(blob: bytes) -> bytes:
    """The embedded card edited by hand to `"classes": null` (same length), then sealed again:
    what embed_card refuses to write, an attacker writes anyway."""
    from dermedge.edge.card import seal

    start = blob.index(b'"classes": [')
    end = blob.index(b"]", start) + 1
    edited = b'"classes": null'.ljust(end - start)
    return seal(blob[:start] + edited + blob[end:])


NOCARD = ASSETS / "tiny_fp32_nocard.tflite"  # its card in a sidecar: no digest guards the bytes
ATTACKS = {
    # the root offset: the flatbuffer walk read a negative number (a TypeError, not a refusal)
    "byte 0 = 0xff": lambda blob: _one_byte(blob, 0, 0xFF),
    # the first table's vtable: before the digest check failed closed, the interpreter died
    # with SIGSEGV and the server with it
    "byte 16 = 0x00": lambda blob: _one_byte(blob, 16, 0x00),
    # the same edit of a card-less model (card in a sidecar): still SIGSEGV in the interpreter
    "sidecar, byte 16 = 0x00": lambda blob: _one_byte(blob, 16, 0x00),
    "classes: null": _classes_null,
    "600 MB file": lambda blob: b"",  # these three are made by _attack
    "a FIFO": lambda blob: b"",  # opening it for reading would wait for a writer forever
    "a link to /dev/zero": lambda blob: b"",  # endless bytes
}


def _served_folder(tmp_path: Path, attack: str) -> tuple[Path, bytes]:
    """The model file a server will serve, for `attack`, and its good bytes (written there)."""
    model = tmp_path / "model.tflite"
    good = (NOCARD if attack.startswith("sidecar") else MODEL).read_bytes()
    model.write_bytes(good)
    if attack.startswith("sidecar"):
        model.with_name("model.tflite.json").write_text(json.dumps(S.load_card(MODEL)))
    return model, good


def _drop(model: Path, blob: bytes) -> None:
    """Replace the served model atomically, as a deployment would."""
    tmp = model.with_name("incoming.tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, model)


def _attack(model: Path, attack: str, good: bytes) -> None:
    """Drop the attack's file in place of the served model."""
    tmp = model.with_name("incoming.tmp")
    if attack == "600 MB file":
        with open(tmp, "wb") as f:
            f.truncate(600 * 1024 * 1024)  # sparse: no disk, no memory
    elif attack == "a FIFO":
        os.mkfifo(tmp)
    elif attack == "a link to /dev/zero":
        os.symlink("/dev/zero", tmp)
    else:
        tmp.write_bytes(ATTACKS[attack](good))
    os.replace(tmp, model)


def _bodies(srv: S.DermServer) -> dict[str, int | str | bytes]:
    """Every kind of request the page makes: the body of each, or what went wrong."""
    out: dict[str, int | str | bytes] = {}
    host, port = srv.server_address[:2]
    for path in ("/model.tflite", "/card.json", "/", "/sw.js", "/app.css"):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            out[path] = body if r.status == 200 else r.status
        except (OSError, http.client.HTTPException) as e:
            out[path] = type(e).__name__
        finally:
            conn.close()
    return out


@pytest.mark.skipif(not NOCARD.is_file(), reason="tests/assets/tiny_fp32_nocard.tflite missing")
@pytest.mark.parametrize("attack", ATTACKS)
def test_a_bad_model_dropped_in_keeps_the_last_good_one_served(
    tmp_path: Path, attack: str, capfd: pytest.CaptureFixture[str]
) -> None:
    model, good = _served_folder(tmp_path, attack)
    with running(S.make_server(str(model), "127.0.0.1", 0)) as srv:
        before = _bodies(srv)
        assert before["/model.tflite"] == good
        capfd.readouterr()
        _attack(model, attack, good)
        after = _bodies(srv)
        again = _bodies(srv)  # the refusal is remembered, not re-checked or re-logged
        err = capfd.readouterr().err
        assert after == before and again == before
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "not serving the new model.tflite" in lines[0], err
        assert srv.model.version in lines[0] and "Traceback" not in err
        _drop(model, (ASSETS / "tiny_fp32.tflite").read_bytes())  # a good one is taken again
        assert _bodies(srv)["/model.tflite"] == (ASSETS / "tiny_fp32.tflite").read_bytes()


@pytest.mark.skipif(not NOCARD.is_file(), reason="tests/assets/tiny_fp32_nocard.tflite missing")
@pytest.mark.parametrize("attack", ATTACKS)
def test_a_bad_model_at_start_is_a_one_line_refusal(tmp_path: Path, attack: str) -> None:
    model, good = _served_folder(tmp_path, attack)
    _attack(model, attack, good)
    with pytest.raises(S.ServeError) as e:
        S.make_server(str(model), "127.0.0.1", 0)
    assert "\n" not in str(e.value) and str(model) in str(e.value)
    print(f"{attack}: {e.value}")


# ----------------------------------------------------------------------------- --serve -v


def test_serve_verbose_logs_requests_and_reloads(tmp_path: Path) -> None:
    model = tmp_path / "model.tflite"
    model.write_bytes(MODEL.read_bytes())
    proc = subprocess.Popen(
        [sys.executable, "-m", "dermedge.edge", "--serve", "-v", "--port", "0", "-m", str(model)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[3]  # "dermedge phone page: URL  (model ..."
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/card.json")
        assert conn.getresponse().read()
        _drop(model, (ASSETS / "tiny_fp32.tflite").read_bytes())
        conn.request("GET", "/model.tflite")
        assert conn.getresponse().read() == (ASSETS / "tiny_fp32.tflite").read_bytes()
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    lines = err.splitlines()
    assert any('"GET /card.json HTTP/1.1" 200' in line for line in lines), err
    assert any('"GET /model.tflite HTTP/1.1" 200' in line for line in lines), err
    assert sum("now serving" in line for line in lines) == 1, err
    assert "Traceback" not in err

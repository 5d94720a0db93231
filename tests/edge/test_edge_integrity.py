"""Model integrity: the card's file digest refuses damaged or partly copied models before any
interpreter sees them, a graph that would allocate without bound is refused, `--serve` checks a
model like `--model` does and keeps serving the last good one, and outputs that are not one
probability are refused. All on the shipped tiny model and real interpreters."""

from __future__ import annotations

import http.client
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import rewrite_tflite

from dermedge.edge import serve as S
from dermedge.edge.card import check_digest, check_model_file, embed_card, read_card
from dermedge.edge.runtime import EdgeError, EdgeModel

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "dermedge" / "models" / "tiny.tflite"
DEFAULT = REPO / "dermedge" / "models" / "default.tflite"


def _flipped(blob: bytes, rng: random.Random, bits: int = 4) -> bytes:
    out = bytearray(blob)
    for _ in range(bits):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def test_shipped_models_match_their_digest() -> None:
    for path in (TINY, DEFAULT):
        assert check_digest(path.read_bytes()) is True, path
        assert len(read_card(path)["file_sha256"]) == 64


def test_one_changed_byte_anywhere_is_refused(tmp_path: Path) -> None:
    blob = TINY.read_bytes()
    for offset in (100, len(blob) // 3, 529813 % len(blob), len(blob) - 10):
        bad = bytearray(blob)
        bad[offset] = 0xA0 if bad[offset] != 0xA0 else 0x00
        path = tmp_path / f"bad{offset}.tflite"
        path.write_bytes(bad)
        with pytest.raises(EdgeError, match="damaged model file|corrupt|not a TFLite"):
            EdgeModel(path)


def test_forty_models_with_four_bit_flips_are_all_refused(tmp_path: Path) -> None:
    rng = random.Random(0)
    blob = TINY.read_bytes()
    loaded = []
    for k in range(40):
        path = tmp_path / f"flip{k}.tflite"
        path.write_bytes(_flipped(blob, rng))
        try:
            EdgeModel(path)
            loaded.append(k)
        except EdgeError:
            pass
    assert loaded == []


def test_truncated_copies_are_refused_with_one_line(tmp_path: Path) -> None:
    blob = TINY.read_bytes()
    for name, data in (("head", blob[: len(blob) // 2]), ("tail", blob[:-100]), ("empty", b"")):
        path = tmp_path / f"trunc_{name}.tflite"
        path.write_bytes(data)
        r = subprocess.run(
            [sys.executable, "-m", "dermedge.edge.cli", "-m", str(path), str(REPO / "README.md")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_graph_that_would_allocate_without_bound_is_refused(tmp_path: Path) -> None:
    """No digest to go by (a model made elsewhere): the graph is checked before LiteRT sees it."""
    card = {k: v for k, v in read_card(TINY).items() if k != "file_sha256"}

    def huge(fb, model):
        t = model.subgraphs[0].tensors[int(model.subgraphs[0].operators[0].outputs[0])]
        t.shape = np.asarray([1, 65536, 65536, 64], dtype=np.int32)
        model.metadata = [m for m in model.metadata if m.name != b"dermedge_card"]

    def bad_ref(fb, model):
        model.subgraphs[0].operators[0].inputs = np.asarray([10**6], dtype=np.int32)
        model.metadata = [m for m in model.metadata if m.name != b"dermedge_card"]

    for name, edit, why in (("huge", huge, "would take"), ("ref", bad_ref, "does not exist")):
        data = rewrite_tflite(TINY.read_bytes(), edit)
        with pytest.raises(ValueError, match=why):
            check_model_file(data)
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(data + b"")  # no card: contract and threshold given by hand below
        with pytest.raises(EdgeError, match=why):
            from dermedge.data.contract import InputContract

            EdgeModel(path, contract=InputContract(size=128, crop="squash"), threshold=0.5)
    assert card  # the shipped card itself is intact


def test_outputs_that_are_not_one_probability_are_refused(tmp_path: Path) -> None:
    """A model whose output is many values per image (its 64 features), or one unbounded float
    (one feature), gives no P(malignant)."""
    card = {k: v for k, v in read_card(TINY).items() if k != "guard"}

    def features_out(fb, model):
        sg = model.subgraphs[0]
        sg.outputs = sg.outputs[1:]
        model.signatureDefs = []

    many = tmp_path / "many.tflite"
    many.write_bytes(embed_card(rewrite_tflite(TINY.read_bytes(), features_out), card))
    with pytest.raises(EdgeError, match="values per image|one probability|not one"):
        EdgeModel(many)


def _get(srv: S.DermServer, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_serve_checks_the_model_at_start_and_on_each_swap(tmp_path: Path) -> None:
    blob = TINY.read_bytes()
    bad = tmp_path / "trunc_end.tflite"
    bad.write_bytes(blob[:-64])
    with pytest.raises(S.ServeError, match="damaged|corrupt"):
        S.make_server(str(bad), "127.0.0.1", 0)
    model = tmp_path / "model.tflite"
    model.write_bytes(blob)
    srv = S.make_server(str(model), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        v1 = srv.model.version
        for partial in (
            blob[: len(blob) - 5000],
            blob[:-1] + b"\x00",
            _flipped(blob, random.Random(1)),
        ):
            model.write_bytes(partial)  # a copy caught half-way, or damaged
            time.sleep(0.02)
            for path in ("/", "/card.json", "/model.tflite"):
                status, body = _get(srv, path)
                assert status == 200, (path, status)
            assert _get(srv, "/model.tflite")[1] == blob and srv.model.version == v1
        model.write_bytes(embed_card(blob, {**read_card(TINY), "name": "new"}))
        time.sleep(0.02)
        assert _get(srv, "/model.tflite")[0] == 200 and srv.model.version != v1
        assert srv.model.card["name"] == "new"
    finally:
        srv.shutdown()
        srv.server_close()

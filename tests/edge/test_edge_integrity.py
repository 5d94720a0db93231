"""Model integrity: the card's file digest refuses damaged or partly copied models before any
interpreter sees them, and fails closed (a card whose digest cannot be read is refused unless
--allow-unsealed), a graph that would allocate without bound is refused, a model that fails when
run is refused in one line, `--serve` checks a model like `--model` does and keeps serving the
last good one, and outputs that are not one probability are refused. All on the shipped tiny
model and real interpreters."""

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
from click.testing import CliRunner
from dermedge_testing import rewrite_tflite

from dermedge.edge import serve as S
from dermedge.edge.card import (
    check_digest,
    check_model_file,
    embed_card,
    read_card,
    without_digest,
)
from dermedge.edge.runtime import EdgeError, EdgeModel

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "dermedge" / "models" / "tiny.tflite"
DEFAULT = REPO / "dermedge" / "models" / "default.tflite"
ASSETS = REPO / "tests" / "assets"


def _flipped(blob: bytes, rng: random.Random, bits: int = 4) -> bytes:
    out = bytearray(blob)
    for _ in range(bits):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def test_shipped_models_match_their_digest() -> None:
    """The bundled models and every test model with a card are sealed, so they keep loading
    now that a card without a readable digest is refused."""
    carded = [p for p in sorted(ASSETS.glob("*.tflite")) if "nocard" not in p.name]
    assert len(carded) >= 3
    for path in (TINY, DEFAULT, *carded):
        assert check_digest(path.read_bytes()) is True, path
        assert len(read_card(path)["file_sha256"]) == 64


def _cli(*args: str, module: str = "dermedge.edge.cli") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120
    )


def _one_line_refusal(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def _negated_last_layer(blob: bytes) -> bytes:
    """The attack: the last layer's int8 weights and int32 bias negated in place (P(malignant)
    becomes 1 - P: every decision inverted), and the card's digest key damaged so that the
    digest is no longer found. The card itself still reads as valid JSON."""
    fb = pytest.importorskip("ai_edge_litert.schema_py_generated")
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(blob, 0))
    sg = model.subgraphs[0]
    last_fc = [op for op in sg.operators if len(op.inputs) == 3][-1]
    out = bytearray(blob)
    for tensor, dtype in zip(last_fc.inputs[1:], (np.int8, np.int32), strict=True):
        data = bytes(np.asarray(model.buffers[sg.tensors[tensor].buffer].data, dtype=np.uint8))
        at = blob.find(data)
        assert at > 0 and blob.count(data) == 1
        negated = (-np.frombuffer(data, dtype).astype(np.int64)).clip(np.iinfo(dtype).min)
        out[at : at + len(data)] = negated.astype(dtype).tobytes()
    key = blob.find(b'{"file_sha256": "')
    out[key : key + 17] = b'{"file_sha2xx": "'
    return bytes(out)


def test_a_damaged_digest_key_fails_closed(tmp_path: Path, capfd) -> None:
    """Damaging the "file_sha256" key used to skip the check: the negated model loaded and
    inverted every decision. Now it is refused unless --allow-unsealed, which warns loudly."""
    model = tmp_path / "negated.tflite"
    model.write_bytes(_negated_last_layer(TINY.read_bytes()))
    assert check_digest(model.read_bytes()) is None  # no digest to be found any more
    for refuse in (lambda: EdgeModel(model), lambda: read_card(model)):
        with pytest.raises((EdgeError, ValueError), match="no readable file digest"):
            refuse()
    with pytest.raises(ValueError, match="--allow-unsealed"):
        check_model_file(model.read_bytes())
    capfd.readouterr()
    attacked = EdgeModel(model, allow_unsealed=True)
    assert "NOT SEALED" in capfd.readouterr().err and not attacked.sealed
    pixels = np.random.default_rng(0).integers(0, 256, (8, 128, 128, 3), dtype=np.uint8)
    honest = EdgeModel(TINY).predict(pixels)
    np.testing.assert_allclose(attacked.predict(pixels), 1 - honest, atol=0.02)  # the stakes
    shown = read_card(model, allow_unsealed=True)
    assert "file_sha256" not in shown and shown["name"] == read_card(TINY)["name"]

    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(pixels[0]).save(photo)
    assert "--allow-unsealed" in _one_line_refusal(_cli("-m", str(model), str(photo)))
    r = _cli("-m", str(model), "--allow-unsealed", str(photo))
    assert r.returncode == 0 and "NOT SEALED" in r.stderr, r.stderr
    from dermedge.cli import main

    runner = CliRunner()
    for args in (["card", str(model)], ["calibrate", str(model), "--data", ".", "--out", "x"]):
        r = runner.invoke(main, args)
        assert r.exit_code == 2 and "no readable file digest" in r.output, r.output
    r = runner.invoke(main, ["card", str(model), "--allow-unsealed"])
    assert r.exit_code == 0 and "NOT SEALED" in r.stderr and "simple-isic" in r.stdout


def test_a_sealed_model_without_subgraphs_is_refused_not_a_crash(tmp_path: Path) -> None:
    """Its root table's `subgraphs` entry cleared and the file sealed again (a digest proves no
    more than that the file is whole): LiteRT would end the process with a segfault."""
    import struct

    from dermedge.edge.card import seal

    blob = bytearray(TINY.read_bytes())
    (root,) = struct.unpack_from("<I", blob, 0)
    (back,) = struct.unpack_from("<i", blob, root)
    struct.pack_into("<H", blob, root - back + 4 + 2 * 2, 0)  # field 2: Model.subgraphs
    model = tmp_path / "empty.tflite"
    model.write_bytes(seal(bytes(blob)))
    assert check_digest(model.read_bytes()) is True
    assert "no subgraph" in _one_line_refusal(_cli("-m", str(model), str(REPO / "README.md")))


def test_a_tensor_name_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    """A card-less model (nothing to check it against) whose input tensor's name holds a byte
    that is not UTF-8: LiteRT's Python side raised UnicodeDecodeError from get_input_details."""
    from dermedge.data.contract import InputContract
    from dermedge.edge.card import model_io

    src = ASSETS / "tiny_fp32_nocard.tflite"
    blob = bytearray(src.read_bytes())
    name = model_io(src)["inputs"][0]["name"].encode()
    at = blob.find(name)
    assert at > 0 and blob.count(name) == 1
    blob[at] = 0xFF
    model = tmp_path / "name.tflite"
    model.write_bytes(bytes(blob))
    with pytest.raises(EdgeError, match="utf-8"):
        EdgeModel(model, contract=InputContract(size=64, crop="squash"), threshold=0.5)


def _gather_out_of_range(fb, model) -> None:
    """Append a GATHER with a constant index out of range after the output: the graph loads and
    allocates, and every invoke fails ("gather index out of bounds")."""
    sg = model.subgraphs[0]
    out = int(sg.outputs[0])
    mid = fb.TensorT()
    mid.name, mid.shape, mid.type, mid.buffer = (
        b"pre",
        sg.tensors[out].shape,
        sg.tensors[out].type,
        0,
    )
    index_buffer = fb.BufferT()
    index_buffer.data = np.frombuffer(np.int32(7).tobytes(), np.uint8).copy()
    model.buffers.append(index_buffer)
    index = fb.TensorT()
    index.name, index.shape, index.type = b"index", np.asarray([1], np.int32), fb.TensorType.INT32
    index.buffer = len(model.buffers) - 1
    sg.tensors += [mid, index]
    for op in sg.operators:
        op.outputs = np.asarray([len(sg.tensors) - 2 if o == out else o for o in op.outputs])
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.GATHER
    code.version = 1
    model.operatorCodes.append(code)
    gather = fb.OperatorT()
    gather.opcodeIndex = len(model.operatorCodes) - 1
    gather.inputs = np.asarray([len(sg.tensors) - 2, len(sg.tensors) - 1], np.int32)
    gather.outputs = np.asarray([out], np.int32)
    gather.builtinOptionsType = fb.BuiltinOptions.GatherOptions
    gather.builtinOptions = fb.GatherOptionsT()
    gather.builtinOptions.axis = 1
    sg.operators.append(gather)


def test_a_model_that_fails_when_run_is_refused_in_one_line(tmp_path: Path) -> None:
    """It used to load and then end the first classification in a RuntimeError traceback."""
    src = ASSETS / "tiny_fp32.tflite"
    model = tmp_path / "fails.tflite"
    card = without_digest(read_card(src))
    model.write_bytes(embed_card(rewrite_tflite(src.read_bytes(), _gather_out_of_range), card))
    with pytest.raises(EdgeError, match="failed when run: gather index out of bounds"):
        EdgeModel(model)
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (150, 90, 80)).save(photo)
    assert "failed when run" in _one_line_refusal(_cli("-m", str(model), str(photo)))
    r = _cli("calibrate", str(model), "--data", str(tmp_path), "--out", str(tmp_path / "o.tflite"),
             module="dermedge.cli")  # fmt: skip
    assert "failed when run" in _one_line_refusal(r)
    with pytest.raises(S.ServeError, match="failed when run"):
        S.make_server(str(model), "127.0.0.1", 0)


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


def test_a_damaged_card_less_model_is_refused_in_one_line(tmp_path: Path) -> None:
    """No digest vouches for a card-less file: edited at byte 16 (an edit that once killed the
    interpreter with SIGSEGV) it is refused in one line by the graph check; the intact file still
    classifies."""
    good = (ASSETS / "tiny_fp32_nocard.tflite").read_bytes()
    bad = tmp_path / "crash.tflite"
    blob = bytearray(good)
    blob[16] = 0x00
    bad.write_bytes(bytes(blob))
    photo = sorted((REPO.parent / "shared" / "data" / "isic-mvb" / "test" / "benign").glob("*.jpg"))
    if not photo:
        pytest.skip("isic-mvb not found beside the checkout")
    flags = ["--crop", "squash", "--threshold", "0.5", str(photo[0])]
    cmd = [sys.executable, "-m", "dermedge.edge.cli", "--model"]
    r = subprocess.run([*cmd, str(bad), *flags], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "crashed" in r.stderr or "Error:" in r.stderr
    assert len([x for x in r.stderr.splitlines() if x.strip()]) <= 2
    good_path = tmp_path / "good.tflite"
    good_path.write_bytes(good)
    r = subprocess.run([*cmd, str(good_path), *flags], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "1 images:" in r.stdout, r.stderr

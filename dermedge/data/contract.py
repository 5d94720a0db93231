"""The one preprocessing contract: how a lesion photo becomes the model's uint8 input.

Training, calibration, evaluation and the edge runner all call `preprocess` (or `load_rgb` +
`preprocess`), so a photo becomes the same numbers everywhere. The contract is stored in every
model card; normalization to the network's range happens *inside* the model.
TensorFlow-free on purpose: the edge install must not need it.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

CROPS = ("squash", "center", "fov")


class ImageError(ValueError):
    """An input that is not a usable image; the message is the one-line reason."""


@dataclass(frozen=True)
class InputContract:
    """What the model expects: RGB uint8 pixels of `size`x`size`, made by `crop` then `resize`.

    `crop` is "squash" (whole frame resized, aspect not kept - how the ISIC/Kaggle sets were made),
    "center" (largest centred square) or "fov" (a dermatoscope's circular field of view, found
    from the dark vignette, falling back to the centre square). `mean`/`std` document the
    normalization the model applies inside itself: (x - mean) / std.
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
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; expected one of {', '.join(CROPS)}")
        if self.resize != "bilinear":
            raise ValueError(f"unsupported resize {self.resize!r}; only 'bilinear'")
        if not 16 <= int(self.size) <= 2048:
            raise ValueError(f"input size {self.size} out of range 16..2048")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in model cards."""
        d = asdict(self)
        d["value_range"] = list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputContract:
        """Rebuild from a card's `input` entry, ignoring keys this version does not know."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "value_range" in known:
            known["value_range"] = tuple(known["value_range"])
        return cls(**known)


def _to_8bit_rgb(img: Image.Image, alpha: str = "composite-black") -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, YCbCr...) to 8-bit RGB."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
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


def load_rgb(source: str | os.PathLike[str] | bytes | Image.Image) -> Image.Image:
    """Decode a file, bytes or PIL image to 8-bit RGB with EXIF orientation applied.

    Raises ImageError with a one-line reason for empty, truncated, corrupt or non-image input.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        try:
            if isinstance(source, bytes):
                if not source:
                    raise ImageError("empty file (0 bytes)")
                img = Image.open(io.BytesIO(source))
            else:
                if os.path.getsize(source) == 0:
                    raise ImageError("empty file (0 bytes)")
                img = Image.open(source)
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
        img = ImageOps.exif_transpose(img) or img
    return _to_8bit_rgb(img)


def find_fov_box(rgb: np.ndarray, dark: int = 30) -> tuple[int, int, int, int] | None:
    """Bounding square of a dermatoscope's bright circular field of view, or None if no vignette.

    Rows/columns with more than 2% of pixels brighter than `dark` belong to the field; a frame
    without a dark border (no vignette) returns None so callers fall back to the centre square.
    """
    gray = rgb.mean(axis=2) if rgb.ndim == 3 else rgb.astype(np.float32)
    h, w = gray.shape
    bright = gray > dark
    cols = np.flatnonzero(bright.mean(axis=0) > 0.02)
    rows = np.flatnonzero(bright.mean(axis=1) > 0.02)
    if cols.size == 0 or rows.size == 0:
        return None
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    if (x1 - x0) > 0.97 * w and (y1 - y0) > 0.97 * h:
        return None  # no vignette to remove
    side = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    side = min(side, w, h)
    left = int(np.clip(cx - side // 2, 0, w - side))
    top = int(np.clip(cy - side // 2, 0, h - side))
    if side < 0.25 * min(w, h):
        return None
    return left, top, left + side, top + side


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
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))

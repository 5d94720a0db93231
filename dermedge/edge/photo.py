"""Quality warnings for photos given as files, without OpenCV (image mode must start fast).

The sharpness is the camera gate's (`dermedge.edge.quality.measure`: variance of the Laplacian
inside the field of view, on a 256x256 area-resized copy), computed with Pillow and numpy; a test
holds the two within a few percent on real photos. A flagged photo is still classified.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

# the camera gate (dermedge.edge.quality) takes these from here
ANALYSIS = 256  # side of the square image the measures are taken on
DARK = 25  # luma at or below: vignette / underexposed
MIN_SHARPNESS = 5.0  # variance of the Laplacian inside the field of view
MIN_CONTRAST = 3.0  # luma standard deviation; below it a frame or photo is blank
BLANK = "blank or uniform photo: nothing to assess"


def blank_reason(pixels: np.ndarray) -> str | None:
    """BLANK when the model input (contract pixels) is one flat colour (black, white, skin tone,
    a transparent PNG): no decision for it, as the camera gate gives none for a blank frame."""
    x = np.asarray(pixels, dtype=np.float64).reshape(-1, 3)
    luma = x @ np.array([0.299, 0.587, 0.114])
    return BLANK if x.size == 0 or float(luma.std()) < MIN_CONTRAST else None


def sharpness(img: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian of the luma inside the field of view (not vignette)."""
    # OpenCV's INTER_AREA: area averaging when shrinking, bilinear when enlarging
    shrink = min(img.size) >= ANALYSIS
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    small = img.convert("RGB").resize((ANALYSIS, ANALYSIS), method)
    luma_img = small.convert("L")
    field = luma_img.point(lambda v: 255 if v > DARK else 0).filter(ImageFilter.MinFilter(9))
    luma = np.asarray(luma_img, dtype=np.float32)
    pad = np.pad(luma, 1, mode="reflect")
    lap = pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:] - 4 * luma
    inner = np.asarray(field) > 0
    return float(lap[inner].var()) if inner.sum() > 64 else 0.0


def photo_warning(img: Image.Image, input_size: int) -> str | None:
    """Why a photo may give a less reliable result, else None: smaller than 3/4 of the model's
    input side, or blurred. The shipped default refers 85% of melanomas in 100x75 thumbnails."""
    w, h = img.size
    if min(w, h) < 0.75 * input_size:
        return f"low resolution ({w}x{h}): a less reliable result"
    if sharpness(img) < MIN_SHARPNESS:
        return "blurred: a less reliable result"
    return None

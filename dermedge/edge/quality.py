"""Frame quality gate for camera input: sharpness, exposure and glare, checked before inference.

Measures are taken on the contract's crop resized to a fixed `ANALYSIS` size, so thresholds do
not depend on the camera's resolution. Pixels darker than `DARK` count as outside the field of
view (a dermatoscope's vignette) and are left out of the sharpness and glare measures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from dermedge.edge.photo import (  # shared with the file-photo check
    ANALYSIS,
    DARK,
    MIN_CONTRAST,
    MIN_SHARPNESS,
)

CLIPPED = 250  # luma at or above: clipped highlight
SIGNATURE = 24  # side of the thumbnail used to detect a change of scene


@dataclass(frozen=True)
class Gate:
    """Pass limits; a frame failing any is not classified.

    Set on 300 isic-mvb photos shown as 480 px frames: 99% pass (the rest show real specular
    glare); Gaussian blur of sigma 2 px (at 224 px) fails ~97%, a 31 px motion smear ~78%.
    """

    min_sharpness: float = MIN_SHARPNESS  # variance of the Laplacian inside the field of view
    max_dark: float = 0.6  # fraction of the crop at or below DARK
    min_brightness: float = 60.0  # mean luma inside the field of view
    max_bright: float = 0.25  # fraction of the crop clipped bright
    max_glare: float = 0.10  # fraction of the field that is bright and colourless (specular)
    min_contrast: float = MIN_CONTRAST  # luma standard deviation; below it the frame is blank


@dataclass(frozen=True)
class Quality:
    """A frame's measures and the first failed check ("hold still", "too dark"...), if any."""

    reason: str | None
    sharpness: float
    dark: float
    brightness: float
    bright: float
    glare: float
    contrast: float

    @property
    def ok(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, float | str | None]:
        """The measures and reason as a dict, floats rounded to 4 decimals."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _reason(q: dict[str, float], gate: Gate) -> str | None:
    """The first check the measures fail, in the words the user sees, or None when all pass."""
    if q["dark"] > gate.max_dark or q["brightness"] < gate.min_brightness:
        return "too dark"
    if q["bright"] > gate.max_bright:
        return "too bright"
    if q["contrast"] < gate.min_contrast:
        return "blank frame"
    if q["glare"] > gate.max_glare:
        return "glare"
    if q["sharpness"] < gate.min_sharpness:
        return "hold still"
    return None


def analysis_image(rgb: np.ndarray) -> np.ndarray:
    """An RGB crop resized (area-averaged) to ANALYSIS x ANALYSIS, the measures' input."""
    if rgb.shape[:2] == (ANALYSIS, ANALYSIS):
        return rgb
    return cv2.resize(rgb, (ANALYSIS, ANALYSIS), interpolation=cv2.INTER_AREA)


def measure(rgb: np.ndarray, gate: Gate | None = None) -> Quality:
    """Measure an RGB uint8 crop (any size) and gate it."""
    small = analysis_image(rgb)
    luma = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    field = luma > DARK
    inner = cv2.erode(field.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    lap = cv2.Laplacian(luma, cv2.CV_32F)
    saturation = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[..., 1]
    specular = (luma >= 235) & (saturation < 40) & field
    n_field = max(int(field.sum()), 1)
    q = {
        "sharpness": float(lap[inner].var()) if inner.sum() > 64 else 0.0,
        "dark": float(1.0 - field.mean()),
        "brightness": float(luma[field].mean()) if field.any() else 0.0,
        "bright": float((luma >= CLIPPED).mean()),
        "glare": float(specular.sum() / n_field),
        "contrast": float(luma.std()),
    }
    return Quality(reason=_reason(q, gate or Gate()), **q)


def signature(rgb: np.ndarray) -> np.ndarray:
    """A tiny blurred colour thumbnail of an RGB crop, to tell one scene from another."""
    thumb = cv2.resize(analysis_image(rgb), (SIGNATURE, SIGNATURE), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(thumb, (3, 3), 0).astype(np.float32)


def scene_change(a: np.ndarray | None, b: np.ndarray, limit: float = 20.0) -> bool:
    """True when two signatures differ by more than `limit` (mean absolute 0..255 difference)."""
    return a is None or float(np.abs(a - b).mean()) > limit

"""dermedge.edge.photo: the OpenCV-free sharpness for files agrees with the camera gate's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from dermedge.edge import photo
from dermedge.edge.quality import ANALYSIS, DARK, Gate, measure


def test_constants_match_the_camera_gate() -> None:
    assert (ANALYSIS, DARK, Gate().min_sharpness) == (photo.ANALYSIS, photo.DARK, photo.MIN_SHARPNESS)


def test_sharpness_agrees_with_the_camera_gate_on_real_photos(isic_dir: Path) -> None:
    files = sorted(isic_dir.glob("test/*/*.jpg"))[::40]
    assert len(files) >= 10
    for f in files:
        img = Image.open(f).convert("RGB")
        for x in (img, img.filter(ImageFilter.GaussianBlur(2)), img.resize((640, 480))):
            ref, ours = measure(np.asarray(x)).sharpness, photo.sharpness(x)
            assert abs(ours - ref) <= 0.25 * ref, (f.name, x.size, ref, ours)
            assert (ours < photo.MIN_SHARPNESS) == (ref < Gate().min_sharpness), (f.name, ref, ours)

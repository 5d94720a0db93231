"""dermedge.edge.photo: the OpenCV-free sharpness for files agrees with the camera gate's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from dermedge.edge import photo
from dermedge.edge.quality import Gate, measure


def test_warnings_on_real_photos(isic_dir: Path) -> None:
    """A sharp photo gets none; its 100x75 thumbnail is low resolution; a heavy blur is blurred."""
    img = Image.open(sorted(isic_dir.glob("test/*/*.jpg"))[0]).convert("RGB")
    assert photo.photo_warning(img, 224) is None
    assert "low resolution (100x75)" in (photo.photo_warning(img.resize((100, 75)), 224) or "")
    assert "blurred" in (photo.photo_warning(img.filter(ImageFilter.GaussianBlur(12)), 224) or "")


def test_sharpness_agrees_with_the_camera_gate_on_real_photos(isic_dir: Path) -> None:
    files = sorted(isic_dir.glob("test/*/*.jpg"))[::40]
    assert len(files) >= 10
    for f in files:
        img = Image.open(f).convert("RGB")
        for x in (img, img.filter(ImageFilter.GaussianBlur(2)), img.resize((640, 480))):
            ref, ours = measure(np.asarray(x)).sharpness, photo.sharpness(x)
            assert abs(ours - ref) <= 0.25 * ref, (f.name, x.size, ref, ours)
            assert (ours < photo.MIN_SHARPNESS) == (ref < Gate().min_sharpness), (f.name, ref, ours)

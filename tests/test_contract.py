"""The preprocessing contract: one function, identical pixels everywhere, every input mode handled."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dermedge.data.contract import ImageError, InputContract, find_fov_box, load_rgb, preprocess
from dermedge.data.images import load_images


@pytest.fixture(scope="module")
def lesion(isic_dir):
    return sorted((isic_dir / "test" / "malignant").glob("*.jpg"))[0]


def test_training_and_edge_paths_give_identical_pixels(lesion, tmp_path):
    contract = InputContract(size=160)
    batch, kept, bad = load_images([str(lesion)], contract, cache_dir=tmp_path, progress=False)
    cached, _, _ = load_images([str(lesion)], contract, cache_dir=tmp_path, progress=False)
    from_bytes = preprocess(lesion.read_bytes(), contract)
    import cv2  # the camera path: an OpenCV BGR frame converted to RGB

    frame = cv2.cvtColor(cv2.imread(str(lesion)), cv2.COLOR_BGR2RGB)
    assert kept == [0] and bad == {}
    assert batch.dtype == np.uint8 and batch.shape == (1, 160, 160, 3)
    assert np.array_equal(batch[0], from_bytes)
    assert np.array_equal(cached[0], from_bytes)
    # libjpeg in OpenCV and Pillow may round IDCT differently: allow 1-2 levels, not more
    assert np.abs(preprocess(frame, contract).astype(int) - from_bytes.astype(int)).max() <= 3


def test_contract_round_trips_through_card_dict():
    c = InputContract(size=96, crop="fov", mean=127.5, std=127.5)
    assert InputContract.from_dict({**c.to_dict(), "future_key": 1}) == c
    with pytest.raises(ValueError, match="unknown crop"):
        InputContract(crop="zoom")


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "YCbCr"])
def test_every_mode_becomes_8bit_rgb(lesion, mode):
    rgb = Image.open(lesion).convert("RGB")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
        assert img.mode.startswith("I;16")
    else:
        img = rgb.convert(mode)
    out = preprocess(img, InputContract(size=64))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out.max() > 100  # not blacked out or clipped to nothing
    if mode == "I;16":  # 16-bit is scaled down, not clipped at 255
        ref = preprocess(rgb.convert("L"), InputContract(size=64))
        assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_rgba_is_composited_on_black(lesion):
    rgba = Image.open(lesion).convert("RGBA")
    rgba.putalpha(0)
    assert preprocess(rgba, InputContract(size=32)).max() == 0


def test_exif_orientation_is_applied(lesion):
    img = Image.open(lesion).convert("RGB").crop((0, 0, 224, 112))  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert load_rgb(buf.getvalue()).size == (112, 224)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "empty"),
        (b"hello, not an image", "not an image"),
        ("truncate", "corrupt or truncated"),
    ],
)
def test_bad_inputs_raise_one_line_reasons(lesion, payload, reason):
    if payload == "truncate":
        payload = lesion.read_bytes()[:2000]
    with pytest.raises(ImageError, match=reason) as e:
        load_rgb(payload)
    assert "\n" not in str(e.value)


def test_fov_crop_finds_the_dermatoscope_circle(lesion):
    img = np.asarray(Image.open(lesion).convert("RGB").resize((200, 200)))
    frame = np.zeros((300, 400, 3), np.uint8)
    yy, xx = np.mgrid[:200, :200]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 <= 100**2
    frame[50:250, 120:320][disc] = img[disc]
    box = find_fov_box(frame)
    assert box is not None
    left, top, right, bottom = box
    assert abs(left - 120) <= 6 and abs(top - 50) <= 6 and abs(right - 320) <= 6
    assert find_fov_box(np.full((100, 100, 3), 180, np.uint8)) is None
    assert preprocess(frame, InputContract(size=64, crop="fov")).shape == (64, 64, 3)

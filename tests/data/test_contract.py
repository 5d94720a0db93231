"""The preprocessing contract: one function, identical pixels everywhere, every input mode handled."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dermedge.data.contract import (
    COLOR_CONSTANCY,
    ImageError,
    InputContract,
    add_margin,
    crop_box,
    find_fov_box,
    load_rgb,
    preprocess,
    shades_of_gray,
)
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
    disc = (yy - 99.5) ** 2 + (xx - 99.5) ** 2 <= 100**2
    frame[50:250, 120:320][disc] = img[disc]
    box = find_fov_box(frame)
    assert box is not None
    left, top, right, bottom = box  # the square inscribed in the circle: side 100 * sqrt(2)
    assert right - left == bottom - top and abs((right - left) - 141) <= 3
    assert abs((left + right) / 2 - 220) <= 1 and abs((top + bottom) / 2 - 150) <= 1
    assert find_fov_box(np.full((100, 100, 3), 180, np.uint8)) is None
    assert preprocess(frame, InputContract(size=64, crop="fov")).shape == (64, 64, 3)


def _shared_photo(data_dir, k: int) -> np.ndarray:
    files = sorted((data_dir / "derm7pt" / "images").glob("*/*.jpg"))
    files += sorted((data_dir / "isic-mvb" / "test").glob("*/*.jpg"))
    if not files:
        pytest.skip(f"no derm7pt / isic-mvb photos under {data_dir}")
    return np.asarray(Image.open(files[k * 37 % len(files)]).convert("RGB"))


def _dark_vignette(photo, w, h, cx, cy, r, rng):
    """The photo at w x h with everything outside the circle (cx, cy, r) near-black (0..12)."""
    out = np.asarray(Image.fromarray(photo).resize((w, h), Image.Resampling.BICUBIC)).copy()
    yy, xx = np.mgrid[:h, :w]
    outside = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 > r * r
    out[outside] = rng.integers(0, 13, (int(outside.sum()), 3), dtype=np.uint8)
    return out, outside


def test_fov_crop_removes_the_dark_corners_of_random_vignettes(data_dir):
    rng = np.random.default_rng(7)
    for k in range(12):
        w, h = [(400, 300), (384, 384), (320, 240), (300, 400)][k % 4]
        m = min(w, h)
        r = rng.uniform(0.35, 0.62) * m  # from well inside the frame to cut by its edges
        cx, cy = w / 2 + rng.uniform(-0.08, 0.08) * m, h / 2 + rng.uniform(-0.08, 0.08) * m
        frame, outside = _dark_vignette(_shared_photo(data_dir, k), w, h, cx, cy, r, rng)
        box = crop_box(Image.fromarray(frame), InputContract(crop="fov"))
        left, top, right, bottom = box
        side = right - left
        assert side == bottom - top and left >= 0 and right <= w and top >= 0 and bottom <= h
        dark = outside[top:bottom, left:right]
        c = max(2, side // 10)
        corners = [dark[:c, :c], dark[:c, -c:], dark[-c:, :c], dark[-c:, -c:]]
        assert max(float(q.mean()) for q in corners) <= 0.02, (k, box, (cx, cy, r))
        assert dark.mean() <= 0.005, (k, box)
        assert side >= 0.85 * min(np.sqrt(2) * r, m), (k, box, (cx, cy, r))  # not timid either
        was = find_fov_box_bounding(frame)
        if was is not None:  # the old bounding square kept the dark corners
            assert outside[was[1] : was[3], was[0] : was[2]].mean() > dark.mean()


def find_fov_box_bounding(rgb):
    """The old `crop="fov"` box: the bounding square of the bright field (dark corners kept)."""
    bright = rgb.mean(axis=2) > 30
    cols = np.flatnonzero(bright.mean(axis=0) > 0.02)
    rows = np.flatnonzero(bright.mean(axis=1) > 0.02)
    h, w = bright.shape
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    if (x1 - x0) > 0.97 * w and (y1 - y0) > 0.97 * h:
        return None
    side = min(max(x1 - x0, y1 - y0), w, h)
    left = int(np.clip((x0 + x1) // 2 - side // 2, 0, w - side))
    top = int(np.clip((y0 + y1) // 2 - side // 2, 0, h - side))
    return left, top, left + side, top + side


def test_fov_crop_falls_back_to_the_centre_square_without_a_vignette(data_dir):
    for k in range(4):
        photo = _shared_photo(data_dir, k)
        frame = np.asarray(Image.fromarray(photo).resize((400, 300), Image.Resampling.BICUBIC))
        assert find_fov_box(frame) is None, k
        assert crop_box(Image.fromarray(frame), InputContract(crop="fov")) == (50, 0, 350, 300)
    assert find_fov_box(np.zeros((64, 64, 3), np.uint8)) is None  # all dark: nothing to find


def test_color_constancy_contract_round_trips_and_old_cards_mean_none():
    c = InputContract(size=128, crop="fov", color_constancy="shades_of_gray", color_constancy_p=4.0)
    d = json.loads(json.dumps(c.to_dict()))  # as stored in a model card
    assert d["color_constancy"] == "shades_of_gray" and InputContract.from_dict(d) == c
    old = {k: v for k, v in d.items() if not k.startswith("color_constancy")}
    assert InputContract.from_dict(old).color_constancy == "none"
    with pytest.raises(ValueError, match="unknown color_constancy"):
        InputContract(color_constancy="grey_world")
    with pytest.raises(ValueError, match="color_constancy_p"):
        InputContract(color_constancy="shades_of_gray", color_constancy_p=0.5)
    assert set(COLOR_CONSTANCY) == {"none", "shades_of_gray"}


def test_margin_round_trips_and_a_contract_without_one_keeps_its_card_and_cache_key():
    c = InputContract(size=128, margin=0.2)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["margin"] == 0.2 and InputContract.from_dict(d) == c
    assert "margin" not in InputContract().to_dict()  # earlier cards and caches: same bytes
    assert InputContract.from_dict(InputContract().to_dict()).margin == 0.0
    for bad in (-0.1, 1.5, None, "wide"):
        with pytest.raises(ValueError, match="margin"):
            InputContract.from_dict({**d, "margin": bad})


def test_margin_shows_the_lesion_smaller_with_its_edge_pixels_around_it():
    """A dark disc filling the frame shrinks to (size / (size + 2 pad))^2 of its area, and the
    new border repeats the photo's edge pixels."""
    size, margin = 96, 0.25
    yy, xx = np.mgrid[:size, :size]
    photo = np.full((size, size, 3), (200, 150, 130), np.uint8)
    photo[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2] = (60, 30, 20)
    photo[:, 0] = (210, 160, 140)  # a distinct left edge column, repeated into the margin
    framed = preprocess(photo, InputContract(size=size, margin=margin))
    assert np.array_equal(framed, add_margin(photo, margin))
    assert np.array_equal(add_margin(photo, 0.0), photo)
    dark = lambda a: float((a.mean(axis=2) < 120).mean())  # noqa: E731
    pad = 24  # floor(0.25 * 96 + 0.5)
    expect = dark(photo) * (size / (size + 2 * pad)) ** 2
    assert abs(dark(framed) - expect) < 0.02, (dark(photo), dark(framed), expect)
    assert np.abs(framed[size // 2, :8].astype(int) - (210, 160, 140)).max() <= 2


def test_shades_of_gray_removes_a_colour_cast(lesion):
    sog = InputContract(size=128, color_constancy="shades_of_gray")
    plain = preprocess(lesion.read_bytes(), InputContract(size=128))
    grey = np.full((40, 40, 3), 117, np.uint8)
    assert np.array_equal(shades_of_gray(grey), grey)  # a grey illuminant is left alone
    assert np.array_equal(shades_of_gray(np.zeros((8, 8, 3), np.uint8)), np.zeros((8, 8, 3)))
    cast = np.clip(plain * np.array([0.7, 0.95, 1.15]), 0, 255).round().astype(np.uint8)
    fixed, ref = preprocess(cast, sog), preprocess(plain, sog)
    assert np.abs(cast.astype(int) - plain).mean() > 8  # the cast is real...
    for out in (fixed, ref):  # the illuminant estimate of the result is grey
        e = ((out / 255.0) ** 6).mean(axis=(0, 1)) ** (1 / 6)
        assert e.max() / e.min() < 1.03, e
    scale = fixed.mean() / ref.mean()  # a cast changes the overall level only, not the colours
    assert np.abs(fixed - scale * ref.astype(float)).mean() < 2.0
    p = plain.astype(np.float64) / 255
    e = (p**6).mean(axis=(0, 1)) ** (1 / 6)
    gain = 1 / (e / np.linalg.norm(e) * np.sqrt(3))  # the formula, computed another way
    expect = np.minimum(255, np.floor(plain * gain + 0.5))
    assert np.abs(preprocess(plain, sog).astype(int) - expect).max() <= 1


def test_color_constancy_is_part_of_the_training_cache_key(lesion, tmp_path):
    sog = InputContract(size=64, color_constancy="shades_of_gray")
    a, _, _ = load_images([str(lesion)], InputContract(size=64), cache_dir=tmp_path, progress=False)
    b, _, _ = load_images([str(lesion)], sog, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("images-*.npz"))) == 2
    assert np.array_equal(b[0], preprocess(str(lesion), sog)) and not np.array_equal(a, b)


def test_camera_frames_get_colour_constancy_like_preprocess(data_dir):
    """A BGR camera frame through the edge session's own preparation equals `preprocess`."""
    cv2 = pytest.importorskip("cv2")
    camera = pytest.importorskip("dermedge.edge.camera")
    rng = np.random.default_rng(11)
    for crop in ("fov", "center", "squash"):
        margin = 0.2 if crop == "fov" else 0.0
        contract = InputContract(
            size=96, crop=crop, color_constancy="shades_of_gray", margin=margin
        )
        model = SimpleNamespace(contract=contract, threshold=0.5)
        source = SimpleNamespace(description="test frames")
        session = camera.Session(model, source, camera.SessionOptions(), emit=lambda e: None)
        rgb, _ = _dark_vignette(_shared_photo(data_dir, 5), 640, 480, 330, 236, 250, rng)
        prepared = session._prepare(1, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        pixels = prepared.pixels
        if pixels is None:  # gated: compare the model input it would have made
            pixels = camera.model_input(prepared.crop, model)
        assert np.array_equal(pixels, preprocess(rgb, contract)), crop
        assert not np.array_equal(
            pixels, preprocess(rgb, replace(contract, color_constancy="none"))
        )


def test_train_records_color_constancy_in_the_contract():
    pytest.importorskip("keras")
    from dermedge.train.cli import train
    from dermedge.train.models import input_contract
    from dermedge.train.trainer import TrainConfig

    c = input_contract("mobilenet_v2", 96, "fov", "shades_of_gray")
    assert c.color_constancy == "shades_of_gray" and c.crop == "fov" and c.mean == 127.5
    assert input_contract("simple_cnn", 96).color_constancy == "none"
    assert TrainConfig(data="x").color_constancy == "none"
    option = next(p for p in train.params if p.name == "color_constancy")
    assert tuple(option.type.choices) == COLOR_CONSTANCY and option.default == "none"
    assert input_contract("simple_cnn", 96, margin=0.2).margin == 0.2
    assert TrainConfig(data="x").margin == 0.0
    assert next(p for p in train.params if p.name == "margin").default == 0.0

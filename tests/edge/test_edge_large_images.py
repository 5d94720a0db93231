"""Large but legal images stay within a Raspberry Pi's memory: peak RSS of `edge-classify` on real
files (a 12000x12000 16-bit PNG, a 12000x12000 RGB PNG, a 54 MP JPEG of a real lesion photo) stays
under 300 MB; a JPEG is decoded at a reduced scale, a PNG over the limit is refused in one line."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from dermedge_testing import DATA, _need
from PIL import Image

from dermedge.data import contract as C

BUDGET_MB = 300


def _png(path: Path, w: int, h: int, bit16: bool, rgb: bool) -> Path:
    """A real PNG written row by row (no image of that size is ever held in memory here)."""
    ch, depth, ctype = (3 if rgb else 1), (16 if bit16 else 8), (2 if rgb else 0)
    row_bytes = w * ch * (2 if bit16 else 1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    z = zlib.compressobj(6)
    with open(path, "wb") as f:
        f.write(
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
        )
        data = [z.compress(b"\x00" + bytes([(y * 7) & 255]) * row_bytes) for y in range(h)]
        f.write(chunk(b"IDAT", b"".join(data) + z.flush()) + chunk(b"IEND", b""))
    return path


def _peak_rss_mb(*args: str) -> tuple[int, str, float]:
    """(exit code, stderr, peak RSS in MB) of `edge-classify ARGS` in a fresh child process."""
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "sys.stderr.write(r.stdout + r.stderr); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "dermedge.edge.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    code, kb = out.stdout.split()[-2:]
    return int(code), out.stderr, int(kb) / 1024


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("big")
    photo = sorted((_need(DATA / "isic-mvb") / "test" / "benign").glob("*.jpg"))[0]
    jpeg = d / "big.jpg"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from PIL import Image; "
            "Image.open(sys.argv[1]).convert('RGB').resize((9000, 6000)).save(sys.argv[2], quality=90)",
            str(photo),
            str(jpeg),
        ],
        check=True,
        timeout=120,
    )
    return {
        "png16": _png(d / "big16.png", 12000, 12000, True, False),
        "pngrgb": _png(d / "bigrgb.png", 12000, 12000, False, True),
        "jpeg": jpeg,
        "photo": photo,
    }


def test_peak_rss_stays_within_budget(big: dict[str, Path]) -> None:
    rss = {}
    for name in ("photo", "jpeg", "png16", "pngrgb"):
        code, err, rss[name] = _peak_rss_mb(str(big[name]))
        if name in ("png16", "pngrgb"):
            assert code == 1 and "image too large: 12000x12000" in err and "Traceback" not in err, (
                err
            )
        else:
            assert code == 0, err
    print("peak RSS MB:", {k: round(v) for k, v in rss.items()})
    assert max(rss.values()) < BUDGET_MB, rss


def test_a_huge_jpeg_is_decoded_at_a_reduced_scale(big: dict[str, Path]) -> None:
    img = C.load_rgb(big["jpeg"])
    assert img.size == (4500, 3000) and img.size[0] * img.size[1] <= C.MAX_DECODE_PIXELS
    x = C.preprocess(big["jpeg"])
    assert x.shape == (224, 224, 3) and x.std() > 5  # a lesion photo, not a blank


def test_images_within_the_limit_decode_as_before(tmp_path: Path) -> None:
    """16-bit, 'I' and float images converted block by block equal the whole-image formula."""
    rng = np.random.default_rng(0)
    a16 = rng.integers(0, 65536, (1300, 700), dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a16).save(p)
    want = np.clip(np.round(np.asarray(Image.open(p), dtype=np.float64) * (255 / 65535)), 0, 255)
    np.testing.assert_array_equal(np.asarray(C.load_rgb(p))[..., 0], want.astype(np.uint8))
    f01 = rng.random((300, 200)).astype(np.float32)  # a float TIFF in 0..1 is 0..1, not 0..255
    t = tmp_path / "f.tiff"
    Image.fromarray(f01).save(t)
    got = np.asarray(C.load_rgb(t))[..., 0]
    np.testing.assert_array_equal(
        got, np.clip(np.round(f01.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    )


def test_the_limit_holds_for_bytes_too(tmp_path: Path) -> None:
    """36 MP (over the 24 MP limit) given as bytes, as the phone server or a caller would."""
    data = _png(tmp_path / "b.png", 6000, 6000, False, True).read_bytes()
    with pytest.raises(C.ImageError, match="image too large: 6000x6000 = 36 MP"):
        C.load_rgb(data)


def _alpha_png(path: Path, w: int, h: int, ctype: int) -> Path:
    """A real 8-bit PNG with alpha (6 RGBA, 4 LA) or a palette with tRNS transparency (3),
    written row by row with varying colour and alpha."""
    ch = {3: 1, 4: 2, 6: 4}[ctype]

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    z = zlib.compressobj(6)
    with open(path, "wb") as f:
        f.write(
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0))
        )
        if ctype == 3:
            f.write(chunk(b"PLTE", bytes(range(256)) * 3) + chunk(b"tRNS", bytes(range(256))))
        pixel = [bytes([(y * 7) & 255, (y * 3) & 255, 200, (y * 5) & 255][:ch]) for y in range(256)]
        data = [z.compress(b"\x00" + pixel[y & 255] * w) for y in range(h)]
        f.write(chunk(b"IDAT", b"".join(data) + z.flush()) + chunk(b"IEND", b""))
    return path


def test_alpha_and_palette_pngs_within_the_limit_stay_within_budget(tmp_path: Path) -> None:
    """24 MP (the limit) RGBA, LA and transparent-palette PNGs used to peak at 530-560 MB:
    four full-size RGBA copies in the alpha composite, and a copy from exif_transpose."""
    rss = {}
    for name, ctype in (("rgba", 6), ("la", 4), ("palette", 3)):
        png = _alpha_png(tmp_path / f"{name}.png", 6000, 4000, ctype)
        code, err, rss[name] = _peak_rss_mb(str(png))
        assert code == 0 and "Traceback" not in err, err
    print("peak RSS MB:", {k: round(v) for k, v in rss.items()})
    assert max(rss.values()) < BUDGET_MB, rss


def test_strip_conversion_gives_the_whole_image_conversion(tmp_path: Path) -> None:
    """Alpha and palette images converted a strip at a time equal the one-piece conversion."""
    rng = np.random.default_rng(0)
    w, h = 700, 3 * (C._STRIP_PIXELS // 700) + 5  # three strips and a ragged one
    rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    pal = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "P")
    pal.putpalette(list(rng.integers(0, 256, 768)))
    pal.info["transparency"] = bytes(rng.integers(0, 256, 256, dtype=np.uint8))
    for img in (rgba, rgba.convert("LA"), pal):
        p = tmp_path / f"{img.mode}.png"
        img.save(p)
        with Image.open(p) as whole:
            want = np.asarray(C._to_8bit_rgb(whole))
        got = C.load_rgb(p)
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), want), img.mode

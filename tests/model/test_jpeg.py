"""model.jpeg: libjpeg-turbo's direct decode gives Pillow's pixels, reduced exactly as Pillow's draft, or declines."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model import jpeg
from model.data import DRAFT_MARGIN, ImageDecodeError, _reduce, decode_image, to_rgb

pytest.importorskip("simplejpeg")

ROOT = Path(__file__).parents[2]
CIFAR = sorted((ROOT / "tests" / "fixtures" / "cifar10").rglob("*.jpg"))


def pillow(data: bytes, fit: int | None = None) -> np.ndarray:
    """What decode_image gave before model.jpeg: Pillow alone."""
    img = Image.open(io.BytesIO(data))
    if fit is not None:
        _reduce(img, fit)
    img.load()
    return np.asarray(to_rgb(img))


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like image: a CIFAR fixture stretched to the size, with noise for fine detail."""
    base = Image.open(CIFAR[seed % len(CIFAR)]).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).normal(0, 12, (height, width, 3))
    return Image.fromarray((np.asarray(base) + noise).clip(0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **save)
    return buf.getvalue()


SAVES = [
    {"quality": 90},
    {"quality": 75, "subsampling": 0},  # 4:4:4
    {"quality": 60, "subsampling": 1},  # 4:2:2
    {"quality": 95, "progressive": True},
    {"quality": 50, "optimize": True},
]
SIZES = [(32, 32), (64, 64), (65, 64), (257, 191), (191, 257), (1023, 77), (300, 300), (517, 1030)]


@pytest.mark.parametrize("save", SAVES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_decodes_pillows_pixels_at_every_size_and_reduction(save):
    for i, (w, h) in enumerate(SIZES):
        data = jpeg_bytes(photo(w, h, i), **save)
        for fit in (None, 32, 64, 16):
            keep = None if fit is None else DRAFT_MARGIN * fit
            fast = jpeg.decode(data, keep, max_pixels=10**8)
            assert fast is not None, (w, h, fit)
            expected = pillow(data, fit)
            assert np.asarray(to_rgb(fast)).shape == expected.shape, (w, h, fit)
            assert np.array_equal(np.asarray(to_rgb(fast)), expected), (w, h, fit)


def test_greyscale_stays_greyscale_until_made_rgb():
    data = jpeg_bytes(photo(120, 90, 3).convert("L"))
    fast = jpeg.decode(data, None, max_pixels=10**8)
    assert fast is not None and fast.mode == "L"
    assert np.array_equal(np.asarray(decode_image(data)), pillow(data))
    assert np.array_equal(np.asarray(decode_image(data, fit=16)), pillow(data, 16))


def test_every_cifar_fixture_decodes_as_pillow_does():
    for f in CIFAR:
        data = f.read_bytes()
        assert np.array_equal(np.asarray(decode_image(data)), pillow(data)), f.name


@pytest.mark.parametrize(
    "data",
    [
        jpeg_bytes(photo(40, 30, 1).convert("CMYK")),  # Pillow's own CMYK conversion
        jpeg_bytes(photo(40, 30, 2))[:300],  # truncated: Pillow's error
        b"\xff\xd8 not really a jpeg",
        b"\x89PNG\r\n\x1a\n",
    ],
    ids=["cmyk", "truncated", "garbage", "png"],
)
def test_declines_what_only_pillow_handles(data):
    assert jpeg.decode(data, None, max_pixels=10**8) is None


def test_truncated_files_keep_pillows_error():
    with pytest.raises(ImageDecodeError, match="(?i)truncated"):
        decode_image(jpeg_bytes(photo(40, 30, 2))[:300])


def test_declines_images_over_the_pixel_limit():
    data = jpeg_bytes(photo(100, 100, 4))
    assert jpeg.decode(data, None, max_pixels=9_999) is None
    assert jpeg.decode(data, None, max_pixels=10_000) is not None


@pytest.mark.parametrize("w,h,keep", [(64, 64, 64), (65, 64, 64), (129, 400, 64), (512, 512, 64), (1024, 77, 32)])
def test_draft_scale_is_pillows(w, h, keep):
    img = Image.open(io.BytesIO(jpeg_bytes(photo(w, h, 5))))
    _reduce(img, keep // DRAFT_MARGIN)
    img.load()
    s = jpeg.draft_scale(w, h, keep)
    assert img.size == (-(-w // s), -(-h // s))

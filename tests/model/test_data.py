"""model.data preprocessing and decoding: any image shape in bounded time and memory, pixel-limit messages."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data import MAX_PIXELS, ImageDecodeError, declared_pixels, decode_image, fit_to_square, image_to_uint8

ROOT = Path(__file__).parents[2]
CIFAR = sorted((ROOT / "tests" / "fixtures" / "cifar10").rglob("*.jpg"))


def encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width×height with a tiny body (decoding stops at the size check)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def resize_then_crop(img: Image.Image, resolution: int) -> Image.Image:
    """The former preprocessing (whole image resized to short side R, then the centre crop): the reference."""
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def max_diff(img: Image.Image, resolution: int) -> int:
    a = np.asarray(fit_to_square(img, resolution), dtype=np.int16)
    b = np.asarray(resize_then_crop(img, resolution), dtype=np.int16)
    return int(np.abs(a - b).max())


@pytest.mark.parametrize("resolution", [16, 64])
def test_cifar_fixtures_preprocess_as_before(resolution):
    imgs = [decode_image(f.read_bytes()) for f in CIFAR[::10]]
    assert imgs and max(max_diff(img, resolution) for img in imgs) == 0


@pytest.mark.parametrize("size", [(256, 160), (160, 256), (50, 31), (31, 50), (640, 480), (300, 17), (97, 1001)])
def test_non_square_images_preprocess_as_before(size):
    mosaic = np.concatenate([np.asarray(decode_image(f.read_bytes())) for f in CIFAR[:8]], axis=1)  # 256×32
    img = Image.fromarray(mosaic).resize(size, Image.Resampling.BILINEAR)
    assert max(max_diff(img, r) for r in (32, 64)) <= 1  # the same filter taps; rounding may differ by 1


@pytest.mark.parametrize("size", [(1, 1), (1, 5000), (5000, 1), (3, 500), (32, 32), (33, 32)], ids=str)
def test_any_shape_gives_the_model_resolution(size):
    x = image_to_uint8(Image.new("RGB", size, (10, 200, 30)), 32)
    assert x.shape == (3, 32, 32) and x.dtype == np.uint8
    assert np.abs(x.astype(int) - np.array([10, 200, 30])[:, None, None]).max() <= 1


def test_centre_of_a_strip_is_what_is_kept():
    arr = np.zeros((3000, 1), np.uint8)
    arr[1400:1600] = 255  # a bright band in the middle of a 1×3000 strip
    x = image_to_uint8(Image.fromarray(arr), 32)
    assert x.min() == 255  # the centre square of the strip lies inside the band


MEASURE = """
import io, json, resource, sys, time
from PIL import Image
from model.data import decode_image, image_to_uint8
out = {}
for w, h in json.loads(sys.argv[1]):
    buf = io.BytesIO(); Image.new("L", (w, h), 128).save(buf, "PNG"); data = buf.getvalue()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    x = image_to_uint8(decode_image(data), 32)
    seconds = time.perf_counter() - t
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    out[f"{w}x{h}"] = {"bytes": len(data), "seconds": seconds, "peak_kib": grown, "shape": list(x.shape)}
print(json.dumps(out))
"""


def test_thin_images_preprocess_in_bounded_time_and_memory():
    """1×400,000 and 400,000×1 (856-byte PNGs) once grew a 32×12.8 M intermediate: 9 s, +2.3 GB RSS."""
    shapes = [[1, 400_000], [400_000, 1]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(shapes)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for shape, m in json.loads(done.stdout).items():
        assert m["shape"] == [3, 32, 32], shape
        assert m["peak_kib"] < 64 * 1024, f"{shape}: peak RSS grew by {m['peak_kib'] // 1024} MiB"
        assert m["seconds"] < 5, f"{shape}: {m['seconds']:.1f} s"  # generous: it takes milliseconds


@pytest.mark.parametrize("size", [(1, 1_000_000_000), (1_000_000_000, 1), (20_000, 20_000)], ids=str)
def test_pixel_limit_message_names_the_limit_asked_for(size):
    """Past Pillow's own bomb guard (2 × 64 M) the message still states the caller's limit."""
    with pytest.raises(ImageDecodeError) as e:
        decode_image(png_header_only(*size), max_pixels=4_000_000)
    assert str(e.value) == f"image too large: {size[0] * size[1]} pixels > 4000000"


@pytest.mark.parametrize("size", [(1, 4_001), (4_001, 1)], ids=str)
def test_thin_image_over_the_pixel_limit_is_refused_before_decoding(size):
    with pytest.raises(ImageDecodeError, match=rf"image too large: {size[0]}x{size[1]} pixels > 4000"):
        decode_image(encode(Image.new("L", size)), max_pixels=4_000)
    assert decode_image(encode(Image.new("L", size)), max_pixels=4_001).size == size


def test_limit_above_pillows_names_pillows():
    """A configured limit above Pillow's guard cannot be reached; the message says which limit applied."""
    pixels = 3 * MAX_PIXELS
    with pytest.raises(ImageDecodeError) as e:
        decode_image(png_header_only(1, pixels), max_pixels=10 * MAX_PIXELS)
    assert str(e.value) == f"image too large: {pixels} pixels > {2 * MAX_PIXELS}"


def _jpeg(w: int, h: int, fmt: str = "JPEG") -> bytes:
    """A photo-like w×h image: smooth colour fields with grain."""
    rng = np.random.default_rng(w * h)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    img = Image.fromarray(np.clip(np.asarray(coarse) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("size", [(256, 192), (1000, 640), (300, 1200)])
def test_a_large_jpeg_decoded_for_a_fit_is_reduced_yet_fits_like_the_full_decode(size):
    data = _jpeg(*size)
    reduced, full = decode_image(data, fit=32), decode_image(data)
    assert full.size == size and 64 <= min(reduced.size) < 128  # a DCT scale keeping the short side ≥ 2·32
    diff = np.abs(image_to_uint8(reduced, 32).astype(int) - image_to_uint8(full, 32))
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4


@pytest.mark.parametrize("size, fmt", [((120, 90), "JPEG"), ((400, 300), "PNG")])
def test_small_jpegs_and_other_formats_decode_in_full_for_a_fit(size, fmt):
    data = _jpeg(*size, fmt)
    assert np.array_equal(np.asarray(decode_image(data, fit=32)), np.asarray(decode_image(data)))


def test_declared_pixels_reads_the_header_without_decoding():
    assert declared_pixels(encode(Image.new("RGB", (30, 7)))) == 210
    assert declared_pixels(png_header_only(5_000, 4_000)) == 20_000_000  # no pixel data follows
    assert declared_pixels(png_header_only(50_000, 40_000)) == 2_000_000_000  # too large: the decode reports it
    assert declared_pixels(b"junk") is None and declared_pixels(b"") is None


def jpeg(size: tuple[int, int], **options) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", **options)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        jpeg((37, 19)),
        jpeg((64, 64), progressive=True),
        jpeg((5, 300), exif=b"Exif\0\0" + b"\0" * 2000, icc_profile=b"\0" * 5000),
        encode(Image.new("RGB", (123, 45))),
        encode(Image.new("LA", (3, 9))),
        *[p.read_bytes() for p in CIFAR[:20]],
    ],
    ids=lambda d: f"{len(d)}-bytes",
)
def test_declared_pixels_of_png_and_jpeg_headers_match_pillow(data):
    with Image.open(io.BytesIO(data)) as img:
        assert declared_pixels(data) == img.width * img.height


def test_declared_pixels_of_cut_or_odd_headers_falls_back_to_pillow():
    data = jpeg((40, 30))
    assert declared_pixels(data[:20]) is None  # cut before the frame header
    buf = io.BytesIO()
    Image.new("RGB", (7, 6)).save(buf, "BMP")
    assert declared_pixels(buf.getvalue()) == 42

"""JPEGs without Pillow's Python: the size from the header (`size`), and decoding through libjpeg-turbo
directly (simplejpeg, `decode`), pixel for pixel what Pillow decodes.

Pillow parses a JPEG's markers in Python before its C decoder runs: 90 of the 108 µs that a 32×32
CIFAR image takes. simplejpeg hands the whole file to libjpeg-turbo in one call (18 µs). Both use
libjpeg-turbo's default (accurate integer) IDCT and fancy upsampling, so the pixels are the same; the
tests compare them on every kind of JPEG this path accepts. Pillow's reduced decode for a fitted size
(`Image.draft`, DCT scales 1/2, 1/4, 1/8) is reproduced exactly: the same scale, asked for through
simplejpeg's minimum output size.

Whatever this path does not take (not a JPEG, CMYK and YCCK files, anything libjpeg-turbo warns
about, images over the pixel limit) returns None, and the caller decodes with Pillow as before, with
Pillow's errors.
"""

from __future__ import annotations

import struct

import numpy as np
from PIL import Image

try:
    import simplejpeg
except ImportError:  # an optional speed-up: Pillow decodes everything without it
    simplejpeg = None

_COLOURS = {"YCbCr": "RGB", "Gray": "GRAY"}  # colour spaces taken here → simplejpeg's output
_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # frame headers


def size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG's first frame header, walking the marker segments before it."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length: not expected here
            return None
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in _FRAMES:
            if length < 7 or i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if marker in (0xD9, 0xDA) or length < 2:  # end of image or scan before any frame header
            return None
        i += 2 + length
    return None


def draft_scale(width: int, height: int, keep: int) -> int:
    """The DCT scale (1, 2, 4 or 8) that Pillow's `draft` picks to keep the short side ≥ `keep`."""
    short = min(width, height)
    if short <= keep:
        return 1
    want_w, want_h = -(-width * keep // short), -(-height * keep // short)
    most = min(width // want_w, height // want_h)
    return next(s for s in (8, 4, 2, 1) if most >= s)


def decode(data: bytes, keep: int | None, max_pixels: int) -> Image.Image | None:
    """JPEG bytes → the image Pillow would decode (RGB or L), reduced as `draft` would for a short side
    of `keep`; None where Pillow must decode it (see the module's docstring)."""
    if simplejpeg is None or data[:2] != b"\xff\xd8":
        return None
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colour not in _COLOURS or width * height > min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels):
        return None
    scale = 1 if keep is None else draft_scale(width, height, keep)
    out_w, out_h = -(-width // scale), -(-height // scale)
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace=_COLOURS[colour], min_width=out_w, min_height=out_h, strict=True)
    except ValueError:
        return None
    if arr.shape[:2] != (out_h, out_w):  # a scale Pillow would not have picked
        return None
    return Image.fromarray(np.ascontiguousarray(arr[..., 0]) if colour == "Gray" else arr)

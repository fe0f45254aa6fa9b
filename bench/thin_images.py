"""Time and peak memory of decoding + preprocessing one image of any shape (issue #13 item 1), run by hand.

.venv/bin/python bench/thin_images.py 1 400000      # width height of a blank PNG
"""

from __future__ import annotations

import io
import resource
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.data import decode_image, image_to_uint8  # noqa: E402


def main() -> None:
    w, h = map(int, sys.argv[1:3])
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, "PNG")
    data = buf.getvalue()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    image_to_uint8(decode_image(data), 32)
    t = time.perf_counter() - t0
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print(f"{w}x{h} PNG ({len(data)} B): {t:.3f} s; peak RSS grew {grown:.0f} MB above its level after the imports")


if __name__ == "__main__":
    main()

"""Seeded image edits for the copy-detection and distortion-ranking benchmarks (`afv eval copies|ranking`).

An edit maps an RGB PIL image of any size to an edited RGB image (possibly of another size: crops and
rescales keep their new size; the benchmarks resize every image to the metric's resolution afterwards).
Each edit is an `Op` (one kind of edit at one strength) or a `Combined` of two edits.

| kind        | strength                                             | notes                                     |
|-------------|------------------------------------------------------|-------------------------------------------|
| jpeg        | JPEG quality (lower = stronger)                      | PIL encoder, default chroma subsampling    |
| upscale     | scale factor > 1                                     | bicubic                                   |
| downscale   | scale factor < 1                                     | bicubic, antialiased; the image stays small |
| crop        | kept fraction of each side (centre crop)             |                                           |
| crop-offset | kept fraction of each side, at a random corner       |                                           |
| hflip       | (none)                                               |                                           |
| brightness  | relative change, e.g. +0.3 = 30 % brighter           | `ImageEnhance.Brightness(1 + s)`          |
| contrast    | relative change, e.g. −0.3 = 30 % less contrast      | `ImageEnhance.Contrast(1 + s)`            |
| desaturate  | fraction of colour removed (1 = grayscale)           | `ImageEnhance.Color(1 − s)`               |
| blur        | "×" factor: Gaussian radius = s · short side / 64    | 2× = radius 1 px at 32 px                 |
| noise       | Gaussian sigma in 0–255 units                         | per pixel and channel, clipped            |
| rotate      | degrees (counter-clockwise)                          | reflect-padded: no black corners, no zoom |
| translate   | shift in px at 32 px (scaled to the short side)      | reflect fill, random diagonal direction   |
| text        | text height as a fraction of the short side          | PIL's default font, random word/position  |
| logo        | logo side as a fraction of the short side            | circle on a box, random colour/position   |

Randomness (noise, crop corner, shift direction, overlay text/colour/position) comes from
`edit_rng(seed, index, kind)`: the global seed, the image's index in its collection and the edit
*kind*, so results are reproducible and every strength of one family draws the same randomness
(the strengths of a family then differ in strength only, e.g. one noise pattern scaled by sigma).

`EDITS` is the copy-detection set (one strength each); `FAMILIES` lists, per kind, ≥ 3 strengths
ordered weak → strong for the ranking check.
"""

from __future__ import annotations

import io
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from model.data import to_rgb

T = TypeVar("T")
OpFn = Callable[[Image.Image, float, np.random.Generator], Image.Image]


def edit_rng(seed: int, index: int, kind: str) -> np.random.Generator:
    """The generator of one edit kind on one image: a function of (seed, image index, kind) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, zlib.crc32(kind.encode())]))


def _short(img: Image.Image) -> int:
    return min(img.size)


# -- the edit kinds -------------------------------------------------------------------------------


def _jpeg(img: Image.Image, quality: float, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _rescale(img: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    return img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC)


def _crop_box(img: Image.Image, frac: float, corner: tuple[int, int] | None) -> tuple[int, int, int, int]:
    w, h = img.size
    cw, ch = max(1, round(w * frac)), max(1, round(h * frac))
    fx, fy = (0.5, 0.5) if corner is None else corner
    left, top = round((w - cw) * fx), round((h - ch) * fy)
    return left, top, left + cw, top + ch


def _crop(img: Image.Image, frac: float, rng: np.random.Generator) -> Image.Image:
    return img.crop(_crop_box(img, frac, None))


def _crop_offset(img: Image.Image, frac: float, rng: np.random.Generator) -> Image.Image:
    corner = (int(rng.integers(0, 2)), int(rng.integers(0, 2)))
    return img.crop(_crop_box(img, frac, corner))


def _hflip(img: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _enhance(enhancer) -> OpFn:
    def op(img: Image.Image, s: float, rng: np.random.Generator) -> Image.Image:
        return enhancer(img).enhance(1.0 + s)

    return op


def _desaturate(img: Image.Image, s: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Color(img).enhance(1.0 - s)


def _blur(img: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    radius = factor * _short(img) / 64.0
    return img if radius <= 0 else img.filter(ImageFilter.GaussianBlur(radius))


def _noise(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    z = rng.standard_normal(a.shape, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(a + sigma * z), 0, 255).astype(np.uint8))


def _reflect_pad(img: Image.Image, pad: int) -> Image.Image:
    a = np.asarray(img)
    return Image.fromarray(np.pad(a, ((pad, pad), (pad, pad), (0, 0)), mode="reflect"))


def _rotate(img: Image.Image, degrees: float, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    pad = max(w, h) // 2 + 1  # enough for any angle: the rotated window stays inside the padding
    big = _reflect_pad(img, pad).rotate(degrees, Image.Resampling.BICUBIC)
    return big.crop((pad, pad, pad + w, pad + h))


def _translate(img: Image.Image, px32: float, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    shift = round(px32 * _short(img) / 32.0)
    if shift <= 0:
        return img
    dx, dy = (int(rng.choice([-1, 1])) * shift for _ in range(2))
    big = _reflect_pad(img, shift)
    return big.crop((shift - dx, shift - dy, shift - dx + w, shift - dy + h))


WORDS = ("SAMPLE", "COPY", "PHOTO", "DEMO", "NEWS", "2024", "LOL", "HELLO", "@user", "SALE")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _text(img: Image.Image, frac: float, rng: np.random.Generator) -> Image.Image:
    word = str(rng.choice(WORDS))
    fx, fy = rng.uniform(0.0, 1.0, 2)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    out = img.copy()
    draw = ImageDraw.Draw(out)
    font = _font(max(4, round(frac * _short(img))))
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    x = round(max(0, img.width - (right - left)) * fx) - left  # text wider than the image runs off its right
    y = round(max(0, img.height - (bottom - top)) * fy) - top
    draw.text(
        (x, y),
        word,
        fill=colour,
        font=font,
        stroke_width=max(1, round(frac * _short(img) / 12)),
        stroke_fill=(255 - colour[0], 255 - colour[1], 255 - colour[2]),
    )
    return out


def _logo(img: Image.Image, frac: float, rng: np.random.Generator) -> Image.Image:
    side = max(2, round(frac * _short(img)))
    fx, fy = rng.uniform(0.0, 1.0, 2)
    colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2)]
    x0, y0 = round((img.width - side) * fx), round((img.height - side) * fy)
    out = img.copy()
    draw = ImageDraw.Draw(out)
    draw.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=colours[0])
    inset = max(1, side // 6)
    draw.ellipse((x0 + inset, y0 + inset, x0 + side - 1 - inset, y0 + side - 1 - inset), fill=colours[1])
    return out


OPS: dict[str, OpFn] = {
    "jpeg": _jpeg,
    "upscale": _rescale,
    "downscale": _rescale,
    "crop": _crop,
    "crop-offset": _crop_offset,
    "hflip": _hflip,
    "brightness": _enhance(ImageEnhance.Brightness),
    "contrast": _enhance(ImageEnhance.Contrast),
    "desaturate": _desaturate,
    "blur": _blur,
    "noise": _noise,
    "rotate": _rotate,
    "translate": _translate,
    "text": _text,
    "logo": _logo,
}


# -- edits ----------------------------------------------------------------------------------------


class Edit(ABC):
    """An image edit: `edit(img, seed, index)` → edited RGB image, deterministic in (seed, index)."""

    @property
    @abstractmethod
    def name(self) -> str:
        """What the edit is called (unique in a registry)."""

    def __call__(self, img: Image.Image, seed: int = 0, index: int = 0) -> Image.Image:
        return to_rgb(self.apply(to_rgb(img), seed, index))

    @abstractmethod
    def apply(self, img: Image.Image, seed: int, index: int) -> Image.Image:
        """The edit itself, on an RGB image."""


@dataclass(frozen=True)
class Op(Edit):
    """One kind of edit (`OPS`) at one strength; `label` names it (default 'kind-strength')."""

    kind: str
    strength: float = 0.0
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in OPS:
            raise ValueError(f"unknown edit kind {self.kind!r}; choose one of {', '.join(OPS)}")

    @property
    def name(self) -> str:
        return self.label or f"{self.kind}-{self.strength:g}"

    def apply(self, img: Image.Image, seed: int, index: int) -> Image.Image:
        return OPS[self.kind](img, self.strength, edit_rng(seed, index, self.kind))


@dataclass(frozen=True)
class Combined(Edit):
    """`second` applied to the output of `first` (each with its own seeded randomness)."""

    first: Edit
    second: Edit

    @property
    def name(self) -> str:
        return f"{self.first.name}+{self.second.name}"

    def apply(self, img: Image.Image, seed: int, index: int) -> Image.Image:
        return self.second(self.first(img, seed, index), seed, index)


def _registry(*edits: Edit) -> dict[str, Edit]:
    return {e.name: e for e in edits}


_JPEG30, _CROP90 = Op("jpeg", 30, "jpeg-q30"), Op("crop-offset", 0.9, "crop-offcenter-90")
_BRIGHT30, _BLUR2 = Op("brightness", 0.3, "brightness+30"), Op("blur", 2, "blur-2x")

EDITS: dict[str, Edit] = _registry(
    Op("jpeg", 40, "jpeg-q40"),
    Op("jpeg", 20, "jpeg-q20"),
    Op("upscale", 2, "upscale-x2"),
    Op("upscale", 4, "upscale-x4"),
    Op("downscale", 0.5, "downscale-x0.5"),
    Op("crop", 0.9, "crop-center-90"),
    Op("crop-offset", 0.8, "crop-offcenter-80"),
    Op("hflip", 0, "hflip"),
    _BRIGHT30,
    Op("brightness", -0.3, "brightness-30"),
    Op("contrast", 0.3, "contrast+30"),
    Op("contrast", -0.3, "contrast-30"),
    Op("desaturate", 1.0, "grayscale"),
    _BLUR2,
    Op("noise", 10, "noise-10"),
    Op("rotate", 10, "rotate-10"),
    Op("translate", 3, "translate-3px"),
    Op("text", 0.3, "text"),
    Op("logo", 0.3, "logo"),
    Combined(_JPEG30, _CROP90),
    Combined(_BRIGHT30, _BLUR2),
)

FAMILY_STRENGTHS: dict[str, tuple[float, ...]] = {  # weak → strong
    "blur": (1, 2, 3, 4),
    "noise": (5, 10, 20, 40),
    "jpeg": (80, 50, 30, 15),
    "rotate": (2, 5, 10, 15),
    "translate": (1, 2, 3, 4),
    "brightness": (0.1, 0.2, 0.3, 0.45),
    "contrast": (-0.15, -0.3, -0.45, -0.6),
    "desaturate": (0.25, 0.5, 0.75, 1.0),
    "crop": (0.95, 0.9, 0.8, 0.7),
    "downscale": (0.75, 0.5, 0.35, 0.25),
    "text": (0.2, 0.3, 0.4, 0.5),
    "logo": (0.15, 0.25, 0.35, 0.5),
}
FAMILIES: dict[str, list[Edit]] = {k: [Op(k, s) for s in v] for k, v in FAMILY_STRENGTHS.items()}


def select(registry: dict[str, T], names: list[str] | None, what: str = "edit") -> dict[str, T]:
    """The named entries of a registry (all of it for None); unknown names raise a ValueError listing the choices."""
    if not names:
        return dict(registry)
    bad = [n for n in names if n not in registry]
    if bad:
        raise ValueError(f"unknown {what} {bad[0]!r}; choose from {', '.join(registry)}")
    return {n: registry[n] for n in dict.fromkeys(names)}

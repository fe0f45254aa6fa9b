"""The seeded edit library: RGB outputs, determinism, strengths that order, the registries."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.data import decode_image, image_to_uint8
from model.evaluation.edits import EDITS, FAMILIES, Combined, Op, edit_rng, select


@pytest.fixture(scope="module")
def images(cifar_dir) -> list[Image.Image]:
    files = sorted(cifar_dir.rglob("*.jpg"))[::50][:6]
    return [decode_image(f.read_bytes()) for f in files]


def _arr(img: Image.Image, size: int = 32) -> np.ndarray:
    return image_to_uint8(img, size).astype(np.float64) / 255.0


@pytest.mark.parametrize("name", list(EDITS))
def test_every_edit_returns_rgb_and_is_deterministic_for_a_seed(images, name):
    edit, img = EDITS[name], images[0]
    out = edit(img, seed=3, index=7)
    assert out.mode == "RGB" and min(out.size) >= 1
    assert np.array_equal(np.asarray(out), np.asarray(edit(img, seed=3, index=7)))


def test_random_edits_depend_on_seed_and_image_index(images):
    img, noise = images[0], EDITS["noise-10"]
    a = np.asarray(noise(img, 0, 0))
    assert not np.array_equal(a, np.asarray(noise(img, 1, 0)))
    assert not np.array_equal(a, np.asarray(noise(img, 0, 1)))


def test_edits_change_the_image_and_sizes_follow_the_strength(images):
    img = images[1]
    for name, edit in EDITS.items():
        out = edit(img)
        assert out.size != img.size or not np.array_equal(np.asarray(out), np.asarray(img)), name
    assert EDITS["upscale-x4"](img).size == (128, 128) and EDITS["downscale-x0.5"](img).size == (16, 16)
    assert EDITS["crop-center-90"](img).size == (29, 29)
    gray = np.asarray(EDITS["grayscale"](img)).astype(int)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 1


def test_zero_strength_is_the_identity_and_the_weakest_is_nearer_than_the_strongest(images):
    for kind in ("blur", "noise", "rotate", "translate", "brightness", "contrast", "desaturate"):
        assert np.array_equal(np.asarray(Op(kind, 0)(images[2])), np.asarray(images[2])), kind
    for kind, edits in FAMILIES.items():
        assert len(edits) >= 3, kind
        for img in images:
            x = _arr(img)
            weak, strong = (np.linalg.norm(_arr(e(img, 0, 0)) - x) for e in (edits[0], edits[-1]))
            assert weak < strong, (kind, weak, strong)


def test_rotation_fills_its_corners_and_translation_shifts_by_the_scaled_pixels(images):
    img = images[3]
    rot = np.asarray(Op("rotate", 15)(img)).astype(int)
    assert rot[:2, :2].sum() > 0 and rot.shape == np.asarray(img).shape  # reflect fill, not black corners
    a = np.asarray(img.resize((64, 64), Image.BICUBIC))
    shifted = np.asarray(Op("translate", 2)(Image.fromarray(a)))  # 2 px at 32 px = 4 px at 64 px
    dx, dy = (int(edit_rng(0, 0, "translate").choice([-1, 1])) * 4 for _ in range(2))
    assert np.array_equal(shifted[8:-8, 8:-8], np.roll(a, (dy, dx), axis=(0, 1))[8:-8, 8:-8])


def test_combined_applies_both_edits_in_order(images):
    img = images[4]
    both = Combined(EDITS["jpeg-q40"], Op("crop", 0.5))
    assert both.name == "jpeg-q40+crop-0.5"
    assert np.array_equal(np.asarray(both(img, 1, 2)), np.asarray(Op("crop", 0.5)(EDITS["jpeg-q40"](img, 1, 2))))
    assert "jpeg-q30+crop-offcenter-90" in EDITS and "brightness+30+blur-2x" in EDITS


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="hflip"):
        select(EDITS, ["sepia"])
    with pytest.raises(ValueError, match="unknown edit kind"):
        Op("sepia", 1)
    assert list(select(FAMILIES, ["noise", "blur"])) == ["noise", "blur"]

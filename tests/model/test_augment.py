"""Training augmentations: deterministic per RNG state, shape-preserving, and what they claim to do."""

from __future__ import annotations

import pytest
import torch

from model.augment import MAX_SHIFT, augment_batch


def _batch() -> torch.Tensor:
    return torch.randint(0, 256, (16, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_none_returns_the_batch_unchanged():
    x = _batch()
    assert torch.equal(augment_batch(x, "none", torch.Generator().manual_seed(1)), x)


def test_flip_mirrors_some_images_and_keeps_the_others():
    x = _batch()
    y = augment_batch(x, "flip", torch.Generator().manual_seed(1))
    flipped = [torch.equal(y[i], x[i].flip(2)) for i in range(16)]
    kept = [torch.equal(y[i], x[i]) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < 16


def test_translate_shifts_content_by_at_most_the_maximum():
    x = _batch()
    y = augment_batch(x, "flip+translate", torch.Generator().manual_seed(2))
    m = MAX_SHIFT
    for i in range(16):
        src = torch.stack([x[i], x[i].flip(2)])
        inner = y[i, :, m:-m, m:-m]
        assert any(
            torch.equal(inner, s[:, m + dy : 32 - m + dy, m + dx : 32 - m + dx])
            for s in src
            for dy in range(-m, m + 1)
            for dx in range(-m, m + 1)
        )


def test_the_same_rng_state_gives_the_same_batch():
    x = _batch()
    a = augment_batch(x, "flip+translate", torch.Generator().manual_seed(3))
    b = augment_batch(x, "flip+translate", torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_color_jitter_changes_some_images_and_greys_some_out():
    x = torch.randint(0, 256, (400, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    y = augment_batch(x, "color", torch.Generator().manual_seed(4))
    changed = (y.int() - x.int()).abs().flatten(1).amax(1) > 2
    grey = (y[:, 0] == y[:, 1]).flatten(1).all(1) & (y[:, 1] == y[:, 2]).flatten(1).all(1)
    assert 0.5 < changed.float().mean() < 1.0  # each jitter applies to half of the images
    assert 0 < grey.sum() < 60


def test_augmentation_specs_combine_parts_and_reject_unknown_ones():
    from model.augment import check_augment

    for ok in ("none", "flip", "flip+color", "translate+color", "flip+translate+color"):
        check_augment(ok)
    for bad in ("jitter", "flip+flip", "none+flip", ""):
        with pytest.raises(ValueError, match="unknown augmentation"):
            check_augment(bad)

"""The method registry: every method registered alike, errors that list the choices, export keys."""

from __future__ import annotations

import pytest

from model.registry import COMMON_KEYS, get_method, method_names, methods, methods_with
from model.train import trainer_class


def test_every_method_is_registered_with_a_trainer_of_its_name():
    assert method_names() == ("afv", "bigan", "bigbigan", "gfmn")
    for m in methods():
        assert m.description and m.trainer().method == m.name == trainer_class(m.name).method


def test_an_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match="unknown training method 'vae'; choose one of afv, bigan, bigbigan, gfmn"):
        get_method("vae")


def test_loader_options_and_encoders_belong_to_their_methods():
    assert methods_with("embedding") == ("bigan", "bigbigan") and methods_with("readout") == ("afv",)
    assert [m.name for m in methods() if m.encoder is not None] == ["bigan", "bigbigan"]


def test_export_keeps_the_method_keys_and_drops_training_state():
    ckpt = {"method": "gfmn", "preset": {}, "step": 3, "G": 1, "G_ema": 2, "AMA": 3, "opt_G": 4, "features": 5}
    assert get_method("gfmn").export_state(ckpt) == {
        "method": "gfmn",
        "preset": {},
        "step": 3,
        "G_ema": 2,
        "features": 5,
    }
    assert set(COMMON_KEYS) <= set(get_method("afv").export_state({k: 0 for k in COMMON_KEYS + ("D", "opt_D")}))


def test_a_run_of_a_method_without_the_option_says_which_methods_take_it(tiny_run):
    from model.loading import load_embedder

    with pytest.raises(ValueError, match="--embedding applies to bigan/bigbigan runs, not to a 'afv' run"):
        load_embedder(tiny_run, device="cpu", embedding="hidden")
    assert load_embedder(tiny_run, device="cpu", readout="global").kind == "afv"

"""The statistics cache: where it lives, and that a model folder is read but never written."""

from __future__ import annotations

import shutil

import torch

from model import cache
from model.extract import FISHER_FILE
from model.loading import load_embedder


def test_cache_dir_prefers_afv_cache_dir_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "afv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "afv"


def test_lookup_reads_the_model_folder_before_the_cache(tmp_path):
    paths = cache.lookup("fisher-x.pt", "ab" * 32, tmp_path)
    assert paths == [tmp_path / "fisher-x.pt", cache.stats_cache_path("ab" * 32, "fisher-x.pt")]
    assert cache.lookup("fisher-x.pt", "ab" * 32, None) == paths[1:]


def test_statistics_a_model_folder_lacks_are_estimated_once_into_the_cache(tiny_run, tmp_path, cifar_images):
    run = tmp_path / "run"  # as an installed package: no fisher.pt, and nothing may be written here
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("fisher*.pt", "checkpoints", "samples"))
    before = sorted(p.name for p in run.iterdir())
    ext = load_embedder(run, device="cpu", readout="pyramid-1-2")
    assert sorted(p.name for p in run.iterdir()) == before
    for name in (FISHER_FILE, "fisher-pyramid-1-2.pt"):
        saved = torch.load(cache.stats_cache_path(ext.model_hash, name), weights_only=True)
        assert saved["model_sha256"] == ext.model_hash
    again = load_embedder(run, device="cpu", readout="pyramid-1-2")
    assert again.stats_hash == ext.stats_hash
    torch.testing.assert_close(again.embed(cifar_images[:2]), ext.embed(cifar_images[:2]))


def test_a_stale_cached_file_is_ignored_and_replaced(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("fisher-*.pt", "checkpoints", "samples"))
    ext = load_embedder(run, device="cpu", readout="pyramid-1-2")
    cached = cache.stats_cache_path(ext.model_hash, "fisher-pyramid-1-2.pt")
    saved = torch.load(cached, weights_only=True)
    torch.save({**saved, "base_stats": "other"}, cached)
    again = load_embedder(run, device="cpu", readout="pyramid-1-2")
    assert torch.load(cached, weights_only=True)["base_stats"] == ext.base.stats_hash
    torch.testing.assert_close(again.stats.var, ext.stats.var)

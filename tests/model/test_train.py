"""Training: loss goes down, checkpoints are written, resume is bit-exact, bad data is reported."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from model.checkpoint import CheckpointError, load_networks, read_checkpoint
from model.data import load_collection
from model.ebmgan import EBMGANTrainer
from model.loading import load_embedder
from model.presets import PRESETS
from model.train import TrainConfig, train


def _cfg(data, out, steps, **kw) -> TrainConfig:
    base = {"preset": "tiny", "device": "cpu", "monitor_samples": 32, "holdout": 32}
    return TrainConfig(data=str(data), out=str(out), steps=steps, **{**base, **kw})


def test_a_few_steps_decrease_the_discriminator_loss(cifar_images):
    # Early on D wins against the untrained G; later the adversarial game makes the loss oscillate.
    trainer = EBMGANTrainer(_cfg("", "", 20), PRESETS["tiny"], cifar_images, torch.device("cpu"))
    losses = [trainer.train_step()["loss_d"] for _ in range(20)]
    first, last = sum(losses[:5]) / 5, sum(losses[10:]) / 10
    assert last < first - 0.05, f"D loss did not fall: {first:.3f} → {last:.3f}"


def test_training_writes_checkpoint_samples_metrics_and_fisher_stats(tiny_run):
    for name in ("last.pt", "model.pt", "fisher.pt", "metrics.csv", "training.png", "config.json"):
        assert (tiny_run / name).is_file(), name
    assert sorted(p.name for p in (tiny_run / "samples").iterdir()) == ["step_0000015.png", "step_0000030.png"]
    rows = (tiny_run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 3
    header, last = rows[0].split(","), rows[-1].split(",")
    assert float(last[header.index("fd_val_gen")]) > 0
    assert read_checkpoint(tiny_run / "last.pt")["step"] == 30


@pytest.mark.slow
def test_resume_after_a_stop_is_bit_exact(cifar_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_cfg(cifar_dir, straight, 6, ckpt_every=3), progress=False)
    train(_cfg(cifar_dir, resumed, 3, ckpt_every=3), progress=False)
    train(_cfg(cifar_dir, resumed, 6, ckpt_every=3), progress=False)  # picks up last.pt at step 3
    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(resumed / "last.pt")
    assert a["step"] == b["step"] == 6
    for key in ("D", "G", "G_ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name} differs after resume"


@pytest.mark.gpu
def test_on_gpu_a_run_trains_resumes_and_then_serves_on_the_cpu(cifar_dir, cifar_images, tmp_path, gpu):
    """Trained on the GPU (TF32 on), resumed there, and loaded by a machine without one."""
    run = tmp_path / "run"
    train(_cfg(cifar_dir, run, 3, ckpt_every=3, device=str(gpu)), progress=False)
    train(_cfg(cifar_dir, run, 6, ckpt_every=3, device=str(gpu)), progress=False)  # resumes at step 3
    assert read_checkpoint(run / "last.pt")["step"] == 6
    embedder = load_embedder(run, device="cpu")
    vectors = embedder.embed(cifar_images[:4])
    assert vectors.device.type == "cpu" and bool(torch.isfinite(vectors).all()) and float(vectors.abs().max()) > 0


def test_unreadable_files_are_skipped_with_a_warning_naming_them(cifar_dir, tmp_path, caplog):
    shutil.copytree(cifar_dir / "cat", tmp_path / "imgs")
    (tmp_path / "imgs" / "empty.jpg").write_bytes(b"")
    (tmp_path / "imgs" / "notes.png").write_bytes(b"this is text, not a png")
    (tmp_path / "imgs" / "truncated.jpg").write_bytes((cifar_dir / "cat" / "0000.jpg").read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        images, names = load_collection(tmp_path / "imgs", 32)
    assert images.shape[0] == 30
    for bad in ("empty.jpg", "notes.png", "truncated.jpg"):
        assert bad not in names
        assert any(bad in r.getMessage() for r in caplog.records), bad


def test_a_folder_without_images_fails_clearly(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no readable images"):
        train(_cfg(tmp_path, tmp_path / "run", 2), progress=False)


def test_a_checkpoint_of_another_architecture_fails_clearly(tiny_run, tmp_path):
    ckpt = read_checkpoint(tiny_run / "model.pt")
    ckpt["preset"] = PRESETS["cpu"].to_dict()  # tiny weights, labelled as the wider cpu preset
    torch.save(ckpt, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="do not fit the 'cpu' architecture"):
        load_networks(tmp_path / "model.pt")


def test_resuming_with_another_preset_fails_clearly(tiny_run, cifar_dir, tmp_path):
    shutil.copy(tiny_run / "last.pt", tmp_path / "last.pt")
    cfg = _cfg(cifar_dir, tmp_path, 40)
    cfg.preset = "cpu"
    with pytest.raises(ValueError, match="cannot resume it as 'cpu'"):
        train(cfg, progress=False)


def test_a_corrupt_checkpoint_fails_clearly(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_networks(tmp_path / "model.pt")


def test_auto_split_finds_train_even_when_the_archive_lists_test_first(cifar_dir, tmp_path):
    import tarfile

    from model.train import resolve_split

    archive = tmp_path / "c.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # test/ first, as in the shared CIFAR-10 archive
        tar.add(cifar_dir / "cat" / "0000.jpg", arcname="test/cat/0000.jpg")
        tar.add(cifar_dir / "cat" / "0001.jpg", arcname="train/cat/0001.jpg")
    assert resolve_split(str(archive), "auto") == "train"
    assert resolve_split(str(cifar_dir), "auto") is None
    images, names = load_collection(archive, 32, subdir=resolve_split(str(archive), "auto"))
    assert names == ["train/cat/0001.jpg"]


@pytest.mark.slow
def test_the_64px_cpu_preset_trains_with_augmentation_and_resumes(tmp_path):
    from tests.conftest import FIXTURES

    data = FIXTURES / "tinyimagenet64"
    cfg = dict(
        preset="cpu64",
        device="cpu",
        monitor_samples=8,
        holdout=8,
        batch_size=4,
        ckpt_every=2,
        augment="flip+translate",
        fisher_samples=16,
    )
    train(TrainConfig(data=str(data), out=str(tmp_path), steps=2, **cfg), progress=False)
    train(TrainConfig(data=str(data), out=str(tmp_path), steps=3, **cfg), progress=False)
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 3 and ckpt["preset"]["resolution"] == 64
    preset, d, g, _ = load_networks(tmp_path / "model.pt")
    assert preset.name == "cpu64" and g.sample(2).shape == (2, 3, 64, 64)


def test_an_unknown_augmentation_fails_clearly(cifar_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown augmentation"):
        train(_cfg(cifar_dir, tmp_path, 2, augment="jitter"), progress=False)

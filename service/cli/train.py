"""`afv train|fisher|export|sample|reconstruct`: train a model and work with its run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from model.registry import method_names
from service.cli.options import DeviceOpt, ReadoutOpt, fail, load_images

METHOD_HELP = " | ".join(method_names()) + " (afv: the EBM-GAN of the AFV paper)"


def train(
    data: Annotated[Path, typer.Option(help="Folder or .tar/.tar.gz of images.")],
    out: Annotated[Path, typer.Option(help="Run directory (resumes if it holds last.pt).")],
    preset: Annotated[str, typer.Option(help="tiny | cpu | cpu64 | paper | paper64")] = "cpu",
    method: Annotated[str, typer.Option(help=METHOD_HELP)] = "afv",
    features: Annotated[
        Path | None,
        typer.Option(help="gfmn: run directory whose network supplies the features to match (afv, bigan or bigbigan)."),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Total steps (default: the preset's).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Default: the preset's.")] = None,
    device: DeviceOpt = "auto",
    split: Annotated[str, typer.Option(help="Sub-folder to train on; 'auto' = train/ if present, '' = all.")] = "auto",
    limit: Annotated[int | None, typer.Option(help="Use only the first N images.")] = None,
    gamma: Annotated[float, typer.Option(help="MCMC generator term step size (0 = off).")] = 0.0,
    noise_std: Annotated[float, typer.Option(help="MCMC generator term noise.")] = 0.0,
    lr_g: Annotated[
        float | None, typer.Option(help="Generator learning rate (default: afv/bigan/bigbigan 2e-4, gfmn 1e-4).")
    ] = None,
    lr_d: Annotated[float, typer.Option(help="Discriminator learning rate.")] = 4e-4,
    lr_e: Annotated[
        float | None, typer.Option(help="Encoder learning rate (default: bigan = lr_g, bigbigan = 10 × lr_g).")
    ] = None,
    truncation: Annotated[
        float | None, typer.Option(help="bigbigan: sample grids from latents truncated at this |z| (BigGAN's trick).")
    ] = None,
    ama_lr: Annotated[float, typer.Option(help="gfmn: learning rate of the ADAM moving average.")] = 1e-2,
    augment: Annotated[str, typer.Option(help="Real-image augmentation: none | flip | flip+translate.")] = "none",
    ckpt_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    seed: int = 0,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (resumably) after this long.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's).")] = None,
) -> None:
    """Train a model (EBM-GAN for AFVs, BiGAN, BigBiGAN or GFMN); checkpoints, samples, metrics.csv and
    training.png go to OUT."""
    from model.checkpoint import CheckpointError
    from model.train import TrainConfig
    from model.train import train as run_training

    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        preset=preset,
        method=method,
        steps=steps,
        batch_size=batch_size,
        device=device,
        split=split or None,
        limit=limit,
        gamma=gamma,
        noise_std=noise_std,
        lr_g=lr_g,
        lr_d=lr_d,
        lr_e=lr_e,
        truncation=truncation,
        features=str(features) if features else None,
        ama_lr=ama_lr,
        augment=augment,
        ckpt_every=ckpt_every,
        seed=seed,
        max_minutes=max_minutes,
    )
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        run = run_training(cfg)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    made = ", ".join(p.name for p in sorted(run.iterdir()) if p.name not in ("checkpoints", "last.pt"))
    typer.echo(f"done: {run} ({made})")


def fisher(model: Annotated[Path, typer.Option("--model")], samples: int = 2048, device: DeviceOpt = "auto") -> None:
    """(Re-)estimate a run's Fisher statistics from N generator samples and save fisher.pt."""
    from model.checkpoint import CheckpointError, find_checkpoint, load_networks, state_hash
    from model.extract import FISHER_FILE, resolve_device, save_stats
    from model.fisher import estimate_stats
    from model.nets import fold_spectral_norm

    try:
        dev = resolve_device(device)
        _, d, g, _ = load_networks(find_checkpoint(model))
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    stats = estimate_stats(fold_spectral_norm(d).to(dev), g.to(dev), samples, progress=True)
    save_stats(model / FISHER_FILE, stats, state_hash(d))
    typer.echo(f"saved {model / FISHER_FILE} ({samples} samples)")


def export(
    model: Annotated[Path, typer.Option("--model", help="Run directory.")],
    out: Annotated[Path, typer.Option(help="Folder to write (e.g. model/weights/NAME).")],
    default: Annotated[bool, typer.Option(help="Make it the bundled default.")] = False,
    normalization: Annotated[
        str | None, typer.Option(help="AFV normalisation recorded with the model: none | l2 | power.")
    ] = None,
    readout: ReadoutOpt = None,
) -> None:
    """Copy a run's inference weights, Fisher statistics (if any) and training record into a small folder."""
    import shutil

    from model.checkpoint import (
        FORMAT,
        MODEL_FILE,
        CheckpointError,
        atomic_torch_save,
        find_checkpoint,
        read_checkpoint,
    )
    from model.extract import DEFAULT_POINTER, WEIGHTS_DIR
    from model.fisher import NORMALIZATIONS
    from model.registry import checkpoint_method

    try:
        path = find_checkpoint(model)
        ckpt = read_checkpoint(path)
        method = checkpoint_method(ckpt, path)
    except (CheckpointError, ValueError) as e:
        fail(str(e))
    for name in method.required_files:
        if not (model / name).is_file():
            fail(f"{model / name} is missing: run `afv fisher --model {model}` first")
    slim = method.export_state(ckpt)
    if normalization is not None:
        if normalization not in NORMALIZATIONS:
            fail(f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}")
        slim["normalization"] = normalization
    if readout is not None:
        from model.pyramid import parse_readout

        try:
            slim["readout"] = parse_readout(readout).name
        except ValueError as e:
            fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"format": FORMAT, **slim}, out / MODEL_FILE)
    for stats_file in _stats_to_ship(model, path):
        shutil.copy(stats_file, out / stats_file.name)
    for name in ("metrics.csv", "training.png", "config.json"):
        if (model / name).is_file():
            shutil.copy(model / name, out / name)
    samples = sorted((model / "samples").glob("*.png"))
    if samples:
        shutil.copy(samples[-1], out / "samples.png")
    if default:
        if out.resolve().parent != WEIGHTS_DIR.resolve():
            fail(f"--default needs --out inside {WEIGHTS_DIR}")
        DEFAULT_POINTER.write_text(out.name + "\n")
    typer.echo(f"exported step {ckpt['step']} of {model} to {out}")


def _stats_to_ship(model: Path, ckpt_path: Path) -> list[Path]:
    """fisher.pt and per-read-out statistics: the run folder's, and those cached for its weights."""
    from model.cache import stats_cache_path
    from model.checkpoint import CheckpointError, load_networks, state_hash

    files: dict[str, Path] = {}
    try:
        _, d, _, _ = load_networks(ckpt_path)
        cached = stats_cache_path(state_hash(d), "fisher.pt").parent
        files.update({p.name: p for p in cached.glob("fisher*.pt")})
    except (CheckpointError, KeyError):  # a method without an AFV discriminator caches nothing
        pass
    files.update({p.name: p for p in model.glob("fisher*.pt")})  # the run's own files win
    return sorted(files.values())


def sample(
    model: Annotated[Path, typer.Option("--model", help="Run directory (any method).")],
    out: Annotated[
        Path, typer.Option(help="PNG grid to write; a path without .png is a folder that gets one PNG per sample.")
    ] = Path("samples.png"),
    n: Annotated[int, typer.Option(help="Number of images.")] = 64,
    truncation: Annotated[
        float | None,
        typer.Option(help="Resample latent entries above this |z| (BigGAN's truncation trick); none = plain N(0, I)."),
    ] = None,
    seed: int = 0,
) -> None:
    """Draw a grid of samples from a run's (EMA) generator, optionally with truncated latents."""
    import torch

    from model.checkpoint import CheckpointError, find_checkpoint, load_state, read_checkpoint
    from model.nets import Generator
    from model.plots import save_grid
    from model.presets import preset_from_dict

    try:
        path = find_checkpoint(model)
        ckpt = read_checkpoint(path)
        preset = preset_from_dict(ckpt["preset"])
        g = Generator(preset)
        load_state(g, ckpt["G_ema"], "generator", preset, path)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            x = torch.cat([g.eval().sample(min(256, n - i), gen, truncation=truncation) for i in range(0, n, 256)])
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    if out.suffix.lower() == ".png":
        save_grid(x, out)
    else:
        from PIL import Image

        from model.data import model_to_uint8

        out.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(model_to_uint8(x).permute(0, 2, 3, 1).numpy()):
            Image.fromarray(img).save(out / f"sample_{i:05d}.png")
    typer.echo(f"wrote {n} samples of {model} to {out}" + (f" (truncation {truncation})" if truncation else ""))


def reconstruct(
    images: Annotated[Path, typer.Argument(help="Image file, folder or .tar(.gz).")],
    model: Annotated[Path, typer.Option("--model", help="A bigan or bigbigan run directory.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("reconstructions.png"),
    n: Annotated[int, typer.Option(help="Images shown (the first N).")] = 32,
) -> None:
    """BiGAN/BigBiGAN inversion at a glance: rows of images x above their reconstructions G(E(x))."""
    import torch

    from model.checkpoint import CheckpointError, find_checkpoint, load_state, read_checkpoint
    from model.data import uint8_to_model
    from model.nets import Generator
    from model.plots import save_grid
    from model.presets import preset_from_dict
    from model.registry import checkpoint_method, methods

    try:
        path = find_checkpoint(model)
        ckpt = read_checkpoint(path)
        method = checkpoint_method(ckpt, path)
        if method.encoder is None:
            with_encoder = "/".join(m.name for m in methods() if m.encoder is not None)
            fail(f"{model} is a '{method.name}' run: only {with_encoder} runs have an encoder")
        preset = preset_from_dict(ckpt["preset"])
        g, enc = Generator(preset), method.encoder(preset)
        load_state(g, ckpt["G_ema"], "generator", preset, path)
        load_state(enc, ckpt["E_ema"], "encoder", preset, path)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    x = uint8_to_model(load_images(images, preset.resolution)[:n])
    with torch.no_grad():
        rec = g.eval()(enc.eval().mean_and_scale(x)[0])
    rows = [t for i in range(0, x.shape[0], 8) for t in (x[i : i + 8], rec[i : i + 8])]
    save_grid(torch.cat(rows), out)
    err = float((rec - x).pow(2).mean())
    typer.echo(f"wrote {out}: {x.shape[0]} images (odd rows) and G(E(x)) (even rows); mean squared error {err:.4f}")

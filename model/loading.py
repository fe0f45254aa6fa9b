"""Load any run directory as the embedder it stands for, whatever method trained it.

| checkpoint method | embedder                                                                 |
|-------------------|--------------------------------------------------------------------------|
| afv (EBM-GAN)     | `AFVExtractor`: Fisher vectors of D, statistics from its generator        |
| bigan, bigbigan   | `EncoderEmbedder`: E(x) (or its last hidden layer, or both)               |
| gfmn on AFV D     | `AFVExtractor` of that D with Fisher statistics from the GFMN generator   |
| gfmn on an encoder| `MomentEmbedder`: the encoder's activations (moment features)             |

The service, index and CLI call `load_embedder` and never look at the method themselves.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.checkpoint import find_checkpoint, load_state, read_checkpoint, state_hash
from model.embedder import Embedder
from model.extract import AFVExtractor, default_run_dir, load_or_estimate_stats, resolve_device
from model.nets import Generator
from model.presets import preset_from_dict
from model.pyramid import with_readout


def load_embedder(
    run: str | Path | None = None,
    device: str = "auto",
    normalization: str | None = None,
    batch_size: int = 64,
    embedding: str | None = None,
    readout: str | None = None,
) -> Embedder:
    """RUN_DIR (or model.pt/last.pt path; None = the bundled default) → its embedder.

    `readout` ('global' or 'pyramid-1-2-4', …) overrides the AFV read-out the model was exported with.
    """
    run = run if run is not None else default_run_dir()
    if run is None:
        if readout not in (None, "global"):
            raise ValueError("spatial read-outs need a trained model: pass --model RUN_DIR")
        return AFVExtractor.load(None, device=device, normalization=normalization, batch_size=batch_size)
    path = find_checkpoint(run)
    ckpt = read_checkpoint(path)
    method = ckpt.get("method", "afv")
    if embedding is not None and method not in ("bigan", "bigbigan"):
        raise ValueError(f"--embedding applies to bigan/bigbigan encoders, not to a '{method}' run")
    if readout not in (None, "global") and method != "afv":
        raise ValueError(f"--readout applies to AFV models, not to a '{method}' run")
    if method == "afv":
        base = AFVExtractor.load(run, device=device, normalization=normalization, batch_size=batch_size)
        return with_readout(base, readout or ckpt.get("readout", "global"), Path(run))
    dev = resolve_device(device)
    if method in ("bigan", "bigbigan"):
        from model.encoder import EncoderEmbedder

        return EncoderEmbedder.from_checkpoint(
            ckpt, path, device=dev, embedding=embedding, normalization=normalization, batch_size=max(batch_size, 256)
        )
    if method == "gfmn":
        return _gfmn_embedder(ckpt, path, Path(run), dev, normalization, batch_size)
    raise ValueError(f"{path}: unknown training method {method!r}")


def _gfmn_embedder(
    ckpt: dict, path: Path, run: Path, dev: torch.device, normalization: str | None, batch_size: int
) -> Embedder:
    from model.gfmn import MomentEmbedder, sampler_key, source_network

    source = ckpt["features"]
    if source["method"] != "afv":
        return MomentEmbedder(source, device=dev, name=run.name)
    g_preset = preset_from_dict(ckpt["preset"])
    d, g = source_network(source), Generator(g_preset)
    load_state(g, ckpt["G_ema"], "generator", g_preset, path)
    g.eval()
    model_hash = state_hash(d)
    stats = load_or_estimate_stats(run, d, g, sampler_key(model_hash, g), g_preset.fisher_samples, dev)
    return AFVExtractor(
        d,
        g,
        stats,
        device=dev,
        normalization=normalization or "none",
        batch_size=batch_size,
        name=run.name if run.is_dir() else run.parent.name,
        model_hash=model_hash,
    )

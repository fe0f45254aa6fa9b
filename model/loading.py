"""The one model loader: any run directory (or model.pt/last.pt) → the embedder it stands for.

`load_embedder` reads the checkpoint, asks the method registry (`model.registry`) for the method that
wrote it and lets that method load it:

| checkpoint method | embedder                                                                 |
|-------------------|--------------------------------------------------------------------------|
| afv (EBM-GAN)     | `AFVExtractor`: Fisher vectors of D, statistics from its generator        |
| bigan, bigbigan   | `EncoderEmbedder`: E(x) (or its last hidden layer, or both)               |
| gfmn on AFV D     | `AFVExtractor` of that D with Fisher statistics from the GFMN generator   |
| gfmn on an encoder| `MomentEmbedder`: the encoder's activations (moment features)             |

`embedding="moments"` loads any run's feature network as a `MomentEmbedder` (the 'gfmn-moments' metric).
The service, index, CLI and evaluation call `load_embedder` and never look at the method themselves.
"""

from __future__ import annotations

from pathlib import Path

from model.checkpoint import find_checkpoint, read_checkpoint
from model.embedder import Embedder
from model.extract import AFVExtractor, default_run_dir, resolve_device
from model.gfmn import MOMENTS, moment_embedder
from model.precision import check_precision
from model.pyramid import GLOBAL
from model.registry import Method, checkpoint_method, methods_with

NEUTRAL = {"readout": GLOBAL}  # option values that every method accepts (it is what they do anyway)


def load_embedder(
    run: str | Path | None = None,
    device: str = "auto",
    normalization: str | None = None,
    batch_size: int = 64,
    embedding: str | None = None,
    readout: str | None = None,
    precision: str = "fp32",
) -> Embedder:
    """RUN_DIR (or model.pt/last.pt path; None = the bundled default) → its embedder.

    `readout` ('global' or 'pyramid-1-2-4', …) overrides the AFV read-out the model was exported with;
    `embedding` picks an encoder's output (z | hidden | z+hidden) or, for any run, 'moments'; `precision`
    the arithmetic of the gradient pass (fp32, or mixed or bf16 for AFV models: `model.precision`).
    """
    check_precision(precision)  # a typo fails before the model loads
    embedder = _load(run, device, normalization, batch_size, embedding, readout)
    embedder.set_precision(precision)
    return embedder


def _load(
    run: str | Path | None,
    device: str,
    normalization: str | None,
    batch_size: int,
    embedding: str | None,
    readout: str | None,
) -> Embedder:
    """`load_embedder` before its precision is set."""
    options = {k: v for k, v in {"embedding": embedding, "readout": readout}.items() if v is not None}
    run = run if run is not None else default_run_dir()
    if run is None:
        return _untrained(device, normalization, batch_size, options)
    run, dev = Path(run), resolve_device(device)
    path = find_checkpoint(run)
    ckpt = read_checkpoint(path)
    if embedding == MOMENTS:
        return moment_embedder(ckpt, path, run, dev)
    method = checkpoint_method(ckpt, path)
    kwargs = _method_options(method, options)
    return method.load(ckpt, path, run, dev, normalization=normalization, batch_size=batch_size, **kwargs)


def _method_options(method: Method, options: dict[str, str]) -> dict[str, str]:
    """The options `method` takes; ValueError naming the methods that take any other one."""
    for name, value in options.items():
        if name not in method.options and value != NEUTRAL.get(name):
            hint = f" (--embedding {MOMENTS} applies to every run)" if name == "embedding" else ""
            raise ValueError(
                f"--{name} applies to {'/'.join(methods_with(name))} runs, not to a '{method.name}' run{hint}"
            )
    return {k: v for k, v in options.items() if k in method.options}


def _untrained(device: str, normalization: str | None, batch_size: int, options: dict[str, str]) -> Embedder:
    """While no model is bundled: a seeded, untrained tiny AFV model (it warns loudly)."""
    for name, value in options.items():
        if value != NEUTRAL.get(name):
            raise ValueError(f"--{name} {value} needs a trained model: pass --model RUN_DIR")
    return AFVExtractor.untrained("tiny", resolve_device(device), normalization or "none", batch_size)

"""What the `afv` commands share: option aliases, the one error exit `fail()`, model and image loading.

Every error a command reports itself exits 1 with `error: MESSAGE` in red on stderr and no traceback
(until the CLI became a package, some commands exited 2). Usage errors that typer finds before a command
runs (an unknown option, a missing argument, a value of the wrong type) still exit 2, as click's do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    import torch

    from model.embedder import Embedder

ModelOpt = Annotated[Path | None, typer.Option("--model", help="Run directory (default: the bundled model).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="fp32 | mixed | bf16: the gradient pass's arithmetic (AFV models; model/precision.py). mixed: all "
        "but the forward pass in bfloat16, about 1.5x faster for paper64-sized models on CPUs with AMX, distances "
        "within 0.1-0.4 %; bf16: everything, faster again, but near-copy distances move by several % (not for copy "
        "detection or JND). Default fp32.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
EmbeddingOpt = Annotated[str | None, typer.Option(help="bigan/bigbigan models: z | hidden | z+hidden (default z).")]
ReadoutOpt = Annotated[
    str | None,
    typer.Option(
        help="AFV read-out: global | pyramid-1-2-4 (spatial pyramid levels), optionally +lowres, +grey, +blocks; "
        "default: the model's."
    ),
]


def precision_of(value: str | None) -> str:
    """A `--precision` value checked (None: fp32); an unknown one is a `fail()` naming the choices."""
    from model.precision import check_precision

    try:
        return check_precision(value or "fp32")
    except ValueError as e:
        fail(str(e))


def fail(message: str) -> NoReturn:
    """Print `error: MESSAGE` in red on stderr and exit 1 (no traceback)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def load_model(model: Path | None, device: str = "auto", **options: Any) -> Embedder:
    """The embedder of a run directory (None: the bundled model); a bad or missing model is a `fail()`."""
    from model.loading import load_embedder

    try:
        return load_embedder(model, device=device, **options)
    except (ValueError, FileNotFoundError) as e:  # CheckpointError is a ValueError
        fail(str(e))


def load_images(path: Path, resolution: int) -> torch.Tensor:
    """An image file, folder or .tar(.gz) as N×3×R×R uint8; an unreadable one is a `fail()`."""
    from model.data import ImageDecodeError, decode_image, image_to_uint8, load_collection

    if path.is_file() and not path.name.endswith((".tar", ".tar.gz", ".tgz")):
        try:
            import torch

            return torch.from_numpy(image_to_uint8(decode_image(path.read_bytes()), resolution))[None]
        except ImageDecodeError as e:
            fail(f"{path}: {e}")
    try:
        return load_collection(path, resolution)[0]
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))

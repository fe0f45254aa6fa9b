"""`afv index shard`: split an index by id hash into shard indexes, one per search replica."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service.cli.options import fail


def shard_command(
    index: Annotated[Path, typer.Argument(help="Index folder to split (opened read-only, never changed).")],
    shards: Annotated[int, typer.Option("--shards", help="Number of shards.")],
    out: Annotated[Path, typer.Option("--out", help="New (or empty) folder for shard-000, shard-001, …")],
) -> None:
    """Split an index into shard indexes by a hash of the image id, each servable by `afv serve --read-only`.

    Ids, records and the trained index structure are kept, so `afv serve --shards URL,…` over the shards
    answers searches as the whole index does."""
    from index import AFVIndexError
    from index.sharding import split_index

    try:
        result = split_index(index, out, shards)
    except (AFVIndexError, OSError) as e:
        fail(str(e))
    for folder, count in zip(result.folders, result.counts):
        typer.echo(f"{folder}\t{count} images")
    typer.echo(f"{len(result.folders)} shards of {sum(result.counts)} images in {out} (split {result.split})")
    typer.echo(
        "serve each with `afv serve --read-only --index SHARD --port PORT`, then route searches with "
        "`afv serve --shards URL0,URL1,…` (URLs in shard order)",
        err=True,
    )

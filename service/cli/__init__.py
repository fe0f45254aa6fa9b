"""The `afv` command line: train models, compute distances, build indexes, evaluate, benchmark, serve.

One module per command group (train, similarity, index, eval, bench, serve); what they share (option
aliases, `fail()`, model and image loading) is in `options.py`.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from model.memory import keep_freed_memory
from service.cli import similarity, train
from service.cli.bench import bench_app
from service.cli.eval import eval_app
from service.cli.index import index_app, search_command
from service.cli.serve import serve_command
from service.cli.shard import shard_command

app = typer.Typer(
    help="Adversarial Fisher Vectors: perceptual similarity and reverse image search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    keep_freed_memory()  # every command may run model passes


# Listed in `afv --help` in this order: commands first, then the groups.
app.command()(train.train)
app.command()(train.fisher)
app.command()(train.export)
app.command()(similarity.distance)
app.command("set-distance")(similarity.set_distance)
app.command()(train.sample)
app.command()(train.reconstruct)
app.command("search")(search_command)
app.command("serve")(serve_command)
app.add_typer(bench_app, name="bench")
index_app.command("shard")(shard_command)
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")

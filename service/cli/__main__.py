"""`python -m service.cli`: the `afv` command line."""

from service.cli import app

app()

"""CLI sub-commands of `afv` (mounted by service/cli.py)."""

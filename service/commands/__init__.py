"""`afv` sub-commands, one module each (mounted in service/cli.py)."""

"""AFV service: HTTP API, settings and the `afv` command line."""

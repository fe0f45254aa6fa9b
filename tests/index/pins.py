"""Pins as `service.model_index` records them; the index layer stores and returns them, never reads them."""

PINS = {
    "model_hash": "a" * 64,
    "stats_hash": "b" * 64,
    "model_name": "test",
    "projection": {"mode": "exact"},
    "decode": "jpeg-dct-2x",
}

"""AFV model: EBM-GAN networks, training, Fisher statistics and AFV extraction.

Importing the package registers every training method (as timm's `models/__init__.py` does), so the
registry (`model.registry`) is complete whatever module is imported first and imports nothing back.
"""

import model.methods  # noqa: F401  (each method file calls register_method)

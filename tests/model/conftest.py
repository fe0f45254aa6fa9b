"""Model-level fixtures: the shared tiny extractor and images."""

from tests.tiny_model import extractor, image_batch, images, one_torch_thread  # noqa: F401

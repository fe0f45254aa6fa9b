"""AFV model: EBM-GAN networks, training, Fisher statistics and AFV extraction."""

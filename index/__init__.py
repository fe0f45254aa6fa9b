"""Compressed AFV index: projection, FAISS product quantization and a durable metadata store."""

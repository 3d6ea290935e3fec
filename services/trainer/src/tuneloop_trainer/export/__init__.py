"""Exports: merged 16-bit model, merged-vs-adapter verification, optional GGUF."""

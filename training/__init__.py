"""Fit a Gaussian VAE (PyTorch), evaluate it, and export a verified ONNX model bundle."""

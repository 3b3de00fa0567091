"""ONNX export of the encoder, decoder and scorer graphs, the parity check, and the atomic bundle write."""

"""Checkpoint -> bundle: ONNX graphs with a parity check, the item table, Triton repositories."""

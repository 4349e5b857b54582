"""Inference backends: the same two graphs, in process (ONNX Runtime) or on Triton."""

"""Device-side stand-in for the PyPI package, which that machine lacks: the model directory that
benchmarks/device/rebuild.py wrote."""

import os


def get_model_path() -> str:
    return os.environ["GPU_MINILM_DIR"]

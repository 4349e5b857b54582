from __future__ import annotations

import numpy as np

from training.encoder import TextEncoder, cache_dir


def test_encoder_is_normalised_deterministic_and_cached():
    enc = TextEncoder()
    texts = ["cordless drill", "white latex paint", "cordless drill"]
    a = enc.encode(texts, progress=False)
    assert a.shape == (3, 384)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.allclose(a[0], a[2], atol=1e-6)
    # related texts are closer than unrelated ones
    b = enc.encode(["battery powered drill", "garden hose"], progress=False)
    assert a[0] @ b[0] > a[0] @ b[1]

    cached = enc.encode_cached(texts, "t")
    files = list((cache_dir() / "embeddings").glob("t-*.npy"))
    assert len(files) == 1 and np.allclose(cached, a, atol=1e-6)
    np.save(files[0], np.zeros_like(a))  # the second call must read the cache, not recompute
    assert np.all(enc.encode_cached(texts, "t") == 0)
    enc.encode_cached(texts[:2], "t")  # other texts, other key
    assert len(list((cache_dir() / "embeddings").glob("t-*.npy"))) == 2

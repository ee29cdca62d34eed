"""The digits data set split shared by the training script, the tests and the benches."""

from __future__ import annotations

import numpy as np


def digits_split(seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8x8 digits as NCHW float32 in [0, 1]: (train, held-out), 80/20."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    labels = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(0.8 * len(labels))
    train, test = order[:cut], order[cut:]
    return (images[train], labels[train]), (images[test], labels[test])


def write_calibration(folder, count: int):
    """Write the first ``count`` training images and their labels as ``calib.npz`` (input
    ``image``) and ``labels.npy`` in ``folder``; return ``folder``."""
    (x_train, y_train), _ = digits_split()
    np.savez(folder / "calib.npz", image=x_train[:count])
    np.save(folder / "labels.npy", y_train[:count])
    return folder

"""scikit-learn's bundled 8x8 digits: 1,797 images, 10 classes, no download."""

from __future__ import annotations

import numpy as np

from aepg.benchmarks.images import ArrayImages, ImageSplits

TEST_FRACTION = 0.25
SPLIT_SEED = 0


def load_digits_splits(cfg=None) -> ImageSplits:
    """A fixed stratified train/test split (25% test, seed 0), independent of run seeds."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=TEST_FRACTION, stratify=digits.target, random_state=SPLIT_SEED
    )
    return ImageSplits(ArrayImages(x_train, y_train), ArrayImages(x_test, y_test), [str(c) for c in range(10)])

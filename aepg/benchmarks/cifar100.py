"""CIFAR-100 from torchvision's folder (``cifar-100-python``: the ``train``, ``test`` and ``meta`` pickles)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from aepg.benchmarks import cifar100_folder
from aepg.benchmarks.images import ArrayImages, ImageSplits
from aepg.config import BenchmarkConfig


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def load_cifar100_splits(cfg: BenchmarkConfig) -> ImageSplits:
    folder = cifar100_folder(cfg)
    meta = _unpickle(folder / "meta")

    def split(name: str) -> ArrayImages:
        data = _unpickle(folder / name)
        images = np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return ArrayImages(images, np.asarray(data["fine_labels"]))

    return ImageSplits(split("train"), split("test"), list(meta["fine_label_names"]))

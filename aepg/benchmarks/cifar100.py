"""CIFAR-100 from torchvision's folder (``cifar-100-python``: the ``train``, ``test`` and ``meta``
pickles), downloaded by torchvision when a network exists."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from aepg.benchmarks.images import ArrayImages, DatasetNotFound, ImageSplits, default_data_root

FOLDER = "cifar-100-python"


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def load_cifar100_splits(cfg) -> ImageSplits:
    root_path = Path(cfg.root).expanduser() if cfg.root else default_data_root()
    folder = root_path / FOLDER
    if not all((folder / name).is_file() for name in ("train", "test", "meta")):
        try:
            import torchvision

            torchvision.datasets.CIFAR100(str(root_path), train=True, download=True)
        except Exception as error:
            raise DatasetNotFound(
                f"CIFAR-100 not found in {folder} and the download failed ({error}). Put torchvision's "
                f"'{FOLDER}' folder (train, test, meta pickles from https://www.cs.toronto.edu/~kriz/cifar.html) "
                "under benchmark.root."
            ) from None
    meta = _unpickle(folder / "meta")

    def split(name: str) -> ArrayImages:
        data = _unpickle(folder / name)
        images = np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return ArrayImages(images, np.asarray(data["fine_labels"]))

    return ImageSplits(split("train"), split("test"), list(meta["fine_label_names"]))

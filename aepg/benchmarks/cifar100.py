"""CIFAR-100 from torchvision's folder (``cifar-100-python``: the ``train``, ``test`` and ``meta`` pickles).

The pickles are read by an unpickler that builds only what the format holds (dicts, lists, text,
numbers and numpy arrays), so a crafted data file cannot run code. The dry run and every run's
checks read them the same way (``class_sizes``): structure, shapes, labels and images per class."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from aepg.benchmarks import DataError, cifar100_folder, class_counts, counted_once
from aepg.benchmarks.images import ArrayImages, ImageSplits
from aepg.config import BenchmarkConfig

# The globals a CIFAR pickle names: numpy's array reconstruction (numpy 1 and 2 module paths),
# and the codec protocol 2 uses for byte strings.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}
PIXELS = 3 * 32 * 32
NUM_CLASSES = 100


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-100 file never holds")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _ArraysOnly(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError) as error:
        raise DataError(f"{path} is not a readable CIFAR-100 pickle ({error or type(error).__name__}); "
                        "download it again or set benchmark.download=true after deleting it") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a {type(data).__name__}, not CIFAR-100's dict")
    return data


def _split(path: Path) -> ArrayImages:
    data = _unpickle(path)
    pixels, labels = np.asarray(data.get("data", ())), np.asarray(data.get("fine_labels", ()))
    if pixels.ndim != 2 or pixels.shape[1] != PIXELS or len(labels) != len(pixels) or not len(pixels):
        raise DataError(f"{path}: 'data' is {pixels.shape} and 'fine_labels' has {len(labels)} entries; CIFAR-100 "
                        f"holds N x {PIXELS} pixels and N labels")
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(f"{path}: 'fine_labels' holds values outside 0-{NUM_CLASSES - 1}")
    images = pixels.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return ArrayImages(images, labels)


def _class_names(folder: Path) -> list[str]:
    names = _unpickle(folder / "meta").get("fine_label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataError(f"{folder / 'meta'}: 'fine_label_names' is not a list of {NUM_CLASSES} names")
    return [str(name) for name in names]


def class_sizes(cfg: BenchmarkConfig) -> tuple[list[int], list[int]]:
    """Training and test images per class, as the pickles hold them (read and checked as a run reads
    them); a class with no image in a split is a DataError."""
    folder = cifar100_folder(cfg)

    def count() -> tuple[list[int], list[int]]:
        names = _class_names(folder)
        return tuple(class_counts(_split(folder / part).labels, names, folder / part, "CIFAR-100")
                     for part in ("train", "test"))

    return counted_once([folder / name for name in ("meta", "train", "test")], count)


def load_cifar100_splits(cfg: BenchmarkConfig) -> ImageSplits:
    folder = cifar100_folder(cfg)
    return ImageSplits(_split(folder / "train"), _split(folder / "test"), _class_names(folder))

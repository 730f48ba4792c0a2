"""The data sets aepg knows, described without loading any: how many classes, where their files
live under ``benchmark.root``, and how many images each class has (from metadata only).

Each data set is one entry of ``aepg.catalog.DATASETS``: its facts here, and a lazy reference to
its loader (the modules beside this one), which returns its train and test images. The CLI
checks configs and sizes runs with these facts before importing torch; ``aepg.benchmarks.tasks``
turns a data set into tasks. docs/extending.md shows how to add one.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aepg.catalog import DATASETS
from aepg.config import BenchmarkConfig


class DatasetNotFound(FileNotFoundError):
    """A data set is missing; the message says where it was looked for and how to get it."""


def default_data_root() -> Path:
    return Path(os.environ.get("AEPG_DATA", "~/.cache/aepg/data")).expanduser()


def data_root(cfg: BenchmarkConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else default_data_root()


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IMAGENET_R_TRAIN_FRACTION = 0.8


def _missing(dataset: str, path: Path, layout: str, source: str) -> DatasetNotFound:
    return DatasetNotFound(f"{dataset} not found: expected {path} ({layout}). Get it from {source} "
                           "and set benchmark.root to the folder that holds it.")


# -- where each data set lives --------------------------------------------------------------------

FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")


def _idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (plain preferred over .gz), or None if any is missing."""
    found = {}
    for name in FASHION_FILES:
        candidates = [p for p in (folder / name, folder / f"{name}.gz") if p.is_file()]
        if not candidates:
            return None
        found[name] = candidates[0]
    return found


def fashion_mnist_files(cfg: BenchmarkConfig) -> dict[str, Path]:
    """Fashion-MNIST's IDX files, from torchvision's raw folder, the root itself or the Debian package."""
    root = data_root(cfg)
    searched = [root / "FashionMNIST" / "raw", root, FASHION_DEBIAN_FOLDER]
    for folder in searched:
        files = _idx_files(folder)
        if files:
            return files
    raise DatasetNotFound(
        f"Fashion-MNIST not found (looked in {', '.join(map(str, searched))}). Install it with "
        "`apt-get install dataset-fashion-mnist`, put the four IDX files "
        f"({', '.join(FASHION_FILES)}, optionally .gz) in {searched[0]}, or set benchmark.download=true.")


def cifar100_folder(cfg: BenchmarkConfig) -> Path:
    folder = data_root(cfg) / "cifar-100-python"
    if not all((folder / name).is_file() for name in ("train", "test", "meta")):
        raise DatasetNotFound(
            f"CIFAR-100 not found: expected {folder}/{{train,test,meta}} (torchvision's pickles from "
            "https://www.cs.toronto.edu/~kriz/cifar.html). Set benchmark.root to the folder that holds "
            "cifar-100-python, or set benchmark.download=true.")
    return folder


def imagenet_r_folder(cfg: BenchmarkConfig) -> Path:
    folder = data_root(cfg) / "imagenet-r"
    if not folder.is_dir():
        raise _missing("ImageNet-R", folder, "imagenet-r/<wnid>/<image>.jpg", "https://github.com/hendrycks/imagenet-r")
    return folder


def cub200_folder(cfg: BenchmarkConfig) -> Path:
    folder = data_root(cfg) / "CUB_200_2011"
    if not (folder / "train_test_split.txt").is_file():
        raise _missing("CUB-200-2011", folder / "train_test_split.txt",
                       "CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/}",
                       "https://www.vision.caltech.edu/datasets/cub_200_2011/")
    return folder


def food101_folder(cfg: BenchmarkConfig) -> Path:
    folder = data_root(cfg) / "food-101"
    if not (folder / "meta" / "train.json").is_file():
        raise _missing("Food-101", folder / "meta" / "train.json",
                       "food-101/{meta/train.json, meta/test.json, meta/classes.txt, images/<class>/<id>.jpg}",
                       "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/")
    return folder


# -- how many images each class has ---------------------------------------------------------------

def _fixed(train: int, test: int, classes: int) -> Callable:
    return lambda cfg: ([train] * classes, [test] * classes)


# The bundled digits and aepg's fixed stratified split (25% test, seed 0), per class.
DIGITS_TRAIN = [133, 136, 133, 137, 136, 136, 136, 134, 131, 135]
DIGITS_TEST = [45, 46, 44, 46, 45, 46, 45, 45, 43, 45]


def imagenet_r_split_file(cfg: BenchmarkConfig) -> Path:
    """Where the pinned split for ``split_seed`` is saved: beside the data folder."""
    return imagenet_r_folder(cfg).parent / f"imagenet-r_split_seed{cfg.split_seed}.json"


def imagenet_r_split(cfg: BenchmarkConfig) -> dict:
    """The pinned 80/20 file split of ImageNet-R for ``split_seed``: read from the saved list, or
    made the same way the loader makes it (per class: sorted, shuffled with the seed, cut at 80%)."""
    import numpy as np

    folder = imagenet_r_folder(cfg)
    saved = imagenet_r_split_file(cfg)
    if saved.is_file():
        return json.loads(saved.read_text())
    rng = np.random.default_rng(cfg.split_seed)
    split = {"seed": cfg.split_seed, "train": [], "test": []}
    for wnid in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        images = sorted(p.name for p in (folder / wnid).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        order = rng.permutation(len(images))
        cut = int(round(IMAGENET_R_TRAIN_FRACTION * len(images)))
        split["train"] += [f"{wnid}/{images[i]}" for i in sorted(order[:cut])]
        split["test"] += [f"{wnid}/{images[i]}" for i in sorted(order[cut:])]
    return split


def _imagenet_r_sizes(cfg: BenchmarkConfig) -> tuple[list[int], list[int]]:
    split = imagenet_r_split(cfg)
    classes = sorted({rel.split("/")[0] for part in ("train", "test") for rel in split[part]})
    count = {part: {c: 0 for c in classes} for part in ("train", "test")}
    for part in ("train", "test"):
        for rel in split[part]:
            count[part][rel.split("/")[0]] += 1
    return [count["train"][c] for c in classes], [count["test"][c] for c in classes]


def cub200_table(folder: Path, name: str) -> dict[str, str]:
    lines = (folder / name).read_text().split("\n")
    return dict(line.strip().split(" ", 1) for line in lines if line.strip())


def _cub200_sizes(cfg: BenchmarkConfig) -> tuple[list[int], list[int]]:
    folder = cub200_folder(cfg)
    labels, is_train = cub200_table(folder, "image_class_labels.txt"), cub200_table(folder, "train_test_split.txt")
    train, test = [0] * 200, [0] * 200
    for image_id, label in labels.items():
        (train if is_train[image_id] == "1" else test)[int(label) - 1] += 1
    return train, test


def food101_classes(folder: Path) -> list[str]:
    """Food-101's class names in their official order (``meta/classes.txt``)."""
    return [c.strip() for c in (folder / "meta" / "classes.txt").read_text().splitlines() if c.strip()]


def _food101_sizes(cfg: BenchmarkConfig) -> tuple[list[int], list[int]]:
    folder = food101_folder(cfg)
    classes = food101_classes(folder)
    parts = [json.loads((folder / "meta" / f"{part}.json").read_text()) for part in ("train", "test")]
    return [len(parts[0].get(c, [])) for c in classes], [len(parts[1].get(c, [])) for c in classes]


# -- the catalog ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetSpec:
    num_classes: int
    loader: str
    """``"module:function"``; ``function(benchmark_config)`` returns the ``ImageSplits`` (imported when a run loads it)."""
    locate: Callable[..., object]
    """``locate(benchmark_config)``: where the files are; DatasetNotFound naming the layout if absent."""
    class_sizes: Callable[..., tuple[list[int], list[int]]]
    """Training and test images per class, from metadata only."""
    display: str = ""
    uses_root: bool = True
    """False for data bundled with a package (``benchmark.root`` is ignored)."""
    downloadable: bool = False
    """torchvision can download it (``benchmark.download: true``)."""
    image_files: bool = False
    """Images in files: decoded into the cache (``benchmark.cache``) at ``benchmark.short_side``."""

    def load(self, cfg: BenchmarkConfig) -> Any:
        """The data set's train and test images (``aepg.benchmarks.images.ImageSplits``)."""
        module, _, function = self.loader.partition(":")
        return getattr(importlib.import_module(module), function)(cfg)


PACKAGE = "aepg.benchmarks"
DATASETS.add("digits", DatasetSpec(10, f"{PACKAGE}.digits:load_digits_splits", lambda cfg: None,
                                   lambda cfg: (DIGITS_TRAIN, DIGITS_TEST), "digits", uses_root=False))
DATASETS.add("fashion-mnist", DatasetSpec(10, f"{PACKAGE}.fashion_mnist:load_fashion_mnist_splits", fashion_mnist_files,
                                          _fixed(6000, 1000, 10), "Fashion-MNIST", downloadable=True))
DATASETS.add("cifar100", DatasetSpec(100, f"{PACKAGE}.cifar100:load_cifar100_splits", cifar100_folder,
                                     _fixed(500, 100, 100), "CIFAR-100", downloadable=True))
DATASETS.add("imagenet-r", DatasetSpec(200, f"{PACKAGE}.folders:load_imagenet_r_splits", imagenet_r_folder,
                                       _imagenet_r_sizes, "ImageNet-R", image_files=True))
DATASETS.add("cub200", DatasetSpec(200, f"{PACKAGE}.folders:load_cub200_splits", cub200_folder, _cub200_sizes,
                                   "CUB-200", image_files=True))
DATASETS.add("food101", DatasetSpec(101, f"{PACKAGE}.folders:load_food101_splits", food101_folder, _food101_sizes,
                                    "Food-101", image_files=True))


def download(cfg: BenchmarkConfig) -> None:
    """Fetch a downloadable data set into ``benchmark.root`` with torchvision (needs a network)."""
    import torchvision

    root = str(data_root(cfg))
    try:
        if cfg.dataset == "fashion-mnist":
            for train in (True, False):
                torchvision.datasets.FashionMNIST(root, train=train, download=True)
        elif cfg.dataset == "cifar100":
            torchvision.datasets.CIFAR100(root, train=True, download=True)
    except Exception as error:  # no network, or the mirrors failed
        raise DatasetNotFound(f"downloading {cfg.dataset} into {root} failed ({error})") from None

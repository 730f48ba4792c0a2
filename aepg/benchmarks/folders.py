"""Image-folder benchmarks with official or pinned splits: ImageNet-R, CUB-200-2011, Food-101."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from aepg.benchmarks.images import DatasetNotFound, FileImages, ImageSplits, default_data_root

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _root(root: str | None) -> Path:
    return Path(root).expanduser() if root else default_data_root()


def _require(path: Path, dataset: str, layout: str, source: str) -> None:
    if not path.exists():
        raise DatasetNotFound(f"{dataset} not found: expected {path} ({layout}). Get it from {source} "
                              "and set benchmark.root to the folder that holds it.")


def _files(paths: list[Path], labels: list[int]) -> FileImages:
    return FileImages(paths, np.asarray(labels, dtype=np.int64))


def load_imagenet_r_splits(cfg) -> ImageSplits:
    """ImageNet-R's public archive (``imagenet-r/<wnid>/*.jpg``, 200 classes) has no split: 80% of
    each class's images (sorted, then shuffled with ``split_seed``) train, 20% test. The split is
    saved as a file list beside the data the first time and read back after, so it stays pinned."""
    base, split_seed = _root(cfg.root), cfg.split_seed
    folder = base / "imagenet-r"
    _require(folder, "ImageNet-R", "imagenet-r/<wnid>/<image>.jpg", "https://github.com/hendrycks/imagenet-r")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    split_file = base / f"imagenet-r_split_seed{split_seed}.json"
    if split_file.is_file():
        split = json.loads(split_file.read_text())
    else:
        rng = np.random.default_rng(split_seed)
        split = {"seed": split_seed, "train": [], "test": []}
        for wnid in classes:
            images = sorted(p.name for p in (folder / wnid).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            order = rng.permutation(len(images))
            cut = int(round(0.8 * len(images)))
            split["train"] += [f"{wnid}/{images[i]}" for i in sorted(order[:cut])]
            split["test"] += [f"{wnid}/{images[i]}" for i in sorted(order[cut:])]
        try:  # atomically: concurrent trials may write it at once
            partial = split_file.with_name(f".{split_file.name}.{os.getpid()}.{uuid.uuid4().hex}")
            partial.write_text(json.dumps(split))
            partial.replace(split_file)
        except OSError:  # a read-only data folder: the run's artifacts still record the split
            pass
    index = {wnid: i for i, wnid in enumerate(classes)}

    def part(name: str) -> FileImages:
        return _files([folder / rel for rel in split[name]], [index[rel.split("/")[0]] for rel in split[name]])

    return ImageSplits(part("train"), part("test"), classes, manifest=split)


def load_cub200_splits(cfg) -> ImageSplits:
    """CUB-200-2011 with its official split (``train_test_split.txt``)."""
    folder = _root(cfg.root) / "CUB_200_2011"
    _require(folder / "train_test_split.txt", "CUB-200-2011",
             "CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/}",
             "https://www.vision.caltech.edu/datasets/cub_200_2011/")

    def table(name: str) -> dict[str, str]:
        lines = (folder / name).read_text().split("\n")
        return dict(line.strip().split(" ", 1) for line in lines if line.strip())

    images, labels, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    names = [name.split(".", 1)[-1] for _, name in sorted(table("classes.txt").items(), key=lambda kv: int(kv[0]))]
    parts = {"1": ([], []), "0": ([], [])}
    for image_id in sorted(images, key=int):
        paths, targets = parts[is_train[image_id]]
        paths.append(folder / "images" / images[image_id])
        targets.append(int(labels[image_id]) - 1)
    return ImageSplits(_files(*parts["1"]), _files(*parts["0"]), names)


def load_food101_splits(cfg) -> ImageSplits:
    """Food-101 with its official split (``meta/train.json``, ``meta/test.json``)."""
    folder = _root(cfg.root) / "food-101"
    _require(folder / "meta" / "train.json", "Food-101",
             "food-101/{meta/train.json, meta/test.json, meta/classes.txt, images/<class>/<id>.jpg}",
             "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/")
    classes = [c.strip() for c in (folder / "meta" / "classes.txt").read_text().splitlines() if c.strip()]
    index = {c: i for i, c in enumerate(classes)}

    def part(name: str) -> FileImages:
        listing = json.loads((folder / "meta" / f"{name}.json").read_text())
        paths, targets = [], []
        for cls in classes:
            for rel in listing[cls]:
                paths.append(folder / "images" / f"{rel}.jpg")
                targets.append(index[cls])
        return _files(paths, targets)

    return ImageSplits(part("train"), part("test"), classes)

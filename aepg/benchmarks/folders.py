"""Image-folder benchmarks with official or pinned splits: ImageNet-R, CUB-200-2011, Food-101."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from aepg.benchmarks import (
    cub200_folder,
    cub200_table,
    food101_classes,
    food101_folder,
    imagenet_r_folder,
    imagenet_r_split,
    imagenet_r_split_file,
)
from aepg.benchmarks.images import FileImages, ImageSplits
from aepg.config import BenchmarkConfig


def _files(paths: list[Path], labels: list[int]) -> FileImages:
    return FileImages(paths, np.asarray(labels, dtype=np.int64))


def load_imagenet_r_splits(cfg: BenchmarkConfig) -> ImageSplits:
    """ImageNet-R's public archive (``imagenet-r/<wnid>/*.jpg``, 200 classes) has no split: 80% of
    each class's images (sorted, then shuffled with ``split_seed``) train, 20% test. The split is
    saved as a file list beside the data the first time and read back after, so it stays pinned."""
    folder = imagenet_r_folder(cfg)
    split_file = imagenet_r_split_file(cfg)
    split = imagenet_r_split(cfg)
    if not split_file.is_file():
        try:  # atomically: concurrent trials may write it at once
            partial = split_file.with_name(f".{split_file.name}.{os.getpid()}.{uuid.uuid4().hex}")
            partial.write_text(json.dumps(split))
            partial.replace(split_file)
        except OSError:  # a read-only data folder: the run's artifacts still record the split
            pass
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    index = {wnid: i for i, wnid in enumerate(classes)}

    def part(name: str) -> FileImages:
        return _files([folder / rel for rel in split[name]], [index[rel.split("/")[0]] for rel in split[name]])

    return ImageSplits(part("train"), part("test"), classes, manifest=split)


def load_cub200_splits(cfg: BenchmarkConfig) -> ImageSplits:
    """CUB-200-2011 with its official split (``train_test_split.txt``)."""
    folder = cub200_folder(cfg)
    images = cub200_table(folder, "images.txt")
    labels, is_train = cub200_table(folder, "image_class_labels.txt"), cub200_table(folder, "train_test_split.txt")
    names = [name.split(".", 1)[-1] for _, name in sorted(cub200_table(folder, "classes.txt").items(), key=lambda kv: int(kv[0]))]
    parts = {"1": ([], []), "0": ([], [])}
    for image_id in sorted(images, key=int):
        paths, targets = parts[is_train[image_id]]
        paths.append(folder / "images" / images[image_id])
        targets.append(int(labels[image_id]) - 1)
    return ImageSplits(_files(*parts["1"]), _files(*parts["0"]), names)


def load_food101_splits(cfg: BenchmarkConfig) -> ImageSplits:
    """Food-101 with its official split (``meta/train.json``, ``meta/test.json``)."""
    folder = food101_folder(cfg)
    classes = food101_classes(folder)
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

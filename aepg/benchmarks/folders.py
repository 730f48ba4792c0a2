"""Image-folder benchmarks with official or pinned splits: ImageNet-R, CUB-200-2011, Food-101.

Their files and labels come from ``aepg.benchmarks``' listings (metadata only, checked); this
module turns a listing into the images a run reads."""

from __future__ import annotations

import json
import os
import uuid

import numpy as np

from aepg.benchmarks import Listing, cub200_listing, food101_listing, imagenet_r_listing, imagenet_r_split_file
from aepg.benchmarks.images import FileImages, ImageSplits
from aepg.config import BenchmarkConfig


def listed_splits(listing: Listing, manifest: dict | None = None) -> ImageSplits:
    """The images a listing names, as the files a run decodes (into the cache, or at every read)."""

    def files(part: list) -> FileImages:
        return FileImages([path for path, _ in part], np.asarray([label for _, label in part], dtype=np.int64))

    return ImageSplits(files(listing.train), files(listing.test), listing.class_names, manifest=manifest)


def load_imagenet_r_splits(cfg: BenchmarkConfig) -> ImageSplits:
    """ImageNet-R's public archive (``imagenet-r/<wnid>/*.jpg``, 200 classes) has no split: 80% of
    each class's images (sorted, then shuffled with ``split_seed``) train, 20% test. The split is
    saved as a file list in aepg's cache folder the first time and read back after, so it stays pinned."""
    listing = imagenet_r_listing(cfg)
    folder = listing.folder
    split = {"seed": cfg.dataset.split_seed, **{part: [str(path.relative_to(folder)) for path, _ in getattr(listing, part)]
                                        for part in ("train", "test")}}
    split_file = imagenet_r_split_file(cfg)
    if not split_file.is_file():
        try:  # atomically: concurrent trials may write it at once
            split_file.parent.mkdir(parents=True, exist_ok=True)
            partial = split_file.with_name(f".{split_file.name}.{os.getpid()}.{uuid.uuid4().hex}")
            partial.write_text(json.dumps(split))
            partial.replace(split_file)
        except OSError:  # a read-only cache folder: the run's artifacts still record the split
            pass
    return listed_splits(listing, split)


def load_cub200_splits(cfg: BenchmarkConfig) -> ImageSplits:
    """CUB-200-2011 with its official split (``train_test_split.txt``)."""
    return listed_splits(cub200_listing(cfg))


def load_food101_splits(cfg: BenchmarkConfig) -> ImageSplits:
    """Food-101 with its official split (``meta/train.json``, ``meta/test.json``)."""
    return listed_splits(food101_listing(cfg))

"""Image collections as raw uint8 images (H x W x 3 arrays): in memory, read from files (JPEG, PNG,
...), or from the decoded cache. Batching pads them (``collate``); resizing, cropping, flipping
and normalising happen after that, batched on the training device (``aepg.benchmarks.augment``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from aepg.benchmarks import DataError
from aepg.benchmarks.cache import DecodedImages, decode_or_reason


class ImageSet(Dataset):
    """Labelled images; ``image(i)`` is an H x W x 3 uint8 array (possibly a read-only view)."""

    labels: np.ndarray
    in_memory: bool
    """Held in memory: loading costs nothing, so no loader worker processes are needed."""

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        raise NotImplementedError


class ArrayImages(ImageSet):
    """Images held in memory as an N x H x W (grey) or N x H x W x C (colour) uint8 array."""

    in_memory = True

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)

    def image(self, index: int) -> np.ndarray:
        img = self.images[index]
        return np.broadcast_to(img[..., None], (*img.shape, 3)) if img.ndim == 2 else img


class FileImages(ImageSet):
    """Images decoded from their files on every read; ``short_side`` shrinks each one as it is
    decoded (as the cache stores them), None keeps the full resolution."""

    in_memory = False

    def __init__(self, paths: list[str | Path], labels: np.ndarray, short_side: int | None = None):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.short_side = short_side

    def image(self, index: int) -> np.ndarray:
        image = decode_or_reason(self.paths[index], self.short_side)
        if isinstance(image, str):
            raise DataError(f"{self.paths[index]} {image}; fix or remove it, or set benchmark.on_bad_image=skip")
        return image


class CachedImages(ImageSet):
    """Images read from the decoded cache: a view into one memory-mapped file, no copy, no decode."""

    in_memory = False

    def __init__(self, cache: DecodedImages, positions: np.ndarray, labels: np.ndarray):
        self.cache, self.positions, self.labels = cache, positions, np.asarray(labels, dtype=np.int64)

    def image(self, index: int) -> np.ndarray:
        return self.cache.array(int(self.positions[index]))


@dataclass
class ImageSplits:
    train: ImageSet
    test: ImageSet
    class_names: list[str]
    manifest: dict | None = None
    """The file lists of a split made here (not shipped with the data), for the run's artifacts."""
    skipped: list[str] = field(default_factory=list)
    """Files left out because they do not read (``benchmark.on_bad_image: skip``)."""


def collate(items: list[tuple[np.ndarray | Tensor, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """A batch of images of any sizes: uint8 (B, 3, H, W) padded at the bottom and right to the
    largest, their (height, width), and their labels. Activations of a frozen prefix
    (``aepg.models.prefix``) are stacked as they are, with no sizes."""
    if isinstance(items[0][0], Tensor):
        return (torch.stack([inputs for inputs, _ in items]), torch.zeros(len(items), 2, dtype=torch.long),
                torch.tensor([label for _, label in items]))
    sizes = np.array([image.shape[:2] for image, _ in items], dtype=np.int64)
    batch = np.zeros((len(items), 3, *sizes.max(axis=0)), dtype=np.uint8)
    for i, (image, _) in enumerate(items):
        batch[i, :, : image.shape[0], : image.shape[1]] = image.transpose(2, 0, 1)
    return torch.from_numpy(batch), torch.from_numpy(sizes), torch.tensor([label for _, label in items])

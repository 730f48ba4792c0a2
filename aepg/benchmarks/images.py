"""Image collections and the transforms that turn them into backbone inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2


class ImageSet(Dataset):
    """Labelled images; ``image(i)`` is a 3-channel uint8 CHW tensor."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Tensor:
        raise NotImplementedError


class ArrayImages(ImageSet):
    """Images held in memory as an N x H x W (grey) or N x H x W x C (colour) uint8 array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = torch.as_tensor(np.ascontiguousarray(images, dtype=np.uint8))
        self.labels = np.asarray(labels, dtype=np.int64)

    def image(self, index: int) -> Tensor:
        img = self.images[index]
        if img.ndim == 2:
            return img.unsqueeze(0).expand(3, -1, -1)
        return img.permute(2, 0, 1)


class FileImages(ImageSet):
    """Images read from files (JPEG, PNG, ...) on demand."""

    def __init__(self, paths: list[str | Path], labels: np.ndarray):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)

    def image(self, index: int) -> Tensor:
        from torchvision.io import ImageReadMode, decode_image

        return decode_image(self.paths[index], mode=ImageReadMode.RGB)


@dataclass
class ImageSplits:
    train: ImageSet
    test: ImageSet
    class_names: list[str]
    manifest: dict | None = None
    """The file lists of a split made here (not shipped with the data), for the run's artifacts."""


def build_transforms(image_size: int, mean, std, augment: bool) -> tuple[v2.Transform, v2.Transform]:
    """Training and test transforms: uint8 CHW in, normalised float CHW at ``image_size`` out.

    With ``augment`` (the paper's protocol): RandomResizedCrop(scale 0.05-1) and a horizontal
    flip for training, resize and centre crop (ratio 0.875) for testing. Without it both
    simply resize, which suits small images such as digits.
    """
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if augment:
        train = [v2.RandomResizedCrop(image_size, scale=(0.05, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        test = [v2.Resize(int(image_size / 0.875), antialias=True), v2.CenterCrop(image_size)]
    else:
        train = test = [v2.Resize((image_size, image_size), antialias=True)]
    return v2.Compose(train + finish), v2.Compose(test + finish)

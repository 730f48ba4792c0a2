"""Fashion-MNIST from its real IDX files, read by torchvision.

The catalog finds the four files, gzipped or not, in ROOT/FashionMNIST/raw (torchvision's
layout), in ROOT itself or in the Debian package's folder; they are unpacked into
ROOT/FashionMNIST/raw, where torchvision reads them.
"""

from __future__ import annotations

import gzip
import os
import shutil
import uuid
from pathlib import Path

from aepg.benchmarks import data_root, fashion_mnist_files
from aepg.benchmarks.images import ArrayImages, ImageSplits
from aepg.config import BenchmarkConfig


def _unpack(files: dict[str, Path], raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        target = raw / name
        if target.exists() and target.resolve() == source.resolve():
            continue
        # Concurrent trials may unpack at once: each writes its own file, then renames it in place.
        partial = raw / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.partial"
        with (gzip.open(source) if source.suffix == ".gz" else open(source, "rb")) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(target)


def load_fashion_mnist_splits(cfg: BenchmarkConfig) -> ImageSplits:
    import torchvision

    root = data_root(cfg)
    _unpack(fashion_mnist_files(cfg), root / "FashionMNIST" / "raw")
    train = torchvision.datasets.FashionMNIST(str(root), train=True)
    test = torchvision.datasets.FashionMNIST(str(root), train=False)
    return ImageSplits(
        ArrayImages(train.data.numpy(), train.targets.numpy()),
        ArrayImages(test.data.numpy(), test.targets.numpy()),
        list(train.classes),
    )

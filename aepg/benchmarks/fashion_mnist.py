"""Fashion-MNIST from its real IDX files (gzipped or not), read in place: nothing is written
beside them.

The catalog finds the four files in ROOT/FashionMNIST/raw (torchvision's layout), in ROOT itself
or in the Debian package's folder. Each file's magic number, shape, length, gzip integrity and
labels are checked, so a truncated download is named rather than read as noise: by the dry run and
every run's checks too (``class_sizes`` reads the files as a run will and counts what they hold).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from aepg.benchmarks import DataError, class_counts, counted_once, fashion_mnist_files
from aepg.benchmarks.images import ArrayImages, ImageSplits
from aepg.config import BenchmarkConfig

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
UBYTE = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (3 for images, 1 for labels)."""
    try:
        with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path} cannot be read ({error}); download it again") from None
    header = 4 + 4 * ndim
    if len(data) < header or data[:2] != b"\0\0" or data[2] != UBYTE or data[3] != ndim:
        raise DataError(f"{path} is not an IDX file of {ndim}-d unsigned bytes (magic {data[:4].hex() or 'missing'}, "
                        f"expected 0000080{ndim})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise DataError(f"{path} holds {len(data) - header:,} bytes after its header, but its shape {shape} needs "
                        f"{int(np.prod(shape)):,}: the file is cut short or padded; download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _split(files: dict[str, Path], prefix: str) -> ArrayImages:
    images = read_idx(files[f"{prefix}-images-idx3-ubyte"], 3)
    labels = read_idx(files[f"{prefix}-labels-idx1-ubyte"], 1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(f"{files[f'{prefix}-images-idx3-ubyte']}: {images.shape} images for {len(labels)} labels; "
                        "Fashion-MNIST holds N x 28 x 28 images and N labels")
    if labels.max(initial=0) >= len(CLASS_NAMES):
        raise DataError(f"{files[f'{prefix}-labels-idx1-ubyte']}: labels outside 0-{len(CLASS_NAMES) - 1}")
    return ArrayImages(images, labels.astype(np.int64))


def class_sizes(cfg: BenchmarkConfig) -> tuple[list[int], list[int]]:
    """Training and test images per class, as the files hold them (read and checked as a run reads them);
    a class with no image in a split is a DataError."""
    files = fashion_mnist_files(cfg)

    def count() -> tuple[list[int], list[int]]:
        return tuple(class_counts(_split(files, prefix).labels, CLASS_NAMES, files[f"{prefix}-labels-idx1-ubyte"],
                                  "Fashion-MNIST") for prefix in ("train", "t10k"))

    return counted_once(list(files.values()), count)


def load_fashion_mnist_splits(cfg: BenchmarkConfig) -> ImageSplits:
    files = fashion_mnist_files(cfg)
    return ImageSplits(_split(files, "train"), _split(files, "t10k"), list(CLASS_NAMES))

"""Fashion-MNIST from its real IDX files, read by torchvision.

The four files are looked for, gzipped or not, in ROOT/FashionMNIST/raw (torchvision's
layout), in ROOT itself and in the Debian package's folder; found files are unpacked into
ROOT/FashionMNIST/raw. With none found, torchvision's download is tried (it needs a network).
"""

from __future__ import annotations

import gzip
import os
import shutil
import uuid
from pathlib import Path

from aepg.benchmarks.images import ArrayImages, DatasetNotFound, ImageSplits, default_data_root

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")


def _find_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (plain preferred over .gz), or None if any is missing."""
    found = {}
    for name in FILES:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            return None
    return found


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


def prepare_raw_folder(root: Path) -> None:
    """Make ROOT/FashionMNIST/raw hold the four unpacked IDX files, or raise DatasetNotFound."""
    import torchvision

    raw = root / "FashionMNIST" / "raw"
    searched = [raw, root, DEBIAN_FOLDER]
    for folder in searched:
        files = _find_files(folder)
        if files:
            _unpack(files, raw)
            return
    try:
        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
    except Exception as error:  # no network, or the mirrors failed
        where = ", ".join(str(folder) for folder in searched)
        raise DatasetNotFound(
            f"Fashion-MNIST not found (looked in {where}) and the download failed ({error}). "
            "Install it with `apt-get install dataset-fashion-mnist`, or put the four IDX files "
            f"({', '.join(FILES)}, optionally .gz) in {raw} or set benchmark.root to their folder."
        ) from None


def load_fashion_mnist_splits(cfg) -> ImageSplits:
    import torchvision

    root_path = Path(cfg.root).expanduser() if cfg.root else default_data_root()
    prepare_raw_folder(root_path)
    train = torchvision.datasets.FashionMNIST(str(root_path), train=True)
    test = torchvision.datasets.FashionMNIST(str(root_path), train=False)
    return ImageSplits(
        ArrayImages(train.data.numpy(), train.targets.numpy()),
        ArrayImages(test.data.numpy(), test.targets.numpy()),
        list(train.classes),
    )

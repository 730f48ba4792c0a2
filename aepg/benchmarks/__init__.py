"""The data sets aepg knows, described without loading any: how many classes, where their files
live under ``benchmark.root``, and how many images each class has (from metadata only).

Each data set is one entry of ``aepg.catalog.DATASETS``: its config here (its keys, and methods that
answer from metadata), and a lazy reference to its loader (the modules beside this one), which
returns its train and test images. The CLI
checks configs and sizes runs with these facts before importing torch; ``aepg.benchmarks.tasks``
turns a data set into tasks. docs/extending.md shows how to add one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from aepg.catalog import DATASETS
from aepg.config import BenchmarkConfig, DatasetConfig, env_path


class DatasetNotFound(FileNotFoundError):
    """A data set is missing; the message says where it was looked for and how to get it."""


class DataError(ValueError):
    """A data set's files are there but wrong: metadata that does not parse or names missing files,
    a class without images, an unreadable image or array file. ``problems`` holds one
    (file, what is wrong) pair per file; the message shows the first few and counts the rest."""

    SHOWN = 5

    def __init__(self, message: str, problems: list[tuple[str, str]] = ()):
        self.summary, self.problems = message, list(problems)
        shown = [f"{where}: {what}" for where, what in self.problems[: self.SHOWN]]
        if len(self.problems) > self.SHOWN:
            shown.append(f"and {len(self.problems) - self.SHOWN} more files")
        super().__init__(message + (" (" + "; ".join(shown) + ")" if shown else ""))


def default_data_root() -> Path:
    return env_path("AEPG_DATA", "~/.cache/aepg/data")


def data_root(cfg: BenchmarkConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else default_data_root()


def cache_folder(cfg: BenchmarkConfig) -> Path:
    """Where the decoded cache of this data set goes: ``benchmark.dataset.cache_dir`` or ROOT/.aepg-cache."""
    folder = getattr(cfg.dataset, "cache_dir", None)
    return Path(folder).expanduser() if folder else data_root(cfg) / ".aepg-cache"


def cache_location_problem(cfg: BenchmarkConfig) -> str | None:
    """Why the decoded cache cannot go where the config puts it: a file on the way, or a read-only
    folder that holds no cache of this data set yet (one built there may still be read)."""
    folder = cache_folder(cfg)
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir():
        return f"the decoded cache cannot go in {folder}: {existing} is a file"
    if os.access(existing, os.W_OK) or any(folder.glob(f"{cfg.dataset.kind}-*px-*/manifest.json")):
        return None
    return f"the decoded cache cannot be built in {folder}: {existing} is read-only"


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IMAGENET_R_TRAIN_FRACTION = 0.8


def _missing(dataset: str, path: Path, layout: str, source: str) -> DatasetNotFound:
    return DatasetNotFound(f"{dataset} not found: expected {path} ({layout}). Get it from {source} "
                           "and set benchmark.root to the folder that holds it.")


# -- where each data set lives --------------------------------------------------------------------

FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")


def _idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (plain preferred over .gz), or None if it holds none; a
    folder with some of them is an error naming the others (never completed from elsewhere)."""
    found = {}
    for name in FASHION_FILES:
        candidates = [p for p in (folder / name, folder / f"{name}.gz") if p.is_file()]
        if candidates:
            found[name] = candidates[0]
    if found and len(found) < len(FASHION_FILES):
        missing = [name for name in FASHION_FILES if name not in found]
        raise DataError(f"Fashion-MNIST: {folder} holds {len(found)} of its 4 IDX files; add "
                        f"{', '.join(missing)} (optionally .gz) or remove the others")
    return found or None


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

_COUNTED: dict[tuple, tuple[list[int], list[int]]] = {}


def counted_once(files: list[Path], count: Callable[[], tuple[list[int], list[int]]]) -> tuple[list[int], list[int]]:
    """``count()``, read once per process for the same files (the dry run asks twice; a changed file
    is read again)."""
    key = tuple((str(path), info.st_mtime_ns, info.st_size) for path in files for info in [path.stat()])
    if key not in _COUNTED:
        _COUNTED[key] = count()
    return _COUNTED[key]


def class_counts(labels: object, class_names: list[str], labels_file: Path, display: str) -> list[int]:
    """Images per class in one split, from its labels as the run reads them; a class with no image
    is a DataError naming the file that holds the labels."""
    import numpy as np

    counts = np.bincount(labels, minlength=len(class_names)).tolist()
    empty = [class_names[c] for c, n in enumerate(counts) if n == 0]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DataError(f"{labels_file}: no images of {len(empty)} of its {len(class_names)} classes ({shown}); "
                        f"{display} has every class in both splits; download it again")
    return counts


# The bundled digits and aepg's fixed stratified split (25% test, seed 0), per class.
DIGITS_TRAIN = [133, 136, 133, 137, 136, 136, 136, 134, 131, 135]
DIGITS_TEST = [45, 46, 44, 46, 45, 46, 45, 45, 43, 45]


def imagenet_r_split_file(cfg: BenchmarkConfig) -> Path:
    """Where the pinned split for ``split_seed`` is saved: in aepg's cache folder (never among the
    user's files), named by the data folder it splits."""
    folder = imagenet_r_folder(cfg).resolve()
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    return cache_folder(cfg) / f"imagenet-r_split_seed{cfg.dataset.split_seed}_{digest}.json"


def _saved_split_file(cfg: BenchmarkConfig) -> Path:
    """The pinned split file to read: aepg's, or one an earlier aepg saved beside the data folder."""
    earlier = imagenet_r_folder(cfg).parent / f"imagenet-r_split_seed{cfg.dataset.split_seed}.json"
    saved = imagenet_r_split_file(cfg)
    return earlier if earlier.is_file() and not saved.is_file() else saved


SPLIT_FILE_FIX = "delete it to make the split anew from benchmark.dataset.split_seed and the folder as it is"


def _read_json(path: Path, fix: str = "restore it from the data set's archive"):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} cannot be read as JSON ({error}); {fix}") from None


def imagenet_r_split(cfg: BenchmarkConfig) -> dict:
    """The pinned 80/20 file split of ImageNet-R for ``split_seed``: read from the saved list, or
    made the same way the loader makes it (per class: sorted, shuffled with the seed, cut at 80%)."""
    import numpy as np

    folder = imagenet_r_folder(cfg)
    saved = _saved_split_file(cfg)
    if saved.is_file():
        split = _read_json(saved, f"it is aepg's pinned split: {SPLIT_FILE_FIX}")
        if not isinstance(split, dict) or not all(isinstance(split.get(part), list) for part in ("train", "test")):
            raise DataError(f"{saved} is not a split file (lists 'train' and 'test'); {SPLIT_FILE_FIX}")
        return split
    rng = np.random.default_rng(cfg.dataset.split_seed)
    split = {"seed": cfg.dataset.split_seed, "train": [], "test": []}
    for wnid in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        images = sorted(p.name for p in (folder / wnid).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        order = rng.permutation(len(images))
        cut = int(round(IMAGENET_R_TRAIN_FRACTION * len(images)))
        split["train"] += [f"{wnid}/{images[i]}" for i in sorted(order[:cut])]
        split["test"] += [f"{wnid}/{images[i]}" for i in sorted(order[cut:])]
    return split


@dataclass
class Listing:
    """A folder data set's image files and labels by split, read from its metadata alone (no image
    is opened), and checked: every file exists, every class has training and test images."""

    folder: Path
    class_names: list[str]
    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]]
    named_by: str = "the metadata"
    """What lists the files (named when one is missing)."""

    def sizes(self) -> tuple[list[int], list[int]]:
        counts = []
        for part in (self.train, self.test):
            count = [0] * len(self.class_names)
            for _, label in part:
                count[label] += 1
            counts.append(count)
        return counts[0], counts[1]

    def paths(self) -> list[Path]:
        return [path for part in (self.train, self.test) for path, _ in part]

    def check(self, display: str, num_classes: int) -> Listing:
        if len(self.class_names) != num_classes:
            raise DataError(f"{display}: {self.folder} has {len(self.class_names)} classes, expected {num_classes}; "
                            "benchmark.root must hold the complete data set")
        empty = [(self.class_names[c], f"no {part} images") for part, n in zip(("training", "test"), self.sizes())
                 for c in range(num_classes) if n[c] == 0]
        if empty:
            raise DataError(f"{display}: {len(empty)} classes have no images in a split", empty)
        missing = [(str(path.relative_to(self.folder)), _not_a_file(path, self.named_by))
                   for path in self.paths() if not path.is_file()]
        if missing:
            raise DataError(f"{display}: {len(missing)} files {self.named_by} names cannot be opened under {self.folder}",
                            missing)
        return self


def _not_a_file(path: Path, named_by: str) -> str:
    try:
        path.stat()
    except FileNotFoundError:
        return f"named by {named_by} but missing"
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    return "is a folder, not a file"


def imagenet_r_listing(cfg: BenchmarkConfig) -> Listing:
    folder = imagenet_r_folder(cfg)
    saved = _saved_split_file(cfg)
    split = imagenet_r_split(cfg)
    named = {rel.split("/")[0] for part in ("train", "test") for rel in split[part]}
    folders = {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if named != folders and saved.is_file():  # the folder changed since the split was pinned
        differ = [(wnid, f"named by the pinned split, not a folder of {folder}") for wnid in sorted(named - folders)]
        differ += [(wnid, "a folder the pinned split does not name") for wnid in sorted(folders - named)]
        raise DataError(f"ImageNet-R: the pinned split {saved} and {folder} name different classes; restore the "
                        f"folder as it was split, or {SPLIT_FILE_FIX}", differ)
    classes = sorted(named | folders)
    index = {wnid: i for i, wnid in enumerate(classes)}
    parts = [[(folder / rel, index[rel.split("/")[0]]) for rel in split[part]] for part in ("train", "test")]
    named_by = f"the pinned split {saved}" if saved.is_file() else "the folder listing"
    return Listing(folder, classes, *parts, named_by=named_by).check("ImageNet-R", 200)


def _by_number(image_id: str) -> int:
    """CUB-200's ids in numeric order (a malformed id sorts first; the checks name it)."""
    return int(image_id) if image_id.isdigit() else 0


def cub200_table(folder: Path, name: str) -> dict[str, str]:
    """A CUB-200 metadata file (``<image id> <value>`` per line), naming the first bad line."""
    path, table = folder / name, {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"CUB-200: {path} cannot be read ({error})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.strip().split(" ", 1)
        if len(fields) != 2:
            raise DataError(f"CUB-200: {path} line {number} is {line!r}, expected '<id> <value>'")
        table[fields[0]] = fields[1]
    return table


def cub200_listing(cfg: BenchmarkConfig) -> Listing:
    folder = cub200_folder(cfg)
    tables = {name: cub200_table(folder, f"{name}.txt")
              for name in ("images", "image_class_labels", "train_test_split", "classes")}
    images, labels, is_train = tables["images"], tables["image_class_labels"], tables["train_test_split"]
    for name in ("image_class_labels", "train_test_split"):
        if set(tables[name]) != set(images):
            unmatched = sorted(set(images) ^ set(tables[name]), key=_by_number)
            raise DataError(f"CUB-200: {name}.txt and images.txt list different image ids",
                            [(f"{name}.txt", f"image id {i} is in one file only") for i in unmatched])
    ids = sorted(tables["classes"], key=_by_number)
    if len(ids) != 200:
        raise DataError(f"CUB-200: {folder / 'classes.txt'} lists {len(ids)} classes, expected 200; restore it from "
                        "the data set's archive")
    names = [tables["classes"][i].split(".", 1)[-1] for i in ids]
    position = {class_id: i for i, class_id in enumerate(ids)}
    bad = [(f"image id {i}", f"label {labels[i]!r} is not a class id of classes.txt")
           for i in images if labels[i] not in tables["classes"]]
    if bad:
        raise DataError("CUB-200: image_class_labels.txt holds labels that classes.txt does not list", bad)
    bad = [(f"image id {i}", f"split {is_train[i]!r} is not 1 (train) or 0 (test)")
           for i in images if is_train[i] not in ("0", "1")]
    if bad:
        raise DataError("CUB-200: train_test_split.txt holds values other than 0 and 1", bad)
    parts = {"1": [], "0": []}
    for image_id in sorted(images, key=_by_number):
        parts[is_train[image_id]].append((folder / "images" / images[image_id], position[labels[image_id]]))
    return Listing(folder, names, parts["1"], parts["0"]).check("CUB-200", 200)


def food101_classes(folder: Path) -> list[str]:
    """Food-101's class names in their official order (``meta/classes.txt``)."""
    return [c.strip() for c in (folder / "meta" / "classes.txt").read_text().splitlines() if c.strip()]


def food101_listing(cfg: BenchmarkConfig) -> Listing:
    folder = food101_folder(cfg)
    try:
        classes = food101_classes(folder)
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"Food-101: {folder / 'meta' / 'classes.txt'} cannot be read ({error})") from None
    index = {c: i for i, c in enumerate(classes)}
    parts = []
    for part in ("train", "test"):
        listing = _read_json(folder / "meta" / f"{part}.json")
        if not isinstance(listing, dict):
            raise DataError(f"Food-101: {folder / 'meta' / f'{part}.json'} is not a mapping of class to images")
        unknown = [(f"meta/{part}.json", f"class {name!r} is not in meta/classes.txt") for name in listing if name not in index]
        if unknown:
            raise DataError("Food-101: the split names classes that classes.txt does not", unknown)
        parts.append([(folder / "images" / f"{rel}.jpg", index[cls]) for cls in classes for rel in listing.get(cls, [])])
    return Listing(folder, classes, *parts).check("Food-101", 101)


# -- the catalog ----------------------------------------------------------------------------------

PACKAGE = "aepg.benchmarks"


def _sizes_read_by(module: str, bench: BenchmarkConfig) -> tuple[list[int], list[int]]:
    """``module.class_sizes(bench)``, imported now (it reads array files with numpy)."""
    return importlib.import_module(f"{PACKAGE}.{module}").class_sizes(bench)


@DATASETS.register("digits", builder=f"{PACKAGE}.digits:load_digits_splits", display="digits")
class DigitsDataset(DatasetConfig):
    """scikit-learn's bundled 8x8 digits: 10 classes, 1,797 images, no download."""

    kind: Literal["digits"] = "digits"
    bundled: ClassVar[bool] = True

    def num_classes(self, bench: BenchmarkConfig) -> int:
        return 10

    def class_sizes(self, bench: BenchmarkConfig) -> tuple[list[int], list[int]]:
        return DIGITS_TRAIN, DIGITS_TEST


def _torchvision_download(name: str, bench: BenchmarkConfig, fetch: Callable[[str], None]) -> None:
    root = str(data_root(bench))
    try:
        fetch(root)
    except Exception as error:  # no network, or the mirrors failed
        raise DatasetNotFound(f"downloading {name} into {root} failed ({error})") from None


@DATASETS.register("fashion-mnist", builder=f"{PACKAGE}.fashion_mnist:load_fashion_mnist_splits",
                   display="Fashion-MNIST")
class FashionMNISTDataset(DatasetConfig):
    """Fashion-MNIST: 10 classes of 28x28 images in IDX array files; torchvision downloads it."""

    kind: Literal["fashion-mnist"] = "fashion-mnist"
    checks_files: ClassVar[bool] = True

    def num_classes(self, bench: BenchmarkConfig) -> int:
        return 10

    def locate(self, bench: BenchmarkConfig) -> dict[str, Path]:
        return fashion_mnist_files(bench)

    def class_sizes(self, bench: BenchmarkConfig) -> tuple[list[int], list[int]]:
        return _sizes_read_by("fashion_mnist", bench)

    def download(self, bench: BenchmarkConfig) -> None:
        import torchvision

        _torchvision_download("fashion-mnist", bench, lambda root: [
            torchvision.datasets.FashionMNIST(root, train=train, download=True) for train in (True, False)])


@DATASETS.register("cifar100", builder=f"{PACKAGE}.cifar100:load_cifar100_splits", display="CIFAR-100")
class CIFAR100Dataset(DatasetConfig):
    """CIFAR-100: 100 classes of 32x32 images in torchvision's pickles; torchvision downloads it."""

    kind: Literal["cifar100"] = "cifar100"
    checks_files: ClassVar[bool] = True

    def num_classes(self, bench: BenchmarkConfig) -> int:
        return 100

    def locate(self, bench: BenchmarkConfig) -> Path:
        return cifar100_folder(bench)

    def class_sizes(self, bench: BenchmarkConfig) -> tuple[list[int], list[int]]:
        return _sizes_read_by("cifar100", bench)

    def download(self, bench: BenchmarkConfig) -> None:
        import torchvision

        _torchvision_download("cifar100", bench, lambda root: torchvision.datasets.CIFAR100(root, train=True, download=True))


class ImageFilesDataset(DatasetConfig):
    """What every data set of image files holds: its files are listed from metadata alone
    (``listing``), decoded once into a memory-mapped cache, and checked image by image."""

    cache: Literal["decoded", "none"] = "decoded"
    """Decode every image once into a memory-mapped cache beside the data (``decoded``), or decode
    the files at every read (``none``)."""
    short_side: int | None = Field(None, ge=8)
    """The short side images are decoded at; default the model's test resize (256 for 224)."""
    cache_dir: str | None = None
    """Where the decoded cache goes; default ROOT/.aepg-cache (shared by every run on the node)."""
    cache_key: Literal["stat", "content"] = "stat"
    """What ties the decoded cache to its source files: their sizes and modification times (free),
    or their contents (SHA-256; sees a file replaced under the same size and time, but reads every
    source file each time a run opens the cache)."""
    on_bad_image: Literal["error", "skip"] = "error"
    """An image file that cannot be read stops the run before compute (``error``, naming the files),
    or is left out (``skip``: counted, and listed in the run's benchmark.json)."""

    def listing(self, bench: BenchmarkConfig) -> Listing:
        raise NotImplementedError

    def class_sizes(self, bench: BenchmarkConfig) -> tuple[list[int], list[int]]:
        return self.listing(bench).sizes()

    def active_params(self) -> dict[str, object]:
        """The keys that change which images a run reads (where the cache lies and how it is keyed do not)."""
        return {key: value for key, value in super().active_params().items()
                if key not in ("cache", "cache_dir", "cache_key")}


class ListedImageFiles(ImageFilesDataset):
    """An image-file data set of a fixed class count, found by ``finds(bench)`` and listed from its
    metadata by ``lists(bench)``."""

    classes: ClassVar[int]
    finds: ClassVar[Callable[[BenchmarkConfig], Path]]
    lists: ClassVar[Callable[[BenchmarkConfig], Listing]]

    def num_classes(self, bench: BenchmarkConfig) -> int:
        return self.classes

    def locate(self, bench: BenchmarkConfig) -> Path:
        return type(self).finds(bench)

    def listing(self, bench: BenchmarkConfig) -> Listing:
        return type(self).lists(bench)


@DATASETS.register("imagenet-r", builder=f"{PACKAGE}.folders:load_imagenet_r_splits", display="ImageNet-R")
class ImageNetRDataset(ListedImageFiles):
    """ImageNet-R: 200 classes of renditions in image files, split 80/20 per class by ``split_seed``."""

    kind: Literal["imagenet-r"] = "imagenet-r"
    split_seed: int = 0
    """Seed of the train/test split (ImageNet-R ships none): pinned in aepg's cache folder once drawn."""
    classes, finds, lists = 200, staticmethod(imagenet_r_folder), staticmethod(imagenet_r_listing)


@DATASETS.register("cub200", builder=f"{PACKAGE}.folders:load_cub200_splits", display="CUB-200")
class CUB200Dataset(ListedImageFiles):
    """CUB-200-2011: 200 bird classes in image files, with its official split."""

    kind: Literal["cub200"] = "cub200"
    classes, finds, lists = 200, staticmethod(cub200_folder), staticmethod(cub200_listing)


@DATASETS.register("food101", builder=f"{PACKAGE}.folders:load_food101_splits", display="Food-101")
class Food101Dataset(ListedImageFiles):
    """Food-101: 101 dish classes in image files, with its official split."""

    kind: Literal["food101"] = "food101"
    classes, finds, lists = 101, staticmethod(food101_folder), staticmethod(food101_listing)

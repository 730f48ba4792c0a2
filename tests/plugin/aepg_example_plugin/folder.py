"""A generic image-folder data set: torchvision's ImageFolder layout, one folder per split, the
classes counted from the folders (so the entry's class count depends on its keys and the root)."""

from pathlib import Path
from typing import Literal

from aepg.benchmarks import IMAGE_SUFFIXES, DatasetNotFound, ImageFilesDataset, Listing, data_root
from aepg.catalog import DATASETS
from aepg.config import BenchmarkConfig


@DATASETS.register("image-folder", builder="aepg_example_plugin.folder:load_splits", display="image folder")
class ImageFolder(ImageFilesDataset):
    """Images in torchvision's ImageFolder layout, ROOT/<folder>/{train,test}/<class>/<image>: the
    classes are the training folder's subfolders, in sorted order."""

    kind: Literal["image-folder"] = "image-folder"
    folder: str = "images"
    """The data set's folder under ``benchmark.root``."""

    def locate(self, bench: BenchmarkConfig) -> Path:
        folder = data_root(bench) / self.folder
        if not all((folder / split).is_dir() for split in ("train", "test")):
            raise DatasetNotFound(f"image folder not found: expected {folder}/{{train,test}}/<class>/<image>; "
                                  "set benchmark.root and benchmark.dataset.folder to where it is")
        return folder

    def classes(self, bench: BenchmarkConfig) -> list[str]:
        return sorted(p.name for p in (self.locate(bench) / "train").iterdir() if p.is_dir())

    def num_classes(self, bench: BenchmarkConfig) -> int:
        return len(self.classes(bench))

    def listing(self, bench: BenchmarkConfig) -> Listing:
        folder, classes = self.locate(bench), self.classes(bench)
        parts = [[(image, label) for label, name in enumerate(classes) if (folder / split / name).is_dir()
                  for image in sorted((folder / split / name).iterdir()) if image.suffix.lower() in IMAGE_SUFFIXES]
                 for split in ("train", "test")]
        return Listing(folder, classes, *parts, named_by="the folder listing").check("image folder", len(classes))


def load_splits(bench: BenchmarkConfig):
    from aepg.benchmarks.folders import listed_splits

    return listed_splits(bench.dataset.listing(bench))

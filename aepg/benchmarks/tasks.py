"""Class-incremental benchmarks: a data set, a seeded class order, and tasks with disjoint classes.

Classes are relabelled by their position in the class order, so task k owns the head
columns ``[task.start, task.stop)`` and "all classes seen after task k" is ``[0, task.stop)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from aepg.benchmarks import DataError, cache_folder, data_root
from aepg.benchmarks.augment import BatchView, test_resize
from aepg.benchmarks.cache import ensure as ensure_cache
from aepg.benchmarks.images import CachedImages, FileImages, ImageSet, ImageSplits
from aepg.benchmarks.order import class_order, task_groups
from aepg.benchmarks.scan import scan
from aepg.config import BenchmarkConfig


class TaskImages(Dataset):
    """The images of some classes, as raw uint8 arrays, labelled by class-order position."""

    def __init__(self, images: ImageSet, indices: np.ndarray, position: np.ndarray):
        self.images, self.indices, self.position = images, indices, position

    @property
    def in_memory(self) -> bool:
        return self.images.in_memory

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        index = int(self.indices[i])
        return self.images.image(index), int(self.position[self.images.labels[index]])


@dataclass
class Task:
    index: int
    classes: list[int]
    """Original class ids, in class-order."""
    start: int
    stop: int
    train: TaskImages
    test: TaskImages


@dataclass
class Benchmark:
    dataset: str
    class_order: list[int]
    class_names: list[str]
    tasks: list[Task]
    train_view: BatchView
    """Padded uint8 training batches to model inputs (augmented when the config says so)."""
    test_view: BatchView
    split_manifest: dict | None = None
    skipped: list[str] = field(default_factory=list)
    """Image files left out because they do not read (``benchmark.on_bad_image: skip``)."""

    def provenance(self) -> dict:
        """Which data a run read: the digest of ``describe()`` (benchmark.json's content, keys
        sorted) and the decoded cache its images came from (the folder's name carries its digest)."""
        described = json.dumps(self.describe(), sort_keys=True).encode()
        cache = getattr(self.tasks[0].train.images, "cache", None) if self.tasks else None
        return {"dataset": self.dataset, "digest": hashlib.sha256(described).hexdigest()[:16],
                "decoded_cache": cache.folder.name if cache else None}

    def describe(self) -> dict:
        """What pins the benchmark down: written into each run's artifacts."""
        return {
            "dataset": self.dataset,
            "class_order": self.class_order,
            **({"skipped_images": self.skipped} if self.skipped else {}),
            "tasks": [
                {
                    "classes": task.classes,
                    "class_names": [self.class_names[c] for c in task.classes],
                    "train_size": len(task.train),
                    "test_size": len(task.test),
                }
                for task in self.tasks
            ],
        }


def _indices_of(labels: np.ndarray, classes: list[int], per_class: int | None, rng: np.random.Generator) -> np.ndarray:
    chosen = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if per_class is not None and len(idx) > per_class:
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        chosen.append(idx)
    return np.concatenate(chosen)


def short_side(cfg: BenchmarkConfig, image_size: int) -> int:
    """The short side folder images are decoded at: ``benchmark.dataset.short_side``, or the test resize of
    the model's input (256 for 224)."""
    return getattr(cfg.dataset, "short_side", None) or test_resize(image_size)


def decode_folder_images(cfg: BenchmarkConfig, splits: ImageSplits, side: int) -> ImageSplits:
    """Folder data sets at ``side`` pixels: from the decoded cache, built first if missing
    (``benchmark.dataset.cache: decoded``), or decoded from the files on every read (``none``). Files
    that do not read stop the run (``benchmark.dataset.on_bad_image: error``) or are left out (``skip``)."""
    if not isinstance(splits.train, FileImages):
        return splits
    root, dataset = data_root(cfg), cfg.dataset
    paths = splits.train.paths + splits.test.paths
    if dataset.cache == "none":
        found = scan([Path(p) for p in paths]) if dataset.on_bad_image == "skip" else []
        unreadable = {str(path): why for path, why in found}
    else:
        cache = ensure_cache(paths, root, side, cache_folder(cfg), dataset.kind, content=dataset.cache_key == "content")
        unreadable = {str(root / rel): why for rel, why in cache.unreadable().items()}
    if unreadable and dataset.on_bad_image == "error":
        raise DataError(f"{dataset.kind}: {len(unreadable)} images do not decode; fix or remove them, or set "
                        "benchmark.dataset.on_bad_image=skip", [(os.path.relpath(p, root), why) for p, why in unreadable.items()])
    keep = np.array([path not in unreadable for path in paths], dtype=bool)
    n = len(splits.train)
    parts = []
    for part, start in ((splits.train, 0), (splits.test, n)):
        positions = np.arange(start, start + len(part))
        kept = positions[keep[positions]]
        if dataset.cache == "none":
            parts.append(FileImages([paths[i] for i in kept], part.labels[kept - start], side))
        else:
            parts.append(CachedImages(cache, kept, part.labels[kept - start]))
    skipped = sorted(os.path.relpath(path, root) for path in unreadable)
    return ImageSplits(*parts, splits.class_names, splits.manifest, skipped)


def build_benchmark(cfg: BenchmarkConfig, image_size: int, mean, std, channels_last: bool = False) -> Benchmark:
    """Tasks of ``cfg.num_tasks`` near-equal groups of classes, in the order ``cfg.order_seed`` fixes."""
    num_classes = cfg.num_classes()
    splits = decode_folder_images(cfg, cfg.dataset.load(cfg), short_side(cfg, image_size))
    if len(splits.class_names) != num_classes:
        raise DataError(f"{cfg.dataset.kind}: found {len(splits.class_names)} classes, expected {num_classes}")
    order = class_order(num_classes, cfg.order_seed)
    position = np.empty(num_classes, dtype=np.int64)
    position[order] = np.arange(num_classes)
    rng = np.random.default_rng(cfg.order_seed)
    tasks, start = [], 0
    for index, classes in enumerate(task_groups(order, cfg.num_tasks)):
        train_idx = _indices_of(splits.train.labels, classes, cfg.max_train_per_class, rng)
        test_idx = _indices_of(splits.test.labels, classes, cfg.max_test_per_class, rng)
        tasks.append(
            Task(
                index,
                classes,
                start,
                start + len(classes),
                TaskImages(splits.train, train_idx, position),
                TaskImages(splits.test, test_idx, position),
            )
        )
        start += len(classes)
    views = [BatchView(image_size, mean, std, cfg.augment, train, channels_last, cfg.crop, cfg.crop_scale_min,
                       cfg.crop_padding, cfg.test_interpolation) for train in (True, False)]
    return Benchmark(cfg.dataset.kind, order, splits.class_names, tasks, *views, splits.manifest, splits.skipped)

"""Training images per second per core through the JPEG path and through the decoded cache.

Writes a folder of JPEGs in ImageNet-R's layout with ImageNet-R-like sizes (short side 300-800
px, aspect 2:3 to 3:2, photo-like content), then times, on one core (one process, one torch
thread), what the CPU cores of a training worker must do per image: load it and batch it
(padded uint8). The JPEG path decodes every file at every read (``benchmark.cache: none``); the
cache path reads the decoded cache, whose one-off build is timed separately. The augmentation
(RandomResizedCrop + flip + resize to 224 + normalise) runs on the training device, the GPU in
a real run; its rate here, on this CPU, is printed on its own line.

    python bench/input_pipeline.py [--images 3000] [--batches 20]
Target: the cache path >= 5x the JPEG path per core.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aepg.benchmarks.cache import available_cpus
from aepg.benchmarks.images import collate
from aepg.benchmarks.tasks import build_benchmark
from aepg.config import BenchmarkConfig

IMAGE_SIZE, BATCH = 224, 64
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def write_folder(root: Path, count: int, classes: int = 200) -> None:
    """Photo-like JPEGs: smooth colour fields (upsampled random patches) with fine noise."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 10, (1300, 1300, 3)).astype(np.int16)
    for i in range(count):
        short = int(rng.integers(300, 801))
        aspect = float(np.exp(rng.uniform(np.log(2 / 3), np.log(3 / 2))))
        height, width = (short, int(short * aspect)) if aspect >= 1 else (int(short / aspect), short)
        patch = Image.fromarray(rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8))
        base = np.asarray(patch.resize((width, height), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(base + noise[:height, :width], 0, 255).astype(np.uint8)
        folder = root / "imagenet-r" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def batches_of(benchmark, batches: int):
    dataset = benchmark.tasks[0].train
    order = np.random.default_rng(0).permutation(len(dataset))
    for b in range(batches):
        yield [dataset[int(i)] for i in order[(b * BATCH) % len(order):][:BATCH]]


def loading_rate(benchmark, batches: int) -> float:
    """Images per second loaded and batched in this process: a loader worker's work."""
    count, start = 0, time.perf_counter()
    for items in batches_of(benchmark, batches):
        collate(items)
        count += len(items)
    return count / (time.perf_counter() - start)


def augmentation_rate(benchmark, batches: int) -> float:
    """Images per second through the batched crops, here on the CPU (on the GPU in a real run)."""
    ready = [collate(items) for items in batches_of(benchmark, batches)]
    crops = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for images, sizes, _ in ready:
        benchmark.train_view(images, sizes, crops)
    return sum(len(images) for images, _, _ in ready) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_folder(root, args.images)
        print(f"wrote {args.images} JPEGs in ImageNet-R's layout in {time.perf_counter() - start:.0f} s "
              f"({sum(p.stat().st_size for p in root.rglob('*.jpg')) / args.images / 1e3:.0f} kB each)")

        def benchmark(cache: str):
            cfg = BenchmarkConfig(dataset={"kind": "imagenet-r", "cache": cache}, root=tmp, num_tasks=1, augment=True)
            return build_benchmark(cfg, IMAGE_SIZE, MEAN, STD)

        jpeg = loading_rate(benchmark("none"), args.batches)
        print(f"JPEG path:  {jpeg:8.1f} training images/s loaded and batched on one core")
        start = time.perf_counter()
        cached = benchmark("decoded")
        build = time.perf_counter() - start
        print(f"cache build (once, {available_cpus()} processes): {build:.1f} s, {args.images / build:.0f} images/s")
        fast = loading_rate(cached, args.batches)
        print(f"cache path: {fast:8.1f} training images/s loaded and batched on one core")
        print(f"augmentation on this CPU (the GPU in a real run): {augmentation_rate(cached, args.batches):.1f} images/s")
    print(f"ratio cache / JPEG per core: {fast / jpeg:.1f}  (target >= 5)")


if __name__ == "__main__":
    main()

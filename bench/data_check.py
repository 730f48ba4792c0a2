"""How long the dry run's data check takes on an ImageNet-R-sized folder: the listing against the
metadata, then the header pass over every image (``aepg.preflight.problems``, as a run calls it).

It writes 200 class folders of real JPEGs (30,000 images by default, at ImageNet-R's typical
size) into a temporary folder, then times the check cold (the files just written may still be
in the page cache: drop it first for a cold-disk figure) and again.

    python bench/data_check.py [--images 30000] [--keep FOLDER]
Target: well under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def write_folder(root: Path, images: int, size=(300, 400)) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    for i in range(images):
        folder = root / "imagenet-r" / f"n{i % 200:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(base, i, axis=1)).save(folder / f"{i:06d}.jpg", quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--keep", help="write (or reuse) the folder here instead of a temporary one")
    args = parser.parse_args()

    from aepg import preflight
    from aepg.config import load_config

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="aepg-data-check-"))
    try:
        if not (root / "imagenet-r").is_dir():
            start = time.perf_counter()
            write_folder(root, args.images)
            print(f"wrote {args.images:,} JPEGs in {time.perf_counter() - start:.1f} s under {root}")
        cfg = load_config(REPO / "configs" / "digits.yaml", ["benchmark.dataset=imagenet-r", f"benchmark.root={root}"])
        for attempt in ("first", "second"):
            start = time.perf_counter()
            problems = preflight.problems(cfg)
            elapsed = time.perf_counter() - start
            print(f"{attempt} check: {elapsed:.2f} s for {args.images:,} images "
                  f"({args.images / elapsed:,.0f} images/s), {len(problems)} problems")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

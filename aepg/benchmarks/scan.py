"""The header pass: every image file a run will read, opened as Pillow opens it but not decoded.

It finds what would stop a run minutes in: a missing, empty or unreadable file, a file that is not
an image, an image larger than Pillow agrees to decode. It cannot find a file cut short after its
header (a truncated JPEG): the decoded cache's build does, and names it. Threads overlap the
reads, so a folder of tens of thousands of images takes seconds.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

THREADS = 8


def header_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with one image file, or None when its header reads as an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        if os.stat(path).st_size == 0:
            return "is empty (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        return f"is larger than Pillow decodes (Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,} pixels)"
    except UnidentifiedImageError:
        return "is not an image Pillow can read"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        return f"is {width} x {height} pixels, more than Pillow decodes (Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,})"
    if width == 0 or height == 0:
        return f"is {width} x {height} pixels"
    return None


def scan(paths: list[Path], description: str = "reading image headers") -> list[tuple[Path, str]]:
    """(path, problem) for every file of ``paths`` whose header does not read, in ``paths``' order;
    a progress bar on a terminal."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(THREADS) as pool, tqdm(total=len(paths), desc=description, unit="img",
                                                   disable=None, leave=False) as bar:
        found = []
        for path, problem in zip(paths, pool.map(header_problem, paths, chunksize=64)):
            bar.update()
            if problem:
                found.append((path, problem))
    return found

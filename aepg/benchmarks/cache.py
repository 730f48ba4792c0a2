"""The decoded-image cache of folder data sets (ImageNet-R, CUB-200, Food-101).

On first use every image is decoded once (Pillow, with JPEG draft decoding at a reduced scale),
resized so its short side is S, and stored as uint8 in one memory-mapped file with an index of
offsets and sizes; an image that does not decode is recorded (with why) instead. A manifest ties
the cache to its source files (paths, sizes, modification times), and the cache's folder is named by the manifest's digest: a changed data set is cached
anew, never served from the old cache. The build runs in parallel over the cores with a progress
bar, under a file lock, into a temporary folder renamed into place at the end: an interrupted
build is never read, and the runs, workers and trials of a node build it once and share it (the
operating system's page cache serves every process that maps it).

Numpy and Pillow only: decoding processes start without torch.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

FORMAT = 1
CHUNK = 32


def decode(path: str, short_side: int | None = None) -> np.ndarray:
    """An image file as an H x W x 3 uint8 array; with ``short_side``, resized so its short side is
    that many pixels (the long side scaled as torchvision's ``Resize(short_side)`` does)."""
    from PIL import Image

    with Image.open(path) as img:
        if short_side:
            img.draft("RGB", (short_side, short_side))  # JPEG: decode at the smallest scale still >= S
        img = img.convert("RGB")
        if short_side:
            width, height = img.size
            if width <= height:
                size = (short_side, int(short_side * height / width))
            else:
                size = (int(short_side * width / height), short_side)
            if size != img.size:
                img = img.resize(size, Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _decode_or_reason(path: str, short_side: int) -> np.ndarray | str:
    """The decoded image, or why it cannot be decoded (a truncated or corrupt file)."""
    from PIL import Image

    try:
        return decode(path, short_side)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"cannot be decoded ({type(error).__name__}: {error})"


def _decode_chunk(paths: list[str], short_side: int) -> list[np.ndarray | str]:
    return [_decode_or_reason(path, short_side) for path in paths]


def manifest(paths: list[str], root: Path, short_side: int) -> dict:
    """What ties a cache to its sources: every file's path (relative to the data root), size and
    modification time, in order, and the short side."""
    lines = []
    for path in paths:
        info = os.stat(path)
        lines.append(f"{os.path.relpath(path, root)}|{info.st_size}|{info.st_mtime_ns}")
    text = f"format {FORMAT}\nshort side {short_side}\n" + "\n".join(lines)
    return {"format": FORMAT, "short_side": short_side, "images": len(paths),
            "digest": hashlib.sha256(text.encode()).hexdigest()}


class DecodedImages:
    """A built cache: ``array(i)`` is image i as an H x W x 3 view of the memory-mapped file.

    Pickles as its folder, so DataLoader workers and Ray actors map the file themselves."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.index = np.load(self.folder / "index.npy")
        self._data: np.memmap | None = None

    def unreadable(self) -> dict[str, str]:
        """The source files that did not decode (relative to the data root), and why."""
        return json.loads((self.folder / "manifest.json").read_text()).get("unreadable", {})

    def __getstate__(self) -> dict:
        return {"folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"])

    def __len__(self) -> int:
        return len(self.index)

    def array(self, i: int) -> np.ndarray:
        if self._data is None:
            self._data = np.memmap(self.folder / "images.u8", dtype=np.uint8, mode="r")
        offset, height, width = self.index[i]
        return self._data[offset : offset + height * width * 3].reshape(height, width, 3)


def _build(paths: list[str], short_side: int, target: Path, workers: int, description: str) -> dict[str, str]:
    """Decode every image into ``target`` (a folder that does not exist yet); an image that does not
    decode is stored as 0 x 0 pixels, and returned as {path: why}."""
    from tqdm.auto import tqdm

    target.mkdir(parents=True)
    index = np.zeros((len(paths), 3), dtype=np.int64)
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    offset, position, unreadable = 0, 0, {}
    with open(target / "images.u8", "wb") as out, tqdm(total=len(paths), desc=description, unit="img") as bar, \
            ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for arrays in pool.map(_decode_chunk, chunks, [short_side] * len(chunks)):
            for array in arrays:
                if isinstance(array, str):
                    unreadable[paths[position]] = array
                    array = np.zeros((0, 0, 3), dtype=np.uint8)
                index[position] = (offset, array.shape[0], array.shape[1])
                out.write(array.tobytes())
                offset += array.nbytes
                position += 1
            bar.update(len(arrays))
        out.flush()
        os.fsync(out.fileno())
    np.save(target / "index.npy", index)
    return unreadable


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ensure(paths: list[str], root: Path, short_side: int, folder: Path, name: str,
           workers: int | None = None) -> DecodedImages:
    """The cache of ``paths`` at ``short_side`` under ``folder``, built first if it is missing."""
    described = manifest(paths, root, short_side)
    final = folder / f"{name}-{short_side}px-{described['digest'][:16]}"
    if (final / "manifest.json").is_file():
        return DecodedImages(final)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per cache; the others wait, then read
        if not (final / "manifest.json").is_file():
            for stale in folder.glob(f".{final.name}.*.partial"):  # left by a build that was killed
                shutil.rmtree(stale, ignore_errors=True)
            partial = folder / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
            start = time.perf_counter()
            unreadable = _build(paths, short_side, partial, workers or available_cpus(), f"decoding {name} into its cache")
            described["build_seconds"] = round(time.perf_counter() - start, 1)
            described["unreadable"] = {os.path.relpath(path, root): why for path, why in unreadable.items()}
            (partial / "manifest.json").write_text(json.dumps(described, indent=1))
            partial.rename(final)
    return DecodedImages(final)

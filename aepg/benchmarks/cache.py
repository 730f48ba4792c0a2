"""The decoded-image cache of folder data sets (ImageNet-R, CUB-200, Food-101).

On first use every image is decoded once (Pillow, with JPEG draft decoding at a reduced scale),
resized so its short side is S, and stored as uint8 in one memory-mapped file with an index of
offsets, sizes and CRC-32 checksums; an image that does not decode is recorded (with why) instead. A manifest ties
the cache to its source files (paths, sizes, modification times, or contents), and the cache's
folder is named by the manifest's digest: a changed data set is cached anew, never served from
the old cache. The build runs in parallel over the cores with a progress
bar, under a file lock, into a temporary folder renamed into place at the end: an interrupted
build is never read, and the runs, workers and trials of a node build it once and share it (the
operating system's page cache serves every process that maps it). A cache whose data file is not
the size its index says is built again; an image whose bytes no longer match its checksum (checked
the first time each process reads it) stops the run with ``CacheDamaged`` and marks the cache to be
built again; a builder that is stopped (Ctrl-Z) is named with its PID
rather than waited on forever; decoding processes end with their build, even on SIGKILL.

Numpy and Pillow only: decoding processes start without torch.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
import zlib
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

FORMAT = 2
CHUNK = 32
DAMAGED = "damaged.txt"
"""Left in a cache folder (with why) when a run finds it damaged; the next build names the cause."""
log = logging.getLogger("aepg")


class CacheDamaged(ValueError):
    """A cached image's bytes differ from those it was built with (the disk or a copy changed them)."""


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


def decode_or_reason(path: str, short_side: int) -> np.ndarray | str:
    """The decoded image, or why it cannot be decoded (a truncated or corrupt file)."""
    from PIL import Image

    try:
        return decode(path, short_side)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"cannot be decoded ({type(error).__name__}: {error})"


def _decode_chunk(paths: list[str], short_side: int) -> list[np.ndarray | str]:
    return [decode_or_reason(path, short_side) for path in paths]


def _content_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(paths: list[str], root: Path, short_side: int, content: bool = False) -> dict:
    """What ties a cache to its sources: every file's path (relative to the data root), size and
    modification time, in order, and the short side. With ``content`` each file's SHA-256 stands
    in for its size and time: a file replaced under the same size and time is seen, at the cost of
    reading every source file whenever a run opens the cache."""
    lines = []
    for path in paths:
        if content:
            lines.append(f"{os.path.relpath(path, root)}|{_content_digest(path)}")
        else:
            info = os.stat(path)
            lines.append(f"{os.path.relpath(path, root)}|{info.st_size}|{info.st_mtime_ns}")
    text = f"format {FORMAT}\nshort side {short_side}\n" + ("content\n" if content else "") + "\n".join(lines)
    return {"format": FORMAT, "short_side": short_side, "images": len(paths),
            "keyed_on": "content" if content else "stat", "digest": hashlib.sha256(text.encode()).hexdigest()}


class DecodedImages:
    """A built cache: ``array(i)`` is image i as an H x W x 3 view of the memory-mapped file.

    Pickles as its folder, so DataLoader workers and Ray actors map the file themselves."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.index = np.load(self.folder / "index.npy")
        """One row per image: offset, height, width, CRC-32 of its bytes."""
        self._data: np.memmap | None = None
        self._verified = np.zeros(len(self.index), dtype=bool)

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
        offset, height, width, crc = self.index[i]
        image = self._data[offset : offset + height * width * 3]
        if not self._verified[i]:
            if zlib.crc32(image) != crc:
                self.mark_damaged(f"a run found image {i}'s bytes changed")
                raise CacheDamaged(f"the decoded cache {self.folder} is damaged: image {i}'s bytes differ from "
                                   "when it was built; it is built again on the next run")
            self._verified[i] = True
        return image.reshape(height, width, 3)

    def mark_damaged(self, why: str) -> None:
        """Make ``ensure`` build this cache again, saying ``why`` (processes reading it keep their mapping)."""
        (self.folder / DAMAGED).write_text(why)
        (self.folder / "manifest.json").unlink(missing_ok=True)


def _build(paths: list[str], short_side: int, target: Path, workers: int, description: str) -> dict[str, str]:
    """Decode every image into ``target`` (a folder that does not exist yet); an image that does not
    decode is stored as 0 x 0 pixels, and returned as {path: why}."""
    from tqdm.auto import tqdm

    target.mkdir(parents=True)
    index = np.zeros((len(paths), 4), dtype=np.int64)
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    offset, position, unreadable = 0, 0, {}
    with open(target / "images.u8", "wb") as out, tqdm(total=len(paths), desc=description, unit="img") as bar, \
            ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        for arrays in pool.map(_decode_chunk, chunks, [short_side] * len(chunks)):
            for array in arrays:
                if isinstance(array, str):
                    unreadable[paths[position]] = array
                    array = np.zeros((0, 0, 3), dtype=np.uint8)
                data = array.tobytes()
                index[position] = (offset, array.shape[0], array.shape[1], zlib.crc32(data))
                out.write(data)
                offset += array.nbytes
                position += 1
            bar.update(len(arrays))
        out.flush()
        os.fsync(out.fileno())
    np.save(target / "index.npy", index)
    return unreadable


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _die_with_parent(parent: int) -> None:
    """A decoding process ends when the build that started it does, even on SIGKILL (Linux); a
    build that died while this process started up has ended it already."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


class CacheBusy(RuntimeError):
    """The cache is being built by a process that is stopped, so waiting for it would never end."""


def _holder(lock_path: Path) -> int | None:
    try:
        return int(lock_path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _wait_for_lock(lock, lock_path: Path, final: Path, stopped_grace: float) -> None:
    """Take the build lock. A dead holder's lock is free already (the kernel drops it); a stopped
    holder (Ctrl-Z) is named with its PID after ``stopped_grace`` seconds instead of waited on forever."""
    import psutil

    stopped_since, said = None, 0.0
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            pid = _holder(lock_path)
            try:
                stopped = pid is not None and psutil.Process(pid).status() == psutil.STATUS_STOPPED
            except psutil.NoSuchProcess:
                stopped = False
            stopped_since = (stopped_since or time.monotonic()) if stopped else None
            if stopped_since and time.monotonic() - stopped_since > stopped_grace:
                raise CacheBusy(f"the decoded cache {final} is being built by process {pid}, which is stopped: continue "
                                f"it (`kill -CONT {pid}`, or `fg` in its terminal) or end it (`kill {pid}`)") from None
            if time.monotonic() - said > 30:
                log.info("waiting for process %s to finish building the decoded cache %s", pid, final)
                said = time.monotonic()
            time.sleep(0.5)
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()


def fails_check(folder: Path) -> str | None:
    """Why a built cache cannot be served (its data file is not the size its index says), or None."""
    try:
        index = np.load(folder / "index.npy")
        expected = int((index[:, 1] * index[:, 2] * 3).sum())
        actual = (folder / "images.u8").stat().st_size
    except (OSError, ValueError) as error:
        return f"it cannot be read ({error})"
    return None if actual == expected else f"images.u8 holds {actual:,} bytes, its index needs {expected:,}"


def ensure(paths: list[str], root: Path, short_side: int, folder: Path, name: str,
           workers: int | None = None, content: bool = False, stopped_grace: float = 10.0) -> DecodedImages:
    """The cache of ``paths`` at ``short_side`` under ``folder``, built first if it is missing or
    fails its check; ``content`` keys it on the files' bytes (see ``manifest``)."""
    described = manifest(paths, root, short_side, content)
    final = folder / f"{name}-{short_side}px-{described['digest'][:16]}"
    if (final / "manifest.json").is_file() and not fails_check(final):
        return DecodedImages(final)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / f".{final.name}.lock"
    with open(lock_path, "a+") as lock:
        _wait_for_lock(lock, lock_path, final, stopped_grace)  # one builder per cache; the others wait, then read
        broken = fails_check(final) if (final / "manifest.json").is_file() else "missing"
        if broken and final.exists():
            damaged = final / DAMAGED
            why = broken if broken != "missing" else damaged.read_text() if damaged.is_file() else \
                "its manifest.json is missing"
            log.warning("the decoded cache %s fails its check (%s): building it again", final, why)
            shutil.rmtree(final)
        if broken:
            for stale in folder.glob(f".{final.name}.*.partial"):  # left by a build that was killed
                shutil.rmtree(stale, ignore_errors=True)
            partial = folder / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
            start = time.perf_counter()
            unreadable = _build(paths, short_side, partial, workers or available_cpus(),
                                f"decoding {name} into its cache")
            described["build_seconds"] = round(time.perf_counter() - start, 1)
            described["unreadable"] = {os.path.relpath(path, root): why for path, why in unreadable.items()}
            (partial / "manifest.json").write_text(json.dumps(described, indent=1))
            partial.rename(final)
    return DecodedImages(final)

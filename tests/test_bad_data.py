"""Data folders that are slightly wrong, the way downloads, copies and full disks leave them: each
fault is written for real, and each is one line naming the file, before compute where possible."""

import json
import logging
import os
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, fake_fashion, jpeg, run_aepg, run_aepg_read_only, write_idx
from PIL import Image

from aepg import preflight
from aepg.benchmarks import DataError, imagenet_r_split_file
from aepg.benchmarks.tasks import build_benchmark
from aepg.config import BenchmarkConfig, load_config

IMAGES_PER_CLASS = 5  # 4 train / 1 test under the 80/20 split


@pytest.fixture(scope="module")
def good_imagenet_r(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet-r-good")
    for c in range(200):
        for i in range(IMAGES_PER_CLASS):
            jpeg(root / "imagenet-r" / f"n{c:08d}" / f"img_{i}.jpg", c * 10 + i)
    return root


@pytest.fixture
def imagenet_r(good_imagenet_r, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(good_imagenet_r, root)
    return root


def png_claiming(path, width, height):
    """A real 1 x 1 PNG whose header (IHDR, with a valid CRC) says ``width`` x ``height``."""
    Image.new("RGB", (1, 1)).save(path, format="PNG")
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # chunk type + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


def _loop(path):
    path.unlink()
    os.symlink(path.name, path)  # a link to itself


FOLDER_FAULTS = {
    "text named .jpg": (lambda c: c.joinpath("img_0.jpg").write_text("<html>404</html>"), "img_0.jpg: is not an image"),
    "zero-byte image": (lambda c: c.joinpath("img_1.jpg").write_bytes(b""), "img_1.jpg: is empty (0 bytes)"),
    "huge image": (lambda c: png_claiming(c / "img_2.jpg", 20000, 20000), "than Pillow decodes"),
    "symlink loop": (lambda c: _loop(c / "img_3.jpg"), "img_3.jpg: cannot be read (Too many levels of symbolic links)"),
    "empty class folder": (lambda c: [p.unlink() for p in c.iterdir()], "n00000007: no training images"),
}


@pytest.mark.parametrize("fault", list(FOLDER_FAULTS))
def test_a_bad_imagenet_r_folder_fails_the_dry_run_naming_the_file(imagenet_r, fault):
    damage, expected = FOLDER_FAULTS[fault]
    damage(imagenet_r / "imagenet-r" / "n00000007")
    result = run_aepg(["train", str(CONFIGS / "digits.yaml"), "benchmark.dataset=imagenet-r",
                       f"benchmark.root={imagenet_r}", "--dry-run"], cwd=imagenet_r)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr


def cfg_for(root, *overrides):
    return load_config(CONFIGS / "digits.yaml", ["benchmark.dataset=imagenet-r", f"benchmark.root={root}", *overrides])


def test_many_bad_files_are_counted_and_skip_trains_without_them(imagenet_r):
    for c in range(8):
        (imagenet_r / "imagenet-r" / f"n{c:08d}" / "img_0.jpg").write_text("not an image")
    lines = [f"{key}: {message}" for key, message in preflight.problems(cfg_for(imagenet_r))]
    assert lines[0].startswith("benchmark: 8 image files cannot be read") and "benchmark.dataset.on_bad_image=skip" in lines[0]
    assert lines[1] == "n00000000/img_0.jpg: is not an image Pillow can read"
    assert lines[-1] == "benchmark: and 3 more files" and len(lines) == 1 + DataError.SHOWN + 1
    assert preflight.problems(cfg_for(imagenet_r, "benchmark.dataset.on_bad_image=skip")) == []


@pytest.mark.parametrize("cache", ["decoded", "none"])
def test_a_truncated_jpeg_is_named_or_skipped(imagenet_r, cache):
    """Its header reads, so only decoding finds it: the cache build (or the read) names it."""
    victim = imagenet_r / "imagenet-r" / "n00000003" / "img_1.jpg"
    jpeg(victim, 1, size=(64, 64))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) * 2 // 3])
    assert preflight.problems(cfg_for(imagenet_r)) == []
    settings = dict(root=str(imagenet_r), num_tasks=10)
    if cache == "decoded":
        with pytest.raises(DataError, match="n00000003/img_1.jpg: cannot be decoded"):
            build_benchmark(BenchmarkConfig(**settings, dataset={"kind": "imagenet-r", "cache": cache}), 16, (0.5,) * 3, (0.5,) * 3)
    bench = build_benchmark(BenchmarkConfig(**settings, dataset={"kind": "imagenet-r", "cache": cache, "on_bad_image": "skip"}), 16, (0.5,) * 3, (0.5,) * 3)
    if cache == "decoded":
        assert bench.describe()["skipped_images"] == ["imagenet-r/n00000003/img_1.jpg"]
        assert sum(len(t.train) + len(t.test) for t in bench.tasks) == 200 * IMAGES_PER_CLASS - 1
    else:  # the header pass cannot see it: reading it is the error, naming the file
        task = next(t for t in bench.tasks if 3 in t.classes)
        with pytest.raises(DataError, match="img_1.jpg cannot be decoded"):
            [task.train[i] for i in range(len(task.train))] + [task.test[i] for i in range(len(task.test))]


def test_a_saved_split_that_names_missing_files_or_is_not_json(imagenet_r):
    preflight.check(cfg_for(imagenet_r))
    build_benchmark(BenchmarkConfig(root=str(imagenet_r), dataset={"kind": "imagenet-r", "cache": "none"}, num_tasks=10),
                    16, (0.5,) * 3, (0.5,) * 3)  # saves the split file
    (imagenet_r / "imagenet-r" / "n00000005" / "img_4.jpg").unlink()
    split_file = imagenet_r_split_file(cfg_for(imagenet_r).benchmark)
    lines = [f"{key}: {message}" for key, message in preflight.problems(cfg_for(imagenet_r))]
    assert any(f"n00000005/img_4.jpg: named by the pinned split {split_file} but missing" in line for line in lines), lines
    shutil.rmtree(imagenet_r / "imagenet-r" / "n00000005")  # a class folder gone: the split file is named, not a count
    summary, gone = preflight.problems(cfg_for(imagenet_r))[:2]
    assert f"the pinned split {split_file} and {imagenet_r / 'imagenet-r'} name different classes" in summary[1], summary
    assert "delete it to make the split anew" in summary[1] and "201" not in summary[1]
    assert gone == ("n00000005", f"named by the pinned split, not a folder of {imagenet_r / 'imagenet-r'}"), gone
    split_file.write_text('{"train": [')
    message = preflight.problems(cfg_for(imagenet_r))[0][1]
    assert "cannot be read as JSON" in message and "it is aepg's pinned split: delete it" in message, message
    assert "archive" not in message


def cub(root, broken_line=None):
    folder = root / "CUB_200_2011"
    tables = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "classes.txt": []}
    image_id = 0
    for c in range(200):
        tables["classes.txt"].append(f"{c + 1} {c + 1:03d}.Bird_{c}")
        for i, train in enumerate((1, 0)):
            image_id += 1
            rel = f"{c + 1:03d}.Bird_{c}/{i}.jpg"
            jpeg(folder / "images" / rel, image_id)
            tables["images.txt"].append(f"{image_id} {rel}")
            tables["image_class_labels.txt"].append(f"{image_id} {c + 1}")
            tables["train_test_split.txt"].append(f"{image_id} {train}")
    for name, lines in tables.items():
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_cub200_metadata_faults(tmp_path):
    folder = cub(tmp_path)
    cfg = load_config(CONFIGS / "digits.yaml", ["benchmark.dataset=cub200", f"benchmark.root={tmp_path}"])
    assert preflight.problems(cfg) == []
    labels = folder / "image_class_labels.txt"
    good = labels.read_text()
    labels.write_text(good.replace("\n7 4\n", "\n7 400\n"))
    assert preflight.problems(cfg)[:2] == [("benchmark", "CUB-200: image_class_labels.txt holds labels that classes.txt "
                                                         "does not list"),
                                           ("image id 7", "label '400' is not a class id of classes.txt")]
    labels.write_text("\n".join(good.splitlines()[:-3]) + "\n")  # lacks lines
    assert preflight.problems(cfg)[0][1] == "CUB-200: image_class_labels.txt and images.txt list different image ids"
    labels.write_text(good.replace("\n9 5\n", "\n9\n"))
    assert "image_class_labels.txt line 9 is '9', expected '<id> <value>'" in preflight.problems(cfg)[0][1]
    labels.write_text(good)
    split = folder / "train_test_split.txt"
    split.write_text(split.read_text().replace("\n8 0\n", "\n8 2\n"))
    assert preflight.problems(cfg)[:2] == [("benchmark", "CUB-200: train_test_split.txt holds values other than 0 and 1"),
                                           ("image id 8", "split '2' is not 1 (train) or 0 (test)")]
    classes = folder / "classes.txt"
    classes.write_text("\n".join(classes.read_text().splitlines()[:150]) + "\n")  # cut short: its own file is named
    assert preflight.problems(cfg)[0][1] == (f"CUB-200: {classes} lists 150 classes, expected 200; restore it from "
                                             "the data set's archive")


def test_food101_metadata_faults(tmp_path):
    folder = tmp_path / "food-101"
    classes = [f"dish_{c}" for c in range(101)]
    (folder / "meta").mkdir(parents=True)
    (folder / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    for part, i in (("train", 0), ("test", 1)):
        (folder / "meta" / f"{part}.json").write_text(json.dumps({c: [f"{c}/{i}"] for c in classes}))
    for c in classes:
        for i in range(2):
            jpeg(folder / "images" / c / f"{i}.jpg", i)
    cfg = load_config(CONFIGS / "digits.yaml", ["benchmark.dataset=food101", f"benchmark.root={tmp_path}"])
    assert preflight.problems(cfg) == []
    (folder / "meta" / "test.json").write_text('{"dish_0": ["dish_0/1"]')
    assert "meta/test.json cannot be read as JSON" in preflight.problems(cfg)[0][1]
    (folder / "meta" / "test.json").write_text(json.dumps({"dish_x": ["dish_x/1"]}))
    assert "class 'dish_x' is not in meta/classes.txt" in str(preflight.problems(cfg))


def cifar(root):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    labels = np.repeat(np.arange(100), 2)
    for name in ("train", "test"):
        data = {"data": np.zeros((len(labels), 3072), dtype=np.uint8), "fine_labels": labels.tolist()}
        pickle.dump(data, open(folder / name, "wb"))
    pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, open(folder / "meta", "wb"))
    return folder


class RunsCode:
    """A pickle that calls a function when loaded, as a crafted data file would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_cifar100_pickles_are_read_without_running_code(tmp_path):
    folder = cifar(tmp_path)
    settings = dict(root=str(tmp_path), dataset="cifar100", num_tasks=10)
    build_benchmark(BenchmarkConfig(**settings), 16, (0.5,) * 3, (0.5,) * 3)
    marker = tmp_path / "ran"
    pickle.dump({"data": RunsCode(marker), "fine_labels": []}, open(folder / "test", "wb"))
    with pytest.raises(DataError, match="names io.open, which a CIFAR-100 file never holds"):
        build_benchmark(BenchmarkConfig(**settings), 16, (0.5,) * 3, (0.5,) * 3)
    assert not marker.exists()
    data = (folder / "train").read_bytes()
    (folder / "train").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="train is not a readable CIFAR-100 pickle"):
        build_benchmark(BenchmarkConfig(**settings), 16, (0.5,) * 3, (0.5,) * 3)
    pickle.dump({"data": np.zeros((3, 100), dtype=np.uint8), "fine_labels": [0, 1, 2]}, open(folder / "train", "wb"))
    with pytest.raises(DataError, match=r"'data' is \(3, 100\)"):
        build_benchmark(BenchmarkConfig(**settings), 16, (0.5,) * 3, (0.5,) * 3)


def test_the_dry_run_reads_cifar100_as_the_run_will(tmp_path):
    """The plan counts what the pickles hold; a cut-short pickle, labels out of range or 50 empty
    classes are one line naming the file, before an MLflow store is opened."""
    folder = cifar(tmp_path)
    dry = ["train", str(CONFIGS / "digits.yaml"), "benchmark.dataset=cifar100", f"benchmark.root={tmp_path}",
           "benchmark.num_tasks=10", "--dry-run"]
    planned = run_aepg(dry, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "# task 1: 10 classes, 20 training / 20 test images" in planned.stdout, planned.stdout[-1500:]
    good = (folder / "train").read_bytes()
    faults = {
        "cut short": (good[: len(good) // 2], f"{folder / 'train'} is not a readable CIFAR-100 pickle"),
        "labels out of range": (pickle.dumps({"data": np.zeros((2, 3072), dtype=np.uint8), "fine_labels": [0, 100]}),
                                f"{folder / 'train'}: 'fine_labels' holds values outside 0-99"),
        "empty classes": (pickle.dumps({"data": np.zeros((100, 3072), dtype=np.uint8),
                                        "fine_labels": list(range(50)) * 2}),
                          f"{folder / 'train'}: no images of 50 of its 100 classes (c50, c51, c52, c53, c54 and 45 more)"),
    }
    for fault, (data, expected) in faults.items():
        (folder / "train").write_bytes(data)
        result = run_aepg(dry, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (fault, result.stderr[-2000:])
        assert expected in result.stderr, (fault, result.stderr)
    assert not (tmp_path / "mlflow.db").exists()


def test_fashion_mnist_faults_name_the_file_and_touch_nothing(tmp_path, monkeypatch):
    from aepg import benchmarks

    debian = tmp_path / "debian"
    fake_fashion(debian, gz=True)
    monkeypatch.setattr(benchmarks, "FASHION_DEBIAN_FOLDER", debian)
    raw = tmp_path / "FashionMNIST" / "raw"
    fake_fashion(raw, gz=False)
    settings = dict(root=str(tmp_path), dataset="fashion-mnist", num_tasks=2)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    before = sorted(p.name for p in raw.iterdir())
    with pytest.raises(DataError, match="holds 3 of its 4 IDX files; add t10k-labels-idx1-ubyte"):
        build_benchmark(BenchmarkConfig(**settings), 16, (0.5,) * 3, (0.5,) * 3)
    assert sorted(p.name for p in raw.iterdir()) == before, "the user's folder was completed or replaced"
    shutil.copy(debian / "t10k-labels-idx1-ubyte.gz", raw)
    images = raw / "train-images-idx3-ubyte"
    data = images.read_bytes()
    images.write_bytes(data[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte holds .* bytes after its header.*cut short"):
        build_benchmark(BenchmarkConfig(**settings), 16, (0.5,) * 3, (0.5,) * 3)
    images.write_bytes(b"\x00\x00\x0d\x03" + data[4:])
    with pytest.raises(DataError, match="is not an IDX file of 3-d unsigned bytes"):
        build_benchmark(BenchmarkConfig(**settings), 16, (0.5,) * 3, (0.5,) * 3)


def test_the_dry_run_reads_fashion_mnist_as_the_run_will(tmp_path):
    """The plan comes from what the files hold, and a cut-short gzip or a class with no images is one
    line naming the file, before anything is written."""
    fake_fashion(tmp_path, gz=True)
    dry = ["train", str(CONFIGS / "fashion_mnist.yaml"), f"benchmark.root={tmp_path}", "benchmark.num_tasks=2",
           "benchmark.max_train_per_class=null", "--dry-run"]
    planned = run_aepg(dry, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "# task 1: 5 classes, 30 training / 10 test images" in planned.stdout, planned.stdout[-1500:]
    images = tmp_path / "train-images-idx3-ubyte.gz"
    data = images.read_bytes()
    images.write_bytes(data[: len(data) // 2])
    before = sorted(p.name for p in tmp_path.iterdir())
    cut = run_aepg(dry, cwd=tmp_path)
    assert cut.returncode == 2 and "Traceback" not in cut.stderr, cut.stderr[-2000:]
    assert f"{images} cannot be read" in cut.stderr
    images.write_bytes(data)
    labels = np.repeat(np.arange(10), 2)
    labels[labels == 3] = 4  # no Dress in the test split
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    missing = run_aepg(dry, cwd=tmp_path)
    assert missing.returncode == 2 and "t10k-labels-idx1-ubyte.gz: no images of 1 of its 10 classes (Dress)" in missing.stderr, missing.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not (tmp_path / "mlflow.db").exists()


# -- the decoded cache -----------------------------------------------------------------------------

BUILD = """
import sys
from pathlib import Path
from aepg.benchmarks import cache
root = Path(sys.argv[1])
paths = sorted(str(p) for p in root.rglob("*.jpg"))
print(cache.ensure(paths, root, 48, root / "cache", "toy", workers=2).folder, flush=True)
"""


def many_jpegs(root, n):
    for i in range(n):
        jpeg(root / f"img_{i:04d}.jpg", i, size=(96, 128))
    return sorted(str(p) for p in root.glob("img_*.jpg"))


def start_build(root):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", BUILD, str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_partial(root, process):
    from conftest import wait_until

    return wait_until(lambda: list((root / "cache").glob(".toy-*.partial/images.u8")), "a build under way", process, 120)


def test_a_killed_build_takes_its_decoders_with_it_and_is_never_read(tmp_path):
    import signal
    import time

    import psutil

    from aepg.benchmarks import cache

    paths = many_jpegs(tmp_path, 3000)
    from conftest import wait_until

    builder = start_build(tmp_path)
    wait_for_partial(tmp_path, builder)
    decoders = wait_until(lambda: [p for p in psutil.Process(builder.pid).children(recursive=True)
                                   if "spawn_main" in " ".join(p.cmdline())], "the decoding processes", builder, 60)
    builder.send_signal(signal.SIGKILL)
    builder.wait(30)
    _, alive = psutil.wait_procs(decoders, timeout=15)
    assert not alive, f"decoders outlived their build: {[p.pid for p in alive]}"
    start = time.perf_counter()
    built = cache.ensure(paths, tmp_path, 48, tmp_path / "cache", "toy", workers=2)
    assert not list((tmp_path / "cache").glob(".toy-*.partial")), "the killed build's folder was left"
    assert np.array_equal(built.array(7), cache.decode(paths[7], 48)) and time.perf_counter() - start < 300


def test_a_stopped_builder_is_named_not_waited_on(tmp_path):
    import signal

    from aepg.benchmarks import cache

    paths = many_jpegs(tmp_path, 3000)
    builder = start_build(tmp_path)
    try:
        wait_for_partial(tmp_path, builder)
        builder.send_signal(signal.SIGSTOP)
        with pytest.raises(cache.CacheBusy, match=f"built by process {builder.pid}, which is stopped: continue it"):
            cache.ensure(paths, tmp_path, 48, tmp_path / "cache", "toy", stopped_grace=1)
        builder.send_signal(signal.SIGCONT)
        output, errors = builder.communicate(timeout=300)
        assert builder.returncode == 0, errors[-2000:]
        assert cache.ensure(paths, tmp_path, 48, tmp_path / "cache", "toy").folder == Path(output.strip())
    finally:
        builder.kill()


def test_a_damaged_cache_is_rebuilt_and_content_keys_see_a_swapped_file(tmp_path):
    from aepg.benchmarks import cache

    paths = many_jpegs(tmp_path / "data", 6)
    built = cache.ensure(paths, tmp_path / "data", 48, tmp_path / "cache", "toy", workers=1)
    data = built.folder / "images.u8"
    data.write_bytes(data.read_bytes()[:-10])
    assert cache.fails_check(built.folder).startswith("images.u8 holds")
    rebuilt = cache.ensure(paths, tmp_path / "data", 48, tmp_path / "cache", "toy", workers=1)
    assert rebuilt.folder == built.folder and cache.fails_check(rebuilt.folder) is None
    # A file replaced under the same size and time: the stat key cannot see it, the content key does.
    by_content = cache.ensure(paths, tmp_path / "data", 48, tmp_path / "cache", "toy", workers=1, content=True)
    victim = Path(paths[2])
    info = victim.stat()
    swapped = bytearray(victim.read_bytes())
    swapped[-3] ^= 0xFF
    victim.write_bytes(bytes(swapped))
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert cache.ensure(paths, tmp_path / "data", 48, tmp_path / "cache", "toy").folder == built.folder
    assert cache.ensure(paths, tmp_path / "data", 48, tmp_path / "cache", "toy", content=True).folder != by_content.folder


def test_flipped_bytes_in_the_cache_are_caught_on_first_read_and_the_cache_is_built_again(tmp_path, caplog):
    from aepg.benchmarks import cache

    paths = many_jpegs(tmp_path / "data", 6)
    built = cache.ensure(paths, tmp_path / "data", 48, tmp_path / "cache", "toy", workers=1)
    first = built.array(0).copy()  # verified in this process: read again without a check
    offset = int(built.index[3, 0])
    data = bytearray((built.folder / "images.u8").read_bytes())
    data[offset + 5] ^= 0x01  # same size, same index: only the checksum can tell
    (built.folder / "images.u8").write_bytes(bytes(data))
    reader = cache.DecodedImages(built.folder)
    assert np.array_equal(reader.array(2), cache.decode(paths[2], 48))
    with pytest.raises(cache.CacheDamaged, match="image 3's bytes differ"):
        reader.array(3)
    with caplog.at_level(logging.WARNING, "aepg"):
        rebuilt = cache.ensure(paths, tmp_path / "data", 48, tmp_path / "cache", "toy", workers=1)
    assert rebuilt.folder == built.folder and np.array_equal(rebuilt.array(3), cache.decode(paths[3], 48))
    assert np.array_equal(rebuilt.array(0), first)
    assert "fails its check (a run found image 3's bytes changed): building it again" in caplog.text
    caplog.clear()
    (rebuilt.folder / "manifest.json").unlink()  # deleted by hand: not blamed on the images
    with caplog.at_level(logging.WARNING, "aepg"):
        cache.ensure(paths, tmp_path / "data", 48, tmp_path / "cache", "toy", workers=1)
    assert "fails its check (its manifest.json is missing): building it again" in caplog.text


def test_a_cache_dir_that_cannot_hold_the_cache_is_refused_before_compute(imagenet_r):
    (imagenet_r / "a-file").write_text("")
    problems = preflight.problems(cfg_for(imagenet_r, f"benchmark.dataset.cache_dir={imagenet_r / 'a-file' / 'cache'}"))
    assert problems and problems[0][0] == "benchmark.dataset.cache_dir" and "a-file is a file" in problems[0][1]
    assert preflight.problems(cfg_for(imagenet_r, f"benchmark.dataset.cache_dir={imagenet_r / 'a-file' / 'cache'}",
                                      "benchmark.dataset.cache=none")) == []


def test_a_read_only_store_or_cache_folder_is_refused_in_one_line_before_compute(imagenet_r, tmp_path):
    from mlflow.tracking import MlflowClient

    locked = tmp_path / "locked"
    (locked / "cache").mkdir(parents=True)
    store = locked / "mlflow.db"
    MlflowClient(f"sqlite:///{store}").search_experiments()  # a real, empty store
    before = store.read_bytes()
    digits = str(CONFIGS / "digits.yaml")
    cases = [
        (["train", digits, f"tracking_uri=sqlite:///{store}"], f"the MLflow store {store} is read-only"),
        (["train", digits, f"tracking_uri=sqlite:///{locked / 'new' / 'mlflow.db'}"],
         f"cannot be created: {locked} is read-only"),
        (["train", "--dry-run", digits, "benchmark.dataset=imagenet-r", f"benchmark.root={imagenet_r}",
          f"benchmark.dataset.cache_dir={locked / 'cache'}"], f"cannot be built in {locked / 'cache'}: {locked / 'cache'} is read-only"),
    ]
    for args, message in cases:
        result = run_aepg_read_only(locked, args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2, result.stderr
    assert store.read_bytes() == before and sorted(p.name for p in locked.iterdir()) == ["cache", "mlflow.db"]


class _DamagedImages(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        from aepg.benchmarks.cache import CacheDamaged

        raise CacheDamaged(f"the decoded cache /c is damaged: image {index}'s bytes differ")


def test_an_error_from_a_loader_worker_is_told_in_its_own_words_without_the_worker_traceback():
    from aepg.benchmarks.cache import CacheDamaged
    from aepg.cli import _message

    with pytest.raises(CacheDamaged) as caught:
        next(iter(torch.utils.data.DataLoader(_DamagedImages(), num_workers=1)))
    assert "Original Traceback" in str(caught.value), "PyTorch re-raises with the worker's traceback"
    assert _message(caught.value) == "the decoded cache /c is damaged: image 0's bytes differ"

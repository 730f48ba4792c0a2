"""The paper's benchmarks read from small files the tests write in each data set's real layout."""

import json
import pickle

import numpy as np
import pytest
from conftest import model_inputs
from PIL import Image

from aepg.benchmarks import DataError, DatasetNotFound
from aepg.benchmarks.tasks import build_benchmark
from aepg.config import BenchmarkConfig

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def build(root, **kwargs):
    return build_benchmark(BenchmarkConfig(root=str(root), **kwargs), 16, MEAN, STD)


def jpeg(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def check_tasks(bench, num_classes, num_tasks, train_total, test_total):
    assert len(bench.class_order) == num_classes and len(bench.tasks) == num_tasks
    classes = [c for t in bench.tasks for c in t.classes]
    assert sorted(classes) == list(range(num_classes))
    assert sum(len(t.train) for t in bench.tasks) == train_total
    assert sum(len(t.test) for t in bench.tasks) == test_total
    x, y = model_inputs(bench, bench.tasks[-1].test, [0])
    assert x.shape == (1, 3, 16, 16) and bench.tasks[-1].start <= int(y[0]) < bench.tasks[-1].stop


def write_cifar100(root):
    """CIFAR-100 as torchvision's pickles: 3 training and 1 test image per class."""
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, per_class in (("train", 3), ("test", 1)):
        labels = np.repeat(np.arange(100), per_class)
        data = {"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), "fine_labels": labels.tolist(),
                "coarse_labels": (labels // 5).tolist(), "filenames": [f"{i}.png" for i in range(len(labels))]}
        pickle.dump(data, open(folder / name, "wb"))
    pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)]}, open(folder / "meta", "wb"))
    return folder


def write_imagenet_r(root):
    """ImageNet-R's folders: 5 JPEGs for each of 200 classes."""
    for c in range(200):
        for i in range(5):
            jpeg(root / "imagenet-r" / f"n{c:08d}" / f"img_{i}.jpg", c * 10 + i)


def write_cub200(root):
    """CUB-200-2011's lists and images: 2 training and 1 test image per class."""
    folder = root / "CUB_200_2011"
    images, labels, split, classes = [], [], [], []
    image_id = 0
    for c in range(200):
        classes.append(f"{c + 1} {c + 1:03d}.Bird_{c}")
        for i, train in enumerate((1, 1, 0)):
            image_id += 1
            rel = f"{c + 1:03d}.Bird_{c}/Bird_{c}_{i}.jpg"
            jpeg(folder / "images" / rel, image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {train}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("classes.txt", classes)):
        (folder / name).write_text("\n".join(lines) + "\n")


def write_food101(root):
    """Food-101's meta files and images: 2 training and 1 test image per class."""
    folder = root / "food-101"
    classes = [f"dish_{c}" for c in range(101)]
    listing = {"train": {}, "test": {}}
    for c, name in enumerate(classes):
        for i in range(3):
            jpeg(folder / "images" / name / f"{i}.jpg", c * 3 + i)
        listing["train"][name] = [f"{name}/0", f"{name}/1"]
        listing["test"][name] = [f"{name}/2"]
    (folder / "meta").mkdir(parents=True)
    (folder / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    for part in ("train", "test"):
        (folder / "meta" / f"{part}.json").write_text(json.dumps(listing[part]))


def test_cifar100_pickles(tmp_path):
    folder = write_cifar100(tmp_path)
    bench = build(tmp_path, dataset="cifar100", num_tasks=10, order_seed=1)
    check_tasks(bench, 100, 10, 300, 100)
    # The channel-first rows become H x W x C images: pixel (0, 0) of image 0 is bytes 0, 1024, 2048.
    train = pickle.load(open(folder / "train", "rb"))
    assert bench.tasks[0].train.images.image(0)[0, 0].tolist() == [int(train["data"][0][i]) for i in (0, 1024, 2048)]
    assert build(tmp_path, dataset="cifar100", num_tasks=10, order_seed=1).class_order == bench.class_order


def test_imagenet_r_folders_and_pinned_split(tmp_path):
    write_imagenet_r(tmp_path)
    bench = build(tmp_path, dataset={"kind": "imagenet-r", "split_seed": 3}, num_tasks=10)
    check_tasks(bench, 200, 10, 800, 200)
    (split_file,) = (tmp_path / ".aepg-cache").glob("imagenet-r_split_seed3_*.json")  # aepg's folder, not the user's
    assert sorted(p.name for p in tmp_path.iterdir()) == [".aepg-cache", "imagenet-r"]
    split = json.loads(split_file.read_text())
    assert len(split["train"]) == 800 and not set(split["train"]) & set(split["test"])
    assert bench.split_manifest == split
    # The saved split is read back, so the same files stay in test even if the seed logic changed.
    again = build(tmp_path, dataset={"kind": "imagenet-r", "split_seed": 3}, num_tasks=5)
    assert again.split_manifest == split
    other = build(tmp_path, dataset={"kind": "imagenet-r", "split_seed": 4}, num_tasks=10).split_manifest
    assert other["test"] != split["test"]
    # A split an earlier aepg pinned beside the data is still the one read.
    earlier = {**split, "seed": 4}  # seed 3's lists, which seed 4 does not make
    (tmp_path / "imagenet-r_split_seed4.json").write_text(json.dumps(earlier))
    split_file.with_name(split_file.name.replace("seed3", "seed4")).unlink()
    assert build(tmp_path, dataset={"kind": "imagenet-r", "split_seed": 4}, num_tasks=10).split_manifest == earlier


def test_cub200_official_split(tmp_path):
    write_cub200(tmp_path)
    bench = build(tmp_path, dataset="cub200", num_tasks=10)
    check_tasks(bench, 200, 10, 400, 200)
    assert bench.class_names[0] == "Bird_0"


def test_food101_meta_files(tmp_path):
    write_food101(tmp_path)
    bench = build(tmp_path, dataset="food101", num_tasks=10)
    check_tasks(bench, 101, 10, 202, 101)
    assert [len(t.classes) for t in bench.tasks] == [11] + [10] * 9


@pytest.mark.parametrize("dataset, layout", [("imagenet-r", "imagenet-r/<wnid>"), ("cub200", "CUB_200_2011/"),
                                             ("food101", "food-101/")])
def test_missing_data_names_the_layout(tmp_path, dataset, layout):
    with pytest.raises(DatasetNotFound, match=layout):
        build(tmp_path, dataset=dataset, num_tasks=10)


def test_too_few_classes_is_refused(tmp_path):
    for c in range(3):
        jpeg(tmp_path / "imagenet-r" / f"n{c}" / "a.jpg", c)
    with pytest.raises(DataError, match="has 3 classes, expected 200"):
        build(tmp_path, dataset="imagenet-r", num_tasks=2)

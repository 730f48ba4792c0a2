"""Benchmarks on real data: sklearn's digits and Fashion-MNIST IDX files in the real format."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import fake_fashion, model_inputs

from aepg import benchmarks
from aepg.benchmarks import DatasetNotFound
from aepg.benchmarks.order import class_order
from aepg.benchmarks.tasks import build_benchmark
from aepg.config import BenchmarkConfig

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def build(**kwargs):
    return build_benchmark(BenchmarkConfig(**kwargs), 16, MEAN, STD)


def test_digits_tasks_are_disjoint_and_cover_all_classes():
    bench = build(dataset="digits", num_tasks=5, order_seed=3)
    assert len(bench.class_order) == 10
    classes = [c for task in bench.tasks for c in task.classes]
    assert sorted(classes) == list(range(10)) and classes == bench.class_order
    assert sum(len(t.train) for t in bench.tasks) == 1347 and sum(len(t.test) for t in bench.tasks) == 450
    for task in bench.tasks:
        assert (task.start, task.stop) == (2 * task.index, 2 * task.index + 2)
        labels = {task.train[i][1] for i in range(len(task.train))}
        assert labels == set(range(task.start, task.stop))
    image, _ = bench.tasks[0].train[0]
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8  # raw: views resize and normalise batches
    x, _ = model_inputs(bench, bench.tasks[0].train, [0, 1])
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32 and -1.0 <= x.min() and x.max() <= 1.0


def test_class_order_reproducible_from_seed():
    """The order is numpy's PCG64 permutation of the seed: pinned, so a run logged today is the
    same order tomorrow, and untouched by the global random state that training seeds."""
    assert class_order(10, 0) == [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]
    assert sorted(class_order(100, 7)) == list(range(100)) and class_order(100, 7) != class_order(100, 8)
    np.random.seed(1)
    torch.manual_seed(1)
    first = build(dataset="digits", order_seed=5)
    np.random.seed(2)
    torch.manual_seed(2)
    second = build(dataset="digits", order_seed=5)
    assert first.class_order == second.class_order == class_order(10, 5)
    assert [t.train.indices.tolist() for t in first.tasks] == [t.train.indices.tolist() for t in second.tasks]


def test_uneven_split_and_subsampling():
    bench = build(dataset="digits", num_tasks=3, max_train_per_class=10, max_test_per_class=4)
    assert [len(t.classes) for t in bench.tasks] == [4, 3, 3]
    assert [len(t.train) for t in bench.tasks] == [40, 30, 30]
    assert [len(t.test) for t in bench.tasks] == [16, 12, 12]


@pytest.mark.parametrize("layout", ["gz-in-root", "plain-in-torchvision-raw", "gz-in-torchvision-raw"])
def test_fashion_mnist_reads_idx_files(tmp_path, layout):
    folder = tmp_path if layout == "gz-in-root" else tmp_path / "FashionMNIST" / "raw"
    arrays = fake_fashion(folder, gz=layout.startswith("gz"))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    bench = build(dataset="fashion-mnist", root=str(tmp_path), num_tasks=2)
    assert sum(len(t.train) for t in bench.tasks) == 60 and sum(len(t.test) for t in bench.tasks) == 20
    source = bench.tasks[0].train.images
    np.testing.assert_array_equal(source.images, arrays["train"])
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before, "the data folder was written to"
    assert bench.class_names[0] == "T-shirt/top"


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks, "FASHION_DEBIAN_FOLDER", tmp_path / "not-installed")
    with pytest.raises(DatasetNotFound, match="apt-get install dataset-fashion-mnist"):
        build(dataset="fashion-mnist", root=str(tmp_path / "empty"))
    assert not (tmp_path / "empty").exists(), "looking for the data created folders"


def test_download_is_tried_only_when_asked(tmp_path, monkeypatch):
    """With benchmark.download the driver fetches the data once, before the run (here the
    mirror is a closed local port, so the download really runs and fails)."""
    from aepg import preflight
    from aepg.config import load_config

    monkeypatch.setattr(benchmarks, "FASHION_DEBIAN_FOLDER", tmp_path / "not-installed")
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    cfg = load_config(Path(__file__).parents[1] / "configs" / "fashion_mnist.yaml", [f"benchmark.root={tmp_path / 'data'}"])
    assert [key for key, _ in preflight.problems(cfg)] == ["benchmark.dataset"]
    cfg.benchmark.download = True
    assert preflight.problems(cfg) == []  # prepare() will fetch it
    with pytest.raises(DatasetNotFound, match="downloading fashion-mnist .* failed"):
        preflight.prepare(cfg)


@pytest.mark.skipif(not benchmarks.FASHION_DEBIAN_FOLDER.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path):
    bench = build(dataset="fashion-mnist", root=str(tmp_path), num_tasks=5)
    assert sum(len(t.train) for t in bench.tasks) == 60000 and sum(len(t.test) for t in bench.tasks) == 10000
    assert all(len(t.test) == 2000 for t in bench.tasks)
    labels = bench.tasks[0].train.images.labels
    assert np.bincount(labels).tolist() == [6000] * 10

"""The input path: batched crops on the device against torchvision, the decoded cache against the
files, and loading that stays exact whatever the number of loader processes."""

import multiprocessing
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from scipy import stats
from torchvision.transforms import RandomResizedCrop, v2

from aepg.benchmarks import cache
from aepg.benchmarks.augment import BatchView, random_resized_crops
from aepg.benchmarks.images import CachedImages, collate
from aepg.config import BenchmarkConfig, load_config
from aepg.distributed import Context
from aepg.launch import build_job
from aepg.trainer import ContinualTrainer

from conftest import CONFIGS

RAW = ((0.0,) * 3, (1 / 255,) * 3)  # mean and std that leave pixel values as they are


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like image: smooth colour waves plus a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    waves = [128 + 100 * np.sin(x / 37.0 + c + seed) * np.cos(y / 23.0 - c) for c in range(3)]
    return np.clip(np.stack(waves, -1) + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)


def jpegs(folder, count: int, size=(60, 80)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:03d}.jpg"
        Image.fromarray(smooth_image(size[0] + i, size[1], i)).save(path, quality=95)
        paths.append(str(path))
    return paths


# -- crops ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("height, width", [(256, 384), (300, 256), (256, 256), (256, 1100)])
def test_crop_statistics_match_torchvision(height, width):
    """Area fraction, aspect ratio, position and flip rate of 4,000 crops, ours against
    ``RandomResizedCrop.get_params`` on the same seed: the same distributions within sampling error."""
    n = 4000
    sizes = torch.tensor([[height, width]] * n)
    ours = random_resized_crops(sizes, torch.Generator().manual_seed(0)).double()
    ours_w, ours_h = ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1]
    torch.manual_seed(0)
    image = torch.empty(3, height, width)
    theirs = torch.tensor([RandomResizedCrop.get_params(image, (0.05, 1.0), (3 / 4, 4 / 3)) for _ in range(n)]).double()
    their_y, their_x, their_h, their_w = theirs.unbind(1)
    for a, b in ((ours_w * ours_h / (height * width), their_w * their_h / (height * width)),  # area fraction
                 (torch.log(ours_w / ours_h), torch.log(their_w / their_h)),  # aspect ratio
                 (ours[:, 0] / (width - ours_w + 1), their_x / (width - their_w + 1))):  # horizontal position
        assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-4
        assert abs(float(a.mean() - b.mean())) < 4 * (float(a.var() / n + b.var() / n) ** 0.5 + 1e-9)
    assert (ours[:, 2] <= width).all() and (ours[:, 3] <= height).all() and (ours[:, :2] >= 0).all()
    _, flips = BatchView(224, *RAW, augment=True, train=True).boxes(sizes, torch.Generator().manual_seed(1))
    assert abs(float(flips.double().mean()) - 0.5) < 4 * np.sqrt(0.25 / n)


def test_a_device_crop_is_the_crop_resized():
    image = smooth_image(256, 384, 0)
    batch, sizes, _ = collate([(image, 0)])
    view = BatchView(224, *RAW, augment=True, train=True)
    for seed in range(4):
        boxes, flips = view.boxes(sizes, torch.Generator().manual_seed(seed))
        out = view(batch, sizes, torch.Generator().manual_seed(seed))[0]
        x0, y0, x1, y1 = (int(v) for v in boxes[0])
        reference = TF.resize(batch[0, :, y0:y1, x0:x1].float(), [224, 224], antialias=True)
        reference = reference.flip(-1) if flips[0] else reference
        difference = (out - reference).abs()
        assert float(difference.mean()) < 1.0 and float(difference.max()) < 12  # grey levels: interpolation only


@pytest.mark.parametrize("height, width", [(333, 500), (1000, 1500), (600, 400)])
def test_test_time_view_equals_the_pil_path(tmp_path, height, width):
    """Decoding at short side 256 (as the cache stores it) then the device's centre crop gives what
    torchvision's Resize(256) + CenterCrop(224) gives on the file, within interpolation error."""
    path = tmp_path / "photo.jpg"
    Image.fromarray(smooth_image(height, width, 3)).save(path, quality=95)
    with Image.open(path) as img:
        reference = v2.Compose([v2.PILToTensor(), v2.Resize(256), v2.CenterCrop(224)])(img.convert("RGB")).float()
    batch, sizes, _ = collate([(cache.decode(str(path), 256), 0)])
    ours = BatchView(224, *RAW, augment=True, train=False)(batch, sizes)[0]
    difference = (ours - reference).abs()
    assert float(difference.mean()) < 1.0 and float(difference.max()) <= 4


@pytest.mark.parametrize("height, width", [(333, 500), (600, 400)])
def test_bicubic_test_view_is_torchvisions_bicubic_resize_and_centre_crop(height, width):
    image = torch.from_numpy(smooth_image(height, width, 5)).permute(2, 0, 1).contiguous()
    reference = v2.Compose([v2.Resize(256, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                            v2.CenterCrop(224)])(image).float()
    batch, sizes, _ = collate([(smooth_image(height, width, 5), 0), (smooth_image(100, 90, 1), 1)])
    ours = BatchView(224, *RAW, augment=True, train=False, interpolation="bicubic")(batch, sizes)[0]
    assert ours.shape == reference.shape
    difference = (ours - reference).abs()  # torchvision resizes uint8 in fixed point and rounds
    assert float(difference.mean()) < 0.5 and float(difference.max()) <= 1.5


def test_views_normalise_and_follow_their_seed():
    images = [(smooth_image(40 + i, 50, i), i) for i in range(3)]
    batch, sizes, labels = collate(images)
    assert batch.shape == (3, 3, 42, 50) and batch.dtype == torch.uint8 and labels.tolist() == [0, 1, 2]
    assert torch.equal(batch[1, :, :41], torch.from_numpy(images[1][0]).permute(2, 0, 1))
    assert int(batch[0, :, 40:].sum()) == 0  # padding
    view = BatchView(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), augment=True, train=True)
    first, again = (view(batch, sizes, torch.Generator().manual_seed(5)) for _ in range(2))
    other = view(batch, sizes, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (3, 3, 16, 16) and -1.0 <= float(first.min()) and float(first.max()) <= 1.0


# -- the decoded cache ---------------------------------------------------------------------------

def test_decoded_cache_matches_the_files_is_reused_and_follows_changes(tmp_path):
    paths = jpegs(tmp_path / "data", 12)
    built = cache.ensure(paths, tmp_path / "data", 48, tmp_path / "cache", "toy", workers=2)
    for i, path in enumerate(paths):
        assert np.array_equal(built.array(i), cache.decode(path, 48))
        assert min(built.array(i).shape[:2]) == 48
    manifest = (built.folder / "manifest.json").stat().st_mtime_ns
    again = cache.ensure(paths, tmp_path / "data", 48, tmp_path / "cache", "toy")
    assert again.folder == built.folder and (built.folder / "manifest.json").stat().st_mtime_ns == manifest
    # Pickled (into loader workers, Ray actors) it is its folder, not its data.
    assert len(pickle.dumps(CachedImages(built, np.arange(12), np.zeros(12)))) < 2000
    # A changed source file gets a new cache; the old one is never served for it.
    Image.fromarray(smooth_image(70, 80, 99)).save(paths[3], quality=95)
    changed = cache.ensure(paths, tmp_path / "data", 48, tmp_path / "cache", "toy", workers=1)
    assert changed.folder != built.folder and np.array_equal(changed.array(3), cache.decode(paths[3], 48))
    # Another short side is another cache.
    assert cache.ensure(paths, tmp_path / "data", 32, tmp_path / "cache", "toy").folder not in (built.folder, changed.folder)


def test_an_interrupted_build_is_never_read(tmp_path):
    paths = jpegs(tmp_path / "data", 4)
    described = cache.manifest(paths, tmp_path / "data", 48)
    name = f"toy-48px-{described['digest'][:16]}"
    partial = tmp_path / "cache" / f".{name}.123.dead.partial"
    partial.mkdir(parents=True)
    (partial / "images.u8").write_bytes(b"half a build")
    built = cache.ensure(paths, tmp_path / "data", 48, tmp_path / "cache", "toy", workers=1)
    assert built.folder.name == name and not partial.exists()
    assert np.array_equal(built.array(0), cache.decode(paths[0], 48))


def _build_in_another_process(paths, root, folder, out):
    out.write_text(str(cache.ensure(paths, root, 48, folder, "toy", workers=1).folder))


def test_runs_on_a_node_build_the_cache_once_and_share_it(tmp_path):
    paths = jpegs(tmp_path / "data", 40)
    spawn = multiprocessing.get_context("spawn")
    runs = [spawn.Process(target=_build_in_another_process,
                          args=(paths, tmp_path / "data", tmp_path / "cache", tmp_path / f"out{i}")) for i in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(120)
        assert run.exitcode == 0
    folders = [(tmp_path / f"out{i}").read_text() for i in range(2)]
    assert folders[0] == folders[1]
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == [os.path.basename(folders[0])]


def test_benchmark_reads_folder_images_from_the_cache_or_the_files(tmp_path):
    from aepg.benchmarks.tasks import build_benchmark

    for c in range(200):
        jpegs(tmp_path / "imagenet-r" / f"n{c:08d}", 3, size=(30, 40))
    decoded = build_benchmark(BenchmarkConfig(root=str(tmp_path), dataset="imagenet-r", num_tasks=10, augment=True), 16,
                              (0.5,) * 3, (0.5,) * 3)
    files = build_benchmark(BenchmarkConfig(root=str(tmp_path), dataset={"kind": "imagenet-r", "cache": "none"},
                                            num_tasks=10, augment=True), 16, (0.5,) * 3, (0.5,) * 3)
    assert type(decoded.tasks[0].train.images).__name__ == "CachedImages"
    assert type(files.tasks[0].train.images).__name__ == "FileImages"
    assert (tmp_path / ".aepg-cache").is_dir()
    for task_a, task_b in zip(decoded.tasks, files.tasks):  # both paths give the same images
        a, b = task_a.test[0][0], task_b.test[0][0]
        assert np.array_equal(a, b) and min(a.shape[:2]) == 18  # short side int(16 / 0.875)


# -- loading -------------------------------------------------------------------------------------

TINY = ["benchmark.num_tasks=2", "benchmark.max_train_per_class=10", "benchmark.max_test_per_class=4",
        "train.epochs=1", "train.batch_size=8"]


def test_loader_workers_change_nothing_but_speed():
    cfg = load_config(CONFIGS / "digits.yaml", TINY)
    model, benchmark, objective = build_job(cfg)
    task = benchmark.tasks[0]
    batches = {}
    for workers in (0, 2):
        cfg.train.data_workers = workers
        loader = ContinualTrainer(cfg, model, benchmark, objective, Context(device=torch.device("cpu")))._train_loader(task)
        loader.sampler.set_epoch(1)
        batches[workers] = [tuple(t.clone() for t in batch) for batch in loader]
    assert len(batches[0]) == len(batches[2]) > 1
    for a, b in zip(batches[0], batches[2]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_data_workers_auto_follows_the_cpus_and_the_data():
    cfg = load_config(CONFIGS / "digits.yaml", TINY)
    model, benchmark, objective = build_job(cfg)
    for cpus, in_memory, expected in ((4, True, 0), (4, False, 3), (1, False, 1), (64, False, 8)):
        trainer = ContinualTrainer(cfg, model, benchmark, objective, Context(device=torch.device("cpu"), cpus=cpus))
        assert trainer.data_workers(in_memory) == expected
    cfg.train.data_workers = 2
    assert trainer.data_workers(True) == 2


def test_compile_is_applied_to_the_backbone():
    cfg = load_config(CONFIGS / "digits.yaml", [*TINY, "train.compile=true"])
    model, benchmark, objective = build_job(cfg)
    ContinualTrainer(cfg, model, benchmark, objective, Context(device=torch.device("cpu")))
    assert model.backbone._compiled_call_impl is not None and model.head._compiled_call_impl is None

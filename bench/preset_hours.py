"""How long does a preset take on this GPU? Times its training step (its backbone, method, batch and
precision, on synthetic images already on the device), its head-only step and its inference, and
projects the whole run: every task's training epochs and head-only epochs, the statistics pass of a
method with class statistics (``align``), and the evaluation on every seen task after each task.

    python bench/preset_hours.py configs/paper/imagenet_r_slca.yaml [more presets] [--steps 20] [-- key=value ...]

The projection counts the data sets' published split sizes (below) and the step alone: the input
path's own cost is bench/gpu_throughput.py's ratio (target >= 0.9). Without a GPU it says so and exits
0; ``--device cpu`` runs the same code with a small ViT, to check the script (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from aepg.config import load_config
from aepg.distributed import Context
from aepg.launch import build_job
from aepg.trainer import ContinualTrainer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from gpu_throughput import steps_per_second, synchronize  # noqa: E402
from input_pipeline import write_folder  # noqa: E402

SPLITS = {"cifar100": (50_000, 10_000), "imagenet-r": (24_000, 6_000), "cub200": (5_994, 5_794),
          "food101": (75_750, 25_250)}
"""(training, test) images of each data set as its preset splits it."""


def rates(path: Path, images: Path, steps: int, device: torch.device, overrides: list[str]) -> tuple[dict, object]:
    """Images per second of the preset's training step, head-only step and inference on ``device``
    (the trainer built on the ImageNet-R-like folder ``images``: the step's cost is the model's)."""
    small = [] if device.type == "cuda" else [
        "model.image_size=32", "model.backbone_kwargs={depth: 6, embed_dim: 32, num_heads: 2, patch_size: 16}",
        "train.batch_size=8"]
    cfg = load_config(path, ["model.weights=random", *small, *overrides])
    timed = load_config(path, ["model.weights=random", f"benchmark.root={images}", "benchmark.dataset=imagenet-r",
                               "benchmark.num_tasks=2", "scaling.num_workers=0", "train.head_only_epochs=1",
                               *small, *overrides])
    model, benchmark, objective = build_job(timed)
    trainer = ContinualTrainer(timed, model, benchmark, objective, Context(device=device))
    batch, size = timed.train.batch_size, benchmark.train_view.image_size
    synthetic = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 20, (batch,), device=device)

    def forever():
        while True:
            yield synthetic, None, labels

    step = steps_per_second(trainer, forever(), steps) * batch
    head = steps_per_second(trainer, forever(), steps, head_only=True) * batch
    model.eval()
    with torch.no_grad(), trainer.autocast:
        start = time.perf_counter()
        for _ in range(steps):
            model(synthetic, slice(0, 200))
        synchronize(device)
        inference = steps * batch / (time.perf_counter() - start)
    return {"step": step, "head only": head, "inference": inference}, cfg


def projected_hours(cfg, figures: dict) -> tuple[float, str]:
    """The preset's run, in hours at these rates, and what it counts."""
    train_images, test_images = SPLITS[cfg.benchmark.dataset.kind]
    tasks, epochs, head_only = cfg.benchmark.num_tasks, cfg.train.epochs, cfg.train.head_only_epochs
    per_task, per_test = train_images / tasks, test_images / tasks
    statistics = any(part.kind == "align" for part in cfg.model.method.chosen_parts().values())
    seconds = 0.0
    for task in range(tasks):
        heads = head_only if task else 0
        trained = cfg.train.epochs_of(task)
        seconds += per_task * (trained - heads) / figures["step"] + per_task * heads / figures["head only"]
        seconds += (per_task if statistics else 0) / figures["inference"] + per_test * (task + 1) / figures["inference"]
    first = f", the first {cfg.train.first_task_epochs}" if cfg.train.first_task_epochs is not None else ""
    counted = (f"{tasks} tasks x {epochs} epochs ({head_only} head-only after the first{first}) of {per_task:,.0f} images"
               + (", a statistics pass per task" if statistics else "") + ", evaluation after each task")
    return seconds / 3600, counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no GPU here: this benchmark projects a preset's GPU time; exiting")
        sys.exit(0)
    device = torch.device(args.device)
    print(torch.cuda.get_device_name() if device.type == "cuda" else "CPU (a check of the script, not a measurement)")
    with tempfile.TemporaryDirectory() as images:
        write_folder(Path(images), 1000)
        for path in args.presets:
            figures, cfg = rates(path, Path(images), args.steps, device, args.overrides)
            hours, counted = projected_hours(cfg, figures)
            print(f"{path.name}: {hours:.2f} GPU-hours ({counted}); images/s: "
                  + ", ".join(f"{key} {value:,.0f}" for key, value in figures.items()), flush=True)


if __name__ == "__main__":
    main()

"""Does the input path keep a GPU busy? ViT-B/16 + LoRA (the paper's setting) on one GPU.

Measures images per second of (1) the training step alone, on synthetic inputs already on the
device, (2) the whole path: a folder of JPEGs in ImageNet-R's layout, read through the decoded
cache by loader processes into pinned memory, cropped and flipped on the GPU, then the same
training step, and (3) head-only steps (the frozen backbone without an autograd graph). It
prints the ratio (2) / (1) and projects the wall time of the paper's 10-task ImageNet-R run
(24,000 training images, 50 epochs per task of which the first 30 train the head only on tasks
after the first). Without a GPU it says so and exits 0.

    python bench/gpu_throughput.py [--batch 256] [--steps 30] [--images 4000] [key=value ...]
Target: ratio >= 0.9 (the input path costs under 10%). ``--device cpu`` runs the same code on
the CPU with a small ViT, to check the script where there is no GPU (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from aepg.config import load_config
from aepg.distributed import Context, derive_seed
from aepg.launch import build_job
from aepg.trainer import ContinualTrainer

REPO = Path(__file__).resolve().parents[1]
PAPER_TRAIN_IMAGES, PAPER_TEST_IMAGES, TASKS, EPOCHS, HEAD_ONLY = 24_000, 6_000, 10, 50, 30


WARM_UP = 5


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def steps_per_second(trainer: ContinualTrainer, batches, steps: int, head_only: bool = False) -> float:
    """Training steps over ``batches`` (an iterator of (images, sizes, labels)), synchronised."""
    device = trainer.device
    model, optimizer = trainer._optimizer(trainer.benchmark.tasks[0], head_only)
    model.train()
    columns = slice(0, 20)
    crops = torch.Generator().manual_seed(derive_seed(0, 0))
    for i in range(steps + WARM_UP):
        if i == WARM_UP:  # warm-up done (cuDNN autotuning, allocator, loader processes started)
            synchronize(device)
            start = time.perf_counter()
        images, sizes, y = next(batches)
        uint8 = images.dtype == torch.uint8
        x = trainer.benchmark.train_view(images.to(device, non_blocking=True), sizes, crops) if uint8 else images
        y = y.to(device, non_blocking=True) % columns.stop
        with trainer.autocast:
            loss = torch.nn.functional.cross_entropy(model(x, columns).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return steps / (time.perf_counter() - start)


def measure(device: torch.device, batch: int, steps: int, images: int, overrides: list[str]) -> dict:
    """The figures of one ViT-B/16 + LoRA trainer on ``device``: images/s of the step alone, the whole
    input path and head-only steps, inference, the projected paper run, and the GPU memory peak."""
    small = [] if device.type == "cuda" else [
        "model.image_size=64", "model.backbone_kwargs={depth: 6, embed_dim: 96, num_heads: 4, patch_size: 16}"]
    sys.path.insert(0, str(REPO / "bench"))
    from input_pipeline import write_folder

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), images)
        cfg = load_config(REPO / "configs" / "paper" / "imagenet_r_lora.yaml",
                          ["model.weights=random", f"benchmark.root={tmp}", f"train.batch_size={batch}",
                           "benchmark.num_tasks=1", "scaling.num_workers=0", *small, *overrides])
        model, benchmark, objective = build_job(cfg)  # builds the decoded cache (timed in input_pipeline.py)
        trainer = ContinualTrainer(cfg, model, benchmark, objective, Context(device=device))
        size = benchmark.train_view.image_size
        loader = trainer._train_loader(benchmark.tasks[0])

        def forever(make):
            while True:
                yield from make()

        synthetic = torch.randn(batch, 3, size, size, device=device)
        labels = torch.randint(0, 20, (batch,), device=device)
        step_alone = steps_per_second(trainer, forever(lambda: [(synthetic, None, labels)]), steps)
        whole = steps_per_second(trainer, forever(lambda: iter(loader)), steps)
        head_only = steps_per_second(trainer, forever(lambda: iter(loader)), steps, head_only=True)
        with torch.no_grad(), trainer.autocast:
            model.eval()
            start = time.perf_counter()
            for _ in range(10):
                model(synthetic, slice(0, 200))
            synchronize(device)
            inference = 10 * batch / (time.perf_counter() - start)
    per_task = PAPER_TRAIN_IMAGES // TASKS
    full = per_task * EPOCHS + (TASKS - 1) * per_task * (EPOCHS - HEAD_ONLY)
    head = (TASKS - 1) * per_task * HEAD_ONLY
    evaluated = sum(PAPER_TEST_IMAGES // TASKS * (t + 1) for t in range(TASKS))
    rates = {"step alone": step_alone * batch, "whole path": whole * batch, "head only": head_only * batch}
    seconds = full / rates["whole path"] + head / rates["head only"] + evaluated / inference
    return {**rates, "ratio": rates["whole path"] / rates["step alone"], "projected_min": seconds / 60,
            "full": full, "head": head, "evaluated": evaluated, "loader_processes": trainer.data_workers(False),
            "precision": trainer.precision, "compile": cfg.train.compile, "tf32": cfg.train.tf32,
            "memory_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no GPU here: this benchmark needs CUDA (it measures whether the input path keeps a GPU busy); exiting")
        sys.exit(0)
    device = torch.device(args.device)
    figures = measure(device, args.batch, args.steps, args.images, args.overrides)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (a check of the script, not a measurement)"
    print(f"{name}, batch {args.batch}, loader processes {figures['loader_processes']}, "
          f"{figures['precision']}, compile {figures['compile']}, tf32 {figures['tf32']}")
    for key in ("step alone", "whole path", "head only"):
        print(f"{key:>11}: {figures[key]:8.0f} images/s")
    print(f"ratio whole path / step alone: {figures['ratio']:.3f}  (target >= 0.9)")
    if figures["memory_peak_gib"] is not None:
        print(f"GPU memory peak: {figures['memory_peak_gib']:.1f} GiB")
    print(f"projected 10-task ImageNet-R run (paper protocol): {figures['projected_min']:.1f} min "
          f"({figures['full']:,} full and {figures['head']:,} head-only training images, {figures['evaluated']:,} evaluated)")


if __name__ == "__main__":
    main()

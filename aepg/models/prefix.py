"""The frozen prefix cache (``train.prefix_cache``): the part of the backbone before the method's first
adapted block never changes, and without augmentation neither do its inputs, so its activations are
computed once per image (on the training device, under the run's precision, then kept in host
memory, as the images were) and the run trains and evaluates the rest of the network on them. The backbone loses its prefix (its modules become
identities), so the classifier, the method and its parts see exactly the tensors an uncached
run's prefix would hand them (``tests/test_prefix_cache.py`` checks logits and gradients against
recomputing), at a fraction of the cost: the whole backbone for the linear probe, the stem and the
blocks before LoRA's first one for LoRA on later blocks.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from aepg.benchmarks.images import collate
from aepg.benchmarks.tasks import Benchmark, Task
from aepg.models.facts import STEMS

def prefix_forward(backbone: nn.Module, x: Tensor, first_block: int | None) -> Tensor:
    """The frozen prefix's output: the stem and ``blocks[:first_block]`` (None: the whole backbone)."""
    if first_block is None:
        return backbone(x)
    for name in STEMS[type(backbone).__name__]:
        x = getattr(backbone, name)(x)
    for block in backbone.blocks[:first_block]:
        x = block(x)
    return x


def _unchanged(x: Tensor) -> Tensor:
    return x


def cut(backbone: nn.Module, first_block: int | None) -> None:
    """Make the backbone start at ``first_block``: its prefix's modules become identities (its
    ``forward`` one, with ``first_block`` None)."""
    if first_block is None:
        backbone.forward = _unchanged
        return
    for name in STEMS[type(backbone).__name__]:
        setattr(backbone, name, _unchanged if name.startswith("_") else nn.Identity())
    for index in range(first_block):
        backbone.blocks[index] = nn.Identity()


class Activations(Dataset):
    """A task's images as the frozen prefix's activations, labelled by class-order position;
    ``collate`` stacks them."""

    in_memory = True

    def __init__(self, activations: Tensor, labels: Tensor):
        self.activations, self.labels = activations, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.activations[i], int(self.labels[i])


def _unchanged_view(inputs: Tensor, sizes: Tensor, generator=None) -> Tensor:
    """The batch view of cached activations: they are model inputs already."""
    return inputs


@torch.no_grad()
def cache_prefix(model: nn.Module, benchmark: Benchmark, first_block: int | None, device: torch.device,
                 autocast=None, batch_size: int = 256) -> Benchmark:
    """``benchmark`` with every task's images replaced by the frozen prefix's activations, computed on
    ``device`` under ``autocast`` (the run's precision); the model's backbone cut to what follows."""
    backbone = model.backbone.to(device)
    was_training = backbone.training
    backbone.eval()

    def activations(images) -> Activations:
        outputs, labels = [], []
        for start in range(0, len(images), batch_size):
            raw, sizes, y = collate([images[i] for i in range(start, min(start + batch_size, len(images)))])
            with autocast or nullcontext():
                outputs.append(prefix_forward(backbone, benchmark.test_view(raw.to(device), sizes), first_block).cpu())
            labels.append(y)
        return Activations(torch.cat(outputs), torch.cat(labels))

    tasks = [Task(task.index, task.classes, task.start, task.stop, activations(task.train), activations(task.test))
             for task in benchmark.tasks]
    backbone.train(was_training)
    cut(backbone, first_block)
    return Benchmark(benchmark.dataset, benchmark.class_order, benchmark.class_names, tasks, _unchanged_view,
                     _unchanged_view, benchmark.split_manifest, benchmark.skipped)

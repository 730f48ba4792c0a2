"""The frozen prefix cache (``train.prefix_cache``): what follows the method's first adapted block,
run on the cached activations, gives the logits and gradients the whole network gives on the images
(a real EfficientNet-Lite0 with its ImageNet weights, and a small ViT), at training and at test;
where the cache would be inexact it is refused before anything runs (tests/bad_inputs)."""

import copy

import pytest
import torch

from aepg.config import load_config
from aepg.launch import build_job
from aepg.models.prefix import cache_prefix
from aepg.preflight import backbone_facts

from conftest import CONFIGS, randomise

DIGITS = CONFIGS / "digits.yaml"
SMALL = ["benchmark.num_tasks=2", "benchmark.max_train_per_class=4", "benchmark.max_test_per_class=2"]
TINY_VIT = ["model.backbone=vit_tiny_patch16_224", "model.weights=random", "model.image_size=32",
            "model.backbone_kwargs={depth: 3, embed_dim: 32, num_heads: 2, patch_size: 8}", "model.normalize=none"]
CASES = {
    "lite0 LoRA on blocks 5-6": ["model.image_size=64", "model.method.blocks=[5, 6]"],
    "lite0 linear probe": ["model.image_size=64", "model.method.kind=none"],
    "ViT LoRA from block 1": [*TINY_VIT, "model.method.blocks=[1, 2]"],
}


def batch(benchmark, count: int = 8):
    from aepg.benchmarks.images import collate

    task = benchmark.tasks[0]
    images, sizes, labels = collate([task.train[i] for i in range(count)])
    return benchmark.test_view(images, sizes), labels


def step(model, inputs, labels, columns):
    """A training step's logits and gradients, and the test-time logits."""
    model.zero_grad(set_to_none=True)
    model.train()
    logits = model(inputs, columns)
    torch.nn.functional.cross_entropy(logits, labels - columns.start).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.eval()
    with torch.no_grad():
        test = model(inputs, slice(0, columns.stop))
    return logits.detach(), grads, test


@pytest.mark.parametrize("case", list(CASES))
def test_the_rest_of_the_network_on_cached_activations_gives_the_same_logits_and_gradients(case):
    torch.manual_seed(0)
    cfg = load_config(DIGITS, [*SMALL, *CASES[case], "train.prefix_cache=true"])
    model, benchmark, _ = build_job(cfg)
    randomise(model.backbone)  # its trainable part, the method's: LoRA's B starts at zero, make its path matter
    cached_model = copy.deepcopy(model)
    first = cfg.model.method.first_adapted_block(backbone_facts(cfg))
    cached = cache_prefix(cached_model, benchmark, first, torch.device("cpu"))
    columns = slice(benchmark.tasks[0].start, benchmark.tasks[0].stop)
    images, labels = batch(benchmark)
    activations = torch.stack([cached.tasks[0].train[i][0] for i in range(len(labels))])
    assert activations.shape != images.shape, "the cache holds the prefix's output, not the images"
    whole, cut = step(model, images, labels, columns), step(cached_model, activations, labels, columns)
    torch.testing.assert_close(cut[0], whole[0], atol=1e-6, rtol=1e-6)
    assert cut[1].keys() == whole[1].keys() and cut[1], "the same parameters train"
    for name, grad in whole[1].items():
        torch.testing.assert_close(cut[1][name], grad, atol=1e-6, rtol=1e-6, msg=name)
    torch.testing.assert_close(cut[2], whole[2], atol=1e-6, rtol=1e-6)
    assert [int(cached.tasks[0].train[i][1]) for i in range(len(labels))] == labels.tolist()


def test_a_cached_run_keeps_what_an_uncached_run_checkpoints():
    """The cut backbone drops only frozen modules: the trainable state (what checkpoints hold) is the same."""
    cfg = load_config(DIGITS, [*SMALL, *CASES["lite0 LoRA on blocks 5-6"], "train.prefix_cache=true"])
    model, benchmark, _ = build_job(cfg)
    before = model.trainable_state_dict()
    cache_prefix(model, benchmark, 5, torch.device("cpu"))
    after = model.trainable_state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

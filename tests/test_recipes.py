"""Training recipes: full fine-tuning, the optimiser and learning-rate schedule, padded crops,
input normalisation and the span of the annealing."""

import math

import pytest
import torch
import yaml
from mlflow import MlflowClient
from torch.nn.modules.batchnorm import _BatchNorm

from aepg.benchmarks.augment import BatchView
from aepg.checkpoints import CheckpointStore
from aepg.cli import main
from aepg.config import ConfigError, load_config
from aepg.distributed import Context
from aepg.launch import build_job
from aepg.optim import Phase, learning_rate
from aepg.trainer import ContinualTrainer

from conftest import CONFIGS

DIGITS = CONFIGS / "digits.yaml"
SCRATCH = ["model.backbone=resnet18_cifar", "model.weights=random", "model.image_size=16", "model.method.kind=full",
           "benchmark.num_tasks=1", "benchmark.max_train_per_class=8", "benchmark.max_test_per_class=4",
           "train.batch_size=16", "train.epochs=2", "train.optimizer.kind=sgd", "train.lr=0.05",
           "train.optimizer.nesterov=true", "train.weight_decay=0.0005", "train.lr_schedule.kind=cosine",
           "train.lr_schedule.warmup_epochs=1",
           "benchmark.augment=true", "benchmark.crop=padded", "benchmark.crop_padding=2",
           "objective.kind=aepg", "annealing.kind=constant", "annealing.a=0.2"]


def run_places(tmp_path) -> list[str]:
    return [f"storage_path={tmp_path / 'runs'}", f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "train.log_every_steps=1"]


def test_learning_rate_warms_up_then_follows_its_schedule():
    cfg = load_config(DIGITS, ["train.epochs=10", "train.lr=0.1", "train.lr_schedule.warmup_epochs=2"]).train
    phase = Phase(0, 10, 5)  # 50 steps, the first 10 warm-up
    assert [learning_rate(cfg, phase, 0, i) for i in range(3)] == pytest.approx([0.01, 0.02, 0.03])
    assert learning_rate(cfg, phase, 1, 4) == pytest.approx(0.1)
    assert learning_rate(cfg, phase, 9, 4) == pytest.approx(0.1)  # constant after the warm-up
    cfg.lr_schedule = {"kind": "cosine", "warmup_epochs": 2}
    assert learning_rate(cfg, phase, 2, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, phase, 6, 0) == pytest.approx(0.05)  # half-way through the 40 cosine steps
    assert learning_rate(cfg, phase, 9, 4) == pytest.approx(0.05 * (1 + math.cos(math.pi * 39 / 40)))
    cfg.lr_schedule = {"kind": "step", "milestones": [3, 6], "gamma": 0.5}
    assert [learning_rate(cfg, phase, e, 0) for e in (0, 2, 3, 5, 6, 9)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    # A phase that starts later (epochs 4-9 after head-only epochs) counts its own epochs.
    assert learning_rate(cfg, Phase(4, 10, 5), 7, 0) == pytest.approx(0.05)


def test_a_config_written_with_the_flat_optimiser_keys_loads_as_entries(tmp_path):
    """configs written before optimisers and rate schedules were catalogue entries (the old
    config.yaml dumps every flat key, defaults included) load with a notice per moved key."""
    from aepg.config import to_yaml
    from aepg.optim import AdamOptimizer, ConstantRate, SGDOptimizer, StepRate

    old = yaml.safe_load(to_yaml(load_config(DIGITS)))
    old["train"].update({"optimizer": "adam", "momentum": 0.9, "nesterov": False, "lr_schedule": "constant",
                         "warmup_epochs": 0, "lr_milestones": [], "lr_gamma": 0.1})
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    train = load_config(tmp_path / "old.yaml").train
    assert train.optimizer == AdamOptimizer() and train.lr_schedule == ConstantRate()
    assert train == load_config(DIGITS).train
    old["train"].update({"optimizer": "sgd", "momentum": 0.5, "nesterov": True, "lr_schedule": "step",
                         "warmup_epochs": 1, "lr_milestones": [2], "lr_gamma": 0.5})
    (tmp_path / "sgd.yaml").write_text(yaml.safe_dump(old))
    train = load_config(tmp_path / "sgd.yaml").train
    assert train.optimizer == SGDOptimizer(momentum=0.5, nesterov=True)
    assert train.lr_schedule == StepRate(warmup_epochs=1, milestones=[2], gamma=0.5)
    # Written today, it reads back the same, under the new keys.
    assert yaml.safe_load(to_yaml(load_config(tmp_path / "sgd.yaml")))["train"]["optimizer"] == \
        {"kind": "sgd", "momentum": 0.5, "nesterov": True}
    # An old key means what its new name would: SGD's key under Adam is inactive either way.
    assert load_config(DIGITS, ["train.nesterov=true"]) == load_config(DIGITS, ["train.optimizer.nesterov=true"])


def test_padded_crop_is_a_random_crop_of_the_zero_padded_image():
    images = torch.randint(1, 256, (6, 3, 12, 12), dtype=torch.uint8)
    sizes = torch.tensor([[12, 12]] * 6)
    view = BatchView(12, (0.0,) * 3, (1 / 255,) * 3, augment=True, train=True, crop="padded", padding=3)
    out = view(images, sizes, torch.Generator().manual_seed(5))
    draws = torch.Generator().manual_seed(5)
    shifts = torch.randint(0, 7, (6, 2), generator=draws) - 3
    flips = torch.rand(6, generator=draws) < 0.5
    padded = torch.nn.functional.pad(images.float(), (3, 3, 3, 3))
    for i, ((dx, dy), flip) in enumerate(zip(shifts.tolist(), flips.tolist())):
        expected = padded[i, :, 3 + dy: 15 + dy, 3 + dx: 15 + dx]
        torch.testing.assert_close(out[i], expected.flip(-1) if flip else expected, atol=1e-3, rtol=0)
    assert (out == 0).any() and {dx for dx, _ in shifts.tolist()} != {0}
    # At test time a padded-crop benchmark sees the whole image.
    test = BatchView(12, (0.0,) * 3, (1 / 255,) * 3, augment=True, train=False, crop="padded", padding=3)
    torch.testing.assert_close(test(images, sizes), images.float(), atol=1e-3, rtol=0)


def test_full_fine_tuning_trains_the_backbone_and_its_batchnorm(tmp_path):
    overrides = [*run_places(tmp_path), *SCRATCH]
    cfg = load_config(DIGITS, overrides)
    initial, _, _ = build_job(cfg)
    before = {k: v.clone() for k, v in initial.backbone.state_dict().items()}
    assert main(["train", str(DIGITS), *overrides]) == 0
    client = MlflowClient(cfg.tracking_uri)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name(cfg.experiment).experiment_id])
    run_id = mlflow_run.info.run_id
    snapshot, _ = CheckpointStore(cfg.storage_path, run_id).load_latest()
    trained = {k.removeprefix("backbone."): v for k, v in snapshot.model.items() if k.startswith("backbone.")}
    assert set(trained) == set(before), "the checkpoint holds the whole backbone"
    convolutions = [k for k in before if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
    assert convolutions and all(not torch.equal(trained[k], before[k]) for k in convolutions)
    statistics = [k for k in before if k.endswith("running_mean")]
    assert statistics and all(not torch.equal(trained[k], before[k]) for k in statistics), "BatchNorm stayed in eval mode"

    # The checkpoint restores the trained model exactly.
    model, benchmark, _ = build_job(cfg)
    model.load_trainable_state_dict(snapshot.model)
    assert all(torch.equal(model.backbone.state_dict()[k], trained[k]) for k in trained)

    params = mlflow_run.data.params
    assert (params["model.method.kind"], params["model.method.batchnorm"], params["train.optimizer.kind"]) == ("full", "train", "sgd")
    assert (params["train.optimizer.nesterov"], params["train.lr_schedule.kind"], params["benchmark.crop"]) == \
        ("True", "cosine", "padded")
    assert "train.lr_schedule.milestones" not in params, "the step schedule's keys belong to it"
    assert int(mlflow_run.data.tags["params_method"]) == sum(v.numel() for k, v in before.items() if "running" not in k
                                                           and "num_batches" not in k)
    rates = [m.value for m in sorted(client.get_metric_history(run_id, "train/lr"), key=lambda m: m.step)]
    steps = len(rates) // 2  # two epochs: warm-up, then cosine down from the peak
    assert rates[:steps] == pytest.approx([0.05 * (i + 1) / steps for i in range(steps)])
    assert rates[steps] == pytest.approx(0.05) and rates[-1] < rates[steps]


def test_head_only_epochs_keep_batchnorm_frozen_and_lae_is_refused():
    model, _, _ = build_job(load_config(DIGITS, SCRATCH))
    norms = [m for m in model.backbone.modules() if isinstance(m, _BatchNorm)]
    model.train()
    assert norms and all(m.training for m in norms)
    model.set_method_trainable(False)  # a head-only phase
    model.train()
    assert not any(m.training for m in norms)
    frozen, _, _ = build_job(load_config(DIGITS, [*SCRATCH, "model.method.batchnorm=frozen"]))
    assert not any(m.training for m in frozen.train().backbone.modules() if isinstance(m, _BatchNorm))
    with pytest.raises(ConfigError, match="model.method.parts.lae: LAE's online/offline pair"):
        load_config(DIGITS, [*SCRATCH, "model.method.parts.lae.enabled=true"])


def test_unnormalised_inputs_are_pixels_in_0_1():
    _, benchmark, _ = build_job(load_config(DIGITS, ["model.normalize=none"]))
    images = torch.tensor([[[[0, 255], [51, 102]]] * 3], dtype=torch.uint8)
    out = benchmark.test_view(images, torch.tensor([[2, 2]]))
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0.1


@pytest.mark.parametrize("span", ["task", "trained"])
def test_annealing_spans_the_task_or_only_its_trained_epochs(span):
    cfg = load_config(DIGITS, ["benchmark.num_tasks=2", "train.epochs=5", "train.head_only_epochs=3", f"annealing.span={span}"])
    model, benchmark, objective = build_job(cfg)
    trainer = ContinualTrainer(cfg, model, benchmark, objective, Context(device=torch.device("cpu")))
    first, second = benchmark.tasks
    where = lambda task, epoch: trainer._schedule_progress(task, trainer._phase(task, epoch, 10), epoch, 0, 0, 1)  # noqa: E731
    assert (where(first, 3).t, where(first, 3).T) == (30, 50)  # the first task has no head-only epochs
    if span == "task":
        assert [(where(second, e).t, where(second, e).T) for e in (0, 3, 4)] == [(0, 50), (30, 50), (40, 50)]
    else:
        assert [(where(second, e).t, where(second, e).T) for e in (0, 3, 4)] == [(0, 20), (0, 20), (10, 20)]

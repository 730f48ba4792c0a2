"""A method's life cycle as the trainer calls it, pinned with a method registered here through the
public catalogue API (as a plugin would): which hooks run, in what order, with what data."""

from typing import Literal

import torch
from conftest import CONFIGS
from torch import nn

from aepg.catalog import METHODS
from aepg.config import MethodConfig, load_config
from aepg.distributed import Context
from aepg.launch import build_job
from aepg.models.peft.base import MethodModule
from aepg.trainer import ContinualTrainer


@METHODS.register("hook_probe", builder="test_lifecycle:build_probe")
class HookProbe(MethodConfig):
    """A shift of the pooled features whose gradient the method itself zeroes, recording its hooks."""

    kind: Literal["hook_probe"] = "hook_probe"
    untrained_task: int = -1
    """A task the method says not to train."""


class Probe(MethodModule):
    def __init__(self, backbone: nn.Module, untrained_task: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(backbone.num_features))
        self.calls: list[tuple] = []
        self.untrained_task = untrained_task
        backbone.register_forward_hook(lambda module, inputs, features: features + self.shift)

    def set_num_classes(self, num_classes):
        self.calls.append(("classes", num_classes))

    def begin_task(self, task):
        self.calls.append(("begin", task))

    def prepare_task(self, task, data):
        features, modes = zip(*((f, self.training) for f, _ in data.features()))
        self.calls.append(("prepare", task, tuple(torch.cat(features).shape), any(modes)))

    def trains(self, task):
        return task != self.untrained_task

    def transform_gradients(self):
        self.calls.append(("transform", self.shift.grad is not None))
        self.shift.grad.zero_()  # a projection onto nothing: the shift never moves

    def after_step(self):
        self.calls.append(("after_step",))

    def end_task(self, task, data):
        labels = torch.cat([y for _, y in data.batches()])
        self.calls.append(("end", task, len(labels), int(labels.min()), int(labels.max()), data.start, data.stop))

    def predict(self, logits, features, columns, again):
        self.calls.append(("predict", self.training))
        return logits


def build_probe(backbone, cfg, num_tasks):
    return Probe(backbone, cfg.untrained_task)


PROBE = ["model.method.kind=hook_probe", "benchmark.num_tasks=2", "benchmark.max_train_per_class=12",
         "benchmark.max_test_per_class=4", "train.epochs=1", "train.batch_size=20", "train.lr=0.01"]


def test_trainer_calls_every_hook_in_order_with_the_task_data():
    cfg = load_config(CONFIGS / "digits.yaml", PROBE)
    model, benchmark, objective = build_job(cfg)
    head_before = model.head.weight.detach().clone()
    ContinualTrainer(cfg, model, benchmark, objective, Context(device=torch.device("cpu"))).fit()

    calls, tasks = model.method_module.calls, benchmark.tasks
    assert calls[0] == ("classes", 10)
    steps = [-(-len(task.train) // cfg.train.batch_size) for task in tasks]  # ceil: batches per task
    for task, n in enumerate(steps):
        begin = calls.index(("begin", task))
        end = next(i for i, call in enumerate(calls) if call[:2] == ("end", task))
        between = calls[begin + 1:end]
        # The task's data comes first, as features of the model in eval mode (then training resumes).
        assert between[0] == ("prepare", task, (len(tasks[task].train), model.backbone.num_features), False)
        assert between[1:] == [("transform", True), ("after_step",)] * n
        assert calls[end] == ("end", task, len(tasks[task].train), tasks[task].start, tasks[task].stop - 1,
                              tasks[task].start, tasks[task].stop)
        # The task's evaluation predicts after its end, in eval mode only.
        after = calls[end + 1:calls.index(("begin", task + 1)) if task + 1 < len(tasks) else None]
        assert after and set(after) == {("predict", False)}
    assert torch.equal(model.method_module.shift, torch.zeros_like(model.method_module.shift)), "the transformed gradient was not used"
    assert not torch.equal(model.head.weight, head_before)


def test_a_task_the_method_does_not_train_goes_from_its_data_to_its_end():
    cfg = load_config(CONFIGS / "digits.yaml", [*PROBE, "model.method.untrained_task=1"])
    model, benchmark, objective = build_job(cfg)
    ContinualTrainer(cfg, model, benchmark, objective, Context(device=torch.device("cpu"))).fit()
    calls = model.method_module.calls
    begin = calls.index(("begin", 1))
    assert [call[0] for call in calls[begin:]][:3] == ["begin", "prepare", "end"]

"""The one continual training loop: tasks in order, epochs of steps, evaluation on all seen tasks.

It runs the same way in-process and inside Ray Train workers (the ``Context`` gives rank,
device and model wrapping). It reports through ``Reporter`` objects and saves through a
checkpoint callback; it knows nothing of MLflow, Ray Tune or Optuna.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler, Subset
from tqdm.auto import tqdm

from aepg.benchmarks.images import collate
from aepg.benchmarks.tasks import Benchmark, Task
from aepg.config import RunConfig
from aepg.distributed import Context, derive_seed, seed_all
from aepg.metrics import summarize, task_metrics
from aepg.models.classifier import ContinualClassifier
from aepg.models.contract import TrainingBatch, full_precision
from aepg.objectives import Objective
from aepg.optim import LR_SCALE, Phase, build_optimizer, learning_rate, set_learning_rate
from aepg.schedules import Progress, progress

log = logging.getLogger("aepg")


MAX_DATA_WORKERS = 8
PREFETCH_BATCHES = 4
BAR_NAMES = {"loss": "loss", "a_t": "a_t", "batch_accuracy": "acc"}
"""What a task's progress bar shows: step metric -> label."""


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or inf; the run cannot continue."""


@dataclass
class TrainState:
    """Where a run is. ``task`` is the task being trained, ``epoch`` the epochs it has finished."""

    task: int = 0
    epoch: int = 0
    global_step: int = 0
    accuracy_matrix: list[list[float]] = field(default_factory=list)
    test_sizes: list[int] = field(default_factory=list)
    """Test samples of each task seen so far (for the pooled accuracy)."""

    @property
    def summary(self) -> dict[str, float]:
        return summarize(self.accuracy_matrix, self.test_sizes)

    def metrics(self, num_tasks: int, placeholders: bool = False) -> dict[str, float]:
        """The metrics reported after each task (sweeps compare trials on them)."""
        return task_metrics(self.accuracy_matrix, self.test_sizes, num_tasks, placeholders)


@dataclass
class Snapshot:
    """What a checkpoint holds: the state plus PEFT/head weights and, inside a task, the optimiser."""

    state: TrainState
    model: dict
    optimizer: dict | None = None


class Reporter(Protocol):
    """Where step and task results go (MLflow, tests). Steps are optimiser steps."""

    def log_steps(self, rows: list[tuple[int, dict[str, float]]]) -> None: ...

    def task_finished(self, state: TrainState, samples_per_second: float | None) -> None: ...


class StepBuffer:
    """Step metrics kept as device tensors and copied to the host in chunks (one sync per chunk)."""

    def __init__(self, reporters: list[Reporter], chunk: int = 50):
        self.reporters, self.chunk, self.rows = reporters, chunk, []

    def add(self, step: int, values: dict[str, torch.Tensor | float]) -> None:
        self.rows.append((step, values))
        if len(self.rows) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        rows = [(step, {k: float(v) for k, v in values.items()}) for step, values in self.rows]
        self.rows = []
        for step, values in rows:
            if not math.isfinite(values["loss"]):
                raise NonFiniteLoss(f"loss became {values['loss']} at step {step}")
        if rows:
            for reporter in self.reporters:
                reporter.log_steps(rows)


@dataclass
class BarPostfix:
    """Shows the latest logged loss, a_t and batch accuracy on a task's progress bar, as the step
    buffer hands them to the host (so the bar adds no device sync of its own)."""

    bar: tqdm

    def log_steps(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        values = rows[-1][1]
        self.bar.set_postfix({BAR_NAMES[k]: f"{values[k]:.3f}" for k in BAR_NAMES if k in values}, refresh=True)


HOOK_DRAWS = 1 << 30
"""Marks the hooks' seeds apart from the epochs' ((seed, task, epoch, rank, ...))."""


@dataclass
class TaskInputs:
    """The context of a task's hooks (``aepg.models.contract.TaskData``): the model, the objective,
    and the task's training images as unaugmented model inputs on the device, each worker its shard."""

    trainer: "ContinualTrainer"
    task: Task

    @property
    def start(self) -> int:
        return self.task.start

    @property
    def stop(self) -> int:
        return self.task.stop

    @property
    def model(self) -> ContinualClassifier:
        return self.trainer.model

    @property
    def columns(self) -> slice:
        return self.trainer.objective.columns(self.task.start, self.task.stop)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, start: int | None = None,
             reduction: str = "mean") -> torch.Tensor:
        trainer = self.trainer
        if trainer.cfg.annealing.scope == "run":
            steps = [trainer.cfg.train.epochs_of(t.index) * trainer.steps_per_epoch(t) for t in trainer.benchmark.tasks]
            end = Progress(sum(steps[: self.task.index + 1]), sum(steps))
        else:
            end = Progress(1, 1)
        targets = labels - (self.columns.start if start is None else start)
        if reduction == "none":
            return trainer.objective.per_sample(logits, targets, end)
        return trainer.objective(logits, targets, end).loss

    def generator(self, *salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.trainer.cfg.seed, self.task.index, HOOK_DRAWS, *salt))

    def batches(self):
        trainer, train = self.trainer, self.task.train
        shard = Subset(train, trainer.context.shard(len(train)))
        for images, sizes, y in trainer._loader(shard, trainer.cfg.train.eval_batch_size, in_memory=train.in_memory):
            yield trainer.benchmark.test_view(images.to(trainer.device, non_blocking=True), sizes), y.to(trainer.device)

    @torch.no_grad()
    def features(self, dtype: torch.dtype = torch.float32):
        """Computed with autocast off, whatever ``train.precision`` says: methods build their
        statistics from them (``aepg.models.peft.base``'s precision rule)."""
        model = self.trainer.model
        was_training = model.training
        model.eval()
        try:
            for x, y in self.batches():
                with full_precision(self.trainer.device):
                    features = model.features(x).to(dtype)
                yield features, y
        finally:
            model.train(was_training)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.trainer.context.all_reduce_sum(tensor)


AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` on ``device``: ``auto`` is bf16-mixed on a GPU with bf16, else 32-true."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "32-true"


def autocast_for(cfg: RunConfig, device: torch.device):
    """The run's forwards' autocast on ``device`` (a null context in float32)."""
    dtype = AUTOCAST_DTYPES.get(resolve_precision(cfg.train.precision, device))
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


class ContinualTrainer:
    def __init__(
        self,
        cfg: RunConfig,
        model: ContinualClassifier,
        benchmark: Benchmark,
        objective: Objective,
        context: Context,
        reporters: list[Reporter] = (),
        save: Callable[[Snapshot], None] | None = None,
        task_hooks: list[Callable[[TrainState], None]] = (),
    ):
        """``reporters`` and ``save`` run on the chief only; ``task_hooks`` run on every rank after
        each task's evaluation (collectives such as ``ray.train.report`` need all ranks)."""
        self.cfg, self.model, self.benchmark, self.objective, self.context = cfg, model, benchmark, objective, context
        self.reporters = list(reporters) if context.is_chief else []
        self.save = save if context.is_chief else None
        self.task_hooks = list(task_hooks)
        self.device = context.device
        cuda = self.device.type == "cuda"
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.autocast = autocast_for(cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "16-mixed" else None
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        self.fused_adam = cuda and cfg.train.fused_adam
        self.model.to(self.device)
        if cuda and cfg.train.channels_last and not hasattr(model.backbone, "blocks"):  # convolutional backbones
            self.model.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            self.model.backbone.compile()

    # -- data -------------------------------------------------------------------------------
    def data_workers(self, in_memory: bool) -> int:
        """``train.data_workers``, or with ``auto``: none for data in memory, else all the worker's
        CPUs but the one training, at least one and at most ``MAX_DATA_WORKERS``."""
        chosen = self.cfg.train.data_workers
        if chosen != "auto":
            return chosen
        return 0 if in_memory else max(1, min(MAX_DATA_WORKERS, int(self.context.cpus) - 1))

    def _loader(self, dataset, batch_size: int, sampler=None, in_memory: bool | None = None,
                drop_last: bool = False) -> DataLoader:
        """Padded uint8 batches, loaded by worker processes that stay for the task's epochs."""
        workers = self.data_workers(dataset.in_memory if in_memory is None else in_memory)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                          pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                          prefetch_factor=PREFETCH_BATCHES if workers else None, drop_last=drop_last)

    def _train_loader(self, task: Task) -> DataLoader:
        sampler = DistributedSampler(
            task.train,
            num_replicas=self.context.world_size,
            rank=self.context.rank,
            shuffle=True,
            seed=derive_seed(self.cfg.seed, task.index),
        )
        if self.steps_per_epoch(task) == 0:
            raise ValueError(f"train.drop_last: task {task.index + 1} has fewer training images per worker than one "
                             f"batch ({self.cfg.train.batch_size // self.context.world_size}), so no step would run")
        return self._loader(task.train, self.cfg.train.batch_size // self.context.world_size, sampler,
                            drop_last=self.cfg.train.drop_last)

    def steps_per_epoch(self, task: Task) -> int:
        per_worker = math.ceil(len(task.train) / self.context.world_size)
        batch = self.cfg.train.batch_size // self.context.world_size
        return per_worker // batch if self.cfg.train.drop_last else math.ceil(per_worker / batch)

    # -- training ---------------------------------------------------------------------------
    def fit(self, state: TrainState | None = None, optimizer_state: dict | None = None) -> TrainState:
        """Train from ``state`` (a fresh run, or one restored from a checkpoint) to the end."""
        state = state or TrainState()
        for task in self.benchmark.tasks[state.task :]:
            start, first_epoch = time.perf_counter(), state.epoch
            self.train_task(task, state, optimizer_state)
            optimizer_state = None
            # Training throughput of the whole job (all workers), evaluation excluded; none for a
            # task the method does not train.
            trained = (self.cfg.train.epochs_of(task.index) - first_epoch) * len(task.train) \
                if self.model.trains(task.index) else 0
            rate = trained / (time.perf_counter() - start) if trained else None
            accuracies, state.test_sizes = self.evaluate(task.index)
            state.accuracy_matrix.append(accuracies)
            state.task, state.epoch = task.index + 1, 0
            self._log_task(state)
            for reporter in self.reporters:
                reporter.task_finished(state, rate)
            if self.save:
                self.save(Snapshot(state, self.model.trainable_state_dict()))
            # Last: a sweep may stop the trial as soon as it hears of the task's end.
            for hook in self.task_hooks:
                hook(state)
        return state

    def _optimizer(self, task: Task, head_only: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """A fresh optimiser per phase, so moments from old tasks never move their head rows; the
        method's parameters in groups of their own, at ``model.method.lr_scale`` times the rate
        (or the rates the method gives some of them in this task)."""
        self.model.set_method_trainable(not head_only)
        groups = [{"params": list(self.model.head.parameters()), LR_SCALE: 1.0}]
        if not head_only and self.model.method_parameters():
            groups += [{"params": params, LR_SCALE: rate} for params, rate in
                       self.model.method_rate_groups(task.index, self.cfg.model.method.lr_scale or 1.0)]
        return self.context.prepare(self.model), build_optimizer(groups, self.cfg.train, self.fused_adam)

    def _head_only(self, task: Task, epoch: int) -> bool:
        return task.index > 0 and epoch < self.cfg.train.head_only_epochs

    def _phase(self, task: Task, epoch: int, steps_per_epoch: int) -> Phase:
        """The epochs of ``epoch``'s phase: the head-only epochs, or the task's other epochs."""
        head_only = self.cfg.train.head_only_epochs if task.index > 0 else 0
        if epoch < head_only:
            return Phase(0, head_only, steps_per_epoch)
        return Phase(head_only, self.cfg.train.epochs_of(task.index), steps_per_epoch)

    def _schedule_progress(self, task: Task, phase: Phase, epoch: int, step: int, run_step: int, run_steps: int) -> Progress:
        """Where a_t is: ``annealing.span: trained`` counts only the phase that trains the PEFT module."""
        where = progress(self.cfg.annealing.scope, epoch * phase.steps_per_epoch + step,
                         self.cfg.train.epochs_of(task.index) * phase.steps_per_epoch, run_step, run_steps)
        if self.cfg.annealing.span == "trained" and self.cfg.annealing.scope == "task":
            trained = self._phase(task, self.cfg.train.epochs_of(task.index) - 1, phase.steps_per_epoch)
            return Progress(max(0, where.t - trained.first * phase.steps_per_epoch), trained.steps)
        return where

    def train_task(self, task: Task, state: TrainState, optimizer_state: dict | None) -> None:
        """The task's epochs from ``state.epoch`` on, in phases (head-only epochs, then full ones,
        each with a fresh optimiser), then the method's end of the task."""
        loader = self._train_loader(task)
        bar = tqdm(
            total=self.cfg.train.epochs_of(task.index) * len(loader),
            initial=state.epoch * len(loader),
            desc=f"task {task.index + 1}/{len(self.benchmark.tasks)}",
            disable=None if self.context.is_chief else True,
            leave=False,
        )
        self.model.begin_task(task.index)
        if state.epoch == 0:
            self.model.prepare_task(task.index, TaskInputs(self, task))
        phase = None
        epochs = range(state.epoch, self.cfg.train.epochs_of(task.index)) if self.model.trains(task.index) else ()
        for epoch in epochs:
            head_only = self._head_only(task, epoch)
            if head_only != phase:
                phase = head_only
                model, optimizer = self._optimizer(task, head_only)
                if optimizer_state is not None:
                    optimizer.load_state_dict(optimizer_state)
                    optimizer_state = None
            self.train_epoch(task, epoch, loader, model, optimizer, state, bar)
            state.epoch = epoch + 1
            self._checkpoint_inside_task(task, state, optimizer, head_only)
        bar.close()
        self.model.end_task(task.index, TaskInputs(self, task))

    def train_epoch(self, task: Task, epoch: int, loader: DataLoader, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, state: TrainState, bar: tqdm) -> None:
        """One pass over the task's training data: a step per batch, its metrics logged in chunks."""
        columns = self.objective.columns(task.start, task.stop)
        phase = self._phase(task, epoch, len(loader))
        run_steps = sum(self.cfg.train.epochs_of(t.index) * self.steps_per_epoch(t) for t in self.benchmark.tasks)
        every = self.cfg.train.log_every_steps
        shown = [BarPostfix(bar)] if not bar.disable else []  # a terminal's bar
        buffer = StepBuffer([*self.reporters, *shown], chunk=max(50, every))
        params = [p for group in optimizer.param_groups for p in group["params"]]
        lr_varies = self.cfg.train.lr_schedule.varies
        model.train()
        seed_all(derive_seed(self.cfg.seed, task.index, epoch, self.context.rank))
        # Crops and flips come from their own stream: the same whatever the loader's workers do.
        crops = torch.Generator().manual_seed(derive_seed(self.cfg.seed, task.index, epoch, self.context.rank, 1))
        loader.sampler.set_epoch(epoch)
        for i, (images, sizes, y) in enumerate(loader):
            x = self.benchmark.train_view(images.to(self.device, non_blocking=True), sizes, crops)
            y = y.to(self.device, non_blocking=True) - columns.start
            with self.autocast:
                logits = model(x, columns).float()
            where = self._schedule_progress(task, phase, epoch, i, state.global_step, run_steps)
            out = self.objective(logits, y, where)
            auxiliary = self.model.auxiliary_loss(
                TrainingBatch(x, y, logits, self.model.last_features, columns, task.start, self.model, optimizer))
            optimizer.zero_grad(set_to_none=True)
            loss = out.loss + auxiliary
            if self.scaler is None:
                loss.backward()
            else:  # fp16: scaled backward, gradients unscaled before the method and clipping see them
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(optimizer)
            self.model.transform_gradients()
            if self.cfg.train.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip_norm)
            lr = learning_rate(self.cfg.train, phase, epoch, i)
            set_learning_rate(optimizer, lr)
            if self.scaler is None:
                optimizer.step()
            else:  # skipped where the gradients overflowed
                self.scaler.step(optimizer)
                self.scaler.update()
            self.model.after_step()
            state.global_step += 1
            if state.global_step % every == 0:
                metrics = self._step_metrics(out, logits, y, auxiliary)
                if lr_varies:
                    metrics["lr"] = lr
                buffer.add(state.global_step, metrics)
            bar.update()
        buffer.flush()

    def _checkpoint_inside_task(self, task: Task, state: TrainState, optimizer: torch.optim.Optimizer,
                                head_only: bool) -> None:
        """Every ``checkpoint.every_epochs`` epochs inside a task (after the task, ``fit`` saves)."""
        every = self.cfg.checkpoint.every_epochs
        if self.save and every and state.epoch % every == 0 and state.epoch < self.cfg.train.epochs_of(task.index):
            # The optimiser carries over only if the next epoch stays in the same phase.
            same_phase = self._head_only(task, state.epoch) == head_only
            self.save(Snapshot(state, self.model.trainable_state_dict(), optimizer.state_dict() if same_phase else None))

    @staticmethod
    def _step_metrics(out, logits: torch.Tensor, y: torch.Tensor, auxiliary: torch.Tensor | float) -> dict:
        metrics = {
            "loss": out.loss.detach(),
            "ce": out.ce,
            "entropy": out.entropy,
            "p_y": out.p_y,
            "batch_accuracy": (logits.detach().argmax(1) == y).float().mean(),
        }
        if out.a_t is not None:
            metrics["a_t"] = out.a_t
        if isinstance(auxiliary, torch.Tensor):  # the method's own loss term, apart from the objective
            metrics["auxiliary_loss"] = auxiliary.detach()
        return metrics

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, last_task: int) -> tuple[list[float], list[int]]:
        """Accuracy on each seen task's test data, predicting among all seen classes (no task id),
        and the number of test samples of each.

        Each worker scores its shard; counts are summed so every test sample counts once.
        """
        self.model.eval()
        tasks = self.benchmark.tasks[: last_task + 1]
        seen = tasks[-1].stop
        stops = torch.tensor([task.stop for task in tasks], device=self.device)
        shards = ConcatDataset([Subset(task.test, self.context.shard(len(task.test))) for task in tasks])
        counts = torch.zeros(len(tasks), 2, device=self.device, dtype=torch.float64)
        for images, sizes, y in self._loader(shards, self.cfg.train.eval_batch_size, in_memory=tasks[0].test.in_memory):
            x, y = self.benchmark.test_view(images.to(self.device, non_blocking=True), sizes), y.to(self.device)
            with self.autocast:
                correct = (self.model(x, slice(0, seen)).argmax(1) == y).double()
            task_of = torch.searchsorted(stops, y, right=True)  # labels are class-order positions
            counts[:, 0].index_add_(0, task_of, correct)
            counts[:, 1].index_add_(0, task_of, torch.ones_like(correct))
        counts = self.context.all_reduce_sum(counts).cpu()
        return [float(correct / total) for correct, total in counts.tolist()], [int(total) for _, total in counts.tolist()]

    def _log_task(self, state: TrainState) -> None:
        if self.context.is_chief:
            row = " ".join(f"{a:.3f}" for a in state.accuracy_matrix[-1])
            log.info("task %d/%d done: accuracy per seen task [%s], A=%.4f",
                     state.task, len(self.benchmark.tasks), row, state.summary["last_accuracy"])

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
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm.auto import tqdm

from aepg.benchmarks.tasks import Benchmark, Task
from aepg.distributed import Context, derive_seed, seed_all
from aepg.metrics import summarize, task_metrics
from aepg.models.classifier import ContinualClassifier
from aepg.objectives import Objective
from aepg.schedules import Progress

log = logging.getLogger("aepg")


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

    def task_finished(self, state: TrainState, samples_per_second: float) -> None: ...


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


class ContinualTrainer:
    def __init__(
        self,
        cfg,
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
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        )
        self.model.to(self.device)

    # -- data -------------------------------------------------------------------------------
    def _train_loader(self, task: Task) -> DataLoader:
        sampler = DistributedSampler(
            task.train,
            num_replicas=self.context.world_size,
            rank=self.context.rank,
            shuffle=True,
            seed=derive_seed(self.cfg.seed, task.index),
        )
        return DataLoader(
            task.train,
            batch_size=self.cfg.train.batch_size // self.context.world_size,
            sampler=sampler,
            num_workers=self.cfg.train.data_workers,
            pin_memory=self.device.type == "cuda",
        )

    def steps_per_epoch(self, task: Task) -> int:
        per_worker = math.ceil(len(task.train) / self.context.world_size)
        return math.ceil(per_worker / (self.cfg.train.batch_size // self.context.world_size))

    def _progress(self, task: Task, step: int, global_step: int, task_steps: int) -> Progress:
        if self.cfg.schedule.scope == "run":
            total = sum(self.cfg.train.epochs * self.steps_per_epoch(t) for t in self.benchmark.tasks)
            return Progress(global_step, total)
        return Progress(step, task_steps)

    # -- training ---------------------------------------------------------------------------
    def fit(self, state: TrainState | None = None, optimizer_state: dict | None = None) -> TrainState:
        """Train from ``state`` (a fresh run, or one restored from a checkpoint) to the end."""
        state = state or TrainState()
        for task in self.benchmark.tasks[state.task :]:
            start, first_epoch = time.perf_counter(), state.epoch
            self.train_task(task, state, optimizer_state)
            optimizer_state = None
            # Training throughput of the whole job (all workers), evaluation excluded.
            rate = (self.cfg.train.epochs - first_epoch) * len(task.train) / (time.perf_counter() - start)
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

    def _optimizer(self, head_only: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """A fresh Adam per phase, so moments from old tasks never move their head rows."""
        self.model.set_peft_trainable(not head_only)
        params = list(self.model.head.parameters()) + ([] if head_only else self.model.peft_parameters())
        optimizer = torch.optim.Adam(params, lr=self.cfg.train.lr, weight_decay=self.cfg.train.weight_decay)
        return self.context.prepare(self.model), optimizer

    def _head_only(self, task: Task, epoch: int) -> bool:
        return task.index > 0 and epoch < self.cfg.train.head_only_epochs

    def train_task(self, task: Task, state: TrainState, optimizer_state: dict | None) -> None:
        cfg = self.cfg.train
        loader = self._train_loader(task)
        steps_per_epoch = len(loader)
        task_steps = cfg.epochs * steps_per_epoch
        local = self.cfg.objective.logits == "local"
        columns = slice(task.start if local else 0, task.stop)
        buffer = StepBuffer(self.reporters, chunk=max(50, cfg.log_every_steps))
        bar = tqdm(
            total=task_steps,
            initial=state.epoch * steps_per_epoch,
            desc=f"task {task.index + 1}/{len(self.benchmark.tasks)}",
            disable=None if self.context.is_chief else True,
            leave=False,
        )
        self.model.begin_task(task.index)
        phase = None
        for epoch in range(state.epoch, cfg.epochs):
            head_only = self._head_only(task, epoch)
            if head_only != phase:
                phase = head_only
                model, optimizer = self._optimizer(head_only)
                if optimizer_state is not None:
                    optimizer.load_state_dict(optimizer_state)
                    optimizer_state = None
            model.train()
            seed_all(derive_seed(self.cfg.seed, task.index, epoch, self.context.rank))
            loader.sampler.set_epoch(epoch)
            for i, (x, y) in enumerate(loader):
                step = epoch * steps_per_epoch + i
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True) - columns.start
                with self.autocast:
                    logits = model(x, columns).float()
                out = self.objective(logits, y, self._progress(task, step, state.global_step, task_steps))
                optimizer.zero_grad(set_to_none=True)
                (out.loss + self.model.auxiliary_loss()).backward()
                optimizer.step()
                self.model.after_step()
                state.global_step += 1
                if state.global_step % cfg.log_every_steps == 0:
                    buffer.add(state.global_step, self._step_metrics(out, logits, y))
                bar.update()
            buffer.flush()
            state.epoch = epoch + 1
            every = self.cfg.checkpoint.every_epochs
            if self.save and every and state.epoch % every == 0 and state.epoch < cfg.epochs:
                # The optimiser carries over only if the next epoch stays in the same phase.
                same_phase = self._head_only(task, state.epoch) == head_only
                self.save(Snapshot(state, self.model.trainable_state_dict(), optimizer.state_dict() if same_phase else None))
        bar.close()

    @staticmethod
    def _step_metrics(out, logits: torch.Tensor, y: torch.Tensor) -> dict:
        metrics = {
            "loss": out.loss.detach(),
            "ce": out.ce,
            "entropy": out.entropy,
            "p_y": out.p_y,
            "batch_accuracy": (logits.detach().argmax(1) == y).float().mean(),
        }
        if out.a_t is not None:
            metrics["a_t"] = out.a_t
        return metrics

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, last_task: int) -> tuple[list[float], list[int]]:
        """Accuracy on each seen task's test data, predicting among all seen classes (no task id),
        and the number of test samples of each.

        Each worker scores its shard; counts are summed so every test sample counts once.
        """
        self.model.eval()
        seen = self.benchmark.tasks[last_task].stop
        counts = torch.zeros(last_task + 1, 2, device=self.device, dtype=torch.float64)
        for task in self.benchmark.tasks[: last_task + 1]:
            shard = Subset(task.test, self.context.shard(len(task.test)))
            for x, y in DataLoader(shard, batch_size=self.cfg.train.eval_batch_size, num_workers=self.cfg.train.data_workers):
                x, y = x.to(self.device), y.to(self.device)
                with self.autocast:
                    predictions = self.model(x, slice(0, seen)).argmax(1)
                counts[task.index, 0] += (predictions == y).sum()
                counts[task.index, 1] += len(y)
        counts = self.context.all_reduce_sum(counts).cpu()
        return [float(correct / total) for correct, total in counts.tolist()], [int(total) for _, total in counts.tolist()]

    def _log_task(self, state: TrainState) -> None:
        if self.context.is_chief:
            row = " ".join(f"{a:.3f}" for a in state.accuracy_matrix[-1])
            log.info("task %d/%d done: accuracy per seen task [%s], A=%.4f",
                     state.task, len(self.benchmark.tasks), row, state.summary["last_accuracy"])

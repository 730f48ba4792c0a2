"""Class statistics and classifier alignment, as SLCA's reference code does them (GengDavid/SLCA:
``models/base.py`` ``_compute_class_mean``, ``models/slca.py`` ``_stage2_compact_classifier``).

Statistics. After each task, the features of its training images (eval mode, unaugmented, autocast
off) give each new class c its count n, sum and sum of outer products, in float64, summed over the
workers; then ``mean = sum / n`` and ``cov = (outer - n mean mean^T) / (n - 1) + ridge I`` (torch.cov's
unbiased estimate, plus SLCA's 1e-4). The means are kept in float64 and the covariances in float32, as
SLCA keeps them, in buffers, so a checkpoint holds them: whole, as their diagonal, or as a low-rank factor.

Alignment, from the second task on (SLCA aligns after task 1, 2, ...): the head's rows of the classes
seen so far, and those only (SLCA's head has no others), train with SGD (momentum, weight decay, a
cosine from ``lr`` to 0 stepped per epoch) for ``epochs`` epochs. Each epoch draws
``samples_per_class`` features per class, in class order, from N(s_c mean_c, cov_c) in float32 (a
standard normal times the covariance's Cholesky factor, as ``MultivariateNormal.sample`` does),
shuffles them, and takes one step per ``samples_per_class`` of them; s_c is
``0.9 + 0.1 (t_c + 1) / (T + 1)`` for a class of task t_c after task T (SLCA's, unless
``shrink_old_means`` is off). The loss is cross-entropy or the run's objective, on the logits
divided, with a ``temperature``, by the mean over tasks of each task's logit norm and by the
temperature (SLCA's ``ca_with_logit_norm``).

The aligned head serves the task's evaluation; as SLCA's ``fc.recall()`` does, the next task then
trains from the head as it was before alignment (``keep_aligned_head`` keeps the aligned one), and
while it trains the earlier tasks' rows stay as they were (SLCA's frozen per-task heads). The
draws come from a generator seeded from the run's seed and the task, so every worker, holding the
same summed statistics, aligns the same head, and a resumed run aligns as an uninterrupted one.

SLCA++ (``models/slca_pp.py``, ``convs/linears.py``) adds ``old_feature_scale`` mu: each drawn
feature of a class of task t is divided by ``1 + (mu + 0.02 (u - 0.5)) (T - t)``, u uniform, and the
task's evaluation reads task t's logits from the features times ``1 + mu (T - t)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aepg.models.contract import MethodPart, TaskData
from aepg.models.heads import CosineHead


class ClassStatistics(nn.Module):
    """Per-class feature Gaussians, in buffers sized for the whole head."""

    def __init__(self, num_classes: int, dim: int, covariance: str, rank: int, ridge: float):
        super().__init__()
        self.covariance, self.rank, self.ridge = covariance, min(rank, dim), ridge
        self.register_buffer("means", torch.zeros(num_classes, dim, dtype=torch.float64))  # as SLCA's
        self.register_buffer("task_of_class", torch.full((num_classes,), -1, dtype=torch.long))
        if covariance == "full":
            self.register_buffer("covariances", torch.zeros(num_classes, dim, dim))
        elif covariance == "diagonal":
            self.register_buffer("variances", torch.zeros(num_classes, dim))
        else:  # cov ~ factor factor^T + residual^2 I, from the top eigenpairs
            self.register_buffer("factors", torch.zeros(num_classes, dim, self.rank))
            self.register_buffer("residuals", torch.zeros(num_classes))

    def collect(self, task: int, data: TaskData) -> None:
        """The task's classes' statistics from one pass over its training images."""
        classes = data.stop - data.start
        dim = self.means.shape[1]
        device = self.means.device
        counts = torch.zeros(classes, dtype=torch.float64, device=device)
        sums = torch.zeros(classes, dim, dtype=torch.float64, device=device)
        outers = torch.zeros(classes, dim, dim, dtype=torch.float64, device=device)
        for features, labels in data.features(torch.float64):
            index = (labels - data.start).to(device)
            counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
            sums.index_add_(0, index, features)
            outers.index_add_(0, index, features.unsqueeze(2) * features.unsqueeze(1))
        counts, sums, outers = data.sum(counts), data.sum(sums), data.sum(outers)
        if bool((counts < 2).any()):
            raise ValueError(f"classifier alignment needs 2 training images per class; task {task} has a class "
                             f"with {int(counts.min())}")
        means = sums / counts[:, None]
        covariances = (outers - counts[:, None, None] * means.unsqueeze(2) * means.unsqueeze(1)) / (counts - 1)[:, None, None]
        covariances = covariances + self.ridge * torch.eye(dim, dtype=torch.float64, device=device)
        new = slice(data.start, data.stop)
        self.means[new] = means
        self.task_of_class[new] = task
        if self.covariance == "full":
            self.covariances[new] = covariances.float()
        elif self.covariance == "diagonal":
            self.variances[new] = torch.diagonal(covariances, dim1=1, dim2=2).float()
        else:
            values, vectors = torch.linalg.eigh(covariances)  # ascending
            top, rest = values[:, -self.rank:], values[:, :-self.rank]
            residual = rest.mean(dim=1) if rest.shape[1] else torch.zeros_like(values[:, 0])
            self.factors[new] = (vectors[:, :, -self.rank:] * (top - residual[:, None]).clamp(min=0).sqrt()[:, None, :]).float()
            self.residuals[new] = residual.sqrt().float()

    def samplers(self, stop: int) -> list:
        """For each class below ``stop``: a function of standard normals (n, dim) giving draws around 0."""
        if self.covariance == "full":
            return [_cholesky_sampler(torch.linalg.cholesky(self.covariances[c])) for c in range(stop)]
        if self.covariance == "diagonal":
            return [lambda z, scale=self.variances[c].sqrt(): z * scale for c in range(stop)]
        return [_low_rank_sampler(self.factors[c], self.residuals[c]) for c in range(stop)]


def _cholesky_sampler(tril: Tensor):
    # MultivariateNormal.sample's own product, so the draws equal SLCA's to the last bit
    return lambda z: torch.matmul(tril, z.unsqueeze(-1)).squeeze(-1)


def _low_rank_sampler(factor: Tensor, residual: Tensor):
    rank = factor.shape[1]
    return lambda z: z[:, rank:rank + factor.shape[0]] * residual + z[:, :rank] @ factor.T


class ClassifierAlignment(MethodPart):
    def __init__(self, head: nn.Module, cfg):
        super().__init__()
        # Not submodules: the model checkpoints the head. A cosine head has no bias: a zero one
        # stands in for it, and is never aligned.
        bias = head.bias if head.bias is not None else torch.zeros(head.out_features, device=head.weight.device)
        self.head_parameters = [head.weight, bias]
        self.cosine_head = [head] if isinstance(head, CosineHead) else []  # a list: not a submodule
        self.cfg = cfg
        self.statistics = ClassStatistics(head.out_features, head.in_features, cfg.covariance, cfg.rank, cfg.ridge)
        self.register_buffer("unaligned_weight", torch.zeros_like(head.weight))
        self.register_buffer("unaligned_bias", torch.zeros_like(bias))
        self.register_buffer("restore_pending", torch.zeros((), dtype=torch.bool))
        self.old_rows: tuple[Tensor, Tensor] | None = None
        self.scaled_after: int | None = None
        """The task after whose alignment the evaluation scales old tasks' features (SLCA++)."""

    def begin_task(self, task: int) -> None:
        """The head as it was before the last alignment (SLCA's ``fc.recall()``), once; then the
        earlier tasks' rows as the task starts, which ``after_step`` keeps."""
        weight, bias = self.head_parameters
        if bool(self.restore_pending):
            with torch.no_grad():
                weight.copy_(self.unaligned_weight)
                bias.copy_(self.unaligned_bias)
            self.restore_pending.fill_(False)
        self.scaled_after = None
        seen = int((self.statistics.task_of_class >= 0).sum())
        self.old_rows = (weight[:seen].detach().clone(), bias[:seen].detach().clone()) \
            if self.cfg.freeze_old_classes and seen else None

    def after_step(self) -> None:
        if self.old_rows is not None:
            weight, bias = self.head_parameters
            with torch.no_grad():
                weight[:len(self.old_rows[1])].copy_(self.old_rows[0])
                bias[:len(self.old_rows[1])].copy_(self.old_rows[1])

    def end_task(self, task: int, data: TaskData) -> None:
        self.statistics.collect(task, data)
        if task == 0 or self.cfg.epochs == 0:
            return
        if not self.cfg.keep_aligned_head:
            with torch.no_grad():
                self.unaligned_weight.copy_(self.head_parameters[0])
                self.unaligned_bias.copy_(self.head_parameters[1])
            self.restore_pending.fill_(True)
        self.align(task, data)
        if self.cfg.old_feature_scale:
            self.scaled_after = task

    def predict(self, logits: Tensor, features: Tensor, columns: slice, again) -> Tensor:
        """SLCA++'s ``fc.update_scale()``: after task T's alignment, task t's logits read the features
        times ``1 + mu (T - t)``, i.e. ``(logits - bias) (1 + mu (T - t)) + bias``."""
        if self.scaled_after is None:
            return logits
        tasks = self.statistics.task_of_class[columns].to(logits.device)
        old = (tasks >= 0) & (tasks < self.scaled_after)
        scale = torch.where(old, 1 + self.cfg.old_feature_scale * (self.scaled_after - tasks), 1.0).float()
        bias = self.head_parameters[1][columns].detach().float()
        return (logits - bias) * scale + bias

    def align(self, task: int, data: TaskData) -> None:
        """SLCA's ``_stage2_compact_classifier`` (or LCA's ``align``) on the rows of the classes seen so far."""
        cfg, stop = self.cfg, data.stop
        weight, bias = self.head_parameters
        rows = [weight[:stop].detach().clone().requires_grad_(True),
                bias[:stop].detach().clone().requires_grad_(cfg.align_bias)]
        optimizer = torch.optim.SGD(rows if cfg.align_bias else rows[:1], lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.cosine_epochs or cfg.epochs)
        generator = data.generator()
        tasks = self.statistics.task_of_class[:stop]
        task_edges = _task_edges(tasks)
        means = self.statistics.means[:stop].float()
        batch = cfg.batch_size or cfg.samples_per_class
        device = weight.device
        samplers = self.statistics.samplers(stop)
        inputs = targets = None
        for _ in range(cfg.epochs):
            if inputs is None or cfg.draws == "per_epoch":
                inputs, targets = self.drawn(task, samplers, generator, device)
            order = torch.randperm(len(inputs), generator=generator).to(device)
            inputs, targets = inputs[order], targets[order]
            for first in range(0, len(inputs), batch):
                x, y = inputs[first:first + batch], targets[first:first + batch]
                with torch.enable_grad():
                    logits = self.cosine_head[0].with_weights(x, rows[0]) if self.cosine_head \
                        else F.linear(x, rows[0], rows[1])
                    if cfg.temperature is not None:
                        logits = normalised_logits(logits, task_edges, cfg.temperature)
                    if cfg.robust_weight:
                        losses = F.cross_entropy(logits, y, reduction="none") if cfg.objective == "ce" \
                            else data.loss(logits, y, start=0, reduction="none")
                        loss = robust_loss(losses, x, y, means.to(device), cfg.robust_weight)
                    else:
                        loss = F.cross_entropy(logits, y) if cfg.objective == "ce" else data.loss(logits, y, start=0)
                    optimizer.zero_grad()
                    loss.backward()
                optimizer.step()
            schedule.step()
        with torch.no_grad():
            weight[:stop].copy_(rows[0])
            bias[:stop].copy_(rows[1])

    def drawn(self, task: int, samplers: list, generator: torch.Generator, device) -> tuple[Tensor, Tensor]:
        """``samples_per_class`` features of each class ``samplers`` covers, in class order, and their labels."""
        cfg, stop = self.cfg, len(samplers)
        tasks = self.statistics.task_of_class[:stop]
        index = tasks if cfg.shrink_old_means != "tuna" else \
            torch.div(torch.arange(stop), -int((tasks == task).sum()), rounding_mode="floor")  # TUNA's: class // -n
        shrink = (0.9 + 0.1 * (index + 1).double() / (task + 1)) if cfg.shrink_old_means else torch.ones(stop, dtype=torch.float64)
        means = (self.statistics.means[:stop] * shrink[:, None].to(self.statistics.means.device)).float()
        n, dim = cfg.samples_per_class, means.shape[1]
        draws = dim + (self.statistics.rank if cfg.covariance == "low_rank" else 0)
        mu = cfg.old_feature_scale
        drawn = []
        for c in range(stop):
            features = means[c] + samplers[c](torch.empty(n, draws).normal_(generator=generator).to(device))
            if mu:  # SLCA++'s scaling, a uniform per feature drawn after the class's normals
                noise = mu + 0.02 * (torch.rand(n, generator=generator).to(device) - 0.5)
                features = features * (1 / (1 + noise * (task - int(tasks[c]))))[:, None]
            drawn.append(features)
        return torch.cat(drawn), torch.arange(stop, device=device).repeat_interleave(n)


def robust_loss(losses: Tensor, x: Tensor, y: Tensor, means: Tensor, weight: float) -> Tensor:
    """LCA's alignment loss: for each class of the batch, over its features whose nearest class mean
    is its own (all its features where none is), the mean loss plus ``weight`` times the mean absolute
    difference between the losses of two of them; averaged over the classes."""
    nearest = torch.cdist(x, means).argmin(dim=1)
    total = losses.new_zeros(())
    classes = torch.unique(y)
    for c in classes:
        labelled = y == c
        kept = labelled & (nearest == c)
        if not bool(kept.any()):
            total = total + losses[labelled].mean()
            continue
        own = losses[kept]
        spread = (own[:, None] - own[None, :]).abs()[~torch.eye(len(own), dtype=torch.bool, device=own.device)].mean() \
            if len(own) >= 2 else own.new_zeros(())
        total = total + own.mean() + weight * spread
    return total / len(classes)


def _task_edges(task_of_class: Tensor) -> list[int]:
    """Where each task's classes start and end among the classes seen so far."""
    tasks = task_of_class.tolist()
    return [0] + [c for c in range(1, len(tasks)) if tasks[c] != tasks[c - 1]] + [len(tasks)]


def normalised_logits(logits: Tensor, task_edges: list[int], temperature: float) -> Tensor:
    """SLCA's logit normalisation: the logits over the mean of each task's logit norm, over T."""
    norms = torch.cat([torch.norm(logits[:, a:b], p=2, dim=-1, keepdim=True) + 1e-7
                       for a, b in zip(task_edges, task_edges[1:])], dim=-1).mean(dim=-1, keepdim=True)
    return logits / norms / temperature


def statistics_bytes(num_classes: int, dim: int, covariance: str, rank: int = 16) -> int:
    """The statistics' size in a checkpoint: float64 means, float32 covariances (or their parts)."""
    per_class = {"full": dim * dim, "diagonal": dim, "low_rank": dim * min(rank, dim) + 1}[covariance]
    return num_classes * (8 * dim + 4 * per_class)


def build_alignment(cfg, model) -> ClassifierAlignment:
    """Classifier alignment over the model's head (``aepg.models.parts.ClassifierAlignmentPart``)."""
    return ClassifierAlignment(model.head, cfg)


"""InfLoRA (Liang & Li, CVPR 2024), as ``liangyanshuo/InfLoRA`` does it.

Each task t adds, in every adapted block, a key and a value LoRA branch ``B_t A_t`` on the rows of
the fused ``attn.qkv``; the projection becomes ``qkv(x) + [0, x (sum_t B_t A_t)^T, x (...)^T]``
over the tasks so far. Before task t trains, one pass over its training data gives each block the
uncentred covariance ``C = sum x x^T`` of its attention inputs; ``C`` is projected away from the
subspace earlier tasks use (DualGPM's basis ``M``: ``C - M M^T C``, or with the complement basis
``F`` kept instead: ``F F^T C``), and ``A_t`` (the same for key and value) is its top ``rank`` left
singular vectors over sqrt(3). ``A_t`` stays frozen and ``B_t`` (zero at the start) trains, so
the update lies in the new subspace. After the task a second pass updates ``M`` (DualGPM, with an
energy threshold rising from ``threshold`` towards ``threshold_end``).

All per-task state (A, B, the basis and its kind) is in the state dict, so checkpoints resume.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from aepg.models.peft import InfLoraMethod
from aepg.models.contract import TaskData
from aepg.models.peft.base import MethodModule, add_to_qkv, blocks_of


def energy_rank(singular: Tensor, total: float, start: float, threshold: float) -> int:
    """How many leading singular directions bring the captured energy (starting at ``start``,
    a fraction of ``total``) to ``threshold``: DualGPM's criterion."""
    captured, count = start, 0
    for energy in (singular ** 2 / total).tolist():
        if captured >= threshold:
            break
        captured += energy
        count += 1
    return count


def update_basis(basis: Tensor, retain: bool, activation: Tensor, threshold: float, first: bool) -> tuple[Tensor, bool]:
    """DualGPM's update of one block's basis (d x k) with a task's covariance ``activation`` (d x d).

    ``retain`` False: the basis spans the space earlier tasks use (``M``); True: its orthogonal
    complement (``F``), kept instead when ``M`` would take more than half the dimensions."""
    dim = activation.shape[0]
    total = float((torch.linalg.svdvals(activation) ** 2).sum())
    if first:
        U, S, _ = torch.linalg.svd(activation, full_matrices=False)
        count = max(int((torch.cumsum(S ** 2 / total, 0) < threshold).sum()), 1)
        basis, retain = U[:, :count], False
    elif not retain:
        projected = activation - basis @ (basis.T @ activation)
        U, S, _ = torch.linalg.svd(projected, full_matrices=False)
        count = energy_rank(S, total, (total - float((S ** 2).sum())) / total, threshold)
        if count:
            basis = torch.cat([basis, U[:, :count]], dim=1)[:, :dim]
    else:
        projected = basis @ (basis.T @ activation)
        U, S, _ = torch.linalg.svd(projected, full_matrices=False)
        # Remove directions from the free space while what it holds is at least 1 - threshold.
        captured, count = float((S ** 2).sum()) / total, 0
        for energy in (S ** 2 / total).tolist():
            if captured < 1 - threshold:
                break
            captured -= energy
            count += 1
        if count:
            free = basis - U[:, :count] @ (U[:, :count].T @ basis)
            basis = torch.linalg.svd(free)[0][:, : basis.shape[1] - count]
    if not retain and basis.shape[1] > dim / 2:  # keep the smaller of M and its complement
        basis, retain = torch.linalg.svd(basis)[0][:, basis.shape[1]:], True
    return basis, retain


def project_away(covariance: Tensor, basis: Tensor, retain: bool) -> Tensor:
    """The covariance with the earlier tasks' subspace removed."""
    if retain:
        return basis @ (basis.T @ covariance)
    return covariance - basis @ (basis.T @ covariance)


class InfLoRA(MethodModule):
    def __init__(self, backbone: nn.Module, blocks: list[int], rank: int, num_tasks: int,
                 threshold: float, threshold_end: float):
        super().__init__()
        dim, self.rank, self.num_tasks = backbone.embed_dim, rank, num_tasks
        self.threshold, self.threshold_end = threshold, threshold_end
        # Per task: A (blocks, 2 for key and value, rank, dim) built from data, B trained.
        self.register_buffer("A", torch.zeros(num_tasks, len(blocks), 2, rank, dim))
        self.B = nn.ParameterList(nn.Parameter(torch.zeros(len(blocks), 2, dim, rank)) for _ in range(num_tasks))
        # DualGPM: per block a basis padded to d columns, its width, and whether it spans the complement.
        self.register_buffer("basis", torch.zeros(len(blocks), dim, dim))
        self.register_buffer("basis_width", torch.zeros(len(blocks), dtype=torch.long))
        self.register_buffer("retain", torch.zeros(len(blocks), dtype=torch.bool))
        self.register_buffer("task", torch.zeros((), dtype=torch.long))
        self._covariance: list[Tensor] | None = None
        add_to_qkv(backbone, self, blocks, self._add_update)

    def _add_update(self, slot: int, x: Tensor, out: Tensor) -> Tensor:
        if self._covariance is not None:  # a pass over a task's data: its attention inputs
            flat = x.detach().float().reshape(-1, x.shape[-1])
            self._covariance[slot] += flat.T @ flat
        tasks = int(self.task) + 1
        A = self.A[:tasks, slot]  # (tasks, 2, rank, dim)
        B = torch.stack([self.B[t][slot] for t in range(tasks)])  # (tasks, 2, dim, rank)
        dim = x.shape[-1]
        update = []
        for part in range(2):  # key, value
            a = A[:, part].reshape(tasks * self.rank, dim)
            b = B[:, part].transpose(0, 1).reshape(dim, tasks * self.rank)
            update.append((x @ a.t().to(x.dtype)) @ b.t().to(x.dtype))
        update = torch.cat(update, dim=-1).to(out.dtype)
        return torch.cat([out[..., :dim], out[..., dim:] + update], dim=-1)

    def begin_task(self, task: int) -> None:
        self.task.fill_(task)

    def frozen_parameters(self) -> list[nn.Parameter]:
        return [b for t, b in enumerate(self.B) if t != int(self.task)]

    def _covariances(self, data: TaskData) -> list[Tensor]:
        """Each block's sum of x x^T over the task's training inputs, summed over the workers."""
        dim = self.A.shape[-1]
        self._covariance = [torch.zeros(dim, dim, device=self.A.device) for _ in range(self.A.shape[1])]
        try:
            for _ in data.features():
                pass
            return [data.sum(c).double().cpu() for c in self._covariance]
        finally:
            self._covariance = None

    def _basis(self, slot: int) -> Tensor:
        """A float64 copy of the block's basis on the CPU (a copy also where the buffer is one already:
        ``end_task`` clears the buffer before writing the update back)."""
        return self.basis[slot, :, : int(self.basis_width[slot])].to("cpu", torch.float64, copy=True)

    @torch.no_grad()
    def prepare_task(self, task: int, data: TaskData) -> None:
        for slot, covariance in enumerate(self._covariances(data)):
            if task > 0:
                covariance = project_away(covariance, self._basis(slot), bool(self.retain[slot]))
            U = torch.linalg.svd(covariance, full_matrices=False)[0]
            rows = (U[:, : self.rank].T / math.sqrt(3)).to(self.A)
            self.A[task, slot, 0] = rows
            self.A[task, slot, 1] = rows

    @torch.no_grad()
    def end_task(self, task: int, data: TaskData) -> None:
        threshold = (self.threshold_end - self.threshold) * task / self.num_tasks + self.threshold
        for slot, covariance in enumerate(self._covariances(data)):
            basis, retain = update_basis(self._basis(slot), bool(self.retain[slot]), covariance, threshold,
                                         first=int(self.basis_width[slot]) == 0)
            self.basis[slot].zero_()
            self.basis[slot, :, : basis.shape[1]] = basis.to(self.basis)
            self.basis_width[slot] = basis.shape[1]
            self.retain[slot] = retain


def build_inflora(backbone: nn.Module, cfg: InfLoraMethod, num_tasks: int) -> InfLoRA:
    return InfLoRA(backbone, blocks_of(backbone, cfg), cfg.rank, num_tasks, cfg.threshold, cfg.threshold_end)

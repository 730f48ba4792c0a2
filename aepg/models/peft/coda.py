"""CODA-Prompt, as in the reference code (GT-RIPL/CODA-Prompt).

Per adapted block (0-4), a prompt is a weighted sum of ``pool_size`` components
(pool x length x d); component m's weight is cos(query * A_m, K_m), with the frozen [CLS]
feature as the query, a learned attention vector A_m and key K_m. The first half of the prompt
is a key prefix, the second a value prefix. Each task owns ``pool_size / num_tasks``
components: earlier tasks' components, keys and attention vectors are frozen (detached); each
task's slice, task 0's included, starts orthonormal to everything before it and of unit norm
(Gram-Schmidt on random vectors). The orthogonality penalty (weight 0.0 in the reference's
experiment scripts) is, per block, ``mean((X X^T - I)^2)`` over the raw rows of every
component, key and attention vector so far, summed over blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aepg.models.peft import CodaMethod
from aepg.models.peft.base import PrefixSource, blocks_of, install_prefixes


def orthonormal_rows(previous: Tensor, count: int, generator: torch.Generator | None = None) -> Tensor:
    """``count`` random unit rows orthogonal to each other and to every row of ``previous``
    (Gram-Schmidt, done as a QR decomposition)."""
    fresh = torch.randn(count, previous.shape[1], generator=generator, device="cpu").to(previous)
    q, r = torch.linalg.qr(torch.cat([previous, fresh]).t())
    rows = q[:, len(previous):].t()
    # QR fixes each column's sign by R's diagonal; undo it so rows follow the random draws.
    return rows * torch.sign(torch.diagonal(r)[len(previous):]).unsqueeze(1)


def orthogonality_penalty(rows: Tensor) -> Tensor:
    """The reference's ``ortho_penalty``: mean((X X^T - I)^2) over raw (unnormalised) rows."""
    gram = rows @ rows.t()
    return ((gram - torch.eye(len(rows), device=rows.device, dtype=rows.dtype)) ** 2).mean()


class CodaPrompt(PrefixSource):
    needs_query = True

    def __init__(self, backbone: nn.Module, blocks: list[int], pool_size: int, length: int, num_tasks: int,
                 ortho_weight: float):
        super().__init__()
        dim = backbone.embed_dim
        self.slots = {b: i for i, b in enumerate(blocks)}
        self.per_task = pool_size // num_tasks
        self.components = nn.Parameter(torch.zeros(len(blocks), pool_size, length, dim))
        self.keys = nn.Parameter(torch.zeros(len(blocks), pool_size, dim))
        self.attention = nn.Parameter(torch.zeros(len(blocks), pool_size, dim))
        self.ortho_weight = ortho_weight
        self.register_buffer("task", torch.zeros((), dtype=torch.long))
        # Draws for new slices come from (seed, task), so every DDP rank and a resumed run agree.
        self.register_buffer("seed", torch.randint(0, 2**31 - 1, ()))
        self._weights: Tensor | None = None
        self._init_slice(0)
        install_prefixes(backbone, self, blocks)

    def _slice(self, task: int | None = None) -> tuple[int, int]:
        task = int(self.task) if task is None else task
        return task * self.per_task, (task + 1) * self.per_task

    @torch.no_grad()
    def _init_slice(self, task: int) -> None:
        start, stop = self._slice(task)
        generator = None if self.seed.is_meta else torch.Generator().manual_seed(int(self.seed) * 1000 + task)
        for tensor in (self.components, self.keys, self.attention):
            for rows in tensor.flatten(2):  # (pool, features) of one block, a view
                rows[start:stop] = orthonormal_rows(rows[:start], stop - start, generator)

    @torch.no_grad()
    def begin_task(self, task: int) -> None:
        if task == int(self.task):  # the first task, or a task resumed part-way: keep its slice
            return
        self.task.fill_(task)
        self._init_slice(task)

    def _active(self, tensor: Tensor) -> Tensor:
        """The components so far: earlier tasks' detached, the current task's trainable."""
        start, stop = self._slice()
        return torch.cat([tensor[:, :start].detach(), tensor[:, start:stop]], dim=1)

    def set_query(self, query: Tensor | None) -> None:
        super().set_query(query)
        if query is None:
            self._weights = None
            return
        keys, attention = self._active(self.keys), self._active(self.attention)
        # alpha[l][b, m] = cos(q * A_m, K_m)
        scaled = query[None, :, None, :] * attention[:, None]  # (L, B, M, D)
        self._weights = F.cosine_similarity(scaled, keys[:, None], dim=-1)  # (L, B, M)
        if self.training and self.ortho_weight:
            self._aux = self.ortho_weight * sum(
                orthogonality_penalty(rows)
                for tensor in (self.components, self.keys, self.attention)
                for rows in self._active(tensor).flatten(2))

    def prefix(self, block: int, batch: int):
        if self._weights is None:
            return None
        slot = self.slots[block]
        components = self._active(self.components)[slot]  # (M, length, dim)
        prompt = torch.einsum("bm,mld->bld", self._weights[slot], components)
        half = prompt.shape[1] // 2
        return prompt[:, :half], prompt[:, half:]


def build_coda(backbone: nn.Module, cfg: CodaMethod, num_tasks: int) -> CodaPrompt:
    return CodaPrompt(backbone, blocks_of(backbone, cfg), cfg.pool_size, cfg.length, num_tasks, cfg.ortho_weight)

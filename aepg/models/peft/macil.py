"""MACIL's learner (Wu et al., ICML 2025), as ``fwu11/MACIL`` does it with its default ``lora_type``
``elora`` (``models/attention.py`` ``Attention_LoRA``).

Each task t adds, in every adapted block, a key and a value LoRA pair (A Kaiming-uniform, B zero) on
the rows of the fused ``attn.qkv``; the key and value rows get ``x (sum_{i<=t} B_i A_i)^T``. While task
t trains, its pair trains whole and earlier pairs are frozen. MACIL's other pieces are parts: its
semantic drift calibration (``drift``) and the classifier alignment (``align``); its head is cosine.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aepg.models.peft import MacilMethod
from aepg.models.peft.base import MethodModule, add_to_qkv, blocks_of, task_lora_pairs

PARTS = 2  # key, value


class TaskKeyValueLoRA(MethodModule):
    def __init__(self, backbone: nn.Module, blocks: list[int], rank: int, num_tasks: int):
        super().__init__()
        self.A, self.B = task_lora_pairs(num_tasks, len(blocks), PARTS, rank, backbone.embed_dim)
        self.register_buffer("task", torch.zeros((), dtype=torch.long))
        add_to_qkv(backbone, self, blocks, self._add_update)

    def _add_update(self, slot: int, x: Tensor, out: Tensor) -> Tensor:
        tasks = range(int(self.task) + 1)
        key, value = (sum((x @ self.A[t][slot, part].t().to(x.dtype)) @ self.B[t][slot, part].t().to(x.dtype)
                          for t in tasks) for part in range(PARTS))
        dim = x.shape[-1]
        return torch.cat([out[..., :dim], out[..., dim:2 * dim] + key.to(out.dtype),
                          out[..., 2 * dim:] + value.to(out.dtype)], dim=-1)

    def begin_task(self, task: int) -> None:
        self.task.fill_(task)

    def frozen_parameters(self) -> list[nn.Parameter]:
        current = int(self.task)
        return [p for t in range(len(self.A)) if t != current for p in (self.A[t], self.B[t])]


def build_macil(backbone: nn.Module, cfg: MacilMethod, num_tasks: int) -> TaskKeyValueLoRA:
    return TaskKeyValueLoRA(backbone, blocks_of(backbone, cfg), cfg.rank, num_tasks)

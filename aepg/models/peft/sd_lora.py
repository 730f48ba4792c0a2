"""SD-LoRA (Wu et al., ICLR 2025), as ``RL-VIG/LibContinual`` (``core/model/sd_lora.py``) and the
authors' ``SD-Lora-CL`` code do it.

Each task t adds, in every adapted block, a query and a value LoRA pair (A Kaiming-uniform, B
zero) on the rows of the fused ``attn.qkv``. While task t trains, the query and value rows get

    m_t B_t A_t x  +  sum_{i<t} m_i B_i A_i x / (|B_i| |A_i|)

(Frobenius norms): the current pair trains whole, earlier pairs are frozen directions and only
their magnitudes m_i train. The magnitudes are shared by all blocks, and every one of them
restarts at ``init_magnitude`` when a task starts, as both references rebuild them per task.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aepg.models.peft import SdLoraMethod
from aepg.models.contract import TaskData
from aepg.models.peft.base import MethodModule, add_to_qkv, blocks_of, task_lora_pairs

PARTS = 2  # query, value


class SDLoRA(MethodModule):
    def __init__(self, backbone: nn.Module, blocks: list[int], rank: int, num_tasks: int, init_magnitude: float):
        super().__init__()
        dim = backbone.embed_dim
        self.A, self.B = task_lora_pairs(num_tasks, len(blocks), PARTS, rank, dim)
        self.magnitude = nn.Parameter(torch.full((num_tasks,), float(init_magnitude)))
        self.init_magnitude = init_magnitude
        self.register_buffer("task", torch.zeros((), dtype=torch.long))
        add_to_qkv(backbone, self, blocks, self._add_update)

    def _add_update(self, slot: int, x: Tensor, out: Tensor) -> Tensor:
        query, value = self._updates(slot, x)
        dim = x.shape[-1]
        return torch.cat([out[..., :dim] + query.to(out.dtype), out[..., dim:2 * dim],
                          out[..., 2 * dim:] + value.to(out.dtype)], dim=-1)

    def _updates(self, slot: int, x: Tensor) -> list[Tensor]:
        """The query and the value update of block ``slot``."""
        current = int(self.task)
        updates = []
        for part in range(PARTS):
            terms = []
            for t in range(current + 1):
                A, B = self.A[t][slot, part], self.B[t][slot, part]
                scale = self.magnitude[t]
                if t < current:  # an earlier task's direction (a zero pair stays zero)
                    scale = scale / (B.norm() * A.norm()).clamp_min(1e-12)
                terms.append(scale * ((x @ A.t().to(x.dtype)) @ B.t().to(x.dtype)))
            updates.append(sum(terms))
        return updates

    def begin_task(self, task: int) -> None:
        self.task.fill_(task)

    @torch.no_grad()
    def prepare_task(self, task: int, data: TaskData) -> None:
        self.magnitude.fill_(self.init_magnitude)

    def frozen_parameters(self) -> list[nn.Parameter]:
        current = int(self.task)
        return [p for t in range(len(self.A)) if t != current for p in (self.A[t], self.B[t])]


def build_sd_lora(backbone: nn.Module, cfg: SdLoraMethod, num_tasks: int) -> SDLoRA:
    return SDLoRA(backbone, blocks_of(backbone, cfg), cfg.rank, num_tasks, cfg.init_magnitude)

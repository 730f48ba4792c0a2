"""DualPrompt, as in the reference code (JH-LEE-KR/dualprompt-pytorch), with prefix tuning.

A G(eneral)-prompt shared by all tasks in blocks 0-1 (length 5) and one E(xpert)-prompt per
task in blocks 2-4 (length 20 on ImageNet-R, 5 on CIFAR-100 in the reference configs), each a
key prefix and a value prefix, prepended to the keys and values; prompts and keys are
initialised U(-1, 1). Training uses the current task's expert (the reference's prompt mask) and
adds the pull constraint ``-pull_weight * cos(query, key_t)`` averaged over the batch; at test
each input takes the expert whose key best matches its query (the frozen [CLS] feature). When
a task starts, its expert is initialised as a copy of the previous task's (the reference's
``shared_prompt_pool``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aepg.models.peft import DualPromptMethod, dualprompt_blocks
from aepg.models.peft.base import (
    PrefixSource,
    batchwise,
    blocks_of,
    cosine_to_keys,
    install_prefixes,
    uniform_parameter,
)


class DualPrompt(PrefixSource):
    needs_query = True
    sparse = True

    def __init__(self, backbone: nn.Module, g_blocks: list[int], e_blocks: list[int], g_length: int,
                 e_length: int, num_tasks: int, pull_weight: float, batchwise_prompt: bool = False):
        super().__init__()
        dim = backbone.embed_dim
        self.g_slots = {b: i for i, b in enumerate(g_blocks)}
        self.e_slots = {b: i for i, b in enumerate(e_blocks)}
        self.general = uniform_parameter(len(g_blocks), 2, g_length, dim)
        self.experts = uniform_parameter(num_tasks, len(e_blocks), 2, e_length, dim)
        self.keys = uniform_parameter(num_tasks, dim)
        self.pull_weight, self.batchwise_prompt = pull_weight, batchwise_prompt
        self.register_buffer("task", torch.zeros((), dtype=torch.long))
        self.expert: Tensor | None = None
        """The expert each sample of the current query uses (its task at training; chosen by key at test)."""
        install_prefixes(backbone, self, sorted(set(g_blocks) | set(e_blocks)))

    @torch.no_grad()
    def begin_task(self, task: int) -> None:
        if task == int(self.task):  # the first task, or a task resumed part-way
            return
        self.experts[task].copy_(self.experts[task - 1])
        self.task.fill_(task)

    def set_query(self, query: Tensor | None) -> None:
        super().set_query(query)
        if query is None:
            self.expert = None
            return
        task = int(self.task)
        if self.training:
            self.expert = torch.full((len(query),), task, device=query.device, dtype=torch.long)
            self._aux = -self.pull_weight * cosine_to_keys(query, self.keys[task : task + 1]).mean()
        else:  # the experts of the tasks seen so far compete
            self.expert = cosine_to_keys(query, self.keys[: task + 1]).argmax(dim=1)
            if self.batchwise_prompt:
                self.expert = batchwise(self.expert[:, None], 1)[:, 0]

    def prefix(self, block: int, batch: int):
        if block in self.g_slots:
            key, value = self.general[self.g_slots[block]]
            return key.expand(batch, -1, -1), value.expand(batch, -1, -1)
        if self.expert is None:
            return None
        chosen = self.experts[self.expert, self.e_slots[block]]  # (B, 2, length, dim)
        return chosen[:, 0], chosen[:, 1]


def build_dualprompt(backbone: nn.Module, cfg: DualPromptMethod, num_tasks: int) -> DualPrompt:
    g_blocks, e_blocks = dualprompt_blocks(blocks_of(backbone, cfg))
    return DualPrompt(backbone, g_blocks, e_blocks, cfg.g_length, cfg.length, num_tasks, cfg.pull_weight,
                      cfg.batchwise_prompt)

"""Learning to Prompt (L2P), as in the reference code (JH-LEE-KR/l2p-pytorch).

A pool of prompts (pool x length x d) with keys (pool x d), both initialised U(-1, 1). Each
input's query, the frozen backbone's [CLS] feature, picks the ``top_k`` prompts whose keys have
the highest cosine similarity; they are inserted after [CLS]. The classifier reads the mean of
the output tokens at the prompts' positions (the reference's ``head_type: prompt``). The
surrogate loss is the reference's pull constraint: ``-pull_weight * sum of the chosen keys'
cosine similarities / batch size``.

``batchwise_prompt`` is the reference's option of giving the whole batch the ``top_k`` prompts
chosen most often in it; it makes a sample's prediction depend on the rest of its batch, so it
is off by default here.
"""

from __future__ import annotations

from types import MethodType

import torch
from torch import Tensor, nn

from aepg.models.peft import L2PMethod
from aepg.models.peft.base import MethodModule, batchwise, cosine_to_keys, uniform_parameter


class L2P(MethodModule):
    needs_query = True
    sparse = True

    def __init__(self, backbone: nn.Module, pool_size: int, length: int, top_k: int, pull_weight: float,
                 batchwise_prompt: bool):
        super().__init__()
        dim = backbone.embed_dim
        self.prompts = uniform_parameter(pool_size, length, dim)
        self.keys = uniform_parameter(pool_size, dim)
        self.top_k, self.pull_weight, self.batchwise_prompt = top_k, pull_weight, batchwise_prompt
        self._prompt_tokens = 0
        backbone.norm_pre.register_forward_hook(self._insert)
        default_pool = backbone.pool

        def pool(vit, x, pool_type=None):
            tokens, self._prompt_tokens = self._prompt_tokens, 0
            return x[:, 1:1 + tokens].mean(dim=1) if tokens else default_pool(x, pool_type)

        backbone.pool = MethodType(pool, backbone)

    def _insert(self, module, inputs, x: Tensor) -> Tensor:
        if not self.enabled or self.query is None:
            return x
        similarity = cosine_to_keys(self.query, self.keys)
        chosen = similarity.topk(self.top_k, dim=1).indices  # (B, k)
        if self.batchwise_prompt:
            chosen = batchwise(chosen, self.top_k)
        prompts = self.prompts[chosen].flatten(1, 2).to(x.dtype)  # (B, k * length, dim)
        if self.training:
            self._aux = -self.pull_weight * similarity.gather(1, chosen).sum() / len(x)
        self._prompt_tokens = prompts.shape[1]
        return torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)


def build_l2p(backbone: nn.Module, cfg: L2PMethod, num_tasks: int) -> L2P:
    return L2P(backbone, cfg.pool_size, cfg.length, cfg.top_k, cfg.pull_weight, cfg.batchwise_prompt)

"""The adapter as in LAE: a bottleneck in parallel with each adapted block's *attention*.

It reads what the attention reads (``norm1(x)``) and its output is added to the attention's:
``attn(h) + s * up(gelu(down(h)))`` with ``down``: Linear(d, 5), Kaiming-uniform (a = sqrt(5)),
zero bias; ``up``: Linear(5, d), zero weight and bias; ``s`` a learnable scalar (init 1.0). The
output is zero at initialisation, so training starts at the backbone.
"""

from __future__ import annotations

import math
from types import MethodType

from torch import nn

from aepg.models.peft import AdapterMethod
from aepg.models.peft.base import MethodModule, Scale, blocks_of


class Bottleneck(nn.Sequential):
    """down -> activation -> [dropout] -> up, with ``up`` zero so the output starts at zero."""

    def __init__(self, dim: int, hidden: int, activation: nn.Module, dropout: float = 0.0):
        layers = [nn.Linear(dim, hidden), activation] + ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(hidden, dim)]
        super().__init__(*layers)
        down, up = self[0], self[-1]
        nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        nn.init.zeros_(down.bias)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)


class AttentionAdapter(MethodModule):
    def __init__(self, backbone: nn.Module, blocks: list[int], bottleneck: int):
        super().__init__()
        dim = backbone.embed_dim
        self.layers = nn.ModuleList(nn.Sequential(Bottleneck(dim, bottleneck, nn.GELU()), Scale()) for _ in blocks)
        for slot, index in enumerate(blocks):
            attn = backbone.blocks[index].attn
            attn.forward = MethodType(self._patched_forward(slot, attn.forward), attn)

    def _patched_forward(self, slot: int, original):
        adapter = self

        def forward(attn, x, *args, **kwargs):
            out = original(x, *args, **kwargs)
            return out + adapter.layers[slot](x).to(out.dtype) if adapter.enabled else out

        return forward


def build_adapter(backbone: nn.Module, cfg: AdapterMethod, num_tasks: int) -> AttentionAdapter:
    return AttentionAdapter(backbone, blocks_of(backbone, cfg), cfg.bottleneck)

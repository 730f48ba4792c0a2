"""AdaptFormer-style parallel adapter: each chosen block's MLP gets a scaled bottleneck beside it,
mlp(x) + s * up(relu(down(x))), with ``up`` initialised to zero so training starts at the backbone.
"""

from __future__ import annotations

from types import MethodType

from torch import nn

from aepg.models.peft.base import PeftModule, vit_blocks


class ParallelAdapter(PeftModule):
    def __init__(self, backbone: nn.Module, blocks: list[int], bottleneck: int, scale: float):
        super().__init__()
        dim = backbone.embed_dim
        self.blocks, self.scale = blocks, scale
        self.down = nn.ModuleList(nn.Linear(dim, bottleneck) for _ in blocks)
        self.up = nn.ModuleList(nn.Linear(bottleneck, dim) for _ in blocks)
        for down, up in zip(self.down, self.up):
            nn.init.kaiming_uniform_(down.weight, a=5**0.5)
            nn.init.zeros_(down.bias)
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        for slot, index in enumerate(blocks):
            mlp = backbone.blocks[index].mlp
            mlp.forward = MethodType(self._patched_forward(slot, mlp.forward), mlp)

    def _patched_forward(self, slot: int, original):
        adapter = self

        def forward(mlp, x):
            out = original(x)
            if adapter.enabled:
                out = out + adapter.scale * adapter.up[slot](adapter.down[slot](x).relu())
            return out

        return forward


def build_adapter(backbone: nn.Module, cfg) -> ParallelAdapter:
    return ParallelAdapter(backbone, vit_blocks(backbone, cfg.blocks, list(range(5))), cfg.bottleneck, cfg.adapter_scale)

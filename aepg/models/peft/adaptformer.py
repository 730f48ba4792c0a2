"""AdaptFormer: a scaled bottleneck in parallel with each adapted block's *MLP*.

As in the AdaptFormer reference, the adapter reads the residual stream before ``norm2`` (the
un-normalised input of the MLP branch) and adds ``s * up(dropout(relu(down(x))))`` to the MLP's
output, with a fixed scale ``s`` (0.1) and dropout 0.1; ``up`` starts at zero.
"""

from __future__ import annotations

from types import MethodType

from torch import Tensor, nn

from aepg.models.peft import AdaptFormerMethod
from aepg.models.peft.adapter import Bottleneck
from aepg.models.peft.base import MethodModule, blocks_of


class AdaptFormer(MethodModule):
    def __init__(self, backbone: nn.Module, blocks: list[int], bottleneck: int, scale: float, dropout: float):
        super().__init__()
        dim = backbone.embed_dim
        self.scale = scale
        self.layers = nn.ModuleList(Bottleneck(dim, bottleneck, nn.ReLU(), dropout) for _ in blocks)
        self._stream: dict[int, Tensor] = {}
        for slot, index in enumerate(blocks):
            block = backbone.blocks[index]
            block.norm2.register_forward_pre_hook(self._remember(slot))
            block.mlp.forward = MethodType(self._patched_forward(slot, block.mlp.forward), block.mlp)

    def up_projections(self) -> list[nn.Parameter]:
        """Each adapted block's up-projection weight (d x bottleneck): TUNA's orthogonality term reads them."""
        return [layer[-1].weight for layer in self.layers]

    def _remember(self, slot: int):
        def hook(norm, inputs):
            self._stream[slot] = inputs[0]

        return hook

    def _patched_forward(self, slot: int, original):
        adapter = self

        def forward(mlp, x):
            out = original(x)
            stream = adapter._stream.pop(slot)
            return out + adapter.scale * adapter.layers[slot](stream).to(out.dtype) if adapter.enabled else out

        return forward


def build_adaptformer(backbone: nn.Module, cfg: AdaptFormerMethod, num_tasks: int) -> AdaptFormer:
    blocks = blocks_of(backbone, cfg)
    return AdaptFormer(backbone, blocks, cfg.bottleneck, cfg.adapter_scale, cfg.adapter_dropout)

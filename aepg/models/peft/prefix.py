"""Prefix tuning as in LAE: learned key and value prefixes in each adapted block's attention.

Per block: a key prefix and a value prefix of ``length`` tokens (default 10), each initialised
U(0, 0.01) and multiplied by its own learnable scalar (init 1.0), inserted after the [CLS]
position (position 1) of the keys and values. Attention is *compensatory*: after the softmax
the prefix columns are divided by their sum, so the prefix's attention mass is 1 while the
other columns keep theirs (LAE's ``Prefix.compensate``).
"""

from __future__ import annotations

from torch import nn

from aepg.models.peft import PrefixMethod
from aepg.models.peft.base import (
    PrefixSource,
    Scale,
    blocks_of,
    install_prefixes,
    uniform_parameter,
)


class PrefixTuning(PrefixSource):
    position = 1
    compensatory = True

    def __init__(self, backbone: nn.Module, blocks: list[int], length: int):
        super().__init__()
        self.slots = {b: i for i, b in enumerate(blocks)}
        self.keys = nn.ParameterList(uniform_parameter(length, backbone.embed_dim, low=0.0, high=0.01) for _ in blocks)
        self.values = nn.ParameterList(uniform_parameter(length, backbone.embed_dim, low=0.0, high=0.01) for _ in blocks)
        self.key_scales = nn.ModuleList(Scale() for _ in blocks)
        self.value_scales = nn.ModuleList(Scale() for _ in blocks)
        install_prefixes(backbone, self, blocks)

    def prefix(self, block: int, batch: int):
        slot = self.slots[block]
        key = self.key_scales[slot](self.keys[slot])
        value = self.value_scales[slot](self.values[slot])
        return key.expand(batch, -1, -1), value.expand(batch, -1, -1)


def build_prefix(backbone: nn.Module, cfg: PrefixMethod, num_tasks: int) -> PrefixTuning:
    return PrefixTuning(backbone, blocks_of(backbone, cfg), cfg.length)

"""What every method module written here shares (``MethodModule``, a part of the method in the sense
of ``aepg.models.contract``), and where modules hook into a timm ViT: fused qkv updates, key/value
prefixes, prompt selection.

Modules live on the backbone as ``backbone.aepg_peft`` (the attribute keeps its first name, so
that checkpoints written before keep their keys) so they move, save and wrap (DDP) with it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from types import MethodType
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aepg.models.contract import MethodPart, TrainingBatch
from aepg.config.renames import old_names
from aepg.models.peft import BlocksMethod

__getattr__ = old_names(__name__)

ATTRIBUTE = "aepg_peft"


class MethodModule(MethodPart):
    """Parameters attached to a frozen backbone.

    ``needs_query``: the module selects or weights prompts by the frozen backbone's feature,
    computed by a first forward pass with the module disabled.
    ``sparse``: not every parameter gets a gradient at every step (DDP must be told).
    ``trains_backbone``: the backbone's own weights train (and are checkpointed);
    ``trains_batchnorm``: its BatchNorm layers stay in train mode while it trains.
    """

    needs_query = False
    sparse = False
    trains_backbone = False
    trains_batchnorm = False

    def __init__(self):
        super().__init__()
        self.enabled = True
        self.query: Tensor | None = None
        self._aux: Tensor | None = None

    def learning_rates(self, task: int, scale: float) -> dict[int, float]:
        """Rates, as multiples of ``train.lr``, of those of its parameters (by ``id``) that do not
        train at the method's ``scale`` (``model.method.lr_scale``) in task ``task``."""
        return {}

    def set_query(self, query: Tensor | None) -> None:
        self.query = query

    def auxiliary_loss(self, batch: TrainingBatch | None = None) -> Tensor | float:
        aux, self._aux = self._aux, None
        return aux if aux is not None else 0.0

    @contextmanager
    def disabled(self):
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True


class Scale(nn.Module):
    """A learnable scalar multiplier initialised to 1.0 (LAE's ``Scaler(None)``)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def task_lora_pairs(num_tasks: int, blocks: int, parts: int, rank: int, dim: int) -> tuple[nn.ParameterList, nn.ParameterList]:
    """Per task, per block and per part of ``attn.qkv``: LoRA's A (rank x dim, Kaiming-uniform as
    ``nn.Linear(dim, rank)``'s weight) and B (dim x rank, zero), so every task's update starts at 0."""
    A = nn.ParameterList(nn.Parameter(torch.empty(blocks, parts, rank, dim)) for _ in range(num_tasks))
    B = nn.ParameterList(nn.Parameter(torch.zeros(blocks, parts, dim, rank)) for _ in range(num_tasks))
    for a in A:
        for matrix in a.view(-1, rank, dim):
            nn.init.kaiming_uniform_(matrix, a=math.sqrt(5))
    return A, B


def blocks_of(backbone: nn.Module, cfg: BlocksMethod) -> list[int]:
    """The ViT blocks ``cfg`` adapts (``attach_method`` has checked them against the backbone)."""
    return cfg.chosen_blocks(len(backbone.blocks))


def compensate(attn: Tensor, start: int, stop: int) -> Tensor:
    """LAE's compensatory attention: the prefix columns [start, stop) are divided by their sum
    (clamped at 1e-12), so the prefix's attention mass is 1; the other columns stay as they are."""
    prefix = attn[..., start:stop]
    mass = prefix.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    return torch.cat([attn[..., :start], prefix / mass, attn[..., stop:]], dim=-1)


def prefixed_attention(attn: nn.Module, x: Tensor, prefix: tuple[Tensor, Tensor] | None,
                       position: int = 0, compensatory: bool = False) -> Tensor:
    """timm ``Attention.forward`` with learned key/value prefixes (B, P, dim) inserted at
    ``position`` of the key/value sequence; ``compensatory`` renormalises their attention (LAE)."""
    B, N, C = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    dropout = attn.attn_drop.p if attn.training else 0.0
    if prefix is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    else:
        pk, pv = (p.to(q.dtype).reshape(B, -1, attn.num_heads, attn.head_dim).transpose(1, 2) for p in prefix)
        k = torch.cat([k[:, :, :position], pk, k[:, :, position:]], dim=2)
        v = torch.cat([v[:, :, :position], pv, v[:, :, position:]], dim=2)
        if compensatory:
            weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            weights = compensate(F.dropout(weights, dropout), position, position + pk.shape[2])
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    out = attn.norm(out.transpose(1, 2).reshape(B, N, getattr(attn, "attn_dim", C)))
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def add_to_qkv(backbone: nn.Module, module: MethodModule, blocks: list[int],
               update: Callable[[int, Tensor, Tensor], Tensor]) -> None:
    """Route the fused ``attn.qkv`` of ``blocks`` through ``update(slot, x, qkv(x))`` while
    ``module`` is enabled (``slot``: the block's place in ``blocks``): the LoRA family's hook. The
    route is an attribute of the layer, not a closure, so a copy of the model (``copy.deepcopy``)
    routes through its own copy of the module."""
    for slot, index in enumerate(blocks):
        add_to_linear(backbone.blocks[index].attn.qkv, module, update, slot)


def add_to_linear(layer: nn.Linear, module: MethodModule, update: Callable[[int, Tensor, Tensor], Tensor],
                  slot: int) -> None:
    """Route ``layer`` through ``update(slot, x, layer(x))`` while ``module`` is enabled."""
    layer.aepg_route = (module, update, slot)
    layer.forward = MethodType(_routed_linear, layer)


def _routed_linear(self: nn.Module, x: Tensor) -> Tensor:
    module, update, slot = self.aepg_route
    out = type(self).forward(self, x)
    return update(slot, x, out) if module.enabled else out


class PrefixSource(MethodModule):
    """A module that hands each adapted block a (key, value) prefix, or None."""

    position = 0
    compensatory = False

    def prefix(self, block: int, batch: int) -> tuple[Tensor, Tensor] | None:
        raise NotImplementedError


def install_prefixes(backbone: nn.Module, module: PrefixSource, blocks: list[int]) -> None:
    """Route the attention of ``blocks`` through ``prefixed_attention`` with ``module``'s prefixes
    (an attribute of the layer, as ``add_to_qkv``'s route, so copies of the model stay apart)."""
    for index in blocks:
        attn = backbone.blocks[index].attn
        attn.aepg_route = (module, index)
        attn.forward = MethodType(_prefixed_forward, attn)


def _prefixed_forward(self: nn.Module, x: Tensor, attn_mask=None, is_causal=False) -> Tensor:
    if attn_mask is not None or is_causal:
        raise ValueError("prefix-based PEFT does not support attention masks")
    module, index = self.aepg_route
    prefix = module.prefix(index, x.shape[0]) if module.enabled else None
    return prefixed_attention(self, x, prefix, module.position, module.compensatory)


def uniform_parameter(*shape: int, low: float = -1.0, high: float = 1.0) -> nn.Parameter:
    """A parameter drawn from U(low, high): the prompt initialisation of L2P and DualPrompt."""
    return nn.Parameter(torch.empty(*shape).uniform_(low, high))


def batchwise(chosen: Tensor, top_k: int) -> Tensor:
    """The reference's batch-wise selection: the ``top_k`` prompt ids chosen most often in the batch,
    ties broken towards lower ids, given to every sample (L2P's and DualPrompt's ``batchwise_prompt``)."""
    ids, counts = torch.unique(chosen, return_counts=True, sorted=True)
    order = torch.argsort(counts, descending=True, stable=True)[:top_k]
    if len(order) < top_k:  # fewer distinct ids than top_k: pad with the smallest id, as the reference does
        order = torch.cat([order, order.new_zeros(top_k - len(order))])
    return ids[order].expand(len(chosen), -1)


def cosine_to_keys(query: Tensor, keys: Tensor) -> Tensor:
    """(B, M) cosine similarity between queries (B, D) and keys (M, D)."""
    return F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).t()


def attach(backbone: nn.Module, module: MethodModule) -> nn.Module:
    setattr(backbone, ATTRIBUTE, module)
    return backbone


def module_of(backbone: nn.Module) -> MethodModule | None:
    return getattr(backbone, ATTRIBUTE, None)

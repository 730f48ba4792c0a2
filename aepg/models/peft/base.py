"""What every PEFT module written here shares: where it hooks into a timm model, and the hooks
the classifier and trainer call (task start, query, auxiliary loss).

Modules live on the backbone as ``backbone.aepg_peft`` so they move, save and wrap (DDP) with it.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import MethodType

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PeftError(ValueError):
    """The PEFT settings do not fit the backbone."""


ATTRIBUTE = "aepg_peft"


class PeftModule(nn.Module):
    """Parameters attached to a frozen backbone.

    ``needs_query``: the module selects or weights prompts by the frozen backbone's [CLS]
    feature, computed by a first forward pass with the module disabled.
    ``sparse``: not every parameter gets a gradient at every step (DDP must be told).
    """

    needs_query = False
    sparse = False

    def __init__(self):
        super().__init__()
        self.enabled = True
        self.query: Tensor | None = None
        self._aux: Tensor | None = None

    def begin_task(self, task: int) -> None:
        """Called before training task ``task`` (and before evaluating after a resume)."""

    def set_query(self, query: Tensor | None) -> None:
        self.query = query

    def auxiliary_loss(self) -> Tensor | float:
        """A loss term the method adds to the objective (key matching, orthogonality), from the last forward."""
        aux, self._aux = self._aux, None
        return aux if aux is not None else 0.0

    @contextmanager
    def disabled(self):
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True


def vit_blocks(backbone: nn.Module, blocks: list[int] | None, default: list[int]) -> list[int]:
    """The block indices to adapt, checked against the ViT's depth."""
    if not hasattr(backbone, "blocks") or not hasattr(backbone, "cls_token"):
        raise PeftError(f"this PEFT kind needs a timm VisionTransformer, not {type(backbone).__name__}")
    depth = len(backbone.blocks)
    if blocks is None:  # the paper's blocks 0-4, as far as the ViT goes
        return [b for b in default if b < depth]
    chosen = sorted(set(blocks))
    if any(b >= depth for b in chosen):
        raise PeftError(f"model.peft.blocks {chosen} exceed the backbone's {depth} blocks")
    return chosen


def prefixed_attention(attn: nn.Module, x: Tensor, prefix: tuple[Tensor, Tensor] | None) -> Tensor:
    """timm ``Attention.forward`` with learned key/value prefixes (B, P, dim) prepended."""
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if prefix is not None:
        pk, pv = (p.to(x.dtype).reshape(B, -1, attn.num_heads, attn.head_dim).transpose(1, 2) for p in prefix)
        k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = attn.norm(out.transpose(1, 2).reshape(B, N, getattr(attn, "attn_dim", C)))
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


def install_prefixes(backbone: nn.Module, module: "PrefixSource", blocks: list[int]) -> None:
    """Route the attention of ``blocks`` through ``prefixed_attention`` with ``module``'s prefixes."""
    for index in blocks:
        attn = backbone.blocks[index].attn

        def forward(self, x, attn_mask=None, is_causal=False, _index=index):
            if attn_mask is not None or is_causal:
                raise PeftError("prefix-based PEFT does not support attention masks")
            prefix = module.prefix(_index, x.shape[0]) if module.enabled else None
            return prefixed_attention(self, x, prefix)

        attn.forward = MethodType(forward, attn)


class PrefixSource(PeftModule):
    def prefix(self, block: int, batch: int) -> tuple[Tensor, Tensor] | None:
        raise NotImplementedError


def cosine_to_keys(query: Tensor, keys: Tensor) -> Tensor:
    """(B, M) cosine similarity between queries (B, D) and keys (M, D)."""
    return F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).t()


def attach(backbone: nn.Module, module: PeftModule) -> nn.Module:
    setattr(backbone, ATTRIBUTE, module)
    return backbone


def module_of(backbone: nn.Module) -> PeftModule | None:
    return getattr(backbone, ATTRIBUTE, None)

"""Prompt-based PEFT for timm ViTs: prefix tuning, L2P, DualPrompt and CODA-Prompt.

Prefix methods prepend learned keys and values to the attention of chosen blocks
(``install_prefixes``); L2P prepends prompt tokens to the input sequence after [CLS]. L2P,
DualPrompt and CODA-Prompt choose or weight their prompts with the frozen backbone's [CLS]
feature (the query), computed by the classifier in a first pass with prompts disabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aepg.models.peft.base import PeftError, PrefixSource, PeftModule, cosine_to_keys, install_prefixes, vit_blocks


def _uniform(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-1.0, 1.0) * 0.02)


class PrefixTuning(PrefixSource):
    """One learned (key, value) prefix of ``length`` tokens per chosen block, shared by all inputs."""

    def __init__(self, backbone: nn.Module, blocks: list[int], length: int):
        super().__init__()
        self.slots = {b: i for i, b in enumerate(blocks)}
        self.prefixes = _uniform(len(blocks), 2, length, backbone.embed_dim)
        install_prefixes(backbone, self, blocks)

    def prefix(self, block: int, batch: int):
        key, value = self.prefixes[self.slots[block]]
        return key.expand(batch, -1, -1), value.expand(batch, -1, -1)


class L2P(PeftModule):
    """Learning to Prompt: a pool of prompts with keys; each input takes the ``top_k`` prompts whose
    keys best match its query, prepended after [CLS]; a surrogate loss pulls chosen keys to queries."""

    needs_query = True
    sparse = True

    def __init__(self, backbone: nn.Module, pool_size: int, length: int, top_k: int, pull_weight: float):
        super().__init__()
        if top_k > pool_size:
            raise PeftError(f"model.peft.top_k ({top_k}) exceeds model.peft.pool_size ({pool_size})")
        dim = backbone.embed_dim
        self.prompts = _uniform(pool_size, length, dim)
        self.keys = _uniform(pool_size, dim)
        self.top_k, self.pull_weight = top_k, pull_weight
        backbone.norm_pre.register_forward_hook(self._prepend)

    def _prepend(self, module, inputs, x: Tensor) -> Tensor:
        if not self.enabled or self.query is None:
            return x
        similarity = cosine_to_keys(self.query, self.keys)
        chosen = similarity.topk(self.top_k, dim=1).indices  # (B, k)
        prompts = self.prompts[chosen].flatten(1, 2).to(x.dtype)  # (B, k * length, dim)
        if self.training:
            self._aux = self.pull_weight * (1.0 - similarity.gather(1, chosen)).mean()
        return torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)


class DualPrompt(PrefixSource):
    """General prompts shared by all tasks in the first blocks, one expert prompt per task in the
    next; training uses the current task's expert and pulls its key to the query, testing picks the
    expert whose key best matches the query."""

    needs_query = True
    sparse = True

    def __init__(self, backbone: nn.Module, g_blocks: list[int], e_blocks: list[int], g_length: int,
                 e_length: int, num_tasks: int, pull_weight: float):
        super().__init__()
        dim = backbone.embed_dim
        self.g_slots = {b: i for i, b in enumerate(g_blocks)}
        self.e_slots = {b: i for i, b in enumerate(e_blocks)}
        self.general = _uniform(len(g_blocks), 2, g_length, dim)
        self.experts = _uniform(num_tasks, len(e_blocks), 2, e_length, dim)
        self.keys = _uniform(num_tasks, dim)
        self.pull_weight = pull_weight
        self.register_buffer("task", torch.zeros((), dtype=torch.long))
        self._expert: Tensor | None = None
        install_prefixes(backbone, self, sorted(set(g_blocks) | set(e_blocks)))

    def begin_task(self, task: int) -> None:
        self.task.fill_(task)

    def set_query(self, query: Tensor | None) -> None:
        super().set_query(query)
        if query is None:
            self._expert = None
            return
        similarity = cosine_to_keys(query, self.keys[: int(self.task) + 1])
        if self.training:
            self._expert = torch.full((len(query),), int(self.task), device=query.device, dtype=torch.long)
            self._aux = self.pull_weight * (1.0 - similarity[:, int(self.task)]).mean()
        else:
            self._expert = similarity.argmax(dim=1)

    def prefix(self, block: int, batch: int):
        if block in self.g_slots:
            key, value = self.general[self.g_slots[block]]
            return key.expand(batch, -1, -1), value.expand(batch, -1, -1)
        if self._expert is None:
            return None
        chosen = self.experts[self._expert, self.e_slots[block]]  # (B, 2, length, dim)
        return chosen[:, 0], chosen[:, 1]


class CodaPrompt(PrefixSource):
    """CODA-Prompt: per block, a prompt is a sum of components weighted by the cosine between the
    query (scaled by a learned attention vector) and each component's key. Each task owns a slice
    of the components; earlier slices are frozen (detached). Orthogonality is encouraged by a
    loss on the current slice and by initialising it orthogonal to the earlier ones."""

    needs_query = True

    def __init__(self, backbone: nn.Module, blocks: list[int], pool_size: int, length: int, num_tasks: int,
                 ortho_weight: float):
        super().__init__()
        if pool_size < num_tasks:
            raise PeftError(f"model.peft.pool_size ({pool_size}) must be at least the number of tasks ({num_tasks})")
        if length % 2:
            raise PeftError("model.peft.length must be even for CODA-Prompt (half keys, half values)")
        dim = backbone.embed_dim
        self.slots = {b: i for i, b in enumerate(blocks)}
        self.per_task = pool_size // num_tasks
        self.components = _uniform(len(blocks), pool_size, length, dim)
        self.keys = _uniform(len(blocks), pool_size, dim)
        self.attention = _uniform(len(blocks), pool_size, dim)
        self.ortho_weight = ortho_weight
        self.register_buffer("task", torch.zeros((), dtype=torch.long))
        self._weights: list[Tensor] | None = None
        install_prefixes(backbone, self, blocks)

    def _slice(self) -> tuple[int, int]:
        return int(self.task) * self.per_task, (int(self.task) + 1) * self.per_task

    @torch.no_grad()
    def begin_task(self, task: int) -> None:
        if task == int(self.task):  # the first task, or a task resumed part-way: keep its slice
            return
        self.task.fill_(task)
        start, stop = self._slice()
        for tensor in (self.components, self.keys, self.attention):
            for flat in tensor.flatten(2):  # (pool, features) of one block, a view
                if flat.shape[1] >= stop:  # orthogonal to the frozen components (Gram-Schmidt by QR)
                    q, _ = torch.linalg.qr(flat[:stop].t())
                    flat[start:stop] = q[:, start:stop].t() * flat[start:stop].norm(dim=1, keepdim=True).mean()

    def _active(self, tensor: Tensor) -> Tensor:
        start, stop = self._slice()
        return torch.cat([tensor[:, :start].detach(), tensor[:, start:stop]], dim=1)

    def set_query(self, query: Tensor | None) -> None:
        super().set_query(query)
        if query is None:
            self._weights = None
            return
        keys, attention = self._active(self.keys), self._active(self.attention)
        # alpha[l][b, m] = cos(q * A_m, K_m)
        scaled = query[None, :, None, :] * attention[:, None]  # (L, B, M, D)
        self._weights = F.cosine_similarity(scaled, keys[:, None], dim=-1)  # (L, B, M)
        if self.training and self.ortho_weight:
            start, stop = self._slice()
            self._aux = self.ortho_weight * sum(_orthogonality(t[:, start:stop]) for t in (self.components, self.keys, self.attention))

    def prefix(self, block: int, batch: int):
        if self._weights is None:
            return None
        slot = self.slots[block]
        components = self._active(self.components)[slot]  # (M, length, dim)
        prompt = torch.einsum("bm,mld->bld", self._weights[slot], components)
        half = prompt.shape[1] // 2
        return prompt[:, :half], prompt[:, half:]


def _orthogonality(tensor: Tensor) -> Tensor:
    """||X X^T - I||^2 over the rows of each slot's flattened components."""
    flat = F.normalize(tensor.flatten(2), dim=-1)
    gram = flat @ flat.transpose(1, 2)
    eye = torch.eye(gram.shape[-1], device=gram.device)
    return ((gram - eye) ** 2).mean()


def build_prefix(backbone, cfg, num_tasks):
    return PrefixTuning(backbone, vit_blocks(backbone, cfg.blocks, list(range(5))), cfg.length or 10)


def build_l2p(backbone, cfg, num_tasks):
    vit_blocks(backbone, None, [0])
    return L2P(backbone, cfg.pool_size or 10, cfg.length or 5, cfg.top_k, cfg.pull_weight)


def build_dualprompt(backbone, cfg, num_tasks):
    blocks = vit_blocks(backbone, cfg.blocks, list(range(5)))
    g_blocks = [b for b in blocks if b < 2] or blocks[:1]
    e_blocks = [b for b in blocks if b not in g_blocks]
    if not e_blocks:
        raise PeftError("DualPrompt needs blocks for expert prompts beyond the general ones (default 0-4)")
    return DualPrompt(backbone, g_blocks, e_blocks, cfg.g_length, cfg.length or 20, num_tasks, cfg.pull_weight)


def build_coda(backbone, cfg, num_tasks):
    blocks = vit_blocks(backbone, cfg.blocks, list(range(5)))
    return CodaPrompt(backbone, blocks, cfg.pool_size or 100, cfg.length or 8, num_tasks, cfg.ortho_weight)

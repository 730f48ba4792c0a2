"""What every PEFT module written here shares: where it hooks into a timm ViT, and the life cycle
the classifier and trainer call, none of them knowing a method by name (``MethodPart``, also the
base of the parts in ``aepg.models.parts``): the start of a task (and, at a task's very start, its
context: the model, the objective and the training data), whether it trains, the parameters it
keeps frozen, a loss term with the step's batch, a gradient transform before each optimiser step,
the step's end, the end of a task with its context, and the prediction rule at test time.

Modules live on the backbone as ``backbone.aepg_peft`` so they move, save and wrap (DDP) with it.

Precision: mixed precision (``train.precision``) covers the training and evaluation forwards only.
Every hook runs with autocast off: ``TaskData.features()`` are float32 (or the dtype asked for),
computed with autocast off, so covariances, Gram matrices, ridge solves, prototypes and bases are
never built from bf16 or fp16 activations; ``predict`` gets float32 logits and features, with
autocast off. A method that computes its statistics from its own forward passes does them inside
these hooks, where the rule already holds.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from types import MethodType
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aepg.models.peft import BlocksMethod

if TYPE_CHECKING:
    from aepg.models.classifier import ContinualClassifier

ATTRIBUTE = "aepg_peft"


class TaskData(Protocol):
    """The context of a task's hooks (``prepare_task``, ``end_task``): the model, the objective and
    the task's training images as unaugmented model inputs on the device."""

    start: int
    """The task's first class (its labels are ``start`` to ``stop - 1``)."""
    stop: int
    model: "ContinualClassifier"
    """The classifier (not a DDP wrapper): ``backbone``, ``head``, ``head_logits(x, columns)`` (a
    forward with gradients and without prediction rules), ``trainable_parameters()``."""
    columns: slice
    """The head's columns the objective covers while this task trains."""

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The run's objective on ``logits`` over ``columns`` for ``labels`` (dataset labels), as it
        stands at the task's last step (a_t at its end for annealed objectives)."""

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(inputs, labels) batches over the task's training images; every worker sees its shard."""

    def features(self, dtype: torch.dtype = torch.float32) -> Iterator[tuple[Tensor, Tensor]]:
        """(backbone features, labels) of the same batches, computed in eval mode without
        gradients by the backbone with its module as it is now (its hooks see every input), with
        autocast off whatever ``train.precision`` says; the features as ``dtype`` (float64 where a
        method's reference computes in it)."""

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the workers (each saw its shard); itself with one worker."""


@dataclass
class TrainingBatch:
    """One training step's batch as ``auxiliary_loss`` sees it, after the forward."""

    inputs: Tensor
    """The model inputs (augmented)."""
    labels: Tensor
    """Labels relative to ``columns.start``."""
    logits: Tensor
    """The forward's logits over ``columns`` (float32, with gradients)."""
    features: Tensor
    """The backbone's features of that forward (with gradients): ``model.head(features)`` gives the
    logits of any other columns at no extra forward."""
    columns: slice
    task_start: int
    """The first class of the task being trained: classes before it are the earlier tasks'."""
    model: "ContinualClassifier"
    """The classifier (not a DDP wrapper), e.g. for a forward with other parameters
    (``torch.func.functional_call(model, tensors, (inputs, columns), {"rules": False})``)."""


def full_precision(device: torch.device):
    """Autocast off on ``device`` (and so in every hook a forward inside it reaches): for statistics
    that bf16 or fp16 would move."""
    return torch.autocast(device.type, enabled=False)


class MethodPart(nn.Module):
    """One participant in a method's life cycle (a PEFT module, or LAE's online/offline pair over
    one); the classifier calls each part's hooks in turn and knows none of them by name.

    ``predicts_from_exact_features``: its prediction rule is a closed-form head on the features
    (RanPAC's), so the test-time forward that feeds it runs in float32 with autocast off."""

    predicts_from_exact_features = False

    def set_num_classes(self, num_classes: int) -> None:
        """Called once, when the classifier is built, with its head's size (for methods with their
        own prediction rule, such as a closed-form head)."""

    def begin_task(self, task: int) -> None:
        """Called before training task ``task`` (and again when a run resumes inside it)."""

    def trains(self, task: int) -> bool:
        """Whether task ``task`` is trained at all (RanPAC trains the first task only); if not, the
        trainer goes from ``prepare_task`` straight to ``end_task``."""
        return True

    def prepare_task(self, task: int, data: "TaskData") -> None:
        """Called once before task ``task``'s first epoch, after ``begin_task``, with its training
        data (e.g. to build the task's parameters from it); not when a run resumes inside it."""

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The part's parameters that must not train in the current task (earlier tasks' parts)."""
        return []

    def auxiliary_loss(self, batch: TrainingBatch | None = None) -> Tensor | float:
        """A loss term the part adds to the objective at a training step: from its last forward (key
        matching, orthogonality) or from the step's ``batch`` (a penalty, a distillation)."""
        return 0.0

    def transform_gradients(self) -> None:
        """Called after backward, before each optimiser step (e.g. to project gradients)."""

    def after_step(self) -> None:
        """Called after each optimiser step."""

    def end_task(self, task: int, data: "TaskData") -> None:
        """Called once a task's training is done, before its evaluation, with its training data
        (e.g. to update a subspace or class prototypes)."""

    def predict(self, logits: Tensor, features: Tensor, columns: slice, again: Callable[[], Tensor]) -> Tensor:
        """The logits a prediction at test time uses over the head's ``columns``: from ``logits``
        (those columns, as the parts before this one left them) and the backbone's ``features``,
        both float32, with autocast off; ``again()`` recomputes ``logits`` from the same input, for
        rules that ensemble passes (LAE), in float32 too. Default: ``logits``."""
        return logits


class ActivatedPart(MethodPart):
    """A part that acts from some task on (LAE's pair, EWC, LwF): an ``active`` flag checkpointed
    with its state, and a host copy of it, so that no step waits on the device to read it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))
        self.is_active = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.is_active = bool(self.active)

    def activate(self) -> None:
        self.active.fill_(True)
        self.is_active = True


class PeftModule(MethodPart):
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


def blocks_of(backbone: nn.Module, cfg: BlocksMethod) -> list[int]:
    """The ViT blocks ``cfg`` adapts (``attach_peft`` has checked them against the backbone)."""
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


def add_to_qkv(backbone: nn.Module, module: PeftModule, blocks: list[int],
               update: Callable[[int, Tensor, Tensor], Tensor]) -> None:
    """Route the fused ``attn.qkv`` of ``blocks`` through ``update(slot, x, qkv(x))`` while
    ``module`` is enabled (``slot``: the block's place in ``blocks``): the LoRA family's hook."""
    for slot, index in enumerate(blocks):
        qkv = backbone.blocks[index].attn.qkv

        def forward(self, x, _slot=slot, _original=qkv.forward):
            out = _original(x)
            return update(_slot, x, out) if module.enabled else out

        qkv.forward = MethodType(forward, qkv)


class PrefixSource(PeftModule):
    """A module that hands each adapted block a (key, value) prefix, or None."""

    position = 0
    compensatory = False

    def prefix(self, block: int, batch: int) -> tuple[Tensor, Tensor] | None:
        raise NotImplementedError


def install_prefixes(backbone: nn.Module, module: PrefixSource, blocks: list[int]) -> None:
    """Route the attention of ``blocks`` through ``prefixed_attention`` with ``module``'s prefixes."""
    for index in blocks:
        attn = backbone.blocks[index].attn

        def forward(self, x, attn_mask=None, is_causal=False, _index=index):
            if attn_mask is not None or is_causal:
                raise ValueError("prefix-based PEFT does not support attention masks")
            prefix = module.prefix(_index, x.shape[0]) if module.enabled else None
            return prefixed_attention(self, x, prefix, module.position, module.compensatory)

        attn.forward = MethodType(forward, attn)


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


def attach(backbone: nn.Module, module: PeftModule) -> nn.Module:
    setattr(backbone, ATTRIBUTE, module)
    return backbone


def module_of(backbone: nn.Module) -> PeftModule | None:
    return getattr(backbone, ATTRIBUTE, None)

"""The continual classifier: frozen timm backbone + PEFT module + one head over all classes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.data import resolve_data_config
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from aepg.catalog import PARTS
from aepg.config import ModelConfig
from aepg.models.backbones import create_backbone
from aepg.models.peft.attach import attach_method
from aepg.models.contract import MethodPart, TrainingBatch, full_precision
from aepg.models.heads import build_head
from aepg.models.peft.base import module_of


@dataclass(frozen=True)
class InputSpec:
    """What the backbone expects: square image size and normalisation."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class ContinualClassifier(nn.Module):
    """Logits over the requested columns (classes) of one head that covers the whole benchmark.

    Only the PEFT parameters and the head train. The backbone's own weights and normalisation
    statistics never change (``train()`` keeps batch-norm layers in eval mode) unless the method
    trains the backbone (full fine-tuning). Prompt methods get their query (the frozen backbone's
    feature) from a first pass with prompts disabled. The method's parts (its PEFT module, then the
    parts of ``model.method.parts`` in order, such as LAE's online/offline pair, EWC, LwF) take each
    life-cycle hook in turn, and each may rewrite the prediction at test time.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head_init_std: float, frozen_keys: set[str],
                 head: str = "linear", head_scale: float = 20.0):
        super().__init__()
        self.backbone = backbone
        self.head = build_head(head, backbone.num_features, num_classes, head_init_std, head_scale)
        self.method_module = module_of(backbone)
        if self.method_module is not None:
            self.method_module.set_num_classes(num_classes)
        # The method says what trains: what it added, or backbone weights it unfroze.
        self.method_names = [f"backbone.{n}" for n, p in backbone.named_parameters() if p.requires_grad]
        # Everything PEFT added (parameters and buffers such as task counters) and everything that
        # trains; HF peft moves the frozen weights it wraps to "base_layer", which stay frozen.
        trained = {n.removeprefix("backbone.") for n in self.method_names}
        whole = self.method_module is not None and self.method_module.trains_backbone
        self.method_state_names = [f"backbone.{k}" for k in backbone.state_dict()
                                 if (k not in frozen_keys and ".base_layer." not in k) or k in trained or whole]
        self.parts: list[MethodPart] = [self.method_module] if self.method_module is not None else []
        self.added_parts: list[str] = []
        """Names of the parts added over the PEFT module (their state is checkpointed under them)."""
        self.method_frozen = False
        self.last_features: Tensor | None = None
        self.sparse_updates = bool(self.method_module is not None and self.method_module.sparse)

    def add_part(self, name: str, part: MethodPart) -> None:
        """Add a part over the PEFT module; its hooks run after the parts before it."""
        part.set_num_classes(self.head.out_features)
        self.add_module(name, part)
        self.parts.append(part)
        self.added_parts.append(name)

    def features(self, x: Tensor) -> Tensor:
        """The backbone's features of ``x`` (with the query pass that prompt methods need)."""
        if self.method_module is not None and self.method_module.needs_query:
            with torch.no_grad(), self.method_module.disabled():
                query = self.backbone(x)
            self.method_module.set_query(query)
        return self.backbone(x)

    def _logits(self, x: Tensor, columns: slice, parts: list[MethodPart]) -> Tensor:
        """The head's logits over ``columns``; at test time, as each of ``parts`` predicts in turn."""
        if not self.training and any(part.predicts_from_exact_features for part in parts):
            with full_precision(x.device):
                features = self.features(x)
        elif self.method_frozen:  # head-only phases: no autograd graph through the backbone
            with torch.no_grad():
                features = self.features(x)
        else:
            features = self.features(x)
        if self.training:  # the step's features, for the parts' loss terms (``TrainingBatch``)
            self.last_features = features
        logits = self.head(features)[:, columns]
        if not self.training and parts:  # prediction rules: closed-form heads, ensembles, in float32
            with full_precision(x.device):
                logits, features = logits.float(), features.float()
                for i, part in enumerate(parts):
                    logits = part.predict(logits, features, columns,
                                          lambda before=parts[:i]: self._logits(x, columns, before).float())
        return logits

    def forward(self, x: Tensor, columns: slice = slice(None), rules: bool = True) -> Tensor:
        """Logits over ``columns``; at test time as the parts' prediction rules make them, unless
        ``rules`` is False (the head's own logits, as parts read them: a Fisher pass, the
        previous model's outputs)."""
        return self._logits(x, columns, self.parts if rules else [])

    def head_logits(self, x: Tensor, columns: slice = slice(None)) -> Tensor:
        """``forward`` without the parts' prediction rules."""
        return self._logits(x, columns, [])

    def train(self, mode: bool = True) -> "ContinualClassifier":
        super().train(mode)
        if self.method_module is not None and self.method_module.trains_batchnorm and not self.method_frozen:
            return self
        for module in self.backbone.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
        return self

    # -- hooks the trainer calls ----------------------------------------------------------------
    def begin_task(self, task: int) -> None:
        for part in self.parts:
            part.begin_task(task)

    def auxiliary_loss(self, batch: TrainingBatch | None = None) -> Tensor | float:
        return sum((part.auxiliary_loss(batch) for part in self.parts), 0.0)

    def transform_gradients(self) -> None:
        for part in self.parts:
            part.transform_gradients()

    def after_step(self) -> None:
        for part in self.parts:
            part.after_step()

    def trains(self, task: int) -> bool:
        return all(part.trains(task) for part in self.parts)

    def prepare_task(self, task: int, data) -> None:
        for part in self.parts:
            part.prepare_task(task, data)

    def end_task(self, task: int, data) -> None:
        for part in self.parts:
            part.end_task(task, data)

    # -- parameters and state -------------------------------------------------------------------
    def method_parameters(self) -> list[nn.Parameter]:
        params = dict(self.named_parameters())
        return [params[n] for n in self.method_names]

    def method_rate_groups(self, task: int, scale: float) -> list[tuple[list[nn.Parameter], float]]:
        """The method's parameters grouped by their rate in task ``task`` (a multiple of ``train.lr``):
        ``scale`` unless the method's module says otherwise (SLCA++'s LoRA on its first task)."""
        rates = self.method_module.learning_rates(task, scale) if self.method_module is not None else {}
        groups: dict[float, list[nn.Parameter]] = {}
        for p in self.method_parameters():
            groups.setdefault(rates.get(id(p), scale), []).append(p)
        return [(params, rate) for rate, params in groups.items()]

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The method's parameters and the head's, by name: what the tasks train."""
        params = dict(self.named_parameters())
        return [(n, params[n]) for n in self.method_names] + list(self.head.named_parameters(prefix="head"))

    def set_method_trainable(self, trainable: bool) -> None:
        """Head-only phases switch the PEFT parameters off so backward stops at the head; the
        parameters the method keeps frozen in this task stay off (no gradient, no weight decay)."""
        self.method_frozen = not trainable
        frozen = {id(p) for part in self.parts for p in part.frozen_parameters()}
        for p in self.method_parameters():
            p.requires_grad_(trainable and id(p) not in frozen)

    def state_names(self) -> list[str]:
        added = [f"{name}.{k}" for name in self.added_parts for k in getattr(self, name).state_dict()]
        return self.method_state_names + added + [f"head.{k}" for k in self.head.state_dict()]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """PEFT, added parts' and head state (the whole backbone's when it trains): all a checkpoint needs."""
        state = self.state_dict()
        return {name: state[name].detach().cpu().clone() for name in self.state_names()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.state_names())
        if set(state) != expected:
            raise ValueError(f"trainable state mismatch: missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
        self.load_state_dict(state, strict=False)

    def parameter_counts(self) -> dict[str, int]:
        peft = sum(p.numel() for p in self.method_parameters())
        head = sum(p.numel() for p in self.head.parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"params_method": peft, "params_head": head, "params_trainable": peft + head, "params_total": total}


def build_model(cfg: ModelConfig, num_classes: int, num_tasks: int) -> tuple[ContinualClassifier, InputSpec]:
    """The model a ``ModelConfig`` describes, and the input its backbone expects."""
    backbone = create_backbone(cfg.backbone, cfg.weights, cfg.image_size, **cfg.backbone_kwargs)
    data = resolve_data_config({}, model=backbone)
    mean, std = (tuple(data["mean"]), tuple(data["std"])) if cfg.normalize == "backbone" else ((0.0,) * 3, (1.0,) * 3)
    spec = InputSpec(cfg.image_size or data["input_size"][-1], mean, std)
    frozen_keys = set(backbone.state_dict())
    backbone = attach_method(backbone, cfg.method, num_tasks)
    model = ContinualClassifier(backbone, num_classes, cfg.head_init_std, frozen_keys, cfg.method.head,
                                cfg.method.head_scale)
    for name, part in cfg.method.chosen_parts().items():
        model.add_part(name, PARTS.get(name).load()(part, model))
    return model, spec

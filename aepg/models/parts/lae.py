"""LAE's online/offline pair over any PEFT module (Gao et al., 2023; gqk/LAE).

The online PEFT parameters train. There is no offline copy during task 0; when task 1 starts,
the offline copy is a copy of the online parameters, and from then on it follows them by an
exponential moving average after every optimiser step (head-only steps included, as in LAE).
From task 1 on, a prediction is the per-class maximum of the online and offline softmaxes over
the seen classes.

LAE's default decay is 0.9999 at batch 24. The EMA's time constant is counted in steps, so at
batch B the same horizon in samples is ``decay ** (B / 24)``: 0.9989 at batch 256.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from aepg.models.contract import ActivatedPart, swapped


class OnlineOfflinePair(ActivatedPart):
    """LAE's part of the life cycle: the offline copy's start and EMA, and its prediction rule."""

    def __init__(self, online: list[nn.Parameter], decay: float):
        super().__init__()
        self.online, self.decay = online, decay
        for i, p in enumerate(online):
            self.register_buffer(f"offline_{i}", torch.zeros_like(p))

    def _offline(self) -> list[Tensor]:
        return [getattr(self, f"offline_{i}") for i in range(len(self.online))]

    @torch.no_grad()
    def begin_task(self, task: int) -> None:
        """From task 1 on there is an offline copy; it starts as the online parameters."""
        if task >= 1 and not self.is_active:
            for p, offline in zip(self.online, self._offline()):
                offline.copy_(p)
            self.activate()

    @torch.no_grad()
    def after_step(self) -> None:
        if self.is_active:
            for p, offline in zip(self.online, self._offline()):
                offline.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    def offline(self):
        """Run the model with the offline parameters (swapped in place, then back)."""
        return swapped(self.online, self._offline())

    def predict(self, logits: Tensor, features: Tensor, columns: slice, again: Callable[[], Tensor]) -> Tensor:
        """From task 1 on, the log of the per-class maximum of the online and offline softmaxes over
        ``columns`` (its argmax is the prediction)."""
        if not self.is_active:
            return logits
        with self.offline():
            offline = again()
        return torch.maximum(logits.log_softmax(-1), offline.log_softmax(-1))


def build_lae(cfg, model) -> OnlineOfflinePair:
    """LAE's pair over the method's parameters (``aepg.models.parts.LAEPart``)."""
    return OnlineOfflinePair(model.method_parameters(), cfg.decay)

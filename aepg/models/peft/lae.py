"""LAE's online/offline pair over any PEFT module: the online parameters train, an offline copy
follows them by an exponential moving average after every step, and at test time the two are
ensembled by taking, per class, the larger of their softmax probabilities over the seen classes.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn


class OnlineOfflinePair(nn.Module):
    def __init__(self, online: list[nn.Parameter], decay: float):
        super().__init__()
        self.online, self.decay = online, decay
        for i, p in enumerate(online):
            self.register_buffer(f"offline_{i}", p.detach().clone())

    def _offline(self) -> list[Tensor]:
        return [getattr(self, f"offline_{i}") for i in range(len(self.online))]

    @torch.no_grad()
    def update(self) -> None:
        for p, offline in zip(self.online, self._offline()):
            offline.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    @contextmanager
    @torch.no_grad()
    def offline(self):
        """Run the model with the offline parameters (swapped in place, then back)."""
        saved = [p.detach().clone() for p in self.online]
        for p, offline in zip(self.online, self._offline()):
            p.copy_(offline)
        try:
            yield
        finally:
            for p, value in zip(self.online, saved):
                p.copy_(value)

    @staticmethod
    def ensemble(online_logits: Tensor, offline_logits: Tensor) -> Tensor:
        return torch.maximum(online_logits.log_softmax(-1), offline_logits.log_softmax(-1))

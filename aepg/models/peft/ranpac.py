"""RanPAC (McDonnell et al., NeurIPS 2023), as ``RanPAC/RanPAC`` does it.

On the first task an AdaptFormer adapter (all blocks, bottleneck 64, scale 0.1) trains with the
head; then it is frozen and nothing trains again. After every task, the task's training images
(without augmentation) give features ``f``, randomly projected ``h = ReLU(f W)`` with a fixed
Gaussian ``W`` (d x M); the method accumulates ``G += h^T h`` and ``Q += h^T Y`` (one-hot labels),
chooses the ridge ``lambda`` in 10^-8 ... 10^8 that best predicts the last 20% of the task's
images from the first 80% (mean squared error), and sets the head to ``(G + lambda I)^-1 Q``. A
prediction is ``h W_out^T`` over all classes; the trained linear head is not used at test. As in
the reference, all of it is float32 (the features at test too), whatever ``train.precision`` says.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from aepg.models.peft import RanpacMethod
from aepg.models.peft.adaptformer import AdaptFormer
from aepg.models.contract import TaskData
from aepg.models.peft.base import MethodModule, blocks_of

RIDGES = tuple(10.0 ** k for k in range(-8, 9))
FIT_FRACTION = 0.8


def ridge_solution(G: Tensor, Q: Tensor, ridge: float) -> Tensor:
    """The ridge-regression head (classes x M): ``((G + ridge I)^-1 Q)^T``."""
    return torch.linalg.solve(G + ridge * torch.eye(G.shape[0], dtype=G.dtype, device=G.device), Q).T


class RanPAC(MethodModule):
    predicts_from_exact_features = True

    def __init__(self, backbone: nn.Module, cfg: RanpacMethod):
        super().__init__()
        self.adapter = None
        if cfg.adapt_first_task:
            self.adapter = AdaptFormer(backbone, blocks_of(backbone, cfg), cfg.bottleneck, cfg.adapter_scale,
                                       cfg.adapter_dropout)
        dim = backbone.num_features
        self.register_buffer("projection", torch.randn(dim, cfg.projection_dim) if cfg.projection_dim else torch.zeros(0))
        self.hidden_dim = cfg.projection_dim or dim
        self.register_buffer("task", torch.zeros((), dtype=torch.long))
        # Draws for the ridge's validation split come from (seed, task): every rank and a resumed run agree.
        self.register_buffer("seed", torch.randint(0, 2**31 - 1, ()))

    def set_num_classes(self, num_classes: int) -> None:
        M = self.hidden_dim
        self.register_buffer("G", torch.zeros(M, M))
        self.register_buffer("Q", torch.zeros(M, num_classes))
        self.register_buffer("head", torch.zeros(num_classes, M))
        self.register_buffer("ridge", torch.zeros(()))

    def hidden(self, features: Tensor) -> Tensor:
        """``h``: the features randomly projected and rectified (or themselves, with M = 0)."""
        if self.projection.numel() == 0:
            return features.float()
        return torch.relu(features.float() @ self.projection)

    def begin_task(self, task: int) -> None:
        self.task.fill_(task)

    def trains(self, task: int) -> bool:
        return task == 0 and self.adapter is not None

    def frozen_parameters(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters()) if self.adapter is not None and int(self.task) > 0 else []

    @torch.no_grad()
    def end_task(self, task: int, data: TaskData) -> None:
        features, labels = zip(*data.features())
        H, labels = self.hidden(torch.cat(features)), torch.cat(labels)
        Y = nn.functional.one_hot(labels, self.Q.shape[1]).float()
        self.G += data.sum(H.T @ H)
        self.Q += data.sum(H.T @ Y)
        self.ridge.fill_(self._choose_ridge(H, Y, data, task))
        self.head.copy_(ridge_solution(self.G, self.Q, float(self.ridge)))

    def _choose_ridge(self, H: Tensor, Y: Tensor, data: TaskData, task: int) -> float:
        """The ridge whose head, fitted to a random 80% of this task's images, best predicts the rest."""
        order = torch.randperm(len(H), generator=torch.Generator().manual_seed(int(self.seed) * 1000 + task))
        H, Y = H[order.to(H.device)], Y[order.to(H.device)]
        fit = int(len(H) * FIT_FRACTION)
        G, Q = data.sum(H[:fit].T @ H[:fit]), data.sum(H[:fit].T @ Y[:fit])
        errors = torch.stack([data.sum(((H[fit:] @ ridge_solution(G, Q, ridge).T - Y[fit:]) ** 2).sum())
                              for ridge in RIDGES])
        return RIDGES[int(errors.argmin())]

    def predict(self, logits: Tensor, features: Tensor, columns: slice, again: Callable[[], Tensor]) -> Tensor:
        return (self.hidden(features) @ self.head.T)[:, columns]


def build_ranpac(backbone: nn.Module, cfg: RanpacMethod, num_tasks: int) -> RanPAC:
    return RanPAC(backbone, cfg)

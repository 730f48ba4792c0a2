"""Semantic drift calibration, as MACIL's reference code does it (fwu11/MACIL: ``methods/macil.py``
``incremental_train``, ``displacement``, ``shrink_cov``, ``_compute_class_invcov``;
``models/losses.py`` ``MahalanobisLoss``, ``compute_angle_weighted_patch_distillation_loss``).

From the second task on, the model as the task finds it (its method's parameters, kept in buffers so
a checkpoint holds them) is the old model. Before the task trains, the old model's features of each of
the task's classes give its inverse covariance: ``pinv(S + a mean(diag S) I + a mean(offdiag S) (1 - I)
+ ridge I)``, S the unbiased covariance in float64, a the ``shrinkage``. Every step then adds

- ``covariance_weight`` times, over the classes of the batch and every pair (i, j) of their features,
  ``|d_old(i, j) - d_new(i, j)|``, summed and divided by the batch: ``d = sqrt(u^T (P + 1e-6 I) u + 1e-8)``
  with ``u`` the difference of the two L2-normalised features and ``P`` the class's inverse covariance;
- ``patch_weight`` times the mean over the patch tokens of ``(1 - alpha) |n(p_new) - n(p_old)|``, n the
  L2 normalisation and ``alpha = 1 - acos(cos(f_new, p_new)) / pi`` (no gradient through alpha), the
  tokens those of the backbone's final norm.

When the task ends, each earlier class's mean (in the part ``align``'s statistics) moves by
``sum_i w_i (f_new_i - f_old_i) / sum_i w_i`` over the task's training images, with
``w_i = exp(-|f_old_i - mean|^2 / (2 sigma^2)) + 1e-5``, before the task's own statistics are taken.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from aepg.models.contract import ActivatedPart, TaskData, TrainingBatch, swapped
from aepg.models.parts.align import ClassifierAlignment

MAHALANOBIS_JITTER = 1e-6


class DriftCalibration(ActivatedPart):
    def __init__(self, model: nn.Module, cfg):
        super().__init__()
        self.cfg = cfg
        backbone = model.backbone
        self.names = [name.removeprefix("backbone.") for name in model.method_names]
        self.params = model.method_parameters()  # not submodules: the model checkpoints them
        for i, p in enumerate(self.params):
            self.register_buffer(f"previous_{i}", torch.zeros_like(p))
        self.register_buffer("inverse_covariances", torch.zeros(0))
        self.backbone = [backbone]  # a list: not a submodule
        self.tokens: Tensor | None = None
        self.keep_old_tokens = False
        if cfg.patch_weight:
            if getattr(backbone, "norm", None) is None or not hasattr(backbone, "num_prefix_tokens"):
                raise ValueError("the patch distillation (model.method.parts.drift.patch_weight) needs a timm "
                                 "VisionTransformer's tokens; set patch_weight=0 for other backbones")
            backbone.norm.register_forward_hook(self._keep_tokens)

    def _keep_tokens(self, module: nn.Module, inputs, output: Tensor) -> None:
        """The final norm's tokens of a training forward, or of the old model's."""
        if module.training or self.keep_old_tokens:
            self.tokens = output

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        kept = state_dict.get(prefix + "inverse_covariances")
        if kept is not None:  # sized by the task's classes
            self.inverse_covariances = torch.zeros_like(kept, device=self.inverse_covariances.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def previous(self) -> dict[str, Tensor]:
        return {name: getattr(self, f"previous_{i}") for i, name in enumerate(self.names)}

    @torch.no_grad()
    def prepare_task(self, task: int, data: TaskData) -> None:
        if task == 0:
            return
        for p, kept in zip(self.params, self.previous().values()):
            kept.copy_(p)
        if self.cfg.covariance_weight:
            covariances = class_covariances(data)
            self.inverse_covariances = torch.stack([
                torch.linalg.pinv(shrunk(c, self.cfg.shrinkage) + self.cfg.ridge * torch.eye(len(c), dtype=c.dtype, device=c.device))
                for c in covariances]).float()
        self.activate()

    def auxiliary_loss(self, batch: TrainingBatch | None = None) -> Tensor | float:
        cfg = self.cfg
        if batch is None or not self.is_active or not (cfg.covariance_weight or cfg.patch_weight) \
                or not batch.features.requires_grad:  # a head-only step: the terms reach nothing that trains
            return 0.0
        new, new_tokens = batch.features.float(), self.tokens
        old, old_tokens = self._old(batch)
        loss = new.new_zeros(())
        if cfg.covariance_weight:
            inverse = self.inverse_covariances.to(new.device)
            in_task = batch.labels + batch.columns.start - batch.task_start  # the task's classes from 0
            loss = loss + cfg.covariance_weight * mahalanobis_constraint(old, new, in_task, inverse)
        if cfg.patch_weight:
            prefix = self.backbone[0].num_prefix_tokens
            loss = loss + cfg.patch_weight * patch_distillation(new_tokens[:, prefix:].float(), old_tokens[:, prefix:].float(), new)
        return loss

    def _old(self, batch: TrainingBatch) -> tuple[Tensor, Tensor | None]:
        """The old model's features and tokens of the step's inputs (eval mode, no gradient)."""
        backbone, model = self.backbone[0], batch.model
        was_training = model.training
        model.eval()
        self.keep_old_tokens = True
        try:
            with torch.no_grad():
                features = functional_call(backbone, self.previous(), (batch.inputs,), tie_weights=False).float()
        finally:
            self.keep_old_tokens = False
            model.train(was_training)
        return features, self.tokens

    @torch.no_grad()
    def end_task(self, task: int, data: TaskData) -> None:
        if task == 0 or not self.cfg.mean_shift:
            return
        statistics = next(part for part in data.model.parts if isinstance(part, ClassifierAlignment)).statistics
        new = [features for features, _ in data.features(torch.float64)]
        with swapped(self.params, list(self.previous().values())):
            old = [features for features, _ in data.features(torch.float64)]
        means = statistics.means[:data.start]
        weighted = torch.zeros_like(means)
        weights = torch.zeros(len(means), dtype=means.dtype, device=means.device)
        for before, after in zip(old, new, strict=True):
            w = kernel_weights(before.to(means.device), means, self.cfg.sigma)
            weighted += w @ (after - before).to(means.device)
            weights += w.sum(dim=1)
        means += data.sum(weighted) / data.sum(weights)[:, None]


def kernel_weights(features: Tensor, means: Tensor, sigma: float) -> Tensor:
    """(classes, n) ``exp(-|f - mean|^2 / (2 sigma^2)) + 1e-5`` (MACIL's ``displacement``)."""
    distance = ((features[None, :, :] - means[:, None, :]) ** 2).sum(dim=-1)
    return torch.exp(-distance / (2 * sigma ** 2)) + 1e-5


def class_covariances(data: TaskData) -> list[Tensor]:
    """The unbiased float64 covariance of each of the task's classes, over the workers' shards."""
    classes = data.stop - data.start
    counts = sums = outers = None
    for features, labels in data.features(torch.float64):
        index = (labels - data.start).to(features.device)
        if counts is None:
            dim = features.shape[1]
            counts = features.new_zeros(classes)
            sums, outers = features.new_zeros(classes, dim), features.new_zeros(classes, dim, dim)
        counts.index_add_(0, index, torch.ones_like(index, dtype=features.dtype))
        sums.index_add_(0, index, features)
        outers.index_add_(0, index, features.unsqueeze(2) * features.unsqueeze(1))
    counts, sums, outers = data.sum(counts), data.sum(sums), data.sum(outers)
    means = sums / counts[:, None]
    return list((outers - counts[:, None, None] * means.unsqueeze(2) * means.unsqueeze(1)) / (counts - 1)[:, None, None])


def shrunk(covariance: Tensor, shrinkage: float) -> Tensor:
    """MACIL's ``shrink_cov``: ``a mean(diag)`` added on the diagonal and ``a mean(nonzero off-diagonal)``
    off it."""
    identity = torch.eye(len(covariance), dtype=covariance.dtype, device=covariance.device)
    off = covariance * (1 - identity)
    nonzero = off != 0
    off_mean = off.sum() / nonzero.sum()
    return covariance + shrinkage * torch.diagonal(covariance).mean() * identity + shrinkage * off_mean * (1 - identity)


def mahalanobis_constraint(old: Tensor, new: Tensor, labels: Tensor, inverse: Tensor) -> Tensor:
    """MACIL's ``MahalanobisLoss``: per class of the batch, over its pairs of features, the absolute
    difference of their old and new Mahalanobis distances; summed, over the batch."""
    total = new.new_zeros(())
    jitter = MAHALANOBIS_JITTER * torch.eye(inverse.shape[-1], dtype=inverse.dtype, device=inverse.device)
    for c in torch.unique(labels):
        members = labels == c
        count = int(members.sum())
        if count < 2:
            continue
        i, j = torch.triu_indices(count, count, 1, device=new.device)
        metric = inverse[int(c)] + jitter

        def distances(features: Tensor) -> Tensor:
            unit = F.normalize(features[members], p=2, dim=1)
            delta = unit[i] - unit[j]
            return torch.sqrt(torch.einsum("pd,de,pe->p", delta, metric, delta) + 1e-8)

        total = total + (distances(old) - distances(new)).abs().sum()
    return total / len(labels)


def patch_distillation(new_patches: Tensor, old_patches: Tensor, new_features: Tensor) -> Tensor:
    """MACIL's ``compute_angle_weighted_patch_distillation_loss``."""
    with torch.no_grad():
        cosine = F.cosine_similarity(new_features.unsqueeze(1), new_patches, dim=-1).clamp(min=-1.0, max=1.0)
        angle = 1 - torch.acos(cosine) / torch.pi
    distances = torch.norm(F.normalize(new_patches, p=2, dim=-1) - F.normalize(old_patches, p=2, dim=-1), p=2, dim=-1)
    return ((1 - angle) * distances).mean()


def build_drift(cfg, model) -> DriftCalibration:
    """MACIL's drift calibration over the model's method (``aepg.models.parts.DriftCalibrationPart``)."""
    return DriftCalibration(model, cfg)

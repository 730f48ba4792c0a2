"""Method parts: what layers over any training method, one catalogue entry each
(``aepg.catalog.PARTS``), chosen under ``model.method.parts`` by name, in the order they run.

A part takes the same life-cycle hooks as a PEFT module (``aepg.models.contract``):
the start and end of each task with its context (the model, the objective and the task's data),
a loss term at every training step with the step's batch, the step's end, and a prediction rule
at test time. The built-in parts: LAE's online/offline pair, EWC (online), LwF, classifier
alignment on class statistics (SLCA's and SLCA++'s), LCA's merge, MACIL's drift calibration and
TUNA's task-specific selection.
A method may be made with some of them (``MethodConfig.default_parts``: SLCA's alignment). This module
holds their configs only (no torch), so the CLI checks them before anything heavy is imported;
each builder, ``build(cfg, model) -> MethodPart``, lives in the file beside it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aepg.catalog import PARTS
from aepg.config import PartConfig

PACKAGE = "aepg.models.parts"


@PARTS.register("lae", builder=f"{PACKAGE}.lae:build_lae", display="LAE")
class LAEPart(PartConfig):
    """LAE's online/offline pair (Gao et al., ICCV 2023): from task 1 an offline copy of the method's
    parameters follows them by an EMA after every step, and a prediction takes the per-class maximum
    of the online and offline softmaxes."""

    kind: Literal["lae"] = "lae"
    decay: float = Field(0.9999, gt=0, lt=1)
    """EMA decay per optimiser step. LAE's 0.9999 is for batch 24; at batch B use 0.9999 ** (B / 24)."""

    def problems(self, cfg) -> list[tuple[str, str]]:
        if self.enabled and cfg.model.method.kind == "none":
            return [("", "LAE wraps a PEFT module: set model.method.kind")]
        return []


@PARTS.register("ewc", builder=f"{PACKAGE}.ewc:build_ewc", display="EWC")
class EWCPart(PartConfig):
    """Online EWC (Schwarz et al., 2018; Avalanche's ``EWCPlugin(mode="online")``): after each task
    the squared gradients of the run's objective on the task's data, averaged over its batches,
    are added to the decayed importances of earlier tasks, and every later step adds
    ``weight * sum(F * (theta - theta_prev)^2)`` over the trained parameters and the head."""

    kind: Literal["ewc"] = "ewc"
    weight: float = Field(100.0, ge=0)
    """lambda, the penalty's weight (Avalanche's ``ewc_lambda``)."""
    decay: float = Field(1.0, ge=0, le=1)
    """gamma: the earlier tasks' importances are multiplied by it before the new task's are added
    (Avalanche's ``decay_factor``; 1 keeps them whole)."""


@PARTS.register("lwf", builder=f"{PACKAGE}.lwf:build_lwf", display="LwF")
class LwFPart(PartConfig):
    """Learning without Forgetting (Li and Hoiem, 2016; PyCIL's and LibContinual's ``LwF``): from
    task 1, every step adds ``weight`` times the distillation of the model as it was before the task
    (eval mode, no gradient) into the current one, on the classes seen before the task, at
    ``temperature``: ``-sum(softmax(old / T) * log_softmax(new / T)) / batch``."""

    kind: Literal["lwf"] = "lwf"
    weight: float = Field(3.0, ge=0)
    """lambda (the references' ``lamda = 3``)."""
    temperature: float = Field(2.0, gt=0)
    """T (the references' ``T = 2``)."""


@PARTS.register("align", builder=f"{PACKAGE}.align:build_alignment", display="classifier alignment")
class ClassifierAlignmentPart(PartConfig):
    """Class statistics and classifier alignment (SLCA, Zhang et al., ICCV 2023, ``models/slca.py``):
    after each task, one unaugmented pass over its training images keeps each new class's feature
    mean and covariance; from the second task on, the head's columns of every class seen so far are
    re-trained on features drawn from those Gaussians. As in SLCA the aligned head serves the task's
    evaluation and the next task trains from the head as it was before alignment."""

    kind: Literal["align"] = "align"
    covariance: Literal["full", "diagonal", "low_rank"] = "full"
    """What is kept per class: the full d x d covariance (SLCA's), its diagonal (C3Box's
    ``variance``), or its top ``rank`` eigenvectors plus the mean of the other eigenvalues."""
    rank: int = Field(16, ge=1)
    """Eigenvectors kept per class with ``covariance: low_rank``."""
    ridge: float = Field(1.0e-4, ge=0)
    """Added to the covariance's diagonal (SLCA's and C3Box's 1e-4), so it can be sampled."""
    samples_per_class: int = Field(256, ge=1)
    """Features drawn per class (SLCA's 256, LCA's 512)."""
    draws: Literal["per_epoch", "once"] = "per_epoch"
    """Fresh features every epoch (SLCA's), or drawn once and reshuffled every epoch (LCA's)."""
    batch_size: int | None = Field(None, ge=1)
    """The alignment's batch (LCA's 128); unset: ``samples_per_class`` (SLCA's)."""
    epochs: int = Field(5, ge=0)
    """Alignment epochs per task (SLCA's ``ca_epochs``; 0 keeps the statistics only)."""
    lr: float = Field(0.01, gt=0)
    """SGD's rate, annealed to 0 over the epochs by a cosine (SLCA's: its training rate, 0.01)."""
    cosine_epochs: int | None = Field(None, ge=1)
    """The cosine's half period in epochs (``CosineAnnealingLR``'s ``T_max``); unset: ``epochs``.
    TUNA's 5 over its 30 epochs: the rate falls to 0 by epoch 5, rises back by epoch 10, and so on."""
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5.0e-4, ge=0)
    temperature: float | None = Field(0.1, gt=0)
    """SLCA's logit normalisation (``ca_with_logit_norm``, 0.1 in all its presets): the logits
    divided by the mean over tasks of each task's logit norm, then by this; null: plain logits."""
    shrink_old_means: bool | Literal["tuna"] = True
    """SLCA's draw around ``(0.9 + 0.1 (t + 1) / (T + 1)) * mean`` for a class of task t after task T
    (the current task's classes at their mean, the oldest shrunk most); false: around the mean;
    ``tuna``: the same formula with TUNA's code's t, ``c // -n`` for class c and the task's n
    classes (its ``decay`` on ImageNet-R; see docs/methods.md)."""
    old_feature_scale: float = Field(0.0, ge=0)
    """mu of SLCA++'s feature scaling (its ``fc_scale_mu``, 0.02 in its presets): a feature drawn for a
    class of task t after task T is divided by ``1 + (mu + 0.02 (u - 0.5)) (T - t)``, u uniform in
    [0, 1), and at the task's evaluation the logits of task t's classes read the features times
    ``1 + mu (T - t)``. 0: off (SLCA's)."""
    freeze_old_classes: bool = True
    """Earlier tasks' head rows stay as they were while a task trains (SLCA's per-task heads, the old
    ones frozen): weight decay does not shrink them. False: they go through the optimiser's step."""
    keep_aligned_head: bool = False
    """False (SLCA's ``fc.recall()``): the next task trains from the head as it was before
    alignment; true: from the aligned head."""
    robust_weight: float = Field(0.0, ge=0)
    """LCA's robust alignment loss (``train_ca_robust_weight``, 0.1 in its ``base_lca``): per class of
    a batch, over its features whose nearest class mean is its own, the mean loss plus this times
    the mean absolute difference of two of their losses; 0: the plain mean loss (SLCA's)."""
    align_bias: bool = True
    """The head's bias is aligned with its weights (SLCA's head has a bias); false: left as it is
    (LCA's heads have none)."""
    objective: Literal["run", "ce"] = "run"
    """The alignment's loss: the run's objective as it stands at the task's end, or cross-entropy
    (SLCA's)."""

    def active_params(self, facts: dict | None = None) -> dict[str, object]:
        params = super().active_params(facts)
        if self.covariance != "low_rank":
            params.pop("rank", None)
        if self.batch_size is None:
            params.pop("batch_size", None)
        if self.cosine_epochs is None:
            params.pop("cosine_epochs", None)
        return params

    def problems(self, cfg) -> list[tuple[str, str]]:
        if self.enabled and cfg.model.method.kind == "ranpac":
            return [("", "RanPAC predicts with its closed-form head, so an aligned linear head is never read")]
        if self.enabled and self.old_feature_scale and cfg.model.method.head == "cosine":
            return [("old_feature_scale", "scales features, which a cosine head (model.method.head) does not see")]
        return []


@PARTS.register("merge", builder=f"{PACKAGE}.merge:build_merge", display="task-vector merging")
class MergePart(PartConfig):
    """Incremental merging of the method's parameters (LCA, ICLR 2026, ``lca.py``): each task trains
    from the merged parameters of the tasks before it, and when it ends its task vector and theirs
    (each relative to the parameters as built) are merged by ``rule`` into the parameters the task
    is evaluated with and the next one starts from."""

    kind: Literal["merge"] = "merge"
    rule: Literal["ties", "max", "min", "max_abs"] = "ties"
    """TIES (LCA's: the top ``topk`` percent magnitudes of each vector, the elected sign, the mean
    of the entries that agree with it), or the element-wise max, min or largest magnitude."""
    topk: float = Field(100.0, gt=0, le=100)
    """Percent of each tensor's task-vector entries TIES keeps (LCA's ``train_merge_topk``, 100)."""
    coefficient: float = Field(1.0, gt=0)
    """lambda: the parameters become ``base + lambda * merged`` (LCA's ``train_merge_coef``, 1.0)."""

    def active_params(self, facts: dict | None = None) -> dict[str, object]:
        params = super().active_params(facts)
        if self.rule != "ties":
            params.pop("topk", None)
        return params

    def problems(self, cfg) -> list[tuple[str, str]]:
        if self.enabled and cfg.model.method.kind in ("none", "ranpac"):
            return [("", f"merging needs trained method parameters; model.method.kind={cfg.model.method.kind} has none "
                         "that train after the first task")]
        return []


@PARTS.register("drift", builder=f"{PACKAGE}.drift:build_drift", display="semantic drift calibration")
class DriftCalibrationPart(PartConfig):
    """MACIL's semantic drift calibration (Wu et al., ICML 2025, ``methods/macil.py``): from the second
    task on, the model as the task finds it is kept; every step adds a Mahalanobis constraint that keeps
    the distances between a class's features (under the old model's inverse covariance of the class) as
    the old model had them, and an angle-weighted distillation of the patch tokens; when the task
    ends, the means of the earlier classes (the part ``align``'s statistics) move by the drift of
    the task's features, each weighted by a Gaussian kernel of its old feature's distance to the mean."""

    kind: Literal["drift"] = "drift"
    mean_shift: bool = True
    """Move the earlier classes' means by the drift (MACIL's ``msc``)."""
    sigma: float = Field(1.0, gt=0)
    """The kernel's width: weights ``exp(-|f_old - mean|^2 / (2 sigma^2)) + 1e-5`` (MACIL's 1.0)."""
    covariance_weight: float = Field(1.0, ge=0)
    """The Mahalanobis constraint's weight (MACIL's ``cc``: 1 when on); 0: off."""
    shrinkage: float = Field(10.0, ge=0)
    """The old covariance of each of the task's classes gets this times its mean diagonal on the
    diagonal and times its mean off-diagonal entry off it before it is inverted (MACIL's 10 and 10)."""
    ridge: float = Field(1.0e-3, ge=0)
    """Then added to its diagonal (MACIL's 1e-3)."""
    patch_weight: float = Field(0.4, ge=0)
    """The patch distillation's weight (MACIL's ``lamb_p``, 0.4; MACIL adds it only with ``cc`` on); 0: off."""

    def problems(self, cfg) -> list[tuple[str, str]]:
        method = cfg.model.method
        if not self.enabled:
            return []
        if method.kind in ("none", "ranpac"):
            return [("", f"drift calibration needs features that training moves; model.method.kind={method.kind} "
                         "trains none after the first task")]
        align = method.parts.get("align")
        if self.mean_shift and (align is None or not align.enabled):
            return [("mean_shift", "moves the class means the part align keeps: add model.method.parts.align "
                                   "or set mean_shift=false")]
        return []


@PARTS.register("select", builder=f"{PACKAGE}.select:build_selection", display="task-specific selection")
class TaskSelectionPart(PartConfig):
    """TUNA's task-specific and universal parameters (Wang et al., ICCV 2025): after each task the
    method's parameters are kept as that task's; from the second task on, a prediction runs every
    task's parameters, takes per input the one whose softmax over the seen classes has the least
    entropy, and adds that softmax to the universal parameters' softmax."""

    kind: Literal["select"] = "select"
    universal: Literal["current", "merged"] = "current"
    """The universal parameters: those as trained (TUNA's code, whose pass with the merged adapter
    reads the current one; see docs/methods.md), or the EMR merge of every task's (TUNA's paper)."""
    orth_weight: float = Field(0.0, ge=0)
    """TUNA's orthogonality term (its ``reg`` with ``use_orth``: 0.001 on ImageNet-R, off elsewhere):
    ``orth_weight exp(-(t + 1))`` times, over the earlier tasks and the adapted blocks, the absolute
    mean cosine between the rows of the current and that task's up-projections, over the blocks."""

    def problems(self, cfg) -> list[tuple[str, str]]:
        kind = cfg.model.method.kind
        if self.enabled and kind in ("none", "ranpac"):
            return [("", f"task-specific selection needs trained method parameters; model.method.kind={kind} has none "
                         "that train after the first task")]
        if self.enabled and self.orth_weight and kind not in ("adaptformer", "tuna", "lca"):
            return [("orth_weight", f"is over AdaptFormer's up-projections; model.method.kind={kind} has none")]
        return []

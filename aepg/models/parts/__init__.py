"""Method parts: what layers over any training method, one catalogue entry each
(``aepg.catalog.PARTS``), chosen under ``model.method.parts`` by name, in the order they run.

A part takes the same life-cycle hooks as a PEFT module (``aepg.models.contract``):
the start and end of each task with its context (the model, the objective and the task's data),
a loss term at every training step with the step's batch, the step's end, and a prediction rule
at test time. The built-in parts: LAE's online/offline pair, EWC (online) and LwF. This module
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

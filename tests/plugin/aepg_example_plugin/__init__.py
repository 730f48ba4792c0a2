"""The plugin's catalogue entries. This module imports no torch, so ``aepg`` still validates a
config fast; the method's module is imported only when a run builds it."""

from typing import Literal

from pydantic import Field

from aepg.catalog import METHODS, OBJECTIVES
from aepg.config import MethodConfig, ObjectiveConfig


@OBJECTIVES.register("gce", display="GCE")
class GeneralisedCrossEntropy(ObjectiveConfig):
    """Generalised cross-entropy (Zhang & Sabuncu, 2018): (1 - p_y^q) / q, CE as q -> 0, MAE at q = 1."""

    kind: Literal["gce"] = "gce"
    q: float = Field(0.7, gt=0, le=1)
    """The exponent."""

    def per_sample(self, x):
        return (1.0 - (self.q * x.log_p_y).exp()) / self.q


@METHODS.register("feature_affine", builder="aepg_example_plugin.affine:build", display="feature affine")
class FeatureAffine(MethodConfig):
    """A learnt per-channel scale and shift of the frozen backbone's pooled features (any backbone)."""

    kind: Literal["feature_affine"] = "feature_affine"
    init_scale: float = Field(1.0, gt=0)
    """The scale's initial value (the shift starts at 0)."""

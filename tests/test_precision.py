"""Mixed precision covers the training and evaluation forwards, never a method's statistics. The
CPU's bf16 autocast moves InfLoRA's covariances and RanPAC's ridge as a GPU's would, so these run
on any machine: with ``train.precision=bf16-mixed`` every statistic equals the float32 run's."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

from aepg.catalog import METHODS
from aepg.config import MethodConfig, load_config, method_config
from aepg.models.peft.attach import attach_method
from aepg.models.peft.base import MethodModule, module_of
from aepg.models.peft.inflora import update_basis

from conftest import CONFIGS, trainer_for, two_tasks_of_statistics


# -- what every hook sees -----------------------------------------------------------------------

@METHODS.register("precision_probe", builder="test_precision:build_probe")
class PrecisionProbe(MethodConfig):
    """Records the autocast state and dtypes the trainer gives the forward and each hook."""

    kind: Literal["precision_probe"] = "precision_probe"


class Probe(MethodModule):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(backbone.num_features))
        self.seen: set[tuple] = set()
        backbone.register_forward_hook(self._forward)

    def _forward(self, module, inputs, features):
        self.seen.add(("forward", self.training, torch.is_autocast_enabled("cpu")))
        return features + self.shift

    def _read(self, hook: str, data) -> None:
        for features, _ in data.features():
            self.seen.add((hook, features.dtype, torch.is_autocast_enabled("cpu")))

    def prepare_task(self, task, data):
        self._read("prepare", data)

    def end_task(self, task, data):
        self._read("end", data)

    def predict(self, logits, features, columns, again):
        self.seen.add(("predict", logits.dtype, features.dtype, again().dtype, torch.is_autocast_enabled("cpu")))
        return logits


def build_probe(backbone, cfg, num_tasks):
    return Probe(backbone)


def test_bf16_reaches_the_forwards_and_no_hook():
    trainer = trainer_for("bf16-mixed", "model.method.kind=precision_probe", "train.epochs=1")
    assert trainer.precision == "bf16-mixed" and trainer.scaler is None
    trainer.fit()
    seen = trainer.model.method_module.seen
    assert ("forward", True, True) in seen, "training forwards run under bf16 autocast"
    assert {s for s in seen if s[0] in ("prepare", "end")} == {("prepare", torch.float32, False),
                                                               ("end", torch.float32, False)}
    assert {s for s in seen if s[0] == "predict"} == {("predict", torch.float32, torch.float32, torch.float32, False)}


def test_precision_names_and_the_old_autocast_key():
    assert trainer_for("auto").precision == "32-true"  # a CPU: float32
    assert trainer_for("32-true").autocast.__class__.__name__ == "nullcontext"
    cfg = load_config(CONFIGS / "digits.yaml", ["train.autocast=false"])
    assert cfg.train.precision == "32-true" and "autocast" not in cfg.train.model_dump()
    assert load_config(CONFIGS / "digits.yaml", ["train.autocast=true"]).train.precision == "auto"


# -- InfLoRA and RanPAC: the same statistics and predictions under bf16 as in float32 ----------

@pytest.mark.parametrize("kind", ["inflora", "ranpac"])
def test_statistics_under_bf16_autocast_equal_float32(kind):
    exact, exact_logits = two_tasks_of_statistics("32-true", kind)
    mixed, mixed_logits = two_tasks_of_statistics("bf16-mixed", kind)
    for name, value in exact.items():
        torch.testing.assert_close(mixed[name], value, msg=f"{kind}'s {name} moved under bf16")
    if kind == "ranpac":  # its prediction is the ridge head on float32 features: the same
        torch.testing.assert_close(mixed_logits, exact_logits)
    else:  # InfLoRA predicts with the linear head, a forward that bf16 may round: the classes agree
        assert (mixed_logits.argmax(1) == exact_logits.argmax(1)).float().mean() > 0.9


# -- InfLoRA's basis, kept and kind-switched right ------------------------------------------------

class Inputs:
    """A task's data for a bare backbone, as ``prepare_task`` and ``end_task`` read it."""

    def __init__(self, backbone, images):
        self.backbone, self.images = backbone, images

    def features(self, dtype=torch.float32):
        with torch.no_grad():
            yield self.backbone(self.images).to(dtype), torch.zeros(len(self.images), dtype=torch.long)

    def sum(self, tensor):
        return tensor


def test_float64_inflora_keeps_a_basis_whose_update_is_skipped():
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=8,
                            embed_dim=16, num_heads=2, depth=2)
    cfg = method_config(kind="inflora", rank=2, threshold=0.5, threshold_end=0.5)
    vit = attach_method(vit, cfg, num_tasks=3).double().eval()
    inflora = module_of(vit)
    data = Inputs(vit, torch.randn(6, 3, 16, 16, dtype=torch.float64))
    inflora.begin_task(0)
    inflora.end_task(0, data)
    width = inflora.basis_width.clone()
    before = inflora.basis.clone()
    assert inflora.basis.dtype == torch.float64 and (width > 0).all() and before.abs().sum() > 0
    inflora.begin_task(1)
    inflora.end_task(1, data)  # the same inputs: the basis already holds their energy, no update
    assert torch.equal(inflora.basis_width, width)
    assert torch.equal(inflora.basis, before), "a skipped update must leave the block's basis as it was"


@pytest.mark.parametrize("directions, width, retain", [(5, 4, False), (6, 3, True)])
def test_the_basis_switches_to_its_complement_only_above_half_the_width(directions, width, retain):
    """d = 8: a first task whose energy needs exactly d/2 = 4 directions keeps M (4 wide); one that
    needs 5 keeps the 3-wide complement F instead."""
    activation = torch.diag(torch.tensor([1.0] * directions + [0.0] * (8 - directions), dtype=torch.float64))
    basis, kept_complement = update_basis(torch.zeros(8, 0, dtype=torch.float64), False, activation, 0.99, first=True)
    assert basis.shape == (8, width) and kept_complement == retain


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA it runs the whole check")
def test_the_gpu_check_says_in_one_line_that_there_is_no_gpu():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=CONFIGS.parent, capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.count("\n") == 1 and "no CUDA device here" in done.stdout

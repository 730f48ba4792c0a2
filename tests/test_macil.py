"""MACIL (``model.method.kind: macil``): its per-task key/value LoRA, cosine head and loss, its part
``drift`` (inverse covariances, Mahalanobis constraint, patch distillation, mean shift) and its
alignment equal MACIL's own code on the same weights, features and draws (stored from
tests/reference_runs/macil.py); the method runs end to end under CE and aEPG, with 20 epochs on the
first task and 10 after (``train.first_task_epochs``), resumed as uninterrupted."""

from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import DIGITS, assert_resumed_ends_as_uninterrupted, assert_same_result, finals, reference_result, run_aepg
from mlflow import MlflowClient
from test_align import HERE, REFERENCES, TINY, Features, assert_aligns_as_reference, cosine_head

from aepg.config import load_config
from aepg.models.heads import CosineHead
from aepg.models.parts import DriftCalibrationPart
from aepg.models.parts.align import ClassifierAlignment
from aepg.models.parts.drift import DriftCalibration, kernel_weights, mahalanobis_constraint, patch_distillation
from aepg.models.peft.macil import TaskKeyValueLoRA
from aepg.preflight import plan

FIXTURE = HERE / "data" / "macil.pt"
TOL = {"rtol": 0, "atol": 1e-5}


@pytest.fixture(scope="module")
def stored():
    return torch.load(FIXTURE, weights_only=False)


def test_the_key_value_lora_equals_macils_attention(stored):
    """MACIL's ``Attention_LoRA`` in task 1 (two pairs summed) and aepg's module on a timm ViT's
    attention with the same weights: the same output and gradients of the current pair, in float64."""
    inputs, reference = stored["inputs"]["attention"], stored["reference"]["attention"]
    dim = inputs["x"].shape[-1]
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=4, embed_dim=dim, depth=1,
                            num_heads=2, num_classes=0).double()
    attn = vit.blocks[0].attn
    with torch.no_grad():
        attn.qkv.weight.copy_(inputs["qkv_weight"])
        attn.qkv.bias.copy_(inputs["qkv_bias"])
        attn.proj.weight.copy_(inputs["proj_weight"])
        attn.proj.bias.copy_(inputs["proj_bias"])
    module = TaskKeyValueLoRA(vit, [0], inputs["A"].shape[2], 2).double()
    with torch.no_grad():
        for t in range(2):
            module.A[t][0].copy_(inputs["A"][t])
            module.B[t][0].copy_(inputs["B"][t])
    module.begin_task(1)
    assert {id(p) for p in module.frozen_parameters()} == {id(module.A[0]), id(module.B[0])}
    out = attn(inputs["x"])
    torch.testing.assert_close(out.detach(), reference["out"], **TOL)
    (out * inputs["upstream"]).sum().backward()
    grads = reference["grads"]
    for part, (a, b) in enumerate([("lora_A_k", "lora_B_k"), ("lora_A_v", "lora_B_v")]):
        torch.testing.assert_close(module.A[1].grad[0, part], grads[a], **TOL)
        torch.testing.assert_close(module.B[1].grad[0, part], grads[b], **TOL)


def test_the_cosine_head_under_cross_entropy_is_macils_cosface_loss(stored):
    """Cross-entropy on the cosine head's ``s cos`` is MACIL's ``AngularPenaltySMLoss`` (cosface,
    margin 0) on the cosines: the same loss and gradients of the features and the weights."""
    inputs, reference = stored["inputs"]["cosface"], stored["reference"]["losses"]["cosface"]
    head = CosineHead(inputs["weight"].shape[1], inputs["weight"].shape[0], inputs["scale"]).double()
    with torch.no_grad():
        head.weight.copy_(inputs["weight"])
    features = inputs["features"].clone().requires_grad_()
    loss = F.cross_entropy(head(features), inputs["labels"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), reference["loss"], **TOL)
    torch.testing.assert_close(features.grad, reference["features_grad"], **TOL)
    torch.testing.assert_close(head.weight.grad, reference["weight_grad"], **TOL)
    assert head.bias is None


def test_the_mahalanobis_constraint_and_patch_distillation_equal_macils(stored):
    inputs, reference = stored["inputs"], stored["reference"]["losses"]
    maha = inputs["mahalanobis"]
    new = maha["new"].clone().requires_grad_()
    loss = mahalanobis_constraint(maha["old"], new, maha["labels"], maha["inverse"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), reference["mahalanobis"]["loss"], **TOL)
    torch.testing.assert_close(new.grad, reference["mahalanobis"]["new_grad"], **TOL)
    patches = inputs["patches"]
    new, features = patches["new"].clone().requires_grad_(), patches["features"].clone().requires_grad_()
    loss = patch_distillation(new, patches["old"], features)
    loss.backward()
    torch.testing.assert_close(loss.detach(), reference["patches"]["loss"], **TOL)
    torch.testing.assert_close(new.grad, reference["patches"]["new_grad"], **TOL)
    assert features.grad is None, "no gradient reaches the class token through the angle, as in MACIL"


def test_the_inverse_covariances_and_the_mean_shift_equal_macils(stored):
    """The part's inverse covariances of task 1's classes before it trains (MACIL's
    ``_compute_class_invcov``: shrunk, ridge 1e-3, pseudo-inverse), and the kernel-weighted drift of
    the class means (its ``displacement``), with old features far from the means and near them."""
    inputs, reference = stored["inputs"], stored["reference"]["learner"]
    model = SimpleNamespace(backbone=torch.nn.Identity(), method_names=[], method_parameters=lambda: [])
    part = DriftCalibration(model, DriftCalibrationPart(patch_weight=0.0))
    size = inputs["alignment"]["task_size"]
    part.prepare_task(1, Features(inputs["alignment"]["features"].double(), size, 2 * size))
    torch.testing.assert_close(part.inverse_covariances, reference["inverse"], rtol=1e-5, atol=1e-6)
    drift = inputs["drift"]
    means = drift["means"].double()
    for key in ("old", "near"):
        weights = kernel_weights(drift[key].double(), means, drift["sigma"])
        gap = weights @ (drift["new"].double() - drift[key].double()) / weights.sum(dim=1, keepdim=True)
        torch.testing.assert_close(gap.float(), reference["gaps"][key], **TOL)


def test_the_part_moves_the_earlier_classes_means_by_the_drift_of_the_tasks_features():
    """The old model is the method's parameters as the task found them: where every feature drifts by
    the same vector, each earlier class's mean moves by exactly it, whatever the kernel's weights;
    the current parameters are back after the old model's pass, and the task's own means stay."""
    images = torch.randn(6, 5, 4, dtype=torch.float64)  # (class, image, dim)
    shift = torch.nn.Parameter(torch.zeros(4))

    class Drifting(Features):  # features: the images moved by the method's one parameter
        def features(self, dtype=torch.float32):
            for x, y in super().features(torch.float64):
                yield (x + shift.detach().double()).to(dtype), y

    settings = load_config(DIGITS, ["model.method.kind=macil"]).model.method.parts["align"]
    align = ClassifierAlignment(torch.nn.Linear(4, 6), settings)
    model = SimpleNamespace(backbone=torch.nn.Identity(), method_names=["backbone.shift"],
                            method_parameters=lambda: [shift], parts=[align])
    part = DriftCalibration(model, DriftCalibrationPart(patch_weight=0.0, covariance_weight=0.0))
    with torch.no_grad():
        align.statistics.means[:3] = torch.randn(3, 4, dtype=torch.float64)
    before = align.statistics.means.clone()
    data = Drifting(images, 3, 6)
    data.model = model
    part.prepare_task(1, data)
    with torch.no_grad():
        shift.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    part.end_task(1, data)
    torch.testing.assert_close(align.statistics.means[:3], before[:3] + shift.detach().double(), rtol=0, atol=1e-12)
    assert torch.equal(align.statistics.means[3:], before[3:]) and torch.equal(shift.detach(), torch.tensor([0.5, -1.0, 2.0, 0.0]))


def test_macils_alignment_on_its_cosine_heads_equals_macils(stored):
    """``_compute_class_mean`` (ridge 1e-3) and ``_stage2_compact_classifier`` on its bias-free cosine
    heads over three tasks, with MACIL's settings of the part: the same statistics, and the same
    aligned heads after each task, to 1e-5."""
    inputs, reference = stored["inputs"]["alignment"], stored["reference"]["learner"]
    cfg = load_config(DIGITS, ["model.method.kind=macil", f"model.method.parts.align.epochs={inputs['ca_epochs']}",
                               "model.method.parts.align.objective=ce"]).model.method.chosen_parts()["align"]
    assert_aligns_as_reference(ClassifierAlignment(cosine_head(inputs["weight"], 20.0), cfg), inputs, reference)


def test_macils_code_run_now_gives_the_stored_result(tmp_path, stored):
    """The stored result is what MACIL's code gives (run beside aepg when a clone of fwu11/MACIL is at
    $AEPG_REFERENCES/MACIL)."""
    fresh = reference_result("macil.py", REFERENCES / "MACIL", "methods/macil.py", tmp_path)
    assert_same_result(fresh, stored["reference"])


def test_macil_brings_its_head_its_parts_and_its_first_task_epochs():
    cfg = load_config(DIGITS, ["model.method.kind=macil", "train.first_task_epochs=5", "train.epochs=2"])
    method = cfg.model.method
    assert list(method.chosen_parts()) == ["drift", "align"] and (method.head, method.head_scale) == ("cosine", 20.0)
    align = method.chosen_parts()["align"]
    assert (align.ridge, align.keep_aligned_head, align.align_bias, align.samples_per_class) == (1e-3, True, False, 256)
    steps = [task.steps for task in plan(cfg).tasks]
    assert steps[0] == 5 * steps[1] / 2, "the first task trains its own epochs"
    assert "5 epochs" not in plan(cfg).lines()[0] and "(the first 5)" in plan(cfg).lines()[0]


MACIL = [*TINY, "model.method.kind=macil", "model.method.rank=2", "train.first_task_epochs=2"]


def test_macil_runs_under_ce(workdir):
    result = run_aepg(["train", DIGITS, *MACIL, "objective.kind=ce"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final/last_accuracy" in finals(workdir)
    run = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_runs(["1"])[0]
    params = run.data.params
    assert (params["model.method.head"], params["model.method.parts.drift.patch_weight"], params["train.first_task_epochs"]) \
        == ("cosine", "0.4", "2")
    assert int(run.data.tags["params_head"]) == 10 * 16, "a cosine head: weights, no bias"
    steps = plan(load_config(DIGITS, [*MACIL, "objective.kind=ce"])).tasks
    assert steps[0].steps == 2 * steps[1].steps > 0
    logged = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_metric_history(run.info.run_id, "train/loss")
    assert max(m.step for m in logged) == sum(t.steps for t in steps), "the first task trained its 2 epochs, the next 1"


def test_macil_under_aepg_resumed_after_its_second_task_ends_as_an_uninterrupted_one(workdir):
    """Resumed where the part holds the old model and task 1's inverse covariances."""
    overrides = [*MACIL, "objective.kind=aepg", "benchmark.num_tasks=3", "scaling.torch_threads=1"]
    assert_resumed_ends_as_uninterrupted(workdir, overrides, 3, after=2)

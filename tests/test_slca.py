"""SLCA and SLCA++ (``model.method.kind: slca | slca_pp``), the symmetric cross-entropy (``objective.kind:
sce``) and SLCA++'s feature scaling in the ``align`` part: equal to GengDavid/SLCA's own code on the
same weights, logits, features and draws (stored from tests/reference_runs/slca_pp.py), and run end
to end under CE and aEPG, resumed as uninterrupted."""


import pytest
import timm
import yaml
import torch
import torch.nn.functional as F
from conftest import (CONFIGS, DIGITS, assert_resumed_ends_as_uninterrupted, assert_same_result, finals, reference_result,
                      run_aepg)
from mlflow import MlflowClient
from test_align import HERE, REFERENCES, TINY, Features
from test_benchmarks_paper import write_cifar100, write_cub200, write_food101, write_imagenet_r

from aepg.config import load_config
from aepg.models.classifier import ContinualClassifier
from aepg.models.parts import ClassifierAlignmentPart
from aepg.models.parts.align import ClassifierAlignment
from aepg.models.peft import SlcaPlusPlusMethod
from aepg.models.peft.attach import attach_method
from aepg.objectives import Objective, SymmetricCrossEntropy
from aepg.schedules import Progress

FIXTURE = HERE / "data" / "slca_pp.pt"
LAYERS = {"attn.lora_": 0, "mlp.lora_1_": 1, "mlp.lora_2_": 2}


@pytest.fixture(scope="module")
def stored():
    return torch.load(FIXTURE, weights_only=False)


def tiny_backbone(inputs: dict) -> torch.nn.Module:
    from reference_runs.slca_pp import TINY as SHAPE

    backbone = timm.create_model("vit_tiny_patch16_224", pretrained=False, **SHAPE).double()
    backbone.load_state_dict(inputs["state"])
    attach_method(backbone, SlcaPlusPlusMethod(), num_tasks=2)
    return backbone


def ours(name: str) -> str:
    """aepg's name of a parameter SLCA++'s ViT calls ``name`` (its LoRA: three per block, in order)."""
    for marker, slot in LAYERS.items():
        if marker in name:
            block = int(name.split(".")[1])
            return f"aepg_peft.lora.{3 * block + slot}.{name[-1]}"
    return name


def test_the_hybrid_slow_learner_equals_slca_pps_vit(stored):
    """On the same weights in float64: the same trained parameters (SLCA++'s name test), the same
    LoRA A (the pretrained weights' top right singular vectors), the same features of a batch, and
    the same gradients of a probe of them for every trained parameter, to 1e-5."""
    inputs, reference = stored["inputs"]["backbone"], stored["reference"]["backbone"]
    backbone = tiny_backbone(inputs)
    module = backbone.aepg_peft
    with torch.no_grad():
        for slot, layer in enumerate(inputs["B"]):
            module.lora[slot].B.copy_(inputs["B"][layer])
    trained = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    assert sorted(trained) == sorted(ours(n) for n in reference["trained"])
    for name, a in reference["A"].items():
        torch.testing.assert_close(trained[ours(name)].detach(), a, rtol=0, atol=1e-5)
    features = backbone(inputs["x"])
    torch.testing.assert_close(features.detach(), reference["features"], rtol=0, atol=1e-5)
    (features * inputs["probe"]).sum().backward()
    assert any(g.abs().max() > 0 for g in reference["grads"].values())
    for name, grad in reference["grads"].items():
        torch.testing.assert_close(trained[ours(name)].grad, grad, rtol=0, atol=1e-5, msg=name)


def test_the_lora_trains_at_half_the_rate_on_the_first_task_and_at_the_slow_rate_after(stored):
    """SLCA++'s ``_stage1_training``: LoRA at 0.5 x lr on task 0 and ``bcb_lrscale`` x lr after; the
    norms, biases and class token always at ``bcb_lrscale`` (``model.method.lr_scale``)."""
    model = ContinualClassifier(tiny_backbone(stored["inputs"]["backbone"]), 6, 0.02, set())
    lora = {id(p) for p in model.backbone.aepg_peft.lora.parameters()}
    every = {id(p) for p in model.method_parameters()}
    assert lora and lora < every
    for task, expected in [(0, {0.5: lora, 0.1: every - lora}), (1, {0.1: every})]:
        groups = model.method_rate_groups(task, 0.1)
        assert {rate: {id(p) for p in params} for params, rate in groups} == expected


def test_symmetric_cross_entropy_equals_slca_pps_loss(stored):
    """``sce`` over the current task's columns: SLCA++'s ``_run`` loss (a CE + b RCE, its clamps) and
    its gradient with respect to the logits, to 1e-5 in float64."""
    inputs, reference = stored["inputs"]["loss"], stored["reference"]["loss"]
    known = inputs["known"]
    logits = inputs["logits"].clone().requires_grad_(True)
    objective = Objective(SymmetricCrossEntropy(a=inputs["sce_a"], b=inputs["sce_b"]))
    out = objective(logits[:, known:], inputs["targets"] - known, Progress(0, 1))
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), reference["loss"], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits.grad, reference["grad"], rtol=0, atol=1e-5)


def test_symmetric_cross_entropy_is_ce_plus_a_weighted_epg_on_a_hand_made_case():
    """Away from the clamps, RCE = -log(1e-4) (1 - p_y): b times it is EPG's reward term."""
    logits = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    p_y = logits.softmax(-1)[0, 0]
    out = Objective(SymmetricCrossEntropy(a=0.5, b=0.5))(logits, torch.tensor([0]), Progress(0, 1))
    expected = 0.5 * -torch.log(p_y) + 0.5 * -torch.log(torch.tensor(1e-4, dtype=torch.float64)) * (1 - p_y)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=0)


def test_the_alignment_with_features_scaled_by_task_age_equals_slca_pps(stored):
    """SLCA++'s alignment over three tasks (no mean shrink, each drawn feature divided by
    ``1 + (mu + 0.02 (u - 0.5)) (T - t)``) gives its aligned head, and the evaluation's logits read
    old tasks' features times ``1 + mu (T - t)`` as its ``update_scale``d head does; the next task
    starts from the head before alignment (its ``fc.recall()``)."""
    inputs, reference = stored["inputs"]["alignment"], stored["reference"]["alignment"]
    head = torch.nn.Linear(inputs["weight"].shape[1], len(inputs["bias"]))
    with torch.no_grad():
        head.weight.copy_(inputs["weight"])
        head.bias.copy_(inputs["bias"])
    cfg = ClassifierAlignmentPart(epochs=inputs["ca_epochs"], temperature=inputs["logit_norm"], objective="ce",
                                  shrink_old_means=False, old_feature_scale=inputs["fc_scale_mu"])
    part = ClassifierAlignment(head, cfg)
    size = inputs["task_size"]
    for task in range(3):
        part.begin_task(task)
        torch.testing.assert_close(head.weight.detach(), inputs["weight"], rtol=0, atol=0)
        part.end_task(task, Features(inputs["features"].double(), task * size, (task + 1) * size, inputs["seed"]))
        if task:
            stop = (task + 1) * size
            torch.testing.assert_close(head.weight[:stop].detach(), reference["aligned"][task - 1], rtol=0, atol=1e-5)
            columns = slice(0, stop)
            logits = part.predict(head(inputs["test"])[:, columns], inputs["test"], columns, None)
            torch.testing.assert_close(logits.detach(), reference["logits"][task - 1], rtol=0, atol=1e-5)


def test_slca_pps_code_run_now_gives_the_stored_result(tmp_path, stored):
    """The stored result is what SLCA's code gives (run beside aepg when a clone of GengDavid/SLCA is at
    $AEPG_REFERENCES/SLCA)."""
    fresh = reference_result("slca_pp.py", REFERENCES / "SLCA", "models/slca_pp.py", tmp_path)
    assert_same_result(fresh, stored["reference"])


def test_old_classes_rows_stay_while_a_task_trains_under_weight_decay():
    """SLCA's old heads are frozen: with ``freeze_old_classes`` the step's weight decay leaves the
    earlier tasks' rows as they were; without it, it shrinks them."""
    for freeze in (True, False):
        head = torch.nn.Linear(4, 6)
        part = ClassifierAlignment(head, ClassifierAlignmentPart(freeze_old_classes=freeze))
        part.statistics.task_of_class[:3] = 0  # task 0's classes, collected at its end
        part.begin_task(1)
        before = head.weight.detach().clone()
        optimizer = torch.optim.SGD(head.parameters(), lr=0.1, weight_decay=0.5)
        F.cross_entropy(head(torch.randn(5, 4))[:, 3:], torch.tensor([0, 1, 2, 0, 1])).backward()
        optimizer.step()
        part.after_step()
        assert torch.equal(head.weight[:3], before[:3]) == freeze
        assert not torch.equal(head.weight[3:], before[3:])


def test_the_methods_bring_their_parts_which_settings_override():
    cfg = load_config(DIGITS, ["model.method.kind=slca_pp", "model.method.parts.align.epochs=2"])
    align = cfg.model.method.chosen_parts()["align"]
    assert (align.epochs, align.old_feature_scale, align.shrink_old_means, cfg.model.method.lr_scale) == (2, 0.02, False, 0.1)
    slca = load_config(DIGITS, ["model.method.kind=slca", "model.method.parts.align.enabled=false"])
    assert slca.model.method.chosen_parts() == {} and slca.model.method.lr_scale == 0.01
    assert load_config(DIGITS, ["model.method.kind=lora"]).model.method.chosen_parts() == {}


@pytest.mark.parametrize("method", ["slca", "slca_pp"])
def test_the_method_runs_under_ce(workdir, method):
    result = run_aepg(["train", DIGITS, *TINY, f"model.method.kind={method}", "objective.kind=ce"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final/last_accuracy" in finals(workdir)
    params = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_runs(["1"])[0].data.params
    assert params["model.method.kind"] == method and params["model.method.parts.align.epochs"] == "2"


@pytest.mark.parametrize("method", ["slca", "slca_pp"])
def test_a_run_under_aepg_resumed_after_its_first_task_ends_as_an_uninterrupted_one(workdir, method):
    assert_resumed_ends_as_uninterrupted(workdir, [*TINY, f"model.method.kind={method}", "objective.kind=aepg",
                                                   "benchmark.num_tasks=3", "scaling.torch_threads=1"], 3)


RECIPE_OBJECTIVES = {"slca": "ce", "slca_pp": "sce", "lca": "ce", "macil": "ce", "tuna": "ce"}
"""The methods with class statistics and alignment, and the loss of each one's own recipe."""


def test_every_preset_validates_in_a_dry_run(tmp_path):
    """Each preset of the methods with class statistics and alignment, the references' recipes and
    the protocol variants, passes ``aepg train --dry-run`` (random weights) on data in the real
    formats: the recipe with its optimiser and loss, the protocol variant with the protocol's."""
    for write in (write_cifar100, write_imagenet_r, write_cub200, write_food101):
        write(tmp_path)
    presets = {}
    for path in (CONFIGS / "paper").glob("*.yaml"):
        for dataset in ("cifar100", "imagenet_r", "cub200", "food101"):
            kind = path.stem.removeprefix(f"{dataset}_").removesuffix("_protocol")
            if path.stem.startswith(dataset) and kind in RECIPE_OBJECTIVES:
                presets[path] = kind
    assert len(presets) == len(RECIPE_OBJECTIVES) * (3 + 4)
    for preset, kind in sorted(presets.items()):
        result = run_aepg(["train", str(preset), "--dry-run", "model.weights=random", f"benchmark.root={tmp_path}"],
                          tmp_path)
        assert result.returncode == 0, (preset.name, result.stderr[-2000:])
        shown = yaml.safe_load(result.stdout)
        assert shown["model"]["method"]["kind"] == kind and shown["model"]["method"]["parts"]["align"]["enabled"]
        recipe = not preset.stem.endswith("_protocol")
        assert (shown["train"]["optimizer"]["kind"], shown["objective"]["kind"]) == (
            ("sgd", RECIPE_OBJECTIVES[kind]) if recipe else ("adam", "aepg")), preset.name

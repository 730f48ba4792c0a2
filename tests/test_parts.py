"""Method parts that compose over any method (``model.method.parts``): EWC (online) and LwF pinned
to their reference formulations on small hand-made tensors, their state checkpointed, their
configs checked like every other key, and both run end to end over LoRA and full fine-tuning."""

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import CONFIGS, DIGITS, run_aepg
from mlflow import MlflowClient

from aepg.config import load_config, method_config
from aepg.models.classifier import ContinualClassifier, build_model
from aepg.models.parts import EWCPart, LwFPart
from aepg.models.parts.ewc import OnlineEWC, build_ewc
from aepg.models.parts.lwf import build_lwf, distillation
from aepg.models.peft.attach import attach_method
from aepg.models.contract import TrainingBatch
from aepg.preflight import backbone_facts
from aepg.preflight import default_run_name

DIM = 16


def tiny_model(kind: str = "none", num_classes: int = 6, **settings) -> ContinualClassifier:
    torch.manual_seed(0)
    backbone = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=8,
                                 embed_dim=DIM, num_heads=2, depth=2)
    backbone = attach_method(backbone, method_config(kind=kind, **settings), num_tasks=3)
    return ContinualClassifier(backbone, num_classes, 0.5, set())


class Context:
    """A task's context (``aepg.models.contract.TaskData``) over fixed batches, cross-entropy as the objective."""

    def __init__(self, model, batches, start, stop):
        self.model, self._batches, self.start, self.stop = model, batches, start, stop
        self.columns = slice(start, stop)

    def batches(self):
        yield from self._batches

    def loss(self, logits, labels):
        return F.cross_entropy(logits, labels - self.start)

    def sum(self, tensor):
        return tensor


def batches(seed: int, start: int, stop: int, n: int = 3):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 16, 16, generator=generator), torch.randint(start, stop, (4,), generator=generator))
            for _ in range(n)]


def test_ewc_importance_is_the_mean_squared_batch_gradient_and_accumulates_online():
    """Over a linear probe the head's gradient is closed-form, (softmax - onehot)^T features / B:
    F is its square averaged over batches; the second task's F adds to decay x the first's."""
    model = tiny_model()
    ewc = build_ewc(EWCPart(weight=2.0, decay=0.5), model)
    assert isinstance(ewc, OnlineEWC) and [tuple(p.shape) for p in ewc.params] == [(6, DIM), (6,)]

    def closed_form(data):
        squares = [torch.zeros(6, DIM), torch.zeros(6)]
        with torch.no_grad():
            model.eval()
            for x, y in data:
                features = model.features(x)
                p = torch.zeros(len(y), 6)
                p[:, 0:2] = (model.head(features)[:, 0:2]).softmax(-1)
                p[torch.arange(len(y)), y] -= 1
                squares[0] += (p.t() @ features / len(y)) ** 2
                squares[1] += p.mean(0) ** 2
        return [s / len(data) for s in squares]

    first = batches(1, 0, 2)
    ewc.end_task(0, Context(model, first, 0, 2))
    expected = closed_form(first)
    for got, want in zip(ewc.importances(), expected):
        torch.testing.assert_close(got, want)
    assert ewc.importances()[0][2:].abs().sum() == 0, "rows of classes not trained yet have no importance"
    anchor = [p.detach().clone() for p in ewc.params]
    assert ewc.auxiliary_loss() == 0.0, "no penalty where the parameters sit on their anchor"
    with torch.no_grad():
        model.head.weight.add_(0.1)
    penalty = 2.0 * sum((F_i * (p - a) ** 2).sum() for F_i, p, a in zip(expected, ewc.params, anchor))
    torch.testing.assert_close(ewc.auxiliary_loss(), penalty)
    penalty.backward()
    assert model.head.weight.grad is not None, "the penalty pulls the parameters back"

    second = batches(2, 0, 2)  # same classes, other images: F = 0.5 F_1 + F_2
    fresh = closed_form(second)
    ewc.end_task(1, Context(model, second, 0, 2))
    for got, old, new in zip(ewc.importances(), expected, fresh):
        torch.testing.assert_close(got, 0.5 * old + new)
    torch.testing.assert_close(ewc.anchors()[0], model.head.weight.detach())


def test_lwf_distillation_is_the_references_kd_and_reads_the_model_before_the_task():
    old, new = torch.randn(5, 3), torch.randn(5, 3, requires_grad=True)
    T = 2.0
    expected = -(F.softmax(old / T, 1) * F.log_softmax(new / T, 1)).sum() / 5
    torch.testing.assert_close(distillation(new, old, T), expected)
    (grad,) = torch.autograd.grad(distillation(new, new.detach(), T), [new])
    torch.testing.assert_close(grad, torch.zeros_like(grad), msg="KD is flat where the new logits equal the old")

    model = tiny_model("lora", rank=2)
    model.train()
    lwf = build_lwf(LwFPart(weight=3.0, temperature=T), model)
    x = torch.randn(4, 3, 16, 16)
    lwf.prepare_task(0, None)
    assert not lwf.is_active, "task 0 has no previous model"
    with torch.no_grad():
        for p in model.method_parameters():
            p.normal_()
    model.eval()
    with torch.no_grad():
        before = model.head_logits(x, slice(0, 2))
    model.train()
    lwf.prepare_task(1, None)
    with torch.no_grad():
        for _, p in model.trainable_parameters():
            p.add_(0.3)
    logits = model(x, slice(2, 4))
    batch = TrainingBatch(x, torch.zeros(4, dtype=torch.long), logits, model.last_features, slice(2, 4), 2, model)
    loss = lwf.auxiliary_loss(batch)
    new_old_classes = model.head(batch.features)[:, 0:2]
    torch.testing.assert_close(loss, 3.0 * distillation(new_old_classes, before, T))
    (logits.sum() + loss).backward()  # the step's graph is intact: nothing was copied into the model
    assert all(p.grad is not None for p in model.method_parameters())
    named = dict(model.named_parameters())
    assert all(named[name] is p for name, p in model.trainable_parameters()), "the model has its own parameters back"
    assert model.training


def test_parts_state_is_checkpointed_with_the_model():
    cfg = load_config(DIGITS, ["model.method.parts.ewc.weight=5", "model.method.parts.lwf.temperature=3",
                               "model.backbone=vit_tiny_patch16_224", "model.weights=random", "model.image_size=32",
                               "model.backbone_kwargs={depth: 1, embed_dim: 16, num_heads: 2, patch_size: 16}"])
    model, _ = build_model(cfg.model, 10, 5)
    assert model.added_parts == ["ewc", "lwf"]
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    model.ewc.end_task(0, Context(model, [(x, y)], 0, 2))
    model.lwf.prepare_task(1, None)
    state = model.trainable_state_dict()
    assert {"ewc.importance_0", "ewc.anchor_0", "lwf.previous_0", "ewc.active", "lwf.active"} <= set(state)
    fresh, _ = build_model(cfg.model, 10, 5)
    assert not fresh.ewc.is_active
    fresh.load_trainable_state_dict(state)
    assert fresh.ewc.is_active and fresh.lwf.is_active
    torch.testing.assert_close(fresh.ewc.importances()[0], model.ewc.importances()[0])


def test_part_settings_are_checked_like_every_key():
    cfg = load_config(DIGITS, ["model.method.parts.ewc.weight=5", "model.method.parts.lae.enabled=false"])
    assert list(cfg.model.method.chosen_parts()) == ["ewc"], "a part not enabled is not built"
    params = cfg.active_params(backbone_facts(cfg))
    assert {key: value for key, value in params.items() if key.startswith("model.method.parts.")} == {
        "model.method.parts.ewc.enabled": True, "model.method.parts.ewc.weight": 5.0, "model.method.parts.ewc.decay": 1.0,
        "model.method.parts.lae.enabled": False}, "of a part left out, only that"
    assert default_run_name(cfg) == "digits-aepg-lora-ewc-s0"
    for overrides, expected in [
        (["model.method.parts.ewcc.weight=5"], "model.method.parts.ewcc: unknown method part 'ewcc'; did you mean 'ewc'?"),
        (["model.method.parts.lwf.temprature=2"], "model.method.parts.lwf.temprature: unknown key; did you mean 'temperature'?"),
        (["model.method.parts.ewc.decay=2"], "model.method.parts.ewc.decay: Input should be less than or equal to 1"),
        (["model.method.parts.lae.decay=1"], "model.method.parts.lae.decay: Input should be less than 1"),
        (["model.method.kind=none", "model.method.parts.lae.enabled=true"], "model.method.parts.lae: LAE wraps a PEFT module"),
    ]:
        result = run_aepg(["train", DIGITS, *overrides, "--dry-run"], CONFIGS.parent)
        assert result.returncode == 2 and expected in result.stderr, (overrides, result.stderr)


def test_lae_as_a_method_key_of_older_configs_is_the_lae_part():
    """``model.method.lae`` and ``lae_decay`` (every config before LAE was a part) are the part's
    ``enabled`` and ``decay``: on, it is built; off, its settings are kept and it is left out."""
    old = load_config(DIGITS, ["model.method.lae=true", "model.method.lae_decay=0.99", "model.method.parts.ewc.weight=5"])
    assert list(old.model.method.chosen_parts()) == ["lae", "ewc"] and old.model.method.parts["lae"].decay == 0.99
    assert default_run_name(old) == "digits-aepg-lora-lae-ewc-s0"
    new = load_config(DIGITS, ["model.method.parts.lae.decay=0.99", "model.method.parts.ewc.weight=5"])
    assert old.model_dump() == new.model_dump()
    off = load_config(DIGITS, ["model.method.lae=false", "model.method.lae_decay=0.99"])
    assert off.model.method.chosen_parts() == {} and off.model.method.parts["lae"].decay == 0.99


@pytest.mark.parametrize("method", ["lora", "full"])
def test_ewc_and_lwf_run_over_lora_and_full_fine_tuning(workdir, method):
    """Both parts over one method, through the real CLI and MLflow: their settings are params, their
    loss term is logged, the run is named after them, and the run finishes."""
    result = run_aepg(["train", DIGITS, f"model.method.kind={method}", "model.method.parts.ewc.weight=100",
                       "model.method.parts.lwf.weight=3", "benchmark.num_tasks=2", "train.epochs=1",
                       "benchmark.max_train_per_class=40", "benchmark.max_test_per_class=10"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == f"digits-aepg-{method}-ewc-lwf-s0"
    assert {k: v for k, v in run.data.params.items() if ".parts." in k} == {
        "model.method.parts.ewc.enabled": "True", "model.method.parts.ewc.weight": "100.0", "model.method.parts.ewc.decay": "1.0",
        "model.method.parts.lwf.enabled": "True", "model.method.parts.lwf.weight": "3.0",
        "model.method.parts.lwf.temperature": "2.0"}
    auxiliary = client.get_metric_history(run.info.run_id, "train/auxiliary_loss")
    first_task_end = min(m.step for m in client.get_metric_history(run.info.run_id, "train/samples_per_second"))
    assert auxiliary and all(m.value == 0 for m in auxiliary if m.step <= first_task_end), "no term in the first task"
    assert any(m.value > 0 for m in auxiliary if m.step > first_task_end), "EWC and LwF act from the second task"
    manifest = json.load(open(client.download_artifacts(run.info.run_id, "manifest.json", str(workdir / "m"))))
    assert manifest["config"]["model"]["method"]["parts"]["ewc"]["weight"] == 100.0

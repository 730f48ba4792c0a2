"""TUNA (``model.method.kind: tuna``): its part ``select`` (every task's adapters kept, EMR merge,
orthogonality term, entropy-based selection at test) and its alignment (a cosine half period of 5
epochs over 30, its code's mean decay) equal TUNA's own code on the same parameters, features and
draws (stored from tests/reference_runs/tuna.py); the method runs end to end under CE and aEPG,
resumed as uninterrupted."""

import pytest
import timm
import torch
from conftest import DIGITS, assert_resumed_ends_as_uninterrupted, assert_same_result, finals, reference_result, run_aepg
from mlflow import MlflowClient
from test_align import HERE, REFERENCES, TINY, assert_aligns_as_reference, cosine_head

from aepg.config import load_config
from aepg.models.heads import CosineHead
from aepg.models.parts import TaskSelectionPart
from aepg.models.parts.align import ClassifierAlignment
from aepg.models.parts.select import TaskSelection, emr_merged, orthogonality
from aepg.models.peft.adaptformer import AdaptFormer

FIXTURE = HERE / "data" / "tuna.pt"
TOL = {"rtol": 0, "atol": 1e-5}
TIMM_NAMES = {"proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


@pytest.fixture(scope="module")
def stored():
    return torch.load(FIXTURE, weights_only=False)


def test_the_adapter_beside_the_mlp_equals_tunas_block(stored):
    """A block of TUNA's ViT with its adapter (parallel to the MLP, reading the stream after the
    attention, scale 0.1) and aepg's AdaptFormer on a timm block with the same weights: the same
    output and gradients of the adapter's four tensors, in float64."""
    inputs, reference = stored["inputs"]["block"], stored["reference"]["block"]
    weights, dim = inputs["weights"], inputs["x"].shape[-1]
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=4, embed_dim=dim, depth=1,
                            num_heads=2, num_classes=0).double()
    block = vit.blocks[0]
    with torch.no_grad():
        block.attn.qkv.weight.copy_(torch.cat([weights["q"], weights["k"], weights["v"]]))
        block.attn.qkv.bias.copy_(torch.cat([weights["q_bias"], weights["k_bias"], weights["v_bias"]]))
        for layer in ("norm1", "norm2", "proj", "fc1", "fc2"):  # TUNA's names, and timm's
            timm_layer = block.get_submodule(TIMM_NAMES.get(layer, layer))
            timm_layer.weight.copy_(weights[f"{layer}.weight"])
            timm_layer.bias.copy_(weights[f"{layer}.bias"])
    bottleneck = inputs["adapter"]["down_proj.weight"].shape[0]
    adapter = AdaptFormer(vit, [0], bottleneck=bottleneck, scale=0.1, dropout=0.0).double()
    down, up = adapter.layers[0][0], adapter.layers[0][-1]
    with torch.no_grad():
        for layer, name in ((down, "down_proj"), (up, "up_proj")):
            layer.weight.copy_(inputs["adapter"][f"{name}.weight"])
            layer.bias.copy_(inputs["adapter"][f"{name}.bias"])
    out = block(inputs["x"])
    torch.testing.assert_close(out.detach(), reference["out"], **TOL)
    (out * inputs["upstream"]).sum().backward()
    for layer, name in ((down, "down_proj"), (up, "up_proj")):
        torch.testing.assert_close(layer.weight.grad, reference["grads"][f"{name}.weight"], **TOL)
        torch.testing.assert_close(layer.bias.grad, reference["grads"][f"{name}.bias"], **TOL)


def test_the_emr_merge_equals_tunas(stored):
    """``emr_merge`` over three tasks' tensors (a zero one among them): the same unified tensors."""
    tasks, reference = stored["inputs"]["emr"], stored["reference"]["emr"]
    for name in tasks[0]:
        torch.testing.assert_close(emr_merged(torch.stack([t[name] for t in tasks])), reference[name], rtol=0, atol=0)


def test_the_orthogonality_term_equals_tunas(stored):
    """``orth_loss`` over 12 blocks and two earlier tasks, and the part's term with its weight."""
    orth, reference = stored["inputs"]["orth"], stored["reference"]["orth"]
    torch.testing.assert_close(orthogonality(orth["current"], orth["earlier"]), reference["raw"], **TOL)
    current = [torch.nn.Parameter(u.clone()) for u in orth["current"]]
    part = TaskSelection(current, current, TaskSelectionPart(orth_weight=orth["reg"]))
    for earlier in orth["earlier"]:
        for p, kept in zip(current, earlier):
            p.data.copy_(kept)
        part.end_task(0, None)
    for p, now in zip(current, orth["current"]):
        p.data.copy_(now)
    part.begin_task(orth["task"])
    term = part.auxiliary_loss(object())
    torch.testing.assert_close(term, reference["weighted"], rtol=1e-5, atol=0)
    term.backward()
    assert all(p.grad is not None for p in current), "the term trains the current up-projections"


def test_the_entropy_based_selection_predicts_as_tunas(stored):
    """TUNA's ``_eval_cnn`` after task 2 (each task's adapters, least entropy, plus the current
    ones' softmax): the part's prediction rule ranks the classes the same (its top 5)."""
    inputs, reference = stored["inputs"]["selection"], stored["reference"]["selection"]
    table = inputs["features"]
    head = CosineHead(table.shape[-1], inputs["weight"].shape[0], inputs["scale"])
    with torch.no_grad():
        head.weight.copy_(inputs["weight"])
    which = torch.nn.Parameter(torch.zeros(()))  # the pass's parameters: which row of features it gives
    part = TaskSelection([which], [], TaskSelectionPart())
    for task in range(3):
        which.data.fill_(task)
        part.end_task(task, None)
    which.data.fill_(3)  # the current parameters: TUNA's pass with its current adapter
    again = lambda: head(table[int(which.item())])  # noqa: E731
    with torch.no_grad():
        out = part.predict(again(), table[3], slice(0, 9), again)
    assert torch.equal(out.topk(5, dim=1).indices, reference)
    assert int(which.item()) == 3, "the current parameters are back after the passes"


def test_tunas_alignment_equals_tunas(stored):
    """``_compute_mean`` and ``classifer_align`` over three tasks on its bias-free cosine heads: 7
    epochs under a cosine of half period 5 (TUNA's ``T_max``), its code's mean decay (``decay`` on),
    plain cross-entropy on 20 cos: the same statistics and aligned heads, to 1e-5."""
    inputs, reference = stored["inputs"]["alignment"], stored["reference"]["alignment"]
    cfg = load_config(DIGITS, ["model.method.kind=tuna", f"model.method.parts.align.epochs={inputs['crct_epochs']}",
                               f"model.method.parts.align.samples_per_class={5 * inputs['batch_size']}",
                               "model.method.parts.align.shrink_old_means=tuna", "model.method.parts.align.objective=ce"]
                      ).model.method.chosen_parts()["align"]
    assert (cfg.lr, cfg.cosine_epochs, cfg.temperature, cfg.weight_decay) == (inputs["ca_lr"], 5, None, inputs["weight_decay"])
    assert_aligns_as_reference(ClassifierAlignment(cosine_head(inputs["weight"], inputs["scale"]), cfg), inputs, reference)


def test_tunas_code_run_now_gives_the_stored_result(tmp_path, stored):
    """The stored result is what TUNA's code gives (run beside aepg when its authors' release is at
    $AEPG_REFERENCES/TUNA)."""
    fresh = reference_result("tuna.py", REFERENCES / "TUNA", "models/tuna.py", tmp_path)
    assert_same_result(fresh, stored["reference"])
    torch.testing.assert_close(fresh["orth"]["weighted"], stored["reference"]["orth"]["weighted"], rtol=1e-6, atol=0)


def test_tuna_brings_its_head_and_parts():
    method = load_config(DIGITS, ["model.method.kind=tuna"]).model.method
    assert list(method.chosen_parts()) == ["select", "align"] and (method.head, method.bottleneck) == ("cosine", 16)
    align = method.chosen_parts()["align"]
    assert (align.epochs, align.cosine_epochs, align.lr, align.temperature, align.keep_aligned_head) == (30, 5, 0.005, None, True)


TUNA = [*TINY, "model.method.kind=tuna", "model.method.parts.select.orth_weight=0.001"]


def test_tuna_runs_under_ce_with_the_merged_universal_adapter(workdir):
    result = run_aepg(["train", DIGITS, *TUNA, "objective.kind=ce", "model.method.parts.select.universal=merged"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final/last_accuracy" in finals(workdir)
    params = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_runs(["1"])[0].data.params
    assert (params["model.method.parts.select.universal"], params["model.method.head"]) == ("merged", "cosine")


def test_tuna_under_aepg_resumed_after_its_second_task_ends_as_an_uninterrupted_one(workdir):
    """Resumed where the part holds two tasks' adapters."""
    overrides = [*TUNA, "objective.kind=aepg", "benchmark.num_tasks=3", "scaling.torch_threads=1"]
    assert_resumed_ends_as_uninterrupted(workdir, overrides, 3, after=2)

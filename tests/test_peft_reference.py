"""Each PEFT module and the accuracy metric pinned to its reference code's behaviour on small
hand-made tensors (docs/methods.md lists the references and the remaining differences)."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from aepg.config import MethodConfig, load_config, method_config
from aepg.metrics import accuracy_after_each_task, summarize
from aepg.models.classifier import ContinualClassifier, build_model
from aepg.models.peft.attach import attach_method
from aepg.models.peft.base import module_of
from aepg.models.peft.base import compensate, prefixed_attention
from aepg.models.peft.coda import orthogonality_penalty, orthonormal_rows
from aepg.models.peft.base import batchwise
from aepg.models.parts.lae import OnlineOfflinePair

from conftest import CONFIGS

DIM, HEADS, DEPTH = 32, 4, 6


def tiny_vit(**peft) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=8,
                                 embed_dim=DIM, num_heads=HEADS, depth=DEPTH)
    return attach_method(backbone, method_config(**peft), num_tasks=3).eval()


def randomise(module: torch.nn.Module) -> None:
    """Give every parameter of ``module`` non-trivial values (zero-initialised ones included)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))


# -- LoRA as in LAE ---------------------------------------------------------------------------

def test_kv_lora_changes_only_the_key_and_value_rows():
    vit = tiny_vit(kind="lora", rank=2)
    lora = module_of(vit)
    assert len(lora.key) == len(lora.value) == 5  # blocks 0-4
    for pair in (*lora.key, *lora.value):
        assert pair.A.shape == (2, DIM) and pair.B.shape == (DIM, 2)
        assert torch.count_nonzero(pair.B) == 0 and pair.scale.scale.item() == 1.0
        bound = 1 / math.sqrt(DIM)  # Kaiming-uniform with a = sqrt(5) on a (r, d) matrix
        assert pair.A.abs().max() <= bound and pair.A.abs().max() > bound / 2
    randomise(lora)
    qkv = vit.blocks[3].attn.qkv
    x = torch.randn(2, 5, DIM)
    with torch.no_grad():
        adapted = qkv(x)
        with lora.disabled():
            plain = qkv(x)
        k, v = lora.key[3], lora.value[3]
        update = torch.cat([torch.zeros(DIM, DIM), k.scale.scale * k.B @ k.A, v.scale.scale * v.B @ v.A])
        expected = F.linear(x, qkv.weight + update, qkv.bias)  # LAE's KVLoRA.forward
    torch.testing.assert_close(adapted, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(adapted[..., :DIM], plain[..., :DIM]), "the query rows changed"
    assert not torch.allclose(adapted[..., DIM:2 * DIM], plain[..., DIM:2 * DIM])
    assert not torch.allclose(adapted[..., 2 * DIM:], plain[..., 2 * DIM:])
    # Block 5 is not adapted.
    with torch.no_grad():
        out5 = vit.blocks[5].attn.qkv(x)
    torch.testing.assert_close(out5, F.linear(x, vit.blocks[5].attn.qkv.weight, vit.blocks[5].attn.qkv.bias))


def test_lora_on_named_targets_or_other_families_is_hf_peft():
    vit = tiny_vit(kind="lora", target_modules=["attn.qkv"])
    assert module_of(vit) is None and any("lora_A" in n for n, _ in vit.named_parameters())


# -- prefix as in LAE -------------------------------------------------------------------------

def test_compensatory_attention_renormalises_only_the_prefix_columns():
    attn = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.1, 0.3]])
    out = compensate(attn, 1, 3)
    torch.testing.assert_close(out[:, [0, 3]], attn[:, [0, 3]])
    torch.testing.assert_close(out[:, 1:3].sum(-1), torch.ones(2))
    torch.testing.assert_close(out[0, 1:3], torch.tensor([0.4, 0.6]))
    assert torch.equal(compensate(torch.zeros(1, 3), 0, 2), torch.zeros(1, 3)), "the clamp keeps 0 / 0 finite"


def test_prefix_attention_equals_the_formula():
    vit = tiny_vit(kind="prefix", length=3)
    prefix = module_of(vit)
    assert len(prefix.keys) == 5 and prefix.keys[0].shape == (3, DIM)
    assert 0 <= min(p.min().item() for p in prefix.keys) and max(p.max().item() for p in prefix.values) <= 0.01
    assert all(s.scale.item() == 1.0 for s in (*prefix.key_scales, *prefix.value_scales))
    with torch.no_grad():
        prefix.key_scales[0].scale.fill_(1.5)
        for p in (*prefix.keys, *prefix.values):
            p.normal_()
    attn = vit.blocks[0].attn
    x = torch.randn(2, 5, DIM)
    with torch.no_grad():
        out = attn(x)
        # By hand: q, k, v per head; prefix keys (times their scale) and values after position 1.
        B, N, H, D = 2, 5, HEADS, DIM // HEADS
        q, k, v = attn.qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)
        pk = (1.5 * prefix.keys[0]).reshape(1, 3, H, D).transpose(1, 2).expand(B, -1, -1, -1)
        pv = prefix.values[0].reshape(1, 3, H, D).transpose(1, 2).expand(B, -1, -1, -1)
        k = torch.cat([k[:, :, :1], pk, k[:, :, 1:]], dim=2)
        v = torch.cat([v[:, :, :1], pv, v[:, :, 1:]], dim=2)
        weights = (q @ k.transpose(-2, -1) / math.sqrt(D)).softmax(-1)
        weights[..., 1:4] = weights[..., 1:4] / weights[..., 1:4].sum(-1, keepdim=True)
        expected = attn.proj((weights @ v).transpose(1, 2).reshape(B, N, DIM))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    # Without a prefix the patched attention is timm's own.
    with torch.no_grad(), prefix.disabled():
        torch.testing.assert_close(attn(x), prefixed_attention(attn, x, None))


# -- adapters ---------------------------------------------------------------------------------

def test_lae_adapter_is_zero_at_init_and_sits_beside_the_attention():
    vit = tiny_vit(kind="adapter", bottleneck=3)
    adapter = module_of(vit)
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=8,
                              embed_dim=DIM, num_heads=HEADS, depth=DEPTH)
    plain.load_state_dict({k: v for k, v in vit.state_dict().items() if "aepg_peft" not in k})
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vit(images), plain.eval()(images))
    layer = adapter.layers[1]
    down, activation, up = layer[0]
    assert (down.in_features, down.out_features, up.out_features) == (DIM, 3, DIM)
    assert isinstance(activation, torch.nn.GELU) and torch.count_nonzero(down.bias) == 0
    assert layer[1].scale.item() == 1.0
    randomise(adapter)
    block, h = vit.blocks[1], torch.randn(2, 5, DIM)
    with torch.no_grad():
        expected = plain.blocks[1].attn(h) + layer[1].scale * up(F.gelu(down(h)))
        torch.testing.assert_close(block.attn(h), expected)
        x = torch.randn(2, 5, DIM)  # the adapter reads norm1(x), as the attention does
        residual = x + block.attn(block.norm1(x))
        torch.testing.assert_close(block(x), residual + block.mlp(block.norm2(residual)))


def test_adaptformer_reads_the_unnormalised_stream_beside_the_mlp():
    vit = tiny_vit(kind="adaptformer", bottleneck=3, adapter_scale=0.1)
    adapter = module_of(vit)
    randomise(adapter)
    block = vit.blocks[2]
    down, up = adapter.layers[2][0], adapter.layers[2][-1]
    x = torch.randn(2, 5, DIM)
    with torch.no_grad():
        mid = x + block.attn(block.norm1(x))
        with adapter.disabled():
            mlp = block.mlp(block.norm2(mid))
        expected = mid + mlp + 0.1 * up(F.relu(down(mid)))
        torch.testing.assert_close(block(x), expected)


# -- LAE's offline copy -----------------------------------------------------------------------

def lae_model(decay=0.9):
    cfg = method_config(kind="lora", rank=2, parts={"lae": {"decay": decay}})
    backbone = attach_method(tiny_vit(), cfg, num_tasks=3)
    model = ContinualClassifier(backbone, 6, 0.01, set())
    model.add_part("lae", OnlineOfflinePair(model.method_parameters(), decay))
    return model


def test_lae_offline_copy_starts_at_task_1_and_follows_by_ema():
    torch.manual_seed(0)
    model = lae_model(decay=0.9)
    online = model.method_parameters()
    images = torch.randn(3, 3, 16, 16)
    model.begin_task(0)
    randomise(model.method_module)
    model.after_step()
    assert not model.lae.is_active and all(torch.count_nonzero(o) == 0 for o in model.lae._offline())
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(images), model.head(model.backbone(images)), msg="no ensemble in task 0")
    model.begin_task(1)
    assert all(torch.equal(o, p) for o, p in zip(model.lae._offline(), online))
    before = [o.clone() for o in model.lae._offline()]
    with torch.no_grad():
        for p in online:
            p.add_(1.0)
    model.after_step()
    for o, b, p in zip(model.lae._offline(), before, online):
        torch.testing.assert_close(o, 0.9 * b + 0.1 * p)
    model.begin_task(2)  # the copy is made once, when task 1 starts
    for o, b, p in zip(model.lae._offline(), before, online):
        torch.testing.assert_close(o, 0.9 * b + 0.1 * p)
    # At test: the per-class maximum of the online and offline softmaxes.
    with torch.no_grad():
        on = model.head(model.backbone(images)).softmax(-1)
        with model.lae.offline():
            off = model.head(model.backbone(images)).softmax(-1)
        assert not torch.allclose(on, off)
        torch.testing.assert_close(model(images).exp(), torch.maximum(on, off))


# -- L2P, DualPrompt, CODA-Prompt -------------------------------------------------------------

def test_l2p_head_reads_the_mean_of_the_prompt_tokens():
    vit = tiny_vit(kind="l2p", pool_size=6, length=2, top_k=3, pull_weight=0.1)
    l2p = module_of(vit)
    for p in (l2p.prompts, l2p.keys):  # U(-1, 1) as in the reference
        assert -1 <= float(p.min()) < -0.5 and 0.5 < float(p.max()) <= 1
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        with l2p.disabled():
            query = vit(images)
        l2p.set_query(query)
        tokens = vit.forward_features(images)  # [CLS, 3 x 2 prompt tokens, 4 patches]
        assert tokens.shape[1] == 1 + 6 + 4
        l2p.set_query(query)
        torch.testing.assert_close(vit(images), tokens[:, 1:7].mean(dim=1))
        chosen = (F.normalize(query, dim=-1) @ F.normalize(l2p.keys, dim=-1).t()).topk(3).indices
        inserted = []  # what the blocks receive: [CLS], the chosen prompts in key-match order, the patches
        hook = vit.norm_pre.register_forward_hook(lambda module, inputs, output: inserted.append(output))
        l2p.set_query(query)
        vit.forward_features(images)
        hook.remove()
        torch.testing.assert_close(inserted[0][:, 1:7], l2p.prompts[chosen].flatten(1, 2))
    # The pull constraint: -0.1 * sum of the chosen keys' cosine similarities / batch.
    vit.train()
    l2p.set_query(query)
    vit(images)
    similarity = F.normalize(query, dim=-1) @ F.normalize(l2p.keys, dim=-1).t()
    torch.testing.assert_close(l2p.auxiliary_loss(), -0.1 * similarity.gather(1, chosen).sum() / 2)


def test_l2p_batchwise_selection_takes_the_most_chosen_prompts():
    chosen = torch.tensor([[0, 3], [3, 5], [3, 0], [5, 2]])
    assert batchwise(chosen, 2).tolist() == [[3, 0]] * 4  # 3 chosen three times; 0 and 5 twice, lower id first
    assert batchwise(torch.tensor([[4, 4]]), 2).tolist() == [[4, 4]]


def test_dualprompt_lengths_follow_the_reference_configs():
    def length(preset):
        return load_config(CONFIGS / "paper" / preset, ["model.weights=random"]).model.method.length

    assert length("imagenet_r_dualprompt.yaml") == 20 and length("cifar100_dualprompt.yaml") == 5


def test_dualprompt_expert_of_a_new_task_starts_as_the_previous_one():
    vit = tiny_vit(kind="dualprompt", length=4, g_length=2, pull_weight=1.0)
    dual = module_of(vit)
    for p in (dual.general, dual.experts, dual.keys):
        assert -1 <= float(p.min()) < -0.5 and 0.5 < float(p.max()) <= 1
    assert dual.general.shape == (2, 2, 2, DIM) and dual.experts.shape == (3, 3, 2, 4, DIM)
    assert not torch.equal(dual.experts[1], dual.experts[0])
    dual.begin_task(1)
    assert torch.equal(dual.experts[1], dual.experts[0])
    # Training pulls the current task's key to the query: -1.0 * mean cosine.
    dual.train()
    query = torch.randn(4, DIM)
    dual.set_query(query)
    torch.testing.assert_close(dual.auxiliary_loss(), -F.cosine_similarity(query, dual.keys[1][None]).mean())


@pytest.mark.parametrize("batchwise_prompt", [False, True])
def test_dualprompt_test_time_expert_is_per_sample_or_the_batch_majority(batchwise_prompt):
    dual = module_of(tiny_vit(kind="dualprompt", batchwise_prompt=batchwise_prompt))
    dual.begin_task(1)
    dual.begin_task(2)
    with torch.no_grad():
        dual.keys.copy_(torch.eye(3, DIM))
    dual.eval()
    dual.set_query(torch.eye(3, DIM)[[2, 0, 2, 1]])  # samples matching experts 2, 0, 2, 1
    assert dual.expert.tolist() == ([2, 2, 2, 2] if batchwise_prompt else [2, 0, 2, 1])


def test_coda_slices_start_orthonormal_and_the_penalty_follows_the_reference():
    previous = orthonormal_rows(torch.zeros(0, 12), 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(previous @ previous.t(), torch.eye(3), atol=1e-5, rtol=0)
    trained = previous + 0.3  # earlier rows after training: no longer orthonormal
    new = orthonormal_rows(trained, 4, torch.Generator().manual_seed(1))
    torch.testing.assert_close(new @ new.t(), torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(new @ trained.t(), torch.zeros(4, 3), atol=1e-5, rtol=0)
    rows = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert float(orthogonality_penalty(rows)) == pytest.approx((0 + 1 + 1 + 1) / 4)  # X X^T = [[1, 1], [1, 2]]

    vit = tiny_vit(kind="coda", pool_size=6, length=2, ortho_weight=0.0)
    coda = module_of(vit)
    for tensor in (coda.components, coda.keys, coda.attention):
        rows = tensor.detach().flatten(2)[0, :2]  # task 0's slice of block 0
        torch.testing.assert_close(rows @ rows.t(), torch.eye(2), atol=1e-5, rtol=0)
        assert torch.count_nonzero(tensor.detach().flatten(2)[:, 2:]) == 0  # later slices wait for their task
    coda.begin_task(1)
    rows = coda.keys.detach()[0, :4]
    torch.testing.assert_close(rows @ rows.t(), torch.eye(4), atol=1e-5, rtol=0)
    coda.train()
    coda.set_query(torch.randn(2, DIM))
    assert coda.auxiliary_loss() == 0.0, "the orthogonality penalty is off by default"


# -- accuracy -----------------------------------------------------------------------------------

def test_pooled_accuracy_differs_from_the_task_mean_as_by_hand():
    R = [[0.9], [0.5, 0.8]]
    sizes = [10, 30]  # task 1 has three times the test samples of task 0
    assert accuracy_after_each_task(R, sizes) == pytest.approx([0.9, (5 + 24) / 40])
    summary = summarize(R, sizes)
    assert summary["last_accuracy"] == pytest.approx(29 / 40)
    assert summary["avg_incremental_accuracy"] == pytest.approx((0.9 + 29 / 40) / 2)
    assert summary["task_mean_accuracy"] == pytest.approx(0.65)
    assert summary["forgetting"] == pytest.approx(0.4) and summary["bwt"] == pytest.approx(-0.4)


# -- InfLoRA ----------------------------------------------------------------------------------------

class Inputs:
    """A task's training data as ``end_task`` and ``prepare_task`` read it (``TaskData``), for a bare backbone."""

    def __init__(self, backbone, images):
        self.backbone, self.images = backbone, images

    def batches(self):
        yield self.images, torch.zeros(len(self.images), dtype=torch.long)

    def features(self):
        with torch.no_grad():
            for x, y in self.batches():
                yield self.backbone(x), y

    def sum(self, tensor):
        return tensor


def attention_inputs(vit, images) -> list[torch.Tensor]:
    """The reference's ``cur_matrix`` of every block, up to its scale: sum of x x^T over the tokens
    its attention reads."""
    found = []
    hooks = [block.attn.register_forward_pre_hook(lambda _, args: found.append(args[0].reshape(-1, DIM)))
             for block in vit.blocks]
    with torch.no_grad():
        vit(images)
    for hook in hooks:
        hook.remove()
    return [x.T @ x for x in found]


def subspace(rows: torch.Tensor) -> torch.Tensor:
    """The projection onto the span of orthogonal rows (sign and order free)."""
    q = torch.linalg.qr(rows.T.double())[0]
    return q @ q.T


def test_inflora_builds_each_task_a_from_its_inputs_orthogonal_to_earlier_tasks():
    vit = tiny_vit(kind="inflora", rank=3, threshold=0.9)
    lora = module_of(vit)
    assert lora.A.shape == (3, DEPTH, 2, 3, DIM) and len(lora.B) == 3  # every block, as the reference
    first, second = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    lora.begin_task(0)
    covariances = attention_inputs(vit, first)
    lora.prepare_task(0, Inputs(vit, first))
    for slot, covariance in enumerate(covariances):
        a = lora.A[0, slot, 0]
        assert torch.equal(a, lora.A[0, slot, 1])  # the key's and the value's A are the same
        torch.testing.assert_close(a @ a.T, torch.eye(3) / 3, atol=1e-5, rtol=0)  # U_r^T / sqrt(3)
        top = torch.linalg.eigh(covariance.double())[1][:, -3:].T
        torch.testing.assert_close(subspace(a), subspace(top), atol=1e-4, rtol=0)
    lora.B[0].data.normal_()  # as if trained
    lora.end_task(0, Inputs(vit, first))
    assert (lora.basis_width > 0).all()
    lora.begin_task(1)
    assert [id(p) for p in lora.frozen_parameters()] == [id(lora.B[0]), id(lora.B[2])]
    lora.prepare_task(1, Inputs(vit, second))
    for slot in range(DEPTH):
        width = int(lora.basis_width[slot])
        basis = lora.basis[slot, :, :width]
        torch.testing.assert_close(basis.T @ basis, torch.eye(width), atol=1e-4, rtol=0)
        a = lora.A[1, slot, 0]
        if lora.retain[slot]:  # the basis spans the free space: the new rows lie in it
            torch.testing.assert_close(a @ basis @ basis.T, a, atol=1e-4, rtol=0)
        else:  # the basis spans the old tasks' inputs: the new rows are orthogonal to it
            assert (a @ basis).abs().max() < 1e-4

    # The projection adds x (sum_t B_t A_t)^T to the key and value rows, over the tasks so far.
    lora.B[1].data.normal_()
    qkv, x = vit.blocks[2].attn.qkv, torch.randn(2, 5, DIM)
    key = sum(lora.B[t][2, 0] @ lora.A[t, 2, 0] for t in range(2))
    value = sum(lora.B[t][2, 1] @ lora.A[t, 2, 1] for t in range(2))
    with torch.no_grad():
        expected = F.linear(x, qkv.weight + torch.cat([torch.zeros(DIM, DIM), key, value]), qkv.bias)
        torch.testing.assert_close(qkv(x), expected, atol=1e-4, rtol=1e-4)


def test_dualgpm_keeps_the_directions_the_threshold_asks_for():
    from aepg.models.peft.inflora import update_basis

    eye = torch.eye(8, dtype=torch.float64)
    spectrum = torch.diag(torch.tensor([8, 4, 2, 1, 0.5, 0.25, 0.125, 0.0625], dtype=torch.float64))
    # First task: the squared singular values' cumulative share is 0.75, 0.94, 0.98, ...: two stay under 0.95.
    basis, retain = update_basis(torch.zeros(8, 0, dtype=torch.float64), False, spectrum, 0.95, first=True)
    assert not retain and basis.shape == (8, 2)
    torch.testing.assert_close(subspace(basis.T), subspace(eye[:2]))
    # A second task whose inputs lie along e3: its one direction joins the basis.
    basis, retain = update_basis(basis, False, 8 * torch.diag(eye[2]), 0.95, first=False)
    assert not retain and basis.shape == (8, 3)
    torch.testing.assert_close(subspace(basis.T), subspace(eye[:3]))
    # A flat spectrum at a high threshold needs more than half the dimensions: the complement is kept.
    basis, retain = update_basis(torch.zeros(8, 0, dtype=torch.float64), False, eye.clone(), 0.9, first=True)
    assert retain and basis.shape == (8, 1)  # 7 directions protected, 1 free
    # Inputs along the free direction use it up when they hold more than 1 - threshold of the energy.
    free = basis[:, 0]
    basis, retain = update_basis(basis, True, torch.outer(free, free) + 1e-3 * eye, 0.9, first=False)
    assert retain and basis.shape == (8, 0)


# -- RanPAC -----------------------------------------------------------------------------------------

class Features:
    """A task's data as ``end_task`` reads it, given as hand-made features."""

    def __init__(self, features, labels):
        self.items = [(features, labels)]

    def features(self):
        return iter(self.items)

    def sum(self, tensor):
        return tensor


def test_ranpac_head_is_the_ridge_solution_over_every_task_so_far():
    from aepg.models.peft.ranpac import RIDGES

    vit = tiny_vit(kind="ranpac", bottleneck=4, projection_dim=16)
    ranpac = module_of(vit)
    ranpac.set_num_classes(4)
    assert len(ranpac.adapter.layers) == DEPTH  # the adapter is on every block, as the reference's
    assert ranpac.trains(0) and not ranpac.trains(1)
    first, second = torch.randn(20, DIM), torch.randn(30, DIM)
    labels = torch.tensor([0, 1] * 10), torch.tensor([2, 3] * 15)
    ranpac.begin_task(0)
    assert ranpac.frozen_parameters() == []
    ranpac.end_task(0, Features(first, labels[0]))
    ranpac.begin_task(1)
    assert {id(p) for p in ranpac.frozen_parameters()} == {id(p) for p in ranpac.adapter.parameters()}
    ranpac.end_task(1, Features(second, labels[1]))

    H = torch.relu(torch.cat([first, second]).double() @ ranpac.projection.double())
    Y = F.one_hot(torch.cat(labels), 4).double()
    ridge = float(ranpac.ridge)
    assert ridge in RIDGES
    expected = torch.linalg.solve(H.T @ H + ridge * torch.eye(16, dtype=torch.float64), H.T @ Y).T
    torch.testing.assert_close(ranpac.head.double(), expected, atol=1e-3, rtol=1e-3)
    # A prediction is h W_out^T over all classes, whatever the trained linear head says.
    x = torch.randn(3, DIM)
    torch.testing.assert_close(ranpac.predict(torch.zeros(3, 4), x, slice(None), again=None),
                               (torch.relu(x @ ranpac.projection) @ ranpac.head.T))


# -- SD-LoRA ----------------------------------------------------------------------------------------

def test_sd_lora_keeps_earlier_directions_and_trains_their_magnitudes():
    vit = tiny_vit(kind="sd_lora", rank=2, init_magnitude=0.8)
    lora = module_of(vit)
    assert len(lora.A) == 3 and lora.A[0].shape == (DEPTH, 2, 2, DIM)  # every block, query and value
    assert all(torch.count_nonzero(b) == 0 for b in lora.B)
    bound = 1 / math.sqrt(DIM)  # Kaiming-uniform with a = sqrt(5)
    assert lora.A[1].abs().max() <= bound
    randomise(lora)
    lora.begin_task(1)
    lora.prepare_task(1, None)
    assert torch.equal(lora.magnitude.detach(), torch.full((3,), 0.8))  # every magnitude restarts
    with torch.no_grad():
        lora.magnitude.copy_(torch.tensor([1.5, 0.7, 9.0]))
    frozen = {id(p) for p in lora.frozen_parameters()}
    assert frozen == {id(lora.A[0]), id(lora.B[0]), id(lora.A[2]), id(lora.B[2])}

    qkv, x = vit.blocks[4].attn.qkv, torch.randn(2, 5, DIM)
    A, B, m = lora.A, lora.B, lora.magnitude

    def update(part):  # m_1 B_1 A_1 + m_0 B_0 A_0 / (|B_0| |A_0|)
        earlier = B[0][4, part] @ A[0][4, part] / (B[0][4, part].norm() * A[0][4, part].norm())
        return m[1] * B[1][4, part] @ A[1][4, part] + m[0] * earlier

    for p in lora.parameters():
        p.requires_grad_(id(p) not in frozen)
    adapted = qkv(x)
    with torch.no_grad():
        expected = F.linear(x, qkv.weight + torch.cat([update(0), torch.zeros(DIM, DIM), update(1)]), qkv.bias)
    torch.testing.assert_close(adapted.detach(), expected, atol=1e-4, rtol=1e-4)  # keys untouched
    adapted.square().sum().backward()
    assert lora.magnitude.grad[0] != 0 and lora.magnitude.grad[1] != 0 and lora.magnitude.grad[2] == 0
    assert lora.A[1].grad.abs().sum() > 0 and lora.B[1].grad.abs().sum() > 0
    assert lora.A[0].grad is None and lora.B[0].grad is None


# -- trainable parameters of the paper's presets on ViT-B/16 --------------------------------------

D, BLOCKS = 768, 5


def expected_peft_params(peft: MethodConfig, num_tasks: int) -> int:
    """By hand, from the ViT-B/16 width and the preset's settings."""
    if peft.kind == "lora":  # key and value pairs (r x d, d x r) and a scale each, per block
        return BLOCKS * 2 * (2 * peft.rank * D + 1)
    if peft.kind == "adapter":  # down (d x 5 + 5), up (5 x d + d), a scale
        return BLOCKS * (D * peft.bottleneck + peft.bottleneck + peft.bottleneck * D + D + 1)
    if peft.kind == "prefix":  # key and value prefixes (length x d) and their scales
        return BLOCKS * 2 * (peft.length * D + 1)
    if peft.kind == "l2p":  # prompts and keys
        return peft.pool_size * peft.length * D + peft.pool_size * D
    if peft.kind == "dualprompt":  # general prefixes (blocks 0-1), experts per task (2-4), keys per task
        return 2 * 2 * peft.g_length * D + num_tasks * 3 * 2 * peft.length * D + num_tasks * D
    if peft.kind == "coda":  # components, keys and attention vectors per block
        return BLOCKS * (peft.pool_size * peft.length * D + 2 * peft.pool_size * D)
    if peft.kind == "inflora":  # per task, per block: key and value B (d x r); A is built, not trained
        return num_tasks * BLOCKS * 2 * D * peft.rank
    if peft.kind == "sd_lora":  # per task, per block: query and value A (r x d) and B (d x r); a magnitude per task
        return num_tasks * (len(peft.chosen_blocks(12)) * 2 * 2 * D * peft.rank + 1)
    if peft.kind == "ranpac":  # the first task's adapter per block: down (d x b + b), up (b x d + d)
        return len(peft.chosen_blocks(12)) * (D * peft.bottleneck + peft.bottleneck + peft.bottleneck * D + D)
    raise AssertionError(peft.kind)


METHODS = sorted(p.stem for p in (CONFIGS / "paper" / "peft").glob("*.yaml"))
PRESETS = sorted(p.name for p in (CONFIGS / "paper").glob("*.yaml") if p.stem.rsplit("_", 1)[-1] in METHODS)


def test_there_is_a_preset_per_benchmark_and_method():
    assert len(PRESETS) == 4 * len(METHODS) and len(METHODS) >= 8


@pytest.mark.parametrize("preset", PRESETS)
def test_paper_preset_trainable_parameters_on_vit_b16(preset):
    cfg = load_config(CONFIGS / "paper" / preset, ["model.weights=random"])
    classes = cfg.benchmark.num_classes()
    with torch.device("meta"):  # shapes only: no memory, no download
        model, _ = build_model(cfg.model, classes, cfg.benchmark.num_tasks)
    counts = model.parameter_counts()
    assert counts["params_method"] == expected_peft_params(cfg.model.method, cfg.benchmark.num_tasks)
    assert counts["params_head"] == D * classes + classes
    if cfg.model.method.kind == "lora" and "lae" not in cfg.model.method.chosen_parts():
        assert counts["params_method"] == 61_440 + 10

"""Run MACIL's own learner pieces (fwu11/MACIL: ``models/attention.py``, ``models/losses.py``,
``models/network.py``, ``methods/macil.py``) on small made-up inputs and save what they gave:
``python macil.py MACIL_DIR OUT.pt``.

tests/test_macil.py compares aepg's method module, cosine head, ``drift`` and ``align`` parts with the
result, and keeps one (tests/data/macil.pt) so that the comparison runs without the reference.
MACIL's code runs as it is; only what it reads from a data set and a pretrained ViT is stood in for:
a data manager whose images are the features themselves, networks whose feature extractor is the
identity, and its ViT module (which needs easydict and timm 0.6's paths) by placeholders, since
only ``MANet``'s heads and forward over them are used.
"""

import sys
import types
from pathlib import Path
from types import MethodType, SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from slca_alignment import Images, made_up_inputs, save_run  # noqa: E402

TASK_SIZE, TASKS, DIM, HEADS, TOKENS, RANK = 3, 3, 8, 2, 5, 2


def made_up() -> dict:
    g = torch.Generator().manual_seed(11)
    r = lambda *shape, scale=1.0: scale * torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    spd = lambda: (lambda m: m @ m.T / DIM + 0.5 * torch.eye(DIM, dtype=torch.float64))(r(DIM, DIM))  # noqa: E731
    attention = {"x": r(3, TOKENS, DIM), "qkv_weight": r(3 * DIM, DIM, scale=0.3), "qkv_bias": r(3 * DIM, scale=0.1),
                 "proj_weight": r(DIM, DIM, scale=0.3), "proj_bias": r(DIM, scale=0.1),
                 "A": r(2, 2, RANK, DIM, scale=0.3), "B": r(2, 2, DIM, RANK, scale=0.3), "upstream": r(3, TOKENS, DIM)}
    cosface = {"features": r(6, DIM), "weight": r(TASK_SIZE, DIM), "labels": torch.tensor([0, 1, 2, 2, 1, 0]), "scale": 20.0}
    labels = torch.tensor([0, 0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1])
    mahalanobis = {"old": r(12, DIM), "new": r(12, DIM), "labels": labels, "inverse": torch.stack([spd() for _ in range(3)])}
    patches = {"new": r(3, TOKENS, DIM), "old": r(3, TOKENS, DIM), "features": r(3, DIM)}
    drift = {"old": r(20, DIM).float(), "new": r(20, DIM).float(), "means": r(6, DIM).float(), "sigma": 1.0}
    drift["near"] = drift["means"][:, None, :].expand(6, 4, DIM).reshape(-1, DIM)[:20] + 0.5 * r(20, DIM).float()
    alignment = made_up_inputs(tasks=TASKS)
    alignment["ca_epochs"] = 3
    return {"attention": attention, "cosface": cosface, "mahalanobis": mahalanobis, "patches": patches,
            "drift": drift, "alignment": alignment}


def import_macil(macil_dir: str):
    sys.path.insert(0, macil_dir)
    import timm.layers.weight_init

    sys.modules.setdefault("timm.models.layers.weight_init", timm.layers.weight_init)
    vit = types.ModuleType("models.vit")  # the pretrained ViT: not used here
    for name in ("VisionTransformer", "PatchEmbed"):
        setattr(vit, name, torch.nn.Module)
    for name in ("resolve_pretrained_cfg", "build_model_with_cfg", "checkpoint_filter_fn"):
        setattr(vit, name, None)
    sys.modules["models.vit"] = vit
    import methods.macil as macil
    import models.attention as attention
    import models.losses as losses
    import models.network as network
    return macil, attention, losses, network


def run_attention(attention, made: dict) -> dict:
    inputs = made["attention"]
    layer = attention.Attention_LoRA(DIM, num_heads=HEADS, qkv_bias=True, r=RANK, n_tasks=2).double()
    with torch.no_grad():
        layer.qkv.weight.copy_(inputs["qkv_weight"])
        layer.qkv.bias.copy_(inputs["qkv_bias"])
        layer.proj.weight.copy_(inputs["proj_weight"])
        layer.proj.bias.copy_(inputs["proj_bias"])
        for t in range(2):
            layer.lora_A_k[t].weight.copy_(inputs["A"][t, 0])
            layer.lora_A_v[t].weight.copy_(inputs["A"][t, 1])
            layer.lora_B_k[t].weight.copy_(inputs["B"][t, 0])
            layer.lora_B_v[t].weight.copy_(inputs["B"][t, 1])
    out = layer(inputs["x"], 1)
    (out * inputs["upstream"]).sum().backward()
    grads = {name: getattr(layer, name)[1].weight.grad.clone() for name in ("lora_A_k", "lora_A_v", "lora_B_k", "lora_B_v")}
    return {"out": out.detach(), "grads": grads}


def run_losses(losses, made: dict) -> dict:
    cos = made["cosface"]
    features, weight = cos["features"].clone().requires_grad_(), cos["weight"].clone().requires_grad_()
    logits = F.linear(F.normalize(features, p=2, dim=1), F.normalize(weight, p=2, dim=1))  # MANet's forward
    loss = losses.AngularPenaltySMLoss(loss_type="cosface", s=cos["scale"], m=0.0)(logits, cos["labels"])
    loss.backward()
    out = {"cosface": {"loss": loss.detach(), "features_grad": features.grad, "weight_grad": weight.grad}}

    maha = made["mahalanobis"]
    new = maha["new"].clone().requires_grad_()
    loss = losses.MahalanobisLoss(maha["inverse"])(maha["old"], new, maha["labels"])
    loss.backward()
    out["mahalanobis"] = {"loss": loss.detach(), "new_grad": new.grad}

    patches = made["patches"]
    new, features = patches["new"].clone().requires_grad_(), patches["features"].clone().requires_grad_()
    loss = losses.compute_angle_weighted_patch_distillation_loss(new, patches["old"], features)
    loss.backward()
    out["patches"] = {"loss": loss.detach(), "new_grad": new.grad, "features_grad": features.grad}
    return out


def run_learner(macil, network, made: dict) -> dict:
    """MACIL's inverse covariances (``_compute_class_invcov``), mean shift (``displacement``) and its
    statistics and alignment over the tasks (``_compute_class_mean``, ``_stage2_compact_classifier``)."""
    inputs = made["alignment"]
    features = inputs["features"]
    data_manager = SimpleNamespace(get_dataset=lambda classes, **_: (None, None, Images(features, list(classes))))
    identity = SimpleNamespace(eval=lambda: None, extract_vector=lambda x: x)
    learner = SimpleNamespace(class_num=TASK_SIZE, feature_dim=DIM, _device="cpu", _old_network=identity,
                              _network=identity, _known_classes=TASK_SIZE, _total_classes=2 * TASK_SIZE)
    for name in ("_extract_vectors_adv", "shrink_cov", "_compute_class_invcov", "_compute_class_mean", "displacement",
                 "_stage2_compact_classifier"):
        setattr(learner, name, MethodType(getattr(macil.Learner, name), learner))
    learner._extract_vectors = MethodType(macil.BaseLearner._extract_vectors, learner)
    inverse = learner._compute_class_invcov(data_manager)

    drift = made["drift"]
    gaps = {key: torch.as_tensor(learner.displacement(drift[key], drift["new"], drift["means"], drift["sigma"]))
            for key in ("old", "near")}

    heads = network.MANet.__new__(network.MANet)  # its heads and its forward over them, without its ViT
    torch.nn.Module.__init__(heads)
    heads.classifier_pool = torch.nn.ModuleList(torch.nn.Linear(DIM, TASK_SIZE, bias=False) for _ in range(TASKS))
    heads.numtask = 0
    with torch.no_grad():
        for t in range(TASKS):
            heads.classifier_pool[t].weight.copy_(inputs["weight"][t * TASK_SIZE:(t + 1) * TASK_SIZE])
    heads.extract_vector = lambda x: x
    heads.requires_grad_(False)
    learner._network = heads
    learner._class_means = None
    learner._compute_accuracy = lambda *args: 0.0
    learner.test_loader, learner.task_sizes, learner.logit_norm = None, [], 0.1
    aligned = []
    for task in range(TASKS):
        learner._cur_task, heads.numtask = task, task + 1
        learner._known_classes, learner._total_classes = task * TASK_SIZE, (task + 1) * TASK_SIZE
        learner.task_sizes.append(TASK_SIZE)
        learner._compute_class_mean(data_manager)
        if task:
            torch.manual_seed(inputs["seed"])
            learner._stage2_compact_classifier(TASK_SIZE, ca_epochs=inputs["ca_epochs"])
            aligned.append(torch.cat([head.weight.detach() for head in heads.classifier_pool[:task + 1]]).clone())
        heads.requires_grad_(False)  # _train's start: only the next task's head would train
    return {"inverse": inverse, "gaps": gaps, "means": learner._class_means.clone(),
            "covariances": learner._class_covs.clone(), "aligned": aligned}


def run(macil_dir: str, made: dict) -> dict:
    macil, attention, losses, network = import_macil(macil_dir)
    return {"attention": run_attention(attention, made), "losses": run_losses(losses, made),
            "learner": run_learner(macil, network, made)}


if __name__ == "__main__":
    save_run(run, made_up())

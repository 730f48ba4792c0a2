"""Run TUNA's own code (its authors' ViT-B/16 release, ``LAMDA-CL``'s first commit as kept in
``Ngahoang2005/ICCV2025-TUNA``: ``models/tuna.py``, ``backbone/vit_tuna.py``, ``backbone/linears.py``)
on small made-up inputs and save what it gave: ``python tuna.py TUNA_DIR OUT.pt``.

tests/test_tuna.py compares aepg's part ``select`` (EMR merge, orthogonality term, entropy-based
selection) and its alignment with the result, and keeps one (tests/data/tuna.pt) so that the
comparison runs without the reference. TUNA's code runs as it is; only what it reads from a data set
and a ViT is stood in for: a data manager whose images are the features themselves, and a backbone
that looks up each input's features under each adapter in a made-up table.
"""

import sys
from pathlib import Path
from types import MethodType, SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).parent))
from slca_alignment import Images, made_up_inputs, save_run  # noqa: E402

TASK_SIZE, TASKS, DIM, BLOCKS, RANK, IMAGES = 3, 3, 8, 12, 4, 10


def made_up() -> dict:
    g = torch.Generator().manual_seed(17)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    emr = [{"down": r(RANK, DIM), "up": r(DIM, RANK), "bias": torch.zeros(DIM)} for _ in range(TASKS)]
    orth = {"current": [r(DIM, RANK) for _ in range(BLOCKS)],
            "earlier": [[r(DIM, RANK) for _ in range(BLOCKS)] for _ in range(2)], "task": 2, "reg": 1e-3}
    # features of each input under task 0's, 1's and 2's adapters and the current one (4 passes)
    selection = {"features": r(TASKS + 1, IMAGES, DIM), "weight": 0.5 * r(TASK_SIZE * TASKS, DIM),
                 "labels": torch.arange(IMAGES) % (TASK_SIZE * TASKS), "scale": 20.0}
    w = lambda *shape: 0.3 * r(*shape).double()  # noqa: E731
    block = {"x": r(3, 5, DIM).double(), "upstream": r(3, 5, DIM).double(),
             "weights": {"norm1.weight": 1 + w(DIM), "norm1.bias": w(DIM), "q": w(DIM, DIM), "k": w(DIM, DIM),
                         "v": w(DIM, DIM), "q_bias": w(DIM), "k_bias": w(DIM), "v_bias": w(DIM), "proj.weight": w(DIM, DIM),
                         "proj.bias": w(DIM), "norm2.weight": 1 + w(DIM), "norm2.bias": w(DIM),
                         "fc1.weight": w(4 * DIM, DIM), "fc1.bias": w(4 * DIM), "fc2.weight": w(DIM, 4 * DIM),
                         "fc2.bias": w(DIM)},
             "adapter": {"down_proj.weight": w(RANK, DIM), "down_proj.bias": w(RANK), "up_proj.weight": w(DIM, RANK),
                         "up_proj.bias": w(DIM)}}
    alignment = made_up_inputs(tasks=TASKS)
    alignment.update({"crct_epochs": 7, "ca_lr": 0.005, "batch_size": 2, "weight_decay": 5e-4, "scale": 20.0})
    return {"emr": emr, "orth": orth, "selection": selection, "block": block, "alignment": alignment}


def import_tuna(tuna_dir: str):
    sys.path.insert(0, tuna_dir)
    import timm.layers.weight_init

    sys.modules.setdefault("timm.models.layers.weight_init", timm.layers.weight_init)
    import backbone.linears as linears
    import backbone.vit_tuna as vit_tuna
    import models.tuna as tuna
    return tuna, vit_tuna, linears


def run_block(vit_tuna, made: dict) -> dict:
    """A block of TUNA's ViT with its adapter beside the MLP (``ffn_option: parallel``, scale 0.1, no
    dropout): the output and the adapter's gradients."""
    from functools import partial

    inputs = made["block"]
    config = SimpleNamespace(ffn_adapt=True, ffn_option="parallel")
    block = vit_tuna.Block(DIM, 2, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), config=config).double()
    adapter = vit_tuna.Adapter(d_model=DIM, bottleneck=RANK, dropout=0.0, init_option="lora", adapter_scalar="0.1",
                               adapter_layernorm_option="none").double()
    weights = dict(inputs["weights"])
    with torch.no_grad():
        for name in ("q", "k", "v"):
            getattr(block.attn, f"{name}_proj").weight.copy_(weights.pop(name))
            getattr(block.attn, f"{name}_proj").bias.copy_(weights.pop(f"{name}_bias"))
        block.load_state_dict({**block.state_dict(), **{key.replace("proj.", "attn.proj.") if key.startswith("proj.")
                                                      else key: value for key, value in weights.items()}})
        adapter.load_state_dict(inputs["adapter"])
    out = block(inputs["x"], adapter)
    (out * inputs["upstream"]).sum().backward()
    return {"out": out.detach(), "grads": {name: p.grad.clone() for name, p in adapter.named_parameters()}}


def run_emr(vit_tuna, made: dict) -> dict:
    vectors = [vit_tuna.TaskVector(pretrained_state_dict=state) for state in made["emr"]]
    unified, _, _ = vit_tuna.emr_merge(vectors)
    return unified


def run_orth(tuna, made: dict) -> dict:
    orth = made["orth"]
    adapters = lambda ups: [SimpleNamespace(up_proj=SimpleNamespace(weight=up)) for up in ups]  # noqa: E731
    backbone = SimpleNamespace(cur_adapter=adapters(orth["current"]), adapter_list=[adapters(e) for e in orth["earlier"]])
    learner = SimpleNamespace(_cur_task=orth["task"], _network=SimpleNamespace(backbone=backbone))
    raw = tuna.Learner.orth_loss(learner, None)  # _init_train weighs it by reg exp(-(t + 1))
    return {"raw": raw, "weighted": raw * orth["reg"] * torch.exp(-torch.tensor(orth["task"] + 1, dtype=torch.float32))}


def heads(linears, weight: torch.Tensor, tasks: int):
    fc = linears.SimpleContinualLinear(DIM, TASK_SIZE)
    for _ in range(tasks - 1):
        fc.update(TASK_SIZE, freeze_old=False)
    with torch.no_grad():
        for t in range(tasks):
            fc.heads[t][0].weight.copy_(weight[t * TASK_SIZE:(t + 1) * TASK_SIZE])
    return fc


def run_selection(tuna, linears, made: dict) -> torch.Tensor:
    """TUNA's ``_eval_cnn`` after task 2: every task's adapter, then the current one."""
    inputs = made["selection"]
    table = inputs["features"]
    backbone = lambda x, adapter_id, train: {"features": table[adapter_id][x]}  # noqa: E731
    network = SimpleNamespace(backbone=backbone, fc=heads(linears, inputs["weight"], TASKS), eval=lambda: None)
    learner = SimpleNamespace(_cur_task=TASKS - 1, _total_classes=TASK_SIZE * TASKS, _network=network,
                              _device="cpu", topk=5, args={"scale": inputs["scale"]})
    loader = [(None, torch.arange(IMAGES), inputs["labels"])]
    predicted, _ = tuna.Learner._eval_cnn(learner, loader)
    return torch.as_tensor(predicted)


def run_alignment(tuna, linears, made: dict) -> dict:
    """TUNA's ``_compute_mean`` and ``classifer_align`` (its ``decay`` on, as on ImageNet-R) over the tasks."""
    inputs = made["alignment"]
    features = inputs["features"]
    data_manager = SimpleNamespace(get_dataset=lambda classes, **_: (None, None, Images(features, list(classes))))
    args = {"ca_storage_efficient_method": "covariance", "decay": True, "scale": inputs["scale"]}
    network = SimpleNamespace(fc=heads(linears, inputs["weight"], 1), eval=lambda: None)
    learner = SimpleNamespace(_network=network, _device="cpu", args=args, data_manager=data_manager, cls_mean={},
                              cls_cov={}, batch_size=inputs["batch_size"], crct_epochs=inputs["crct_epochs"],
                              ca_lr=inputs["ca_lr"], weight_decay=inputs["weight_decay"], _known_classes=0)
    aligned = []
    for task in range(TASKS):
        learner._cur_task, learner._total_classes = task, (task + 1) * TASK_SIZE
        if task:
            network.fc.update(TASK_SIZE, freeze_old=False)
            with torch.no_grad():
                network.fc.heads[task][0].weight.copy_(inputs["weight"][task * TASK_SIZE:(task + 1) * TASK_SIZE])
        MethodType(tuna.Learner._compute_mean, learner)(_Identity())
        if task:
            torch.manual_seed(inputs["seed"])
            tuna.Learner.classifer_align(learner, None)
            aligned.append(torch.cat([head[0].weight.detach() for head in network.fc.heads]).clone())
        learner._known_classes = learner._total_classes
    classes = TASK_SIZE * TASKS
    return {"means": torch.stack([learner.cls_mean[c] for c in range(classes)]),
            "covariances": torch.stack([learner.cls_cov[c] for c in range(classes)]), "aligned": aligned}


class _Identity:
    """The backbone's place in ``_compute_mean``: the images are their own features."""

    def eval(self):
        return self

    def __call__(self, x, adapter_id=None, train=False):
        return {"features": x}


def run(tuna_dir: str, made: dict) -> dict:
    tuna, vit_tuna, linears = import_tuna(tuna_dir)
    return {"emr": run_emr(vit_tuna, made), "orth": run_orth(tuna, made), "selection": run_selection(tuna, linears, made),
            "block": run_block(vit_tuna, made), "alignment": run_alignment(tuna, linears, made)}


if __name__ == "__main__":
    save_run(run, made_up())

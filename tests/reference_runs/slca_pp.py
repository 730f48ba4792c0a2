"""Run SLCA++'s own code (GengDavid/SLCA ``models/slca_pp.py``, ``convs/vits.py``) on small made-up
inputs and save what it gave: ``python slca_pp.py SLCA_DIR OUT.pt``.

tests/test_slca.py compares aepg's ``slca_pp`` method, ``sce`` objective and ``align`` part with the
result, and keeps one (tests/data/slca_pp.pt) so that the comparison runs without the reference:

- the backbone: SLCA++'s ViT (``VisionTransformer(lora_rank=4)``, its ``init_lora``) on a tiny
  timm ViT's weights, in float64: its features of a batch and the gradients of a probe of them
  with respect to every parameter SLCA++ trains (its name test: norm, bias, cls_token, lora);
- the loss: ``SLCApp._run`` for one step on given logits (its symmetric cross-entropy over the
  current task's columns): the loss and its gradient with respect to the logits;
- the alignment: ``SLCApp._stage2_compact_classifier`` and its head's ``update_scale`` over three
  tasks (slca_alignment.py's harness): the aligned head and the logits its scaled head gives.
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from slca_alignment import made_up_inputs, run_reference  # noqa: E402

TINY = dict(img_size=32, patch_size=16, embed_dim=16, depth=2, num_heads=2, num_classes=0)
RANK, HYBRID = 4, ("norm", "bias", "cls_token", "lora")


def backbone_inputs() -> dict:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY).double()
    generator = torch.Generator().manual_seed(1)
    state = {k: v + 0.02 * torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in model.state_dict().items()}
    bs = {f"blocks.{b}.{layer}": 0.05 * torch.randn(out, RANK, generator=generator, dtype=torch.float64)
          for b in range(TINY["depth"]) for layer, out in (("attn.qkv", 48), ("mlp.fc1", 64), ("mlp.fc2", 16))}
    return {"state": state, "B": bs, "x": torch.randn(3, 3, 32, 32, generator=generator, dtype=torch.float64),
            "probe": torch.randn(3, 16, generator=generator, dtype=torch.float64)}


def run_backbone(inputs: dict) -> dict:
    import convs.vits as vits

    model = vits.VisionTransformer(lora_rank=RANK, **TINY).double()
    missing, unexpected = model.load_state_dict(inputs["state"], strict=False)
    assert not unexpected and all("lora" in k for k in missing), (missing, unexpected)
    names = {"attn.qkv": "attn.lora_B", "mlp.fc1": "mlp.lora_1_B", "mlp.fc2": "mlp.lora_2_B"}
    with torch.no_grad():
        for b, block in enumerate(model.blocks):  # SLCApp.incremental_train, first task
            block.mlp.init_lora()
            block.attn.init_lora()
            for layer, name in names.items():
                model.get_parameter(f"blocks.{b}.{name}").copy_(inputs["B"][f"blocks.{b}.{layer}"])
    for n, p in model.named_parameters():  # SLCApp.__init__'s hybrid slow learner
        p.requires_grad = any(word in n for word in HYBRID)
    features = model(inputs["x"])["features"]
    (features * inputs["probe"]).sum().backward()
    return {"features": features.detach(), "trained": sorted(n for n, p in model.named_parameters() if p.requires_grad),
            "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad},
            "A": {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("_A")}}


def loss_inputs() -> dict:
    generator = torch.Generator().manual_seed(2)
    return {"logits": 3 * torch.randn(8, 9, generator=generator, dtype=torch.float64),
            "targets": torch.tensor([6, 7, 8, 6, 8, 7, 6, 6]), "known": 6, "sce_a": 1.0, "sce_b": 0.1}


def run_loss(inputs: dict) -> dict:
    import models.slca_pp as slca_pp

    slca_pp.epochs = 1
    logits = torch.nn.Parameter(inputs["logits"].clone())
    network = type("Network", (), {"train": lambda self: None,
                                   "__call__": lambda self, x, bcb_no_grad=False: {"logits": logits}})()
    seen = {}
    backward = torch.Tensor.backward

    def recorded(tensor, *args, **kwargs):  # the loss SLCApp._run back-propagates
        seen["loss"] = tensor.detach().clone()
        return backward(tensor, *args, **kwargs)

    optimizer = SimpleNamespace(zero_grad=lambda: None, step=lambda: seen.setdefault("grad", logits.grad.clone()))
    learner = SimpleNamespace(_network=network, _device="cpu", fix_bcb=False, _known_classes=inputs["known"],
                              sce_a=inputs["sce_a"], sce_b=inputs["sce_b"], _cur_task=1)
    torch.Tensor.backward = recorded
    try:
        slca_pp.SLCApp._run(learner, [(None, torch.zeros(len(inputs["targets"])), inputs["targets"])], None,
                            optimizer, SimpleNamespace(step=lambda: None))
    finally:
        torch.Tensor.backward = backward
    return seen


def alignment_inputs() -> dict:
    made = made_up_inputs(tasks=3)
    made["fc_scale_mu"] = 0.02
    made["test"] = made["features"][:, :2].reshape(-1, made["features"].shape[-1]).clone()
    return made


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    import timm.layers.weight_init  # SLCA imports it from timm's old path

    sys.modules.setdefault("timm.models.layers.weight_init", timm.layers.weight_init)
    made = {"backbone": backbone_inputs(), "loss": loss_inputs(), "alignment": alignment_inputs()}
    reference = {"backbone": run_backbone(made["backbone"]), "loss": run_loss(made["loss"]),
                 "alignment": run_reference(sys.argv[1], made["alignment"])}
    torch.save({"inputs": made, "reference": reference, "numpy": np.__version__, "torch": torch.__version__,
                "timm": timm.__version__}, sys.argv[2])

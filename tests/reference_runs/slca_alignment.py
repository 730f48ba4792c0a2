"""Run SLCA's own statistics and classifier alignment (GengDavid/SLCA) on small made-up features and
save what they gave: ``python slca_alignment.py SLCA_DIR OUT.pt``.

tests/test_align.py compares aepg's part with the result, and keeps one (tests/data/slca_alignment.pt)
so that the comparison runs without the reference. SLCA's code runs as it is; only what it would
read from a data set and a network is stood in for: a data manager whose images are the features
themselves and a network whose feature extractor is the identity, with SLCA's own head
(``convs.linears.SimpleContinualLinear``).
"""

import os
import sys
from types import SimpleNamespace

import numpy as np
import torch

DIM, TASK_SIZE, TASKS, PER_CLASS, SEED = 8, 3, 2, 12, 7


def made_up_inputs(tasks: int = TASKS) -> dict:
    generator = torch.Generator().manual_seed(0)
    classes = TASK_SIZE * tasks
    centres = 2.0 * torch.randn(classes, DIM, generator=generator)
    mixing = torch.randn(classes, DIM, DIM, generator=generator) / DIM ** 0.5
    features = torch.stack([centres[c] + torch.randn(PER_CLASS, DIM, generator=generator) @ mixing[c]
                            for c in range(classes)]).float()  # (class, image, dim)
    heads = [0.02 * torch.randn(TASK_SIZE, DIM, generator=generator) for _ in range(tasks)]
    return {"features": features, "weight": torch.cat(heads), "bias": torch.zeros(classes), "seed": SEED,
            "task_size": TASK_SIZE, "ca_epochs": 5, "logit_norm": 0.1}


def save_run(run, made: dict) -> None:
    """``python <harness>.py REFERENCE_DIR OUT.pt``: the made-up inputs and what ``run(REFERENCE_DIR,
    made)`` gave, with the versions that gave it."""
    out = os.path.abspath(sys.argv[2])
    torch.save({"inputs": made, "reference": run(os.path.abspath(sys.argv[1]), made), "numpy": np.__version__,
                "torch": torch.__version__}, out)


class Images(torch.utils.data.Dataset):
    """A data set of the classes' made-up features as their own images: (index, image, label)."""

    def __init__(self, features: torch.Tensor, classes: list[int]):
        self.items = [(i, features[c, i], c) for c in classes for i in range(features.shape[1])]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def run_reference(slca_dir: str, inputs: dict) -> dict:
    """SLCA's statistics and alignment over the tasks; with ``inputs["fc_scale_mu"]``, SLCA++'s
    alignment and head (``SLCApp``, its features scaled by task age), and after each alignment the
    logits its scaled head gives for ``inputs["test"]``."""
    sys.path.insert(0, slca_dir)
    import timm.layers.weight_init  # SLCA imports it from timm's old path

    sys.modules.setdefault("timm.models.layers.weight_init", timm.layers.weight_init)
    import models.slca as slca
    import models.slca_pp as slca_pp
    from convs.linears import SimpleContinualLinear
    from models.base import BaseLearner

    mu = inputs.get("fc_scale_mu", -1)
    slca.ca_epochs = slca_pp.ca_epochs = inputs["ca_epochs"]
    features = inputs["features"]
    tasks = len(inputs["bias"]) // TASK_SIZE

    data_manager = SimpleNamespace(get_dataset=lambda classes, **_: (None, None, Images(features, list(classes))))

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = SimpleContinualLinear(DIM, TASK_SIZE, scale_mu=mu)
            self.feature_dim = DIM
            self.new_head(0)

        def new_head(self, task):
            """The task's head (SLCA's ``update_fc``: one more head, the old ones frozen), given weights."""
            if task:
                self.fc.update(TASK_SIZE)
            with torch.no_grad():
                self.fc.heads[task][0].weight.copy_(inputs["weight"][task * TASK_SIZE:(task + 1) * TASK_SIZE])
                self.fc.heads[task][0].bias.copy_(inputs["bias"][task * TASK_SIZE:(task + 1) * TASK_SIZE])

        def extract_vector(self, x):
            return x

        def forward(self, x, bcb_no_grad=False, fc_only=False):
            return self.fc(x)

    learner = SimpleNamespace(_network=Network(), _device="cpu", _multiple_gpus=["cpu"], _known_classes=0,
                              _total_classes=0, _cur_task=-1, logit_norm=inputs["logit_norm"], task_sizes=[],
                              test_loader=None, _compute_accuracy=lambda *_: 0.0, fc_scale_mu=mu)
    learner.feature_dim = DIM
    learner._extract_vectors = lambda loader: BaseLearner._extract_vectors(learner, loader)
    saved = {"logits": []}
    fc = learner._network.fc
    for task in range(tasks):
        learner._network.new_head(task)
        learner._cur_task = task
        learner._total_classes = learner._known_classes + TASK_SIZE
        learner.task_sizes.append(TASK_SIZE)
        BaseLearner._compute_class_mean(learner, data_manager)
        if task > 0:
            torch.manual_seed(inputs["seed"])
            if mu > 0:  # as SLCApp.incremental_train: back up, align, scale; evaluate; recall
                fc.backup()
                slca_pp.SLCApp._stage2_compact_classifier(learner, TASK_SIZE)
                fc.update_scale()
                with torch.no_grad():
                    saved["logits"].append(fc(inputs["test"])["logits"][:, :learner._total_classes])
                saved.setdefault("aligned", []).append(
                    torch.cat([head[0].weight.detach() for head in fc.heads])[:learner._total_classes].clone())
                fc.recall()
            else:
                slca.SLCA._stage2_compact_classifier(learner, TASK_SIZE)
        learner._known_classes = learner._total_classes
    saved["means"] = torch.tensor(learner._class_means)
    saved["covariances"] = learner._class_covs.clone()
    saved["weight"] = torch.cat([head[0].weight.detach() for head in learner._network.fc.heads])
    saved["bias"] = torch.cat([head[0].bias.detach() for head in learner._network.fc.heads])
    return saved


if __name__ == "__main__":
    made = made_up_inputs()
    torch.save({"inputs": made, "reference": run_reference(sys.argv[1], made),
                "numpy": np.__version__, "torch": torch.__version__}, sys.argv[2])

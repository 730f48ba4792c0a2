"""Run LCA's own statistics, task-vector merging and alignment (tungts1101/LCA ``lca.py``,
``helper.py``) on small made-up inputs and save what they gave: ``python lca.py LCA_DIR OUT.pt``
(run it in a scratch folder: LCA's module makes ``checkpoints/`` and ``logs/`` where it runs).

tests/test_lca.py compares aepg's ``merge`` and ``align`` parts with the result, and keeps one
(tests/data/lca.pt) so that the comparison runs without the reference. LCA's code runs as it is; only
what it reads from a data set and a network is stood in for (a data manager whose images are the
features themselves, a network whose feature extractor is the identity, LCA's own bias-free heads,
``helper.ContinualLinear``), ``Tensor.cuda`` returns the tensor itself, so it runs on a CPU, and its
data-set module (which downloads and makes folders when imported) is not imported.
"""

import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from slca_alignment import made_up_inputs  # noqa: E402

TASK_SIZE, TASKS = 3, 3


def merge_inputs() -> dict:
    generator = torch.Generator().manual_seed(5)
    base = {"w": torch.randn(4, 6, generator=generator, dtype=torch.float64),
            "b": torch.randn(6, generator=generator, dtype=torch.float64)}
    tasks = [{k: v + 0.1 * torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in base.items()}
             for _ in range(2)]
    return {"base": base, "tasks": tasks, "topk": [100.0, 40.0], "rules": ["ties", "max", "min", "max_abs"]}


def run(lca_dir: str, made: dict) -> dict:
    sys.path.insert(0, lca_dir)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    data_manager = types.ModuleType("utils.data_manager")  # its data sets (downloads at import), not used here
    data_manager.DataManager = None
    sys.modules["utils.data_manager"] = data_manager
    import helper
    import lca

    merged = {f"{rule}-{topk}": helper.merge(made["merge"]["base"], made["merge"]["tasks"], method=rule, lamb=0.7,
                                            topk=topk)
              for rule in made["merge"]["rules"] for topk in made["merge"]["topk"]}

    inputs = made["alignment"]
    features = inputs["features"]

    class Images(torch.utils.data.Dataset):
        def __init__(self, classes):
            self.items = [(i, i, features[c, i], c) for c in classes for i in range(features.shape[1])]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    model = SimpleNamespace(feature_dim=features.shape[-1], eval=lambda: None, get_features=lambda x: x,
                            classifier=helper.ContinualLinear(features.shape[-1], TASK_SIZE))
    with torch.no_grad():
        model.classifier.heads[0][0].weight.copy_(inputs["weight"][:TASK_SIZE])
    learner = SimpleNamespace(_config=inputs["config"], model=model, _known_classes=0, _total_classes=0, _cur_task=-1,
                              _cls_to_task_idx={},
                              data_manager=SimpleNamespace(get_dataset=lambda classes, **_: Images(list(classes))))
    aligned = []
    for task in range(TASKS):
        learner._cur_task = task
        learner._total_classes = learner._known_classes + TASK_SIZE
        for c in range(learner._known_classes, learner._total_classes):
            learner._cls_to_task_idx[c] = task
        if task:  # the task's head, given weights (LCA's update_classifier: old heads frozen)
            model.classifier.update(TASK_SIZE, freeze_old=True)
            with torch.no_grad():
                model.classifier.heads[task][0].weight.copy_(inputs["weight"][task * TASK_SIZE:(task + 1) * TASK_SIZE])
        lca.Learner.compute_multivariate_normal(learner)
        if task:
            torch.manual_seed(inputs["seed"])
            lca.Learner.align(learner, model.classifier)
            aligned.append(torch.cat([head[0].weight.detach() for head in model.classifier.heads]).clone())
        learner._known_classes = learner._total_classes
    return {"merged": merged, "means": learner._class_means.clone(), "covariances": learner._class_covs.clone(),
            "aligned": aligned}


def made_up() -> dict:
    alignment = made_up_inputs(tasks=TASKS)
    alignment["config"] = {"train_ca_samples_per_cls": 16, "train_ca_epochs": 3, "train_ca_batch_size": 8,
                           "train_ca_lr": 5e-3, "train_ca_robust_weight": 0.1, "train_ca_entropy_weight": 0.0,
                           "train_ca_logit_norm": None}
    return {"merge": merge_inputs(), "alignment": alignment}


if __name__ == "__main__":
    made = made_up()
    out = os.path.abspath(sys.argv[2])
    torch.save({"inputs": made, "reference": run(os.path.abspath(sys.argv[1]), made), "numpy": np.__version__,
                "torch": torch.__version__}, out)

"""What a run records of itself, as planned (``aepg.preflight.planned_run``) and written by the tracking
adapter: labels that show any entry's keys as they are, and a data set identity that changes
exactly when the data a run reads changes."""

from typing import Literal

from mlflow import MlflowClient

from aepg.catalog import OBJECTIVES
from aepg.config import ObjectiveConfig, load_config
from aepg.preflight import dataset_identity, objective_label

from conftest import CONFIGS, jpeg

DIGITS = CONFIGS / "digits.yaml"


@OBJECTIVES.register("weighted_ce", display="weighted CE")
class WeightedCE(ObjectiveConfig):
    """Cross-entropy scaled by a weight, with a text key as a plugin's entry may have one."""

    kind: Literal["weighted_ce"] = "weighted_ce"
    weight: float = 0.5
    reduction_name: str = "halved"

    def per_sample(self, x):
        return -self.weight * x.log_p_y


def test_an_entry_with_a_text_key_starts_a_run_whose_label_shows_the_text(workdir):
    from aepg.launch import run

    cfg = load_config(DIGITS, ["objective.kind=weighted_ce", "objective.reduction_name=a text", "benchmark.num_tasks=2",
                               "benchmark.max_train_per_class=8", "benchmark.max_test_per_class=4", "train.epochs=1",
                               f"tracking_uri=sqlite:///{workdir / 'mlflow.db'}"])
    assert objective_label(cfg) == "weighted_ce (weight 0.5, reduction_name a text)"
    result = run(cfg)  # draws its plots, titled with the label, after each task
    logged = MlflowClient(cfg.tracking_uri).get_run(result.run.run_id)
    assert logged.info.status == "FINISHED" and logged.data.params["objective.reduction_name"] == "a text"
    assert "accuracy_matrix.png" in {a.path for a in MlflowClient(cfg.tracking_uri).list_artifacts(result.run.run_id)}


def test_the_data_set_digest_follows_the_data_set_entrys_keys(tmp_path):
    for c in range(200):  # ImageNet-R's 200 classes, a few small images each
        for i in range(3):
            jpeg(tmp_path / "imagenet-r" / f"n{c:08d}" / f"img_{i}.jpg", c * 10 + i)
    overrides = ["benchmark.dataset=imagenet-r", f"benchmark.root={tmp_path}", "benchmark.num_tasks=2"]
    digest = {name: dataset_identity(load_config(DIGITS, overrides + extra)).digest for name, extra in [
        ("split 0", []), ("split 1", ["benchmark.dataset.split_seed=1"]),
        ("cache elsewhere", [f"benchmark.dataset.cache_dir={tmp_path / 'cache'}"]),
        ("order 1", ["benchmark.order_seed=1"])]}
    assert digest["split 1"] != digest["split 0"], "another split is other data"
    assert digest["cache elsewhere"] == digest["split 0"], "where the decoded cache lies changes no image"
    assert digest["order 1"] != digest["split 0"]
    assert dataset_identity(load_config(DIGITS)).digest == "44af270a7da7", "digits as every earlier run recorded it"

"""LCA (``model.method.kind: lca``): its parts ``merge`` (incremental task-vector merging) and ``align``
(drawn once, robust loss) equal LCA's own code on the same parameters, features and draws (stored
from tests/reference_runs/lca.py); the method runs end to end under CE and aEPG, resumed as
uninterrupted, and merges what it trained."""


import pytest
import torch
from conftest import DIGITS, assert_refused_before_running, assert_resumed_ends_as_uninterrupted, finals, reference_result, run_aepg
from mlflow import MlflowClient
from test_align import HERE, REFERENCES, TINY, assert_aligns_as_reference

from aepg.config import load_config
from aepg.models.parts import ClassifierAlignmentPart, MergePart
from aepg.models.parts.align import ClassifierAlignment
from aepg.models.parts.merge import IncrementalMerge, merged_vector

FIXTURE = HERE / "data" / "lca.pt"


@pytest.fixture(scope="module")
def stored():
    return torch.load(FIXTURE, weights_only=False)


def test_merging_equals_lcas_merge(stored):
    """Every rule LCA's ``helper.merge`` has, with and without trimming, on the same base and task
    parameters: the same merged parameters to 1e-12 in float64."""
    inputs, reference = stored["inputs"]["merge"], stored["reference"]["merged"]
    base, tasks = inputs["base"], inputs["tasks"]
    for rule in inputs["rules"]:
        for topk in inputs["topk"]:
            for name in base:
                merged = base[name] + 0.7 * merged_vector([t[name] - base[name] for t in tasks], rule, topk)
                torch.testing.assert_close(merged, reference[f"{rule}-{topk}"][name], rtol=0, atol=1e-12)


def test_the_part_merges_each_task_with_the_merge_it_started_from(stored):
    """The part's life cycle is LCA's incremental merge: task 0 as trained; task t's parameters at its
    end become ``base + merge(start - base, trained - base)``, ``start`` the merge it began from."""
    inputs = stored["inputs"]["merge"]
    weight = torch.nn.Parameter(inputs["base"]["w"].clone())
    part = IncrementalMerge([weight], MergePart(coefficient=0.7))
    trained = [inputs["base"]["w"] + 0.3, inputs["tasks"][0]["w"], inputs["tasks"][1]["w"]]
    merges = []
    for task, after in enumerate(trained):
        part.prepare_task(task, None)
        start = weight.detach().clone()
        with torch.no_grad():
            weight.copy_(after)
        part.end_task(task, None)
        merges.append(weight.detach().clone())
        if task:
            expected = inputs["base"]["w"] + 0.7 * merged_vector([start - inputs["base"]["w"], after - inputs["base"]["w"]],
                                                                 "ties", 100.0)
            torch.testing.assert_close(weight.detach(), expected, rtol=0, atol=0)
    assert torch.equal(merges[0], trained[0]), "the first task stays as trained"
    resumed = IncrementalMerge([torch.nn.Parameter(merges[1].clone())], MergePart(coefficient=0.7))
    resumed.load_state_dict(part.state_dict())
    assert torch.equal(resumed.base_0, inputs["base"]["w"]) and torch.equal(resumed.start_0, part.start_0)


def test_statistics_and_the_robust_alignment_drawn_once_equal_lcas(stored):
    """LCA's ``compute_multivariate_normal`` and ``align`` over three tasks (512 -> 16 draws per class
    drawn once, reshuffled every epoch, batches of 8, its robust loss, bias-free heads, the aligned
    head kept): the same means and covariances and the same aligned head after each task, to 1e-5."""
    inputs, reference = stored["inputs"]["alignment"], stored["reference"]
    config = inputs["config"]
    head = torch.nn.Linear(inputs["weight"].shape[1], len(inputs["bias"]))
    with torch.no_grad():
        head.weight.copy_(inputs["weight"])
        head.bias.zero_()
    cfg = ClassifierAlignmentPart(samples_per_class=config["train_ca_samples_per_cls"], draws="once",
                                  batch_size=config["train_ca_batch_size"], epochs=config["train_ca_epochs"],
                                  lr=config["train_ca_lr"], temperature=None, shrink_old_means=False,
                                  robust_weight=config["train_ca_robust_weight"], align_bias=False,
                                  keep_aligned_head=True, objective="ce")
    assert_aligns_as_reference(ClassifierAlignment(head, cfg), inputs, reference)
    assert torch.equal(head.bias, torch.zeros_like(head.bias)), "LCA's heads have no bias: it is left alone"


def test_lcas_code_run_now_gives_the_stored_result(tmp_path, stored):
    """The stored result is what LCA's code gives (run beside aepg when a clone of tungts1101/LCA is at
    $AEPG_REFERENCES/LCA)."""
    fresh = reference_result("lca.py", REFERENCES / "LCA", "lca.py", tmp_path)
    for key in ("means", "covariances"):
        torch.testing.assert_close(fresh[key], stored["reference"][key], rtol=0, atol=1e-6)
    for fresh_head, head in zip(fresh["aligned"], stored["reference"]["aligned"], strict=True):
        torch.testing.assert_close(fresh_head, head, rtol=0, atol=1e-6)
    for key, merged in stored["reference"]["merged"].items():
        for name, value in merged.items():
            torch.testing.assert_close(fresh["merged"][key][name], value, rtol=0, atol=1e-12)


def test_lca_brings_its_parts_in_the_order_lca_runs_them():
    """Statistics before the merge (LCA computes them with the task's unmerged adapters)."""
    method = load_config(DIGITS, ["model.method.kind=lca"]).model.method
    assert list(method.chosen_parts()) == ["align", "merge"] and method.bottleneck == 16
    align = method.chosen_parts()["align"]
    assert (align.draws, align.robust_weight, align.samples_per_class, align.align_bias) == ("once", 0.1, 512, False)


LCA = [*TINY, "model.method.kind=lca", "model.method.parts.align.batch_size=8"]


def test_lca_runs_under_ce(workdir):
    result = run_aepg(["train", DIGITS, *LCA, "objective.kind=ce"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final/last_accuracy" in finals(workdir)
    params = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_runs(["1"])[0].data.params
    assert params["model.method.kind"] == "lca" and params["model.method.parts.merge.rule"] == "ties"


def test_lca_under_aepg_resumed_after_its_first_task_ends_as_an_uninterrupted_one(workdir):
    assert_resumed_ends_as_uninterrupted(workdir, [*LCA, "objective.kind=aepg", "benchmark.num_tasks=3",
                                                   "scaling.torch_threads=1"], 3)


@pytest.mark.parametrize("overrides, expected", [
    (["model.method.kind=none", "model.method.parts.merge.rule=ties"], "model.method.parts.merge: merging needs trained"),
    (["model.method.kind=lca", "model.method.parts.merge.rule=mean"], "model.method.parts.merge.rule: Input should be"),
    (["model.method.kind=slca_pp", "model.method.parts.align.old_feature_scale=-1"],
     "model.method.parts.align.old_feature_scale: Input should be greater than or equal to 0"),
    (["model.method.kind=lora", "model.method.parts.drift.mean_shift=true"], "model.method.parts.drift.mean_shift: moves"),
    (["model.method.kind=macil", "model.method.parts.align.old_feature_scale=0.02"],
     "model.method.parts.align.old_feature_scale: scales features"),
    (["train.first_task_epochs=0"], "train.first_task_epochs: Input should be greater than or equal to 1"),
    (["model.method.kind=none", "model.method.parts.select.universal=current"], "model.method.parts.select: task-specific"),
    (["model.method.kind=lora", "model.method.parts.select.orth_weight=0.1"], "model.method.parts.select.orth_weight: is over"),
    (["model.method.kind=tuna", "model.method.parts.align.cosine_epochs=0"],
     "model.method.parts.align.cosine_epochs: Input should be greater than or equal to 1"),
])
def test_bad_settings_of_todays_parts_are_one_line_before_anything_runs(overrides, expected, workdir):
    """LCA's, SLCA++'s, MACIL's and TUNA's pieces, and the first task's epochs."""
    assert_refused_before_running(overrides, expected, workdir)

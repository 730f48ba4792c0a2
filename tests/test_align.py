"""Classifier alignment on class statistics (``model.method.parts.align``): equal to SLCA's own code
on the same features, head and random draws; its statistics reduced over workers; its storage
options; run end to end over several methods under CE and aEPG, resumed as uninterrupted."""

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, DIGITS, assert_resumed_ends_as_uninterrupted, reference_result, run_aepg
from mlflow import MlflowClient

from aepg.config import load_config
from aepg.preflight import backbone_facts
from aepg.models.parts import ClassifierAlignmentPart
from aepg.models.parts.align import ClassifierAlignment, ClassStatistics, normalised_logits, statistics_bytes

HERE = Path(__file__).parent
FIXTURE = HERE / "data" / "slca_alignment.pt"
REFERENCES = Path(os.environ.get("AEPG_REFERENCES", HERE.parent.parent / "references"))


class Features:
    """A task's context (``aepg.models.contract.TaskData``) whose images are their own features,
    in ``shards`` (one per worker) summed by ``sum``; cross-entropy as the run's objective."""

    def __init__(self, features: torch.Tensor, start: int, stop: int, seed: int = 0, shards: int = 1, shard: int = 0):
        self.start, self.stop, self.seed = start, stop, seed
        self.columns = slice(start, stop)
        rows = [(c, image) for c in range(start, stop) for image in features[c]]
        self.rows = rows[shard::shards]

    def features(self, dtype=torch.float32):
        for i in range(0, len(self.rows), 5):
            chunk = self.rows[i:i + 5]
            yield torch.stack([image for _, image in chunk]).to(dtype), torch.tensor([c for c, _ in chunk])

    def loss(self, logits, labels, start=None, reduction="mean"):
        return F.cross_entropy(logits, labels - (self.start if start is None else start), reduction=reduction)

    def generator(self, *salt):
        return torch.Generator().manual_seed(self.seed)

    def sum(self, tensor):
        return tensor


def slca_part(inputs: dict, **settings) -> ClassifierAlignment:
    head = torch.nn.Linear(inputs["weight"].shape[1], len(inputs["bias"]))
    with torch.no_grad():
        head.weight.copy_(inputs["weight"])
        head.bias.copy_(inputs["bias"])
    cfg = ClassifierAlignmentPart(epochs=inputs["ca_epochs"], temperature=inputs["logit_norm"], objective="ce",
                                  keep_aligned_head=True, **settings)
    return ClassifierAlignment(head, cfg)


def run_part(part: ClassifierAlignment, inputs: dict) -> None:
    size = inputs["task_size"]
    for task in range(len(inputs["bias"]) // size):
        part.end_task(task, Features(inputs["features"].double(), task * size, (task + 1) * size, inputs["seed"]))


def cosine_head(weight: torch.Tensor, scale: float):
    """A cosine head (``model.method.head: cosine``) holding ``weight``."""
    from aepg.models.heads import CosineHead

    head = CosineHead(weight.shape[1], weight.shape[0], scale)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def assert_aligns_as_reference(part: ClassifierAlignment, inputs: dict, reference: dict, tasks: int = 3) -> None:
    """The part over ``tasks`` tasks of ``inputs``' features: after each task from the second, the head's
    rows of the classes seen so far equal ``reference["aligned"]``, and at the end the statistics its
    means and covariances, to 1e-5."""
    size, weight = inputs["task_size"], part.head_parameters[0]
    for task in range(tasks):
        part.begin_task(task)
        part.end_task(task, Features(inputs["features"].double(), task * size, (task + 1) * size, inputs["seed"]))
        if task:
            torch.testing.assert_close(weight[:(task + 1) * size].detach(), reference["aligned"][task - 1], rtol=0, atol=1e-5)
    torch.testing.assert_close(part.statistics.means.float(), reference["means"], rtol=0, atol=1e-5)
    torch.testing.assert_close(part.statistics.covariances, reference["covariances"], rtol=0, atol=1e-5)


def test_statistics_and_alignment_equal_slcas_own_code():
    """SLCA's ``_compute_class_mean`` and ``_stage2_compact_classifier`` as they ran (stored from
    tests/reference_runs/slca_alignment.py): the same means and covariances, and after the second
    task's alignment the same head, from the same features, initial head and seed, to 1e-5."""
    stored = torch.load(FIXTURE, weights_only=False)
    part = slca_part(stored["inputs"])
    run_part(part, stored["inputs"])
    reference = stored["reference"]
    torch.testing.assert_close(part.statistics.means, reference["means"].double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(part.statistics.covariances, reference["covariances"].float(), rtol=0, atol=1e-5)
    weight, bias = part.head_parameters
    assert not torch.allclose(weight, stored["inputs"]["weight"]), "the alignment moved the head"
    torch.testing.assert_close(weight.detach(), reference["weight"], rtol=0, atol=1e-5)
    torch.testing.assert_close(bias.detach(), reference["bias"], rtol=0, atol=1e-5)


def test_slcas_code_run_now_gives_the_stored_result(tmp_path):
    """The stored result is what SLCA's code gives (run beside aepg when a clone of GengDavid/SLCA is at
    $AEPG_REFERENCES/SLCA)."""
    fresh = reference_result("slca_alignment.py", REFERENCES / "SLCA", "models/slca.py", tmp_path)
    for key, value in torch.load(FIXTURE, weights_only=False)["reference"].items():
        torch.testing.assert_close(fresh[key], value, rtol=0, atol=1e-6, msg=key)


def test_the_statistics_summed_over_workers_equal_one_workers():
    """Two workers, each with every other image, hold after the sum what one worker holds (the
    real reduction over 2 Ray Train workers is in test_distributed)."""
    features = torch.load(FIXTURE, weights_only=False)["inputs"]["features"].double()
    one = ClassStatistics(6, 8, "full", 16, 1e-4)
    one.collect(0, Features(features, 0, 3))
    sent = []
    for k in range(2):  # what each worker hands its all-reduce
        context = Features(features, 0, 3, shards=2, shard=k)
        context.sum = lambda tensor, k=k: sent.append((k, tensor)) or tensor
        ClassStatistics(6, 8, "full", 16, 1e-4).collect(0, context)
    totals = [a + b for (_, a), (_, b) in zip([s for s in sent if s[0] == 0], [s for s in sent if s[0] == 1])]
    for k in range(2):
        context = Features(features, 0, 3, shards=2, shard=k)
        answers = iter(totals)
        context.sum = lambda tensor, answers=answers: next(answers)
        two = ClassStatistics(6, 8, "full", 16, 1e-4)
        two.collect(0, context)
        torch.testing.assert_close(two.means, one.means, rtol=0, atol=1e-12)
        torch.testing.assert_close(two.covariances, one.covariances, rtol=0, atol=1e-6)


@pytest.mark.parametrize("covariance", ["diagonal", "low_rank"])
def test_smaller_statistics_keep_what_they_say(covariance):
    """``diagonal`` keeps the covariance's diagonal; ``low_rank`` its top eigenvectors exactly and the
    other eigenvalues' mean: with rank = dim - 1 and one eigenvalue left, the covariance itself."""
    stored = torch.load(FIXTURE, weights_only=False)
    features = stored["inputs"]["features"].double()
    full = ClassStatistics(6, 8, "full", 16, 1e-4)
    full.collect(0, Features(features, 0, 3))
    small = ClassStatistics(6, 8, covariance, 7, 1e-4)
    small.collect(0, Features(features, 0, 3))
    for c in range(3):
        if covariance == "diagonal":
            torch.testing.assert_close(small.variances[c], torch.diagonal(full.covariances[c]))
        else:
            factor, residual = small.factors[c], small.residuals[c]
            rebuilt = factor @ factor.T + residual ** 2 * torch.eye(8)
            torch.testing.assert_close(rebuilt, full.covariances[c], rtol=1e-4, atol=1e-5)
    z = torch.randn(20000, 8 + (7 if covariance == "low_rank" else 0), generator=torch.Generator().manual_seed(0))
    draws = small.samplers(1)[0](z)
    assert draws.shape == (20000, 8)
    torch.testing.assert_close(torch.cov(draws.T.double()).diagonal().float(), torch.diagonal(full.covariances[0]),
                               rtol=0.1, atol=0.02)
    assert statistics_bytes(200, 768, "full") == 200 * (8 * 768 + 4 * 768 * 768)


def test_logit_normalisation_is_slcas_formula_on_a_hand_made_case():
    logits = torch.tensor([[3.0, 4.0, 0.0, 1.0]])
    # task norms 5 and 1, their mean 3: logits / 3 / 0.5
    torch.testing.assert_close(normalised_logits(logits, [0, 2, 4], 0.5), logits / (3.0 + 1e-7) / 0.5)


def test_the_head_before_alignment_comes_back_for_the_next_task_and_stays_in_the_checkpoint():
    """SLCA's ``fc.recall()``: the aligned head serves the evaluation; the next task starts from the
    head as it was; a checkpoint between the two restores it once, not twice."""
    stored = torch.load(FIXTURE, weights_only=False)
    inputs = stored["inputs"]
    part = slca_part(inputs)
    part.cfg = part.cfg.model_copy(update={"keep_aligned_head": False})
    part.end_task(0, Features(inputs["features"].double(), 0, 3))
    before = [p.detach().clone() for p in part.head_parameters]
    part.end_task(1, Features(inputs["features"].double(), 3, 6, inputs["seed"]))
    assert not torch.equal(part.head_parameters[0], before[0])
    state = {k: v.clone() for k, v in part.state_dict().items()}
    part.begin_task(2)
    assert all(torch.equal(p, b) for p, b in zip(part.head_parameters, before))
    with torch.no_grad():
        part.head_parameters[0].add_(1.0)  # task 2 trains
    part.begin_task(2)  # a resume inside task 2 leaves the trained head alone
    assert torch.equal(part.head_parameters[0], before[0] + 1.0)
    resumed = slca_part(inputs)
    resumed.load_state_dict(state)
    assert bool(resumed.restore_pending) and torch.equal(resumed.statistics.covariances, part.statistics.covariances)


def test_alignment_settings_are_checked_and_logged():
    cfg = load_config(DIGITS, ["model.method.parts.align.covariance=diagonal"])
    params = {k: v for k, v in cfg.active_params(backbone_facts(cfg)).items() if ".parts." in k}
    assert params["model.method.parts.align.covariance"] == "diagonal" and "model.method.parts.align.rank" not in params
    for overrides, expected in [
        (["model.method.kind=ranpac", "model.method.parts.align.epochs=1"], "model.method.parts.align: RanPAC predicts"),
        (["model.method.parts.align.covariance=low"], "model.method.parts.align.covariance: Input should be"),
        (["model.method.parts.align.samples_per_clas=3"], "did you mean 'samples_per_class'?"),
    ]:
        result = run_aepg(["train", DIGITS, *overrides, "--dry-run"], CONFIGS.parent)
        assert result.returncode == 2 and expected in result.stderr, (overrides, result.stderr)


TINY = ["model.backbone=vit_tiny_patch16_224", "model.weights=random", "model.image_size=32",
        "model.backbone_kwargs={depth: 1, embed_dim: 16, num_heads: 2, patch_size: 16}", "benchmark.num_tasks=2",
        "train.epochs=1", "benchmark.max_train_per_class=20", "benchmark.max_test_per_class=5",
        "model.method.parts.align.epochs=2", "model.method.parts.align.samples_per_class=16"]


@pytest.mark.parametrize("method, objective", [("lora", "aepg"), ("none", "ce")])
def test_alignment_runs_over_a_method_and_an_objective(workdir, method, objective):
    result = run_aepg(["train", DIGITS, *TINY, f"model.method.kind={method}", f"objective.kind={objective}"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name.endswith("-align-s0")
    assert run.data.params["model.method.parts.align.covariance"] == "full"
    assert "final/last_accuracy" in run.data.metrics


def test_a_run_with_alignment_resumed_after_its_first_task_ends_as_an_uninterrupted_one(workdir):
    """The statistics and the head before alignment are in the checkpoint, and the draws follow the
    run's seed: stopped after task 1 and resumed, the final metrics are those of a run never stopped."""
    assert_resumed_ends_as_uninterrupted(workdir, [*TINY, "benchmark.num_tasks=5", "scaling.torch_threads=1"], 5)

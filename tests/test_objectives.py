"""The objective's gradients against autograd in float64, and its stability at extreme logits."""

import pytest
import torch
import torch.nn.functional as F

from aepg.catalog import OBJECTIVES
from aepg.config import RunConfig, schedule_config
from aepg.objectives import Objective, build_objective, entropy
from aepg.schedules import Progress, build_schedule


def ObjectiveConfig(**keys):
    """The objective section as a run config validates it (keys of other objectives dropped)."""
    return RunConfig.model_validate({"objective": keys}).objective


def per_sample_grads(kind: str, logits: torch.Tensor, y: torch.Tensor, a: float = 0.5, **params) -> torch.Tensor:
    """d(per-sample loss)/d(logits): the batch mean is scaled back by N."""
    logits = logits.clone().requires_grad_(True)
    objective = Objective(ObjectiveConfig(kind=kind, **params), build_schedule(schedule_config(kind="constant", a=a)))
    objective(logits, y, Progress(0, 1)).loss.backward()
    return logits.grad * len(y)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 7, generator=g, dtype=torch.float64) * 3, torch.randint(0, 7, (16,), generator=g)


def test_epg_gradient_is_p_y_times_ce_gradient(batch):
    logits, y = batch
    p_y = F.softmax(logits, -1).gather(1, y[:, None])
    torch.testing.assert_close(per_sample_grads("epg", logits, y), p_y * per_sample_grads("ce", logits, y))


def test_ce_gradient_is_softmax_minus_onehot(batch):
    logits, y = batch
    expected = F.softmax(logits, -1) - F.one_hot(y, 7)
    torch.testing.assert_close(per_sample_grads("ce", logits, y), expected)


@pytest.mark.parametrize("a", [0.0, 0.3, 1.0])
def test_aepg_is_ce_weighted_by_a_plus_one_minus_a_p_y(batch, a):
    logits, y = batch
    p_y = F.softmax(logits, -1).gather(1, y[:, None])
    weight = a + (1 - a) * p_y
    torch.testing.assert_close(per_sample_grads("aepg", logits, y, a), weight * per_sample_grads("ce", logits, y))


def test_aepg_endpoints_are_ce_and_epg(batch):
    logits, y = batch
    torch.testing.assert_close(per_sample_grads("aepg", logits, y, 1.0), per_sample_grads("ce", logits, y))
    torch.testing.assert_close(per_sample_grads("aepg", logits, y, 0.0), per_sample_grads("epg", logits, y))


def test_loss_values(batch):
    logits, y = batch
    p = F.softmax(logits, -1)
    p_y = p.gather(1, y[:, None]).squeeze(1)
    ce = F.cross_entropy(logits, y)
    cases = {
        "ce": ce,
        "epg": -p_y.mean(),
        "label_smoothing": F.cross_entropy(logits, y, label_smoothing=0.1),
        "focal": (-(1 - p_y) ** 2 * p_y.log()).mean(),
        "confidence_penalty": ce - 0.2 * (-(p * p.log()).sum(-1)).mean(),
        "entropy_penalty": ce + 0.2 * (-(p * p.log()).sum(-1)).mean(),
    }
    for kind, expected in cases.items():
        cfg = ObjectiveConfig(kind=kind, eps=0.1, gamma=2.0, beta=0.2)
        torch.testing.assert_close(Objective(cfg)(logits, y, Progress(0, 1)).loss, expected, msg=kind)


@pytest.mark.parametrize("kind", OBJECTIVES.names())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_loss_and_gradient_at_extreme_logits(kind, dtype):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3], [1e4, 1e4, -1e4]], dtype=dtype, requires_grad=True)
    y = torch.tensor([1, 1, 0])  # wrong, right, tied
    cfg = ObjectiveConfig(kind=kind, gamma=0.5)
    out = Objective(cfg, build_schedule(schedule_config(kind="constant", a=0.5)))(logits, y, Progress(3, 10))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(logits.grad).all()
    assert torch.isfinite(out.entropy) and torch.isfinite(out.p_y)


def test_annealed_objective_reads_the_schedule():
    objective = build_objective(ObjectiveConfig(kind="aepg"), schedule_config(kind="sigmoid", tau=6.0))
    logits, y = torch.zeros(2, 3), torch.tensor([0, 1])
    start, end = objective(logits, y, Progress(0, 100)), objective(logits, y, Progress(100, 100))
    assert start.a_t > 0.99 and end.a_t < 0.01
    assert build_objective(ObjectiveConfig(kind="ce"), schedule_config()).weight(Progress(0, 1)) is None


def test_entropy_of_uniform_and_one_hot():
    assert torch.isclose(entropy(torch.log_softmax(torch.zeros(1, 4), -1)), torch.log(torch.tensor(4.0))).all()
    assert entropy(torch.log_softmax(torch.tensor([[1e4, 0.0]]), -1)).item() == 0.0

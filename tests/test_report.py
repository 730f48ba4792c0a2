"""Leaderboard entries as read back from MLflow's run records."""

from aepg.sweep.report import sampled_params
from aepg.sweep.spec import Param
from aepg.tracking import RunRecord


def test_params_read_back_from_mlflow_keep_their_types():
    """MLflow stores params as text, and str(1e-05) is '1e-05', which YAML 1.1 reads as a string:
    the leaderboard must see the float the space sampled, or grouping and importances drop it."""
    space = {"train.lr": Param(loguniform=[1.0e-6, 1.0e-2]), "objective.kind": Param(choice=["ce", "aepg"]),
             "model.peft.rank": Param(integer=[2, 8]), "train.epochs": Param(choice=[1, 2, 3])}
    sampled = {"train.lr": 1e-05, "objective.kind": "aepg", "model.peft.rank": 4, "train.epochs": 2}
    run = RunRecord("id", "t00", "FINISHED", {k: str(v) for k, v in sampled.items()}, {}, {})
    params = sampled_params(run, space)
    assert params == sampled
    assert [type(params[k]) for k in sampled] == [float, str, int, int]
    assert all(space[k].contains(v) for k, v in params.items())


def test_a_choice_comes_back_as_the_choice_not_as_what_its_text_parses_to():
    """A categorical choice of strings shaped like numbers ('1e3', '10') must stay a string, or
    grouping by params and the space check would see a value the space never had."""
    space = {"model.tag": Param(choice=["1e3", "10", "on"]), "train.lr": Param(choice=[1.0e-5, 1.0e-3])}
    for tag, lr in [("1e3", 1.0e-5), ("10", 1.0e-3), ("on", 1.0e-3)]:
        run = RunRecord("id", "t00", "FINISHED", {"model.tag": tag, "train.lr": str(lr)}, {}, {})
        params = sampled_params(run, space)
        assert params == {"model.tag": tag, "train.lr": lr}
        assert type(params["model.tag"]) is str and type(params["train.lr"]) is float

"""Leaderboard entries as read back from MLflow's run records."""

from aepg.sweep.leaderboard import sampled_params
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


def _finished(index: int, lr: float, kind: str, value: float):
    from aepg.sweep.leaderboard import TrialResult

    return TrialResult(f"t{index:02d}", "finished", {"train.lr": lr, "objective.kind": kind}, value, "5/5 tasks", 5.0,
                 [f"run{index}"], index)


def test_tasks_done_and_ladder_level_come_from_their_tags_or_from_the_metrics_of_older_runs():
    """Runs now carry their counts as tags (``aepg.tasks_done``, ``aepg.level``); runs an earlier
    aepg logged carry them as metrics, and their leaderboard rows still read right."""
    from aepg.sweep.leaderboard import entries_of

    space = {"train.lr": Param(choice=[1.0e-4, 1.0e-3])}
    stopped = {"aepg.status": "stopped early"}
    now = RunRecord("a", "t01", "FINISHED", {}, {}, {**stopped, "aepg.tasks_done": "2"})
    before = RunRecord("b", "t02", "FINISHED", {}, {"eval/tasks_done": 3.0}, stopped)
    assert [e.progress for e in entries_of([now, before], space, "avg_incremental_accuracy", 5)] == \
        ["2/5 tasks", "3/5 tasks"]
    now = RunRecord("a", "t01", "FINISHED", {}, {}, {**stopped, "aepg.level": "1"})
    before = RunRecord("b", "t02", "FINISHED", {}, {"fidelity/level": 2.0}, stopped)
    assert [e.progress for e in entries_of([now, before], space, "avg_incremental_accuracy", 5, levels=3)] == \
        ["level 1/3", "level 2/3"]


def test_the_importance_plot_has_one_title_that_states_n_and_warns_when_trials_are_few():
    """Optuna titles its plot on the left; the sweep's title replaces it (not drawn over it), says
    over how many finished trials the importances were computed, and warns under 10."""
    from aepg.sweep.report import FEW_FOR_IMPORTANCE, figures

    space = {"train.lr": Param(loguniform=[1.0e-5, 1.0e-2]), "objective.kind": Param(choice=["ce", "aepg"])}
    for n in (4, FEW_FOR_IMPORTANCE):
        entries = [_finished(i, 10 ** (-5 + 3 * i / n), ("ce", "aepg")[i % 2], 0.4 + 0.01 * i) for i in range(n)]
        axes = figures("s", entries, space, "max", "avg_incremental_accuracy", None)["param_importances.png"].axes[0]
        assert axes.get_title(loc="left") == ""
        title = axes.get_title()
        assert f"over {n} finished trials" in title
        assert ("a rough guide" in title) == (n < FEW_FOR_IMPORTANCE)
        figure = axes.figure  # drawn as MLflow saves it: no line of the title past the figure's edges
        figure.canvas.draw()
        box, edges = axes.title.get_window_extent(), figure.bbox
        assert edges.x0 <= box.x0 and box.x1 <= edges.x1 and box.y1 <= edges.y1, (box, edges)


def test_the_importance_of_an_ordered_choice_is_computed_on_its_index():
    """A grid of learning rates is asked of Optuna as its index (``Param.ordered``); the importance
    study holds it the same way, so that importance treats it as ordered, and the plot covers it."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    from aepg.sweep.report import figures, importance_study

    rates = [1.0e-4, 1.0e-3, 1.0e-2]
    space = {"train.lr": Param(choice=rates), "objective.kind": Param(choice=["ce", "aepg"])}
    entries = [_finished(i, rates[i % 3], ("ce", "aepg")[i % 2], 0.4 + 0.1 * (i % 3)) for i in range(6)]
    study = importance_study(entries, space, "max")
    assert [t.params["train.lr"] for t in study.trials] == [0, 1, 2, 0, 1, 2]
    assert study.trials[0].distributions == {"train.lr": IntDistribution(0, 2),
                                             "objective.kind": CategoricalDistribution(["ce", "aepg"])}
    axes = figures("s", entries, space, "max", "avg_incremental_accuracy", None)["param_importances.png"].axes[0]
    assert {label.get_text() for label in axes.get_yticklabels()} == {"train.lr", "objective.kind"}


def test_training_curves_share_their_bounded_y_limits_across_runs():
    """a_t and p_y lie in [0, 1]: two runs' plots use the same limits whatever their values."""
    from aepg import plots

    limits = []
    for scale in (0.1, 0.9):
        series = {key: ([0, 1, 2], [scale, scale / 2, scale / 3]) for key in ("a_t", "p_y", "ce")}
        figure = plots.series_plot(series, "run", [1])
        limits.append([ax.get_ylim() for ax in figure.axes])
    assert limits[0][:2] == limits[1][:2] == [plots.SERIES_LIMITS["a_t"], plots.SERIES_LIMITS["p_y"]]
    assert limits[0][2][0] == limits[1][2][0] == 0.0  # the unbounded CE starts at 0

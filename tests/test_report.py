"""Leaderboard entries as read back from MLflow's run records."""

import json
import math
import statistics

import pytest
import yaml
from conftest import DIGITS

from aepg.sweep.leaderboard import sampled_params
from aepg.sweep.spec import Param
from aepg.tracking import RunRecord


def test_params_read_back_from_mlflow_keep_their_types():
    """MLflow stores params as text, and str(1e-05) is '1e-05', which YAML 1.1 reads as a string:
    the leaderboard must see the float the space sampled, or grouping and importances drop it."""
    space = {"train.lr": Param(loguniform=[1.0e-6, 1.0e-2]), "objective.kind": Param(choice=["ce", "aepg"]),
             "model.method.rank": Param(integer=[2, 8]), "train.epochs": Param(choice=[1, 2, 3])}
    sampled = {"train.lr": 1e-05, "objective.kind": "aepg", "model.method.rank": 4, "train.epochs": 2}
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
    """Runs now carry their counts as tags (``aepg.tasks_done``, ``aepg.levels_done``); runs an earlier
    aepg logged carry them as metrics, or as ``aepg.level`` (renamed apart from ``aepg.fidelity_level``),
    and their leaderboard rows still read right."""
    from aepg.sweep.leaderboard import level_entries, task_entries

    space = {"train.lr": Param(choice=[1.0e-4, 1.0e-3])}
    stopped = {"aepg.status": "stopped early"}
    now = RunRecord("a", "t01", "FINISHED", {}, {}, {**stopped, "aepg.tasks_done": "2"})
    before = RunRecord("b", "t02", "FINISHED", {}, {"eval/tasks_done": 3.0}, stopped)
    assert [e.progress for e in task_entries([now, before], space, "avg_incremental_accuracy", 5)] == \
        ["2/5 tasks", "3/5 tasks"]
    now = RunRecord("a", "t01", "FINISHED", {}, {}, {**stopped, "aepg.levels_done": "1"})
    before = RunRecord("b", "t02", "FINISHED", {}, {"fidelity/level": 2.0}, stopped)
    renamed = RunRecord("c", "t03", "FINISHED", {}, {}, {**stopped, "aepg.level": "3"})
    assert [e.progress for e in level_entries([now, before, renamed], space, "avg_incremental_accuracy", 3)] == \
        ["level 1/3", "level 2/3", "level 3/3"]


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


# -- a hand-made store of a paired sweep, whose answers are known ------------------------------------

PAIRED = {  # configuration -> arm -> seed -> value
    "A": {"ce": {0: 0.70, 1: 0.72, 2: 0.71}, "aepg": {0: 0.75, 1: 0.78, 2: 0.76}},  # aepg - ce: .05 .06 .05
    "B": {"ce": {0: 0.71, 1: 0.70, 2: 0.72}, "aepg": {0: 0.75, 1: 0.76, 2: 0.74}},  # .04 .06 .02; per-seed mean .73
    "C": {"ce": {0: 0.50, 1: 0.52, 2: 0.51}, "aepg": {0: 0.55, 1: 0.56, 2: 0.57}},
}


def paired_store(folder) -> tuple[object, str]:
    """A real MLflow store holding what the driver writes for a paired sweep (compare: objective.kind
    [ce, aepg], compare_by mean, seeds 0-2): the parent with its params and space, each
    configuration's run with its seed and arm values, and one run per arm and seed under it."""
    from aepg import schema
    from aepg.config import load_config, to_yaml
    from aepg.schema import PARENT_TAG
    from aepg.tracking import Tracker

    tracker = Tracker.connect(f"sqlite:///{folder / 'mlflow.db'}")
    base = load_config(DIGITS)
    params = {"sweep.name": "paired", "sweep.path": str(folder), "search.num_trials": 3, "scheduler.fidelity": "seeds",
              "metric": "final/avg_incremental_accuracy", "mode": "max", "seeds": [0, 1, 2], "base.dataset": "digits",
              "base.num_tasks": 5, "base.storage_path": str(folder)}
    space = {"train.lr": {"choice": [0.1, 0.2, 0.3]}}
    parent = tracker.create_run("hand-made", "paired-1", {schema.KIND_TAG: "sweep", schema.SWEEP_TAG: "paired-1"},
                                params, {"space.json": json.dumps(space)})
    for index, (name, lr) in enumerate((("A", 0.1), ("B", 0.2), ("C", 0.3)), 1):
        arms = PAIRED[name]
        by_seed = {str(s): {arm: arms[arm][s] for arm in ("ce", "aepg")} for s in range(3)}
        tags = {PARENT_TAG: parent.run_id, schema.STATUS_TAG: "finished", schema.INDEX_TAG: str(index),
                schema.SWEEP_TAG: "paired-1", schema.CONFIG_TAG: name, schema.ARM_VALUES_TAG: json.dumps(by_seed),
                schema.SEED_VALUES_TAG: json.dumps({s: (v["ce"] + v["aepg"]) / 2 for s, v in by_seed.items()})}
        cfg = base.model_copy(update={"train": base.train.model_copy(update={"lr": lr})})
        config_run = tracker.create_run("hand-made", f"t0{index}-{name}", tags, {"train.lr": lr, "objective.kind": "aepg"},
                                        {"config.yaml": to_yaml(cfg)})
        config_run.close("FINISHED")
        for arm, values in arms.items():
            for seed, value in values.items():
                run = tracker.create_run("hand-made", f"t0{index}-{name}@{arm}-s{seed}",
                                         {PARENT_TAG: config_run.run_id, schema.STATUS_TAG: "arm run", schema.ARM_TAG: arm,
                                          schema.SEED_TAG: str(seed), schema.SWEEP_TAG: "paired-1", schema.CONFIG_TAG: name},
                                         {"train.lr": lr, "objective.kind": arm, "seed": seed, "model.method.kind": "lora"})
                run.log_metrics({f"seed_run/{m}": value for m in ("avg_incremental_accuracy", "last_accuracy")})
                run.close("FINISHED")
    return tracker, parent.run_id


def test_a_paired_report_gives_the_known_differences_intervals_and_ties(tmp_path):
    from aepg.sweep.noise import t_quantile
    from aepg.sweep.report import build_report, paper_table

    tracker, parent = paired_store(tmp_path)
    report = build_report(tracker, parent)
    assert [e.name for e in report.entries] == ["t01-A", "t02-B", "t03-C"]
    best = report.best
    assert best.name == "t01-A" and best.value == pytest.approx(statistics.mean([0.725, 0.75, 0.735]), abs=1e-12)
    assert best.arms == pytest.approx({"ce": 0.71, "aepg": 0.7633333333}, abs=1e-9)
    diffs = [0.05, 0.06, 0.05]
    half = t_quantile(2) * statistics.stdev(diffs) / math.sqrt(3)
    assert best.difference == pytest.approx((statistics.mean(diffs), half), abs=1e-12)
    assert report.verdict == (f"aepg - ce at t01-A: +0.0533, 95% interval [{0.053333 - half:+.4f}, "
                             f"{0.053333 + half:+.4f}] over 3 seeds: separated from zero (aepg higher)")
    second = report.entries[1]  # .04 .06 .02: mean .04 and half 4.303 * .02 / sqrt 3 = .0497, across zero
    assert second.difference == pytest.approx((0.04, t_quantile(2) * 0.02 / math.sqrt(3)), abs=1e-12)
    # B's per-seed means (.73 each) against A's (.725 .75 .735): differences within noise; C's far below.
    assert [e.within_noise for e in report.entries] == ["best", "tied", ""]
    rows = {row["trial"]: row for row in report.rows}
    assert rows["t01-A"]["aepg - ce"] == pytest.approx(0.0533, abs=1e-4) and rows["t03-C"].get("within noise") is None
    # The paper table pairs the arm runs seed by seed: aEPG - CE of the best configuration of each column.
    table = paper_table(tracker, [parent])
    (row,) = table.rows
    shown = table.pair(table.groups[0], row, "aEPG")
    assert shown is not None
    base, arm = shown
    assert base.by_seed["avg_incremental_accuracy"] == PAIRED["A"]["ce"]
    assert arm.by_seed["avg_incremental_accuracy"] == PAIRED["A"]["aepg"]


def test_a_report_published_twice_adds_no_metric_point_and_says_the_answer(tmp_path):
    """``aepg report`` run again logs nothing new; the sweep's description carries the paired column
    and the paper's table under a heading, the best configuration's its answer, each arm run one line."""
    from aepg import schema
    from aepg.sweep.publish import publish
    from aepg.sweep.report import build_report, paper_table

    tracker, parent = paired_store(tmp_path)
    runs = [r.run_id for r in tracker.find_runs("hand-made", {})]

    def histories():
        return {(run, key): [(m.step, m.value) for m in tracker.client.get_metric_history(run, key)]
                for run in runs for key in tracker.get_run(run)[0].metrics}

    for times in range(2):
        report = build_report(tracker, parent)
        publish(tracker, parent, report, paper_table(tracker, [parent]))
        if times == 0:
            once = histories()
    assert histories() == once and any(key == schema.STANDING_KEY for _, key in once)
    note = tracker.get_run(parent)[0].tags[schema.NOTE_TAG]
    assert " aepg-ce " in note and "| +0.0533 [+0.0" in note, "the leaderboard's paired column, with its interval"
    assert "\n## The paper's table\n" in note and "The verdict judges `final/avg_incremental_accuracy`" in note
    best = tracker.get_run(report.best.run_ids[0])[0]
    assert best.tags[schema.NOTE_TAG].endswith(report.verdict)
    arm = next(r for r in tracker.find_runs("hand-made", {schema.ARM_TAG: "aepg", schema.SEED_TAG: "1"})
               if r.tags[schema.PARENT_TAG] == report.best.run_ids[0])
    assert arm.tags[schema.NOTE_TAG] == (f"arm aepg on seed 1 of configuration t01-A: seed_run/avg_incremental_accuracy = "
                                         f"{PAIRED['A']['aepg'][1]:.4f}")


# -- a hand-made store of a trade-off over seeds, whose front is known ------------------------------

TRADE_OFF = {  # configuration (its lr) -> (last accuracy, forgetting) on seeds 0, 1, 2
    0.1: ((0.80, 0.82, 0.81), (0.10, 0.12, 0.11)),  # A: on the front, the best accuracy
    0.2: ((0.70, 0.71, 0.72), (0.02, 0.03, 0.04)),  # B: on the front, the least forgetting
    0.3: ((0.79, 0.80, 0.81), (0.11, 0.12, 0.13)),  # C: A dominates it by 0.01 on each, within noise
    0.4: ((0.60, 0.61, 0.62), (0.20, 0.21, 0.22)),  # D: A dominates it by far
}


def trade_off_store(folder, pick: dict | None) -> tuple[object, str]:
    """A real MLflow store holding what the driver writes for a grid over train.lr on seeds 0-2,
    ranked on last_accuracy with forgetting as the trade-off: one run per point and seed."""
    from aepg import schema
    from aepg.config import load_config, to_yaml
    from aepg.schema import PARENT_TAG
    from aepg.tracking import Tracker

    tracker = Tracker.connect(f"sqlite:///{folder / 'mlflow.db'}")
    base = load_config(DIGITS)
    params = {"sweep.name": "trade-off", "sweep.path": str(folder), "search.num_trials": 12, "metric": "final/last_accuracy",
              "mode": "max", "trade_off": json.dumps({"forgetting": "min"}), "seeds": [0, 1, 2], "base.num_tasks": 5,
              "base.storage_path": str(folder), **({"pick": json.dumps(pick)} if pick else {})}
    parent = tracker.create_run("hand-made", "trade-off-1", {schema.KIND_TAG: "sweep", schema.SWEEP_TAG: "trade-off-1"},
                                params, {"space.json": json.dumps({"train.lr": {"choice": list(TRADE_OFF)}})})
    index = 0
    for lr, (accuracy, forgetting) in TRADE_OFF.items():
        for seed in range(3):
            index += 1
            tags = {PARENT_TAG: parent.run_id, schema.STATUS_TAG: "finished", schema.INDEX_TAG: str(index),
                    schema.SWEEP_TAG: "trade-off-1"}
            cfg = base.model_copy(update={"seed": seed, "train": base.train.model_copy(update={"lr": lr})})
            run = tracker.create_run("hand-made", f"t{index:02d}-lr{lr}-s{seed}", tags,
                                     {"train.lr": lr, "seed": seed, "objective.kind": "aepg"}, {"config.yaml": to_yaml(cfg)})
            run.log_metrics({"final/last_accuracy": accuracy[seed], "final/forgetting": forgetting[seed]})
            run.close("FINISHED")
    return tracker, parent.run_id


@pytest.mark.parametrize("pick, chosen", [(None, 0.1), ({"forgetting": 0.05}, 0.2)])
def test_a_trade_off_report_marks_the_known_front_and_picks_by_its_rule(tmp_path, pick, chosen):
    from aepg.sweep.report import build_report

    tracker, parent = trade_off_store(tmp_path, pick)
    report = build_report(tracker, parent)
    marks = {entry.params["train.lr"]: entry.front for entry in report.entries}
    assert marks == {0.1: "front", 0.2: "front", 0.3: "within noise", 0.4: ""}
    assert report.best.params["train.lr"] == chosen
    assert yaml.safe_load(report.best_yaml)["train"]["lr"] == chosen
    means = {entry.params["train.lr"]: entry.mean_of("forgetting") for entry in report.entries}
    assert means == pytest.approx({lr: statistics.mean(f) for lr, (_, f) in TRADE_OFF.items()}, abs=1e-12)
    rows = {row["train.lr"]: row for row in report.rows}
    assert rows[0.3]["front"] == "within noise" and rows[0.2]["final/forgetting"] == pytest.approx(0.03, abs=1e-9)
    rule = "the best last_accuracy on the front with forgetting within 0.05 of the front's lowest" if pick else \
        "the front's best last_accuracy"
    assert report.verdict == ("Pareto front of last_accuracy (max), forgetting (min): #1, #3; off it only within seed "
                            f"noise: #2; best.yaml is {'#3 (lr 0.2)' if pick else '#1 (lr 0.1)'}, {rule}")
    assert "pareto_front.png" in report.figures
    narrow = report.narrow_text(80)
    assert max(len(line) for line in narrow.splitlines()) <= 80 and "front: on the Pareto front" in " ".join(narrow.split())


def test_the_nodes_are_a_column_where_they_fit_and_else_under_each_trial():
    """A terminal's leaderboard never cuts the node names off: at 80 columns a paired sweep's
    nodes go on the line under each trial, in a wide terminal they are a column."""
    from aepg.sweep.leaderboard import narrow_table

    entries = [_finished(i, 1e-3 * i, "aepg", 0.5 + 0.01 * i) for i in (1, 2)]
    for entry in entries:
        entry.nodes, entry.spread = ["head", "worker-1"], 0.05
        entry.arms, entry.difference = {"ce": 0.51, "aepg": 0.52}, (0.01, 0.02)
    for width in (80, 160):
        table = narrow_table(entries, "last_accuracy", ["train.lr"], width)
        lines = table.splitlines()
        assert all(len(line) <= width for line in lines), table
        header = lines[0].split()
        if width == 80:
            assert "nodes" not in header and [line.strip() for line in lines[3:6:2]] == ["nodes head>worker-1"] * 2, table
        else:
            assert "nodes" in header and lines[2].split()[header.index("nodes")] == "head>worker-1", table
        assert table.count("head>worker-1") == 2 and "nodes: the Ray nodes its runs trained on" in " ".join(table.split())

"""Sweeps on a real local Ray instance writing to a real MLflow store: what they search, say and log
(how they end, stop and resume: test_sweep_lifecycle.py)."""

import csv
import io
import json
import os
import re
import shutil
import time

import pytest
import yaml
from conftest import REPO, TINY_BASE, mlflow_server, run_aepg, run_in_terminal, sweep_runs, wait_until, write_sweep
from mlflow import MlflowClient
from ray.tune.search.optuna import OptunaSearch

from aepg.cli import main
from aepg.config import ConfigError
from aepg.schema import BUDGET_KEY
from aepg.sweep.checks import load_sweep
from aepg.sweep.search import SweepOptunaSearch

pytestmark = pytest.mark.ray

def swept_in(folder, path: str, ray_address: str):
    """``folder``, after ``aepg sweep path`` ran in it under a 200 x 50 terminal (its store and
    outputs stay as the sweep left them; what the terminal got is ``terminal.txt``)."""
    status, text = run_in_terminal(["sweep", path], cwd=folder, env={"RAY_ADDRESS": ray_address}, columns=200, rows=50)
    (folder / "terminal.txt").write_text(text)
    assert status == 0, text[-3000:]
    return folder


@pytest.fixture(scope="module")
def tiny_sweep(ray_address, tmp_path_factory):
    """A real 8-trial sweep (TPE + ASHA, some trials failing) in its own folder; the store stays as
    the sweep left it (later runs go to other stores)."""
    folder = tmp_path_factory.mktemp("tiny-sweep")
    space = {
        "objective.kind": {"choice": ["ce", "aepg"]},
        "annealing.tau": {"uniform": [2.0, 10.0], "when": {"objective.kind": "aepg"}},
        "train.lr": {"loguniform": [1.0e-4, 1.0e-3]},
        # A head initialised this large gives infinite logits: those trials fail with NaN losses.
        "model.head_init_std": {"choice": [0.001, 0.002, 1.0e37]},
    }
    path = write_sweep(folder, space=space, search={"algorithm": "tpe", "seed": 3, "num_trials": 8, "max_concurrent": 2})
    return swept_in(folder, path, ray_address)


def test_sweep_end_to_end(tiny_sweep, workdir):
    client, parents, children = sweep_runs(tiny_sweep / "mlflow.db")
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert parent.data.params["metric"] == "final/avg_incremental_accuracy", "the param names what ranks"
    assert len(children) == 8
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert len({c.data.tags["aepg.trial_id"] for c in children}) == 8

    # Each trial was handed its run: its Tune folder names the child run tagged with its trial id.
    (sweep_folder,) = (tiny_sweep / "aepg_sweeps").glob("tiny-*")
    for child in children:
        handed = json.loads((sweep_folder / f"trial_{child.data.tags['aepg.trial_id']}" / "mlflow_run.json").read_text())
        assert handed == {"run_id": child.info.run_id, "name": child.info.run_name,
                          "config_id": child.data.tags["aepg.config_id"]}
    status = {c.info.run_id: c.data.tags["aepg.status"] for c in children}  # every child says how it ended
    assert sorted(int(c.data.tags["aepg.trial_index"]) for c in children) == list(range(1, 9))
    nan_trials = [c for c in children if float(c.data.params["model.head_init_std"]) > 1]
    assert nan_trials and all(c.info.status == "FAILED" and status[c.info.run_id] == "failed" for c in nan_trials)
    assert all("NonFiniteLoss" in c.data.tags["failure_reason"] for c in nan_trials)
    assert sum(1 for c in children if c.info.status == "FAILED") == len(nan_trials), "only the NaN trials fail"
    finished = [c for c in children if status[c.info.run_id] == "finished"]
    stopped = [c for c in children if status[c.info.run_id] == "stopped early"]
    assert finished and stopped, "ASHA stopped no trial"
    assert len(finished) + len(stopped) + len(nan_trials) == 8
    for child in finished:
        assert child.info.status == "FINISHED" and child.data.tags["aepg.tasks_done"] == "3"
        assert child.data.tags["aepg.optuna_state"] == "COMPLETE"
        assert child.data.metrics["final/avg_incremental_accuracy"] == child.data.metrics["eval/avg_incremental_accuracy"]
    for child in stopped:  # FINISHED, not KILLED; no final metric to rank on, the partial one is still there
        assert child.info.status == "FINISHED" and int(child.data.tags["aepg.tasks_done"]) < 3
        assert not any(key.startswith("final/") for key in child.data.metrics)
        assert "eval/avg_incremental_accuracy" in child.data.metrics
        assert child.data.tags["aepg.optuna_state"] == "PRUNED"  # not COMPLETE with a partial value
        assert {"accuracy_matrix.png", "training_curves.png"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
    for child in nan_trials:
        assert child.data.tags["aepg.optuna_state"] == "FAIL"
    # Params say what ran: tau and the schedule only for aEPG trials; names say what differs.
    for child in children:
        params = child.data.params
        annealed = params["objective.kind"] == "aepg"
        assert ("annealing.tau" in params) == annealed and ("annealing.kind" in params) == annealed
        assert "None" not in params.values() and "experiment" not in params
        assert child.info.run_name.startswith(f"t{int(child.data.tags['aepg.trial_index']):02d}-{params['objective.kind']}")
    # Final metrics logged once, at step 0 (so that MLflow draws them as bars).
    for child in finished:
        history = client.get_metric_history(child.info.run_id, "final/last_accuracy")
        assert [m.step for m in history] == [0]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.yaml", "space.json", "leaderboard.csv", "leaderboard.md", "best.yaml", "objective_over_trials.png",
            "convergence.png", "paper_table.md", "paper_table.csv", "paper_table.tex"} <= artifacts
    assert json.loads(open(client.download_artifacts(parent.info.run_id, "space.json", str(workdir))).read()
                      )["annealing.tau"]["when"] == {"objective.kind": "aepg"}
    # The paper table names the runs behind its cells, each holding the manifest.json that made it.
    table = open(client.download_artifacts(parent.info.run_id, "paper_table.md", str(workdir))).read()
    named = set(re.findall(r"seed \d+ ([0-9a-f]{32})", table.split("Manifests")[1]))
    assert named and named <= {c.info.run_id for c in finished}
    assert all("manifest.json" in {a.path for a in client.list_artifacts(run_id)} for run_id in named)
    # The parent names the best finished child and describes the sweep.
    best_child = max(finished, key=lambda c: c.data.metrics["final/avg_incremental_accuracy"])
    assert parent.data.tags["best_run_id"] == best_child.info.run_id
    assert best_child.info.run_id in parent.data.tags["mlflow.note.content"]
    assert parent.data.tags["sweep.trials_stopped_early"] == str(len(stopped))
    # Every child says how it ended and where it stands; sorting by sweep/standing (descending, the
    # best's bar the longest) is the leaderboard's order.
    by_rank = sorted(children, key=lambda c: -c.data.metrics["sweep/standing"])
    assert [c.data.metrics["sweep/standing"] for c in by_rank] == list(range(8, 0, -1)) and by_rank[0] == best_child
    assert [status[c.info.run_id] for c in by_rank[:len(finished)]] == ["finished"] * len(finished)
    for rank, child in enumerate(by_rank, 1):
        note = child.data.tags["mlflow.note.content"]
        assert note.startswith(status[child.info.run_id]) and note.endswith(f"rank {rank} of 8"), note
    assert all("when it stopped (partial" in c.data.tags["mlflow.note.content"] for c in stopped)
    colour = {c.info.run_id: c.data.tags["mlflow.runColor"] for c in children}
    for kind in ("ce", "aepg"):  # one hue family per objective: the two never share a colour
        others = {colour[c.info.run_id] for c in children if c.data.params["objective.kind"] != kind}
        assert not others & {colour[c.info.run_id] for c in children if c.data.params["objective.kind"] == kind}
    # Finished trials take the family's strong shades, the others its pale ones.
    assert not {colour[c.info.run_id] for c in finished} & {colour[c.info.run_id] for c in children if c not in finished}

    # The best config is written under the working directory and reproduces with `aepg train`.
    (best,) = list((tiny_sweep / "aepg_sweeps").glob("tiny-*/best.yaml"))
    best_cfg = yaml.safe_load(best.read_text())
    assert best_cfg["model"]["head_init_std"] < 1
    best_value = parent.data.metrics["sweep/best_avg_incremental_accuracy"]
    assert best_value == best_child.data.metrics["final/avg_incremental_accuracy"]
    trained = run_aepg(["train", str(best)], cwd=workdir)
    assert trained.returncode == 0, trained.stderr[-2000:]
    best_client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (rerun,) = best_client.search_runs([best_client.get_experiment_by_name("aepg-digits").experiment_id])
    assert rerun.data.metrics["final/avg_incremental_accuracy"] == pytest.approx(best_value, abs=1e-9)

    # `aepg report` rebuilds the leaderboard and plots from MLflow alone: finished trials first.
    report = run_aepg(["report", "tiny", "--out", str(workdir / "report"),
                       "--tracking-uri", f"sqlite:///{tiny_sweep / 'mlflow.db'}"], cwd=workdir)
    assert report.returncode == 0, report.stderr[-2000:]
    assert " stopped " in report.stdout and " failed " in report.stdout
    board = report.stdout.split("trials ranked on", 1)[1].split("table (", 1)[0]
    assert max(len(line) for line in board.splitlines()) <= 80, "the leaderboard fits 80 columns off a terminal"
    assert (workdir / "report" / "objective_over_trials.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(io.StringIO((workdir / "report" / "leaderboard.csv").read_text())))
    assert len(rows) == 8 and [r["status"] for r in rows[:len(finished)]] == ["finished"] * len(finished)
    assert rows[0]["trial"] == best_child.info.run_name
    # A trial's run is not a sweep, and a file is not a folder: one line each, exit 2.
    store = ["--tracking-uri", f"sqlite:///{tiny_sweep / 'mlflow.db'}"]
    not_a_sweep = run_aepg(["report", best_child.info.run_id, *store], cwd=workdir)
    assert not_a_sweep.returncode == 2 and "is not a sweep's parent run" in not_a_sweep.stderr, not_a_sweep.stderr
    (workdir / "a-file").write_text("")
    out_is_a_file = run_aepg(["report", "tiny", "--out", str(workdir / "a-file"), *store], cwd=workdir)
    assert out_is_a_file.returncode == 2 and "a-file is a file" in out_is_a_file.stderr, out_is_a_file.stderr
    # A key no run has would pool every trial into one row: refused, with the key it resembles.
    typo = run_aepg(["report", "tiny", "--rows", "train.lrr", "--columns", "no.such.key", *store], cwd=workdir)
    assert typo.returncode == 2 and "Traceback" not in typo.stderr, typo.stderr
    assert "--rows: no finished run of the sweep has the key 'train.lrr'; did you mean 'train.lr'?" in typo.stderr
    assert "--columns: no finished run of the sweep has the key 'no.such.key'" in typo.stderr
    assert not (workdir / "sweep-report-tiny").exists()


def test_asha_stopped_trials_reach_optuna_as_pruned():
    """Ray's OptunaSearch tells a stopped trial COMPLETE with its partial value; ours PRUNED."""
    import optuna

    def space(trial):
        trial.suggest_float("x", 0.0, 1.0)

    for cls, expected in ((OptunaSearch, "COMPLETE"), (SweepOptunaSearch, "PRUNED")):
        kwargs = {"full_budget": 5} if cls is SweepOptunaSearch else {}
        storage = optuna.storages.InMemoryStorage()  # the study each searcher tells, read through Optuna
        searcher = cls(space=space, metric="acc", mode="max", sampler=optuna.samplers.TPESampler(seed=0),
                       storage=storage, study_name="asha", **kwargs)
        assert searcher.suggest("t1") is not None
        for step in (1, 2):
            searcher.on_trial_result("t1", {"acc": 0.5 + step / 10, BUDGET_KEY: step, "training_iteration": step})
        searcher.on_trial_complete("t1", {"acc": 0.7, BUDGET_KEY: 2, "training_iteration": 2})
        (trial,) = optuna.load_study(study_name="asha", storage=storage).trials
        assert trial.state.name == expected
        assert trial.intermediate_values == {1: 0.6, 2: 0.7}
        # A trial that used its whole budget is COMPLETE either way.
        searcher.suggest("t2")
        searcher.on_trial_complete("t2", {"acc": 0.8, BUDGET_KEY: 5, "training_iteration": 5})
        assert optuna.load_study(study_name="asha", storage=storage).trials[1].state.name == "COMPLETE"


SAMPLERS = {"tpe": lambda optuna: optuna.samplers.TPESampler(seed=0, n_startup_trials=2, multivariate=True,
                                                               constant_liar=True),
            "random": lambda optuna: optuna.samplers.RandomSampler(seed=0)}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_configuration_already_proposed_is_not_trained_again_while_the_space_has_untried_ones(sampler):
    """Over choices alone a sampler proposes configurations again (TPE after its start-up trials
    most of all, the same one each time it is asked); each of the six trials here gets one of the
    six configurations, the repeats are told FAIL with the trial they repeat, and a seventh, with
    nothing untried, repeats one."""
    import optuna

    def space(trial):
        trial.suggest_categorical("kind", ["ce", "aepg"])
        trial.suggest_categorical("lr", [0.001, 0.003, 0.01])

    def search() -> tuple[SweepOptunaSearch, list[dict]]:
        searcher = SweepOptunaSearch(space=space, metric="acc", mode="max", full_budget=1,
                                     sampler=SAMPLERS[sampler](optuna), draw_seed=3)
        proposed = []
        for index in range(6):
            proposed.append(searcher.suggest(f"t{index}"))
            value = 0.9 if proposed[-1] == {"kind": "ce", "lr": 0.003} else 0.5  # TPE exploits the best
            searcher.on_trial_complete(f"t{index}", {"acc": value, BUDGET_KEY: 1, "training_iteration": 1})
        return searcher, proposed

    searcher, proposed = search()
    assert len({(p["kind"], p["lr"]) for p in proposed}) == 6
    assert search()[1] == proposed  # the draws that replace repeats are seeded: the search reruns the same
    repeats = [t for t in searcher.study.trials if t.state.name == "FAIL"]
    told = {t.number: (t.params["kind"], t.params["lr"]) for t in searcher.study.trials if t.state.name == "COMPLETE"}
    assert all(told[t.user_attrs["repeat_of"]] == (t.params["kind"], t.params["lr"]) for t in repeats)
    assert repeats or sampler == "random"  # TPE exploits the best one: it proposes it again
    assert [searcher.optuna_state(f"t{index}") for index in range(6)] == ["COMPLETE"] * 6
    assert searcher.suggest("t6") in proposed  # the space is used up: a repeat rather than no trial


def test_an_ordered_choice_is_searched_by_its_index_and_the_trial_gets_its_value(workdir):
    """TPE models an integer's neighbours but not a category's: a choice of increasing numbers is
    asked of Optuna as its index, the trial's config holds the value, and other choices (words, or
    numbers out of order) stay categories."""
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution

    rates, epochs = [1.0e-4, 1.0e-3, 1.0e-2, 1.0e-1], [2, 1, 3]
    space = {"objective.kind": {"choice": ["ce", "aepg"]}, "train.lr": {"choice": rates},
             "train.epochs": {"choice": epochs}}
    sweep = load_sweep(write_sweep(workdir, space=space))
    searcher = SweepOptunaSearch(space=sweep.define_by_run(), metric="acc", mode="max", full_budget=1,
                                 sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    for index in range(4):
        config = searcher.suggest(f"t{index}")
        trial = searcher.optuna_trial(f"t{index}")
        assert trial.distributions["train.lr"] == IntDistribution(0, len(rates) - 1)
        assert config["train.lr"] == rates[trial.params["train.lr"]]
        assert trial.distributions["objective.kind"] == CategoricalDistribution(["ce", "aepg"])
        assert trial.distributions["train.epochs"] == CategoricalDistribution(epochs)
        assert config["train.epochs"] == trial.params["train.epochs"] and config["train.epochs"] in epochs
        searcher.on_trial_complete(f"t{index}", {"acc": config["train.lr"], BUDGET_KEY: 1, "training_iteration": 1})


def check_terminal(text: str, columns: int, trials: int, done: str, runs: int = 0) -> list[str]:
    """What a sweep under a pseudo-terminal shows: a live table of the trials (status, progress,
    values, searched keys by short names, explained above it) and the progress line, its clock
    running between events, every line within the terminal's width, cleared at the end; the progress
    line, the leaderboard (within the width too), the paths (relative to the working directory) and
    the links are what stays, with no library log line after them. Its lines from the leaderboard on."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    screen = [line for line in plain.replace("\r", "\n").splitlines()]
    wide = [line for line in screen if len(line) > columns]
    assert not wide, wide
    legend = " ".join(plain.split())  # the legend above the table wraps at 80 columns
    assert "now: " in legend and " · final: final/avg_incremental_accuracy (max) · " in legend
    assert "lr: train.lr" in legend
    assert any(re.match(rf"t0\d\s+running\s+{done}", line) for line in screen), plain[-3000:]
    # Trials may end within one redraw of each other: the line with one ended is not always drawn.
    counted = rf" · \d+/{runs} runs" if runs else ""
    standing = rf"\d/{trials} trials{counted} · best 0\.\d{{4}} \(t0\d\) · \d+:\d\d elapsed( · about \d+:\d\d left)?"
    assert re.search(standing, plain), plain[-3000:]
    clocks = set(re.findall(rf"0/{trials} trials.* · (\d+:\d\d) elapsed", plain))
    assert len(clocks) >= 2, f"the clock stood still while the first trials ran: {clocks}"
    assert not any(line.startswith("  started   ") for line in screen), "the table replaces event lines"
    lines = [line.strip() for line in screen if line.strip()]
    board = max(i for i, line in enumerate(lines) if line.startswith("leaderboard, ranked on"))
    assert any(line.startswith(f"[{trials}/{trials} trials, best final/avg_incremental_accuracy ")
               for line in lines[board - 3:board])
    assert re.match(r"1\s+t0\d\s+finished\s+0\.\d{4}", lines[board + 3]), lines[board:board + 6]
    ends = next(i for i in range(board, len(lines)) if lines[i].startswith("best config: "))
    assert lines[ends].startswith("best config: aepg_sweeps/tiny-"), "a path relative to the working directory"
    assert lines[ends + 1].startswith("reproduce it with: aepg train aepg_sweeps/tiny-")
    assert lines[ends + 2].startswith("sweep outputs: aepg_sweeps/tiny-")
    assert lines[ends + 3] == "see it with: mlflow ui --backend-store-uri sqlite:///mlflow.db, then open"
    assert re.fullmatch(r"http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?workflowType=machine_learning", lines[ends + 4])
    assert not any(word in line for line in lines[board:] for word in ("INFO", "WARNING", "system_metrics", "pid="))
    return lines[board:]


@pytest.fixture(scope="module")
def paired_sweep(ray_address, tmp_path_factory):
    """Two configurations, CE against aEPG on two seeds, run in an 80 x 24 terminal in its own folder
    (what the terminal got is ``terminal.txt``; the store stays as the sweep left it)."""
    folder = tmp_path_factory.mktemp("paired-sweep")
    path = write_sweep(folder, space={"train.lr": {"choice": [0.0003, 0.001]}}, compare={"objective.kind": ["ce", "aepg"]},
                       seeds=[0, 1], search={"algorithm": "grid", "max_concurrent": 2},
                       scheduler={"kind": "none", "fidelity": "seeds"})
    status, text = run_in_terminal(["sweep", path], cwd=folder, env={"RAY_ADDRESS": ray_address}, columns=80, rows=24)
    (folder / "terminal.txt").write_text(text)
    assert status == 0, text[-3000:]
    return folder


def test_in_an_80_by_24_terminal_a_paired_sweep_is_one_table_redrawn_in_place_and_ends_on_its_answer(paired_sweep):
    """The live table counts the arm runs done as they finish; at the end every line fits 80
    columns, the searched key is kept, and the line that answers the question is the last."""
    end = check_terminal((paired_sweep / "terminal.txt").read_text(), 80, trials=2, done="", runs=8)
    assert re.match(r"aepg - ce at t0\d-lr(3e-4|1e-3): [+-]0\.\d{4}", end[-2]) or re.match(
        r"aepg - ce at t0\d-lr(3e-4|1e-3): [+-]0\.\d{4}", " ".join(end[-3:])), end[-6:]
    assert re.search(r"(separated from zero \((aepg|ce) higher\)|not separated from zero: the seeds cannot tell the "
                     r"arms apart)$", " ".join(end[-3:])), end[-6:]
    board = "\n".join(end)
    assert re.search(r"\blr\b", board.split("\n")[1]) or "lr 3e-4" in board, "the searched key is kept"


def test_in_a_wide_terminal_the_trials_are_one_table_redrawn_in_place_and_the_results_stay(tiny_sweep):
    """The tiny sweep ran under a 200 x 50 terminal: 8 trials, stopped and failed ones among them."""
    end = check_terminal((tiny_sweep / "terminal.txt").read_text(), 200, trials=8, done=r"\d/3")
    assert end[-1].startswith("http://127.0.0.1:5000/"), "a sweep without arms ends on its link"


def test_the_live_table_fits_the_terminal_however_many_trials():
    """30 trials in 80 x 24: the rows that fit (running first, then the best finished), a count of
    the others, and the progress line last, nothing wider than 80 columns or taller than 23 lines."""
    import io

    from rich.console import Console
    from rich.live import Live

    from aepg.sweep.progress import LiveSweepTable

    table = LiveSweepTable({}, 30, ("tasks_done", 5), "avg_incremental_accuracy", "max", "task",
                           "eval/avg_incremental_accuracy", keys=["objective.kind", "train.lr", "model.method.rank"])
    statuses = ["running", "finished", "stopped", "failed", "pending"]
    for i in range(30):
        table.names[f"id{i}"] = f"t{i + 1:02d}-aepg-lr3.4e-4-r8"
        table.rows[f"id{i}"] = {"status": statuses[i % 5], "done": "3/5", "now": "0.6123",
                                "final": 0.6 + i / 1000 if i % 5 == 1 else None, "objective.kind": "aepg",
                                "train.lr": 0.000337983049214134, "model.method.rank": 8}
    table.best, table.ended, table.started = (0.627, "t27-aepg"), 12, time.time() - 100.0
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, force_terminal=True, color_system=None)
    table.live = Live(console=console)
    console.print(table._render())
    lines = out.getvalue().rstrip("\n").splitlines()
    assert len(lines) <= 23 and max(len(line) for line in lines) <= 80, out.getvalue()
    assert lines[-1] == "12/30 trials · best 0.6270 (t27) · 1:40 elapsed · about 2:30 left"
    rows = [line.split() for line in lines if re.match(r"t\d\d ", line)]
    assert sum(row[1] == "running" for row in rows) == 6 and sum(row[1] == "finished" for row in rows) == 6
    assert [row[1] for row in rows].count("failed") == 0, "failed trials give way to running and finished ones"
    assert re.match(r"and \d+ more trials: .*6 failed", lines[-2]), lines[-2]
    assert rows[0][-3:] == ["aepg", "3.4e-4", "8"], "values compact: 3 significant digits"


TINY_VIT = {"backbone": "vit_tiny_patch16_224", "weights": "random", "image_size": 32,
            "backbone_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}}


def test_the_newer_methods_run_in_a_sweep_with_their_params_in_mlflow(ray_address, workdir):
    """InfLoRA, SD-LoRA, RanPAC and full fine-tuning, each a trial of one grid on a tiny ViT."""
    base = {**TINY_BASE, "benchmark": {**TINY_BASE["benchmark"], "num_tasks": 2}, "model": TINY_VIT}
    path = write_sweep(workdir, base_overrides=base, space={
        "model.method.kind": {"choice": ["inflora", "sd_lora", "ranpac", "full"]},
        "model.method.rank": {"choice": [2], "when": {"model.method.kind": ["inflora", "sd_lora"]}},
        "model.method.projection_dim": {"choice": [64], "when": {"model.method.kind": "ranpac"}},
    }, search={"algorithm": "grid", "max_concurrent": 2}, scheduler={"kind": "none"})
    assert main(["sweep", path]) == 0
    _, (parent,), children = sweep_runs(workdir / "mlflow.db")
    assert parent.info.status == "FINISHED"
    by_kind = {c.data.params["model.method.kind"]: c for c in children}
    assert set(by_kind) == {"inflora", "sd_lora", "ranpac", "full"}
    assert len({c.data.tags["aepg.config_id"] for c in children}) == 4  # one configuration each
    assert all(c.info.status == "FINISHED" and "final/last_accuracy" in c.data.metrics for c in children)
    assert by_kind["inflora"].data.params["model.method.rank"] == "2" and "model.method.threshold" in by_kind["inflora"].data.params
    assert by_kind["ranpac"].data.params["model.method.projection_dim"] == "64"
    assert by_kind["full"].data.params["model.method.batchnorm"] == "train"
    # Full fine-tuning trains every backbone weight; InfLoRA trains each task's B.
    assert int(by_kind["full"].data.tags["params_method"]) > int(by_kind["inflora"].data.tags["params_method"]) > 0


def test_sweeps_started_in_the_same_second_get_their_own_folders(workdir):
    from aepg.sweep.driver import output_path

    sweep = load_sweep(write_sweep(workdir))
    paths = [output_path(sweep) for _ in range(3)]  # milliseconds apart: the same second, bar a tick
    assert len(set(paths)) == 3 and all(os.path.isdir(path) for path in paths)


BAD_SWEEPS = [
    ({"space": {"train.lr": {"loguniform": [0.0, 1.0e-3]}}}, "space.train.lr", "loguniform bounds must be > 0"),
    ({"space": {"train.lrate": {"choice": [0.1]}}}, "space.train.lrate", "not a run-config key"),
    ({"space": {"annealing.tau": {"uniform": [-1.0, 2.0]}}}, "space.annealing.tau", "greater than 0"),
    ({"space": {"train.lr": {"choice": [0.1], "uniform": [0.1, 0.2]}}}, "space.train.lr", "exactly one"),
    ({"space": {"annealing.tau": {"uniform": [1.0, 2.0], "when": {"objective.kind": "aepg"}},
                "objective.kind": {"choice": ["ce", "aepg"]}}}, "space.annealing.tau.when", "searched before"),
    ({"search": {"algorithm": "grid"}}, "space.annealing.tau", "grid search takes choice"),
    ({"metric": "accuracy"}, "metric", "Input should be"),
    ({"seeds": [0, 1]}, "seeds", "grid"),
    ({"scheduler": {"grace_period": 5}}, "scheduler.grace_period", "the benchmark has 3"),
    ({"base_overrides": {"train": {"lr": -1}}}, "train.lr", "greater than 0"),
    ({"searchh": {}}, "searchh", "did you mean 'search'"),
]


def test_a_key_inactive_in_some_combinations_is_warned_about_with_the_when_that_fixes_it(workdir, capsys):
    """tau searched for CE too: CE trials ignore it, so they repeat one configuration under
    different names; the warning names the combination and the ``when`` that keeps it where used."""
    space = {"objective.kind": {"choice": ["ce", "aepg"]}, "annealing.tau": {"uniform": [2.0, 10.0]}}
    assert main(["sweep", write_sweep(workdir, space=space), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "aepg: warning: space.annealing.tau is inactive in 1 of 2 combinations" in err and "objective.kind=ce" in err
    assert "when: {objective.kind: aepg}" in err
    space["annealing.tau"]["when"] = {"objective.kind": "aepg"}
    assert main(["sweep", write_sweep(workdir, space=space), "--dry-run"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("changes, key, fragment", BAD_SWEEPS, ids=[b[1] for b in BAD_SWEEPS])
def test_bad_sweep_fails_before_any_trial(changes, key, fragment, workdir, capsys):
    path = write_sweep(workdir, **changes)
    assert main(["sweep", path]) == 2
    err = capsys.readouterr().err
    assert any(key in line and fragment in line for line in err.splitlines()), err
    assert not (workdir / "aepg_sweeps").exists() and not (workdir / "mlflow.db").exists()


def test_shipped_sweeps_validate(monkeypatch):
    paths = sorted((REPO / "sweeps").rglob("*.yaml"))
    assert len(paths) >= 6
    # The paper's sweeps are written for a GPU cluster (8 CPUs a trial): checked as they run there, not
    # against this machine's CPUs (a local Ray would be refused before it starts).
    monkeypatch.setenv("RAY_ADDRESS", "gpu-cluster-head:6379")
    for path in paths:
        loaded = load_sweep(path, check_runs=False)
        assert loaded.space or loaded.protocol.compares, path
        if "paper" not in path.parts:
            continue
        try:  # the paper's data sets (and, offline, their hub weights) are not here: that, and only that, is refused
            load_sweep(path)
        except ConfigError as error:
            keys = {key for key, _ in error.problems}
            assert "base_config: benchmark.dataset" in keys, error.problems
            assert keys <= {"base_config: benchmark.dataset", "base_config: model.weights"}, error.problems


def test_grid_expands_conditions_and_seeds(tmp_path):
    path = write_sweep(tmp_path, space={
        "objective.kind": {"choice": ["ce", "aepg"]},
        "annealing.kind": {"choice": ["sigmoid", "cosine"], "when": {"objective.kind": "aepg"}},
    }, search={"algorithm": "grid"}, seeds=[0, 1])
    grid = load_sweep(path).grid()
    configs = {tuple(sorted((k, v) for k, v in p.items() if k != "seed")) for p in grid}
    assert configs == {(("objective.kind", "ce"),),
                       (("annealing.kind", "sigmoid"), ("objective.kind", "aepg")),
                       (("annealing.kind", "cosine"), ("objective.kind", "aepg"))}
    assert len(grid) == 6 and sorted({p["seed"] for p in grid}) == [0, 1]


# -- the MLflow UI, in a real browser ----------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def mlflow_ui(tiny_sweep):
    """The MLflow UI (`mlflow server`) on 127.0.0.1 over the sweep's store."""
    with mlflow_server(tiny_sweep / "mlflow.db", tiny_sweep / "ui.log") as url:
        yield url


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1800,1000"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def unless_redrawn(read):
    """``read()``, or None when the page re-rendered an element it was reading (the element went
    stale), so that ``wait_until`` reads again."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return read()
    except StaleElementReferenceException:
        return None


def run_names(driver) -> list[str] | None:
    """The run names in the runs table, top to bottom (None while the table redraws)."""
    from selenium.webdriver.common.by import By

    def read() -> list[str]:
        rows = driver.find_elements(By.CSS_SELECTOR, "[role=row][row-index]")
        rows.sort(key=lambda row: int(row.get_attribute("row-index")))
        links = [row.find_elements(By.CSS_SELECTOR, "a[href*='/runs/']") for row in rows]
        return [found[0].text for found in links if found]

    return unless_redrawn(read)


def dot_colours(driver) -> dict[str, str] | None:
    """Each run's name in the runs table to the colour of the dot before it."""
    from selenium.webdriver.common.by import By

    def read() -> dict[str, str]:
        colours = {}
        for row in driver.find_elements(By.CSS_SELECTOR, "[role=row][row-index]"):
            links = row.find_elements(By.CSS_SELECTOR, "a[href*='/runs/']")
            dots = row.find_elements(By.CSS_SELECTOR, "[data-testid=experiment-view-table-run-color]")
            if links and dots:
                colours[links[0].text] = dots[0].value_of_css_property("background-color")
        return colours

    return unless_redrawn(read)


def rows_once_all_shown(driver, count: int) -> list[str] | None:
    names = run_names(driver)
    return names if names is not None and len(names) == count else None


def settled(driver, count: int) -> list[str] | None:
    """The run names once all are shown and two reads a second apart agree (the table re-sorts
    after it first renders)."""
    first = rows_once_all_shown(driver, count)
    time.sleep(1.0)
    return first if first and rows_once_all_shown(driver, count) == first else None


@pytest.mark.browser
def test_the_mlflow_ui_shows_the_sweep_as_a_researcher_needs(tiny_sweep, mlflow_ui, browser):
    from selenium.webdriver.common.by import By

    client, (parent,), children = sweep_runs(tiny_sweep / "mlflow.db")
    experiment = parent.info.experiment_id
    finished = {c.info.run_name for c in children if c.data.tags["aepg.status"] == "finished"}
    best = max((c for c in children if c.info.run_name in finished),
               key=lambda c: c.data.metrics["final/avg_incremental_accuracy"]).info.run_name

    # The link aepg prints opens the experiment on its runs table: the sweep, its trials folded under it.
    browser.get(f"{mlflow_ui}/#/experiments/{experiment}/runs?workflowType=machine_learning")
    assert wait_until(lambda: run_names(browser) == [parent.info.run_name], "the parent run alone in the runs table",
                      timeout=60)
    browser.find_element(By.CSS_SELECTOR, "[role=row] button[data-component-id*=runnamecellrenderer]").click()
    names = wait_until(lambda: rows_once_all_shown(browser, 9), "the trials under the sweep", timeout=30)
    assert names[0] == parent.info.run_name and set(names[1:]) == {c.info.run_name for c in children}
    # Each run's dot has the colour aepg gave it; no CE trial shares one with an aEPG trial or the sweep.
    dots = wait_until(lambda: (found := dot_colours(browser)) and len(found) == 9 and found, "the runs' colours", timeout=30)
    for run in (parent, *children):
        red, green, blue = (int(run.data.tags["mlflow.runColor"][i:i + 2], 16) for i in (1, 3, 5))
        assert dots[run.info.run_name] == f"rgba({red}, {green}, {blue}, 1)", run.info.run_name
    by_objective = {kind: {dots[c.info.run_name] for c in children if c.data.params["objective.kind"] == kind}
                    for kind in ("ce", "aepg")}
    assert by_objective["ce"] and by_objective["aepg"] and not by_objective["ce"] & by_objective["aepg"]
    assert dots[parent.info.run_name] not in by_objective["ce"] | by_objective["aepg"]
    # Trials that did not finish are marked by a paler dot than any finished trial of their objective.
    def lightness(run) -> int:
        return sum(int(part) for part in dots[run.info.run_name].removeprefix("rgba(").split(",")[:3])

    compared = 0
    for kind in ("ce", "aepg"):
        family = [c for c in children if c.data.params["objective.kind"] == kind]
        done = [lightness(c) for c in family if c.data.tags["aepg.status"] == "finished"]
        undone = [lightness(c) for c in family if c.data.tags["aepg.status"] != "finished"]
        if done and undone:
            assert max(done) < min(undone), kind
            compared += 1
    assert compared, "no objective has both finished trials and others"

    # Sorted by the final metric, finished trials come first, the best on top; stopped ones follow.
    browser.get(f"{mlflow_ui}/#/experiments/{experiment}/runs?workflowType=machine_learning"
                "&orderByKey=metrics.%60final%2Favg_incremental_accuracy%60&orderByAsc=false")
    wait_until(lambda: browser.find_elements(By.XPATH, "//*[contains(text(), 'Sort: final/avg_incremental_accuracy')]"),
               "the sort by the final metric", timeout=60)
    # The table first shows the runs newest first, then re-sorts (later on a loaded machine).
    def sorted_rows() -> list[str] | None:
        names = settled(browser, 9)
        return names if names and set(names[:len(finished)]) == finished else None

    names = wait_until(sorted_rows, "finished runs first in the sorted table", timeout=60)
    assert names[0] == best

    # The parent's page: its description starts with a link to the best trial, and the link opens it.
    best_id = next(c.info.run_id for c in children if c.info.run_name == best)
    browser.get(f"{mlflow_ui}/#/experiments/{experiment}/runs/{parent.info.run_id}")
    def click_best_link() -> bool:
        links = [a for a in browser.find_elements(By.TAG_NAME, "a")
                 if a.text == best and best_id in (a.get_attribute("href") or "")]
        if links:
            links[0].click()  # MLflow opens description links in a new tab
        return bool(links)

    wait_until(lambda: unless_redrawn(click_best_link), "the best trial's link in the parent's description", timeout=60)

    def best_page_open() -> bool:
        for handle in browser.window_handles:
            browser.switch_to.window(handle)
            if best_id in browser.current_url:
                return True
        return False

    wait_until(best_page_open, "the best trial's page", timeout=30)

    # A stopped trial's page says so first thing, with the partial value marked as such.
    stopped = next(c for c in children if c.data.tags["aepg.status"] == "stopped early")
    browser.get(f"{mlflow_ui}/#/experiments/{experiment}/runs/{stopped.info.run_id}")
    note = wait_until(lambda: unless_redrawn(lambda: [e.text for e in browser.find_elements(
        By.XPATH, "//*[starts-with(normalize-space(text()), 'stopped early, ')]") if e.is_displayed()]),
        "the stopped trial's description", timeout=60)
    assert "when it stopped (partial: not comparable with finished trials)" in note[0]


def grouped_rows(driver) -> dict[str, list[str]] | None:
    """The runs table grouped: each group's title ("Group: ce", "Additional runs") to the run names
    under it, top to bottom (None while the table redraws)."""
    from selenium.webdriver.common.by import By

    def read() -> dict[str, list[str]]:
        rows = driver.find_elements(By.CSS_SELECTOR, "[role=row][row-index]")
        named = sorted((int(row.get_attribute("row-index")), row.text.splitlines()) for row in rows)
        groups, current = {}, None
        for _, lines in named:  # the name column's rows; the other columns' rows start otherwise
            if lines and lines[0] == "Pin group":
                current = next(line for line in lines[1:] if not line.startswith("#"))
                groups[current] = []
            elif lines and lines[0] == "Pin run" and current is not None:
                groups[current].append(lines[1])
        return groups

    return unless_redrawn(read)


@pytest.mark.browser
def test_grouped_by_objective_in_the_mlflow_ui_a_paired_sweep_counts_exactly_its_arm_runs(paired_sweep, browser):
    """Grouped by `objective.kind` as the README says, each group holds exactly the arm runs of that
    arm and no configuration run (those log only what their arms share); the sweep run's artifacts
    hold the figure of aEPG against CE."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    client, (parent,), children = sweep_runs(paired_sweep / "mlflow.db")
    arms = {kind: sorted(c.info.run_name for c in children if c.data.tags.get("aepg.arm") == kind)
            for kind in ("ce", "aepg")}
    configurations = [c.info.run_name for c in children if "aepg.arm" not in c.data.tags]
    assert len(arms["ce"]) == len(arms["aepg"]) == 4 and len(configurations) == 2
    assert "paired_difference.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    experiment = parent.info.experiment_id
    with mlflow_server(paired_sweep / "mlflow.db", paired_sweep / "ui.log") as url:
        browser.get(f"{url}/#/experiments/{experiment}/runs?workflowType=machine_learning")
        wait_until(lambda: run_names(browser) == [parent.info.run_name], "the sweep run in the runs table", timeout=60)
        browser.find_element(By.XPATH, "//button[normalize-space(.)='Group by']").click()
        wait_until(lambda: browser.find_elements(By.XPATH, "//input[@placeholder='Search']"), "the group-by menu")
        browser.switch_to.active_element.send_keys("objective.kind")

        def choose() -> bool:
            options = [e for e in browser.find_elements(By.CSS_SELECTOR, "[role=option], [role=menuitem], "
                                                                         "[role=menuitemcheckbox]")
                       if e.text == "objective.kind"]
            if options:
                options[0].click()
            return bool(options)

        wait_until(lambda: unless_redrawn(choose), "objective.kind in the group-by menu", timeout=30)
        browser.switch_to.active_element.send_keys(Keys.ESCAPE)

        def grouped() -> dict | None:
            groups = grouped_rows(browser)
            return groups if groups and {"Group: ce", "Group: aepg"} <= set(groups) else None

        groups = wait_until(grouped, "the runs grouped by objective.kind", timeout=60)
        assert sorted(groups["Group: ce"]) == arms["ce"] and sorted(groups["Group: aepg"]) == arms["aepg"], groups
        assert set(groups) == {"Group: ce", "Group: aepg", "Additional runs"}, "no third arm made of configurations"

        # The sweep run's artifacts list the figure of aEPG against CE.
        browser.get(f"{url}/#/experiments/{experiment}/runs/{parent.info.run_id}/artifacts")
        wait_until(lambda: browser.find_elements(By.XPATH, "//*[normalize-space(text())='paired_difference.png']"),
                   "paired_difference.png among the sweep run's artifacts", timeout=60)


@pytest.mark.browser
def test_sorting_a_seed_sweep_by_its_ranking_metric_in_the_mlflow_ui_puts_the_declared_best_first(seed_sweep, browser):
    """In the runs table of a seed ladder with a confirmation, sorted by final/ (descending) as a
    researcher would, the first row is the best the sweep declared (a confirmed configuration),
    not a seed run or a search trial with a higher number on fewer or chosen seeds."""
    from selenium.webdriver.common.by import By

    client, (parent,), _ = sweep_runs(seed_sweep / "mlflow.db")
    best = client.get_run(parent.data.tags["best_run_id"]).info.run_name
    with mlflow_server(seed_sweep / "mlflow.db", seed_sweep / "ui.log") as url:
        browser.get(f"{url}/#/experiments/{parent.info.experiment_id}/runs?workflowType=machine_learning"
                    "&orderByKey=metrics.%60final%2Favg_incremental_accuracy%60&orderByAsc=false")
        wait_until(lambda: browser.find_elements(By.XPATH, "//*[contains(text(), 'Sort: final/avg_incremental_accuracy')]"),
                   "the sort by the final metric", timeout=60)

        def first_rows() -> list[str] | None:
            first = run_names(browser)
            time.sleep(1.0)
            return first if first and run_names(browser) == first else None

        names = wait_until(first_rows, "the sorted runs", timeout=60)
    assert names[0] == best, names


@pytest.fixture(scope="module")
def seed_sweep(ray_address, tmp_path_factory):
    """A real seed ladder with a confirmation stage, in its own folder: TPE over one key, each
    configuration of three on seed 0 first, ASHA keeping the better third on seeds 1-2, then the best
    configuration trained again on fresh seeds 7 and 8."""
    folder = tmp_path_factory.mktemp("seed-sweep")
    base = {**TINY_BASE, "benchmark": {"num_tasks": 2, "max_train_per_class": 12, "max_test_per_class": 6}}
    path = write_sweep(folder, space={"train.lr": {"loguniform": [1.0e-4, 1.0e-3]}}, seeds=[0, 1, 2],
                       base_overrides=base, search={"algorithm": "tpe", "seed": 0, "num_trials": 3, "max_concurrent": 2},
                       scheduler={"kind": "asha", "fidelity": "seeds", "grace_period": 1, "reduction_factor": 3},
                       confirm={"top_k": 1, "seeds": [7, 8]})
    return swept_in(folder, path, ray_address)


def test_a_seed_ladder_trains_the_configurations_kept_on_more_seeds(seed_sweep):
    """Every seed of a configuration is a run nested under the configuration's run, holding its own
    value as seed_run/ (never final/); Optuna learns the seed-mean. The confirmation's fresh seeds
    decide the leaderboard, and only the confirmed configuration's run holds final/ (its mean), so
    sorting the store by final/ puts the declared best first."""
    workdir = seed_sweep
    client, (parent,), runs = sweep_runs(workdir / "mlflow.db")
    children = [r for r in runs if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]
    trials = [r for r in children if "aepg.stage" not in r.data.tags]
    nested = [r for r in runs if r.data.tags.get("aepg.status") == "seed run"]
    assert len(trials) == 3
    finished = [t for t in trials if t.data.tags["aepg.status"] == "finished"]
    stopped = [t for t in trials if t.data.tags["aepg.status"] == "stopped early"]
    assert finished and len(finished) + len(stopped) == 3  # the first to reach a rung always goes on
    assert parent.data.params["search.scheduler"].startswith("ASHA(fidelity=seeds, grace_period=1")
    for run in nested:
        assert "seed_run/avg_incremental_accuracy" in run.data.metrics
        assert not any(key.startswith("final/") for key in run.data.metrics), run.info.run_name
    for trial in finished:
        seeds = [r for r in nested if r.data.tags["mlflow.parentRunId"] == trial.info.run_id]
        assert sorted(r.data.params["seed"] for r in seeds) == ["0", "1", "2"]
        assert {r.data.tags["aepg.config_id"] for r in seeds} == {trial.data.tags["aepg.config_id"]}
        values = [r.data.metrics["seed_run/avg_incremental_accuracy"] for r in seeds]
        mean = trial.data.metrics["seeds/mean_avg_incremental_accuracy"]
        assert mean == pytest.approx(sum(values) / 3, abs=1e-12) and trial.data.tags["aepg.seeds_done"] == "3"
        assert "seeds/count" not in trial.data.metrics, "the count is the step and a tag, not a ramp chart"
        assert trial.data.tags["aepg.optuna_state"] == "COMPLETE"
        assert "final/avg_incremental_accuracy" not in trial.data.metrics, "the confirmation decides"
    for trial in stopped:  # one seed, and Optuna told the truth: pruned
        assert trial.data.tags["aepg.seeds_done"] == "1" and trial.data.tags["aepg.optuna_state"] == "PRUNED"
        (seed,) = [r for r in nested if r.data.tags["mlflow.parentRunId"] == trial.info.run_id]
        assert seed.data.params["seed"] == "0" and "final/avg_incremental_accuracy" not in trial.data.metrics
    # The searcher's own record: what Optuna was told for each complete trial is its seed-mean.
    searcher = SweepOptunaSearch(metric="seeds/mean_avg_incremental_accuracy", mode="max", full_budget=3)
    searcher.restore_from_dir(parent.data.params["sweep.path"])
    told = sorted(t.value for t in searcher.study.trials if t.state.name == "COMPLETE")
    assert told == pytest.approx(sorted(t.data.metrics["seeds/mean_avg_incremental_accuracy"] for t in finished),
                                 abs=1e-12)
    # The confirmation: the search's best configuration (by seed-mean) on seeds 7 and 8 only.
    (confirmed,) = [r for r in children if r.data.tags.get("aepg.stage") == "confirm"]
    top = max(t.data.metrics["seeds/mean_avg_incremental_accuracy"] for t in finished)
    best = {t.data.tags["aepg.config_id"]: t for t in finished if t.data.metrics["seeds/mean_avg_incremental_accuracy"] == top}
    assert confirmed.data.tags["aepg.config_id"] in best  # one of the best (tiny data can tie them)
    best = best[confirmed.data.tags["aepg.config_id"]]
    assert confirmed.data.params["train.lr"] == best.data.params["train.lr"] and confirmed.data.tags["aepg.seeds"] == "7,8"
    assert "seed" not in confirmed.data.params, "a configuration's run logs what its seeds share"
    fresh = [r for r in nested if r.data.tags["mlflow.parentRunId"] == confirmed.info.run_id]
    assert sorted(r.data.params["seed"] for r in fresh) == ["7", "8"] and confirmed.data.tags["aepg.status"] == "finished"
    assert confirmed.info.run_name.startswith("t04-confirm-"), "marked wherever it is named"
    confirmation_mean = sum(r.data.metrics["seed_run/avg_incremental_accuracy"] for r in fresh) / 2
    assert confirmed.data.metrics["final/avg_incremental_accuracy"] == pytest.approx(confirmation_mean, abs=1e-12)
    folder = workdir / parent.data.params["sweep.path"]
    rows = list(csv.DictReader(io.StringIO((folder / "leaderboard.csv").read_text())))
    assert rows[0]["stage"] == "confirm" and rows[0]["progress"] == "2/2 seeds" and rows[0]["seeds"] == "7 8"
    assert {row["progress"] for row in rows[1:]} <= {"3/3 seeds", "1/3 seeds"} and rows[1]["stage"] == "search"
    assert "stage confirm: trained again on fresh seeds" in (folder / "leaderboard.txt").read_text()
    assert parent.data.tags["best_run_id"] == confirmed.info.run_id
    assert f"final/avg_incremental_accuracy = {confirmation_mean:.4f} over the confirmation's seeds 7, 8" in \
        parent.data.tags["mlflow.note.content"].splitlines()[0]
    # What MLflow sorts on is what ranks: the store sorted by final/ starts with the declared best.
    (top, *_) = client.search_runs([parent.info.experiment_id], order_by=["metrics.`final/avg_incremental_accuracy` DESC"])
    assert top.info.run_id == confirmed.info.run_id
    assert yaml.safe_load((folder / "best.yaml").read_text())["train"]["lr"] == float(best.data.params["train.lr"])
    assert parent.data.tags["sweep.noise_verdict"].startswith(("seed noise", "one finished configuration"))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "sweeps").glob("*.yaml")))
def test_every_shipped_sweep_file_passes_its_dry_run(name, workdir):
    """The README's presets, as a user would first try them."""
    result = run_aepg(["sweep", str(REPO / "sweeps" / name), "--dry-run"], cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    declared = yaml.safe_load((REPO / "sweeps" / name).read_text())["name"]
    assert result.stdout.startswith(f"sweep {declared}: ")
    if name == "quickstart.yaml":  # the main job: aEPG against CE, paired
        assert "x 2 arms (ce, aepg)" in result.stdout, result.stdout

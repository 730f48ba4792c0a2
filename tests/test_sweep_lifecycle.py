"""How sweeps on a real local Ray instance, writing to a real MLflow store, end, stop and resume:
no trial finishing, a driver killed twice, stop signals, missing resources; and how their trials
run (Ray Train workers, data ladders, paired runs at once, trade-offs). The rest: test_sweep.py."""

import csv
import io
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import TINY_BASE, run_aepg, start_aepg, sweep_runs, through_a_fault, wait_until, write_sweep
from mlflow import MlflowClient

from aepg.cli import main

pytestmark = pytest.mark.ray


def test_a_sweep_in_which_no_trial_finishes_fails_and_says_why(ray_address, workdir):
    path = write_sweep(workdir, space={"model.head_init_std": {"choice": [1.0e37, 2.0e37]}},  # infinite logits
                       search={"algorithm": "grid"}, scheduler={"kind": "none"}, trial={"cpus": 1, "max_failures": 0})
    result = run_aepg(["sweep", path], cwd=workdir, env={"RAY_ADDRESS": ray_address})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "no trial finished (2 failed); first failure: " in result.stderr and "NonFiniteLoss" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout, "tracebacks go to driver.log and the runs' error.log"
    client, (parent,), children = sweep_runs(workdir / "mlflow.db")
    assert parent.info.status == "FAILED" and parent.data.tags["failure_reason"].startswith("no trial finished")
    assert [c.info.status for c in children] == ["FAILED", "FAILED"]
    for child in children:
        trace = (Path(client.download_artifacts(child.info.run_id, "error.log", str(workdir)))).read_text()
        assert 'File "' in trace and "aepg.trainer.NonFiniteLoss: loss became" in trace and "\x1b[" not in trace
    report = run_aepg(["report", "tiny"], cwd=workdir)  # nothing to report: one line, exit 1, nothing written
    assert report.returncode == 1 and report.stdout == "", report.stderr
    assert report.stderr.startswith("aepg: no configuration of tiny-") and report.stderr.count("\n") == 1
    assert report.stderr.rstrip().endswith(f"continue it with: aepg sweep --resume {parent.data.params['sweep.path']}")
    assert not (workdir / "sweep-report-tiny").exists()



def live_children(db) -> list:
    """The sweep's child runs, once its driver has set up the store: two processes creating
    MLflow's sqlite schema at once collide, and the driver is the one that should."""
    if not list(db.parent.glob("aepg_sweeps/*/aepg_sweep.json")):
        return []
    return sweep_runs(db)[2]


def _finished(child) -> bool:
    return child.info.status == "FINISHED"


def _one_task_done(child) -> bool:
    return int(child.data.tags.get("aepg.tasks_done", 0)) >= 1


def _finished_count(db) -> int:
    return sum(_finished(child) for child in live_children(db))


def test_a_driver_killed_twice_resumes_without_duplicates(ray_address, workdir):
    """A sweep whose driver dies twice, as on a cluster. First SIGTERM mid-task to the sweep's whole
    process group, as `timeout`, Slurm and `kubectl delete` send it, the local Ray the driver
    started included: handled as Ctrl-C, Tune saves its state and stops the trials, and only the
    trials' open runs say the sweep was cut short. Then the resumed driver (on the shared Ray) dies
    by SIGKILL once a trial finished. The second resume finishes the others, starting those no
    driver had started, and no trial runs twice."""
    trials, tasks, db = 4, 2, workdir / "mlflow.db"
    base = {**TINY_BASE, "benchmark": {**TINY_BASE["benchmark"], "num_tasks": tasks}}
    path = write_sweep(workdir, base_overrides=base, scheduler={"kind": "none"},
                       search={"algorithm": "random", "seed": 1, "num_trials": trials, "max_concurrent": 2})
    driver = start_aepg(["sweep", path], workdir, {}, own_group=True)  # its own local Ray, in its group
    try:
        wait_until(lambda: any(_one_task_done(c) for c in live_children(db)), "a task to be done", driver)
        os.killpg(driver.pid, signal.SIGTERM)
        output, _ = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 143, output[-3000:]
    assert "sweep stopped by SIGTERM; continue it with: aepg sweep --resume" in output
    assert "Tuner.restore" not in output, "aepg's resume command is the one to give"
    _, parents, children = sweep_runs(db)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert "RUNNING" not in {c.info.status for c in children} and "KILLED" in {c.info.status for c in children}
    assert all(c.data.tags["aepg.status"] == "interrupted" for c in children if c.info.status == "KILLED")
    (folder,) = list((workdir / "aepg_sweeps").glob("tiny-*"))

    finished = _finished_count(db)
    resumed = start_aepg(["sweep", "--resume", str(folder)], workdir, {"RAY_ADDRESS": ray_address})
    try:
        wait_until(lambda: _finished_count(db) > finished, "a trial to finish", resumed)
        resumed.send_signal(signal.SIGKILL)
        resumed.communicate(timeout=120)
    finally:
        resumed.kill()
    assert _finished_count(db) < trials, "nothing left to resume"
    time.sleep(2)  # the dead driver's trials end with its job

    again = run_aepg(["sweep", "--resume", str(folder)], cwd=workdir, env={"RAY_ADDRESS": ray_address})
    assert again.returncode == 0, again.stderr[-3000:]
    _, parents, children = sweep_runs(db)
    assert [p.info.status for p in parents] == ["FINISHED"]
    trial_ids = [c.data.tags["aepg.trial_id"] for c in children]
    assert len(trial_ids) == trials and len(set(trial_ids)) == trials, "a trial is missing or duplicated"
    assert all(c.info.status == "FINISHED" for c in children)
    assert all(c.data.tags["aepg.tasks_done"] == str(tasks) and c.data.tags["aepg.status"] == "finished"
               for c in children)
    assert not [r.info.run_name for r in [*parents, *children] if "failure_reason" in r.data.tags], "stale reasons"


@pytest.mark.parametrize("stop", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.production),
                                  pytest.param(signal.SIGINT, marks=pytest.mark.production)], ids=lambda s: s.name)
def test_a_paired_sweep_stopped_mid_task_closes_every_run_it_opened(stop, workdir):
    """A stop signal to a paired sweep's process group (its own local Ray included) once an arm run
    has done a task: the sweep, configuration and arm runs all end KILLED, none stays RUNNING, and
    the line that resumes it is printed."""
    db = workdir / "mlflow.db"
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 3}}  # time to stop it mid-run
    path = write_sweep(workdir, base_overrides=base, space={"train.lr": {"choice": [0.0003, 0.001]}},
                       compare={"objective.kind": ["ce", "aepg"]}, seeds=[0, 1],
                       search={"algorithm": "grid", "max_concurrent": 2}, scheduler={"kind": "none", "fidelity": "seeds"})
    driver = start_aepg(["sweep", path], workdir, {}, own_group=True)
    output = through_a_fault(driver, lambda: any(_one_task_done(c) for c in live_children(db) if "aepg.arm" in c.data.tags),
                             "an arm run's first task", lambda: os.killpg(driver.pid, stop), workdir)
    assert driver.returncode == 128 + stop, output[-3000:]
    reason = "interrupted (Ctrl-C)" if stop == signal.SIGINT else f"stopped by {stop.name}"
    assert f"sweep {reason}; continue it with: aepg sweep --resume aepg_sweeps/tiny-" in output, output[-3000:]
    _, parents, children = sweep_runs(db)
    arms = [c for c in children if "aepg.arm" in c.data.tags]
    assert [p.info.status for p in parents] == ["KILLED"] and arms
    assert {c.info.status for c in children} <= {"KILLED", "FINISHED"}, {c.info.run_name: c.info.status for c in children}
    assert "KILLED" in {c.info.status for c in arms}, {c.info.run_name: c.info.status for c in children}


def test_a_sweep_waiting_for_resources_the_cluster_lacks_stops_with_its_resume_line(ray_address, workdir):
    """Trials asking for a GPU on a CPU-only cluster reached through RAY_ADDRESS wait for an
    autoscaler; SIGTERM then ends the sweep as any stop does: its run KILLED, none left RUNNING, and
    the line that resumes it (not "no trial ran", exit 1, FAILED)."""
    db = workdir / "mlflow.db"
    path = write_sweep(workdir, trial={"cpus": 1, "gpus": 1, "max_failures": 0},
                       search={"algorithm": "random", "seed": 1, "num_trials": 2, "max_concurrent": 2})
    driver = start_aepg(["sweep", path], workdir, {"RAY_ADDRESS": ray_address})

    def stop_while_pending() -> None:
        time.sleep(5)  # its trials pending, for a GPU
        driver.send_signal(signal.SIGTERM)

    output = through_a_fault(driver, lambda: list(workdir.glob("aepg_sweeps/*/aepg_sweep.json")), "the sweep to start",
                             stop_while_pending, workdir)
    assert driver.returncode == 143, output[-3000:]
    assert "waiting for the autoscaler" in output and "sweep stopped by SIGTERM; continue it with: aepg sweep --resume" \
        in output, output[-3000:]
    _, parents, children = sweep_runs(db)
    assert [p.info.status for p in parents] == ["KILLED"] and not [c for c in children if c.info.status == "RUNNING"]



def test_trials_can_be_torch_trainer_runs(ray_address, workdir):
    path = write_sweep(
        workdir,
        base_overrides={**TINY_BASE, "benchmark": {**TINY_BASE["benchmark"], "num_tasks": 2},
                        "scaling": {"num_workers": 2, "cpus_per_worker": 0.9, "torch_threads": 1}},
        space={"train.lr": {"choice": [0.0005]}},
        search={"algorithm": "grid", "max_concurrent": 1},
        scheduler={"kind": "none"},
        trial={"cpus": 0.1},
    )
    assert main(["sweep", path]) == 0
    _, parents, children = sweep_runs(workdir / "mlflow.db")
    (child,) = children
    assert child.info.status == "FINISHED" and child.data.tags["aepg.tasks_done"] == "2"
    assert child.data.params["scaling.num_workers"] == "2"
    # Reported through ray.train.report on both ranks and TuneReportCallback, logged once by rank 0.
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
    assert len(steps) == len(set(steps)) > 0
    assert parents[0].data.tags["sweep.trials_finished"] == "1"



def test_a_data_ladder_restarts_promoted_trials_at_more_data(ray_address, workdir):
    path = write_sweep(workdir, space={"train.lr": {"loguniform": [1.0e-4, 1.0e-3]}},
                       search={"algorithm": "tpe", "seed": 0, "num_trials": 4, "max_concurrent": 2},
                       scheduler={"kind": "asha", "fidelity": "data", "reduction_factor": 2, "min_fraction": 0.5})
    assert main(["sweep", path]) == 0
    client, (parent,), children = sweep_runs(workdir / "mlflow.db")
    trials = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
    levels = [c for c in children if "aepg.fidelity_level" in c.data.tags]
    assert len(trials) == 4 and len(levels) == 4, "every trial trains the half-data level first"
    for level in levels:  # 10 of the 20 training images per class; no final metric to rank on
        assert level.data.params["benchmark.max_train_per_class"] == "10"
        assert level.data.tags["aepg.status"] == "low fidelity" and level.info.status == "FINISHED"
        assert not any(key.startswith("final/") for key in level.data.metrics)
    finished = [c for c in trials if c.data.tags["aepg.status"] == "finished"]
    stopped = [c for c in trials if c.data.tags["aepg.status"] == "stopped early"]
    assert finished and len(finished) + len(stopped) == 4  # the first to reach a rung always goes on
    for child in finished:  # restarted at the full data: 0.5 + 1 tasks' worth per task
        assert child.data.params["benchmark.max_train_per_class"] == "20"
        assert child.data.tags["aepg.levels_done"] == "2" and child.data.metrics["compute/tasks"] == pytest.approx(4.5)
        assert "final/avg_incremental_accuracy" in child.data.metrics and child.data.tags["aepg.optuna_state"] == "COMPLETE"
    for child in stopped:
        assert child.data.tags["aepg.levels_done"] == "1" and child.data.metrics["compute/tasks"] == pytest.approx(1.5)
        assert "fidelity/level" not in child.data.metrics, "the level is the step and a tag, not a ramp chart"
        assert "final/avg_incremental_accuracy" not in child.data.metrics and child.data.tags["aepg.optuna_state"] == "PRUNED"
    leaderboard = open(client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(workdir))).read()
    rows = list(csv.DictReader(io.StringIO(leaderboard)))
    assert [r["progress"] for r in rows] == ["level 2/2"] * len(finished) + ["level 1/2"] * len(stopped)



def training_span(client, run) -> tuple[int, int]:
    """When a run trained: its first step's and its last task's metric timestamps (ms)."""
    first = min(m.timestamp for m in client.get_metric_history(run.info.run_id, "train/loss"))
    last = max(m.timestamp for m in client.get_metric_history(run.info.run_id, "eval/accuracy"))
    return first, last


def test_a_paired_configurations_runs_train_at_once(ray_address, workdir):
    """One configuration (nothing searched), two arms on two seeds, no early stopping: its four runs
    go out together as Ray tasks of one CPU each, so on this 2-CPU Ray two of them train at any time,
    while the configuration's own process holds no CPU."""
    base = {**TINY_BASE, "benchmark": {"num_tasks": 2, "max_train_per_class": 30, "max_test_per_class": 6}}
    path = write_sweep(workdir, space={}, compare={"objective.kind": ["ce", "aepg"]}, seeds=[0, 1],
                       base_overrides=base, search={"algorithm": "grid"}, scheduler={"kind": "none", "fidelity": "seeds"})
    result = run_aepg(["sweep", path], cwd=workdir, env={"RAY_ADDRESS": ray_address})
    assert result.returncode == 0, result.stderr[-3000:]
    client, (parent,), runs = sweep_runs(workdir / "mlflow.db")
    (trial,) = [r for r in runs if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]
    arms = [r for r in runs if r.data.tags.get("aepg.status") == "arm run"]
    assert len(arms) == 4 and {r.info.status for r in [parent, trial, *arms]} == {"FINISHED"}
    assert parent.data.params["sweep.protocol"] == "paired" and trial.info.run_name == "t01"
    spans = sorted(training_span(client, r) for r in arms)
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if b[0] < a[1]]
    assert overlapping, f"no two runs trained at the same time: {spans}"
    assert not any(b[0] < a[1] and c[0] < min(a[1], b[1]) for i, a in enumerate(spans) for j, b in enumerate(spans)
                   if j > i for c in spans[j + 1:]), "three runs at once on 2 CPUs"


def test_a_trade_off_sweep_searches_both_metrics_and_marks_its_front(ray_address, workdir):
    """last_accuracy (max) against forgetting (min) through real Ray, Optuna (a two-objective TPE
    study) and MLflow: every trial is told to Optuna with both values, the front the leaderboard
    marks is the non-dominated set of the values MLflow holds, best.yaml is its best accuracy, and
    the parent run holds the front's plot. Its output is not a terminal (as in CI): plain progress
    lines, none of Ray Tune's tables or the trials' own output, and the results last."""
    base = {**TINY_BASE, "benchmark": {"num_tasks": 2, "max_train_per_class": 12, "max_test_per_class": 6}}
    path = write_sweep(workdir, space={"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}}, base_overrides=base,
                       search={"algorithm": "tpe", "seed": 0, "num_trials": 3, "startup_trials": 2, "max_concurrent": 2},
                       scheduler={"kind": "none"}, metric="last_accuracy", mode="max", trade_off={"forgetting": "min"})
    result = run_aepg(["sweep", path], cwd=workdir, env={"RAY_ADDRESS": ray_address})
    assert result.returncode == 0, result.stderr[-3000:]
    client, (parent,), children = sweep_runs(workdir / "mlflow.db")
    assert parent.data.params["trade_off"] == '{"forgetting": "min"}' and len(children) == 3
    assert {c.data.tags["aepg.optuna_state"] for c in children} == {"COMPLETE"}, "Optuna took both values"
    values = {c.info.run_name: (c.data.metrics["final/last_accuracy"], c.data.metrics["final/forgetting"])
              for c in children}
    on_front = {name for name, (acc, forg) in values.items()
                if not any(a >= acc and f <= forg and (a, f) != (acc, forg) for a, f in values.values())}
    folder = workdir / parent.data.params["sweep.path"]
    rows = list(csv.DictReader(io.StringIO((folder / "leaderboard.csv").read_text())))
    assert {row["trial"] for row in rows if row["front"] == "front"} == on_front
    best = max(on_front, key=lambda name: values[name][0])
    assert parent.data.tags["best_run_id"] == next(c.info.run_id for c in children if c.info.run_name == best)
    said = " ".join(result.stdout.split())
    assert "Pareto front of last_accuracy (max), forgetting (min): #" in said and "the front's best last_accuracy" in said
    assert "pareto_front.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    out = result.stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert sum(line.startswith("  started   t0") for line in lines) == 3
    assert sum(": task 2/2, eval/accuracy " in line for line in lines) == 3
    assert "[3/3 trials, best final/last_accuracy " in out and "[1/3 trials, " in out
    for noise in ("Trial status", "╭", "TensorBoard", "RayTrainWorker", "pid=", "system_metrics", "INFO"):
        assert noise not in out and noise not in result.stderr, noise
    ends = next(i for i, line in enumerate(lines) if line.startswith("best config: "))
    assert lines[ends + 2].startswith("sweep outputs: ") and lines[ends + 3].startswith("see it with: mlflow ui")
    assert lines[ends + 4].startswith("http://127.0.0.1:5000/#/experiments/") and "leaderboard, ranked on" in out
    assert " ".join(lines[ends + 5:]).startswith("Pareto front of last_accuracy (max), forgetting (min): #"), \
        "the answer is the last thing said"

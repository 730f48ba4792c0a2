"""Checkpoints: atomic files, digest-checked on load, fallback to the previous one; exact resume."""

import signal

import pytest
import torch
from conftest import DIGITS, final_matrix, interrupt_after_task, run_aepg
from mlflow import MlflowClient

from aepg.checkpoints import CheckpointStore
from aepg.cli import main
from aepg.config import load_config
from aepg.launch import run
from aepg.trainer import Snapshot, TrainState


def snapshot(task: int, epoch: int) -> Snapshot:
    return Snapshot(TrainState(task, epoch, 10 * task + epoch, [[0.5]] * task), {"head.weight": torch.full((2, 2), float(task))})


def test_newest_readable_checkpoint_wins_and_old_ones_are_pruned(tmp_path):
    store = CheckpointStore(str(tmp_path), "run", num_to_keep=2)
    for task in (1, 2, 3):
        store.save(snapshot(task, 0), {"seed": 0})
    assert store._names() == ["ckpt-0002-0000.pt", "ckpt-0003-0000.pt"]
    restored, config = store.load_latest()
    assert restored.state.task == 3 and restored.state.global_step == 30 and config == {"seed": 0}
    assert torch.equal(restored.model["head.weight"], torch.full((2, 2), 3.0))
    assert not list((tmp_path / "run" / "checkpoints").glob(".*partial"))


@pytest.mark.parametrize("damage", ["truncate", "flip-byte", "empty"])
def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, caplog):
    store = CheckpointStore(str(tmp_path), "run")
    store.save(snapshot(1, 0), {})
    newest = tmp_path / "run" / "checkpoints" / store.save(snapshot(2, 0), {}).rsplit("/", 1)[1]
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip-byte":
        newest.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    else:
        newest.write_bytes(b"")
    with caplog.at_level("WARNING", logger="aepg"):
        restored, _ = store.load_latest()
    assert restored.state.task == 1
    assert f"unreadable checkpoints in {store.uri}: {newest.name} (" in caplog.text and "resuming from ckpt-0001" in caplog.text


def test_no_checkpoint(tmp_path):
    assert CheckpointStore(str(tmp_path), "never-ran").load_latest() is None


SHORT = ["benchmark.num_tasks=3", "train.epochs=1", "checkpoint.every_epochs=1", "benchmark.max_train_per_class=40"]


def test_terminated_run_resumes_exactly(workdir):
    """SIGTERM (timeout, Slurm, Kubernetes) stops a run as Ctrl-C does (test_distributed sends SIGINT)."""
    run_id = interrupt_after_task(workdir, 2, SHORT, num_tasks=3, stop=signal.SIGTERM)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    stopped = client.get_run(run_id)
    assert stopped.info.status == "KILLED" and stopped.data.tags["failure_reason"] == "stopped by SIGTERM"
    resumed = run_aepg(["train", DIGITS, *SHORT, "--resume", run_id], cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at task 3" in resumed.stderr
    mlflow_run, R_resumed = final_matrix(workdir, run_id)
    assert mlflow_run.info.status == "FINISHED" and "failure_reason" not in mlflow_run.data.tags
    assert len(client.search_runs([mlflow_run.info.experiment_id])) == 1

    cfg = load_config(DIGITS, [*SHORT, f"storage_path={workdir / 'uninterrupted'}",
                               f"tracking_uri=sqlite:///{workdir / 'uninterrupted.db'}"])
    R = run(cfg).state.accuracy_matrix
    assert R_resumed == R
    tasks_logged = [m.step for m in client.get_metric_history(run_id, "eval/accuracy")]
    assert tasks_logged == [1, 2, 3], "each task's evaluation is logged once, across the resume"
    assert len(client.get_metric_history(run_id, "final/last_accuracy")) == 1
    manifests = sorted(a.path for a in client.list_artifacts(run_id) if a.path.startswith("manifest"))
    assert manifests == ["manifest-resumed-at-task-3-epoch-0.json", "manifest.json"], "each start records its own"
    for key in mlflow_run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} has a point logged twice"


def test_a_resumed_run_logs_no_point_twice(tmp_path):
    """The steps between the checkpoint and the stop are recomputed on resume: the points logged
    before the stop stay, the recomputed ones at those steps are not added, later ones are."""
    from aepg.preflight import charts
    from aepg.tracking import Tracker

    cfg = load_config(DIGITS, [f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "figures=false"])
    tracker = Tracker(cfg.tracking_uri)
    run_id = tracker.client.create_run(tracker.client.create_experiment("resume")).info.run_id
    tracker.run(run_id).reporter(charts(cfg)).log_steps([(step, {"loss": 1.0}) for step in range(1, 11)])
    tracker.run(run_id).reporter(charts(cfg)).log_steps([(step, {"loss": 2.0, "p_y": 0.5}) for step in range(6, 16)])
    history = sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, "train/loss"))
    assert history == [(step, 1.0) for step in range(1, 11)] + [(step, 2.0) for step in range(11, 16)]
    assert len(tracker.client.get_metric_history(run_id, "train/p_y")) == 10, "a metric new on resume is logged whole"


def test_resume_refuses_a_changed_config(workdir, capsys):
    """The command line's own entry point, in this process (the refusals come before any training)."""
    tiny = ["benchmark.num_tasks=2", "train.epochs=1", "benchmark.max_train_per_class=20"]
    run_id = run(load_config(DIGITS, tiny)).run.run_id

    def resume(*args: str) -> tuple[int, str]:
        code = main(["train", DIGITS, *tiny, *args])
        return code, capsys.readouterr().err

    code, err = resume("train.lr=0.1", "--resume", run_id)
    assert code == 2 and "train.lr: differs from the resumed run" in err
    code, err = resume("--resume", "no-such-run")
    assert code == 2 and "no checkpoint of run no-such-run" in err
    code, err = resume("--resume", run_id)  # it trained every task: complete, not "resuming at task 3"
    assert code == 2 and f"--resume: run {run_id} is complete: it trained all 2 tasks" in err, err
    MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").delete_run(run_id)
    code, err = resume("--resume", run_id)
    assert code == 2 and f"--resume: MLflow run {run_id} was deleted" in err, err
    assert f"mlflow runs restore --run-id {run_id}" in err and "Traceback" not in err
    MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").restore_run(run_id)
    files = sorted((workdir / "aepg_runs" / run_id / "checkpoints").glob("ckpt-*.pt"))
    for path in files:  # every checkpoint corrupt: each named, no "no checkpoint" and no warning's source line
        path.write_bytes(path.read_bytes()[:-10])
    code, err = resume("--resume", run_id)
    assert code == 2 and f"run {run_id} cannot be resumed: no checkpoint in" in err, err
    assert all(f"{path.name} (digest mismatch" in err for path in files) and len(files) >= 2
    assert "UserWarning" not in err and "no checkpoint of run" not in err


def test_a_resume_keeps_whole_sections_and_single_keys_fixed():
    """A key ending in "." fixes its whole section; any other fixes that key alone."""
    from aepg.config import fixed_on_resume

    assert fixed_on_resume("train.lr") and fixed_on_resume("train.lr_schedule.kind")
    assert fixed_on_resume("train.optimizer.momentum") and fixed_on_resume("model.method.rank")
    assert not fixed_on_resume("train.eval_batch_size") and not fixed_on_resume("train.lr_extra")
    assert not fixed_on_resume("train.epochs_extra") and not fixed_on_resume("scaling.num_workers")


def test_ctrl_c_inside_a_write_to_a_sqlite_store_takes_effect_when_the_write_is_done(tmp_path):
    """A Ctrl-C (a real SIGINT to this process) that lands while a metric batch is being inserted into
    a SQLite MLflow store: the batch is written whole, KeyboardInterrupt comes after it, and the store
    is not left locked, so the run's closing write goes through (it failed with ``database is locked``
    when the interrupt cut the insert)."""
    import os

    import sqlalchemy
    from mlflow.entities import Metric

    from aepg.tracking import Tracker

    client = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}").client
    run_id = client.create_run(client.create_experiment("interrupted")).info.run_id
    engine = client._client._tracking_client.store.engine
    sent = []

    def interrupt_mid_insert(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT") and not sent:
            sent.append(statement)
            os.kill(os.getpid(), signal.SIGINT)

    sqlalchemy.event.listen(engine, "before_cursor_execute", interrupt_mid_insert)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in `aepg train` (a pytest-xdist worker ignores it)
    try:
        with pytest.raises(KeyboardInterrupt):
            client.log_batch(run_id, metrics=[Metric("m", float(i), 0, i) for i in range(500)])
    finally:
        signal.signal(signal.SIGINT, handler)
        sqlalchemy.event.remove(engine, "before_cursor_execute", interrupt_mid_insert)
    assert sent, "the interrupt came inside the insert"
    assert len(client.get_metric_history(run_id, "m")) == 500
    client.set_tag(run_id, "failure_reason", "interrupted (Ctrl-C)")
    client.set_terminated(run_id, status="KILLED")
    assert client.get_run(run_id).info.status == "KILLED"

"""Ray Train on a real local Ray instance (127.0.0.1) with 2 CPU workers."""

import logging
import os
import re
import signal
import threading
import time

import pytest
import torch

from aepg.checkpoints import CheckpointStore
from aepg.config import load_config
from aepg.distributed import Context
from aepg.launch import build_job, run
from aepg.trainer import ContinualTrainer

from conftest import DIGITS, final_matrix, interrupt_after_task, run_aepg, start_aepg, through_a_fault

pytestmark = pytest.mark.ray

# 1 and 2 workers see the same global batches (DistributedSampler interleaves one permutation),
# so they differ only by floating-point order; on this small benchmark that stays within:
TOLERANCE = 0.03


@pytest.fixture(scope="module")
def ray_address():
    import ray

    context = ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=4, include_dashboard=True,
                       dashboard_host="127.0.0.1")
    yield context.address_info["gcs_address"]
    ray.shutdown()


# One benchmark for every test here: 3 tasks of 1 epoch, checkpointed every epoch.
SMALL = ["benchmark.num_tasks=3", "train.epochs=1", "checkpoint.every_epochs=1", "benchmark.max_train_per_class=40",
         "scaling.torch_threads=1"]


def config(tmp_path, *overrides):
    return load_config(DIGITS, [*SMALL, f"storage_path={tmp_path / 'runs'}",
                                f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides])


@pytest.fixture(scope="module")
def two_workers(ray_address, tmp_path_factory):
    """The uninterrupted 2-worker run that the other tests compare with, and its config."""
    cfg = config(tmp_path_factory.mktemp("two-workers"), "scaling.num_workers=2")
    return run(cfg), cfg


def test_one_and_two_workers_agree(two_workers, tmp_path):
    one, (two, two_cfg) = run(config(tmp_path, "scaling.num_workers=1")), two_workers
    for row_one, row_two in zip(one.state.accuracy_matrix, two.state.accuracy_matrix, strict=True):
        assert row_one == pytest.approx(row_two, abs=TOLERANCE)
    assert one.state.global_step == two.state.global_step

    # Evaluation reduced over 2 workers equals a single process scoring the same weights.
    cfg = config(tmp_path)
    model, benchmark, objective = build_job(cfg)
    snapshot, _ = CheckpointStore(two_cfg.storage_path, two.run.run_id).load_latest()
    model.load_trainable_state_dict(snapshot.model)
    trainer = ContinualTrainer(cfg, model, benchmark, objective, Context(device=torch.device("cpu")))
    assert trainer.evaluate(2) == (two.state.accuracy_matrix[-1], two.state.test_sizes)

    client = two.run.tracker.client
    mlflow_run = client.get_run(two.run.run_id)
    assert mlflow_run.info.status == "FINISHED"
    # Only rank 0 logs: one value per step, not one per worker.
    steps = [m.step for m in client.get_metric_history(two.run.run_id, "train/loss")]
    assert len(steps) == len(set(steps)) == two.state.global_step


def ray_workers(address: str) -> list:
    """Ray Train workers of the cluster at ``address`` (never whichever cluster Ray finds first)."""
    from ray.util.state import list_actors

    return list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker")], limit=100)


def test_killed_worker_restarts_from_the_last_checkpoint(ray_address, tmp_path, caplog):
    """A Ray Train worker killed mid-task: the worker group restarts from the last checkpoint, the
    run finishes whole, and the driver says so in one aepg line."""
    caplog.set_level(logging.INFO, logger="aepg")
    cfg = config(tmp_path, "scaling.num_workers=2", "failure.max_failures=1", "train.epochs=2")
    before = {a.actor_id for a in ray_workers(ray_address)}
    killed = {}

    def kill_one_worker_mid_task():
        runs = tmp_path / "runs"
        while not list(runs.glob("*/checkpoints/ckpt-0001-0001.pt")):
            time.sleep(0.2)
        alive = [a for a in ray_workers(ray_address) if a.actor_id not in before and a.state == "ALIVE"]
        killed["pid"] = alive[-1].pid
        os.kill(killed["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_one_worker_mid_task, daemon=True)
    killer.start()
    result = run(cfg)
    killer.join(timeout=5)
    assert "pid" in killed
    started = [a for a in ray_workers(ray_address) if a.actor_id not in before]
    assert len(started) == 4, "the worker group was not restarted"
    said = [r.getMessage() for r in caplog.records if "Ray Train restarted" in r.getMessage()]
    assert len(said) == 1 and re.fullmatch(r"a worker failed; Ray Train restarted the workers on \S+, resuming at task \d, "
                                           r"epoch \d from the last checkpoint \(attempt 2 of 2\)", said[0]), said
    client = result.run.tracker.client
    mlflow_run = client.get_run(result.run.run_id)
    assert mlflow_run.info.status == "FINISHED"
    assert len(result.state.accuracy_matrix) == 3
    assert [m.step for m in client.get_metric_history(result.run.run_id, "eval/accuracy")] == [1, 2, 3]
    assert {a.path for a in client.list_artifacts(result.run.run_id)} >= {"accuracy_matrix.png", "training_curves.png"}


@pytest.mark.production
def test_a_restart_under_aepg_train_is_one_line_and_its_tracebacks_go_to_the_runs_ray_log(ray_address, workdir):
    """`aepg train` with two Ray Train workers, one killed mid-task: the terminal has one aepg line
    for the restart and no traceback; Ray's account of it is in the run's ray.log."""
    before = {a.actor_id for a in ray_workers(ray_address)}
    process = start_aepg(["train", DIGITS, *SMALL, "scaling.num_workers=2", "failure.max_failures=1", "train.epochs=2"],
                         workdir, {"RAY_ADDRESS": ray_address})

    def kill_a_worker() -> None:
        alive = [a for a in ray_workers(ray_address) if a.actor_id not in before and a.state == "ALIVE"]
        os.kill(alive[-1].pid, signal.SIGKILL)

    output = through_a_fault(process, lambda: list(workdir.glob("aepg_runs/*/checkpoints/ckpt-0001-0001.pt")),
                             "a checkpoint of task 2", kill_a_worker, workdir)
    assert process.returncode == 0 and "Traceback" not in output, output[-3000:]
    said = [line for line in output.splitlines() if "Ray Train restarted" in line]
    assert len(said) == 1 and re.search(r"a worker failed; Ray Train restarted the workers on \S+, resuming at task \d, "
                                        r"epoch \d from the last checkpoint \(attempt 2 of 2\)$", said[0]), output[-3000:]
    (ray_log,) = workdir.glob("aepg_runs/*/ray.log")
    assert f"Ray's output (its workers', and any restart's tracebacks): {ray_log}" in output
    assert "Error" in ray_log.read_text()


def test_two_worker_run_resumes_after_interrupt(ray_address, two_workers, workdir):
    overrides = [*SMALL, "scaling.num_workers=2"]
    env = {"RAY_ADDRESS": ray_address}
    run_id = interrupt_after_task(workdir, 1, overrides, env=env, num_tasks=3)
    resumed = run_aepg(["train", DIGITS, *overrides, "--resume", run_id], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    mlflow_run, R_resumed = final_matrix(workdir, run_id)
    assert mlflow_run.info.status == "FINISHED"
    for row_resumed, row in zip(R_resumed, two_workers[0].state.accuracy_matrix, strict=True):
        assert row_resumed == pytest.approx(row, abs=TOLERANCE)


def test_alignment_statistics_reduced_over_two_workers_equal_one_workers(ray_address, tmp_path):
    """Classifier alignment over a linear probe (its features never change): the class statistics
    summed over 2 Ray Train workers, each on its shard, are those of one worker on all the images."""
    probe = ["model.method.kind=none", "model.method.parts.align.epochs=1", "model.method.parts.align.samples_per_class=8",
             "benchmark.num_tasks=2"]
    statistics = []
    for workers in (1, 2):
        cfg = config(tmp_path / str(workers), *probe, f"scaling.num_workers={workers}")
        result = run(cfg)
        snapshot, _ = CheckpointStore(cfg.storage_path, result.run.run_id).load_latest()
        statistics.append({k: v for k, v in snapshot.model.items() if k.startswith("align.statistics.")})
    one, two = statistics
    assert set(one) == {"align.statistics.means", "align.statistics.covariances", "align.statistics.task_of_class"}
    assert bool((one["align.statistics.means"].abs().sum(1) > 0).all()), "every class has its statistics"
    torch.testing.assert_close(two["align.statistics.means"], one["align.statistics.means"], rtol=0, atol=1e-9)
    torch.testing.assert_close(two["align.statistics.covariances"], one["align.statistics.covariances"], rtol=1e-5, atol=1e-6)
    assert torch.equal(two["align.statistics.task_of_class"], one["align.statistics.task_of_class"])

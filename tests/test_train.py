"""Training end to end: the trainer in-process, and `aepg train` writing a real MLflow run."""

import hashlib
import json
from importlib.metadata import version

import pytest
import torch
from mlflow import MlflowClient

import aepg
from aepg.catalog import OBJECTIVES
from aepg.config import load_config
from aepg.distributed import Context
from aepg.launch import build_job, run
from aepg.trainer import ContinualTrainer, NonFiniteLoss, TrainState
from aepg.tracking import Tracker

from conftest import DIGITS, TINY_VIT, run_aepg, run_in_terminal

SMALL = ["benchmark.num_tasks=2", "benchmark.max_train_per_class=20", "benchmark.max_test_per_class=10",
         "train.epochs=2", "train.batch_size=8"]


def small_config(tmp_path, *overrides):
    return load_config(DIGITS, [*SMALL, f"storage_path={tmp_path / 'runs'}",
                                f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides])


def build_trainer(cfg, save):
    model, benchmark, objective = build_job(cfg)
    return ContinualTrainer(cfg, model, benchmark, objective, Context(device=torch.device("cpu")), save=save)


def test_backbone_frozen_and_head_only_epochs_leave_peft_alone(tmp_path):
    cfg = small_config(tmp_path, "train.epochs=3", "train.head_only_epochs=2", "checkpoint.every_epochs=1")
    snapshots = []
    trainer = build_trainer(cfg, lambda s: snapshots.append((s.state.task, s.state.epoch, s.model, s.optimizer)))
    frozen = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items() if "lora_" not in k}
    state = trainer.fit()
    after = trainer.model.backbone.state_dict()
    for key, value in frozen.items():
        assert torch.equal(after[key], value), f"frozen backbone tensor {key} changed"
    assert len(state.accuracy_matrix) == 2
    # After task 1, then after task 2's epochs 1 and 2 (head only, then the switch), then after task 2.
    assert [(t, e) for t, e, _, _ in snapshots] == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    end_task1, head1, head2, end_task2 = snapshots[2][2], snapshots[3][2], snapshots[4][2], snapshots[5][2]
    lora = [k for k in end_task1 if "lora_" in k]
    for key in lora:
        assert torch.equal(end_task1[key], head1[key]) and torch.equal(end_task1[key], head2[key]), key
    assert any(not torch.equal(head2[k], end_task2[k]) for k in lora)
    assert not torch.equal(end_task1["head.weight"], head1["head.weight"])
    # The optimiser is kept inside a phase and dropped where the phase changes (head only -> all).
    assert snapshots[3][3] is not None and snapshots[4][3] is None


def first_task_accuracy(*overrides) -> float:
    """Accuracy on the first task (2 classes) after training it, with the bundled Lite0 weights."""
    cfg = load_config(DIGITS, ["train.epochs=2", "benchmark.max_train_per_class=64", *overrides])
    trainer = build_trainer(cfg, save=None)
    trainer.train_task(trainer.benchmark.tasks[0], TrainState(), None)
    return trainer.evaluate(0)[0][0]


@pytest.mark.slow
@pytest.mark.parametrize("kind", OBJECTIVES.names())
def test_every_objective_learns_the_first_task(kind):
    assert first_task_accuracy(f"objective.kind={kind}") >= 0.8  # chance is 0.5


@pytest.mark.slow
def test_a_trained_run_beats_the_same_run_without_learning():
    trained, frozen = first_task_accuracy(), first_task_accuracy("train.lr=1e-12")
    assert trained >= 0.8 and trained - frozen >= 0.3, (trained, frozen)


def test_non_finite_loss_fails_the_run(tmp_path):
    cfg = small_config(tmp_path, "model.head_init_std=1e37")
    with pytest.raises(NonFiniteLoss):
        run(cfg)
    client = Tracker.connect(cfg.tracking_uri).client
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name(cfg.experiment).experiment_id])
    assert mlflow_run.info.status == "FAILED"
    assert "NonFiniteLoss" in mlflow_run.data.tags["failure_reason"]
    # Artifacts live beside the store, whatever folder the run started from.
    assert mlflow_run.info.artifact_uri.startswith((tmp_path / "mlruns").as_uri())


def test_a_failed_run_is_one_line_and_keeps_its_traceback(workdir):
    result = run_aepg(["train", DIGITS, *SMALL, "model.head_init_std=1e37"], cwd=workdir)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
    run_id = mlflow_run.info.run_id
    assert f"aepg: run {run_id} failed: NonFiniteLoss: " in result.stderr
    assert mlflow_run.info.status == "FAILED" and mlflow_run.data.tags["failure_reason"].startswith("NonFiniteLoss: ")
    log = open(client.download_artifacts(run_id, "error.log", str(workdir))).read()
    assert log.startswith("Traceback") and "NonFiniteLoss" in log.splitlines()[-1]


@pytest.mark.slow
def test_aepg_train_writes_a_complete_mlflow_run(workdir):
    result = run_aepg(["train", DIGITS, "train.epochs=2", "benchmark.max_train_per_class=60", "run_name=e2e"],
                      cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "last_accuracy" in result.stdout
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aepg-digits")
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    run_id = mlflow_run.info.run_id
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == "e2e"
    metrics = mlflow_run.data.metrics
    finals = {f"final/{k}" for k in ("last_accuracy", "avg_incremental_accuracy", "task_mean_accuracy", "forgetting", "bwt")}
    evals = {f"eval/{k}" for k in ("accuracy", "avg_incremental_accuracy", "task_mean_accuracy", "forgetting", "bwt")}
    trains = {f"train/{k}" for k in ("loss", "ce", "a_t", "entropy", "p_y", "batch_accuracy", "samples_per_second")}
    assert finals | evals | trains <= set(metrics)
    assert all(k.split("/")[0] in ("train", "eval", "final", "system") for k in metrics), "every metric is namespaced"
    # train/ at optimiser steps, the last at the last task's end; eval/ once per task at the step
    # that counts the tasks done (no ramp of its own: the count is a tag); final values once.
    loss_steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    task_ends = [m.step for m in client.get_metric_history(run_id, "train/samples_per_second")]
    assert len(task_ends) == 5 and task_ends[-1] == max(loss_steps)
    eval_steps = {k: [m.step for m in client.get_metric_history(run_id, k)] for k in evals}
    assert eval_steps == {k: [2, 3, 4, 5] if k in ("eval/forgetting", "eval/bwt") else [1, 2, 3, 4, 5] for k in evals}
    assert "eval/tasks_done" not in metrics and mlflow_run.data.tags["aepg.tasks_done"] == "5"
    assert all([m.step for m in client.get_metric_history(run_id, k)] == [0] for k in finals)
    # The plain cross-entropy is logged beside aEPG's loss, which is a_t CE + (1 - a_t) EPG at every
    # logged step (EPG = -p_y; all batch means).
    logged = {k: {m.step: m.value for m in client.get_metric_history(run_id, f"train/{k}")} for k in ("loss", "ce", "a_t", "p_y")}
    for step, loss in logged["loss"].items():
        a = logged["a_t"][step]
        assert loss == pytest.approx(a * logged["ce"][step] - (1 - a) * logged["p_y"][step], abs=1e-5), step
    params = mlflow_run.data.params
    assert params["annealing.tau"] == "6.0" and int(mlflow_run.data.tags["params_trainable"]) > 0
    assert not [key for key in params if key.startswith("params_")], "counts are tags: params hold config keys only"
    assert params["model.method.implementation"] == "hf-peft" and "model.method.length" not in params
    assert "None" not in params.values() and "tracking_uri" not in params
    a_t = [m.value for m in client.get_metric_history(run_id, "train/a_t")]
    assert a_t[0] > 0.95 and min(a_t) < 0.05
    assert mlflow_run.inputs.dataset_inputs[0].dataset.name.startswith("digits (5 tasks")
    experiment_tags = client.get_experiment(experiment.experiment_id).tags
    assert experiment_tags["mlflow.experimentKind"] == "custom_model_development"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "accuracy_matrix.json", "accuracy_matrix.png", "training_curves.png", "benchmark.json"} <= artifacts
    local = client.download_artifacts(run_id, "", str(workdir / "artifacts"))
    matrix = json.load(open(f"{local}/accuracy_matrix.json"))
    R, sizes = matrix["R"], matrix["test_sizes"]
    assert [len(row) for row in R] == [1, 2, 3, 4, 5] and sum(sizes) == 450
    # Pooled over all test samples, not the mean over tasks.
    assert abs(sum(a * n for a, n in zip(R[-1], sizes)) / sum(sizes) - metrics["final/last_accuracy"]) < 1e-9
    for png in ("accuracy_matrix.png", "training_curves.png"):
        assert open(f"{local}/{png}", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning" in result.stdout
    # Plain words, which read the same rendered on the experiment's page and raw in the experiments list.
    note = experiment.tags["mlflow.note.content"]
    assert "Runs tab" in note and not any(mark in note for mark in ("[", "](", "**", "`", "#"))
    benchmark = json.load(open(f"{local}/benchmark.json"))
    assert sorted(benchmark["class_order"]) == list(range(10))
    # The manifest: what the run was made with, down to the exact config and the data it read.
    manifest = json.load(open(f"{local}/manifest.json"))
    assert manifest["entries"]["objective"] == {"name": "aepg", "package": "aepg", "version": aepg.__version__}
    assert manifest["entries"]["method"]["name"] == "lora" and manifest["entries"]["dataset"]["name"] == "digits"
    assert (manifest["entries"]["optimizer"]["name"], manifest["entries"]["lr_schedule"]["name"]) == ("adam", "constant")
    assert manifest["libraries"]["torch"] == version("torch") and manifest["libraries"]["mlflow"] == version("mlflow")
    assert manifest["device"] == "cpu" and manifest["config"]["train"]["epochs"] == 2
    described = json.dumps(benchmark, sort_keys=True).encode()
    assert manifest["benchmark"]["digest"] == hashlib.sha256(described).hexdigest()[:16]
    assert mlflow_run.data.tags["aepg.version"] == aepg.__version__
    assert mlflow_run.data.tags["aepg.commit"] == (manifest["aepg"]["commit"] or "unknown")
    # The logged config is runnable as it is.
    dry = run_aepg(["train", f"{local}/config.yaml", "--dry-run"], cwd=workdir)
    assert dry.returncode == 0, dry.stderr


class RecordingObjective:
    """Wraps the real objective and records what the trainer hands it (the loss is one injected object)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def columns(self, start, stop):
        return self.inner.columns(start, stop)

    def __call__(self, logits, targets, progress):
        self.calls.append((logits.shape[1], int(targets.min()), int(targets.max()), progress))
        return self.inner(logits, targets, progress)


@pytest.mark.parametrize("logits, scope", [("local", "task"), ("seen", "run")])
def test_logit_columns_and_schedule_scope(tmp_path, logits, scope):
    cfg = small_config(tmp_path, "benchmark.num_tasks=2", f"objective.logits={logits}", f"annealing.scope={scope}")
    model, benchmark, objective = build_job(cfg)
    recorder = RecordingObjective(objective)
    trainer = ContinualTrainer(cfg, model, benchmark, recorder, Context(device=torch.device("cpu")))
    trainer.fit()
    per_task = trainer.steps_per_epoch(benchmark.tasks[0]) * cfg.train.epochs
    first, second = recorder.calls[:per_task], recorder.calls[per_task:]
    assert {c[0] for c in first} == {5}
    # Local logits: the second task's 5 classes, relabelled 0-4. Seen: all 10, labels 5-9.
    assert {c[0] for c in second} == ({5} if logits == "local" else {10})
    assert min(c[1] for c in second) == (0 if logits == "local" else 5)
    progress = [c[3] for c in second]
    if scope == "task":
        assert (progress[0].t, progress[0].T) == (0, per_task)
    else:
        assert (progress[0].t, progress[0].T) == (per_task, 2 * per_task)
    assert progress[-1].t == progress[0].t + per_task - 1


def test_aepg_train_on_a_terminal_shows_a_bar_per_task_and_ends_with_the_results(workdir):
    """Under a pseudo-terminal: one progress bar per task with the running loss, a_t and batch
    accuracy; the accuracy matrix, the final metrics and the MLflow link are the last lines."""
    status, text = run_in_terminal(["train", DIGITS, *SMALL, "train.log_every_steps=2"], cwd=workdir)
    assert status == 0, text[-3000:]
    for task in ("task 1/2", "task 2/2"):
        bar = next((line for line in text.split("\r") if line.startswith(task) and "loss=" in line), None)
        assert bar is not None and "a_t=" in bar and "acc=" in bar, text[-3000:]
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-2].startswith("see it with: mlflow ui") and lines[-1].startswith("http://127.0.0.1:5000/#/experiments/")
    assert any(line.startswith("bwt:") for line in lines[-4:])
    assert "accuracy matrix R[i][j]" in text


def test_processes_opening_a_fresh_store_at_once_all_succeed(tmp_path):
    """Two sweeps started together on a new sqlite store both create it (MLflow's tables and the
    experiment): one used to fail with "table ... already exists"."""
    import subprocess
    import sys

    script = "import sys; from aepg.tracking import Tracker; Tracker.connect(sys.argv[1]).experiment_id('race')"
    for attempt in range(2):
        uri = f"sqlite:///{tmp_path / f'store-{attempt}.db'}"
        started = [subprocess.Popen([sys.executable, "-c", script, uri], stderr=subprocess.PIPE, text=True)
                   for _ in range(3)]
        ended = [(process.wait(120), process.stderr.read()) for process in started]
        assert all(code == 0 for code, _ in ended), [err[-1500:] for _, err in ended]
        assert len(MlflowClient(uri).search_experiments(filter_string="name = 'race'")) == 1


TINY_VIT_FEATURES = [item for item in TINY_VIT if not item.startswith(("train.", "objective."))]


def test_a_method_that_trains_nothing_is_described_as_such(workdir):
    """RanPAC on the frozen features trains no task: the plan says so with 0 steps, the run logs no
    objective, schedule or optimiser keys and no throughput, and it still evaluates every task."""
    settings = [*TINY_VIT_FEATURES, "model.method.kind=ranpac", "model.method.adapt_first_task=false",
                "model.method.projection_dim=64", "run_name=ncm"]
    dry = run_aepg(["train", DIGITS, *settings, "--dry-run"], cwd=workdir)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "# 2 tasks, nothing trains (model.method.kind=ranpac trains no task with these settings): 0 optimiser steps" \
        in dry.stdout, dry.stdout[-2000:]
    result = run_aepg(["train", DIGITS, *settings], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("aepg-digits").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["aepg.tasks_done"] == "2"
    assert not [key for key in run.data.params if key.split(".")[0] in ("objective", "annealing")]
    assert "train.lr" not in run.data.params and "train.optimizer.kind" not in run.data.params
    assert run.data.params["model.method.adapt_first_task"] == "False" and "train.batch_size" in run.data.params
    assert not [key for key in run.data.metrics if key.startswith("train/")], "nothing trained, nothing to chart"
    assert "final/last_accuracy" in run.data.metrics

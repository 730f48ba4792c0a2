"""Run one continual training job: in this process (``scaling.num_workers: 0``) or as a Ray Train
``TorchTrainer`` with N data-parallel workers. Both call ``train_worker``; only the context differs.

The driver owns the MLflow run: it opens it, passes its handle to the workers (the chief logs
into it) and sets the final status. Checkpoints live under STORAGE_PATH/RUN_ID, so a restarted
worker group, or ``aepg train --resume RUN_ID``, continues where the run stopped.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from aepg import interrupts, preflight, provenance, schema
from aepg.benchmarks.tasks import Benchmark, build_benchmark
from aepg.checkpoints import CheckpointStore, CheckpointsUnreadable
from aepg.config import ConfigError, RunConfig, fixed_on_resume, flatten, is_uri, renamed_layer
from aepg.distributed import Context, pick_device, seed_all
from aepg.models.classifier import ContinualClassifier, build_model
from aepg.objectives import Objective, build_objective
from aepg.ray_setup import ensure_ray, node_names, refuse_unschedulable, route_library_output, worker_resources
from aepg.schema import FINAL
from aepg.tracking import RunHandle, Tracker
from aepg.trainer import ContinualTrainer, TrainState, autocast_for

log = logging.getLogger("aepg")

@dataclass
class RunResult:
    run: RunHandle
    state: TrainState


def build_job(cfg: RunConfig) -> tuple[ContinualClassifier, Benchmark, Objective]:
    """Model (initialised from ``cfg.seed``), benchmark and objective of a run."""
    seed_all(cfg.seed)
    model, inputs = build_model(cfg.model, cfg.benchmark.num_classes(), cfg.benchmark.num_tasks)
    benchmark = build_benchmark(cfg.benchmark.model_copy(update={"order_seed": cfg.class_order_seed}), inputs.image_size,
                                inputs.mean, inputs.std, cfg.train.channels_last)
    return model, benchmark, build_objective(cfg.objective, cfg.annealing)


def train_worker(cfg: RunConfig, run: RunHandle, context: Context,
                 task_hooks: list[Callable[[TrainState], None]] = (), summary: str | None = FINAL,
                 mark_start: bool = False) -> TrainState:
    """Build benchmark, model and objective, restore the latest checkpoint if any, and train.

    ``summary``: the prefix of the end-of-budget metrics (``aepg.metrics``): ``final/``, ``seed_run/``
    for one seed of a sweep's configuration, None for a sweep's low-fidelity level. ``mark_start``
    (Ray Train's workers): the chief tags when training started, which ``RestartWatch`` reads."""
    # Results depend on the thread count (it splits reductions): fix it, from the config or the CPUs
    # the worker was given, never from torch's guess; oneDNN's reductions in a fixed order too.
    torch.set_num_threads(cfg.scaling.torch_threads or max(1, int(context.cpus)))
    torch.backends.mkldnn.deterministic = True
    model, benchmark, objective = build_job(cfg)
    store = CheckpointStore(cfg.storage_path, run.run_id, cfg.checkpoint.num_to_keep)
    state, optimizer_state = TrainState(), None
    restored = store.load_latest()
    if restored:
        snapshot, _ = restored
        model.load_trainable_state_dict(snapshot.model)
        state, optimizer_state = snapshot.state, snapshot.optimizer
        if context.is_chief:
            log.info("resuming at task %d, epoch %d from %s", state.task + 1, state.epoch, store.uri)
            run.set_tags({schema.RESUMED_TAG: f"task {state.task + 1}, epoch {state.epoch}"})
    if mark_start and context.is_chief:  # after the resume point, which a restart's line reads with it
        run.set_tags({schema.STARTED_TAG: f"{time.time():.3f}"})
    reporters, monitor = [], None
    if context.is_chief:
        reporters.append(run.reporter(preflight.charts(cfg), summary))
        run.set_tags({key: str(n) for key, n in model.parameter_counts().items()})  # derived, not config
        reporters[0].log_dict(benchmark.describe(), "benchmark.json")
        made_with = provenance.manifest(cfg, context.device, benchmark.provenance())
        run.set_tags({schema.VERSION_TAG: made_with["aepg"]["version"],
                      schema.COMMIT_TAG: made_with["aepg"]["commit"] or "unknown",
                      schema.THREADS_TAG: str(made_with["torch_threads"])})
        reporters[0].log_dict(made_with, "manifest.json" if restored is None else
                              f"manifest-resumed-at-task-{state.task + 1}-epoch-{state.epoch}.json")
        if benchmark.split_manifest:
            reporters[0].log_dict(benchmark.split_manifest, "split.json")
        log.info("trainable parameters: %s", model.parameter_counts())
        if cfg.system_metrics if cfg.system_metrics is not None else context.device.type == "cuda":
            monitor = run.start_system_metrics()
    if cfg.train.prefix_cache:  # after benchmark.json and the manifest, which describe the images
        from aepg.models.prefix import cache_prefix

        first = cfg.model.method.first_adapted_block(preflight.backbone_facts(cfg))
        benchmark = cache_prefix(model, benchmark, first, context.device, autocast_for(cfg, context.device),
                                 cfg.train.eval_batch_size)
    config = cfg.model_dump(mode="json")
    trainer = ContinualTrainer(cfg, model, benchmark, objective, context,
                               reporters, save=lambda snapshot: store.save(snapshot, config), task_hooks=task_hooks)
    if state.task >= len(benchmark.tasks):  # restarted after the end: report the end again
        for hook in task_hooks:
            hook(state)
    try:
        return trainer.fit(state, optimizer_state)
    finally:
        if monitor is not None:
            monitor.finish()


# -- Ray Train -------------------------------------------------------------------------------

def _ray_train_loop(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = RunConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    context = Context(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(),
                      device=ray.train.torch.get_device(), wrap=_prepare_ddp,
                      cpus=ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    if context.world_size > 1:  # record where the workers ran (a collective: every rank joins)
        import torch.distributed as dist

        nodes = [None] * context.world_size
        dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
        if context.is_chief:
            config["run"].set_tags({schema.NODES_TAG: ",".join(sorted(set(nodes)))})
    # Inside a Tune trial, every rank reports after each task; TuneReportCallback forwards rank 0's.
    hooks = [lambda state: ray.train.report(state.metrics(cfg.benchmark.num_tasks, placeholders=True))] if config["report"] else []
    train_worker(cfg, config["run"], context, hooks, config["summary"], mark_start=True)


def _prepare_ddp(model: ContinualClassifier):
    """Ray Train's DDP wrapping; prompt pools leave some parameters without gradients each step."""
    import ray.train.torch

    return ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": model.sparse_updates})


def torch_trainer(cfg: RunConfig, run: RunHandle, report_to_tune: bool = False, summary: str | None = FINAL):
    """The Ray Train TorchTrainer for this run, named by run id so a second fit() resumes.

    With ``report_to_tune`` (a sweep trial), per-task metrics reach Ray Tune through
    ``TuneReportCallback``.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    callbacks = []
    if report_to_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    resources = worker_resources(cfg)
    return TorchTrainer(
        _ray_train_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "run": run, "report": report_to_tune,
                           "summary": summary},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=run.run_id, storage_path=cfg.storage_path,
                                       failure_config=ray.train.FailureConfig(max_failures=cfg.failure.max_failures),
                                       callbacks=callbacks),
    )


class RestartWatch:
    """Says in one aepg line when Ray Train restarted the run's workers from its last checkpoint (a
    worker or its node lost), from the tags the chief sets as training starts; Ray's own account,
    tracebacks included, stays in its logs."""

    POLL_S = 5.0

    def __init__(self, run: RunHandle, attempts: int):
        self.run, self.attempts, self.restarts, self.polled = run, attempts, 0, 0.0
        tags = self._tags()
        self.before = tags.get(schema.STARTED_TAG)
        """Its value as the fit began: the first change is the first start, later ones restarts."""
        self.seen: dict[str, str] | None = None

    def _tags(self) -> dict[str, str]:
        try:
            return self.run.tracker.get_run(self.run.run_id)[0].tags
        except Exception:  # noqa: BLE001 - the tracking server's trouble is said elsewhere
            return {}

    def tick(self, last: bool = False) -> None:
        """Read the tags every ``POLL_S``, or now when it is the ``last`` look (the fit ended: a
        restart shortly before its end is said too)."""
        now = time.monotonic()
        if now - self.polled < self.POLL_S and not last:
            return
        self.polled = now
        tags = self._tags()
        started = tags.get(schema.STARTED_TAG)
        if started is None or started == self.before or (self.seen and started == self.seen["started"]):
            return
        previous, self.seen = self.seen, {"started": started, "nodes": tags.get(schema.NODES_TAG, "")}
        if previous is not None:
            self.restarts += 1
            log.info("%s", self.line(previous["nodes"], self.seen["nodes"], tags.get(schema.RESUMED_TAG)))

    def line(self, nodes_before: str, nodes_now: str, resumed: str | None) -> str:
        names = {node_id: name for node_id, (name, _) in node_names().items()}
        lost = sorted(names.get(n, n[:8]) for n in set(nodes_before.split(",")) - set(nodes_now.split(",")) if n)
        now = sorted(names.get(n, n[:8]) for n in nodes_now.split(",") if n)
        cause = f"lost node {', '.join(lost)}" if lost else "a worker failed"
        where = f" on {', '.join(now)}" if now else ""
        return (f"{cause}; Ray Train restarted the workers{where}, resuming at {resumed or 'task 1, epoch 0'} from "
                f"the last checkpoint (attempt {self.restarts + 1} of {self.attempts})")


def fit_off_main_thread(trainer, watch: RestartWatch | None = None):
    """``trainer.fit()`` in a helper thread, so Ctrl-C stays a KeyboardInterrupt here.

    On the main thread Ray Train installs its own SIGINT handler, which ends the process with
    SystemExit. Interrupted here, the driver marks the run KILLED and exits; the job's workers
    die with it, and the last (atomically written) checkpoint is what ``--resume`` continues.
    """
    if threading.current_thread() is not threading.main_thread():  # e.g. a Tune trial: no signal to keep
        return trainer.fit()
    outcome = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # handed to the main thread
            outcome["error"] = error

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
        if watch is not None:
            watch.tick()
    if watch is not None:
        watch.tick(last=True)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def run_workers(cfg: RunConfig, run: RunHandle, report: Callable[[TrainState], None] | None = None,
                summary: str | None = FINAL, cpus: float | None = None) -> TrainState:
    """Train ``run`` to the end, in this process or on Ray Train workers, and return the final
    state: the one path of ``aepg train`` and of every sweep trial. ``report`` (a trial's) hears
    of the end of each task; ``cpus`` are an in-process run's (default: the process's)."""
    if cfg.scaling.num_workers == 0:
        context = Context(device=pick_device(cfg.train.device), **({"cpus": cpus} if cpus else {}))
        return train_worker(cfg, run, context, [report] if report else [], summary)
    ensure_ray()
    fit_off_main_thread(torch_trainer(cfg, run, report_to_tune=report is not None, summary=summary),
                        RestartWatch(run, cfg.failure.max_failures + 1))
    restored = CheckpointStore(cfg.storage_path, run.run_id).load_latest()
    if restored is None:
        raise RuntimeError(f"the Ray Train run {run.run_id} finished without a checkpoint")
    return restored[0].state


# -- driver -----------------------------------------------------------------------------------

def active_then(saved: dict, facts: dict) -> dict[str, object]:
    """The active keys of a checkpoint's config, read as today's config (one written before a key
    moved has its old name); its every key where it no longer validates (a plugin since
    uninstalled), which then differs visibly."""
    try:
        return RunConfig.model_validate(renamed_layer(saved)).active_params(facts)
    except ValueError:
        return {"seed": saved.get("seed"), **flatten({k: v for k, v in saved.items() if k != "seed"})}


def check_resumable(cfg: RunConfig, run_id: str) -> None:
    try:
        restored = CheckpointStore(cfg.storage_path, run_id).load_latest()
    except CheckpointsUnreadable as error:
        raise ConfigError([("--resume", f"run {run_id} cannot be resumed: {error}")]) from None
    if restored is None:
        raise ConfigError([("--resume", f"no checkpoint of run {run_id} under {cfg.storage_path}")])
    facts = preflight.backbone_facts(cfg)
    before, now = active_then(restored[1], facts), cfg.active_params(facts)
    changed = [k for k in dict.fromkeys([*before, *now]) if fixed_on_resume(k) and before.get(k) != now.get(k)]
    if changed:
        raise ConfigError([(k, f"differs from the resumed run ({before.get(k)!r} -> {now.get(k)!r})") for k in changed])
    if restored[0].state.task >= cfg.benchmark.num_tasks:
        raise ConfigError([("--resume", f"run {run_id} is complete: it trained all {cfg.benchmark.num_tasks} tasks; "
                            "there is nothing to resume")])


def run(cfg: RunConfig, resume: str | None = None, checked: bool = False, ray_log: bool = False) -> RunResult:
    """Check everything (unless the caller has: ``checked``), open (or reopen) the MLflow run,
    train, and set the run's final status. ``ray_log`` (the command line's): with Ray Train workers,
    what Ray prints (the workers' output, a restart's tracebacks) goes to the run's ``ray.log``."""
    if not checked:  # data, backbone, PEFT, weights, checkpoint: before any run is opened
        preflight.check(cfg, resume)
    preflight.prepare(cfg)
    tracker = Tracker.connect(cfg.tracking_uri)
    if cfg.scaling.num_workers:  # before opening the run: refuse what can never be scheduled
        ensure_ray()
        refuse_unschedulable({k: v * cfg.scaling.num_workers for k, v in worker_resources(cfg).items()}, "the run",
                             "scaling", "lower scaling.num_workers or scaling.cpus_per_worker")
    if resume:
        run = tracker.run(resume)
        run.check_reopenable()
        check_resumable(cfg, resume)
        run.reopen()
    else:
        run = tracker.open_run(preflight.planned_run(cfg))
    log.info("MLflow run %s at %s; checkpoints under %s/%s", run.run_id, tracker.uri, cfg.storage_path, run.run_id)
    if ray_log and cfg.scaling.num_workers:
        route_library_output(_ray_log_file(cfg.storage_path, run.run_id))
    try:
        state = run_workers(cfg, run)
    except KeyboardInterrupt as error:
        run.close("KILLED", interrupts.reason())
        raise interrupts.RunInterrupted(run.run_id) from error
    except BaseException as error:
        record_failure(run, error)
        raise
    run.close("FINISHED")
    return RunResult(run, state)


def _ray_log_file(storage_path: str, run_id: str) -> Path:
    """Beside the run's checkpoints, or in the temp folder for storage on s3:// or gs://."""
    folder = Path(tempfile.gettempdir()) / f"aepg-{run_id}" if is_uri(storage_path) else Path(storage_path) / run_id
    path = folder / "ray.log"
    log.info("Ray's output (its workers', and any restart's tracebacks): %s", path)
    return path


def record_failure(run: RunHandle, error: BaseException) -> None:
    """Mark the run FAILED with the error's first line as reason, keep the traceback as the run's
    ``error.log`` and record the run on the error (``failed_run`` reads it back)."""
    reason = f"{type(error).__name__}: {error}".splitlines()[0]
    try:
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        run.log_outputs(texts={"error.log": trace})
        run.close("FAILED", reason)
    except Exception as unreachable:  # the tracking server itself may be what failed
        log.warning("could not mark MLflow run %s FAILED (%s: %s)", run.run_id, type(unreachable).__name__, unreachable)
        return
    error.aepg_failed_run = run.run_id


def failed_run(error: BaseException) -> str | None:
    """The run whose ``error.log`` holds this error's traceback, if ``record_failure`` kept it."""
    return getattr(error, "aepg_failed_run", None)

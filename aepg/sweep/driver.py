"""Run a sweep with Ray Tune: Optuna TPE (or random, or a grid), ASHA over tasks, MLflow runs.

The driver owns MLflow: it opens the sweep's parent run, opens each trial's child run when
the trial starts (tagged ``mlflow.parentRunId``, named by what differs) and hands the trial its
run id, and sets every status: FINISHED (``aepg.status`` finished, or stopped early for trials
ASHA stopped) or FAILED (with the reason). A trial only logs into the run it was handed. Each
trial is one run of the trainer, in its Tune process (``scaling.num_workers: 0``) or as a Ray
Train TorchTrainer with N workers.

Trials are ranked on ``final/<metric>``, which only trials that trained every task report;
ASHA and Optuna compare trials after each task on the running ``eval/<metric>``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs as pafs
from ray import tune

from aepg import interrupts, preflight, schema
from aepg.catalog import SCHEDULERS
from aepg.config import ConfigError, RunConfig, is_uri, validate
from aepg.ray_setup import ensure_ray, node_names, refuse_unschedulable, this_node, worker_resources
from aepg.schema import (
    ARM_TAG,
    ARM_VALUES_TAG,
    CONFIG_TAG,
    FINAL,
    INDEX_TAG,
    KIND_TAG,
    LEVEL_TAG,
    NODE_NAMES_TAG,
    NODE_TAG,
    ONE_SEED,
    OPTUNA_STATE_TAG,
    PAIRED_PREFIX,
    SEED_TAG,
    SEED_VALUES_TAG,
    STAGE_TAG,
    STATUS_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    final_name,
    seed_std_name,
)
from aepg.sweep import fidelity, search
from aepg.sweep.checks import variants
from aepg.sweep.noise import paired_summary
from aepg.sweep.params import config_id, parent_params
from aepg.sweep.progress import (
    NODE_RESULT,
    HideRestoreHint,
    LiveSweepTable,
    SweepProgress,
    driver_log,
    error_log,
    error_reason,
    route_library_output,
)
from aepg.sweep.publish import publish
from aepg.sweep.report import SweepReport, build_report, paper_table, report_texts
from aepg.sweep.spec import Sweep, SweepSpec, apply_dotted, expected_trials
from aepg.sweep.state import STATE_FILE, read_state, trial_run_name
from aepg.tracking import RunHandle, RunRecord, Tracker

if TYPE_CHECKING:
    from aepg.trainer import TrainState

log = logging.getLogger("aepg")

TRIAL_PREFIX = "trial_"
"""A trial's Tune folder is this and its trial id."""
HANDED_RUN_FILE = "mlflow_run.json"
"""In a trial's Tune folder: the run the driver opened for the trial."""


@dataclass(frozen=True)
class TrialRun:
    """The MLflow run the driver opened for a trial, as the trial is handed it."""

    run_id: str
    name: str
    config_id: str
    node: str = ""
    """The name of the node this attempt runs on (set by the trial)."""

    def report(self, metrics: dict) -> None:
        """Tune's report, with the node the trial runs on for the terminal view."""
        tune.report({**metrics, NODE_RESULT: self.node})


@dataclass
class SweepRuntime:
    """What the driver, its callback and every trial share (pickled into the trials)."""

    sweep: Sweep
    path: str
    """The sweep's output folder or URI: Ray Tune's experiment, trial checkpoints, best config."""
    tracker: Tracker
    parent_run_id: str
    stage: str = "search"
    """``search``, or ``confirm`` (the best configurations on fresh seeds, ``Sweep.confirmation``)."""

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> RunHandle:
        """The sweep's parent run."""
        return self.tracker.run(self.parent_run_id)

    @property
    def tune_path(self) -> str:
        """Ray Tune's experiment of this stage: the sweep folder, or its ``confirm`` folder."""
        return self.path if self.stage == "search" else f"{self.path.rstrip('/')}/confirm"

    def trial_config(self, params: dict, run_name: str) -> RunConfig:
        """A trial's run config; a configuration trained on several seeds starts with the first."""
        cfg = self.sweep.run_config(params, f"{self.path}/runs", run_name)
        if fidelity.seeds_per_trial(self.sweep.spec):
            cfg.seed = self.sweep.seeds[0]
        if cfg.scaling.num_workers == 0 and cfg.scaling.torch_threads is None:
            cfg.scaling.torch_threads = max(1, int(self.sweep.spec.trial.cpus))
        return cfg

    def searched(self, params: dict) -> dict:
        """The trial's sampled values of the space's keys (the keys whose ``when`` held), with its seed
        when the sweep runs several."""
        keys = [*self.sweep.space, *(["seed"] if len(self.sweep.seeds) > 1 else [])]
        return {key: params[key] for key in keys if key in params}

    def child_tags(self, trial_id: str, index: int, params: dict) -> dict[str, str]:
        stage = {STAGE_TAG: self.stage} if self.stage != "search" else {}
        return {schema.PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id, SWEEP_TAG: self.name,
                INDEX_TAG: str(index), STATUS_TAG: "running", CONFIG_TAG: config_id(self.searched(params)), **stage}

    def find_child(self, trial_id: str) -> RunRecord | None:
        found = self.tracker.find_runs(self.sweep.experiment, {schema.PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id})
        return found[0] if found else None

    def _trial_folder(self, trial_id: str) -> tuple[pafs.FileSystem, str]:
        return pafs.FileSystem.from_uri(f"{self.tune_path.rstrip('/')}/{TRIAL_PREFIX}{trial_id}")

    def hand_run(self, trial_id: str, run: TrialRun) -> None:
        """Give a starting trial its run, in the trial's own folder of the sweep's (shared) storage:
        the driver writes it as Tune starts the trial, before the trial's function runs."""
        fs, folder = self._trial_folder(trial_id)
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(f"{folder}/{HANDED_RUN_FILE}") as out:
            out.write(json.dumps({"run_id": run.run_id, "name": run.name, "config_id": run.config_id}).encode())

    def handed_run(self, trial_id: str) -> TrialRun:
        """The run ``hand_run`` gave this trial."""
        fs, folder = self._trial_folder(trial_id)
        try:
            with fs.open_input_stream(f"{folder}/{HANDED_RUN_FILE}") as stream:
                return TrialRun(**json.loads(stream.read()))
        except FileNotFoundError:
            raise RuntimeError(f"trial {trial_id} was handed no MLflow run (no {HANDED_RUN_FILE} in {folder}): "
                               "the sweep's storage_path must be shared by every node") from None

    def nested_run(self, trial_run: TrialRun, tags: dict[str, str], cfg: RunConfig, name: str, status: str) -> str:
        """A run nested under the trial's run, for a ladder level, a seed or an arm: found by its
        ``tags`` (a retried or resumed trial continues it from its checkpoints), else opened as ``name``."""
        tags = {schema.PARENT_TAG: trial_run.run_id, **tags}
        found = self.tracker.find_runs(self.sweep.experiment, tags)
        if found:
            self.tracker.run(found[0].run_id).reopen()
            return found[0].run_id
        cfg = cfg.model_copy(update={"run_name": name})
        return self.tracker.open_run(cfg, cfg.active_params(preflight.backbone_facts(cfg)),
                                     {**tags, STATUS_TAG: status, SWEEP_TAG: self.name, CONFIG_TAG: trial_run.config_id})

    def level_run(self, trial_run: TrialRun, level: fidelity.Level, cfg: RunConfig) -> str:
        """The run of a ladder level below the full budget."""
        return self.nested_run(trial_run, {LEVEL_TAG: str(level.index)}, cfg,
                               f"{trial_run.name}@{self.sweep.spec.scheduler.fidelity}-{level.label}", "low fidelity")

    def seed_run(self, trial_run: TrialRun, seed: int, cfg: RunConfig) -> str:
        """The run of one more seed of a trial's configuration."""
        return self.nested_run(trial_run, {SEED_TAG: str(seed)}, cfg, f"{trial_run.name}@s{seed}", "seed run")

    def arm_run(self, trial_run: TrialRun, arm: str, seed: int, cfg: RunConfig) -> str:
        """The run of one arm on one seed of a trial's configuration."""
        return self.nested_run(trial_run, {ARM_TAG: arm, SEED_TAG: str(seed)}, cfg, f"{trial_run.name}@{arm}-s{seed}",
                               "arm run")

    def children(self, every_stage: bool = False) -> list[RunRecord]:
        """The trial runs under the sweep's parent run: this stage's, or (``every_stage``) all."""
        runs = self.tracker.find_runs(self.sweep.experiment, {schema.PARENT_TAG: self.parent_run_id})
        return runs if every_stage else [r for r in runs if r.tags.get(STAGE_TAG, "search") == self.stage]

    def save(self) -> None:
        """Everything ``aepg sweep --resume PATH`` needs, next to Ray Tune's own state."""
        state = {
            "spec": self.sweep.spec.model_dump(mode="json", by_alias=True),
            "base": self.sweep.base,
            "source": self.sweep.source_text,
            "tracking_uri": self.tracker.uri,
            "parent_run_id": self.parent_run_id,
        }
        fs, folder = pafs.FileSystem.from_uri(self.path)
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(f"{folder}/{STATE_FILE}") as out:
            out.write(json.dumps(state, indent=1).encode())

    @classmethod
    def load(cls, path: str) -> SweepRuntime:
        state = read_state(path)
        sweep = Sweep(SweepSpec.model_validate(state["spec"]), state["base"], state["source"])
        return cls(sweep, path, Tracker(state["tracking_uri"]), state["parent_run_id"])


# -- the trial ----------------------------------------------------------------------------------

def run_trial(config: dict, runtime: SweepRuntime) -> None:
    """One trial: the run the driver handed it as the trial started, then train, reporting after each task (or,
    with an epochs or data fidelity, after each level of the ladder)."""
    params = config.get("params", config)
    # Tune calls on_trial_start, which hands the run over, before the trial's first step runs this.
    run = runtime.handed_run(tune.get_context().get_trial_id())
    cfg = runtime.trial_config(params, run.name)
    run = replace(run, node=record_node(runtime.tracker, run.run_id))
    if runtime.sweep.spec.scheduler.climbs:
        climb(cfg, run, runtime)
        return
    if fidelity.seeds_per_trial(runtime.sweep.spec):
        train_seeds(cfg, run, runtime)
        return
    tasks = cfg.benchmark.num_tasks
    train(cfg, run.run_id, runtime, lambda state: run.report(state.metrics(tasks, placeholders=True)))


def record_node(tracker: Tracker, run_id: str) -> str:
    """Add the node this attempt runs on to the run's list of nodes (a retry elsewhere adds another); its name."""
    node_id, name = this_node()
    before = tracker.get_run(run_id)[0].tags.get(NODE_NAMES_TAG, "")
    tracker.run(run_id).set_tags({NODE_TAG: node_id, NODE_NAMES_TAG: ",".join(filter(None, [before, name]))})
    return name


def train(cfg: RunConfig, run_id: str, runtime: SweepRuntime, report=None, summary: str | None = FINAL) -> TrainState:
    """Train ``cfg`` into ``run_id`` as ``aepg train`` does, on the trial's CPUs; ``report`` after each
    task; its summary under ``summary`` (``launch.train_worker``). (The trial's process imports the
    trainer here: the sweep's driver never does.)"""
    from aepg.launch import run_workers

    return run_workers(cfg, run_id, runtime.tracker, report, summary, runtime.sweep.spec.trial.cpus)


def climb(cfg: RunConfig, run: TrialRun, runtime: SweepRuntime) -> None:
    """The epochs or data ladder: the whole task sequence at each level, from the smallest share of
    the budget up, reporting after each; ASHA stops the trial or lets it restart one level up.
    Levels below the full budget train into runs nested under the trial's run."""
    spec = runtime.sweep.spec
    kind, metric, tasks = spec.scheduler.fidelity, spec.metric, cfg.benchmark.num_tasks
    per_class = fidelity.full_per_class(cfg) if kind == "data" else 0
    compute = 0.0
    for level in spec.scheduler.levels():
        low = fidelity.level_config(cfg, kind, level, per_class)
        compute += fidelity.level_compute(cfg, low, kind, per_class)
        if level.fraction < 1:
            level_run = runtime.level_run(run, level, low)
            state = train(low, level_run, runtime, summary=None)
            runtime.tracker.run(level_run).close("FINISHED")
        else:
            state = train(cfg, run.run_id, runtime)
        progress = {schema.LEVEL_KEY: level.index + 1, schema.level_metric(metric): state.summary[metric],
                    "fidelity/fraction": level.fraction, schema.COMPUTE_KEY: compute}
        log_rung(runtime.tracker, run.run_id, progress, schema.LEVEL_KEY)
        run.report({**state.metrics(tasks, placeholders=True), **progress})


def train_seeds(cfg: RunConfig, run: TrialRun, runtime: SweepRuntime) -> None:
    """The seed ladder: the configuration trained at full budget on the sweep's seeds in order, each
    seed (or each arm on it) into a run nested under the configuration's run, reporting the seed-mean
    after each; ASHA stops the trial or lets it go on to more seeds. The configuration's run trains
    nothing itself: it holds the seed-mean as ``final/<metric>`` once every seed is done (what it
    ranks on and MLflow sorts on; not in a search whose confirmation decides), and a paired
    summary with arms. A retried trial keeps the seeds it has (their values are on its run) and
    trains the rest."""
    spec, tracker = runtime.sweep.spec, runtime.tracker
    metric, tasks, seeds = spec.metric, cfg.benchmark.num_tasks, runtime.sweep.seeds
    values = {int(k): v for k, v in json.loads(tracker.get_run(run.run_id)[0].tags.get(SEED_VALUES_TAG, "{}")).items()}
    for count, seed in enumerate(seeds, 1):
        if seed not in values:
            seeded = cfg.model_copy(update={"seed": seed})
            if spec.compare:
                values[seed] = spec.arm_value(train_arms(seeded, run, runtime, seed))
            else:
                seed_run = runtime.seed_run(run, seed, seeded)
                values[seed] = train(seeded, seed_run, runtime, summary=ONE_SEED).summary[metric]
                tracker.run(seed_run).close("FINISHED")
            tracker.run(run.run_id).set_tags({SEED_VALUES_TAG: json.dumps(values)})
        mean = statistics.mean(values.values())
        progress = {schema.SEEDS_KEY: count, schema.seed_metric(metric): mean,
                    seed_std_name(metric): statistics.stdev(values.values()) if count > 1 else 0.0,
                    schema.COMPUTE_KEY: count * tasks * max(1, len(spec.arms()))}
        log_rung(tracker, run.run_id, progress, schema.SEEDS_KEY)
        if spec.compare:
            by_seed = json.loads(tracker.get_run(run.run_id)[0].tags[ARM_VALUES_TAG])
            tracker.run(run.run_id).log_metrics(paired_metrics(by_seed, spec.arm_labels(), metric), step=count)
        if count == len(seeds) and spec.confirm is None:
            tracker.run(run.run_id).log_metrics({final_name(metric): mean})
        run.report({**progress, final_name(metric): mean, schema.SEED_VALUES_RESULT: json.dumps(values)})


def train_arms(cfg: RunConfig, run: TrialRun, runtime: SweepRuntime, seed: int) -> dict[str, float]:
    """Every arm of ``compare`` on one seed, each into its run under the trial's run; their values,
    kept on the trial's run so that a retried trial trains only the arms it lacks."""
    spec, tracker = runtime.sweep.spec, runtime.tracker
    done = json.loads(tracker.get_run(run.run_id)[0].tags.get(ARM_VALUES_TAG, "{}"))
    by_arm = done.setdefault(str(seed), {})
    for (key, value), arm in zip(spec.arms(), spec.arm_labels()):
        if arm not in by_arm:
            armed = validate(apply_dotted(cfg.model_dump(mode="json"), {key: value}))
            arm_run = runtime.arm_run(run, arm, seed, armed)
            by_arm[arm] = train(armed, arm_run, runtime, summary=ONE_SEED).summary[spec.metric]
            tracker.run(arm_run).close("FINISHED")
            tracker.run(run.run_id).set_tags({ARM_VALUES_TAG: json.dumps(done)})
    return by_arm


def paired_metrics(by_seed: dict[str, dict[str, float]], arms: list[str], metric: str) -> dict[str, float]:
    """A configuration's paired summary as metrics of its run (``aepg.sweep.noise.paired_summary``)."""
    means, (difference, half) = paired_summary(by_seed, arms)
    found = {f"{PAIRED_PREFIX}{arm}_{metric}": mean for arm, mean in means.items()}
    found[f"{PAIRED_PREFIX}diff_{metric}"] = difference
    if half is not None:
        found.update({f"{PAIRED_PREFIX}diff_low_{metric}": difference - half,
                      f"{PAIRED_PREFIX}diff_high_{metric}": difference + half})
    return found


def log_rung(tracker, run_id: str, progress: dict[str, float], counter: str) -> None:
    """A ladder's progress on the trial's run, at the step its ``counter`` gives; the counter is a tag."""
    step = int(progress[counter])
    run = tracker.run(run_id)
    run.log_metrics({k: v for k, v in progress.items() if k != counter}, step=step)
    run.set_tags({schema.COUNTER_TAGS[counter]: str(step)})


# -- the MLflow callback ------------------------------------------------------------------------

@dataclass
class Retry:
    """A trial that failed and that Tune retries: how and where it failed, to say where it went once it is there."""

    run_id: str
    short: str
    """The trial's short name, ``t01``."""
    node: str
    nodes_before: int
    task: int
    """The task it retries from (its checkpoint's next)."""
    reason: str
    process_lost: bool
    """Its process died (the error is Ray's, not the trial's): its node may be lost."""
    since: float

    def line(self, node_alive: bool, waited_enough: bool) -> str | None:
        """What to say, or None while a lost process's node may yet be reported dead."""
        if self.process_lost and not node_alive:
            return f"{self.short} lost node {self.node}; retrying from task {self.task}"
        if self.process_lost and not waited_enough:
            return None
        if self.process_lost:  # its process died, and Ray still lists the node alive
            return f"{self.short} lost its process on {self.node} ({self.reason}); retrying from task {self.task}"
        return f"{self.short} failed on {self.node} ({self.reason}); retrying from task {self.task}"


def process_lost(trial) -> bool:
    """Whether the trial's latest error is Ray's news that its process died (rather than the trial's
    own exception): the first sign of a lost node. Tune keeps Ray's errors pickled beside their text."""
    from ray import cloudpickle, exceptions

    path = trial.pickled_error_file
    if not path or not os.path.exists(path):
        return False
    try:
        with open(path, "rb") as f:
            error = cloudpickle.load(f)
    except Exception:  # an error Tune could pickle but this process cannot load
        return False
    return isinstance(error, (exceptions.RayActorError, exceptions.NodeDiedError, exceptions.OwnerDiedError))


NODE_DEATH_WAIT_S = 60
"""How long a retry's notice waits for Ray to declare the old node dead (it misses heartbeats for about 15 s)."""


class MlflowTrialRuns(tune.Callback):
    """Opens each trial's child run at its (re)start, hands the trial its id, and sets its final status;
    says in one line where a retried trial failed and where it resumed."""

    RETRY_POLL_S = 1.0

    def __init__(self, runtime: SweepRuntime, searcher):
        self.runtime, self.searcher = runtime, searcher
        self.names: dict[str, str] = {}
        """Trial id to run name, for the terminal view."""
        self.say = lambda line: log.info("%s", line)
        """How a line that no trial event carries (a retry's) reaches the user: through the terminal
        view, where there is one."""
        self.retries: dict[str, Retry] = {}
        self.polled = 0.0

    def on_trial_start(self, iteration, trials, trial, **info):
        existing = self.runtime.find_child(trial.trial_id)
        if existing:
            self.names[trial.trial_id] = existing.name
            existing_run = self.runtime.tracker.run(existing.run_id)
            existing_run.reopen()
            existing_run.set_tags({STATUS_TAG: "running"})
            self.runtime.hand_run(trial.trial_id, TrialRun(existing.run_id, existing.name,
                                                           existing.tags.get(CONFIG_TAG, "")))
            return
        index = len(self.runtime.children(every_stage=True)) + 1  # start order, also across a resumed sweep
        params = trial.config.get("params", trial.config)
        tags = self.runtime.child_tags(trial.trial_id, index, params)
        name = trial_run_name(index, self.runtime.searched(params), self.runtime.stage)
        self.names[trial.trial_id] = name
        try:
            cfg = self.runtime.trial_config(params, name)
        except ConfigError as error:  # an invalid combination: the trial fails on it too
            run_id = self.runtime.tracker.create_run(self.runtime.sweep.experiment, name, tags, params)
            log.warning("trial %s has an invalid config: %s", trial.trial_id, error)
        else:
            run_id = self.runtime.tracker.open_run(cfg, cfg.active_params(preflight.backbone_facts(cfg)), tags)
        self.runtime.hand_run(trial.trial_id, TrialRun(run_id, name, tags[CONFIG_TAG]))

    def _close(self, trial, status: str, tags: dict, reason: str | None = None, texts: dict | None = None) -> None:
        run = self.runtime.find_child(trial.trial_id)
        if run is None:
            return
        if texts:
            self.runtime.tracker.run(run.run_id).log_outputs(texts=texts)
        trial_state = getattr(self.searcher, "optuna_state", None)  # Optuna's searchers say how a trial ended
        state = trial_state(trial.trial_id) if trial_state else None
        if state:
            tags[OPTUNA_STATE_TAG] = state
        handle = self.runtime.tracker.run(run.run_id)
        handle.set_tags(tags)
        handle.close(status, reason)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id in self.retries:  # a retry that ended before Ray declared its old node dead
            self._say_retries([trial], ending=True)
        key, full = search.budget(self.runtime.sweep)
        status = "finished" if int((trial.last_result or {}).get(key, 0)) >= full else "stopped early"
        self._close(trial, "FINISHED", {STATUS_TAG: status})

    def on_trial_error(self, iteration, trials, trial, **info):
        self.retries.pop(trial.trial_id, None)
        self._close(trial, "FAILED", {STATUS_TAG: "failed"}, error_reason(trial), {"error.log": error_log(trial)})

    def on_trial_recover(self, iteration, trials, trial, **info):
        """Tune retries the failed trial from its checkpoint: remember how and where it failed."""
        run = self.runtime.find_child(trial.trial_id)
        if run is None:
            return
        nodes = [n for n in run.tags.get(NODE_NAMES_TAG, "").split(",") if n]
        short = self.names.get(trial.trial_id, trial.trial_id).split("-", 1)[0]
        self.retries[trial.trial_id] = Retry(
            run.run_id, short, nodes[-1] if nodes else "its node", len(nodes),
            int(run.tags.get(schema.TASKS_DONE_TAG) or 0) + 1, error_reason(trial),
            process_lost(trial), time.monotonic())

    def on_step_begin(self, iteration, trials, **info):
        """Once a retried trial has started again its run names its new node: say where it failed and
        where it went, in one line ("t01 lost node worker-1; retrying from task 2 on head (attempt 2 of 3)")."""
        now = time.monotonic()
        if self.retries and now - self.polled >= self.RETRY_POLL_S:
            self.polled = now
            self._say_retries(trials, ending=False)

    def _say_retries(self, trials, ending: bool) -> None:
        """Say each retry whose new node is known, once Ray has said whether the old node is lost; when
        ``ending`` (its trial ended), with what is known by then."""
        now, attempts = time.monotonic(), self.runtime.sweep.spec.trial.max_failures + 1
        alive = {name for name, up in node_names().values() if up}
        by_id = {t.trial_id: t for t in trials}
        for trial_id, retry in list(self.retries.items()):
            if trial_id not in by_id:
                continue
            tags = self.runtime.tracker.get_run(retry.run_id)[0].tags
            nodes = [n for n in tags.get(NODE_NAMES_TAG, "").split(",") if n]
            if len(nodes) <= retry.nodes_before:
                continue
            said = retry.line(retry.node in alive, ending or now - retry.since > NODE_DEATH_WAIT_S)
            if said:
                self.say(f"{said} on {nodes[-1]} (attempt {by_id[trial_id].num_failures + 1} of {attempts})")
                del self.retries[trial_id]


# -- the driver ---------------------------------------------------------------------------------

def trial_resources(sweep: Sweep) -> dict[str, float]:
    """What one trial process asks Ray for (TorchTrainer trials: just the driver, see trial.cpus)."""
    trial = sweep.spec.trial
    resources = {"CPU": trial.cpus, **trial.resources}
    if trial.gpus and sweep.base_config.scaling.num_workers == 0:
        resources["GPU"] = trial.gpus
    return resources


def _trainable(runtime: SweepRuntime):
    resources = {k.lower() if k in ("CPU", "GPU") else k: v for k, v in trial_resources(runtime.sweep).items()}
    return tune.with_resources(tune.with_parameters(run_trial, runtime=runtime), resources)


TRIAL_FIX = "lower trial.cpus, trial.gpus or trial.resources (and scaling.num_workers for trials that drive workers)"


def _check_trial_fits(sweep: Sweep) -> None:
    needed = dict(trial_resources(sweep))
    scaling = sweep.base_config.scaling
    for key, value in worker_resources(sweep.base_config).items():
        if scaling.num_workers:
            needed[key] = needed.get(key, 0.0) + value * scaling.num_workers
    refuse_unschedulable(needed, "one trial", "trial", TRIAL_FIX)


def callbacks(runtime: SweepRuntime, searcher, verbose: bool) -> list[tune.Callback]:
    """The MLflow runs of the trials, then (unless ``verbose`` leaves Ray Tune's own tables on) the
    sweep's view: a live table on a terminal, plain lines otherwise."""
    runs = MlflowTrialRuns(runtime, searcher)
    if verbose:
        return [runs]
    spec, sweep = runtime.sweep.spec, runtime.sweep
    settings = (runs.names, expected_trials(sweep), search.budget(sweep), spec.metric, spec.mode,
                search.progress_unit(sweep), search.searched_metric(sweep), SCHEDULERS.display(spec.scheduler.kind))
    view = LiveSweepTable(*settings, keys=list(sweep.space)) if sys.stdout.isatty() else SweepProgress(*settings)
    runs.say = view.notice
    return [runs, view]


def run_config(runtime: SweepRuntime, searcher, verbose: bool) -> tune.RunConfig:
    storage, name = runtime.tune_path.rstrip("/").rsplit("/", 1)
    return tune.RunConfig(name=name, storage_path=storage, verbose=2 if verbose else 0,
                          failure_config=tune.FailureConfig(max_failures=runtime.sweep.spec.trial.max_failures),
                          callbacks=callbacks(runtime, searcher, verbose))


def build_tuner(runtime: SweepRuntime, verbose: bool = False) -> tune.Tuner:
    param_space, tune_config = search.tuner_settings(runtime.sweep, trial_dirname_creator=trial_dirname)
    return tune.Tuner(_trainable(runtime), param_space=param_space, tune_config=tune_config,
                      run_config=run_config(runtime, tune_config.search_alg, verbose))


def output_path(sweep: Sweep) -> str:
    """A new folder for the sweep's outputs, named by the sweep and the second it started; a second
    sweep of that name started in the same second gets ``-2`` (a local folder is created here, so
    two drivers cannot both take one name)."""
    storage = sweep.spec.storage_path
    if not is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    stem = f"{storage.rstrip('/')}/{sweep.spec.name}-{datetime.now():%Y%m%d-%H%M%S}"
    for attempt in range(1, 1000):
        path = stem if attempt == 1 else f"{stem}-{attempt}"
        if is_uri(path):
            fs, folder = pafs.FileSystem.from_uri(path)
            if fs.get_file_info(folder).type == pafs.FileType.NotFound:
                return path
            continue
        try:
            Path(path).mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise ConfigError([("storage_path", f"{storage} already holds 999 sweeps named {sweep.spec.name} from this second")])


def start(sweep: Sweep, tracker: Tracker, path: str) -> SweepRuntime:
    """Open the parent run and record the sweep's state in ``path`` (``output_path``); nothing runs yet."""
    name = path.rsplit("/", 1)[-1]
    params = parent_params(sweep, path, expected_trials(sweep), search.budget(sweep)[1])
    space = {key: param.model_dump(exclude_none=True, by_alias=True) for key, param in sweep.spec.space.items()}
    parent = tracker.create_run(sweep.experiment, name, {SWEEP_TAG: name, KIND_TAG: "sweep"}, params,
                                {"sweep.yaml": sweep.source_text, "space.json": json.dumps(space, indent=1)})
    runtime = SweepRuntime(sweep, path, tracker, parent)
    runtime.save()
    return runtime


def _quiet_ray(path: str, name: str, verbose: bool) -> None:
    """Unless ``verbose``: what Ray prints in this process goes to the sweep's driver log, and Ray Tune
    uses its legacy output engine, silent at ``verbose=0`` (the current one prints its experiment box
    even there), so the terminal view is the only one. Ray Tune's own resume hint is never shown."""
    logging.getLogger("ray.tune.tune").addFilter(HideRestoreHint())
    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        route_library_output(driver_log(path, name))


def run_sweep(sweep: Sweep, verbose: bool = False) -> tuple[SweepRuntime, bool]:
    tracker = Tracker.connect(sweep.base_config.tracking_uri)
    for _, cfg in variants(sweep):  # a requested download happens once, here, not in every trial
        preflight.prepare(cfg)
    path = output_path(sweep)
    try:
        _quiet_ray(path, path.rstrip("/").rsplit("/", 1)[-1], verbose)
        ensure_ray(trial_output=verbose)
        _check_trial_fits(sweep)
    except BaseException:  # refused before anything ran: leave no sweep folder behind
        if not is_uri(path):
            shutil.rmtree(path, ignore_errors=True)
        raise
    runtime = start(sweep, tracker, path)
    log.info("sweep outputs: %s (resume with: aepg sweep --resume %s)", runtime.path, runtime.path)
    complete = _fit_and_close(runtime, lambda: build_tuner(runtime, verbose))
    return runtime, complete and confirm(runtime, verbose)


def resume_sweep(path: str, verbose: bool = False) -> tuple[SweepRuntime, bool]:
    """Continue a sweep; its terminal view is the one it started with (Tune restores its callbacks)."""
    runtime = SweepRuntime.load(path)
    runtime.tracker.check_reachable()
    _quiet_ray(runtime.path, runtime.name, verbose)
    ensure_ray(trial_output=verbose)
    if not tune.Tuner.can_restore(path):
        raise ConfigError([("--resume", f"Ray Tune finds no experiment state to restore in {path}")])
    runtime.parent.reopen()
    complete = _fit_and_close(runtime, lambda: restore_tuner(runtime))
    return runtime, complete and confirm(runtime, verbose)


def restore_tuner(runtime: SweepRuntime) -> tune.Tuner:
    return tune.Tuner.restore(runtime.tune_path, trainable=_trainable(runtime), resume_unfinished=True,
                              resume_errored=False)


def confirm(runtime: SweepRuntime, verbose: bool) -> bool:
    """The confirmation stage, when the sweep has one: its best finished configurations trained
    again on fresh seeds (resumed where an interrupted sweep left it). False when interrupted."""
    settings = runtime.sweep.spec.confirm
    if settings is None:
        return True
    ranked = [e for e in build_report(runtime.tracker, runtime.parent_run_id).entries
              if e.status == "finished" and e.stage == "search"]
    if not ranked:
        return True
    points = [entry.params for entry in ranked[: settings.top_k]]
    stage = SweepRuntime(runtime.sweep.confirmation(points), runtime.path, runtime.tracker, runtime.parent_run_id,
                         "confirm")
    log.info("confirming the best %d configurations on seeds %s", len(points), settings.seeds)
    make = (lambda: restore_tuner(stage)) if tune.Tuner.can_restore(stage.tune_path) else (lambda: build_tuner(stage, verbose))
    return _fit_and_close(stage, make)


def _fit_and_close(runtime: SweepRuntime, make_tuner) -> bool:
    """Build the tuner and fit it; whatever fails on the way leaves the parent run FAILED, never RUNNING."""
    try:
        results = make_tuner().fit()
    except KeyboardInterrupt:  # a second Ctrl-C, which Tune passes on
        runtime.parent.close("KILLED", interrupts.reason())
        raise
    except BaseException as error:
        runtime.parent.close("FAILED", f"{type(error).__name__}: {error}")
        raise
    _drop_orphans(runtime, {Path(r.path).name.removeprefix(TRIAL_PREFIX) for r in results})
    # Ctrl-C: Tune saved its state, then stopped the running trials, which it counts as terminated
    # although they never ended (their runs are still open): either sign means interrupted.
    cut_short = [child for child in runtime.children() if child.status == "RUNNING"]
    complete = not cut_short and results.num_terminated + results.num_errors >= expected_trials(runtime.sweep)
    if not complete:
        for child in cut_short:
            interrupted = runtime.tracker.run(child.run_id)
            interrupted.set_tags({STATUS_TAG: "interrupted"})
            interrupted.close("KILLED", "sweep interrupted")
        runtime.parent.close("KILLED", interrupts.reason())
    return complete


def _drop_orphans(runtime: SweepRuntime, trial_ids: set[str]) -> None:
    """Delete child runs of trials the sweep does not know: a driver killed between opening a
    trial's run and saving Tune's state leaves one, and the restored sweep samples anew."""
    for child in runtime.children():
        if child.tags.get(TRIAL_TAG) not in trial_ids:
            log.warning("deleting MLflow run %s of trial %s, which the restored sweep never recorded",
                        child.run_id, child.tags.get(TRIAL_TAG))
            runtime.tracker.run(child.run_id).delete()


def trial_dirname(trial) -> str:
    """Trial folders named by trial id alone, so results map back to MLflow runs."""
    return f"{TRIAL_PREFIX}{trial.trial_id}"


def finalize(runtime: SweepRuntime) -> SweepReport:
    """Leaderboard, best config, paper table and plots: into the sweep folder and the parent run,
    which ends FINISHED (FAILED when no trial finished, or when the report cannot be written)."""
    try:
        report = build_report(runtime.tracker, runtime.parent_run_id)
        table = paper_table(runtime.tracker, [runtime.parent_run_id])
        fs, folder = pafs.FileSystem.from_uri(runtime.path)
        for name, text in report_texts(report, table).items():
            with fs.open_output_stream(f"{folder}/{name}") as out:
                out.write(text.encode())
        publish(runtime.tracker, runtime.parent_run_id, report, table)
    except BaseException as error:
        runtime.parent.close("FAILED", f"report: {type(error).__name__}: {error}")
        raise
    if report.best is None:
        runtime.parent.close("FAILED", nothing_finished(runtime))
    else:
        runtime.parent.close("FINISHED")
    return report


def nothing_finished(runtime: SweepRuntime) -> str:
    """Why a sweep has no result, in one line: how its trials ended, and the first failure's reason."""
    children = runtime.children()
    ended = Counter(child.tags.get(STATUS_TAG, "unknown") for child in children)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(ended.items())) or "no trial ran"
    reasons = [child.tags[schema.FAILURE_TAG] for child in children if child.tags.get(schema.FAILURE_TAG)]
    return f"no trial finished ({counts})" + (f"; first failure: {reasons[0]}" if reasons else "")

"""What the driver, its callbacks and every trial of a sweep share (pickled into the trials): the
sweep, its folder, its MLflow parent run and stage; the run the driver hands each trial as it
starts; the runs a trial nests under its own (ladder levels, seeds, arms), trained in the trial's
process or, several at once, as Ray tasks with the trial's resources each."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from aepg import preflight, schema
from aepg.config import RunConfig
from aepg.schema import CONFIG_TAG, INDEX_TAG, NODE_NAMES_TAG, NODE_TAG, STAGE_TAG, STATUS_TAG, SWEEP_TAG, TRIAL_TAG
from aepg.sweep.params import config_id
from aepg.sweep.progress import NODE_RESULT
from aepg.sweep.spec import Sweep, SweepSpec
from aepg.sweep.state import STATE_FILE, read_state
from aepg.tracking import RunHandle, RunRecord, Tracker

if TYPE_CHECKING:
    from aepg.trainer import TrainState

TRIAL_PREFIX = "trial_"
"""A trial's Tune folder is this and its trial id."""
HANDED_RUN_FILE = "mlflow_run.json"
"""In a trial's Tune folder: the run the driver opened for the trial."""


@dataclass(frozen=True)
class TrialRun:
    """The MLflow run the driver opened for a trial, as the trial is handed it."""

    run: RunHandle
    name: str
    config_id: str
    node: str = ""
    """The name of the node this attempt runs on (set by the trial)."""

    def report(self, metrics: dict) -> None:
        """Tune's report, with the node the trial runs on for the terminal view."""
        from ray import tune

        tune.report({**metrics, NODE_RESULT: self.node})

    def values(self, tag: str) -> dict:
        """A JSON tag the trial keeps on its run (its values per seed, per arm), so that a retried
        trial trains only what it lacks."""
        return json.loads(self.run.tracker.get_run(self.run.run_id)[0].tags.get(tag, "{}"))

    def values_list(self, tag: str) -> list[str]:
        """A comma-separated tag of the trial's run (the nodes its runs trained on, say)."""
        return [item for item in self.run.tracker.get_run(self.run.run_id)[0].tags.get(tag, "").split(",") if item]


@dataclass(frozen=True)
class Trained:
    """What a run trained as a Ray task gave: the sweep metric, and the node it trained on."""

    value: float
    node: str


@dataclass(frozen=True)
class NestedRun:
    """A run a trial trains under its own: a ladder level, a seed, an arm on a seed."""

    cfg: RunConfig
    run: RunHandle
    summary: str | None
    """Its summary's prefix (``aepg.metrics``): ``seed_run/`` for a seed or an arm, None for a level."""


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
        """A trial's run config, as its protocol starts it."""
        cfg = self.sweep.protocol.trial_config(self.sweep.run_config(params, f"{self.path}/runs", run_name), self.sweep)
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

    def children(self, every_stage: bool = False) -> list[RunRecord]:
        """The trial runs under the sweep's parent run: this stage's, or (``every_stage``) all."""
        runs = self.tracker.find_runs(self.sweep.experiment, {schema.PARENT_TAG: self.parent_run_id})
        return runs if every_stage else [r for r in runs if r.tags.get(STAGE_TAG, "search") == self.stage]

    def nested_runs(self) -> list[RunRecord]:
        """The runs the sweep's trials nest under their own (seeds, arms, ladder levels)."""
        children = {child.run_id for child in self.children(every_stage=True)}
        return [run for run in self.tracker.find_runs(self.sweep.experiment, {SWEEP_TAG: self.name})
                if run.tags.get(schema.PARENT_TAG) in children]

    def open_runs(self) -> list[RunRecord]:
        """Every run of the sweep still RUNNING: trial runs and the runs nested under them."""
        return [run for run in self.tracker.find_runs(self.sweep.experiment, {SWEEP_TAG: self.name})
                if run.status == "RUNNING" and run.run_id != self.parent_run_id]

    def _trial_folder(self, trial_id: str) -> tuple[pafs.FileSystem, str]:
        return pafs.FileSystem.from_uri(f"{self.tune_path.rstrip('/')}/{TRIAL_PREFIX}{trial_id}")

    def hand_run(self, trial_id: str, run: TrialRun) -> None:
        """Give a starting trial its run, in the trial's own folder of the sweep's (shared) storage:
        the driver writes it as Tune starts the trial, before the trial's function runs."""
        fs, folder = self._trial_folder(trial_id)
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(f"{folder}/{HANDED_RUN_FILE}") as out:
            out.write(json.dumps({"run_id": run.run.run_id, "name": run.name, "config_id": run.config_id}).encode())

    def handed_run(self, trial_id: str) -> TrialRun:
        """The run ``hand_run`` gave this trial."""
        fs, folder = self._trial_folder(trial_id)
        try:
            with fs.open_input_stream(f"{folder}/{HANDED_RUN_FILE}") as stream:
                handed = json.loads(stream.read())
        except FileNotFoundError:
            raise RuntimeError(f"trial {trial_id} was handed no MLflow run (no {HANDED_RUN_FILE} in {folder}): "
                               "the sweep's storage_path must be shared by every node") from None
        return TrialRun(self.tracker.run(handed["run_id"]), handed["name"], handed["config_id"])

    def nested_run(self, trial_run: TrialRun, tags: dict[str, str], cfg: RunConfig, name: str, status: str) -> RunHandle:
        """A run nested under the trial's run, for a ladder level, a seed or an arm: found by its
        ``tags`` (a retried or resumed trial continues it from its checkpoints), else opened as ``name``."""
        tags = {schema.PARENT_TAG: trial_run.run.run_id, **tags}
        found = self.tracker.find_runs(self.sweep.experiment, tags)
        if found:
            run = self.tracker.run(found[0].run_id)
            run.reopen()
            return run
        return self.tracker.open_run(preflight.planned_run(cfg, name), {**tags, STATUS_TAG: status, SWEEP_TAG: self.name,
                                                                       CONFIG_TAG: trial_run.config_id})

    def train(self, cfg: RunConfig, run: RunHandle, report=None, summary: str | None = schema.FINAL) -> TrainState:
        """Train ``cfg`` into ``run`` as ``aepg train`` does, in this process, on the trial's CPUs;
        ``report`` after each task (``launch.run_workers``). (The trial's process imports the
        trainer here: the sweep's driver never does.)"""
        from aepg.launch import run_workers

        return run_workers(cfg, run, report, summary, self.sweep.spec.trial.cpus)

    def train_at_once(self, nested: list[NestedRun]) -> list[Trained | BaseException]:
        """Train every run of ``nested`` at once, each a Ray task holding the trial's per-run resources
        (as many run together as the cluster has room for), each closed FINISHED as it ends (FAILED
        with its error): what each gave, or the error it failed with, once all have ended."""
        import ray

        resources = dict(self.sweep.protocol.run_resources(self.sweep))
        remote = ray.remote(_train_nested).options(
            num_cpus=resources.pop("CPU", 0), num_gpus=resources.pop("GPU", 0), resources=resources or None,
            scheduling_strategy="DEFAULT", max_retries=0)  # "DEFAULT": out of the trial's own placement group
        refs = [remote.remote(job.cfg.model_dump(mode="json"), job.run, job.summary, self.sweep.spec.trial.cpus,
                              self.sweep.spec.metric) for job in nested]
        outcomes = []
        for ref in refs:
            try:
                outcomes.append(ray.get(ref))
            except Exception as error:  # a run's failure: the others still end, and are kept
                outcomes.append(error)
        return outcomes

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


def _train_nested(cfg: dict, run: RunHandle, summary: str | None, cpus: float, metric: str) -> Trained:
    """One nested run, in a Ray task: trained to its end on this node (which it records) and closed
    FINISHED (FAILED with the error's first line, which the trial then reports)."""
    from aepg.launch import record_failure, run_workers
    from aepg.ray_setup import this_node

    node = this_node()[1]
    before = run.tracker.get_run(run.run_id)[0].tags.get(NODE_NAMES_TAG, "")
    run.set_tags({NODE_NAMES_TAG: ",".join(filter(None, [before, node]))})
    try:
        state = run_workers(RunConfig.model_validate(cfg), run, None, summary, cpus)
    except BaseException as error:
        record_failure(run, error)
        raise
    run.close("FINISHED")
    return Trained(state.summary[metric], node)


def started(runtime: SweepRuntime, trial_id: str, params: dict) -> tuple[TrialRun, RunConfig]:
    """A trial's run as the driver handed it, with the node this attempt runs on added to the run,
    and the trial's config."""
    from aepg.ray_setup import this_node

    run = runtime.handed_run(trial_id)
    node_id, name = this_node()
    before = run.run.tracker.get_run(run.run.run_id)[0].tags.get(NODE_NAMES_TAG, "")
    run.run.set_tags({NODE_TAG: node_id, NODE_NAMES_TAG: ",".join(filter(None, [before, name]))})
    return replace(run, node=name), runtime.trial_config(params, run.name)


def log_rung(run: RunHandle, progress: dict[str, float], counter: str) -> None:
    """A ladder's progress on the trial's run, at the step its ``counter`` gives; the counter is a tag."""
    step = int(progress[counter])
    run.log_metrics({k: v for k, v in progress.items() if k != counter}, step=step)
    run.set_tags({schema.COUNTER_TAGS[counter]: str(step)})


def seed_mean(values: dict) -> tuple[float, float]:
    """The mean of a configuration's values over its seeds so far, and their std (0 for one seed)."""
    return statistics.mean(values.values()), statistics.stdev(values.values()) if len(values) > 1 else 0.0

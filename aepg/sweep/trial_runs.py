"""The sweep's MLflow runs as Ray Tune sees its trials (``MlflowTrialRuns``, a Tune callback in the
driver): each trial's run opened (or reopened) as the trial starts and handed to it, and closed with
its status, the runs nested under it too (FINISHED, or FAILED with the reason); a trial that Tune
retries after a failure or a lost node said in one line, once its new node is known."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace

from ray import tune

from aepg import preflight, schema
from aepg.config import ConfigError
from aepg.ray_setup import node_names
from aepg.schema import CONFIG_TAG, NODE_NAMES_TAG, OPTUNA_STATE_TAG, STATUS_TAG
from aepg.sweep.progress import error_log, error_reason
from aepg.sweep.runtime import SweepRuntime, TrialRun
from aepg.sweep.state import trial_run_name

log = logging.getLogger("aepg")


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
    RUNS_POLL_S = 10.0

    def __init__(self, runtime: SweepRuntime, searcher):
        self.runtime, self.searcher = runtime, searcher
        self.names: dict[str, str] = {}
        """Trial id to run name, for the terminal view."""
        self.say = lambda line: log.info("%s", line)
        """How a line that no trial event carries (a retry's) reaches the user: through the terminal
        view, where there is one."""
        self.retries: dict[str, Retry] = {}
        self.polled = self.counted = 0.0
        self.tracking_up = lambda: True
        """False while the tracking server fails (``TrackingWatch``): polling MLflow then waits."""
        self.count_runs = None
        """Where the number of the trials' nested runs finished so far goes (the view's estimate), if
        the trials train several."""

    def on_trial_start(self, iteration, trials, trial, **info):
        existing = self.runtime.find_child(trial.trial_id)
        if existing:
            self.names[trial.trial_id] = existing.name
            existing_run = self.runtime.tracker.run(existing.run_id)
            existing_run.reopen()
            existing_run.set_tags({STATUS_TAG: "running"})
            self.runtime.hand_run(trial.trial_id, TrialRun(existing_run, existing.name, existing.tags.get(CONFIG_TAG, "")))
            return
        index = len(self.runtime.children(every_stage=True)) + 1  # start order, also across a resumed sweep
        params = trial.config.get("params", trial.config)
        tags = self.runtime.child_tags(trial.trial_id, index, params)
        name = trial_run_name(index, self.runtime.searched(params), self.runtime.stage)
        self.names[trial.trial_id] = name
        try:
            cfg = self.runtime.trial_config(params, name)
        except ConfigError as error:  # an invalid combination: the trial fails on it too
            run = self.runtime.tracker.create_run(self.runtime.sweep.experiment, name, tags, params)
            log.warning("trial %s has an invalid config: %s", trial.trial_id, error)
        else:
            params, record_tags = self.runtime.sweep.protocol.trial_record(cfg, self.runtime.sweep)
            run = self.runtime.tracker.open_run(replace(preflight.planned_run(cfg, name), params=params),
                                                {**tags, **record_tags})
        self.runtime.hand_run(trial.trial_id, TrialRun(run, name, tags[CONFIG_TAG]))

    def _close(self, trial, status: str, tags: dict, reason: str | None = None, texts: dict | None = None) -> None:
        """Close the trial's run, and any run nested under it still open (a failed seed's, say)."""
        found = self.runtime.find_child(trial.trial_id)
        if found is None:
            return
        run = self.runtime.tracker.run(found.run_id)
        if texts:
            run.log_outputs(texts=texts)
        trial_state = getattr(self.searcher, "optuna_state", None)  # Optuna's searchers say how a trial ended
        state = trial_state(trial.trial_id) if trial_state else None
        if state:
            tags[OPTUNA_STATE_TAG] = state
        for nested in self.runtime.tracker.nested_runs(found.experiment_id, found.run_id):
            if nested.status == "RUNNING":
                self.runtime.tracker.run(nested.run_id).close(status, reason)
        run.set_tags(tags)
        run.close(status, reason)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id in self.retries:  # a retry that ended before Ray declared its old node dead
            self._say_retries([trial], ending=True)
        key, full = self.runtime.sweep.protocol.budget(self.runtime.sweep)
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
        if not self.tracking_up():
            return
        if self.retries and now - self.polled >= self.RETRY_POLL_S:
            self.polled = now
            self._say_retries(trials, ending=False)
        if self.count_runs is not None and now - self.counted >= self.RUNS_POLL_S:
            self.counted = now
            self.count_runs(sum(run.status == "FINISHED" for run in self.runtime.nested_runs()))

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

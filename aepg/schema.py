"""Every MLflow tag and metric name aepg writes, in one place: the runs' own tags, a sweep's tags on
its parent and child runs, the metric names of a run under way and done, and the counters of the
fidelity ladders. The trainer, the sweep driver, the report and the CLI read them from here, so a
name changed here changes everywhere. Imports nothing from aepg.
"""

from __future__ import annotations

# -- MLflow's own tags ----------------------------------------------------------------------------
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"
COLOR_TAG = "mlflow.runColor"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"

# -- a run's tags ---------------------------------------------------------------------------------
RESUMED_TAG = "aepg.resumed_from"
TASKS_DONE_TAG = "aepg.tasks_done"
NODES_TAG = "aepg.worker_node_ids"
"""The Ray node ids the run's training workers ran on, comma-separated."""
STARTED_TAG = "aepg.workers_started"
"""When the run's training (its worker group, under Ray Train) last started: a change while the driver
waits on Ray Train is a restart (``aepg.launch.RestartWatch``)."""
FAILURE_TAG = "failure_reason"
VERSION_TAG = "aepg.version"
THREADS_TAG = "aepg.torch_threads"
"""The CPU threads the run's torch computed with: a run repeats bit for bit on the same machine with
the same count (docs/running.md, "Reproducibility")."""
COMMIT_TAG = "aepg.commit"
"""aepg's git commit when it runs from a checkout (``-dirty`` with changes), else "unknown"; the
run's ``manifest.json`` holds the rest of what it was made with."""

# -- a run's metrics ------------------------------------------------------------------------------
BUDGET_KEY = "eval/tasks_done"
"""The tasks a run has trained, the step of its ``eval/`` metrics."""


def partial_name(metric: str) -> str:
    """The running value of a summary metric after each task (``last_accuracy`` so far is ``eval/accuracy``)."""
    return "eval/accuracy" if metric == "last_accuracy" else f"eval/{metric}"


FINAL = "final/"
"""What ranks a run: its summary once it has used its whole budget (for a configuration trained on
several seeds, the seed-mean on the configuration's run)."""
ONE_SEED = "seed_run/"
"""The summary of one seed of a configuration, on that seed's (or arm's) run nested under the
configuration's: named so that it is never sorted or charted as what ranks the configuration."""


def final_name(metric: str) -> str:
    return f"{FINAL}{metric}"


def one_seed_name(metric: str) -> str:
    return f"{ONE_SEED}{metric}"


# -- a sweep's tags --------------------------------------------------------------------------------
KIND_TAG = "aepg.kind"
"""``sweep`` on a parent run."""
SWEEP_TAG = "aepg.sweep"
"""The sweep's folder name, on the parent and every run under it."""
TRIAL_TAG = "aepg.trial_id"
STATUS_TAG = "aepg.status"
"""finished, stopped early, failed, running, or low fidelity (a ladder level's nested run)."""
INDEX_TAG = "aepg.trial_index"
"""The trial's start order, from 1."""
LEVEL_TAG = "aepg.fidelity_level"
OPTUNA_STATE_TAG = "aepg.optuna_state"
NODE_TAG = "aepg.trial_node_id"
"""The Ray node id the trial's latest attempt runs on (its workers may run elsewhere)."""
NODE_NAMES_TAG = "aepg.nodes"
"""The names of the nodes each attempt of the trial ran on, in order (a retry adds one): ``worker-1,head``."""
RUN_NODES_TAG = "aepg.run_nodes"
"""A configuration whose runs train as Ray tasks (its seeds, its arms): the names of the nodes they
trained on (each of those runs holds its own as ``aepg.nodes``)."""
SEED_VALUES_TAG = "aepg.seed_values"
"""Seed ladder: a trial's final value of each seed trained so far, as JSON {seed: value}."""
SEED_TAG = "aepg.seed"
"""Seed ladder: the seed a run nested under its configuration's run trained."""
ARM_TAG = "aepg.arm"
ARMS_TAG = "aepg.arms"
"""Paired arms, on a configuration's run: the compared key and its arms (``objective.kind: ce, aepg``);
the run's params hold only what its arms share."""
SEEDS_TAG = "aepg.seeds"
"""On a configuration's run that trains several seeds: the seeds, comma-separated (its params hold no seed)."""
"""Paired arms: the arm (``compare``'s value) a run nested under its configuration's run trained."""
ARM_VALUES_TAG = "aepg.arm_values"
"""Paired arms: a configuration's final value of each arm on each seed so far, as JSON {seed: {arm: value}}."""
PAIRED_PREFIX = "paired/"
"""Paired arms, on a configuration's run once every seed is done (at step 0, one labelled bar per
run in MLflow's charts): on the sweep's metric, each arm's seed-mean and the difference of the last
arm minus the first with its 95% interval (``paired/<arm>``, ``paired/diff``, ``paired/low``,
``paired/high``)."""
PAIRED_RUNNING_PREFIX = "paired_by_seeds/"
"""The same as the seeds come in, at the step that counts them (``paired_by_seeds/diff_<metric>``,
``paired_by_seeds/diff_low_<metric>``, ``paired_by_seeds/diff_high_<metric>``, ``paired_by_seeds/<arm>_<metric>``)."""
STAGE_TAG = "aepg.stage"
"""``confirm`` on the runs of the confirmation stage (the search's runs have none)."""
CONFIG_TAG = "aepg.config_id"
"""The trial's configuration, seed aside: the runs of one configuration share it (group by it in MLflow)."""

# -- a sweep's fidelity counters (Tune results, and their runs' tags) ----------------------------
LEVEL_KEY = "fidelity/level"
COMPUTE_KEY = "compute/tasks"
SEEDS_KEY = "seeds/count"
SEED_VALUES_RESULT = "seeds/values"
"""In a seed ladder trial's Tune results (not logged): its value on each seed so far, as JSON {seed: value}."""
COUNTER_TAGS = {LEVEL_KEY: "aepg.levels_done", SEEDS_KEY: "aepg.seeds_done"}
"""The ladders' counters as their runs' tags: in MLflow the counter is the step of the ladder's
metrics, not a ramp chart of its own (Tune still gets it: it is ASHA's time attribute)."""


def seed_metric(metric: str) -> str:
    """The mean of the sweep metric over the seeds a configuration has trained so far."""
    return f"seeds/mean_{metric}"


def level_metric(metric: str) -> str:
    """The sweep metric at the end of a fidelity level's task sequence."""
    return f"fidelity/{metric}"


# -- a sweep's metrics on its runs ---------------------------------------------------------------
STANDING_KEY = "sweep/standing"
"""A child's standing on its sweep's leaderboard: N for the best of N, 1 for the last, so that
MLflow's bar charts give the best trial the longest bar and sorting by it (descending) is the
leaderboard's order."""
SEED_NOISE_KEY, SPREAD_KEY = "sweep/seed_noise", "sweep/config_spread"
"""A seed sweep's parent: the pooled std over seeds, and the std of the configurations' means."""


def best_name(metric: str) -> str:
    """The parent run's best value of the sweep metric."""
    return f"sweep/best_{metric}"


def seed_std_name(metric: str) -> str:
    """A configuration's std over the seeds it trained so far."""
    return f"seeds/std_{metric}"

"""Sweep protocols: how a trial trains the configuration the searcher proposed, and what its result
means. One catalogue entry each (``aepg.catalog.PROTOCOLS``), one file each beside this one:

- ``plain``: one run at the full budget, reported after each task (a grid on several seeds trains
  each point once per seed, and the leaderboard averages the seeds);
- ``front``: a plain trial, ranked as a trade-off between metrics (``trade_off``: the Pareto front);
- ``ladder``: the whole task sequence at a fraction of the epochs or data, then more
  (``scheduler.fidelity: epochs`` or ``data``);
- ``seeds``: the configuration on the sweep's seeds, between the scheduler's rungs several seeds at
  once (``scheduler.fidelity: seeds``);
- ``paired``: the seed ladder, each seed trained under every arm of ``compare`` at once, and the
  arms' difference paired over the seeds.

A sweep file names its protocol (``protocol: {kind: NAME, ...}``) or is given the one its keys
ask for (``matches``). The protocol owns the trial's body, what the dry run says it costs, what it
refuses in a sweep file, and how its runs read back as leaderboard rows; the driver only calls it.
Its module imports neither Ray nor torch: the trial body imports what it trains with.
"""

from __future__ import annotations

from typing import ClassVar

from aepg.catalog import PROTOCOLS
from aepg.config import EntryConfig, RunConfig


class SweepProtocol(EntryConfig):
    """What every sweep protocol's config holds; ``kind`` picks the entry of ``aepg.catalog.PROTOCOLS``,
    whose config adds its own keys. Its methods are given the sweep (``aepg.sweep.spec.Sweep``) while
it runs, or what its parent run logged (``aepg.sweep.params.SweepParams``) when its runs are read
back as leaderboard rows (``aepg.sweep.leaderboard.TrialResult``)."""

    kind: str = ""
    precedence: ClassVar[int] = -1
    """Among the protocols whose ``matches`` holds for a sweep file that names none, the highest wins."""
    unit: ClassVar[str] = "task"
    """What a trial's progress counts, for the terminal."""
    compares: ClassVar[bool] = False
    """Each trial compares arms of one configuration, so a sweep may search nothing else (``space: {}``)."""

    @classmethod
    def matches(cls, spec) -> bool:
        """Whether a sweep file that names no protocol asks for this one by its other keys."""
        return False

    # -- a trial ---------------------------------------------------------------------------------
    def trial_config(self, cfg: RunConfig, sweep) -> RunConfig:
        """The run config a trial starts from (its MLflow run opens with it)."""
        return cfg

    def points(self, points: list[dict], sweep) -> list[dict]:
        """A grid's trials from its distinct points."""
        return points

    def run_resources(self, sweep) -> dict[str, float]:
        """What one run of a trial asks Ray for (with scaling.num_workers > 0, only the process that
        drives its TorchTrainer: see trial.cpus)."""
        trial = sweep.spec.trial
        resources = {"CPU": trial.cpus, **trial.resources}
        if trial.gpus and sweep.base_config.scaling.num_workers == 0:
            resources["GPU"] = trial.gpus
        return resources

    def runs_per_trial(self, sweep) -> int:
        """The runs a trial trains at most: one where it trains its own."""
        return 1

    def trial_record(self, cfg: RunConfig, sweep) -> tuple[dict[str, object], dict[str, str]]:
        """The params the trial's own run logs (what its training reads) and the tags it adds."""
        from aepg.preflight import backbone_facts

        return cfg.active_params(backbone_facts(cfg)), {}

    def trial_resources(self, sweep) -> dict[str, float]:
        """What a trial's own process asks Ray for: one run's, where the trial trains in it."""
        return self.run_resources(sweep)

    def train_trial(self, cfg: RunConfig, run, runtime) -> None:
        """Train the trial's configuration ``cfg`` into its ``run``, reporting to Tune as it goes
        (``budget``'s key counts the progress)."""
        raise NotImplementedError

    # -- what trials are compared on ---------------------------------------------------------------
    def budget(self, sweep) -> tuple[str, int]:
        """(the result key counting a trial's progress, its value at the full budget)."""
        raise NotImplementedError

    def compared_metric(self, sweep) -> str:
        """What trials are compared on while under way (ASHA's rungs, Optuna's intermediate values)."""
        raise NotImplementedError

    def compared_mode(self, sweep) -> str:
        return sweep.spec.mode

    def searched_metric(self, sweep) -> str:
        """The value Optuna learns from (``compared_metric`` unless the protocol says otherwise)."""
        return self.compared_metric(sweep)

    def parent_params(self, sweep) -> dict[str, object]:
        """What the sweep's parent run logs for the report to read this protocol's runs back."""
        return {}

    # -- the dry run -------------------------------------------------------------------------------
    def cost(self, sweep, per_trial: str, total: int) -> tuple[str, int]:
        """The dry run's line for one trial and the whole sweep's training samples, from one run's
        (``per_trial``: "up to N", ``total``: trials x N)."""
        return f"{per_trial} training samples", total

    # -- the report --------------------------------------------------------------------------------
    def entries(self, runs: list, space: dict, params) -> list:
        """The leaderboard's rows from the trials' runs (not ranked)."""
        raise NotImplementedError

    def group(self, entries: list, params) -> list:
        """The leaderboard's rows from the trials' entries (trials of one configuration merged)."""
        return entries

    def compute_budget(self, params) -> float | None:
        """The tasks a sweep trains at most, for the convergence plot (None where unknown)."""
        return params.num_trials * params.num_tasks if params.num_tasks else None

    def best(self, finished: list, params) -> object:
        """Which finished configuration ``best.yaml`` is (``finished`` ranked best first)."""
        return finished[0] if finished else None

    def verdict(self, best: object, entries: list, params) -> str:
        """A line that answers what the protocol asks, or empty."""
        return ""

    def figures(self, name: str, entries: list, params, best: object, nested: dict) -> dict:
        """Plots only this protocol draws (file name -> figure); ``nested``: each configuration's run
        id to the runs nested under it."""
        return {}

    def nests_seed_runs(self, params) -> bool:
        """Whether a configuration's seeds (or arms) are runs nested under its run, from which the
        paper's table is built."""
        return False


def protocol_for(spec) -> SweepProtocol:
    """The protocol a sweep file names, or the one its other keys ask for (``matches``)."""
    if spec.protocol is not None:
        return spec.protocol
    chosen = max((entry for entry in PROTOCOLS.entries() if entry.config.matches(spec)),
                 key=lambda entry: entry.config.precedence)
    return chosen.config()

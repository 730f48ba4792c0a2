"""The seed ladder (``scheduler.fidelity: seeds``): a trial is one configuration, trained at full budget
on the sweep's seeds, each seed in a run nested under the configuration's run. The scheduler compares
configurations on their mean over the seeds so far at its rungs (ASHA: ``grace_period`` seeds, then
``reduction_factor`` times as many; the signed-rank test: after every seed), and the ones it keeps
train more seeds. The seeds up to the next rung train at once, each run a Ray task with the trial's
resources (the trial's own process holds none), so a configuration takes as many of the cluster's
CPUs or GPUs as it has runs to train. The configuration's run trains nothing itself: it holds the
seed-mean as ``final/<metric>`` once every seed is done (not in a search whose confirmation
decides). A retried trial keeps the seeds it has (their values are on its run) and trains the rest."""

from __future__ import annotations

import json
from typing import Literal

from aepg.catalog import PROTOCOLS
from aepg.schema import (COMPUTE_KEY, ONE_SEED, RUN_NODES_TAG, SEED_TAG, SEEDS_TAG, SEED_VALUES_RESULT, SEED_VALUES_TAG, SEEDS_KEY,
                         final_name, seed_metric, seed_std_name)
from aepg.sweep.protocols import SweepProtocol

COORDINATOR_MEMORY = 2**20
"""What a trial whose runs go out as Ray tasks asks Ray for itself: no CPU or GPU, which its runs
hold (a request cannot be empty, and memory is a resource every node has)."""


@PROTOCOLS.register("seeds", display="seed ladder")
class SeedLadderProtocol(SweepProtocol):
    """The configuration on the sweep's seeds, several at once between the scheduler's rungs; its run
    holds the seed-mean."""

    kind: Literal["seeds"] = "seeds"
    precedence = 30
    unit = "seed"

    @classmethod
    def matches(cls, spec) -> bool:
        return spec.scheduler.fidelity == "seeds"

    def trial_config(self, cfg, sweep):
        return cfg.model_copy(update={"seed": sweep.seeds[0]})

    def trial_resources(self, sweep) -> dict[str, float]:
        return {"CPU": 0, "memory": COORDINATOR_MEMORY}

    def trial_record(self, cfg, sweep) -> tuple[dict[str, object], dict[str, str]]:
        """What the configuration's seeds share: no seed (a tag lists them)."""
        params, tags = super().trial_record(cfg, sweep)
        return {k: v for k, v in params.items() if k != "seed"}, {**tags, SEEDS_TAG: ",".join(map(str, sweep.seeds))}

    # -- the runs of one seed (a paired sweep trains each arm on it) ------------------------------------
    def seed_labels(self, spec) -> list[str]:
        """The runs the configuration trains on each seed, by label: one, the seed's own."""
        return [""]

    def seed_run(self, cfg, run, runtime, seed: int, label: str):
        """The run labelled ``label`` of ``seed`` (a retried trial continues it from its checkpoints)."""
        from aepg.sweep.runtime import NestedRun

        seeded = cfg.model_copy(update={"seed": seed})
        nested = runtime.nested_run(run, {SEED_TAG: str(seed)}, seeded, f"s{seed}@{run.name}", "seed run")
        return NestedRun(seeded, nested, ONE_SEED)

    def seed_value(self, spec, by_label: dict[str, float]) -> float:
        """The configuration's value on a seed from its runs' values."""
        return by_label[""]

    def keep(self, run, spec, done: dict[int, dict[str, float]]) -> None:
        """Record on the trial's run what its seeds' runs gave (a retried trial reads it back)."""
        values = {seed: self.seed_value(spec, by_label) for seed, by_label in done.items() if by_label}
        run.run.set_tags({SEED_VALUES_TAG: json.dumps(values)})

    def done(self, run, spec) -> dict[int, dict[str, float]]:
        """What the trial's run records of its seeds so far (a retried or resumed trial's)."""
        return {int(seed): {"": value} for seed, value in run.values(SEED_VALUES_TAG).items()}

    def runs_per_seed(self, spec) -> int:
        return len(self.seed_labels(spec))

    def runs_per_trial(self, sweep) -> int:
        return len(sweep.seeds) * self.runs_per_seed(sweep.spec)

    def log_count(self, run, spec, done: dict[int, dict[str, float]], count: int) -> None:
        """What the configuration's run logs once it has ``count`` seeds (beyond the seed-mean)."""

    # -- the trial ----------------------------------------------------------------------------------
    def train_trial(self, cfg, run, runtime) -> None:
        from aepg.sweep.runtime import log_rung, seed_mean

        spec, seeds = runtime.sweep.spec, runtime.sweep.seeds
        done, reached = self.done(run, spec), 0
        for rung in spec.scheduler.seed_rungs(len(seeds)):
            batch = [seed for seed in seeds[reached:rung] if self._missing(done.get(seed), spec)]
            if batch:
                jobs = {(seed, label): self.seed_run(cfg, run, runtime, seed, label) for seed in batch
                        for label in self.seed_labels(spec) if label not in done.get(seed, {})}
                failed, nodes = None, run.values_list(RUN_NODES_TAG)
                for (seed, label), outcome in zip(jobs, runtime.train_at_once(list(jobs.values()))):
                    if isinstance(outcome, BaseException):
                        failed = failed or outcome
                    else:
                        done.setdefault(seed, {})[label] = outcome.value
                        nodes = list(dict.fromkeys([*nodes, outcome.node]))
                self.keep(run, spec, done)
                run.run.set_tags({RUN_NODES_TAG: ",".join(nodes)})
                if failed is not None:
                    raise failed
            for count in range(reached + 1, rung + 1):
                counted = {seed: self.seed_value(spec, done[seed]) for seed in seeds[:count]}
                mean, std = seed_mean(counted)
                progress = {SEEDS_KEY: count, seed_metric(spec.metric): mean, seed_std_name(spec.metric): std,
                            COMPUTE_KEY: count * cfg.benchmark.num_tasks * self.runs_per_seed(spec)}
                log_rung(run.run, progress, SEEDS_KEY)
                self.log_count(run, spec, {seed: done[seed] for seed in seeds[:count]}, count)
                if count == len(seeds) and spec.confirm is None:
                    run.run.log_metrics({final_name(spec.metric): mean})
                run.report({**progress, final_name(spec.metric): mean, SEED_VALUES_RESULT: json.dumps(counted)})
            reached = rung

    def _missing(self, by_label: dict | None, spec) -> bool:
        return by_label is None or len(by_label) < self.runs_per_seed(spec)

    # -- what trials are compared on ---------------------------------------------------------------
    def budget(self, sweep) -> tuple[str, int]:
        return SEEDS_KEY, len(sweep.seeds)

    def compared_metric(self, sweep) -> str:
        return seed_metric(sweep.spec.metric)

    def problems(self, sweep) -> list[tuple[str, str]]:
        spec, problems = sweep.spec, []
        seeds = spec.seeds or []
        if len(seeds) < 2:
            problems.append(("seeds", f"scheduler.fidelity: seeds needs two or more seeds to train each configuration "
                             f"on (got {seeds or 'none'}), e.g. seeds: [0, 1, 2, 3, 4]"))
        if spec.trade_off:
            problems.append(("scheduler.fidelity", "the seed ladder follows one metric; with trade_off, train seeds "
                             "as a grid's (search.algorithm: grid, seeds: [...]) with scheduler.fidelity: tasks"))
        return problems

    def cost(self, sweep, per_trial: str, total: int) -> tuple[str, int]:
        spec, seeds = sweep.spec, len(sweep.seeds)
        rungs = ", ".join(map(str, spec.scheduler.seed_rungs(seeds)))
        return (f"{per_trial} training samples per {self.run_word(spec)}, on up to {seeds} seeds{self.runs_said(spec)} "
                f"(rungs at {rungs} seeds; the seeds up to a rung train at once)", total * seeds * self.runs_per_seed(spec))

    def run_word(self, spec) -> str:
        return "seed"

    def runs_said(self, spec) -> str:
        return ""

    # -- the report --------------------------------------------------------------------------------
    def entries(self, runs, space, params):
        from aepg.sweep.leaderboard import seed_ladder_entry

        return [seed_ladder_entry(run, space, len(params.seeds), params.num_tasks) for run in runs]

    def compute_budget(self, params) -> float | None:
        return params.num_trials * params.num_tasks * len(params.seeds) if params.num_tasks else None

    def nests_seed_runs(self, params) -> bool:
        return True

    def figures(self, name, entries, params, best, nested) -> dict:
        """With arms: ``paired_difference.png``, each finished configuration's difference between its
        arms (best first) on the sweep metric and on the other summary metric, from its arm runs."""
        from aepg import plots
        from aepg.schema import ARM_TAG, SEED_TAG, one_seed_name
        from aepg.sweep.noise import paired_summary

        compared = [e for e in entries if e.arms and e.status == "finished"][:25]
        if not compared:
            return {}
        first, *_, last = list(compared[0].arms)
        metrics = [params.metric, "last_accuracy" if params.metric != "last_accuracy" else "avg_incremental_accuracy"]
        rows = []
        for entry in compared:
            row = {"name": entry.name}
            for metric in metrics:
                by_seed: dict[str, dict[str, float]] = {}
                for run in nested.get(entry.run_ids[0], []):
                    if run.tags.get(ARM_TAG) and one_seed_name(metric) in run.metrics:
                        by_seed.setdefault(run.tags[SEED_TAG], {})[run.tags[ARM_TAG]] = run.metrics[one_seed_name(metric)]
                _, (mean, half) = paired_summary(by_seed, [first, last])
                row[metric] = (mean, half, sum(1 for values in by_seed.values() if {first, last} <= set(values)))
            rows.append(row)
        return {"paired_difference.png": plots.paired_plot(rows, metrics, (first, last),
                                                           f"sweep {name}: {last} - {first} by configuration")}

    def verdict(self, best, entries, params) -> str:
        """With arms (each seed's runs tagged with theirs): whether the best configuration's difference
        between the arms is separated from zero."""
        from aepg.sweep.noise import paired_verdict

        if best is None or not best.arms:
            return ""
        return paired_verdict(best.name, list(best.arms), best.difference, len(best.seeds))

"""Paired arms (``compare``, e.g. ``{objective.kind: [ce, aepg]}``): the seed ladder
(``aepg.sweep.protocols.seeds``), each seed trained under every arm at once, on the same class order
and data, one run per arm and seed nested under the configuration's run. The searcher is told the
mean over the arms on each seed (``compare_by: mean``) or one arm's value; the configuration's run
holds each arm's mean and the difference of the last arm minus the first, paired over the seeds,
with its 95% interval (``aepg.sweep.noise.paired_summary``), and a line says whether the best
configuration's difference is separated from zero."""

from __future__ import annotations

import difflib
import json
import statistics
from typing import Any, Literal

from aepg.catalog import PROTOCOLS
from aepg.config import ConfigError, validate
from aepg.schema import (ARM_TAG, ARM_VALUES_TAG, ARMS_TAG, ONE_SEED, PAIRED_PREFIX, PAIRED_RUNNING_PREFIX, SEED_TAG,
                         SEED_VALUES_TAG)
from aepg.sweep.protocols.seeds import SeedLadderProtocol


def arms(spec) -> list[tuple[str, Any]]:
    """(key, value) of each arm, in the order ``compare`` lists them."""
    return [(key, value) for key, values in (spec.compare or {}).items() for value in values]


def arm_labels(spec) -> list[str]:
    """Each arm's value as text: its runs' ``aepg.arm`` tag and its column on the leaderboard."""
    return [str(value) for _, value in arms(spec)]


@PROTOCOLS.register("paired", display="paired arms")
class PairedProtocol(SeedLadderProtocol):
    """Every arm of ``compare`` on each seed of the seed ladder, at once; the arms' paired difference."""

    kind: Literal["paired"] = "paired"
    precedence = 40
    compares = True

    @classmethod
    def matches(cls, spec) -> bool:
        return spec.compare is not None

    def trial_record(self, cfg, sweep) -> tuple[dict[str, object], dict[str, str]]:
        """What every arm shares (and the searched keys, which some arm uses), so that the configuration's
        run never passes for one arm's run; the compared key and its arms in a tag."""
        from aepg.preflight import backbone_facts
        from aepg.sweep.spec import apply_dotted

        params, tags = super().trial_record(cfg, sweep)
        by_arm = [validate(apply_dotted(cfg.model_dump(mode="json"), {key: value})) for key, value in arms(sweep.spec)]
        armed = [arm.active_params(backbone_facts(arm)) for arm in by_arm]
        shared = {k: v for k, v in params.items() if all(k in p and p[k] == v for p in armed) or k in sweep.space}
        ((key, values),) = sweep.spec.compare.items()
        return shared, {**tags, ARMS_TAG: f"{key}: {', '.join(map(str, values))}"}

    def seed_labels(self, spec) -> list[str]:
        return arm_labels(spec)

    def seed_run(self, cfg, run, runtime, seed: int, label: str):
        """The run of arm ``label`` on ``seed``: the configuration with the arm's value of the compared key."""
        from aepg.sweep.runtime import NestedRun
        from aepg.sweep.spec import apply_dotted

        key, value = dict(zip(arm_labels(runtime.sweep.spec), arms(runtime.sweep.spec)))[label]
        armed = validate(apply_dotted(cfg.model_copy(update={"seed": seed}).model_dump(mode="json"), {key: value}))
        nested = runtime.nested_run(run, {ARM_TAG: label, SEED_TAG: str(seed)}, armed, f"{label}-s{seed}@{run.name}",
                                    "arm run")
        return NestedRun(armed, nested, ONE_SEED)

    def seed_value(self, spec, by_label: dict[str, float]) -> float:
        """The mean over the arms (``compare_by: mean``), or one arm's value."""
        return statistics.mean(by_label.values()) if spec.compare_by == "mean" else by_label[spec.compare_by]

    def keep(self, run, spec, done: dict[int, dict[str, float]]) -> None:
        complete = {seed: self.seed_value(spec, by_arm) for seed, by_arm in done.items()
                    if len(by_arm) == self.runs_per_seed(spec)}
        run.run.set_tags({ARM_VALUES_TAG: json.dumps({str(seed): by_arm for seed, by_arm in done.items()}),
                          SEED_VALUES_TAG: json.dumps(complete)})

    def done(self, run, spec) -> dict[int, dict[str, float]]:
        return {int(seed): dict(by_arm) for seed, by_arm in run.values(ARM_VALUES_TAG).items()}

    def log_count(self, run, spec, done: dict[int, dict[str, float]], count: int) -> None:
        """Each arm's mean over the seeds so far, and their paired difference with its 95% interval, at
        the step counting the seeds; once every seed is done, the same under short names at step 0."""
        from aepg.sweep.noise import paired_summary

        means, (difference, half) = paired_summary({str(s): v for s, v in done.items()}, arm_labels(spec))
        low, high = (difference - half, difference + half) if half is not None else (None, None)
        metric, running = spec.metric, PAIRED_RUNNING_PREFIX
        found = {f"{running}{arm}_{metric}": mean for arm, mean in means.items()}
        found.update({f"{running}diff_{metric}": difference, **({f"{running}diff_low_{metric}": low,
                                                                f"{running}diff_high_{metric}": high} if half else {})})
        run.run.log_metrics(found, step=count)
        if count == len(spec.seeds):
            final = {f"{PAIRED_PREFIX}{arm}": mean for arm, mean in means.items()}
            final.update({f"{PAIRED_PREFIX}diff": difference, **({f"{PAIRED_PREFIX}low": low,
                                                                f"{PAIRED_PREFIX}high": high} if half else {})})
            run.run.log_metrics(final, step=0)

    def problems(self, sweep) -> list[tuple[str, str]]:
        """One key, two or more distinct values, each a valid run config, carried by the seed ladder."""
        from aepg.sweep.spec import apply_dotted

        spec = sweep.spec
        if len(spec.compare) != 1:
            return [("compare", f"compares one key's values, e.g. {{objective.kind: [ce, aepg]}} (got {len(spec.compare)} keys)")]
        ((key, values),) = spec.compare.items()
        labels = arm_labels(spec)
        problems = []
        if len(set(labels)) < 2:
            problems.append((f"compare.{key}", f"needs two or more different values to compare (got {values})"))
        if key in spec.space:
            problems.append((f"compare.{key}", "is also searched in space: a key is either compared or searched"))
        for value in values:
            try:
                validate(apply_dotted(sweep.base, {key: value}))
            except ConfigError as error:
                problems += [(f"compare.{key}={value}: {k}", m) for k, m in error.problems]
        if spec.compare_by != "mean" and spec.compare_by not in labels:
            close = difflib.get_close_matches(spec.compare_by, ["mean", *labels], n=1)
            problems.append(("compare_by", f"{spec.compare_by!r} is neither mean nor an arm of compare ({', '.join(labels)})"
                             + (f"; did you mean {close[0]!r}?" if close else "")))
        if spec.trade_off:
            problems.append(("compare", "arms are compared on one metric; drop compare or trade_off"))
        if spec.scheduler.fidelity != "seeds":
            problems.append(("scheduler.fidelity", "compare trains every arm on each seed of a configuration: set "
                             "scheduler.fidelity: seeds, with the seeds to pair over (seeds: [0, 1, 2])"))
            return problems
        return problems + [p for p in super().problems(sweep) if p[0] != "scheduler.fidelity"]

    def run_word(self, spec) -> str:
        return "seed and arm"

    def runs_said(self, spec) -> str:
        return f" x {len(arms(spec))} arms ({', '.join(arm_labels(spec))})"

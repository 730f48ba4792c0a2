"""What ``aepg sweep --dry-run`` prints: how many trials, over which keys, and the training
samples they cost (per trial and for the whole sweep, ladders and confirmation included)."""

from __future__ import annotations

from aepg.catalog import SEARCHERS
from aepg.config import validate
from aepg.sweep.checks import variants
from aepg.sweep.fidelity import seeds_per_trial
from aepg.sweep.front import pick_rule
from aepg.sweep.spec import Sweep, apply_dotted, expected_trials


def sweep_plan(sweep: Sweep) -> list[str]:
    """What ``aepg sweep --dry-run`` prints: trials, the space, and the training samples they cost."""
    from aepg import preflight

    spec = sweep.spec
    trials = expected_trials(sweep)
    ladder = spec.scheduler.climbs
    stopping = spec.scheduler.summary()
    lines = [f"sweep {spec.name}: {trials} trials of {spec.search.algorithm} search over {', '.join(sweep.space)}; "
             f"ranked on final/{spec.metric} ({spec.mode}); {stopping}"]
    if spec.trade_off:
        lines.append("a trade-off: the Pareto front of " + ", ".join(f"final/{m} ({mode})" for m, mode in spec.objectives.items())
                     + f", searched as one multi-objective study; best.yaml: {pick_rule(spec.metric, spec.pick or {}, spec.objectives)}")
    if SEARCHERS.get(spec.search.algorithm).has("grid"):
        configs = [sweep.run_config(point, "plan", "plan") for point in sweep.grid()]
        samples = [preflight.plan(cfg).train_samples for cfg in configs]
        total, per_trial = sum(samples), f"{min(samples):,} to {max(samples):,}"
    else:
        samples = [preflight.plan(cfg).train_samples for _, cfg in variants(sweep)]
        samples += [preflight.plan(validate(apply_dotted(sweep.base, {k: v}))).train_samples
                    for k, p in sweep.space.items() if k.startswith("train.") for v in p.extremes()]
        total, per_trial = trials * max(samples), f"up to {max(samples):,}"
    base = preflight.plan(sweep.base_config)
    if ladder:  # a promoted trial also trains every lower level
        from aepg.sweep.fidelity import full_per_class, level_config

        per_class = full_per_class(sweep.base_config) if spec.scheduler.fidelity == "data" else 0
        lows = [preflight.plan(level_config(sweep.base_config, spec.scheduler.fidelity, level, per_class)).train_samples
                for level in spec.scheduler.levels()]
        total = round(total * sum(lows) / lows[-1])
        per_trial += f" training samples at the full budget, and {sum(lows[:-1]):,} on the levels below it"
    else:
        per_trial += " training samples"
    if seeds_per_trial(spec):
        rungs = spec.scheduler.seed_rungs(len(sweep.seeds))
        arms = len(spec.arms())
        per_trial += (f" per seed{' and arm' if arms else ''}, on up to {len(sweep.seeds)} seeds"
                      + (f" x {arms} arms ({', '.join(spec.arm_labels())})" if arms else "")
                      + f" (rungs at {', '.join(map(str, rungs))} seeds)")
        total *= len(sweep.seeds) * max(1, arms)
    lines.append(f"each trial: {len(base.tasks)} tasks; {per_trial}")
    if spec.confirm:
        lines.append(f"then the best {spec.confirm.top_k} configurations again on seeds "
                     f"{', '.join(map(str, spec.confirm.seeds))}")
        total += spec.confirm.top_k * len(spec.confirm.seeds) * max(samples)
    lines.append(f"the whole sweep: at most {total:,} training samples"
                 + (" (early stopping trains fewer)" if spec.scheduler.stops_early else ""))
    return lines

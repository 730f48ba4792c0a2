"""What ``aepg sweep --dry-run`` prints: how many trials, over which keys, and the training
samples they cost (per trial and for the whole sweep, ladders and confirmation included)."""

from __future__ import annotations

from aepg.catalog import PROTOCOLS, SEARCHERS
from aepg.config import validate
from aepg.sweep.checks import variants
from aepg.sweep.front import pick_rule
from aepg.sweep.spec import Sweep, apply_dotted, expected_trials


def sweep_plan(sweep: Sweep) -> list[str]:
    """What ``aepg sweep --dry-run`` prints: trials, the space, and the training samples they cost."""
    from aepg import preflight

    spec, protocol = sweep.spec, sweep.protocol
    trials = expected_trials(sweep)
    lines = [f"sweep {spec.name}: {trials} trials of {spec.search.algorithm} search over {', '.join(sweep.space) or 'nothing'}"
             f" ({PROTOCOLS.display(protocol.kind)} protocol); ranked on final/{spec.metric} ({spec.mode}); "
             f"{spec.scheduler.summary()}"]
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
    per_trial, total = protocol.cost(sweep, per_trial, total)
    lines.append(f"each trial: {len(preflight.plan(sweep.base_config).tasks)} tasks; {per_trial}")
    if spec.confirm:
        lines.append(f"then the best {spec.confirm.top_k} configurations again on seeds "
                     f"{', '.join(map(str, spec.confirm.seeds))}")
        total += spec.confirm.top_k * len(spec.confirm.seeds) * max(samples)
    lines.append(f"the whole sweep: at most {total:,} training samples"
                 + (" (early stopping trains fewer)" if spec.scheduler.stops_early else ""))
    return lines

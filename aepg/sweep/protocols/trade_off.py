"""The trade-off protocol: plain trials (``aepg.sweep.protocols.plain``), ranked on several metrics at
once (``trade_off``): Optuna's multi-objective samplers are told each trial's final values, the
leaderboard marks the Pareto front (and the configurations off it only within seed noise), and
``best.yaml`` is the front's point ``pick`` names (``aepg.sweep.front``)."""

from __future__ import annotations

import statistics
from typing import Literal

from aepg.catalog import PROTOCOLS
from aepg.sweep.protocols.plain import PlainProtocol


@PROTOCOLS.register("trade_off", display="trade-off")
class TradeOffProtocol(PlainProtocol):
    """Plain trials on a trade-off between metrics: the Pareto front, and best.yaml picked on it."""

    kind: Literal["trade_off"] = "trade_off"
    precedence = 10

    @classmethod
    def matches(cls, spec) -> bool:
        return bool(spec.trade_off or spec.pick)

    def problems(self, sweep) -> list[tuple[str, str]]:
        """Optuna searches a trade-off on full-budget values: nothing that ranks on one metric (early
        stopping, a confirmation) comes with it."""
        spec = sweep.spec
        trade_off = spec.trade_off or {}
        problems = []
        if not trade_off:
            problems.append(("pick", "picks a point of a trade-off's front: add trade_off, e.g. {forgetting: min}"))
        if spec.metric in trade_off:
            problems.append((f"trade_off.{spec.metric}", "is the sweep's metric already: list the other metrics"))
        for key in (spec.pick or {}):
            if key not in trade_off:
                problems.append((f"pick.{key}", f"is not a trade-off metric ({', '.join(trade_off) or 'none'})"))
            elif spec.pick[key] < 0:
                problems.append((f"pick.{key}", "a tolerance is 0 or more"))
        if trade_off and spec.scheduler.stops_early:
            problems.append(("scheduler.kind", f"{spec.scheduler.kind} compares trials on one metric; with trade_off, "
                             "use scheduler.kind: none"))
        if trade_off and spec.confirm is not None:
            problems.append(("confirm", "a confirmation ranks on one metric; drop confirm or trade_off"))
        return problems

    def parent_params(self, sweep) -> dict[str, object]:
        import json

        spec = sweep.spec
        return {"trade_off": json.dumps(spec.trade_off or {}), **({"pick": json.dumps(spec.pick)} if spec.pick else {})}

    def best(self, finished, params):
        """Mark the finished configurations on the front (and those off it within noise); the one
        ``best.yaml`` names."""
        from aepg.sweep import front

        metric, *others = params.objectives
        complete = [e for e in finished if all(e.trade_off.get(m) for m in others)]
        values = [{metric: e.by_seed, **e.trade_off} for e in complete]
        for entry, mark in zip(complete, front.front_marks(values, params.objectives)):
            entry.front = mark
        means = [{metric: e.value, **{m: e.mean_of(m) for m in e.trade_off}} for e in complete]
        chosen = front.pick(means, [e.front for e in complete], params.objectives, params.pick)
        return None if chosen is None else complete[chosen]

    def verdict(self, best, entries, params) -> str:
        """The front's configurations (by rank on the leaderboard) and which one best.yaml is, by which rule."""
        from aepg.sweep.front import ON_FRONT, WITHIN_NOISE, pick_rule
        from aepg.sweep.state import compact, short_name

        rank = {id(e): f"#{i}" for i, e in enumerate(entries, 1)}  # a seed group has no trial name of its own
        on = [rank[id(e)] for e in entries if e.front == ON_FRONT]
        near = [rank[id(e)] for e in entries if e.front == WITHIN_NOISE]
        said = (f"Pareto front of {', '.join(f'{m} ({mode})' for m, mode in params.objectives.items())}: "
                f"{', '.join(on) or 'none'}" + (f"; off it only within seed noise: {', '.join(near)}" if near else ""))
        if best is not None:
            settings = ", ".join(f"{short_name(k)} {compact(v)}" for k, v in best.params.items())
            said += f"; best.yaml is {rank[id(best)]} ({settings}), {pick_rule(params.metric, params.pick, params.objectives)}"
        return said

    def figures(self, name, entries, params, best, nested) -> dict:
        """The first two metrics: each configuration (labelled by its rank) at its seed-mean with its
        spread over seeds, the front drawn through its points, coloured by objective, best.yaml's starred."""
        from aepg import plots

        labels = {id(e): f"#{i}" for i, e in enumerate(entries, 1)}
        (x, x_mode), (y, y_mode) = list(params.objectives.items())[:2]
        points = [{"name": labels[id(e)], "x": e.value, "y": e.mean_of(y), "x_std": e.spread,
                   "y_std": statistics.stdev(e.trade_off[y].values()) if len(e.trade_off.get(y, {})) > 1 else None,
                   "mark": e.front, "group": e.objective, "best": e is best}
                  for e in entries if e.status == "finished" and e.value is not None and e.mean_of(y) is not None]
        return {"pareto_front.png": plots.front_plot(points, (x, x_mode), (y, y_mode),
                                                      f"sweep {name}: the trade-off between final/{x} and final/{y}")}

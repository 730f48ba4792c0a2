"""Search efficiency on held-out seeds: each search method is judged by the configuration it
recommends, trained again on five training seeds that no method saw.

Ground truth: every point of GRID (on configs/digits.yaml with BENCHMARK's overrides) trained on
the held-out seeds and on the searches' own seeds, with the trade-off's metrics, cached
(``--cache``). The bench judges no searcher unless the spread between those configurations is at
least twice their seed noise. Then the grid once on seed 0, and each method (searching the grid's
points) with searcher seeds 0, 1, 2: its score is its pick's held-out mean, its compute every
task it trained (seed ladder, pruned seeds and confirmation included); random search gets the
compute the default search used. A trade-off search (``front-*``, sweeps/trade_off.yaml's
metrics) is scored by the hypervolume of its front's held-out means, as a share of the whole
grid's held-out front's.

    python bench/search_efficiency.py [--methods tpe,random,...] [--seeds 0,1,2] [--replay 1000]

Target: the default search's median pick scores at least the grid's with at most half its
compute, and above random search's at the same compute. Three searcher seeds tell two searches
apart only by a wide margin, so the searches without ASHA are also replayed on ``--replay``
searcher seeds at no training cost (the same searcher and scheduler objects, each trial's value
on a seed looked up in the ground truth instead of trained), and "above random" is judged on the
replay's paired 95% interval (with ``--replay 0``, on the medians); every replayed method is
printed against random search at its own compute, a trade-off search against ``front-random``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "digits.yaml"
METRIC = "avg_incremental_accuracy"
TASKS = 2
BENCHMARK = {"benchmark": {"num_tasks": TASKS, "max_train_per_class": 80}, "train": {"epochs": 2, "batch_size": 32},
             "checkpoint": {"every_epochs": 0}, "figures": False}
GRID = {"objective.kind": {"choice": ["ce", "aepg"]},
        "annealing.tau": {"choice": [2.0, 10.0], "when": {"objective.kind": "aepg"}},
        "train.lr": {"choice": [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2]}}
HELD_OUT = [100, 101, 102, 103, 104]
SEARCH_SEEDS = [0, 1, 2, 3, 4]
"""The seeds the searches train on (configs/digits.yaml's seed 0; the confirmation's and the seed
ladder's second seed 1; the signed-rank pruner's five, the fewest it can stop a configuration
on at p 0.1), in the ground truth too so that the searches can be replayed."""
TRADE_OFF = {"last_accuracy": "max", "forgetting": "min"}
"""The trade-off searches' metrics (sweeps/trade_off.yaml's); the ground truth holds them too."""
CLEARLY = 2.0
"""The spread between configurations must be this many times the seed noise for a verdict."""
LADDER = {"seeds": [0, 1], "scheduler": {"kind": "asha", "fidelity": "seeds", "grace_period": 1,
                                            "reduction_factor": 3}}
FRONT = {"metric": "last_accuracy", "trade_off": {"forgetting": "min"}, "scheduler": {"kind": "none"}}
"""A trade-off search's settings: TRADE_OFF as the sweep's metric and its trade-off."""
METHODS = {
    # TPE on seed 0, then its best two trained again on seed 1, which alone ranks them: the winner
    # is not the luckiest draw of the search's seed, and the compute is known in advance.
    "tpe-confirm": {"search": {"algorithm": "tpe", "num_trials": 6, "startup_trials": 3}, "scheduler": {"kind": "none"},
                    "confirm": {"top_k": 2, "seeds": [1]}},
    # TPE whose configurations climb a seed ladder: all on seed 0, the best third on seed 1 too.
    "tpe-seeds": {"search": {"algorithm": "tpe", "num_trials": 6, "startup_trials": 3}, **LADDER},
    # One seed, ASHA over the tasks (trials compared after the first task).
    "tpe-asha-tasks": {"search": {"algorithm": "tpe", "num_trials": 8, "startup_trials": 4},
                       "scheduler": {"kind": "asha", "fidelity": "tasks", "grace_period": 1, "reduction_factor": 3}},
    # One seed per trial, no early stopping, as many trials as fit in the compute the default search used.
    "random": {"search": {"algorithm": "random"}, "scheduler": {"kind": "none"}},
    # sweeps/search.yaml's search: TPE after 4 random trials, 8 trials of one seed, no early stopping.
    "tpe": {"search": {"algorithm": "tpe", "num_trials": 8, "startup_trials": 4}, "scheduler": {"kind": "none"}},
    # Seeds as instances: TPE whose configurations train the five search seeds one by one, each
    # stopped once a signed-rank test over its seeds so far says it is worse than the best finished
    # one (at p 0.1 the test can first stop after 4 seeds, at p 0.2 after 3).
    "tpe-wilcoxon": {"search": {"algorithm": "tpe", "num_trials": 5, "startup_trials": 2}, "seeds": SEARCH_SEEDS,
                     "scheduler": {"kind": "wilcoxon", "p_threshold": 0.1}},
    "tpe-wilcoxon-p0.2": {"search": {"algorithm": "tpe", "num_trials": 5, "startup_trials": 2}, "seeds": SEARCH_SEEDS,
                          "scheduler": {"kind": "wilcoxon", "p_threshold": 0.2}},
    # The trade-off (sweeps/trade_off.yaml's metrics), one seed per trial, at half the grid's
    # compute: judged by the hypervolume of the front each recommends.
    "front-tpe": {"search": {"algorithm": "tpe", "num_trials": 9, "startup_trials": 4}, **FRONT},
    "front-nsga2": {"search": {"algorithm": "nsga2", "num_trials": 9, "population_size": 4}, **FRONT},
    "front-nsga2-pop8": {"search": {"algorithm": "nsga2", "num_trials": 9, "population_size": 8}, **FRONT},
    "front-random": {"search": {"algorithm": "random", "num_trials": 9}, **FRONT},
}
DEFAULT = "tpe"
"""The search the target judges."""
DEFAULT_FRONT, RANDOM_FRONT = "front-tpe", "front-random"
"""The trade-off search sweeps/trade_off.yaml runs, and the one the others are measured against."""
MATCHED = ("random",)
"""The methods given the compute the default search used with the same searcher seed."""


def sweep_file(folder: Path, name: str, search: dict, scheduler: dict, **more) -> Path:
    spec = {"name": name, "base_config": str(BASE), "base_overrides": BENCHMARK, "space": GRID,
            "search": {"max_concurrent": 2, **search}, "scheduler": scheduler, "metric": METRIC, "mode": "max",
            **more, "storage_path": str(folder / "sweeps"), "trial": {"cpus": 1, "max_failures": 0}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(path: Path):
    """The sweep's report (leaderboard entries, best configuration first)."""
    from aepg.sweep.checks import load_sweep
    from aepg.sweep.driver import finalize, run_sweep

    runtime, complete = run_sweep(load_sweep(path))
    if not complete:
        raise KeyboardInterrupt
    return finalize(runtime)


def point(params: dict) -> str:
    """A configuration's name in the ground truth."""
    return json.dumps(params, sort_keys=True)


def cache_key() -> str:
    """What the ground truth depends on: the benchmark, the grid, its seeds and metrics."""
    text = json.dumps([BASE.read_text(), BENCHMARK, GRID, HELD_OUT, SEARCH_SEEDS, TRADE_OFF], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


Truth = dict[str, dict[str, dict[int, float]]]
"""Each grid point's final value of each metric on each seed."""


def ground_truth(folder: Path, cache: Path) -> Truth:
    """Every grid point's final metrics on each held-out and search seed, from the cache when it matches."""
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == cache_key():
            print(f"ground truth: {len(saved['truth'])} configurations from {cache}", flush=True)
            return {p: {m: {int(s): v for s, v in by_seed.items()} for m, by_seed in metrics.items()}
                    for p, metrics in saved["truth"].items()}
        print(f"ground truth: {cache} is for another benchmark; training it again", flush=True)
    began = time.perf_counter()
    others = {m: mode for m, mode in TRADE_OFF.items() if m != METRIC}
    report = run(sweep_file(folder, "truth", {"algorithm": "grid"}, {"kind": "none"},
                            seeds=SEARCH_SEEDS + HELD_OUT, trade_off=others))
    truth = {point(e.params): {METRIC: e.by_seed, **e.trade_off}
             for e in report.entries if e.status == "finished"}
    missing = [e.name for e in report.entries
               if e.status != "finished" or len(e.by_seed) < len(SEARCH_SEEDS + HELD_OUT)]
    if missing:
        sys.exit(f"search_efficiency: ground-truth trials {', '.join(missing)} did not finish; see their errors above")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": cache_key(), "truth": truth}, indent=1))
    print(f"ground truth: {len(truth)} configurations x {len(SEARCH_SEEDS + HELD_OUT)} seeds in "
          f"{(time.perf_counter() - began) / 60:.1f} min, cached in {cache}", flush=True)
    return truth


def on_seeds(truth: Truth, seeds: list[int], metric: str = METRIC) -> dict[str, dict[int, float]]:
    """One metric of the ground truth on some of its seeds."""
    return {p: {seed: metrics[metric][seed] for seed in seeds} for p, metrics in truth.items()}


def separable(held_out: dict[str, dict[int, float]]) -> tuple[bool, str]:
    """Whether the grid's configurations spread clearly above the seed noise, and the figures."""
    from aepg.sweep.noise import assess

    ranked = sorted(held_out.values(), key=lambda by_seed: statistics.mean(by_seed.values()), reverse=True)
    noise = assess(ranked)
    ratio = noise.spread / noise.seed_std
    line = (f"held-out seeds: seed noise {noise.seed_std:.4f}, spread between the {len(ranked)} configurations "
            f"{noise.spread:.4f} ({ratio:.1f}x the noise); best mean {statistics.mean(ranked[0].values()):.4f}, "
            f"{sum(noise.tied)} configurations tied with it within noise")
    return ratio >= CLEARLY, line


class Judge:
    """Scores recommendations on the ground truth: a pick by its held-out mean, a front by the
    hypervolume of its configurations' held-out means (TRADE_OFF's metrics), as a share of the
    hypervolume of the whole grid's held-out front, both up to the grid's worst held-out means."""

    def __init__(self, truth: Truth):
        self.truth = on_seeds(truth, HELD_OUT)
        self.best = max(statistics.mean(v.values()) for v in self.truth.values())
        self.means = {p: {m: statistics.mean(on_seeds(truth, HELD_OUT, m)[p].values()) for m in TRADE_OFF}
                      for p in truth}
        self.reference = {m: (min if mode == "max" else max)(v[m] for v in self.means.values())
                          for m, mode in TRADE_OFF.items()}
        self.best_area = self.area(self.means)

    def pick(self, params: dict, compute: float) -> Pick:
        return Pick(point(params), name_of(params), statistics.mean(self.truth[point(params)].values()), compute)

    def area(self, points) -> float:
        """The area the configurations' held-out means dominate, up to the reference (the grid's worst)."""
        (first, first_mode), (second, second_mode) = TRADE_OFF.items()
        gains = sorted(((self.means[p][first] - self.reference[first]) * (1 if first_mode == "max" else -1),
                        (self.means[p][second] - self.reference[second]) * (1 if second_mode == "max" else -1))
                       for p in points)
        area, height = 0.0, 0.0
        for width, gain in reversed(gains):  # widest first: each adds the strip above the ones before
            if gain > height:
                area, height = area + width * (gain - height), gain
        return area

    def front(self, points: list[str], compute: float) -> Front:
        return Front(tuple(sorted(points)), self.area(points) / self.best_area, compute)

    def tied(self, a: Pick, b: Pick) -> bool:
        """Whether the held-out seeds cannot tell two picks apart (paired 95% interval over them)."""
        from aepg.sweep.noise import difference_interval

        if a.point == b.point:
            return True
        difference, half = difference_interval(self.truth[a.point], self.truth[b.point], None, 0)
        return abs(difference) <= half


def name_of(params: dict) -> str:
    return " ".join(f"{key.split('.')[-1]}={value}" for key, value in sorted(params.items()))


@dataclass(frozen=True)
class Pick:
    """What one search recommends: its configuration, held-out score and the compute it spent."""
    point: str
    name: str
    score: float
    compute: float


@dataclass(frozen=True)
class Front:
    """What one trade-off search recommends: its front's configurations, their held-out
    hypervolume as a share of the best front's (``score``), and the compute it spent."""
    points: tuple[str, ...]
    score: float
    compute: float


def trade_off(method: str) -> bool:
    return "trade_off" in METHODS[method]


def method_settings(method: str, seed: int, budget: float) -> dict:
    """A method's sweep settings at one searcher seed; the matched methods get ``budget`` tasks of compute."""
    settings = {**METHODS[method], "search": {**METHODS[method]["search"], "seed": seed}}
    if method in MATCHED:
        settings["search"]["num_trials"] = max(1, round(budget / TASKS))
    return settings


def method_file(folder: Path, name: str, settings: dict) -> Path:
    return sweep_file(folder, name, settings["search"], settings["scheduler"],
                      **{k: v for k, v in settings.items() if k not in ("search", "scheduler")})


def search(folder: Path, judge: Judge, name: str, settings: dict) -> Pick | Front:
    report = run(method_file(folder, name, settings))
    compute = sum(e.compute for e in report.entries)
    if "trade_off" in settings:
        return judge.front([point(e.params) for e in report.entries if e.front == "front"], compute)
    if report.best is None:
        sys.exit(f"search_efficiency: no trial of {name} finished; see the trials' errors above")
    return judge.pick(report.best.params, compute)


class Replay:
    """A search again at no training cost: the method's own searcher (``aepg.sweep.search``) proposes
    the trials and its own scheduler stops them, each trial's value on a seed is the ground truth's,
    and every seed takes a trial the same time, so trials end in the order they started,
    ``max_concurrent`` at a time, as equally long trials would."""

    def __init__(self, folder: Path, judge: Judge, truth: Truth):
        self.folder, self.judge, self.truth = folder, judge, truth
        self.loaded = {}

    def sweep(self, method: str, settings: dict):
        """The method's sweep at the settings' searcher seed; loaded and checked once for all seeds."""
        import copy

        from aepg.sweep.checks import load_sweep

        search = dict(settings["search"])
        seed = search.pop("seed")
        key = json.dumps([method, {**settings, "search": search}], sort_keys=True)
        if key not in self.loaded:
            self.loaded[key] = load_sweep(method_file(self.folder, f"replay-{method}", settings))
        sweep = copy.copy(self.loaded[key])
        sweep.spec = sweep.spec.model_copy(update={"search": sweep.spec.search.model_copy(update={"seed": seed})})
        return sweep

    def trials(self, sweep) -> tuple[dict[str, dict[str, dict[int, float]]], int]:
        """The configurations that trained every seed (each metric on each seed), and the tasks trained."""
        import heapq

        from aepg.schema import partial_name
        from aepg.sweep.search import budget, optuna_search, scheduler, searched_metric

        _, searcher, num_trials = optuna_search(sweep)
        stopper = scheduler(sweep) if sweep.spec.scheduler.kind == "wilcoxon" else None  # the signed-rank pruner
        key, full = budget(sweep)
        objectives, metric = sweep.spec.objectives, sweep.spec.metric
        seeds = sweep.seeds if sweep.protocol.unit == "seed" else sweep.seeds[:1]
        done, events, started, tasks = {}, [], 0, 0

        def start(now: int) -> None:
            nonlocal started
            if started < num_trials:
                params = searcher.suggest(str(started))
                heapq.heappush(events, (now + 1, started, point(params), 1))
                started += 1

        for _ in range(sweep.spec.search.max_concurrent):
            start(0)
        while events:
            now, number, at, trained = heapq.heappop(events)
            tasks += TASKS
            values = {m: {seed: self.truth[at][m][seed] for seed in seeds[:trained]} for m in objectives}
            if trained < len(seeds) and not (stopper is not None and stopper.worse(values[metric])):
                heapq.heappush(events, (now + 1, number, at, trained + 1))
                continue
            if len(objectives) == 1:
                result = {searched_metric(sweep): statistics.mean(values[metric].values())}
            else:
                result = {partial_name(m): statistics.mean(values[m].values()) for m in objectives}
            searcher.on_trial_complete(str(number), {**result, key: full if trained == len(seeds) else trained})
            if trained == len(seeds):
                done[at] = values
                if stopper is not None:
                    stopper.finished[str(number)] = values[metric]
            start(now)
        return done, tasks

    def __call__(self, method: str, settings: dict) -> Pick | Front:
        from aepg.sweep.front import ON_FRONT, front_marks

        sweep = self.sweep(method, settings)
        done, compute = self.trials(sweep)
        if trade_off(method):
            marks = front_marks(list(done.values()), sweep.spec.objectives)
            return self.judge.front([p for p, mark in zip(done, marks) if mark == ON_FRONT], compute)
        metric = sweep.spec.metric
        ranked = sorted(done, key=lambda p: statistics.mean(done[p][metric].values()), reverse=True)
        if sweep.spec.confirm is not None:  # the best few on the confirmation's seeds, which alone rank them
            seeds = sweep.spec.confirm.seeds
            ranked = sorted(ranked[: sweep.spec.confirm.top_k], reverse=True,
                            key=lambda p: statistics.mean(self.truth[p][metric][seed] for seed in seeds))
            compute += len(ranked) * len(seeds) * TASKS
        return self.judge.pick(json.loads(ranked[0]), compute)


def replayable(method: str) -> bool:
    """Whether a replay models the method: where no trial's fate depends on timing (no ASHA)."""
    return METHODS[method]["scheduler"]["kind"] in ("none", "wilcoxon")


def grid_front(judge: Judge, truth: Truth) -> Front:
    """The front a trade-off grid on seed 0 recommends (its trials are the ground truth's on seed 0)."""
    from aepg.sweep.front import ON_FRONT, front_marks

    values = {p: {m: {0: metrics[m][0]} for m in TRADE_OFF} for p, metrics in truth.items()}
    marks = front_marks(list(values.values()), TRADE_OFF)
    return judge.front([p for p, mark in zip(values, marks) if mark == ON_FRONT], len(truth) * TASKS)


def replay(replayer: Replay, methods: list[str], count: int, grid: Pick, real: dict[str, list[Pick]],
           real_seeds: list[int]) -> dict[str, Versus]:
    """Each replayable method on searcher seeds 0 .. count-1: the mean of its picks' held-out scores
    (a front's: its hypervolume share), how often it picks the best configuration, how often the
    replay picks what the real search picked, and its picks minus random search's at the same
    compute (random given each pick's compute on the same searcher seed; a trade-off search against
    RANDOM_FRONT)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    methods = [m for m in methods if replayable(m)]
    picks: dict[str, list[Pick | Front]] = {m: [] for m in methods}
    random: dict[str, list[Pick]] = {m: [] for m in methods if not trade_off(m) and m not in MATCHED}
    for seed in range(count):
        for method in methods:
            matched = method in MATCHED and DEFAULT in picks  # as the real search: the default's compute
            spent = picks[DEFAULT][seed].compute if matched else grid.compute / 2
            picks[method].append(replayer(method, method_settings(method, seed, spent)))
            if method in random:
                random[method].append(replayer("random", method_settings("random", seed, picks[method][-1].compute)))
    print(f"\nreplay on searcher seeds 0-{count - 1}, each trial's value the ground truth's on its seeds:")
    print(f"{'method':<18} {'mean held-out':>14} {'picks the best':>15} {'mean compute / grid':>20} "
          f"{'as the real search':>19}")
    for method, found in picks.items():
        agree = [found[seed] == real_pick for seed, real_pick in zip(real_seeds, real.get(method, [])) if seed < count]
        best = sum(p.score == (1.0 if trade_off(method) else replayer.judge.best) for p in found)
        print(f"{method:<18} {statistics.mean(p.score for p in found):>14.4f} {best / count:>15.2f} "
              f"{statistics.mean(p.compute for p in found) / grid.compute:>20.2f} "
              f"{f'{sum(agree)} of {len(agree)}' if agree else '-':>19}")
    versus = {m: Versus.of(picks[m], random[m]) for m in random}
    versus.update({m: Versus.of(picks[m], picks[RANDOM_FRONT]) for m in picks
                   if trade_off(m) and m != RANDOM_FRONT and RANDOM_FRONT in picks})
    for method, against in versus.items():
        odds = (f"; the target's held-out comparisons hold for it in "
                f"{median_odds(picks[method], random[method], grid):.2f} of the draws of three searcher seeds"
                if method == DEFAULT else "")
        print(f"replay: {method} minus {'front-random' if trade_off(method) else 'random'} at the same compute "
              f"{against}{odds}")
    return versus


@dataclass(frozen=True)
class Versus:
    """One method's picks minus random search's, paired by searcher seed: the mean difference of
    their held-out scores and its 95% interval's half-width."""
    mean: float
    half: float
    seeds: int

    @classmethod
    def of(cls, ours: list[Pick], theirs: list[Pick]) -> Versus:
        differences = [a.score - b.score for a, b in zip(ours, theirs)]
        return cls(statistics.mean(differences), 1.96 * statistics.stdev(differences) / len(differences) ** 0.5,
                   len(differences))

    @property
    def above(self) -> bool:
        return self.mean - self.half > 0

    def __str__(self) -> str:
        side = "above" if self.above else "below" if self.mean + self.half < 0 else "not told apart from"
        return f"{self.mean:+.4f} +- {self.half:.4f} (95%, {self.seeds} searcher seeds): {side} random's"


def median_odds(ours: list[Pick], theirs: list[Pick], grid: Pick, draws: int = 10000) -> float:
    """The share of draws of three searcher seeds in which a method's median pick scores at least the
    grid's and above random's median pick."""
    import random

    draw, held = random.Random(0), 0
    for _ in range(draws):
        seeds = draw.choices(range(len(ours)), k=3)
        mine, others = (statistics.median(picks[i].score for i in seeds) for picks in (ours, theirs))
        held += mine >= grid.score and mine > others
    return held / draws


def median_pick(picks: list[Pick]) -> Pick:
    """The pick with the median held-out score (the lower middle for an even count)."""
    return sorted(picks, key=lambda p: p.score)[(len(picks) - 1) // 2]


def search_efficiency(folder: Path, cache: Path, methods: list[str], seeds: list[int], replays: int) -> None:
    start = time.perf_counter()
    truth = ground_truth(folder, cache)
    judge = Judge(truth)
    clear, line = separable(judge.truth)
    print(line, flush=True)
    if not clear:
        print(f"verdict: not judged: the spread between configurations is below {CLEARLY:g}x the seed noise, so "
              "any ranking of searchers on this benchmark would be luck")
        return
    began = time.perf_counter()
    grid = search(folder, judge, "grid", {"search": {"algorithm": "grid"}, "scheduler": {"kind": "none"}})
    results = {"grid": [grid]}
    minutes = {"grid": (time.perf_counter() - began) / 60}
    print(f"grid: recommends {grid.name}, held-out {grid.score:.4f}, compute {grid.compute:.0f} tasks", flush=True)
    for method in methods:
        began, results[method] = time.perf_counter(), []
        for seed in seeds:
            spent = dict(zip(seeds, (p.compute for p in results.get(DEFAULT, []))))
            settings = method_settings(method, seed, spent.get(seed, grid.compute / 2))
            found = search(folder, judge, f"{method}-s{seed}", settings)
            results[method].append(found)
            shown = (f"a front of {len(found.points)}, hypervolume {found.score:.4f} of the best front's"
                     if trade_off(method) else f"{found.name}, held-out {found.score:.4f}")
            print(f"{method} seed {seed}: recommends {shown}, compute {found.compute:.0f} tasks", flush=True)
        minutes[method] = (time.perf_counter() - began) / 60
    print(f"\n{'method':<18} {'searcher seeds':>14} {'median held-out':>16} {'regret':>8} "
          f"{'median compute / grid':>22} {'minutes':>8}")
    medians = {}
    for method, picks in results.items():
        if method != "grid" and trade_off(method):
            continue
        medians[method] = median_pick(picks), statistics.median(p.compute for p in picks)
        score = medians[method][0].score
        print(f"{method:<18} {len(picks):>14} {score:>16.4f} {judge.best - score:>8.4f} "
              f"{medians[method][1] / grid.compute:>22.2f} {minutes[method]:>8.1f}")
    print(f"\nbest held-out mean in the grid {judge.best:.4f}")
    print(reading(judge, medians))
    fronts = {"grid (seed 0)": grid_front(judge, truth),
              **{m: median_pick(results[m]) for m in methods if trade_off(m)}}
    print(f"\ntrade-off {' against '.join(TRADE_OFF)}: hypervolume of the recommended front's held-out means, as a "
          f"share of the whole grid's held-out front's (reference: the grid's worst held-out means)")
    print(f"{'method':<18} {'median share':>13} {'median compute / grid':>22}")
    for method, front in fronts.items():
        compute = statistics.median(p.compute for p in results.get(method, [front]))
        print(f"{method:<18} {front.score:>13.4f} {compute / grid.compute:>22.2f}")
    versus = replay(Replay(folder, judge, truth), methods, replays, grid, results, seeds) if replays else {}
    print(f"target ({DEFAULT}: median held-out at least the grid's {grid.score:.4f} with at most half its compute, "
          f"and above random's at the same compute{' in the replay' if DEFAULT in versus else ''}): "
          f"{verdict(medians, grid.compute, judge.best, versus.get(DEFAULT))}")
    print(f"took {(time.perf_counter() - start) / 60:.1f} min")


def verdict(medians: dict[str, tuple[Pick, float]], grid_compute: float, best: float,
            versus: Versus | None) -> str:
    """Whether the target is met; "above random" on the replay (``versus``) when there is one, else on the medians."""
    if DEFAULT not in medians:
        return f"not judged: {DEFAULT} was not among the methods"
    pick, compute = medians[DEFAULT]
    misses = []
    if pick.score < medians["grid"][0].score:
        misses.append(f"held-out {pick.score:.4f} below the grid's")
    if compute > grid_compute / 2:
        misses.append(f"{compute / grid_compute:.2f} of the grid's compute")
    if versus is not None:
        if not versus.above:
            misses.append(f"in the replay, minus random's {versus}")
    elif "random" not in medians:
        misses.append("random was not among the methods")
    elif pick.score <= medians["random"][0].score:
        theirs = medians["random"][0].score
        misses.append(f"not above random's {theirs:.4f}" + (", the grid's best held-out score: no pick can be above it"
                                                            if theirs >= best else ""))
    return "missed: " + "; ".join(misses) if misses else (
        f"met: held-out {pick.score:.4f} with {compute / grid_compute:.2f} of the grid's compute"
        + (f"; minus random's in the replay {versus.mean:+.4f} +- {versus.half:.4f}" if versus else ""))


def reading(judge: Judge, medians: dict[str, tuple[Pick, float]]) -> str:
    """Which of the verdict's comparisons the held-out seeds can make: two picks tied on them
    (the same configuration, or a paired interval that holds zero) differ by luck alone."""
    if DEFAULT not in medians:
        return ""
    pick = medians[DEFAULT][0]
    lines = []
    for other in ("grid", "random"):
        if other in medians:
            theirs = medians[other][0]
            same = "the same configuration" if theirs.point == pick.point else (
                "tied within the held-out noise" if judge.tied(pick, theirs) else "told apart by the held-out seeds")
            lines.append(f"{other}'s median pick ({theirs.name}, {theirs.score:.4f}) and {DEFAULT}'s "
                         f"({pick.name}, {pick.score:.4f}): {same}")
    return "reading: " + "; ".join(lines)


def seed_list(text: str) -> list[int]:
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m not in ("tpe-seeds", "tpe-asha-tasks")),
                        help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--seeds", default="0,1,2", type=seed_list, help="comma-separated searcher seeds")
    parser.add_argument("--cache", default=str(REPO / "bench" / ".cache" / "search_efficiency.json"), type=Path,
                        help="where the ground truth is kept between runs")
    parser.add_argument("--replay", default=1000, type=int, help="searcher seeds to replay the searches on (0: none)")
    args = parser.parse_args()
    if args.replay < 0 or args.replay == 1:
        parser.error(f"--replay {args.replay}: give 0 (no replay) or at least 2 searcher seeds")
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose among {sorted(METHODS)}")
    methods = sorted(methods, key=lambda m: m in MATCHED)  # these take the ladder's compute, so run after it
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from aepg.config import ConfigError

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        try:
            search_efficiency(Path(tmp), args.cache, methods, args.seeds, args.replay)
        except ConfigError as error:
            sys.exit(f"search_efficiency: {error}")
        except KeyboardInterrupt:
            sys.exit("search_efficiency: interrupted")


if __name__ == "__main__":
    main()

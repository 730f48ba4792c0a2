"""The paper's table, from one or more sweeps: rows by a key (the PEFT method by default),
columns by another (the objective), each cell the last and average incremental accuracy as
mean +- std over seeds, and each column's paired difference to the baseline column (cross-
entropy) with a 95% confidence interval over seeds (Student's t on the per-seed differences).

Trials that differ only by seed are grouped; only trials that trained every task count. When
a cell holds several configurations (a search over more keys than the table's two), it shows
the one with the best mean of the sweep's metric, marked "best of k", and a difference pairs it
with the baseline configuration that differs from it by the column key alone. Cells say their
number of seeds; with one seed there is no std or interval to give, and the note says so. With
several sweeps (e.g. one per benchmark) the columns are grouped by benchmark.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import statistics
from dataclasses import dataclass, field

from aepg.catalog import METHODS, OBJECTIVES, PARTS
from aepg.config import ConfigError, logged_param
from aepg.schema import COMMIT_TAG, VERSION_TAG, final_name, one_seed_name
from aepg.sweep.noise import paired_difference

METRICS = ("last_accuracy", "avg_incremental_accuracy")
SHORT = {"last_accuracy": "last", "avg_incremental_accuracy": "avg inc"}


def method(params: dict[str, str]) -> str:
    """The paper's row label: the method with its rate where it is a slow learner, LAE around it (LAE
    over LoRA is the paper's "LAE") and its other parts after it ("LoRA + LwF"); runs logged under
    earlier names read as today's (``logged_param``)."""
    name = METHODS.display(logged_param(params, "model.method.kind") or "?")
    scale = logged_param(params, "model.method.lr_scale")
    if scale not in (None, "None"):
        name += f" (rate x{float(scale):g})"
    parts = [PARTS.display(part.name) for part in PARTS.entries()
             if part.name != "lae" and logged_param(params, f"model.method.parts.{part.name}.enabled") == "True"]
    if logged_param(params, "model.method.parts.lae.enabled") == "True":
        name = "LAE" if name == "LoRA" else f"LAE ({name})"
    return " + ".join([name, *parts])


def label(key: str, params: dict[str, str]) -> str:
    if key == "method":
        return method(params)
    value = logged_param(params, key)
    value = "-" if value is None else value
    return OBJECTIVES.display(value) if key == "objective.kind" else value


def markdown_grid(header: list[str], body: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(line) + " |" for line in body])


@dataclass
class Cell:
    """Per-seed values of each metric, for one (group, row, column)."""

    by_seed: dict[str, dict[int, float]] = field(default_factory=lambda: {m: {} for m in METRICS})
    runs: dict[int, str] = field(default_factory=dict)
    """The run behind each seed's values (its ``manifest.json`` says what made them)."""

    def stats(self, metric: str) -> tuple[float, float | None, int]:
        values = list(self.by_seed[metric].values())
        return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def paired(a: Cell, b: Cell, metric: str) -> tuple[float, float | None, int] | None:
    """Mean of b - a over the seeds both have, and the half width of its 95% confidence interval."""
    seeds = sorted(set(a.by_seed[metric]) & set(b.by_seed[metric]))
    if not seeds:
        return None
    mean, half = paired_difference([b.by_seed[metric][s] - a.by_seed[metric][s] for s in seeds])
    return mean, half, len(seeds)


@dataclass
class PaperTable:
    groups: list[str]
    rows: list[str]
    columns: list[str]
    baseline: str | None
    cells: dict[tuple[str, str, str], Cell]
    rows_key: str
    columns_key: str
    choices: dict[tuple[str, str, str], int] = field(default_factory=dict)
    """How many configurations each cell chose its one from."""
    rank_metric: str = "last_accuracy"
    options: dict[tuple[str, str, str], dict[tuple, Cell]] = field(default_factory=dict)
    """Every configuration of each cell (the cell shows the best), for pairing differences."""
    provenance: dict[str, list[str]] = field(default_factory=dict)
    """What the numbers come from (backbone checkpoint, class order, split): each value the runs used."""

    def pair(self, group: str, row: str, column: str) -> tuple[Cell, Cell] | None:
        """The column's shown configuration and the baseline configuration that differs from it by
        the compared key alone (the best such), or None when the baseline has none."""
        shown = self.cells.get((group, row, column))
        configs = self.options.get((group, row, column), {})
        config = next((c for c, cell in configs.items() if cell is shown), None)
        if config is None:  # a table built from cells alone
            base = self.cells.get((group, row, self.baseline))
            return (base, shown) if base and shown else None
        matching = [cell for c, cell in self.options.get((group, row, self.baseline), {}).items()
                    if differ_only_by(c, config, self.columns_key)]
        if not matching:
            return None
        metric = self.rank_metric
        return max(matching, key=lambda cell: cell.stats(metric)[0] if cell.by_seed[metric] else -math.inf), shown

    @property
    def most_seeds(self) -> int:
        return max((len(cell.by_seed[m]) for cell in self.cells.values() for m in METRICS), default=0)

    def differences(self) -> list[str]:
        return [c for c in self.columns if self.baseline and c != self.baseline]

    def _header(self, group: str) -> str:
        return f"{group} " if len(self.groups) > 1 else ""

    def records(self) -> list[dict[str, object]]:
        """One record per (group, row, column or difference, metric): the long form the CSV holds."""
        out = []
        for group in self.groups:
            for row in self.rows:
                for column in self.columns:
                    cell = self.cells.get((group, row, column))
                    for metric in METRICS if cell else ():
                        if not cell.by_seed[metric]:
                            continue
                        mean, std, n = cell.stats(metric)
                        out.append({"group": group, "row": row, "column": column, "metric": metric, "mean": mean,
                                    "std": std, "ci95_half_width": None, "seeds": n,
                                    "runs": " ".join(cell.runs[seed] for seed in sorted(cell.by_seed[metric]))})
                for column in self.differences():
                    pair = self.pair(group, row, column)
                    for metric in METRICS if pair else ():
                        result = paired(*pair, metric)
                        if result:
                            out.append({"group": group, "row": row, "column": f"{column} - {self.baseline}",
                                        "metric": metric, "mean": result[0], "std": None, "ci95_half_width": result[1],
                                        "seeds": result[2], "runs": ""})
        return out

    def _value(self, group, row, column, metric, latex=False) -> str:
        cell = self.cells.get((group, row, column))
        if not cell or not cell.by_seed[metric]:
            return "-"
        mean, std, n = cell.stats(metric)
        pm = r" $\pm$ " if latex else " ± "
        text = f"{100 * mean:.1f}" + (f"{pm}{100 * std:.1f}" if std is not None else "")
        if self.most_seeds > 1:
            text += f", n={n}"
        choices = self.choices.get((group, row, column), 1)
        return text + (f", best of {choices}" if choices > 1 else "")

    def _difference(self, group, row, column, metric, latex=False) -> str:
        pair = self.pair(group, row, column)
        result = paired(*pair, metric) if pair else None
        if not result:
            return "-"
        mean, half, _ = result
        text = f"{100 * mean:+.1f}"
        if half is not None:
            low, high = mean - half, mean + half
            verdict = f"{column} higher" if low > 0 else f"{self.baseline} higher" if high < 0 else "not separated"
            text += f" [{100 * low:+.1f}, {100 * high:+.1f}], {verdict}"
        return text.replace("-", "$-$") if latex else text

    def _grid(self, latex=False) -> tuple[list[str], list[list[str]]]:
        header = [self.rows_key]
        for group in self.groups:
            header += [f"{self._header(group)}{c} {SHORT[m]}" for c in self.columns for m in METRICS]
            header += [f"{self._header(group)}{c} - {self.baseline} {SHORT[m]}" for c in self.differences() for m in METRICS]
        body = []
        for row in self.rows:
            line = [row]
            for group in self.groups:
                line += [self._value(group, row, c, m, latex) for c in self.columns for m in METRICS]
                line += [self._difference(group, row, c, m, latex) for c in self.differences() for m in METRICS]
            body.append(line)
        return header, body

    def markdown(self) -> str:
        header, body = self._grid()
        return markdown_grid(header, body) + "\n\n" + self.note() + "\n\n" + self.manifests()

    def manifests(self) -> str:
        """Where each cell's numbers came from: its runs, seed by seed, whose ``manifest.json``
        artifacts hold the versions, entries, device, data digest and resolved config."""
        lines = []
        for (group, row, column), cell in self.cells.items():
            if cell.runs:
                where = f"{self._header(group)}{row} / {column}"
                lines.append(f"- {where}: " + ", ".join(f"seed {seed} {run}" for seed, run in sorted(cell.runs.items())))
        return "Manifests (manifest.json of each run, by seed):\n" + "\n".join(lines) if lines else ""

    def note(self) -> str:
        """What the cells hold, saying only what this table has (no spread or interval from one seed)."""
        baseline = f" to {self.baseline}" if self.baseline else ""
        if self.most_seeds > 1:
            note = ("Accuracy in %, mean ± std over n seeds (final values of trials that trained every task). "
                    f"Differences{baseline}: paired over the seeds both have, mean [95% confidence interval], and "
                    "which is higher where the interval excludes zero (not corrected for the table's several "
                    "comparisons).")
        else:
            note = ("Accuracy in %, one seed per cell (final values of trials that trained every task): no spread "
                    f"or interval can be given. Differences{baseline}: one seed, no interval.")
        if self.baseline:
            note += (f" Each difference compares a column's configuration with the {self.baseline} configuration "
                     f"that differs from it by {self.columns_key} alone ('-' where there is none).")
        if any(n > 1 for n in self.choices.values()):
            note += f" 'best of k': the best of k configurations by mean final/{self.rank_metric}."
        if self.provenance:
            note += " Runs: " + "; ".join(f"{what} {', '.join(values)}" for what, values in self.provenance.items()) + "."
        return note

    def latex(self) -> str:
        header, body = self._grid(latex=True)
        spec = "l" + "c" * (len(header) - 1)
        lines = [r"\begin{tabular}{" + spec + "}", r"\toprule", " & ".join(h.replace("_", r"\_") for h in header) + r" \\",
                 r"\midrule"]
        lines += [" & ".join(line) + r" \\" for line in body]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines)

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["group", "row", "column", "metric", "mean", "std", "ci95_half_width", "seeds",
                                                    "runs"])
        writer.writeheader()
        writer.writerows(self.records())
        return buffer.getvalue()


def configuration(params: dict[str, str]) -> tuple:
    """What a trial ran, seed aside (its active params without the seed)."""
    return tuple(sorted((k, v) for k, v in params.items() if k != "seed"))


def differ_only_by(a: tuple, b: tuple, key: str) -> bool:
    """Whether two configurations agree on everything but ``key``: keys both have are equal, and a
    key only one has belongs to what ``key`` switches (its own section; the annealing, for the objective)."""
    first, second = dict(a), dict(b)
    switched = (key.rsplit(".", 1)[0] + ".",) + (("annealing.",) if key == "objective.kind" else ())
    for name in (set(first) | set(second)) - {key}:
        if name in first and name in second:
            if first[name] != second[name]:
                return False
        elif not name.startswith(switched):
            return False
    return True


PROVENANCE = {"model.backbone": "backbone", "model.weights": "weights", "benchmark.order_seed": "class order seed",
              "benchmark.dataset.split_seed": "split seed"}
"""The params a footnote names, so that a number can be traced to its checkpoint, class order and
split (read under their earlier names too)."""


def provenance(runs: list) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for run in runs:
        made_with = {"aepg": made_by(run.tags), **{what: logged_param(run.params, key) for key, what in PROVENANCE.items()}}
        if made_with["class order seed"] == "None":  # benchmark.order_seed: null, the order follows the seed
            made_with["class order seed"] = "each run's seed"
        for what, value in made_with.items():
            if value is not None and value not in found.setdefault(what, []):
                found[what].append(value)
    return {what: values for what, values in found.items() if values}


def made_by(tags: dict[str, str]) -> str | None:
    """aepg's version and commit, as the run's tags have them (None for runs from before they were tagged)."""
    version = tags.get(VERSION_TAG)
    return None if version is None else f"{version} at {tags.get(COMMIT_TAG, 'unknown')}"


def row_order() -> list[str]:
    """Rows in the catalogue's order, LAE right after LoRA, then the objectives."""
    methods = [e.display for e in METHODS.entries()]
    after_lora = methods.index("LoRA") + 1
    return [*methods[:after_lora], "LAE", *methods[after_lora:], *(e.display for e in OBJECTIVES.entries())]


def check_keys(sweeps: list[tuple[str, list]], keys: dict[str, str]) -> None:
    """ConfigError, with a "did you mean", for each of ``keys`` (option: key) that no run has as a param."""
    known = {"method", *(key for _, runs in sweeps for run in runs for key in run.params)}
    if len(known) == 1:  # no finished run: nothing to check against
        return
    problems = []
    for option, key in keys.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; give 'method' or a config key, e.g. model.method.rank"
            problems.append((option, f"no finished run of the sweep has the key {key!r}{hint}"))
    if problems:
        raise ConfigError(problems)


def build_table(sweeps: list[tuple[str, list]], rows_key: str = "method", columns_key: str = "objective.kind",
                baseline: str = "CE", rank_metric: str = "last_accuracy", mode: str = "max") -> PaperTable:
    """The table over ``sweeps``: (group label, finished child runs) pairs; a key that none of the runs
    has is refused (it would pool every run into one row)."""
    check_keys(sweeps, {"--rows": rows_key, "--columns": columns_key})
    candidates: dict[tuple[str, str, str], dict[tuple, Cell]] = {}
    rows, columns = [], []
    for group, runs in sweeps:
        for run in runs:
            row, column = label(rows_key, run.params), label(columns_key, run.params)
            seed = int(run.params.get("seed", 0))
            cell = candidates.setdefault((group, row, column), {}).setdefault(configuration(run.params), Cell())
            for metric in METRICS:  # a run's own value: final/, or seed_run/ on one seed of a sweep's configuration
                value = run.metrics.get(final_name(metric), run.metrics.get(one_seed_name(metric)))
                if value is not None:
                    cell.by_seed[metric][seed] = value
                    cell.runs[seed] = run.run_id
            rows += [row] if row not in rows else []
            columns += [column] if column not in columns else []
    metric = rank_metric if rank_metric in METRICS else METRICS[0]
    sign = 1 if mode == "max" else -1
    cells = {key: max(options.values(), key=lambda c: sign * c.stats(metric)[0] if c.by_seed[metric] else -math.inf)
             for key, options in candidates.items()}
    choices = {key: len(options) for key, options in candidates.items()}
    order = row_order()
    position = lambda v: (order.index(v) if v in order else len(order), v)  # noqa: E731
    rows, columns = sorted(rows, key=position), sorted(columns, key=position)
    chosen = baseline if baseline in columns else (columns[0] if len(columns) > 1 else None)
    return PaperTable([g for g, _ in sweeps], rows, columns, chosen, cells, rows_key, columns_key, choices, metric,
                      candidates, provenance([run for _, runs in sweeps for run in runs]))

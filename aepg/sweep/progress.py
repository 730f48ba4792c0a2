"""What a sweep prints while it runs. Not on a terminal (CI, a log file): one plain line per event
a researcher follows (a trial starts, finishes a task, ends) and, as each trial ends, where the
sweep stands: trials done, the best finished value, time spent and an estimate of the time left.
On a terminal: one table of the trials that redraws in place (name, status, progress, the running
and the final value, the searched keys) under that progress line, cleared when the sweep ends so
that the leaderboard is what stays. Ray Tune's own tables and the trials' output stay off the
terminal unless ``aepg sweep --verbose`` asks for them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from ray import tune

from aepg.schema import final_name
from aepg.sweep.leaderboard import trial_id
from aepg.sweep.state import compact, short_name

NODE_RESULT = "node"
"""In every result a trial reports: the name of the node it runs on."""


DRIVER_LOG = "driver.log"
"""In a sweep's folder: what Ray and its libraries print in the driver (raylet and GCS messages, the
tracebacks of lost actors, start-up warnings), kept off the terminal unless ``--verbose``."""


class HideRestoreHint(logging.Filter):
    """Ray Tune's "Resume experiment with: Tuner.restore(...)": aepg prints its own resume command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


def _local_copy(name: str) -> Path:
    """Where the driver of a sweep on s3:// or gs:// writes its log while it runs."""
    return Path(tempfile.gettempdir()) / f"aepg-{name}-{DRIVER_LOG}"


def driver_log(sweep_path: str, name: str) -> Path:
    """The driver's log file: in the sweep's folder, or for a sweep on s3:// or gs:// a local copy in
    the temp folder (started from the sweep's own, on a resume elsewhere), which ``keep_driver_log``
    puts back into the sweep's folder."""
    if "://" not in sweep_path:
        return Path(sweep_path) / DRIVER_LOG
    local = _local_copy(name)
    if not local.exists():
        import pyarrow.fs as pafs

        fs, folder = pafs.FileSystem.from_uri(sweep_path)
        try:
            with fs.open_input_stream(f"{folder}/{DRIVER_LOG}") as stream:
                local.write_bytes(stream.read())
        except FileNotFoundError:
            pass
    return local


def keep_driver_log(sweep_path: str, name: str) -> None:
    """Copy the local log of a sweep on s3:// or gs:// into its folder there (as it ends, however)."""
    local = _local_copy(name)
    if "://" not in sweep_path or not local.exists():
        return
    import pyarrow.fs as pafs

    try:
        fs, folder = pafs.FileSystem.from_uri(sweep_path)
        with fs.open_output_stream(f"{folder}/{DRIVER_LOG}") as out:
            out.write(local.read_bytes())
    except OSError:  # the storage is failing (said on its own): the log stays where it is
        logging.getLogger("aepg").warning("the driver log stays in %s (the sweep's storage did not take it)", local)


def error_log(trial) -> str:
    """The trial's errors as Ray Tune recorded them, tracebacks included (without terminal colours)."""
    local = trial.error_file
    if local and os.path.exists(local):
        with open(local) as f:
            text = f.read()
    else:
        text = str(trial.get_error() or "")
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def error_reason(trial) -> str:
    """The last line of the trial's latest error: the exception, e.g. 'NonFiniteLoss: ...'."""
    lines = [line.strip() for line in error_log(trial).splitlines() if line.strip()]
    return lines[-1] if lines else "trial failed"


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


class SweepProgress(tune.Callback):
    """Prints the sweep's progress; ``names`` (trial id to run name) is filled by the callback that
    opens the trials' runs, which runs first."""

    def __init__(self, names: dict[str, str], total: int, budget: tuple[str, int], metric: str, mode: str,
                 unit: str, value_key: str, stopper: str = "ASHA", runs: int = 0):
        """``budget``: the result key counting a trial's progress in ``unit`` (task, level or seed)
        and its full value; ``value_key``: the running value shown after each step; ``stopper``: the
        early-stopping scheduler's name, which says who stopped a trial; ``runs``: the runs the trials
        train under their own at most (0: none), counted as they finish (``runs_done``)."""
        self.names, self.total, self.budget, self.metric, self.mode = names, total, budget, metric, mode
        self.unit, self.value_key, self.stopper, self.runs, self.done_runs = unit, value_key, stopper, runs, 0
        self.started, self.best, self.said_runs = time.time(), None, 0.0
        self.nodes: dict[str, str] = {}
        """Trial id to the name of the node it last reported from; shown once trials ran on several."""

    def setup(self, **info):
        """Ray Tune calls this as the sweep (or its resumed run) starts: time from here."""
        self.started = time.time()

    def _say(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def _name(self, trial) -> str:
        return self.names.get(trial.trial_id, trial.trial_id)

    def notice(self, line: str) -> None:
        """A line no trial event carries (a trial retried on another node)."""
        print(f"  {line}", file=sys.stdout, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(f"  started   {self._name(trial)}")

    def _node(self, trial, result: dict) -> str:
        """The node the trial reported from, where the sweep's trials run on several nodes."""
        if result.get(NODE_RESULT):
            self.nodes[trial.trial_id] = str(result[NODE_RESULT])
        return self.nodes.get(trial.trial_id, "") if len(set(self.nodes.values())) > 1 else ""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        budget_key, full = self.budget
        value = result.get(self.value_key)
        shown = f", {self.value_key} {value:.4f}" if isinstance(value, float) else ""
        node = self._node(trial, result)
        where = f" (on {node})" if node else ""
        self._say(f"  {self._name(trial)}: {self.unit} {int(result.get(budget_key, 0))}/{full}{shown}{where}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        budget_key, full = self.budget
        if int(result.get(budget_key, 0)) >= full:
            value = result.get(final_name(self.metric))
            if isinstance(value, float) and (self.best is None or (value > self.best[0]) == (self.mode == "max")):
                self.best = (value, self._name(trial))
            ended = f"finished, {final_name(self.metric)} {value:.4f}" if isinstance(value, float) else "finished"
        else:
            ended = f"stopped early by {self.stopper}"
        self._end(trials, trial, ended)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trials, trial, f"failed: {error_reason(trial)}")

    def _end(self, trials, trial, how: str) -> None:
        ended = len({t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | {trial.trial_id})
        self._say(f"  ended     {self._name(trial)}: {how}")
        self._standing(ended, time.time() - self.started)

    def runs_done(self, done: int) -> None:
        """The trials' nested runs (seeds, arms) finished so far: said at most once a minute."""
        self.done_runs = done
        if time.time() - self.said_runs >= 60:
            self.said_runs = time.time()
            self._say(f"[{done}/{self.runs} runs done, {clock(time.time() - self.started)} elapsed"
                      + (f", about {clock(self.left(done, self.runs))} left]" if done else "]"))

    def left(self, done: int, total: int) -> float:
        """The time left, at the pace of what is done so far."""
        return (time.time() - self.started) / done * (total - done) if done else 0.0

    def standing(self, ended: int, elapsed: float) -> str:
        """Where the sweep stands: trials ended, the best finished value, time spent and left (at the
        pace of the runs done, where trials train several)."""
        best = (f"best {final_name(self.metric)} {self.best[0]:.4f} ({trial_id(self.best[1])})" if self.best
                else "none finished yet")
        left = self.left(self.done_runs, self.runs) if self.done_runs else elapsed / ended * (self.total - ended) if ended else 0
        return (f"[{ended}/{self.total} trials, {best}, {clock(elapsed)} elapsed"
                + (f", about {clock(left)} left]" if ended < self.total else "]"))

    def _standing(self, ended: int, elapsed: float) -> None:
        """Where the sweep stands, as a trial ends."""
        self._say(self.standing(ended, elapsed))


_LIVE: list = []
"""The live display now drawn, if any, so that an interrupted process can give the terminal back."""


def stop_live() -> None:
    """Stop the live table (it hides the cursor while it draws); a second Ctrl-C skips Ray Tune's
    clean-up, which would."""
    while _LIVE:
        _LIVE.pop().stop()


class LiveSweepTable(SweepProgress):
    """The terminal's view: the same events, kept as one row per trial in a table that redraws in
    place (rich, which Ray already depends on). It fits the terminal: short headers (a legend
    above the table names what they stand for), values to 4 decimals, rows cut to the height (the
    running trials and the best finished ones kept, the rest counted), cells cut to the width."""

    STATUS_ORDER = {"running": 0, "pending": 1, "finished": 2, "stopped": 3, "failed": 4}

    def __init__(self, *args, keys: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.keys, self.rows, self.status_line, self.live = keys, {}, "", None
        self.ended, self.elapsed = 0, 0.0

    def setup(self, **info):
        from rich.console import Console
        from rich.live import Live

        super().setup(**info)
        self.live = Live(self, console=Console(), refresh_per_second=2, transient=True, vertical_overflow="crop")
        self.live.start()
        _LIVE.append(self.live)

    def __rich__(self):
        """Drawn afresh at every refresh, so that the clock ticks between events."""
        return self._render()

    def _say(self, text: str) -> None:  # events are the table's rows
        self._refresh()

    def runs_done(self, done: int) -> None:  # the status line counts them
        self.done_runs = done

    def _standing(self, ended: int, elapsed: float) -> None:
        self.status_line, self.ended, self.elapsed = self.standing(ended, elapsed), ended, elapsed
        self._refresh()

    def notice(self, line: str) -> None:  # printed above the table, where it stays
        if self.live is not None:
            self.live.console.print(line, markup=False, highlight=False)
        else:
            super().notice(line)

    def _row(self, trial) -> dict:
        params = trial.config.get("params", trial.config) if isinstance(trial.config, dict) else {}
        return self.rows.setdefault(trial.trial_id, {"status": "pending", "done": "", "now": "", "final": None,
                                                     **{key: params.get(key, "") for key in self.keys}})

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "running"
        super().on_trial_start(iteration, trials, trial, **info)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        budget_key, full = self.budget
        row, value = self._row(trial), result.get(self.value_key)
        row["done"] = f"{int(result.get(budget_key, 0))}/{full}"
        row["now"] = f"{value:.4f}" if isinstance(value, float) else ""
        self._node(trial, result)
        super().on_trial_result(iteration, trials, trial, result, **info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result, row = trial.last_result or {}, self._row(trial)
        finished = int(result.get(self.budget[0], 0)) >= self.budget[1]
        value = result.get(final_name(self.metric))
        row["status"] = "finished" if finished else "stopped"
        row["final"] = value if finished and isinstance(value, float) else None
        super().on_trial_complete(iteration, trials, trial, **info)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "failed"
        super().on_trial_error(iteration, trials, trial, **info)

    def on_experiment_end(self, trials, **info):
        stop_live()
        self.live = None
        if self.status_line:
            print(self.status_line, flush=True)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.refresh()

    def compact_standing(self) -> str:
        """The status line in a few words (the legend above names the metric), its clock running."""
        elapsed = time.time() - self.started
        line = f"{self.ended}/{self.total} trials" + (f" · {self.done_runs}/{self.runs} runs" if self.runs else "")
        if self.best:
            line += f" · best {self.best[0]:.4f} ({trial_id(self.best[1])})"
        line += f" · {clock(elapsed)} elapsed"
        left = self.left(self.done_runs, self.runs) if self.done_runs else \
            elapsed / self.ended * (self.total - self.ended) if self.ended else 0
        return line + (f" · about {clock(left)} left" if left else "")

    def shown_rows(self, room: int) -> tuple[list[str], list[str]]:
        """The trial ids that fit in ``room`` rows, in trial order, and those left out: the running
        trials first, then the best finished, the pending, those stopped and those failed."""
        ids = list(self.rows)
        if len(ids) <= room:
            return ids, []
        sign = 1 if self.mode == "min" else -1

        def priority(trial: str):
            row = self.rows[trial]
            return (self.STATUS_ORDER.get(row["status"], 5), sign * row["final"] if row["final"] is not None else 0)

        kept = set(sorted(ids, key=priority)[:room])
        return [i for i in ids if i in kept], [i for i in ids if i not in kept]

    def _render(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        width, height = self.live.console.size if self.live is not None else (80, 24)
        several = len(set(self.nodes.values())) > 1
        legend = [f"now: {self.value_key}", f"final: {final_name(self.metric)} ({self.mode})",
                  *(f"{short_name(k)}: {k}" for k in self.keys if short_name(k) != k)]
        title = Text(" · ".join(legend), style="dim")
        title_lines = len(title.wrap(self.live.console, width)) if self.live is not None else 1
        status = self.compact_standing()
        room = max(1, height - title_lines - 4)  # the header, a line for the rows left out, the status line, the cursor
        shown, hidden = self.shown_rows(room)
        table = Table(box=None, header_style="bold", pad_edge=False, collapse_padding=True)
        numeric = {k for k in self.keys if all(isinstance(row[k], (int, float)) and not isinstance(row[k], bool)
                                               for row in self.rows.values() if row[k] != "")}
        columns = [("trial", "left"), ("status", "left"), ("done", "right"), *([("node", "left")] if several else []),
                   ("now", "right"), ("final", "right"),
                   *((short_name(k), "right" if k in numeric else "left") for k in self.keys)]
        for name, justify in columns:
            table.add_column(name, no_wrap=True, overflow="ellipsis", justify=justify)
        for trial in shown:
            row = self.rows[trial]
            node = [self.nodes.get(trial, "")] if several else []
            final = f"{row['final']:.4f}" if row["final"] is not None else ""
            table.add_row(trial_id(self.names.get(trial, trial)), row["status"], row["done"], *node, row["now"], final,
                          *(compact(row[k]) for k in self.keys))
        parts = [title, table]
        if hidden:
            counts = {}
            for trial in hidden:
                counts[self.rows[trial]["status"]] = counts.get(self.rows[trial]["status"], 0) + 1
            parts.append(Text(f"and {len(hidden)} more trials: "
                              + ", ".join(f"{n} {status}" for status, n in counts.items()), style="dim"))
        parts.append(Text(status, no_wrap=True, overflow="ellipsis"))
        return Group(*parts)

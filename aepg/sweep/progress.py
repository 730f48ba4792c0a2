"""What a sweep prints while it runs: one plain line per event a researcher follows (a trial starts,
finishes a task, ends) and, as each trial ends, where the sweep stands: trials done, the best
finished value, time spent and an estimate of the time left. Plain lines read the same on a
terminal, in CI and in a log file. Ray Tune's own tables and the trials' output stay off the
terminal unless ``aepg sweep --verbose`` asks for them.
"""

from __future__ import annotations

import os
import sys
import time

from ray import tune

from aepg.metrics import final_name


def error_reason(trial) -> str:
    """The last line of the trial's latest error: the exception, e.g. 'NonFiniteLoss: ...'."""
    local = trial.error_file
    if local and os.path.exists(local):
        with open(local) as f:
            text = f.read()
    else:
        text = trial.get_error()
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "trial failed"


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


class SweepProgress(tune.Callback):
    """Prints the sweep's progress; ``names`` (trial id to run name) is filled by the callback that
    opens the trials' runs, which runs first."""

    def __init__(self, names: dict[str, str], total: int, budget: tuple[str, int], metric: str, mode: str,
                 unit: str, value_key: str):
        """``budget``: the result key counting a trial's progress in ``unit`` (task, level or seed)
        and its full value; ``value_key``: the running value shown after each step."""
        self.names, self.total, self.budget, self.metric, self.mode = names, total, budget, metric, mode
        self.unit, self.value_key = unit, value_key
        self.started, self.best = time.time(), None

    def setup(self, **info):
        """Ray Tune calls this as the sweep (or its resumed run) starts: time from here."""
        self.started = time.time()

    def _say(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def _name(self, trial) -> str:
        return self.names.get(trial.trial_id, trial.trial_id)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(f"  started   {self._name(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        budget_key, full = self.budget
        value = result.get(self.value_key)
        shown = f", {self.value_key} {value:.4f}" if isinstance(value, float) else ""
        self._say(f"  {self._name(trial)}: {self.unit} {int(result.get(budget_key, 0))}/{full}{shown}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        budget_key, full = self.budget
        if int(result.get(budget_key, 0)) >= full:
            value = result.get(final_name(self.metric))
            if isinstance(value, float) and (self.best is None or (value > self.best[0]) == (self.mode == "max")):
                self.best = (value, self._name(trial))
            ended = f"finished, {final_name(self.metric)} {value:.4f}" if isinstance(value, float) else "finished"
        else:
            ended = "stopped early by ASHA"
        self._end(trials, trial, ended)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trials, trial, f"failed: {error_reason(trial)}")

    def _end(self, trials, trial, how: str) -> None:
        ended = len({t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | {trial.trial_id})
        elapsed = time.time() - self.started
        left = elapsed / ended * (self.total - ended)
        best = f"best {final_name(self.metric)} {self.best[0]:.4f} ({self.best[1]})" if self.best else "none finished yet"
        self._say(f"  ended     {self._name(trial)}: {how}")
        self._say(f"[{ended}/{self.total} trials, {best}, {_clock(elapsed)} elapsed"
                  + (f", about {_clock(left)} left]" if ended < self.total else "]"))

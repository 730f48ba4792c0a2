"""Says on the terminal when the MLflow tracking server fails and when it recovers.

MLflow's client retries a failing request for minutes without a word, in the trials and in the
driver alike, so an outage looked like a frozen sweep. This callback, first among the driver's,
asks the server directly (one request, no retries) every few seconds and before each trial event
(the driver's own polling of MLflow waits while it fails), and says: when requests start failing (the address and what fails), when it answers again (and
after how long), a trial that Tune retries into the outage, and an outage still on at the end.
"""

from __future__ import annotations

import time
from datetime import datetime

from ray import tune

from aepg.sweep.progress import clock
from aepg.tracking import Tracker, retry_window_s


class TrackingWatch(tune.Callback):
    PROBE_S = 5.0

    def __init__(self, tracker: Tracker, names: dict[str, str], attempts: int):
        """``names``: trial id to run name (filled by the runs' callback); ``attempts``: how many times
        Tune runs a trial at most."""
        self.tracker, self.names, self.attempts = tracker, names, attempts
        self.say = print
        """Where its lines go: the terminal view's ``notice``."""
        self.failing_since: float | None = None
        self.probed = 0.0

    def __setstate__(self, state: dict) -> None:
        """Restored with a resumed sweep: its clock readings were another process's."""
        self.__dict__.update(state, failing_since=None, probed=0.0)

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def probe(self) -> None:
        self.probed = time.monotonic()
        trouble = self.tracker.trouble()
        if trouble and not self.failing:
            self.failing_since = time.monotonic()
            self.say(f"tracking server {self.tracker.uri} is failing ({trouble}) since "
                     f"{datetime.now():%H:%M:%S}; the trials' MLflow requests retry for about "
                     f"{clock(retry_window_s())}")
        elif not trouble and self.failing:
            self.say(f"tracking server {self.tracker.uri} answers again, after "
                     f"{clock(time.monotonic() - self.failing_since)} failing")
            self.failing_since = None

    def on_step_begin(self, iteration, trials, **info):
        if time.monotonic() - self.probed >= self.PROBE_S:
            self.probe()

    # Before the other callbacks' MLflow calls, which block while the server fails.
    def on_trial_start(self, iteration, trials, trial, **info):
        self.probe()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.probe()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.probe()

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.probe()
        if self.failing:
            name = self.names.get(trial.trial_id, trial.trial_id).split("-", 1)[0]
            self.say(f"{name} failed while the tracking server is failing; Tune retries it now, into the outage "
                     f"(attempt {trial.num_failures + 1} of {self.attempts})")

    def on_experiment_end(self, trials, **info):
        self.probe()
        if self.failing:
            self.say(f"the sweep ends with the tracking server {self.tracker.uri} still failing (for "
                     f"{clock(time.monotonic() - self.failing_since)}): runs it could not update may be left "
                     "RUNNING, and trials that ran out of retries failed on it")

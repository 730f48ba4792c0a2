"""The one place that talks to MLflow: a ``Tracker``, built once per process from the resolved
tracking URI, holding one client.

The driver opens a run from what the planning code says of it (``Tracker.open_run`` with a
``PlannedRun``: its name, params, config, data set and chart titles; nothing here derives them) and
holds the run's handle (``RunHandle``: tags, metrics, artifacts, closing, reopening); the chief
training worker logs into it through the handle's ``MlflowReporter``, so the same code works
in-process, in Ray Train workers and in Ray Tune trials (a handle pickles as its tracker's URI and
the run's id, and each process builds its own client). The names of the tags and metrics are
``aepg.schema``'s. MLflow is imported when first used, so resolving and checking a tracking URI
stays fast.

What a run shows (docs/mlflow.md, "What a run logs"): params for the keys its configuration uses,
``train/`` metrics at each optimiser step, ``eval/`` metrics after each task at the step that
counts the tasks done (so their charts read per task, and runs of different lengths line up),
the count as the tag ``aepg.tasks_done``, ``final/`` metrics only when every task is done (at
step 0, so that MLflow draws them as bars), and plots refreshed after each task.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from aepg import interrupts
from aepg.config import ConfigError, resolve_tracking_uri
from aepg.metrics import accuracy_after_each_task
from aepg.records import Charts, PlannedRun
from aepg.schema import BUDGET_KEY, EXPERIMENT_KIND_TAG, FAILURE_TAG, FINAL, NOTE_TAG, PARENT_TAG, TASKS_DONE_TAG

TRAINING_KIND = "custom_model_development"
"""The experiment kind MLflow 3 opens on its runs table (GenAI experiments open on traces)."""
BATCH_LIMIT = 1000


EXPERIMENT_NOTE = ("aepg runs: open the Runs tab, with Model training chosen at the top left; each sweep is one "
                   "row, and its + unfolds its trials.")
"""An experiment's description, in plain words: MLflow renders it as Markdown on the experiment's
page but shows it raw in the experiments list, where a link would read as brackets and a URL."""


def runs_page(experiment_id: str) -> str:
    """The UI's runs table of an experiment, relative to the UI's root."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached."""


def _param_value(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _metrics(values: dict[str, float], step: int) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]


@dataclass
class RunRecord:
    """A run as plain data, for leaderboards and reports."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    start_time: int | None = None
    end_time: int | None = None
    """Milliseconds since the epoch; None while running."""
    experiment_id: str = ""


def _record(r) -> RunRecord:
    return RunRecord(r.info.run_id, r.info.run_name, r.info.status, r.data.params, r.data.metrics, r.data.tags,
                     r.info.start_time, r.info.end_time, r.info.experiment_id)


def retry_window_s() -> float:
    """How long MLflow's client retries one request before it gives up (urllib3's backoff: none
    before the first retry, then MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR x 2^(n-1) s, at most 120 s
    each, for MLFLOW_HTTP_REQUEST_MAX_RETRIES retries): about 4 minutes by default."""
    retries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", 7))
    factor = float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 2))
    return sum(min(120.0, factor * 2 ** (n - 1)) for n in range(2, retries + 1))


def _basic_auth() -> tuple[str, str] | None:
    """MLflow's own variables for a server behind basic auth."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return (user, password) if user and password else None


def _token_header() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


class WholeCalls:
    """A client whose method calls run inside ``interrupts.deferred``."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def whole(*args, **kwargs):
            with interrupts.deferred():
                return attribute(*args, **kwargs)

        return whole


class Tracker:
    """MLflow at one tracking URI, with one client made on first use."""

    def __init__(self, uri: str):
        self.uri = uri
        self._client = None

    @classmethod
    def connect(cls, configured: str | None = None) -> "Tracker":
        """The tracker for ``MLFLOW_TRACKING_URI``, else ``configured``, else ./mlflow.db, checked to
        answer within seconds (MLflow's own client retries for minutes)."""
        tracker = cls(resolve_tracking_uri(configured))
        tracker.check_reachable()
        tracker.check_writable()
        tracker.create_store_once()
        return tracker

    @classmethod
    def for_reading(cls, configured: str | None = None) -> "Tracker":
        """Like ``connect``, for reading: a local store must exist (MLflow would create an empty one)."""
        uri = resolve_tracking_uri(configured)
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_file():
            raise ConfigError([("--tracking-uri", f"no MLflow store at {uri[len(prefix):]}; "
                                "give the store the runs were logged to (--tracking-uri or MLFLOW_TRACKING_URI)")])
        tracker = cls(uri)
        tracker.check_reachable()
        return tracker

    def __getstate__(self) -> dict:
        return {"uri": self.uri}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["uri"])

    def __repr__(self) -> str:
        return f"Tracker({self.uri!r})"

    @property
    def client(self):
        """MLflow's client; on a SQLite store each of its calls ends before Ctrl-C or a stop signal
        takes effect (``interrupts.deferred``), so no write is cut half-way with the store locked."""
        if self._client is None:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.uri)
            self._client = WholeCalls(client) if self.uri.startswith("sqlite:") else client
        return self._client

    def check_reachable(self, timeout: tuple[float, float] = (3.0, 5.0)) -> None:
        """Fail within seconds, before any compute, when an HTTP tracking server does not answer."""
        if not self.uri.startswith(("http://", "https://")):
            return
        import requests

        try:
            requests.get(f"{self.uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
        except requests.RequestException as error:
            raise TrackingUnavailable(
                f"the MLflow tracking server at {self.uri} is unreachable ({type(error).__name__}). Start it "
                "(e.g. mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db) "
                "or point MLFLOW_TRACKING_URI (or tracking_uri) at a running one."
            ) from None

    def trouble(self, timeout: tuple[float, float] = (2.0, 3.0)) -> str | None:
        """What is wrong with an HTTP tracking server now, in a few words ("HTTP 500", "connection
        refused"), or None while it answers: one request through the tracking API, not retried (MLflow's
        own client retries for minutes, silently). None for a local store."""
        if not self.uri.startswith(("http://", "https://")):
            return None
        import requests

        try:
            answer = requests.get(f"{self.uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
                                  params={"max_results": 1}, timeout=timeout, auth=_basic_auth(),
                                  headers=_token_header())
        except requests.ConnectionError as error:
            return "connection refused" if "refused" in str(error).lower() else "no connection"
        except requests.Timeout:
            return f"no answer within {sum(timeout):.0f} s"
        except requests.RequestException as error:
            return type(error).__name__
        return None if answer.status_code < 500 else f"HTTP {answer.status_code}"

    def _artifact_location(self, experiment: str) -> str | None:
        """A local store keeps artifacts beside its database (``mlruns/<experiment>``), not in
        whatever folder the first run started from (MLflow's ``./mlruns``); a server decides itself."""
        prefix = "sqlite:///"
        if not self.uri.startswith(prefix):
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
        return (Path(self.uri[len(prefix):]).parent / "mlruns" / safe).as_uri()

    def create_store_once(self) -> None:
        """Open a local store under a lock on its folder: two processes opening a fresh sqlite store
        at once (two sweeps started together) would both create MLflow's tables, and one would fail
        ("table ... already exists"); the second now waits and finds them made."""
        prefix = "sqlite:///"
        if not self.uri.startswith(prefix):
            return
        folder = Path(self.uri[len(prefix):]).parent
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            self.client.search_experiments(max_results=1)
        finally:
            os.close(descriptor)

    def check_writable(self) -> None:
        """Refuse a local store aepg cannot write (MLflow would retry for a minute, then fail deep in
        SQLAlchemy): a read-only file or folder, or a path through a file."""
        prefix = "sqlite:///"
        if not self.uri.startswith(prefix):
            return
        path = Path(self.uri[len(prefix):])
        existing = next(p for p in [path, *path.parents] if p.exists())
        if existing == path and not path.is_file():
            problem = "is not a file"
        elif existing == path:
            problem = None if os.access(path, os.R_OK | os.W_OK) and os.access(path.parent, os.W_OK) else "is read-only"
        elif not existing.is_dir():
            problem = f"cannot be created: {existing} is a file"
        else:
            problem = None if os.access(existing, os.W_OK) else f"cannot be created: {existing} is read-only"
        if problem:
            raise ConfigError([("tracking_uri", f"the MLflow store {path} {problem}; point tracking_uri (or "
                                "MLFLOW_TRACKING_URI) at a store this user can write")])

    # -- runs ------------------------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        """The experiment's id, creating it as a training experiment whose description says where its
        runs are (MLflow 3's UI opens an experiment on its GenAI pages)."""
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(name, artifact_location=self._artifact_location(name),
                                                              tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
            except MlflowException:  # another process (a sweep started at the same moment) made it first
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                return experiment.experiment_id
            self.client.set_experiment_tag(experiment_id, NOTE_TAG, EXPERIMENT_NOTE)
            return experiment_id
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            self.client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return experiment.experiment_id

    def create_run(self, experiment: str, run_name: str | None = None, tags: dict[str, str] | None = None,
                   params: dict[str, object] | None = None, texts: dict[str, str] | None = None) -> RunHandle:
        """A new RUNNING run with params and text artifacts."""
        from mlflow.entities import Param

        run_id = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags or {}).info.run_id
        items = [Param(k, _param_value(v)) for k, v in (params or {}).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])
        for path, text in (texts or {}).items():
            self.client.log_text(run_id, text, path)
        return self.run(run_id)

    def open_run(self, planned: PlannedRun, tags: dict[str, str] | None = None) -> RunHandle:
        """The run ``planned`` describes: its params, its config as ``config.yaml``, its data set as a
        dataset input."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        run = self.create_run(planned.experiment, planned.name, tags, planned.params, {"config.yaml": planned.config_yaml})
        data = planned.dataset
        dataset = Dataset(name=data.name, digest=data.digest, source_type="local", source=data.source,
                          profile=json.dumps(data.profile))
        self.client.log_inputs(run.run_id, datasets=[DatasetInput(dataset=dataset, tags=[
            InputTag(key="mlflow.data.context", value="train")])])
        return run

    def run(self, run_id: str) -> RunHandle:
        """The handle every write to one run goes through."""
        return RunHandle(self, run_id)

    # -- reading ---------------------------------------------------------------------------------

    def find_runs(self, experiment: str, tags: dict[str, str]) -> list[RunRecord]:
        """Runs of ``experiment`` carrying all ``tags``, oldest first."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([found.experiment_id], filter_string=query,
                                       order_by=["attributes.start_time ASC"], max_results=50000)
        return [_record(r) for r in runs]

    def nested_runs(self, experiment_id: str, run_id: str) -> list[RunRecord]:
        """The runs nested under ``run_id`` (MLflow's parent tag), oldest first."""
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run_id}'",
                                       order_by=["attributes.start_time ASC"], max_results=50000)
        return [_record(r) for r in runs]

    def search(self, filter_string: str, newest_first: bool = True, max_results: int = 1) -> list[RunRecord]:
        """Runs of every experiment matching ``filter_string``."""
        ids = [e.experiment_id for e in self.client.search_experiments()]
        order = "DESC" if newest_first else "ASC"
        runs = self.client.search_runs(ids, filter_string=filter_string, order_by=[f"attributes.start_time {order}"],
                                       max_results=max_results)
        return [_record(r) for r in runs]

    def get_run(self, run_id: str) -> tuple[RunRecord, str]:
        """The run and the name of its experiment."""
        r = self.client.get_run(run_id)
        return _record(r), self.client.get_experiment(r.info.experiment_id).name

    def read_text(self, run_id: str, path: str) -> str:
        import mlflow.artifacts

        return mlflow.artifacts.load_text(f"{self.client.get_run(run_id).info.artifact_uri}/{path}")

    def ui_hint(self, experiment_id: str) -> list[str]:
        """How to see an experiment, in lines that fit 80 columns: the UI command (a local store by a
        path relative to the working directory, where it lies under it) and the link to its runs table
        (MLflow 3's UI opens on GenAI pages unless asked for the model-training view)."""
        page = runs_page(experiment_id)
        if self.uri.startswith(("http://", "https://")):
            return ["see it at:", f"{self.uri.rstrip('/')}/{page}"]
        store = self.uri
        if store.startswith("sqlite:///"):
            path = Path(store.removeprefix("sqlite:///"))
            if path.is_relative_to(Path.cwd()):
                store = f"sqlite:///{path.relative_to(Path.cwd())}"
        return [f"see it with: mlflow ui --backend-store-uri {store}, then open", f"http://127.0.0.1:5000/{page}"]


@dataclass(frozen=True)
class RunHandle:
    """One MLflow run, as Lightning's ``MLFlowLogger`` holds one: tags, metrics, artifacts, closing
    and reopening go to it, so no write passes a run id (``Tracker.run``)."""

    tracker: Tracker
    run_id: str

    def close(self, status: str, reason: str | None = None) -> None:
        """Set FINISHED, FAILED or KILLED; a failure reason becomes the ``failure_reason`` tag."""
        if reason:
            self.tracker.client.set_tag(self.run_id, FAILURE_TAG, reason[:5000])
        self.tracker.client.set_terminated(self.run_id, status=status)

    def check_reopenable(self) -> None:
        """ConfigError when the store has no such run, or it was deleted."""
        from mlflow.exceptions import MlflowException

        try:
            stage = self.tracker.client.get_run(self.run_id).info.lifecycle_stage
        except MlflowException:
            raise ConfigError([("--resume", f"no MLflow run {self.run_id} in {self.tracker.uri}; resume in the store the run "
                                "was logged to (tracking_uri or MLFLOW_TRACKING_URI)")]) from None
        if stage == "deleted":
            raise ConfigError([("--resume", f"MLflow run {self.run_id} was deleted from {self.tracker.uri}; restore it with "
                                f"`mlflow runs restore --run-id {self.run_id}` (MLFLOW_TRACKING_URI={self.tracker.uri}), then resume")])

    def reopen(self) -> None:
        """Mark a resumed run RUNNING again, without the reason it stopped; ConfigError when the store has no
        such run or it was deleted."""
        from mlflow.entities import RunStatus

        self.check_reopenable()
        self.tracker.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        if FAILURE_TAG in self.tracker.client.get_run(self.run_id).data.tags:  # why it stopped last time is no longer so
            self.tracker.client.delete_tag(self.run_id, FAILURE_TAG)

    def delete(self) -> None:
        """Soft delete: hidden from searches and the UI, restorable with ``MlflowClient.restore_run``."""
        self.tracker.client.delete_run(self.run_id)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.tracker.client.set_tag(self.run_id, key, value)

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        self.tracker.client.log_batch(self.run_id, metrics=_metrics(values, step))

    def log_outputs(self, texts: dict[str, str] | None = None, figures: dict[str, object] | None = None,
                    metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> None:
        """Text artifacts, matplotlib figures (closed after logging), metrics and tags, into one run."""
        import matplotlib.pyplot as plt

        for path, text in (texts or {}).items():
            self.tracker.client.log_text(self.run_id, text, path)
        for path, figure in (figures or {}).items():
            self.tracker.client.log_figure(self.run_id, figure, path)
            plt.close(figure)
        if metrics:
            self.tracker.client.log_batch(self.run_id, metrics=_metrics(metrics, 0))
        self.set_tags(tags or {})

    def start_system_metrics(self):
        """MLflow's CPU, memory, disk and network monitor (and GPU with nvidia-ml-py) on this run, or
        None where it cannot run (psutil missing); a resumed run's points continue after its last step."""
        try:
            import psutil  # noqa: F401
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:
            return None
        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=5, resume_logging=True, tracking_uri=self.tracker.uri)
        monitor.start()
        return monitor

    def reporter(self, charts: Charts, summary: str | None = FINAL) -> "MlflowReporter":
        return MlflowReporter(self, charts, summary)



class MlflowReporter:
    """A run's metrics, accuracy matrix and plots, logged as the trainer reports them."""

    TRAIN_PLOT_KEYS = ("a_t", "entropy", "p_y", "ce")

    def __init__(self, run: RunHandle, charts: Charts, summary: str | None = FINAL):
        self.client = run.tracker.client
        self.run_id, self.summary = run.run_id, summary
        """The prefix the end-of-budget summary is logged under: ``final/``, ``seed_run/`` for one seed
        of a sweep's configuration, None for a low-fidelity level (``aepg.metrics``)."""
        self.num_tasks, self.annealed, self.figures = charts.num_tasks, charts.annealed, charts.figures
        logged = self.client.get_run(run.run_id)
        self.title = f"{logged.info.run_name}: {charts.label}"
        self.logged_through = {key: max(m.step for m in self.client.get_metric_history(run.run_id, key))
                               for key in logged.data.metrics}
        """The last step of each metric logged before this process: a resumed run recomputes the
        steps after its checkpoint, and their points are not logged twice."""

    def _log(self, metrics: list) -> None:
        metrics = [m for m in metrics if m.step > self.logged_through.get(m.key, -1)]
        for i in range(0, len(metrics), BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + BATCH_LIMIT])

    def log_dict(self, data: dict, path: str) -> None:
        self.client.log_dict(self.run_id, data, path)

    def log_steps(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        self._log([m for step, values in rows for m in _metrics({f"train/{k}": v for k, v in values.items()}, step)])

    def task_finished(self, state, samples_per_second: float | None) -> None:
        """Evaluation metrics at the step counting the tasks done, the matrix, and (with ``figures``
        on) every plot, refreshed so a run stopped early has them too; the summary (``final/``) once
        every task is done. ``samples_per_second`` is None for a task the method does not train."""
        R, sizes = state.accuracy_matrix, state.test_sizes
        metrics = state.metrics(self.num_tasks)
        finals = {self.summary + k.removeprefix(FINAL): v for k, v in metrics.items()
                  if k.startswith(FINAL)} if self.summary else {}
        done = metrics.pop(BUDGET_KEY)  # the step of the eval/ metrics, not a chart of its own
        running = {k: v for k, v in metrics.items() if not k.startswith(FINAL)}
        throughput = {} if samples_per_second is None else {"train/samples_per_second": samples_per_second}
        self._log(_metrics(running, done) + _metrics(throughput, state.global_step))
        self.client.set_tag(self.run_id, TASKS_DONE_TAG, str(done))
        # At step 0, one value each: MLflow's charts draw a metric without a step as one labelled bar per run.
        self._log(_metrics(finals, 0))
        self.log_dict({"R": R, "test_sizes": sizes, "accuracy_after_task": accuracy_after_each_task(R, sizes)},
                      "accuracy_matrix.json")
        if self.figures:
            self._figures(state)

    def _figures(self, state) -> None:
        from aepg import plots

        done = len(state.accuracy_matrix)
        self._log_figure(plots.accuracy_heatmap(state.accuracy_matrix, f"{self.title} ({done}/{self.num_tasks} tasks)"),
                         "accuracy_matrix.png")
        task_ends = self.client.get_metric_history(self.run_id, "train/samples_per_second")
        boundaries = sorted(m.step for m in task_ends)[:-1]
        keys = self.TRAIN_PLOT_KEYS if self.annealed else self.TRAIN_PLOT_KEYS[1:]
        series = {}
        for key in keys:
            history = sorted((m.step, m.value) for m in self.client.get_metric_history(self.run_id, f"train/{key}"))
            if history:
                series[key] = ([s for s, _ in history], [v for _, v in history])
        if series:
            what = "annealing weight a_t, output entropy, p_y and CE" if self.annealed else "output entropy, p_y and CE"
            self._log_figure(plots.series_plot(series, f"{self.title}\n{what} over optimiser steps", boundaries),
                             "training_curves.png")

    def _log_figure(self, figure, path: str) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, figure, path)
        plt.close(figure)


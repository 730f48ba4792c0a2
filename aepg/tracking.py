"""The one place that talks to MLflow.

The driver opens a run (``open_run``) and sets its final status (``close_run``); the chief
training worker logs into it through ``MlflowReporter``, addressing the run by id, so the
same code works in-process, in Ray Train workers and in Ray Tune trials. MLflow is imported
when first used, so resolving and checking a tracking URI stays fast.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from aepg.config import ConfigError, RunConfig, flatten, to_yaml
from aepg.metrics import accuracy_after_each_task

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARENT_TAG = "mlflow.parentRunId"
BATCH_LIMIT = 1000
SCHEDULE_PLOT_KEYS = ("a_t", "entropy", "p_y")


def resolve_tracking_uri(configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the config's ``tracking_uri``, else ./mlflow.db.

    Relative sqlite paths become absolute, so workers with another working directory
    write to the same database.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached."""


def check_reachable(tracking_uri: str, timeout: tuple[float, float] = (3.0, 5.0)) -> None:
    """Fail within seconds, before any compute, when an HTTP tracking server does not answer
    (MLflow's own client retries for minutes)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except requests.RequestException as error:
        raise TrackingUnavailable(
            f"the MLflow tracking server at {tracking_uri} is unreachable ({type(error).__name__}). Start it "
            "(e.g. mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db) "
            "or point MLFLOW_TRACKING_URI (or tracking_uri) at a running one."
        ) from None


def check_store(tracking_uri: str) -> None:
    """For reading: the store must exist (a local sqlite file) or answer (a server)."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix) and not Path(tracking_uri[len(prefix):]).is_file():
        raise ConfigError([("--tracking-uri", f"no MLflow store at {tracking_uri[len(prefix):]}; "
                            "give the store the runs were logged to (--tracking-uri or MLFLOW_TRACKING_URI)")])
    check_reachable(tracking_uri)


def client_for(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def create_run(tracking_uri: str, experiment: str, run_name: str | None = None, tags: dict[str, str] | None = None,
               params: dict[str, object] | None = None, texts: dict[str, str] | None = None) -> str:
    """A new RUNNING run with params and text artifacts; returns its id."""
    from mlflow.entities import Param

    client = client_for(tracking_uri)
    run_id = client.create_run(experiment_id(client, experiment), run_name=run_name, tags=tags or {}).info.run_id
    items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in (params or {}).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    for path, text in (texts or {}).items():
        client.log_text(run_id, text, path)
    return run_id


def open_run(cfg: RunConfig, tracking_uri: str, tags: dict[str, str] | None = None) -> str:
    """A run for ``cfg``: the flattened config as params, the resolved config as ``config.yaml``."""
    return create_run(tracking_uri, cfg.experiment, cfg.run_name, tags,
                      flatten(cfg.model_dump(mode="json")), {"config.yaml": to_yaml(cfg)})


def close_run(tracking_uri: str, run_id: str, status: str, reason: str | None = None) -> None:
    """Set FINISHED, FAILED or KILLED; a failure reason becomes the ``failure_reason`` tag."""
    client = client_for(tracking_uri)
    if reason:
        client.set_tag(run_id, "failure_reason", reason[:5000])
    client.set_terminated(run_id, status=status)


def reopen_run(tracking_uri: str, run_id: str) -> None:
    """Mark a resumed run RUNNING again."""
    from mlflow.entities import RunStatus

    client_for(tracking_uri).update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))


def run_status(tracking_uri: str, run_id: str) -> str:
    return client_for(tracking_uri).get_run(run_id).info.status


def delete_run(tracking_uri: str, run_id: str) -> None:
    """Soft delete: hidden from searches and the UI, restorable with ``MlflowClient.restore_run``."""
    client_for(tracking_uri).delete_run(run_id)


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    client = client_for(tracking_uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


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


def find_runs(tracking_uri: str, experiment: str, tags: dict[str, str]) -> list[RunRecord]:
    """Runs of ``experiment`` carrying all ``tags``, oldest first."""
    client = client_for(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([found.experiment_id], filter_string=query, order_by=["attributes.start_time ASC"],
                              max_results=50000)
    return [_record(r) for r in runs]


def _record(r) -> RunRecord:
    return RunRecord(r.info.run_id, r.info.run_name, r.info.status, r.data.params, r.data.metrics, r.data.tags,
                     r.info.start_time, r.info.end_time)


def find_sweep(tracking_uri: str, name: str) -> str | None:
    """The parent run of the newest sweep whose folder name or sweep name is ``name``."""
    client = client_for(tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    for query in (f"tags.`aepg.sweep` = '{name}'", f"params.`sweep.name` = '{name}'"):
        runs = client.search_runs(ids, filter_string=f"tags.`aepg.kind` = 'sweep' and {query}",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            return runs[0].info.run_id
    return None


def get_run(tracking_uri: str, run_id: str) -> tuple[RunRecord, str]:
    """The run and the name of its experiment."""
    client = client_for(tracking_uri)
    r = client.get_run(run_id)
    experiment = client.get_experiment(r.info.experiment_id).name
    return _record(r), experiment


def read_text(tracking_uri: str, run_id: str, path: str) -> str:
    import mlflow.artifacts

    return mlflow.artifacts.load_text(f"{client_for(tracking_uri).get_run(run_id).info.artifact_uri}/{path}")


def log_outputs(tracking_uri: str, run_id: str, texts: dict[str, str] | None = None,
                figures: dict[str, object] | None = None, metrics: dict[str, float] | None = None) -> None:
    """Text artifacts, matplotlib figures (closed after logging) and metrics, into one run."""
    import matplotlib.pyplot as plt
    from mlflow.entities import Metric

    client = client_for(tracking_uri)
    for path, text in (texts or {}).items():
        client.log_text(run_id, text, path)
    for path, figure in (figures or {}).items():
        client.log_figure(run_id, figure, path)
        plt.close(figure)
    now = int(time.time() * 1000)
    if metrics:
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


class MlflowReporter:
    """Logs step and task metrics, the accuracy matrix and the plots into one run."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.client = client_for(tracking_uri)
        self.run_id = run_id

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log([Metric(k, float(v), now, step) for k, v in values.items()])

    def _log(self, metrics: list) -> None:
        for i in range(0, len(metrics), BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + BATCH_LIMIT])

    def log_params(self, values: dict[str, object]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in values.items()])

    def log_dict(self, data: dict, path: str) -> None:
        self.client.log_dict(self.run_id, data, path)

    def log_steps(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log([Metric(k, v, now, step) for step, values in rows for k, v in values.items()])

    def task_finished(self, state) -> None:
        R = state.accuracy_matrix
        i = len(R)
        metrics = {f"accuracy_after_task_{i}": state.running["accuracy_after_task"], **state.running}
        metrics.update({f"accuracy_task_{j + 1}": acc for j, acc in enumerate(R[-1])})
        self.log_metrics(metrics, step=i)
        self.client.log_dict(self.run_id, {"R": R, "test_sizes": state.test_sizes, "accuracy_after_task": accuracy_after_each_task(R, state.test_sizes)}, "accuracy_matrix.json")

    def run_finished(self, state) -> None:
        from aepg import plots

        self.log_metrics(state.summary, step=len(state.accuracy_matrix))
        self._log_figure(plots.accuracy_heatmap(state.accuracy_matrix), "accuracy_matrix.png")
        series = {}
        for key in SCHEDULE_PLOT_KEYS:
            history = sorted((m.step, m.value) for m in self.client.get_metric_history(self.run_id, key))
            if history:
                series[key] = ([s for s, _ in history], [v for _, v in history])
        if series:
            self._log_figure(plots.series_plot(series, "annealing weight and output entropy over steps"), "schedule_entropy.png")

    def _log_figure(self, figure, path: str) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, figure, path)
        plt.close(figure)

"""A run as the code that planned it describes it: plain records that the planning code
(``aepg.preflight.planned_run``) fills from a config and the tracking adapter (``aepg.tracking``)
writes to MLflow, so that the adapter derives nothing about a run and imports no planning code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetIdentity:
    """A run's data as an MLflow dataset input: its name, a digest of what defines it (the data set
    entry's keys, the class order, the tasks' sizes), where it is, and the tasks' sizes."""

    name: str
    digest: str
    source: str
    profile: dict


@dataclass(frozen=True)
class Charts:
    """What a run's plots say: the objective as their titles name it, whether a_t is drawn, whether
    plots are drawn at all, and the tasks of the run."""

    label: str
    annealed: bool
    figures: bool
    num_tasks: int


@dataclass(frozen=True)
class PlannedRun:
    """A run as the code that planned it describes it, for ``Tracker.open_run``."""

    experiment: str
    name: str
    params: dict[str, object]
    """The keys its configuration uses (``RunConfig.active_params``)."""
    config_yaml: str
    dataset: DatasetIdentity
    charts: Charts

"""What every config module shares: the error that names bad keys, the strict base of every section
and every catalogue entry's config, and small path rules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds (dotted key, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{key}: {message}" for key, message in problems))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)
    resume_fixed: ClassVar[tuple[str, ...]] = ()
    """Of a run config's section: its keys (or whole sections) a resumed run must share with the
    run it continues; the sections not listed say which of their own (``fixed_on_resume``)."""


class EntryConfig(Section):
    """What every catalogue entry's config answers besides its keys (an objective, a method, a part, a
    data set, a searcher, ...): what its settings cannot do inside the whole config that holds it,
    and which of its keys are active."""

    def problems(self, cfg) -> list[tuple[str, str]]:
        """(key under the entry's section, or "" for the section itself, message) for settings that
        cannot work in ``cfg``, the config holding the entry (a ``RunConfig``; a ``Sweep`` for a sweep's
        searcher and scheduler), whatever the machine: checked before anything is imported."""
        return []

    def active_params(self, facts: dict | None = None) -> dict[str, object]:
        """The keys a run reads (set keys only), as its MLflow params log them; ``facts``: the
        backbone's, for entries whose keys depend on it."""
        return self.model_dump(mode="json", exclude_none=True)


def env_path(name: str, default: str) -> Path:
    """The folder an environment variable names; unset or empty means ``default`` (never the
    working directory, which ``Path("")`` would be)."""
    return Path(os.environ.get(name) or default).expanduser()


def is_uri(path: str) -> bool:
    """A URI (s3://, gs://, file://) rather than a local path."""
    return "://" in path


def shown_path(path: str) -> str:
    """A local path relative to the working directory where it lies under it (a URI as it is), so
    that the lines naming it fit a terminal."""
    if is_uri(path) or not os.path.isabs(path):
        return path
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


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


def default_storage(folder: str, local: str) -> str:
    """``$AEPG_STORAGE/folder`` where AEPG_STORAGE names shared storage (a cluster's bucket or mount),
    else ``local``, relative to the working directory."""
    root = os.environ.get("AEPG_STORAGE", "").strip()
    return f"{root.rstrip('/')}/{folder}" if root else local

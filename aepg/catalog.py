"""The catalogues of aepg's extension points: objectives, a_t schedules, training methods, method
parts, data sets, optimisers, learning-rate schedules, search algorithms, early-stopping
schedulers and sweep protocols.

An entry is a name, its own typed config (a pydantic model whose ``kind`` field holds the name:
its keys, defaults, ranges and docstrings live with the entry), a lazy reference to what builds
it (``"module:attribute"``, imported only when a run builds it), a display name for tables and
its traits (``annealed``, ``vit_only``, ...). Built-in entries register with the catalogue's
decorator in torch-free modules; an installed package adds entries through an entry-point group
(``aepg.objectives``, ``aepg.schedules``, ``aepg.methods``, ``aepg.parts``, ``aepg.datasets``,
``aepg.optimizers``, ``aepg.lr_schedules``, ``aepg.searchers``, ``aepg.schedulers``,
``aepg.protocols``), whose modules are imported the first time a name is not among the built-ins.
Nothing here imports torch, so the CLI validates fast.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable


class PluginError(ImportError):
    """An installed package's entry point could not be loaded."""


@dataclass(frozen=True)
class Entry:
    name: str
    config: type
    """The entry's pydantic config class; its ``kind`` (or ``algorithm``) field is ``name``."""
    builder: str | None
    """``"module:attribute"`` of what builds the entry at run time, or None when the config does."""
    display: str
    traits: frozenset[str]

    @property
    def doc(self) -> str:
        """The first paragraph of the config's docstring, on one line."""
        return " ".join((self.config.__doc__ or "").strip().split("\n\n")[0].split()).replace("``", "`")

    def defaults(self) -> dict[str, Any]:
        """The entry's own keys (``kind`` excluded) with their defaults, as a config with none of
        them set holds them (a method's own parts included)."""
        try:
            made = self.config.model_validate({})
        except ValueError:  # an entry with a required key: each field's default
            made = None
        return {key: getattr(made, key) if made is not None else
                self.config.model_fields[key].get_default(call_default_factory=True) for key in self.keys()}

    @property
    def module(self) -> str:
        """The module that registered the entry (its package provides it)."""
        return self.config.__module__

    def has(self, trait: str) -> bool:
        return trait in self.traits

    def keys(self) -> list[str]:
        """The entry's own config keys (``kind`` excluded)."""
        return [key for key in self.config.model_fields if key not in ("kind", "algorithm")]

    def load(self) -> Any:
        """What ``builder`` names, imported now."""
        if self.builder is None:
            raise TypeError(f"{self.name} has no builder")
        module, _, attribute = self.builder.partition(":")
        return getattr(importlib.import_module(module), attribute)


class Catalog:
    """Named entries of one extension point, filled by ``register`` and by installed plugins.

    ``builtins`` are the modules that register the built-in entries; ``key`` is the config key that
    names an entry inside its section (``kind``; ``algorithm`` for search algorithms). The section
    that holds the catalogue's entry declares it (``aepg.config.entries``)."""

    def __init__(self, what: str, group: str, builtins: tuple[str, ...], key: str = "kind"):
        self.what, self.group, self.builtins, self.key = what, group, builtins, key
        self._entries: dict[str, Entry] = {}
        self._filled = self._plugins_loaded = False

    def register(self, name: str, *, builder: str | None = None, display: str | None = None,
                 traits: tuple[str, ...] = ()) -> Callable[[type], type]:
        """A class decorator: the decorated config class becomes the entry ``name``."""

        def decorate(config: type) -> type:
            field = config.model_fields.get(self.key)
            if field is None or field.default != name:
                raise TypeError(f"{config.__name__}.{self.key} must default to {name!r}")
            if name in self._entries and self._entries[name].config is not config:
                raise ValueError(f"{self.what} {name!r} is registered twice "
                                 f"({self._entries[name].config.__module__} and {config.__module__})")
            self._entries[name] = Entry(name, config, builder, display or name, frozenset(traits))
            return config

        return decorate

    def _fill(self) -> None:
        if not self._filled:
            for module in self.builtins:
                importlib.import_module(module)
            self._filled = True

    def load_plugins(self) -> None:
        """Import the modules installed packages declare under ``group`` (once)."""
        self._fill()
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for point in entry_points(group=self.group):
            try:
                point.load()
            except Exception as error:
                raise PluginError(f"the {self.what} plugin {point.name!r} ({point.value}, declared under "
                                  f"{self.group} by {point.dist.name if point.dist else 'a package'}) failed to load: "
                                  f"{type(error).__name__}: {error}; fix or uninstall that package") from error

    def find(self, name: str) -> Any:
        self._fill()
        if name not in self._entries:
            self.load_plugins()
        return self._entries.get(name)

    def get(self, name: str) -> Any:
        entry = self.find(name)
        if entry is None:
            raise KeyError(self.unknown(name))
        return entry

    def unknown(self, name: str) -> str:
        """'unknown <what> 'x'; did you mean ...' over every entry, plugins included."""
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of {known}"
        return f"unknown {self.what} {name!r}; {hint}"

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[Any]:
        """Every entry, in registration order (built-ins first)."""
        return [entry for _, entry in self.items()]

    def items(self) -> list[tuple[str, Any]]:
        """(name, entry) for every entry, in registration order (built-ins first)."""
        self.load_plugins()
        return list(self._entries.items())

    def display(self, name: str) -> str:
        entry = self.find(name)
        return entry.display if entry is not None else name


def provider(module: str) -> tuple[str, str]:
    """The installed package that provides ``module`` and its version: aepg for the built-ins, the
    package whose aepg entry points name the module's top-level package for a plugin, else the
    distribution Python maps that package to ("unknown" where none is installed)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    top = module.split(".")[0]
    if top == "aepg":
        from aepg import __version__

        return "aepg", __version__
    for catalog in CATALOGS.values():
        for point in entry_points(group=catalog.group):
            if point.module.split(".")[0] == top and point.dist is not None:
                return point.dist.name, point.dist.version
    name = (packages_distributions().get(top) or [top])[0]
    try:
        return name, version(name)
    except PackageNotFoundError:
        return name, "unknown"


OBJECTIVES = Catalog("objective", "aepg.objectives", ("aepg.objectives",))
METHODS = Catalog("training method", "aepg.methods", ("aepg.models.peft",))
DATASETS = Catalog("dataset", "aepg.datasets", ("aepg.benchmarks",))
PARTS = Catalog("method part", "aepg.parts", ("aepg.models.parts",))
SCHEDULES = Catalog("a_t schedule", "aepg.schedules", ("aepg.schedules",))
OPTIMIZERS = Catalog("optimizer", "aepg.optimizers", ("aepg.optim",))
LR_SCHEDULES = Catalog("learning-rate schedule", "aepg.lr_schedules", ("aepg.optim",))
SEARCHERS = Catalog("search algorithm", "aepg.searchers", ("aepg.sweep.searchers",), key="algorithm")
SCHEDULERS = Catalog("scheduler", "aepg.schedulers", ("aepg.sweep.schedulers",))
PROTOCOLS = Catalog("sweep protocol", "aepg.protocols", tuple(f"aepg.sweep.protocols.{name}" for name in (
    "plain", "trade_off", "ladder", "seeds", "paired")))
CATALOGS = {"objectives": OBJECTIVES, "schedules": SCHEDULES, "methods": METHODS, "parts": PARTS,
            "datasets": DATASETS, "optimizers": OPTIMIZERS, "lr_schedules": LR_SCHEDULES, "searchers": SEARCHERS,
            "schedulers": SCHEDULERS, "protocols": PROTOCOLS}
"""Every catalogue by the name ``aepg list`` takes."""

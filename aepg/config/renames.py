"""Every name aepg has changed, in one table, and the one way an old name is read.

A config key or section renamed or moved (``model.peft`` is ``model.method``; ``train.momentum``
moved into ``train.optimizer``), a tag renamed apart from a look-alike, and a Python name a plugin
may import (``PeftModule`` is ``MethodModule``) is one row: the old name, the new one, the aepg
version that changed it and, where the values' meaning changed too, how an old value reads. The table is applied to each config layer before layers merge (each file
of an ``extends`` chain, a sweep's ``base_overrides``, each command-line override, a saved config),
to a sweep's searched, ``when`` and ``compare`` keys, and to params and tags logged by an earlier
aepg, so an old name anywhere means exactly what the new name would; a module that held a renamed
Python name answers it through ``old_names``. A notice says so, once per name and process.
"""

from __future__ import annotations

import copy
import importlib
import logging
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Rename:
    old: str
    """The dotted key or section (a tag's name, for tags) as an earlier aepg wrote it."""
    new: str
    since: str
    """The aepg version that changed it."""
    values: tuple[tuple[Any, Any], ...] = ()
    """Old value -> the value it means now, where the meaning changed too (``train.autocast``)."""
    of: Literal["config", "tag", "python"] = "config"

    def value(self, old: Any) -> Any:
        """What an old value means under the new name."""
        for before, after in self.values:
            if str(old).lower() == str(before).lower():
                return after
        return old


_DATASET_KEYS = ("split_seed", "cache", "short_side", "cache_dir", "cache_key", "on_bad_image")

RENAMES: tuple[Rename, ...] = (
    Rename("model.peft", "model.method", "0.1.0"),
    Rename("schedule", "annealing", "0.1.0"),
    Rename("model.method.lae", "model.method.parts.lae.enabled", "0.1.0"),
    Rename("model.method.lae_decay", "model.method.parts.lae.decay", "0.1.0"),
    Rename("train.autocast", "train.precision", "0.1.0", values=((True, "auto"), (False, "32-true"))),
    Rename("train.momentum", "train.optimizer.momentum", "0.1.0"),
    Rename("train.nesterov", "train.optimizer.nesterov", "0.1.0"),
    Rename("train.warmup_epochs", "train.lr_schedule.warmup_epochs", "0.1.0"),
    Rename("train.lr_milestones", "train.lr_schedule.milestones", "0.1.0"),
    Rename("train.lr_gamma", "train.lr_schedule.gamma", "0.1.0"),
    *(Rename(f"benchmark.{key}", f"benchmark.dataset.{key}", "0.1.0") for key in _DATASET_KEYS),
    Rename("aepg.ray_node_ids", "aepg.worker_node_ids", "0.1.0", of="tag"),
    Rename("aepg.ray_node_id", "aepg.trial_node_id", "0.1.0", of="tag"),
    Rename("aepg.level", "aepg.levels_done", "0.1.0", of="tag"),
    Rename("params_peft", "params_method", "0.2.0", of="tag"),
    Rename("aepg.models.peft.base.PeftModule", "aepg.models.peft.base.MethodModule", "0.2.0", of="python"),
    Rename("aepg.models.peft.base.TaskData", "aepg.models.contract.TaskData", "0.2.0", of="python"),
    Rename("aepg.models.peft.base.ActivatedPart", "aepg.models.contract.ActivatedPart", "0.2.0", of="python"),
    Rename("aepg.models.peft.base.full_precision", "aepg.models.contract.full_precision", "0.2.0", of="python"),
    Rename("aepg.models.peft.PeftError", "aepg.models.peft.MethodError", "0.2.0", of="python"),
    Rename("aepg.models.peft.attach.attach_peft", "aepg.models.peft.attach.attach_method", "0.2.0", of="python"),
)
"""In the order the changes happened: a key renamed twice (``model.peft.lae``) reads through both rows."""

CONFIG_RENAMES = tuple(r for r in RENAMES if r.of == "config")
TAG_RENAMES = tuple(r for r in RENAMES if r.of == "tag")
PYTHON_RENAMES = tuple(r for r in RENAMES if r.of == "python")

_SAID: set[str] = set()


def notice(rename: Rename) -> None:
    """Say once per process that an old name was read as its new one."""
    if rename.old not in _SAID:
        _SAID.add(rename.old)
        logging.getLogger("aepg").warning("%s is deprecated since aepg %s: read as %s", rename.old, rename.since,
                                          rename.new)


def _pop(data: dict, dotted: str) -> tuple[bool, Any]:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        return False, None
    return True, node.pop(leaf)


def _as_section(value: Any) -> Any:
    """A catalogue entry given by its name alone, written out (``{kind: name}``) so keys can join it."""
    return {"kind": value} if isinstance(value, str) else value


def _put(data: dict, dotted: str, value: Any) -> None:
    """Set ``dotted`` to ``value`` under what ``data`` already holds there, which wins (a layer that
    names a key both ways means the new name's value)."""
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = _as_section(node.get(part))
        node[part] = child if isinstance(child, dict) else {}
        node = node[part]
    if leaf not in node or node[leaf] is None:
        node[leaf] = value
        return
    held, value = _as_section(node[leaf]), _as_section(value)
    if isinstance(held, dict) and isinstance(value, dict):
        node[leaf] = _merged(value, held)


def _merged(under: dict, over: dict) -> dict:
    merged = dict(under)
    for key, value in over.items():
        merged[key] = _merged(under[key], value) if isinstance(value, dict) and isinstance(under.get(key), dict) else value
    return merged


def renamed_layer(data: Any) -> Any:
    """A config layer (a mapping of nested keys) with every old name under its new one."""
    if not isinstance(data, dict):
        return data
    data = copy.deepcopy(data)
    for rename in CONFIG_RENAMES:
        found, value = _pop(data, rename.old)
        if found:
            notice(rename)
            _put(data, rename.new, rename.value(value))
    return data


def current_key(key: str, quiet: bool = False) -> str:
    """A dotted key (or a key under a renamed section) by its current name, with a notice unless ``quiet``."""
    for rename in CONFIG_RENAMES:
        if key == rename.old or key.startswith(rename.old + "."):
            if not quiet:
                notice(rename)
            key = rename.new + key[len(rename.old):]
    return key


def current_value(key: str, value: Any) -> Any:
    """What ``value`` of the old key ``key`` means under its current name."""
    for rename in CONFIG_RENAMES:
        if key == rename.old:
            value, key = rename.value(value), rename.new
    return value


def _earlier_names(name: str, renames: tuple[Rename, ...]) -> list[tuple[str, Rename | None]]:
    """``name`` and every name an earlier aepg gave it (with the row that renamed it), newest first."""
    names: list[tuple[str, Rename | None]] = [(name, None)]
    for rename in reversed(renames):
        for known, _ in list(names):
            if known == rename.new or known.startswith(rename.new + "."):
                names.append((rename.old + known[len(rename.new):], rename))
    return names


def logged_param(params: dict[str, str], key: str) -> str | None:
    """A run's param ``key``, or the same param logged under a name an earlier aepg gave it (its
    value read as it means now)."""
    for name, rename in _earlier_names(key, CONFIG_RENAMES):
        if name in params:
            return params[name] if rename is None else str(rename.value(params[name]))
    return None


def old_names(module: str):
    """``__getattr__`` for ``module``: the names it held before a rename, each found where it is now
    (with a notice), so that a plugin written against an earlier aepg still imports."""
    def __getattr__(name: str):
        for rename in PYTHON_RENAMES:
            if rename.old == f"{module}.{name}":
                notice(rename)
                where, _, attribute = rename.new.rpartition(".")
                return getattr(importlib.import_module(where), attribute)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return __getattr__


def tag_of(tags: dict[str, str], name: str) -> str | None:
    """A run's tag ``name``, or the same tag under the name an earlier aepg gave it."""
    return next((tags[found] for found, _ in _earlier_names(name, TAG_RENAMES) if found in tags), None)

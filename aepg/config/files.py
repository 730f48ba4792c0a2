"""Config files and overrides: YAML read as mappings (OmegaConf, so ``${...}`` interpolation
works), ``extends`` chains and ``key=value`` overrides merged layer over layer, each layer read
under today's names first (``aepg.config.renames``), and the resolved config written back out."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aepg.config.base import ConfigError
from aepg.config.entries import dispatched
from aepg.config.renames import current_key, renamed_layer
from aepg.config.sections import RunConfig, flatten, validate


def _kinds_written_out(data: Any) -> Any:
    """``data`` (an OmegaConf mapping) with each catalogue section given by its name alone
    (``dataset: cifar100``) written out as ``{kind: cifar100}``, so that a later layer or override
    of one of the entry's keys (``benchmark.dataset.split_seed=1``) keeps the kind."""
    for path in dispatched(RunConfig):
        value = OmegaConf.select(data, path, default=None, throw_on_resolution_failure=False)
        if isinstance(value, str):
            OmegaConf.update(data, path, {"kind": value}, merge=False)
    return data


def merge_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with dotted ``key=value`` overrides applied in order (values parsed as YAML; an old
    key name means what its new name would)."""
    merged = OmegaConf.create(data)
    for item in overrides:
        key, equals, _ = item.partition("=")
        if not equals:
            raise ConfigError([(item, "overrides take the form key=value")])
        if not key.strip():
            raise ConfigError([(item, "an override needs a dotted key before '=', e.g. train.lr=1e-3")])
        try:
            layer = renamed_layer(OmegaConf.to_container(OmegaConf.from_dotlist([item.strip()])))
            merged = OmegaConf.merge(_kinds_written_out(merged), layer)
        except (OmegaConfBaseException, TypeError, ValueError, yaml.YAMLError) as error:
            if isinstance(error, TypeError):
                where = OmegaConf.select(merged, key.strip(), default=None)
                detail = f"{key} is {'a section' if OmegaConf.is_dict(where) else 'a value'}"
            else:
                detail = " ".join(str(error).split())[:200]
            raise ConfigError([(key, f"cannot apply {item!r}: {detail}")]) from None
    try:
        return OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "overrides"
        raise ConfigError([(str(key), str(error).splitlines()[0])]) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping; ConfigError naming the file for anything else."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError([(str(path), "is a folder, not a config file")])
    _refuse_pipes(path)
    if not path.is_file():
        raise ConfigError([(str(path), "config file not found")])
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([(str(path), f"not a UTF-8 text file (byte {error.start}); is it a binary file?")]) from None
    except OSError as error:
        raise ConfigError([(str(path), f"cannot be read ({error.strerror})")]) from None
    if "\x00" in text:
        raise ConfigError([(str(path), "holds NUL bytes; is it a binary file?")])
    try:
        data = yaml.safe_load(text)
        if isinstance(data, dict) and data:  # OmegaConf's reader also refuses duplicate keys
            data = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        first = str(error).strip().splitlines()
        raise ConfigError([(str(path), f"not valid YAML: {' '.join(first[:3])}")]) from None
    if data is None or data == {}:
        raise ConfigError([(str(path), "is empty; a config holds a mapping of keys (see configs/)")])
    if not isinstance(data, dict):
        raise ConfigError([(str(path), f"must hold a mapping of config keys, not a {type(data).__name__}")])
    return data


def _refuse_pipes(path: Path) -> None:
    if path.exists() and not path.is_dir() and not stat.S_ISREG(path.stat().st_mode):
        raise ConfigError([(str(path), "is a pipe or device, not a config file: save the config to a file (its "
                            "extends are read relative to it, and a run keeps its path)")])


def read_run_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A run config file with its ``extends`` (a path or list of paths, relative to the file)
    merged underneath it, in order: presets share a protocol and add a benchmark or PEFT part.
    Each file is read under today's key names before the files merge."""
    _refuse_pipes(Path(path))
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError([("extends", f"{path} extends itself")])
    data = read_yaml(path)
    parents = data.pop("extends", [])
    parents = [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list):
        raise ConfigError([(f"{path.name}: extends", "must be a path or a list of paths")])
    for i, parent in enumerate(parents):
        if not isinstance(parent, str) or not parent:
            raise ConfigError([(f"{path.name}: extends[{i}]", f"must be a path relative to {path.name}, got {parent!r}")])
    return merge_nested(*(read_run_yaml(path.parent / parent, (*_seen, path)) for parent in parents),
                        renamed_layer(data))


def _clash(base: dict, layer: dict, prefix: str = "") -> str | None:
    """The first key where ``layer`` puts a list over a section or a section over a list."""
    for key, value in layer.items():
        below = base.get(key)
        if below is not None and isinstance(below, dict) != isinstance(value, dict) and \
                (isinstance(below, (dict, list)) and isinstance(value, (dict, list))):
            return f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(below, dict) and (found := _clash(below, value, f"{prefix}{key}.")):
            return found
    return None


def merge_nested(*layers: dict[str, Any]) -> dict[str, Any]:
    """Nested mappings merged in order: later layers override earlier ones key by key."""
    merged: dict[str, Any] = {}
    for layer in layers:
        try:
            merged = OmegaConf.to_container(OmegaConf.merge(_kinds_written_out(OmegaConf.create(merged)),
                                                            _kinds_written_out(OmegaConf.create(layer))))
        except (OmegaConfBaseException, TypeError, ValueError) as error:
            key = _clash(merged, layer) or "config"
            raise ConfigError([(key, f"cannot merge: a section and a list meet here ({' '.join(str(error).split())[:120]})")]) from None
    return merged


def ignored_overrides(cfg: RunConfig, overrides: list[str]) -> list[str]:
    """Overrides the resolved config does not hold: keys of a catalogue entry other than the one
    chosen (``train.optimizer.momentum=0.5`` under Adam) are checked, then left out; say so."""
    held = flatten(cfg.model_dump(mode="json"))
    notes = []
    for item in overrides:
        key = current_key(item.partition("=")[0].strip(), quiet=True)
        if key in held or any(name.startswith(key + ".") for name in held):
            continue
        section = max((path for path in dispatched(RunConfig) if key.startswith(path + ".")), key=len, default=None)
        if section is not None:
            kind = held.get(f"{section}.kind")
            notes.append(f"{item.strip()} is ignored: {section} is {kind}, which has no key {key[len(section) + 1:]}")
    return notes


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    return validate(merge_overrides(read_run_yaml(path), list(overrides)))


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML that ``aepg train`` accepts unchanged."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

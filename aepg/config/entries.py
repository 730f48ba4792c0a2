"""Config sections that are catalogue entries, declared once.

A section such as ``objective`` or ``model.method`` is one entry of a catalogue, chosen by its
``kind``. Its field says so in one annotation, ``entry(base, catalog, default)``; everything that
treats the section as an entry is derived from that declaration (``chosen_sections``): its
validation by the chosen entry's config (``by_kind``), "did you mean" inside it, the entries given by
name alone written out before config layers merge, the keys a sweep may search (``entry_keys``),
the entries a run's manifest names and the setting ``aepg list`` shows for each catalogue.
A mapping of entries by name (``model.method.parts``) is declared with ``entries(...)``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, SerializeAsAny, ValidationError
from pydantic_core import PydanticCustomError

from aepg.catalog import Catalog
from aepg.config.base import EntryConfig, Section

UNKNOWN_KIND = "unknown_kind"


@dataclass(frozen=True)
class Choice:
    """A field's metadata: the section is an entry of ``catalog``, by its ``catalog.key`` (``default``
    when unset); ``many``: a mapping of entries by name, each name its kind (method parts)."""

    catalog: Catalog
    default: str | None
    many: bool = False


def by_kind(catalog: Catalog, value: Any, default: str) -> Any:
    """A section's data validated by the config of the catalogue entry its ``kind`` (the catalogue's
    ``key``) names; a name alone stands for ``{kind: name}``.

    Keys of another entry (a ``kind=`` override may leave the previous kind's keys behind) are
    checked by that entry's config, then dropped as inactive; any other unknown key is an error."""
    named = isinstance(value, str)  # the entry by its name alone
    if named:
        value = {catalog.key: value}
    if not isinstance(value, dict):
        return value
    kind = value.get(catalog.key, default)
    found = catalog.find(kind) if isinstance(kind, str) else None
    if found is None:
        error = PydanticCustomError(UNKNOWN_KIND, "{message}", {"message": catalog.unknown(kind)})
        loc = () if named else (catalog.key,)
        raise ValidationError.from_exception_data(catalog.what, [{"type": error, "loc": loc, "input": kind}])
    own = found.config.model_fields
    if set(value) - set(own):
        owners = {}
        for other in reversed(catalog.entries()):
            owners.update(dict.fromkeys(other.config.model_fields, other))
        inactive = {key: item for key, item in value.items() if key not in own and key in owners}
        for owner in {owners[key].name: owners[key] for key in inactive}.values():
            owner.config.model_validate({key: item for key, item in inactive.items() if owners[key] is owner})
        value = {key: item for key, item in value.items() if key not in inactive}
    return found.config.model_validate(value)


def entry(base: type[EntryConfig], catalog: Catalog, default: str) -> Any:
    """The annotation of a section that is an entry of ``catalog`` (``default`` when unset): validated
    by the chosen entry's config, serialised with the entry's own keys."""
    return Annotated[SerializeAsAny[base], BeforeValidator(lambda value: by_kind(catalog, value, default)),
                     Field(default_factory=lambda: catalog.get(default).config()), Choice(catalog, default)]


def entries(base: type[EntryConfig], catalog: Catalog, validator) -> Any:
    """The annotation of a mapping of entries of ``catalog`` by name (its kind), validated by
    ``validator`` (which places each entry's errors under its name)."""
    return Annotated[dict[str, SerializeAsAny[base]], BeforeValidator(validator), Field(default_factory=dict),
                     Choice(catalog, None, many=True)]


def choice_of(field) -> Choice | None:
    return next((m for m in field.metadata if isinstance(m, Choice)), None)


@lru_cache(maxsize=None)
def chosen_sections(model: type[BaseModel], prefix: str = "") -> dict[str, Choice]:
    """Every section of ``model`` (nested sections too) declared as a catalogue entry, by dotted path."""
    found = {}
    for name, field in model.model_fields.items():
        choice = choice_of(field)
        if choice is not None:
            found[f"{prefix}{name}"] = choice
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):  # an entry's base too
            found.update(chosen_sections(field.annotation, f"{prefix}{name}."))
    return found


def dispatched(model: type[BaseModel]) -> dict[str, tuple[Catalog, str]]:
    """The sections of ``model`` whose keys depend on their kind: the catalogue and the default kind."""
    return {path: (c.catalog, c.default) for path, c in chosen_sections(model).items() if not c.many}


def chosen_entries(cfg: BaseModel) -> dict[str, EntryConfig]:
    """Every entry ``cfg`` chose, by dotted path (a mapping's entries under their names)."""
    found = {}
    for path, choice in chosen_sections(type(cfg)).items():
        value = cfg
        for part in path.split("."):
            value = getattr(value, part)
        if choice.many:
            found.update({f"{path}.{name}": item for name, item in value.items()})
        else:
            found[path] = value
    return found


def setting_of(catalog: Catalog, *models: type[BaseModel]) -> str:
    """The config key that chooses an entry of ``catalog`` in any of ``models`` (``objective.kind``);
    for a mapping of entries, the mapping (``model.method.parts``)."""
    for model in models:
        for path, choice in chosen_sections(model).items():
            if choice.catalog is catalog:
                return path if choice.many else f"{path}.{catalog.key}"
    return catalog.group


def entry_keys(model: type[BaseModel]) -> set[str]:
    """The dotted keys of every entry of every catalogue section of ``model`` (a sweep may search
    any of them, under a ``when`` on the kind); a mapping's under each entry's name."""
    keys = set()
    for path, choice in chosen_sections(model).items():
        for found in choice.catalog.entries():
            if choice.many:
                keys |= {f"{path}.{found.name}.{key}" for key in found.keys()}
            else:
                keys |= {f"{path}.{key}" for key in found.config.model_fields}
    return keys


def kind_of(catalog: Catalog, default: str, data: Any) -> type[BaseModel] | None:
    """The config class a catalogue section (``objective``) takes for ``data``, if its kind is known."""
    found = catalog.find(data.get(catalog.key, default)) if isinstance(data, dict) else None
    return found.config if found else None


SCALAR_TYPES = ("int", "float", "str", "bool")


def pydantic_problems(error: ValidationError, model: type[BaseModel], data: Any = None) -> list[tuple[str, str]]:
    """(dotted key, message) per problem; ``data`` (what was validated) lets "did you mean" look
    inside the sections whose keys depend on their kind."""
    problems: dict[str, str] = {}
    union: dict[str, list[str]] = {}
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        if len(loc) > 1 and loc[-1] in SCALAR_TYPES:  # one error per member of a union: merge them
            union.setdefault(".".join(loc[:-1]), []).append(loc[-1])
            continue
        key = ".".join(loc)
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key" + _suggestion(item["loc"], model, data, dispatched(model))
        elif "input" in item and not isinstance(item["input"], (dict, list)) and item["type"] != UNKNOWN_KIND:
            message += f" (got {item['input']!r})"
        problems.setdefault(key, message)
    for key, types in union.items():
        problems.setdefault(key, f"must be a {' or '.join(types)}")
    return list(problems.items())


def _suggestion(loc: tuple, model: type[BaseModel], data: Any, sections: dict[str, tuple[Catalog, str]]) -> str:
    """'; did you mean ...' for a misspelt key, found by walking the schema (and the data, in
    sections whose kind picks their config) along loc."""
    path = []
    for part in loc[:-1]:
        path.append(str(part))
        data = data.get(str(part)) if isinstance(data, dict) else None
        if ".".join(path) in sections:
            model = kind_of(*sections[".".join(path)], data)
            if model is None:
                return ""
            continue
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ""
        model = field.annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(model.model_fields)}"

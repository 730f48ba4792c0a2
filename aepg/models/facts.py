"""What a timm backbone looks like, known without importing torch or timm again: its family,
depth and width, module names, weight shapes and input settings.

Facts are read once by building the model on the meta device (no memory, no weights) and kept
as small JSON files under ``$AEPG_CACHE`` (default ``~/.cache/aepg``), keyed by the model's
arguments and the installed timm and torch versions, so an upgrade reads them afresh. The CLI
checks configs against them in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from aepg.config import env_path

FORMAT = 3


def cache_dir() -> Path:
    return env_path("AEPG_CACHE", "~/.cache/aepg")


def _versions() -> dict:
    return {"timm": version("timm"), "torch": version("torch"), "format": FORMAT}


def _cached(kind: str, key: dict, compute: Callable[[], object]):
    """``compute()``'s JSON-able result, read from the cache when it holds one for ``key``."""
    text = json.dumps({**key, **_versions()}, sort_keys=True)
    path = cache_dir() / kind / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"
    try:
        return json.loads(path.read_text())["value"]
    except (OSError, ValueError, KeyError):
        pass
    value = compute()
    try:  # written atomically; a read-only or full disk only costs the next check its speed
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
        partial.write_text(json.dumps({"key": json.loads(text), "value": value}))
        partial.replace(path)
    except OSError:
        pass
    return value


def architecture(name: str) -> str:
    """A timm model name without its pretrained tag (``vit_base_patch16_224.augreg_in21k`` -> ``vit_base_patch16_224``)."""
    return name.split(".", 1)[0]


def model_names() -> list[str]:
    """Every architecture timm can build (aepg's own registered ones too)."""

    def compute():
        import timm

        import aepg.models.cifar_resnet  # noqa: F401  (registers the CIFAR ResNets)

        return timm.list_models()

    return _cached("timm-models", {}, compute)


def describe(name: str, image_size: int | None, kwargs: dict) -> dict:
    """Facts of ``timm.create_model(name, ...)`` as aepg creates backbones; ``{"error": ...}`` when
    timm cannot build it with these arguments."""

    def compute():
        import timm
        import torch

        from aepg.models.backbones import creation_kwargs

        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, **creation_kwargs(name, image_size, kwargs))
        except Exception as error:  # bad backbone_kwargs: reported, not raised
            return {"error": f"{type(error).__name__}: {error}"}
        return of_model(model)

    return _cached("backbones", {"name": name, "image_size": image_size, "kwargs": kwargs}, compute)


def of_model(model) -> dict:
    """The facts of a live (or meta-device) timm model."""
    from timm.data import resolve_data_config

    data = resolve_data_config({}, model=model)
    blocks = getattr(model, "blocks", None)
    is_vit = blocks is not None and hasattr(model, "cls_token")
    return {
        "family": type(model).__name__,
        "is_vit": is_vit,
        "depth": len(blocks) if blocks is not None else None,
        "embed_dim": getattr(model, "embed_dim", None),
        "num_features": model.num_features,
        "fused_qkv": bool(is_vit) and all(hasattr(getattr(block, "attn", None), "qkv") for block in blocks),
        "modules": [name for name, _ in model.named_modules() if name],
        "state": {key: list(value.shape) for key, value in model.state_dict().items()},
        "input_size": int(data["input_size"][-1]),
        "mean": [float(m) for m in data["mean"]],
        "std": [float(s) for s in data["std"]],
        "hub": {key: model.pretrained_cfg.get(key) for key in ("hf_hub_id", "hf_hub_filename", "url")},
    }


# -- the frozen prefix (``train.prefix_cache``, ``aepg.models.prefix``) ---------------------------

STEMS = {"EfficientNet": ("conv_stem", "bn1"), "VisionTransformer": ("patch_embed", "_pos_embed", "patch_drop", "norm_pre")}
"""What each timm family runs before its ``blocks``, in order (``forward_features``)."""


def cacheable(family: str, first_block: int | None) -> str | None:
    """Why a backbone of ``family`` has no frozen prefix to cache before ``first_block``, or None."""
    if first_block == 0:
        return "the method adapts the backbone from its first block on (or reads its whole input): nothing before it is frozen"
    if first_block is not None and family not in STEMS:
        return f"aepg knows where the blocks of {', '.join(STEMS)} backbones start, not of {family}"
    return None

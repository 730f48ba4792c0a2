"""ResNets for 32-pixel images, registered with timm (``resnet18_cifar``, ``resnet50_cifar``).

The from-scratch CIFAR recipe's ResNet: timm's ResNet with its ImageNet stem (a 7x7 stride-2
convolution and max pooling, which leave a 32-pixel image a 1x1 map) replaced by one 3x3 stride-1
convolution, as in the CIFAR ResNets of He et al. (2016). No pretrained weights are published:
train with ``model.weights: random`` (or load a checkpoint file of this architecture).
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class CifarResNet(ResNet):
    """timm's ResNet with a 3x3 stride-1 stem and no max pooling."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conv1 = nn.Conv2d(self.conv1.in_channels, self.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        self.maxpool = nn.Identity()
        self.feature_info[0]["reduction"] = 1


def _config() -> dict:
    return {"num_classes": 100, "input_size": (3, 32, 32), "pool_size": (4, 4), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": CIFAR100_MEAN, "std": CIFAR100_STD,
            "first_conv": "conv1", "classifier": "fc"}


default_cfgs = generate_default_cfgs({"resnet18_cifar": _config(), "resnet50_cifar": _config()})


def _create(variant: str, block: type, layers: tuple[int, ...], pretrained: bool, **kwargs) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, block=block, layers=layers, **kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-18 for 32-pixel images."""
    return _create("resnet18_cifar", BasicBlock, (2, 2, 2, 2), pretrained, **kwargs)


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-50 for 32-pixel images."""
    return _create("resnet50_cifar", Bottleneck, (3, 4, 6, 3), pretrained, **kwargs)

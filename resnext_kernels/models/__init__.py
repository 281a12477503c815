"""Model zoo: torchvision-compatible ResNet/ResNeXt/Wide ResNet and timm-compatible SE-ResNeXt.

Every builder takes num_classes and zero_init_residual, plus any other ResNet keyword. Weights
are never downloaded: load a local checkpoint with `load_checkpoint(model, path)`.
"""

import torch

from .resnet import BasicBlock, Bottleneck, ResNet
from .seresnext import SEBottleneck, SEModule, SEResNeXt

__all__ = [
    "BasicBlock", "Bottleneck", "ResNet", "SEBottleneck", "SEModule", "SEResNeXt",
    "load_checkpoint", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
    "wide_resnet101_2", "seresnext50_32x4d", "seresnext101_32x4d", "seresnext101_32x8d",
]


def resnet18(**kw):
    return ResNet(BasicBlock, [2, 2, 2, 2], **kw)


def resnet34(**kw):
    return ResNet(BasicBlock, [3, 4, 6, 3], **kw)


def resnet50(**kw):
    return ResNet(Bottleneck, [3, 4, 6, 3], **kw)


def resnet101(**kw):
    return ResNet(Bottleneck, [3, 4, 23, 3], **kw)


def resnet152(**kw):
    return ResNet(Bottleneck, [3, 8, 36, 3], **kw)


def resnext50_32x4d(**kw):
    return ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4, **kw)


def resnext101_32x8d(**kw):
    return ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=8, **kw)


def resnext101_64x4d(**kw):
    return ResNet(Bottleneck, [3, 4, 23, 3], groups=64, width_per_group=4, **kw)


def wide_resnet50_2(**kw):
    return ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=128, **kw)


def wide_resnet101_2(**kw):
    return ResNet(Bottleneck, [3, 4, 23, 3], width_per_group=128, **kw)


def seresnext50_32x4d(**kw):
    return SEResNeXt([3, 4, 6, 3], groups=32, width_per_group=4, **kw)


def seresnext101_32x4d(**kw):
    return SEResNeXt([3, 4, 23, 3], groups=32, width_per_group=4, **kw)


def seresnext101_32x8d(**kw):
    return SEResNeXt([3, 4, 23, 3], groups=32, width_per_group=8, **kw)


def load_checkpoint(model: torch.nn.Module, path: str, strict: bool = True):
    """Loads a local checkpoint (a state_dict, or a dict holding one under 'state_dict' or
    'model') into `model`; returns the model. No network access."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    model.load_state_dict(state, strict=strict)
    return model

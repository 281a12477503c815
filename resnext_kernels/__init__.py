"""resnext_kernels: fused grouped-conv + BN + ReLU and squeeze-and-excitation kernels.

Public surface:
    ops.grouped_conv_bn_relu, ops.fold_batchnorm   the fused conv op (torch.ops.resnext_kernels.*)
    ops.grouped_conv_bn_relu_train                 the same with train-mode BN (batch statistics)
    ops.squeeze_excite                             the fused SE block (+ bottleneck tail)
    replace_modules(model), restore_modules(model)  fused ops into torchvision / timm / our models
    models                                         ResNet, ResNeXt, Wide ResNet, SE-ResNeXt builders
    build_info()                                   what was compiled, and what loaded
    available_backends(device=None)                which backends work here, and why not
    clear_caches()                                 forget the cached BN folds (see _derived.py)
"""

from ._derived import clear_caches
from ._extension import build_info
from .backends import available_backends
from . import models, ops
from .ops import (fold_batchnorm, grouped_conv_bn_relu, grouped_conv_bn_relu_train,
                  squeeze_excite)
from .replace import replace_modules, replacement_report, restore_modules

__all__ = [
    "available_backends",
    "build_info",
    "clear_caches",
    "fold_batchnorm",
    "grouped_conv_bn_relu",
    "grouped_conv_bn_relu_train",
    "models",
    "ops",
    "replace_modules",
    "replacement_report",
    "restore_modules",
    "squeeze_excite",
]
__version__ = "0.1.0"

"""resnext_kernels: fused grouped-conv + BN + ReLU and squeeze-and-excitation kernels.

Public surface:
    ops.grouped_conv_bn_relu, ops.fold_batchnorm   the fused conv op (torch.ops.resnext_kernels.*)
    ops.squeeze_excite                             the fused SE block (+ bottleneck tail)
    build_info()                                   what was compiled, and what loaded
    available_backends(device=None)                which backends work here, and why not
"""

from ._extension import build_info
from .backends import available_backends
from . import ops
from .ops import fold_batchnorm, grouped_conv_bn_relu, squeeze_excite

__all__ = [
    "available_backends",
    "build_info",
    "fold_batchnorm",
    "grouped_conv_bn_relu",
    "ops",
    "squeeze_excite",
]
__version__ = "0.1.0"

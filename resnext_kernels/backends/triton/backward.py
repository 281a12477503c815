"""The Triton backend's backward of the fused op: its own dgrad and wgrad kernels
(grouped_conv_backward.py) when RESNEXT_KERNELS_TRITON_BACKWARD=kernels (the dgrad kernel alone,
with aten's wgrad, when =dgrad), else aten's through the reference backend. aten's is the
default: on the H100 at 659b2c1 the kernels' backward of resnext50's grouped layers took 26.5 ms
against 25.7 ms for aten's through the same glue in channels_last, 31.9 against 20.6 ms in NCHW
(fp16, batch 128; docs/KERNELS.md, "Sixth GPU session"). Both read the mask that the Triton
forward saved."""

from .. import reference
from ..backward_choice import backward_choice, runs_kernel
from . import grouped_conv_backward as kernels

TRITON_BACKWARD_ENV = "RESNEXT_KERNELS_TRITON_BACKWARD"


def triton_backward_kernels() -> str:
    """Which backward the triton backend runs: "aten", "kernels" or "dgrad"
    (TRITON_BACKWARD_ENV)."""
    return backward_choice(TRITON_BACKWARD_ENV)


def grouped_conv_dgrad(grad_y, mask, weight, scale, input_size, stride, padding, dilation,
                       groups, channels_last):
    chosen = kernels if runs_kernel(TRITON_BACKWARD_ENV, "dgrad") else reference
    return chosen.grouped_conv_dgrad(grad_y, mask, weight, scale, input_size, stride, padding,
                                     dilation, groups, channels_last)


def grouped_conv_wgrad(grad_y, mask, x, weight, scale, stride, padding, dilation, groups):
    chosen = kernels if runs_kernel(TRITON_BACKWARD_ENV, "wgrad") else reference
    return chosen.grouped_conv_wgrad(grad_y, mask, x, weight, scale, stride, padding, dilation,
                                     groups)

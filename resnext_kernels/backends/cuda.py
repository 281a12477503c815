"""The C++/CUDA backend: thin calls into the ops that resnext_kernels._C registers."""

import torch

from .. import relu_mask
from .reference import grouped_conv_dgrad, grouped_conv_wgrad  # noqa: F401  (see below)


def grouped_conv_bn_relu(x, weight, scale, shift, stride, padding, dilation, groups, relu):
    return torch.ops.resnext_kernels.grouped_conv_bn_relu_cuda(
        x, weight, scale, shift, stride, padding, dilation, groups, relu
    )


def grouped_conv_bn_relu_masked(x, weight, scale, shift, stride, padding, dilation, groups,
                                relu):
    """(y, the ReLU mask). Not yet in the CUDA kernels' epilogue: the mask is read from y, one
    more pass over the output (the Triton kernels store it as they store y)."""
    y = grouped_conv_bn_relu(x, weight, scale, shift, stride, padding, dilation, groups, relu)
    if relu:
        return y, relu_mask.from_output(y)
    return y, y.new_empty((0, y.shape[1]), dtype=torch.uint8)


# grouped_conv_dgrad and grouped_conv_wgrad: the reference backend's (aten) until the CUDA
# backward kernels exist (issue 15); imported above, so the op finds them here.


def squeeze_excite(u, w1, b1, w2, b2, residual, relu):
    return torch.ops.resnext_kernels.squeeze_excite_cuda(u, w1, b1, w2, b2, residual, relu)

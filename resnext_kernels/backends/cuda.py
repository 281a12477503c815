"""The C++/CUDA backend: thin calls into the ops that resnext_kernels._C registers."""

import torch

from .. import relu_mask
from . import reference
from .cuda_plan import cuda_conv_path
from .reference import grouped_conv_dgrad, grouped_conv_wgrad  # noqa: F401  (see below)


def grouped_conv_bn_relu(x, weight, scale, shift, stride, padding, dilation, groups, relu):
    return torch.ops.resnext_kernels.grouped_conv_bn_relu_cuda(
        x, weight, scale, shift, stride, padding, dilation, groups, relu
    )


def grouped_conv_bn_relu_masked(x, weight, scale, shift, stride, padding, dilation, groups,
                                relu):
    """(y, the ReLU mask). Not yet in the CUDA kernels' epilogue: the mask is read from y, one
    more pass over the output (the Triton kernels store it as they store y). Where the call runs
    the WMMA kernel on packed groups (cpg < 16), whose 0 * NaN carries one group's non-finite
    input into the others' y (documented in docs/KERNELS.md), the mask comes from the
    reference's forward instead, so the other groups' gradients stay right."""
    y = grouped_conv_bn_relu(x, weight, scale, shift, stride, padding, dilation, groups, relu)
    if not relu:
        return y, y.new_empty((0, y.shape[1]), dtype=torch.uint8)
    path = cuda_conv_path(x, weight, stride, padding, dilation, groups,
                          device_major=torch.cuda.get_device_capability(x.device)[0],
                          allow_tf32=torch.backends.cudnn.allow_tf32)
    if path == "wmma" and x.shape[1] // groups < 16:
        _, mask = reference.grouped_conv_bn_relu_masked(x, weight, scale, shift, stride,
                                                        padding, dilation, groups, relu)
        return y, mask
    return y, relu_mask.from_output(y)


# grouped_conv_dgrad and grouped_conv_wgrad: the reference backend's (aten) until the CUDA
# backward kernels exist (issue 15); imported above, so the op finds them here.


def squeeze_excite(u, w1, b1, w2, b2, residual, relu):
    return torch.ops.resnext_kernels.squeeze_excite_cuda(u, w1, b1, w2, b2, residual, relu)

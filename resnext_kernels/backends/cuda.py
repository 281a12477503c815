"""The C++/CUDA backend: thin calls into the ops that resnext_kernels._C registers."""

import torch


def grouped_conv_bn_relu(x, weight, scale, shift, stride, padding, dilation, groups, relu):
    return torch.ops.resnext_kernels.grouped_conv_bn_relu_cuda(
        x, weight, scale, shift, stride, padding, dilation, groups, relu
    )


def squeeze_excite(u, w1, b1, w2, b2, residual, relu):
    return torch.ops.resnext_kernels.squeeze_excite_cuda(u, w1, b1, w2, b2, residual, relu)

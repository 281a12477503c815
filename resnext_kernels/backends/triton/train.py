"""The Triton backend's train-mode BatchNorm (issue 16), in Triton kernels end to end:

forward   the conv (v3 where it applies, else v2) writes z and, in its epilogue, the batch
          statistics' partials per 32 pixels (channel_stats.py); a fixed-order reduction makes
          the mean and the biased variance; one kernel normalizes, applies the ReLU and stores
          y and the ReLU mask (batchnorm_train.py).
backward  one kernel's per-tile sums of gp and gp * x_hat, the same fixed-order reduction, and
          grad_z's per-channel coefficients (batchnorm_train.py); then the dgrad and wgrad
          kernels form grad_z in their prologue from grad_y, the mask, z and the coefficients
          (grouped_conv_backward.py), or, where aten's conv backward is chosen
          (RESNEXT_KERNELS_TRITON_BACKWARD), one kernel writes grad_z for it.
The formulas are those of backends/batchnorm_train.py (the torch-op version the tests compare
with)."""

import torch
from torch._prims_common import suggest_memory_format

from ... import relu_mask
from .. import batchnorm_train as batchnorm_train_ops
from ..backward_choice import runs_kernel
from . import backward, batchnorm_train
from . import grouped_conv_backward as kernels
from .backward import TRITON_BACKWARD_ENV
from .channel_stats import STATS_ROWS, reduce_partials
from .grouped_conv_bn_relu import grouped_conv_with_stats


def grouped_conv_bn_relu_train(x, weight, gamma, beta, eps, stride, padding, dilation, groups,
                               relu):
    z, partials = grouped_conv_with_stats(x, weight, stride, padding, dilation, groups)
    M = relu_mask.pixels(z)
    if M == 0:  # batch 0: nothing to normalize; aten leaves the statistics alone
        mean = torch.zeros(z.shape[1], dtype=torch.float32, device=z.device)
        var = torch.zeros_like(mean)
    else:
        mean, var = reduce_partials(partials, M, STATS_ROWS, welford=True)
    y, mask = batchnorm_train.normalize(z, mean, var, gamma, beta, eps, relu)
    return y, mask, z, mean, var


def batchnorm_train_backward_sums(grad_y, mask, z, mean, var, gamma, eps):
    return batchnorm_train.backward_sums(grad_y, mask, z, mean, var, gamma, eps)


def grouped_conv_bn_train_backward(grad_y, mask, z, coef, x, weight, stride, padding, dilation,
                                   groups, need_x, need_weight):
    """(grad_x, grad_weight; an empty tensor for one not wanted). Where this backend's dgrad
    and wgrad kernels run for every gradient wanted (TRITON_BACKWARD_ENV, read on every call),
    they form grad_z in their prologue; otherwise grad_z is written once and each gradient
    comes from the chosen dgrad/wgrad (aten's or the kernels)."""
    wanted = [op for op, need in (("dgrad", need_x), ("wgrad", need_weight)) if need]
    if not all(runs_kernel(TRITON_BACKWARD_ENV, op) for op in wanted):
        return batchnorm_train_ops.conv_backward(
            backward.grouped_conv_dgrad, backward.grouped_conv_wgrad,
            batchnorm_train.grad_z(grad_y, mask, z, coef), x, weight, stride, padding, dilation,
            groups, need_x, need_weight)
    C_out = weight.shape[0]
    unit = torch.ones(C_out, dtype=torch.float32, device=z.device)
    grad_x, grad_w = z.new_empty(0), z.new_empty(0)
    if need_x:
        grad_x = kernels.grouped_conv_dgrad(
            grad_y, mask, weight, unit, list(x.shape), stride, padding, dilation, groups,
            suggest_memory_format(x) == torch.channels_last, bn_train=(z, coef))
    if need_weight:
        grad_w = kernels.grouped_conv_wgrad(grad_y, mask, x, weight, unit, stride, padding,
                                            dilation, groups, bn_train=(z, coef))[0]
    return grad_x, grad_w

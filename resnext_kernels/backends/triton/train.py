"""The Triton backend's train-mode BatchNorm (issue 16), in Triton kernels end to end:

forward   the conv (v3 where it applies, else v2) writes z and, in its epilogue, the batch
          statistics' partials per 32 pixels (channel_stats.py); a fixed-order reduction makes
          the mean and the biased variance; one kernel normalizes, applies the ReLU and stores
          y and the ReLU mask (batchnorm_train.py).
backward  one kernel's per-tile sums of gp and gp * x_hat, the same fixed-order reduction, and
          grad_z's per-channel coefficients (batchnorm_train.py); then one kernel writes grad_z
          and the chosen dgrad and wgrad (RESNEXT_KERNELS_TRITON_BACKWARD: aten's or this
          backend's kernels) take it as a plain conv's gradient; or, with this backend's
          kernels and RESNEXT_KERNELS_TRITON_BN_GRAD_Z=prologue, they form grad_z in their
          prologue from grad_y, the mask, z and the coefficients (grouped_conv_backward.py).
The formulas are those of backends/batchnorm_train.py (the torch-op version the tests compare
with)."""

import os

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


# Where grad_z is formed when this backend's own dgrad and wgrad kernels run (read on every
# call, as TRITON_BACKWARD_ENV is): "written" (the default) writes it once and the kernels read
# it as a plain conv's gradient; "prologue" forms it in their prologue and never writes it.
# The prologue saves grad_z's write and read (9.73 against 10.39 GB per resnext50 training step;
# "written" holds one grad_z, z's size, for the conv's backward) but forms grad_z again at every
# tap and channel step: the GPU-free profile predicts the step slower with it (docs/KERNELS.md,
# "Train-mode BatchNorm and the SE backward in the GPU-free profile"). No GPU has measured
# either.
BN_GRAD_Z_ENV = "RESNEXT_KERNELS_TRITON_BN_GRAD_Z"
BN_GRAD_Z_CHOICES = ("written", "prologue")


def bn_grad_z_choice() -> str:
    """BN_GRAD_Z_ENV's choice: one of BN_GRAD_Z_CHOICES."""
    choice = os.environ.get(BN_GRAD_Z_ENV, "").strip() or "written"
    if choice not in BN_GRAD_Z_CHOICES:
        raise ValueError(f"{BN_GRAD_Z_ENV}: expected one of {BN_GRAD_Z_CHOICES}, got {choice!r}")
    return choice


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
    """(grad_x, grad_weight; an empty tensor for one not wanted). grad_z is written once and
    each gradient comes from the chosen dgrad/wgrad (aten's or the kernels:
    TRITON_BACKWARD_ENV); where BN_GRAD_Z_ENV chooses the prologue and this backend's kernels
    run for every gradient wanted, they form grad_z in their prologue instead."""
    wanted = [op for op, need in (("dgrad", need_x), ("wgrad", need_weight)) if need]
    prologue = bn_grad_z_choice() == "prologue"  # (checked on every call, bad values too)
    if not wanted:
        return z.new_empty(0), z.new_empty(0)
    if not (prologue and all(runs_kernel(TRITON_BACKWARD_ENV, op) for op in wanted)):
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

"""The Triton backend's train-mode BatchNorm (issue 16), in Triton kernels end to end:

forward   the conv (v3 where it applies, else v2) writes z and, in its epilogue, the batch
          statistics' partials per 32 pixels (channel_stats.py); a fixed-order reduction makes
          the mean and the biased variance; one kernel normalizes, applies the ReLU and stores
          y and the ReLU mask (batchnorm_train.py).
backward  one kernel's per-tile sums of gp and gp * x_hat, the same fixed-order reduction, then
          one kernel that writes grad_z (batchnorm_train.py); the op's autograd passes grad_z
          to the conv's dgrad and wgrad.
The formulas are those of backends/batchnorm_train.py (the torch-op version the tests compare
with)."""

import torch

from ... import relu_mask
from . import batchnorm_train
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


def batchnorm_train_backward(grad_y, mask, z, mean, var, gamma, eps):
    return batchnorm_train.backward(grad_y, mask, z, mean, var, gamma, eps)

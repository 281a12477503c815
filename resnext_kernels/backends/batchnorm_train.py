"""Train-mode BatchNorm around a backend's conv, in torch ops: what the reference backend runs
around its conv (issue 16, v0), the formulas the triton and cuda backends' kernels
(backends/triton/train.py, csrc/kernels/batchnorm_train.cu) compute, and the version the tests
compare them with.

Forward (the "write z" choice, docs/KERNELS.md "Train-mode BatchNorm"): the backend's conv
writes z = conv(x, w) once; the batch statistics are read from z; y = relu(z * scale + shift)
with scale = gamma / sqrt(var + eps), shift = beta - mean * scale (in fp32, rounded once to
z's dtype: the alpha/beta form of aten's CPU batch_norm); the ReLU mask is taken from y. z is
kept for the backward, as eager autograd keeps BN's input.

Backward: with gp = grad_y where the ReLU passed it, M = N * H_out * W_out and
x_hat = (z - mean) * invstd,
    grad_beta  = sum gp,   grad_gamma = sum gp * x_hat            (fp32, per channel)
    grad_z     = gamma * invstd * (gp - grad_beta / M - x_hat * grad_gamma / M)
rounded to z's dtype (in backward_sums' per-channel coefficient form); the conv's backward
(the backend's dgrad and wgrad) takes grad_z, made here once (the torch-op version), or formed
in a kernel's prologue from grad_y, the mask, z and the coefficients.
"""

import torch

from .. import relu_mask
from ._layout import memory_format

_CHANNELS = (0, 2, 3)


def _per_channel(v):
    return v.view(1, -1, 1, 1)


def conv_then_batchnorm(conv, x, weight, gamma, beta, eps, stride, padding, dilation, groups,
                        relu):
    """(y, relu_mask, z, batch_mean, batch_var): `conv` is a backend's grouped_conv_bn_relu,
    giving z (conv_output). batch_var is the biased variance (the one that normalizes); the
    running statistics take the unbiased one."""
    C_out = weight.shape[0]
    ones = torch.ones(C_out, dtype=torch.float32, device=x.device)
    z = conv_output(conv, x, weight, stride, padding, dilation, groups)
    if z.numel() == 0:  # batch 0: nothing to normalize; aten leaves the statistics alone
        mean, var = torch.zeros_like(ones), torch.zeros_like(ones)
    else:
        # two passes, as F.batch_norm's statistics: an inf keeps its channel's mean inf (and
        # its variance NaN); torch.var_mean's one pass makes that mean NaN on the CPU, so the
        # running_mean would not be nn.BatchNorm2d's
        zf = z.float()
        mean = zf.mean(_CHANNELS)
        var = (zf - _per_channel(mean)).square_().mean(_CHANNELS)
    scale = gamma.float() * torch.rsqrt(var + eps)
    shift = beta.float() - mean * scale
    y = z.float() * _per_channel(scale) + _per_channel(shift)
    if relu:
        y.relu_()
    y = y.to(z.dtype).contiguous(memory_format=memory_format(z))
    if relu:
        mask = relu_mask.from_output(y)
    else:
        mask = torch.empty((0, C_out), dtype=torch.uint8, device=x.device)
    return y, mask, z, mean, var


def conv_output(conv, x, weight, stride, padding, dilation, groups):
    """z = conv(x, weight): a backend's grouped_conv_bn_relu with a unit scale, no shift and no
    ReLU (exact: the reference folds w * 1.0, the kernels' epilogue multiplies by 1.0 and adds
    0.0)."""
    unit = torch.ones(weight.shape[0], dtype=torch.float32, device=x.device)
    return conv(x, weight, unit, torch.zeros_like(unit), stride, padding, dilation, groups, False)


def gradient_before_relu(grad_y, mask):
    """gp in fp32: grad_y where the ReLU passed it (a select: a NaN gradient where the ReLU
    blocked it stays out), all of it without a ReLU (an empty mask)."""
    gp = grad_y.float()
    if mask.shape[0]:
        gp = torch.where(relu_mask.unpack(mask, grad_y.shape, memory_format(grad_y)), gp, 0.0)
    return gp


def backward_sums(grad_y, mask, z, mean, var, gamma, eps):
    """(grad_gamma, grad_beta, the grad_z coefficients), all fp32: BN's training-mode sums
    through the ReLU, and the per-channel coefficients [4, C] = (mean, k_gp, k_x, k_0) of
        grad_z = k_gp * gp + k_x * (z - mean) + k_0,
    k_gp = gamma * invstd, k_x = -k_gp * invstd * grad_gamma / M, k_0 = -k_gp * grad_beta / M
    (the module docstring's grad_z, centred on the mean: no cancellation between k_x * z and
    k_0 where |mean| >> std)."""
    gp = gradient_before_relu(grad_y, mask)
    invstd = torch.rsqrt(var + eps)
    x_hat = (z.float() - _per_channel(mean)) * _per_channel(invstd)
    grad_beta = gp.sum(_CHANNELS)
    grad_gamma = (gp * x_hat).sum(_CHANNELS)
    return grad_gamma, grad_beta, coefficients(grad_gamma, grad_beta, mean, var, gamma, eps,
                                               relu_mask.pixels(z))


def coefficients(grad_gamma, grad_beta, mean, var, gamma, eps, M):
    """backward_sums' [4, C] coefficients (fp32) from the sums."""
    invstd = torch.rsqrt(var + eps)
    k_gp = gamma.float() * invstd
    per_pixel = 1.0 / max(M, 1)
    return torch.stack([mean.float(), k_gp, -k_gp * invstd * grad_gamma * per_pixel,
                        -k_gp * grad_beta * per_pixel])


def grad_z(grad_y, mask, z, coef):
    """grad_z in z's dtype and memory format, from backward_sums' coefficients."""
    mean, k_gp, k_x, k_0 = (_per_channel(c) for c in coef)
    gz = k_gp * gradient_before_relu(grad_y, mask) + k_x * (z.float() - mean) + k_0
    return gz.to(z.dtype).contiguous(memory_format=memory_format(z))


def conv_backward_on_grad_z(dgrad, wgrad, grad_y, mask, z, coef, x, weight, stride, padding,
                            dilation, groups, need_x, need_weight):
    """(grad_x, grad_weight) through the conv: grad_z made once (grad_z), then a backend's
    dgrad and wgrad of the plain conv (no mask, a unit scale); an empty tensor for a gradient
    not wanted."""
    gz = grad_z(grad_y, mask, z, coef)
    return conv_backward(dgrad, wgrad, gz, x, weight, stride, padding, dilation, groups, need_x,
                         need_weight)


def conv_backward(dgrad, wgrad, gz, x, weight, stride, padding, dilation, groups, need_x,
                  need_weight):
    C_out = weight.shape[0]
    no_relu = torch.empty((0, C_out), dtype=torch.uint8, device=gz.device)
    unit = torch.ones(C_out, dtype=torch.float32, device=gz.device)
    grad_x, grad_w = gz.new_empty(0), gz.new_empty(0)  # (outputs of their own: no aliasing)
    if need_x:
        grad_x = dgrad(gz, no_relu, weight, unit, list(x.shape), stride, padding, dilation,
                       groups, memory_format(x) == torch.channels_last)
    if need_weight:
        grad_w = wgrad(gz, no_relu, x, weight, unit, stride, padding, dilation, groups)[0]
    return grad_x, grad_w

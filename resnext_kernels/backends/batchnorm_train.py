"""Train-mode BatchNorm around a backend's conv, in torch ops: what every backend runs today
after its own conv kernel (issue 16, first step), and what the kernels' epilogue (statistics)
and prologue (the BN backward's input) are to absorb.

Forward (the "write z" choice, docs/KERNELS.md "Train-mode BatchNorm"): the backend's conv
writes z = conv(x, w) once; the batch statistics are read from z; y = relu(z * scale + shift)
with scale = gamma / sqrt(var + eps), shift = beta - mean * scale (in fp32, rounded once to
z's dtype: the alpha/beta form of aten's CPU batch_norm); the ReLU mask is taken from y. z is
kept for the backward, as eager autograd keeps BN's input.

Backward: with gp = grad_y where the ReLU passed it, M = N * H_out * W_out and
x_hat = (z - mean) * invstd,
    grad_beta  = sum gp,   grad_gamma = sum gp * x_hat            (fp32, per channel)
    grad_z     = gamma * invstd * (gp - grad_beta / M - x_hat * grad_gamma / M)
rounded to z's dtype; the conv's backward (the backend's dgrad and wgrad ops) takes grad_z.
"""

import torch

from .. import relu_mask

_CHANNELS = (0, 2, 3)


def _memory_format(t):
    if t.is_contiguous():
        return torch.contiguous_format
    return torch._prims_common.suggest_memory_format(t)


def _per_channel(v):
    return v.view(1, -1, 1, 1)


def conv_then_batchnorm(conv, x, weight, gamma, beta, eps, stride, padding, dilation, groups,
                        relu):
    """(y, relu_mask, z, batch_mean, batch_var): `conv` is a backend's grouped_conv_bn_relu,
    run with a unit scale and no shift (exact: the reference folds w * 1.0, the kernels'
    epilogue multiplies by 1.0 and adds 0.0) to give z. batch_var is the biased variance
    (the one that normalizes); the running statistics take the unbiased one."""
    C_out = weight.shape[0]
    ones = torch.ones(C_out, dtype=torch.float32, device=x.device)
    z = conv(x, weight, ones, torch.zeros_like(ones), stride, padding, dilation, groups, False)
    if z.numel() == 0:  # batch 0: nothing to normalize; aten leaves the statistics alone
        mean, var = torch.zeros_like(ones), torch.zeros_like(ones)
    else:
        var, mean = torch.var_mean(z.float(), dim=_CHANNELS, correction=0)
    scale = gamma.float() * torch.rsqrt(var + eps)
    shift = beta.float() - mean * scale
    y = z.float() * _per_channel(scale) + _per_channel(shift)
    if relu:
        y.relu_()
    y = y.to(z.dtype).contiguous(memory_format=_memory_format(z))
    if relu:
        mask = relu_mask.from_output(y)
    else:
        mask = torch.empty((0, C_out), dtype=torch.uint8, device=x.device)
    return y, mask, z, mean, var


def grad_before_conv(grad_y, mask, z, mean, var, gamma, eps):
    """(grad_z in z's dtype and layout, grad_gamma, grad_beta in fp32): BN's training-mode
    backward through the ReLU, from the saved mask and z."""
    gp = grad_y.float()
    if mask.shape[0]:  # a select: a NaN gradient where the ReLU blocked it stays out
        gp = torch.where(relu_mask.unpack(mask, grad_y.shape, _memory_format(grad_y)), gp, 0.0)
    invstd = torch.rsqrt(var + eps)
    x_hat = (z.float() - _per_channel(mean)) * _per_channel(invstd)
    grad_beta = gp.sum(_CHANNELS)
    grad_gamma = (gp * x_hat).sum(_CHANNELS)
    M = relu_mask.pixels(z)
    if M == 0:
        return torch.empty_like(z), grad_gamma, grad_beta
    grad_z = (gp - _per_channel(grad_beta / M) - x_hat * _per_channel(grad_gamma / M)) \
        * _per_channel(gamma.float() * invstd)
    return grad_z.to(z.dtype).contiguous(memory_format=_memory_format(z)), grad_gamma, grad_beta

"""The aten reference backend: what the fused kernels must match, and the CPU default.

grouped_conv_bn_relu folds BN's scale into the weights (in fp32, rounded once to the input
dtype), runs one aten convolution (cuDNN on GPU) with the shift as its bias, then an in-place
ReLU. Its direct-call variant (grouped_conv_bn_relu_direct, plain eager only) reuses the fold
while the same weight, scale and shift tensors are unchanged.
"""

import torch
import torch.nn.functional as F

from .. import relu_mask
from .._derived import DerivedTensors
from . import batchnorm_train
from ._layout import memory_format


# (folded weight, shift in x's dtype) per weight tensor, reused while weight, scale and shift
# are unchanged: repeated direct calls with the same parameters (a fused module's) fold once.
# Only direct calls use it: under the dispatcher the op may run inside a compiled graph, whose
# CUDA-graph trees allow no allocation of theirs to outlive the graph's run.
_FOLDED = DerivedTensors()


def _fold(weight, scale, shift, dtype):
    folded = (weight.float() * scale.float().view(-1, 1, 1, 1)).to(dtype)
    return folded, shift.to(dtype)


def grouped_conv_bn_relu(x, weight, scale, shift, stride, padding, dilation, groups, relu):
    folded, bias = _fold(weight, scale, shift, x.dtype)
    return _conv_relu(x, folded, bias, stride, padding, dilation, groups, relu)


def grouped_conv_bn_relu_direct(x, weight, scale, shift, stride, padding, dilation, groups,
                                relu):
    dtype = x.dtype
    folded, bias = _FOLDED.get((weight, scale, shift), (dtype,),
                               lambda: _fold(weight, scale, shift, dtype))
    return _conv_relu(x, folded, bias, stride, padding, dilation, groups, relu)


def _conv_relu(x, folded, bias, stride, padding, dilation, groups, relu):
    y = F.conv2d(x, folded, bias, stride, padding, dilation, groups)
    if relu:
        y.relu_()
    return y.contiguous(memory_format=memory_format(x))


def grouped_conv_bn_relu_masked(x, weight, scale, shift, stride, padding, dilation, groups,
                                relu):
    """(y, the ReLU mask), the mask read from y before anyone else sees it."""
    y = grouped_conv_bn_relu(x, weight, scale, shift, stride, padding, dilation, groups, relu)
    if relu:
        return y, relu_mask.from_output(y)
    return y, y.new_empty((0, y.shape[1]), dtype=torch.uint8)


def _gradient_before_relu(grad_y, mask):
    """gp = grad_y where the ReLU passed it (all of it without a ReLU: an empty mask).

    A select, not a product: a NaN gradient where the ReLU blocked it stays out (torch's ReLU
    backward is where(y <= 0, 0, grad)). One pass over grad_y, the mask unpacked in grad_y's
    memory format, so that every operand of the where() and gp have grad_y's layout. On the
    H100 (659b2c1) this backward, then with masked_fill(~unpack(...)) in NCHW order and an fp32
    copy of gp, took 1.6-2.8x cuDNN eager's conv + BN + ReLU backward of the same layer
    (resnext50's grouped layers: 2.7x channels_last, 1.9x NCHW); on the CPU the profiler
    counts 9 full-size copies in one such backward.
    """
    if mask.shape[0] == 0:
        return grad_y
    fmt = memory_format(grad_y)
    return torch.where(relu_mask.unpack(mask, grad_y.shape, fmt), grad_y, 0)


def grouped_conv_dgrad(grad_y, mask, weight, scale, input_size, stride, padding, dilation,
                       groups, channels_last):
    """grad_x: aten's input gradient of the conv that ran (folded weights, x's dtype), in x's
    memory format: the folded weights in it make cuDNN compute in it (its layout choice follows
    the input or the weight, and aten's input here is a stride-0 stand-in). empty_like, not
    contiguous(): a [C, 1, 3, 3] weight counts as channels_last-contiguous in NCHW strides, and
    cuDNN reads the strides."""
    gp = _gradient_before_relu(grad_y, mask)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    folded = _fold(weight, scale, scale, grad_y.dtype)[0]
    folded = torch.empty_like(folded, memory_format=fmt).copy_(folded)
    grad_x = torch.nn.grad.conv2d_input(list(input_size), folded, gp, stride, padding, dilation,
                                        groups)
    return grad_x.contiguous(memory_format=fmt)


def grouped_conv_wgrad(grad_y, mask, x, weight, scale, stride, padding, dilation, groups):
    """(grad_w, grad_scale, grad_shift): aten's weight gradient G of the conv that ran, then
    grad_w = G * scale, grad_scale = sum(G * w), grad_shift = sum gp (the sums in fp32; gp's
    sum accumulates in fp32 without an fp32 copy of gp)."""
    gp = _gradient_before_relu(grad_y, mask)
    G = torch.nn.grad.conv2d_weight(x, list(weight.shape), gp, stride, padding, dilation,
                                    groups).float()
    scale32 = scale.float().view(-1, 1, 1, 1)
    grad_w = torch.empty_like(weight).copy_(G * scale32)  # weight's strides, as the op's fake
    grad_scale = (G * weight.float()).sum((1, 2, 3))
    grad_shift = gp.sum((0, 2, 3), dtype=torch.float32)
    return grad_w, grad_scale, grad_shift


def grouped_conv_bn_relu_train(x, weight, gamma, beta, eps, stride, padding, dilation, groups,
                               relu):
    """(y, relu_mask, z, batch_mean, batch_var): train-mode BN around aten's conv
    (batchnorm_train.py)."""
    return batchnorm_train.conv_then_batchnorm(grouped_conv_bn_relu, x, weight, gamma, beta, eps,
                                               stride, padding, dilation, groups, relu)


def batchnorm_train_backward_sums(grad_y, mask, z, mean, var, gamma, eps):
    """(grad_gamma, grad_beta, the grad_z coefficients): batchnorm_train.backward_sums."""
    return batchnorm_train.backward_sums(grad_y, mask, z, mean, var, gamma, eps)


def grouped_conv_bn_train_backward(grad_y, mask, z, coef, x, weight, stride, padding, dilation,
                                   groups, need_x, need_weight):
    """(grad_x, grad_weight): grad_z in torch ops, then aten's dgrad and wgrad of the conv."""
    return batchnorm_train.conv_backward_on_grad_z(
        grouped_conv_dgrad, grouped_conv_wgrad, grad_y, mask, z, coef, x, weight, stride,
        padding, dilation, groups, need_x, need_weight)


def _f32(t):
    """t in fp32 (t.float() costs a call even when t is fp32 already)."""
    return t if t is None or t.dtype == torch.float32 else t.float()


def se_gate(u, w1, b1, w2, b2):
    """s = sigmoid(W2 relu(W1 mean_hw(u) + b1) + b2) in fp32, [N, C]. w1: [R, C], w2: [C, R].
    The mean accumulates in fp32 (on a GPU without an fp32 copy of u); autocast, where it is on,
    is held off, as the kernels compute the gate in fp32 whatever the caller's autocast."""
    device_type = u.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return se_gate(u, w1, b1, w2, b2)
    pooled = u.mean((2, 3), dtype=torch.float32)
    h = torch.relu(F.linear(pooled, _f32(w1), _f32(b1)))
    return torch.sigmoid(F.linear(h, _f32(w2), _f32(b2)))


def squeeze_excite(u, w1, b1, w2, b2, residual, relu):
    # The gate ([N, C]) in fp32; the pass over u in u's dtype, like the modules it replaces:
    # aten computes each u * gate (+ residual) in fp32 and rounds once, the gate rounded to u's
    # dtype first. An fp32 copy of u and the residual took 2.8-3.3x the eager module's time on
    # an H100 (benchmarks/results/squeeze_excite-NVIDIA-H100-80GB-HBM3-46be7dbe19ed-*.json).
    gate = se_gate(u, w1, b1, w2, b2).to(u.dtype)[:, :, None, None]
    if residual is None:
        out = u * gate
    else:  # written in u's layout directly (addcmul would follow the residual's)
        out = torch.empty_like(u, memory_format=memory_format(u))
        torch.addcmul(residual, u, gate, out=out)
    if relu:
        out.relu_()
    return out.contiguous(memory_format=memory_format(u))


def squeeze_excite_backward(grad_out, u, w1, b1, w2, b2, residual, relu, need_u, need_fc,
                            need_residual):
    """The op's gradients in fp32 torch ops, the excite recomputed from u (the contract:
    ops/squeeze_excite.py). The ReLUs' gradients follow torch's threshold_backward on their
    outputs (a NaN passes); the tail's mask comes from this backend's forward output itself
    (its gate rounded to u's dtype), so it is the forward's."""
    device_type = u.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return squeeze_excite_backward(grad_out, u, w1, b1, w2, b2, residual, relu,
                                           need_u, need_fc, need_residual)
    W1, W2 = w1.float(), w2.float()
    uf = u.float()
    pooled = u.mean((2, 3), dtype=torch.float32)  # [N, C], as se_gate
    h = torch.relu(F.linear(pooled, W1, _f32(b1)))
    s = torch.sigmoid(F.linear(h, W2, _f32(b2)))  # [N, C]
    g = grad_out.float()
    if relu:  # where the forward's output (before its ReLU) was <= 0
        z = squeeze_excite(u, w1, b1, w2, b2, residual, False)
        g = torch.where(z <= 0, 0.0, g)
    d_a2 = (g * uf).sum((2, 3)) * s * (1 - s)
    d_a1 = torch.where(h <= 0, 0.0, d_a2 @ W2)
    grad_u, grad_res, *fc_grads = (u.new_empty(0) for _ in range(6))  # not wanted: empty
    if need_u:
        d_pooled = d_a1 @ W1
        hw = u.shape[2] * u.shape[3]
        grad_u = (g * s[:, :, None, None] + (d_pooled / hw)[:, :, None, None]).to(u.dtype)
        grad_u = grad_u.contiguous(memory_format=memory_format(u))
    if need_fc:
        fc_grads = (d_a1.t() @ pooled, d_a1.sum(0), d_a2.t() @ h, d_a2.sum(0))
    if need_residual and residual is not None:
        grad_res = torch.empty(u.shape, dtype=u.dtype, device=u.device,  # never grad_out
                               memory_format=memory_format(residual)).copy_(g)
    return (grad_u, *fc_grads, grad_res)

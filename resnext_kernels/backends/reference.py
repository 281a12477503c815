"""The aten reference backend: what the fused kernels must match, and the CPU default.

grouped_conv_bn_relu folds BN's scale into the weights (in fp32, rounded once to the input
dtype), runs one aten convolution (cuDNN on GPU) with the shift as its bias, then an in-place
ReLU. Its direct-call variant (grouped_conv_bn_relu_direct, plain eager only) reuses the fold
while the same weight, scale and shift tensors are unchanged.
"""

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

from .._derived import DerivedTensors


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
    return y.contiguous(memory_format=_memory_format(x))


def _memory_format(x):
    """suggest_memory_format(x), without its cost for contiguous x (never channels_last-like)."""
    return torch.contiguous_format if x.is_contiguous() else suggest_memory_format(x)


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
        out = torch.empty_like(u, memory_format=_memory_format(u))
        torch.addcmul(residual, u, gate, out=out)
    if relu:
        out.relu_()
    return out.contiguous(memory_format=_memory_format(u))

"""The aten reference backend: what the fused kernels must match, and the CPU default.

grouped_conv_bn_relu folds BN's scale into the weights (in fp32, rounded once to the input
dtype), runs one aten convolution (cuDNN on GPU) with the shift as its bias, then an in-place ReLU.
"""

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format


def grouped_conv_bn_relu(x, weight, scale, shift, stride, padding, dilation, groups, relu):
    folded = (weight.float() * scale.float().view(-1, 1, 1, 1)).to(x.dtype)
    y = F.conv2d(x, folded, shift.to(x.dtype), stride, padding, dilation, groups)
    if relu:
        y.relu_()
    return y.contiguous(memory_format=suggest_memory_format(x))


def se_gate(u, w1, b1, w2, b2):
    """s = sigmoid(W2 relu(W1 mean_hw(u) + b1) + b2) in fp32, [N, C]. w1: [R, C], w2: [C, R]."""
    pooled = u.float().mean((2, 3))
    h = torch.relu(F.linear(pooled, w1.float(), None if b1 is None else b1.float()))
    return torch.sigmoid(F.linear(h, w2.float(), None if b2 is None else b2.float()))


def squeeze_excite(u, w1, b1, w2, b2, residual, relu):
    gate = se_gate(u, w1, b1, w2, b2)[:, :, None, None]
    out = u.float() * gate
    if residual is not None:
        out = out + residual.float()
    if relu:
        out = torch.relu(out)
    return out.to(u.dtype).contiguous(memory_format=suggest_memory_format(u))

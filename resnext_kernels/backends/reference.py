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

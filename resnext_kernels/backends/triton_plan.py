"""Which Triton kernel a grouped_conv_bn_relu call runs: "v3" (grouped_conv_v3.py) or "v2"
(grouped_conv_bn_relu.py's kernel). No Triton import: benchmarks and reports record the kernel
next to each measured time without needing Triton themselves.
"""

import os

import torch
from torch._prims_common import suggest_memory_format

CHANNEL_TILE = 64  # v3's channels per program: 128 bytes of a pixel in fp16/bf16


def v3_enabled() -> bool:
    """RESNEXT_KERNELS_TRITON_V3=0 sends v3's calls to v2 (read on every call)."""
    return os.environ.get("RESNEXT_KERNELS_TRITON_V3", "1") != "0"


def sub_blocks(cpg: int):
    """(NSUB, SUBW): sub-blocks per 64-channel tile and their width, for cpg channels/group.
    cpg <= 16: four of 16 channels (mma.sync, batched); cpg 32 and 64: one of 64, a plain GEMM
    (wgmma on sm_90), block-diagonal over two groups at cpg 32 (2x the useful FLOPs: a batch of
    two 32-wide GEMMs took 218-255 registers, and spilled on sm_80)."""
    subw = 16 if cpg <= 16 else CHANNEL_TILE
    return CHANNEL_TILE // subw, subw


def eligible(x, weight, y, groups) -> bool:
    """True when v3 computes this call: fp16 or bf16, channels_last x and y (channel stride 1),
    C_in == C_out a multiple of 64, channels per group a power of two up to 64. fp32 stays on
    v2 (its [BLOCK_M, 64] fp32 tiles took 230-255 registers)."""
    C_in, C_out = x.shape[1], weight.shape[0]
    if (C_in != C_out or C_in % CHANNEL_TILE or C_in % groups
            or x.dtype not in (torch.float16, torch.bfloat16)):
        return False
    cpg = C_in // groups
    if weight.shape[1] != cpg or cpg > CHANNEL_TILE or cpg & (cpg - 1):
        return False
    return x.stride(1) == 1 and y.stride(1) == 1


def output_size(x, weight, stride, padding, dilation):
    """(N, C_out, H_out, W_out) of the conv (stride, padding, dilation: pairs)."""
    N, _, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    H_out = (H + 2 * padding[0] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    W_out = (W + 2 * padding[1] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    return N, C_out, H_out, W_out


def triton_conv_path(x, weight, stride, padding, dilation, groups) -> str:
    """"v3" or "v2" for this call (any tensors: meta ones too)."""
    stride, padding, dilation = (tuple(v) if isinstance(v, (tuple, list)) else (v, v)
                                 for v in (stride, padding, dilation))
    size = output_size(x, weight, stride, padding, dilation)
    if size[2] <= 0 or size[3] <= 0:  # (the op refuses such calls)
        return "v2"
    y = torch.empty(size, device="meta", memory_format=suggest_memory_format(x))
    return "v3" if v3_enabled() and eligible(x, weight, y, groups) else "v2"

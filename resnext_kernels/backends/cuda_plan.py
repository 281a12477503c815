"""Which CUDA kernel a grouped_conv_bn_relu call runs: "v3", "wmma" (v2) or "direct".

A mirror of the planner in csrc/kernels/grouped_conv_dispatch.cu (grouped_conv_v3_applies,
grouped_conv_wmma_block_channels) for benchmarks and reports, which record the kernel next to
each measured time. tests/test_cuda_emulated.py checks it against the planner itself (the
emulator harness reports the path it planned) over every rule, so the two cannot drift apart.
"""

import os

import torch

HALF_TYPES = (torch.float16, torch.bfloat16)
V3_TILE_CHANNELS = 64
V3_MAX_BAND_PIXELS = 256
V3_MAX_SMEM_BYTES = 99 * 1024


def _v3_band_fits(H_out, W_out, stride, cpg) -> bool:
    in_cols = (W_out - 1) * stride + 3
    weight_bytes = V3_TILE_CHANNELS * (9 * cpg + 8) * 2 if cpg >= 32 else 0
    rows = max(1, min(H_out, V3_MAX_BAND_PIXELS // W_out))
    while rows > 0:
        if (((rows - 1) * stride + 3) * in_cols + rows * W_out) * 128 + weight_bytes \
                <= V3_MAX_SMEM_BYTES:
            return True
        rows -= 1
    return False


def _shape_ok(x, weight, stride, padding, dilation, groups):
    C_in, C_out = x.shape[1], weight.shape[0]
    return (groups > 0 and C_in == C_out and C_in % groups == 0
            and tuple(weight.shape[2:]) == (3, 3) and tuple(stride) in ((1, 1), (2, 2))
            and tuple(padding) == (1, 1) and tuple(dilation) == (1, 1))


def cuda_conv_path(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups, *,
                   device_major: int, allow_tf32: bool, allow_v3=None) -> str:
    """The kernel the cuda backend runs for this call. allow_v3 defaults to the environment
    (RESNEXT_KERNELS_CUDA_V3=0 sends v3's calls to v2). v3 takes any layout and alignment of x
    and y: it reads and writes NCHW by channel planes, and an x with neither 16-byte channel
    chunks nor contiguous rows is packed through the workspace first
    (csrc/kernels/grouped_conv_dispatch.cu)."""
    if allow_v3 is None:
        allow_v3 = os.environ.get("RESNEXT_KERNELS_CUDA_V3", "1") != "0"
    N, C, H, W = x.shape
    shape_ok = _shape_ok(x, weight, stride, padding, dilation, groups)
    if device_major < 8 or not shape_ok:
        return "direct"
    cpg = C // groups
    H_out, W_out = (H - 1) // stride[0] + 1, (W - 1) // stride[1] + 1
    if (allow_v3 and x.dtype in HALF_TYPES and C % V3_TILE_CHANNELS == 0
            and cpg in (4, 8, 16, 32, 64)
            and H <= 1 << 20 and W <= 1 << 20
            and _v3_band_fits(H_out, W_out, stride[0], cpg)):
        return "v3"
    if x.dtype == torch.float32 and not allow_tf32:
        return "direct"
    block_channels = cpg if cpg in (16, 32, 64) else 16 if cpg in (1, 2, 4, 8) else 0
    if block_channels == 0 or C % block_channels != 0:
        return "direct"
    return "wmma"

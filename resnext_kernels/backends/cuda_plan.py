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


def _channels_last_aligned16(t: torch.Tensor, data_ptr: int) -> bool:
    s = t.stride()
    return data_ptr % 16 == 0 and s[1] == 1 and s[0] % 8 == 0 and s[2] % 8 == 0 and s[3] % 8 == 0


V3_MAX_STAGES = 2
V3_MAX_STEPS_PER_CTA = 8
V3_STEP_PIXELS = (128, 64)
V3_MIN_CTAS = 1024


def _v3_band(H_out, W_out, stride, cpg, rows, steps_per_cta, stages, max_smem):
    """make_band: (rows, steps_per_cta, stages, ring_rows, smem_bytes), or None if too big."""
    weight_bytes = V3_TILE_CHANNELS * (9 * cpg + 8) * 2 if cpg >= 32 else 0
    window = (rows - 1) * stride + 3
    in_cols = (W_out - 1) * stride + 3
    steps_per_image = -(-H_out // rows)
    stages = min(stages, steps_per_cta - 1)
    max_new = window if steps_per_image % steps_per_cta else rows * stride
    ring = window + stages * max_new
    smem = (ring * in_cols + rows * W_out) * 128 + weight_bytes
    return None if smem > max_smem else (rows, steps_per_cta, stages, ring, smem)


def _even_rows(H_out, W_out, pixels):
    rows_max = max(1, min(H_out, pixels // W_out))
    steps = -(-H_out // rows_max)
    return -(-H_out // steps)


def v3_schedule(N, C, H_out, W_out, stride, cpg, *, pipeline=None, min_ctas=V3_MIN_CTAS,
                max_smem=V3_MAX_SMEM_BYTES):
    """The v3 schedule the C++ planner (plan_band in csrc/kernels/grouped_conv_v3.cu) picks:
    (rows per step, steps per CTA, stages, ring rows, shared memory bytes), or None when no band
    fits. pipeline defaults to the environment (RESNEXT_KERNELS_CUDA_V3_PIPELINE=0: off);
    max_smem is the cap of a pipelined schedule (v3_pipelined_smem_bytes of the device)."""
    if pipeline is None:
        pipeline = os.environ.get("RESNEXT_KERNELS_CUDA_V3_PIPELINE", "1") != "0"
    tiles_c = C // V3_TILE_CHANNELS
    if pipeline:
        for pixels in V3_STEP_PIXELS:
            rows = _even_rows(H_out, W_out, pixels)
            steps_per_image = -(-H_out // rows)
            steps = N * steps_per_image
            for d in range(V3_MAX_STEPS_PER_CTA, 1, -1):
                if d > steps or (steps_per_image % d and d % steps_per_image):
                    continue
                if tiles_c * -(-steps // d) < min_ctas:
                    continue
                for stages in range(V3_MAX_STAGES, 0, -1):
                    band = _v3_band(H_out, W_out, stride, cpg, rows, d, stages, max_smem)
                    if band:
                        return band
    cap = V3_MAX_SMEM_BYTES  # one band per CTA: what every sm_80+ part allows
    rows = max(1, min(H_out, V3_MAX_BAND_PIXELS // W_out))
    while rows > 0 and not _v3_band(H_out, W_out, stride, cpg, rows, 1, 0, cap):
        rows -= 1
    if rows == 0:
        return None
    steps = -(-H_out // rows)
    return _v3_band(H_out, W_out, stride, cpg, -(-H_out // steps), 1, 0, cap)


def v3_pipelined_smem_bytes(per_sm: int, per_block_optin: int) -> int:
    """v3_pipelined_smem_bytes in csrc/kernels/params.h: the shared memory a pipelined v3 CTA may
    take, 99 KB or more where two such CTAs fit on an SM (sm_90: 113 KB)."""
    return min(max(per_sm // 2 - 1024, V3_MAX_SMEM_BYTES), per_block_optin)


SM90_V3_PIPELINED_SMEM = v3_pipelined_smem_bytes(233472, 232448)  # H100/H200: 113 KB


def v3_profile_batch(C, H_out, W_out, stride, cpg, *, batch=128, max_smem=SM90_V3_PIPELINED_SMEM):
    """The smallest batch n (1, 2, 4, ...) whose v3 schedule, with min_ctas scaled by n / batch,
    is the one `batch` gets and fills whole CTAs (a CTA runs as many steps at n as at `batch`),
    so that a profile at n, scaled by blocks, is the profile at `batch`: returns
    (n, its min_ctas), or (batch, V3_MIN_CTAS)."""
    target = v3_schedule(batch, C, H_out, W_out, stride, cpg, pipeline=True,
                         min_ctas=V3_MIN_CTAS, max_smem=max_smem)
    n = 1
    while n < batch and target is not None:
        min_ctas = -(-V3_MIN_CTAS * n // batch)
        rows, steps_per_cta = target[0], target[1]
        steps = n * -(-H_out // rows)
        if (steps % steps_per_cta == 0 and v3_schedule(
                n, C, H_out, W_out, stride, cpg, pipeline=True, min_ctas=min_ctas,
                max_smem=max_smem) == target):
            return n, min_ctas
        n *= 2
    return batch, V3_MIN_CTAS


def v3_schedule_on(device, N, C, H_out, W_out, stride, cpg, **kwargs):
    """v3_schedule with the device's shared-memory cap, as the glue plans it."""
    props = torch.cuda.get_device_properties(device)
    cap = v3_pipelined_smem_bytes(props.shared_memory_per_multiprocessor,
                                  props.shared_memory_per_block_optin)
    return v3_schedule(N, C, H_out, W_out, stride, cpg, max_smem=cap, **kwargs)


def _shape_ok(x, weight, stride, padding, dilation, groups):
    C_in, C_out = x.shape[1], weight.shape[0]
    return (groups > 0 and C_in == C_out and C_in % groups == 0
            and tuple(weight.shape[2:]) == (3, 3) and tuple(stride) in ((1, 1), (2, 2))
            and tuple(padding) == (1, 1) and tuple(dilation) == (1, 1))


def cuda_conv_path(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups, *,
                   device_major: int, allow_tf32: bool, allow_v3=None,
                   x_data_ptr=None, y_channels_last_aligned=True) -> str:
    """The kernel the cuda backend runs for this call. allow_v3 defaults to the environment
    (RESNEXT_KERNELS_CUDA_V3=0 sends v3's calls to v2); y is the glue's fresh output, aligned."""
    if allow_v3 is None:
        allow_v3 = os.environ.get("RESNEXT_KERNELS_CUDA_V3", "1") != "0"
    x_ptr = x.data_ptr() if x_data_ptr is None else x_data_ptr
    N, C, H, W = x.shape
    shape_ok = _shape_ok(x, weight, stride, padding, dilation, groups)
    if device_major < 8 or not shape_ok:
        return "direct"
    cpg = C // groups
    H_out, W_out = (H - 1) // stride[0] + 1, (W - 1) // stride[1] + 1
    y_channels_last = torch._prims_common.suggest_memory_format(x) == torch.channels_last
    if (allow_v3 and x.dtype in HALF_TYPES and C % V3_TILE_CHANNELS == 0
            and cpg in (4, 8, 16, 32, 64)
            and H <= 1 << 20 and W <= 1 << 20 and _channels_last_aligned16(x, x_ptr)
            and y_channels_last and y_channels_last_aligned
            and v3_schedule(N, C, H_out, W_out, stride[0], cpg, pipeline=False)):
        return "v3"
    if x.dtype == torch.float32 and not allow_tf32:
        return "direct"
    block_channels = cpg if cpg in (16, 32, 64) else 16 if cpg in (1, 2, 4, 8) else 0
    if block_channels == 0 or C % block_channels != 0:
        return "direct"
    return "wmma"

"""Triton: fused grouped conv + folded BatchNorm + ReLU as an implicit GEMM.

Per program: a tile of BLOCK_M output positions (n, ho, wo) by BLOCK_N output channels.
The reduction runs over the KH*KW taps and, per tap, over the input channels that feed the
tile's output channels. When channels per group are too few to fill a tensor-core tile
(tl.dot needs every dim >= 16), one tile spans several groups and the weight tile is loaded
block-diagonally: entries that pair an input channel with an output channel of another group
are masked to zero. That wastes FLOPs (x16/cpg at cpg < 16), which these memory-bound shapes
can afford (see docs/KERNELS.md), and reads the input once per tile instead of once per group.
The packing zeros would carry 0 * NaN from one group's non-finite input into the others: a
packed tile whose sums hold a NaN is summed again exactly (channel by channel, no tensor cores).

Epilogue: acc * scale[co] + shift[co], optional ReLU (NaN passes, as torch.relu), cast, store;
optionally the ReLU mask's bytes and the stored values' statistics partials (train-mode
BatchNorm: channel_stats.py).
Every tensor is addressed through its strides, so NCHW, channels_last and strided views work;
offsets are 32-bit unless a tensor spans 2^31 elements or more (the INDEX_64 specialisation).
"""

import functools
import os

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from ... import relu_mask
from ..._derived import DerivedTensors
from .. import triton_interpreter_enabled
from ..triton_plan import eligible, output_size, v3_enabled
from . import grouped_conv_v3
from ._device import on_device
from .channel_stats import STATS_ROWS, store_channel_stats
from .relu_mask import store_relu_mask


@triton.jit
def _grouped_conv_bn_relu_kernel(
    x_ptr,  # input  [N, C_in, H, W], any strides
    w_ptr,  # weight [C_out, C_in // groups, KH, KW], any strides, same dtype as x
    scale_ptr,  # fp32 [C_out], contiguous: BN scale (gamma / sqrt(var + eps))
    shift_ptr,  # fp32 [C_out], contiguous: BN shift (beta - mean * scale, + scale * conv bias)
    y_ptr,  # output [N, C_out, H_out, W_out], any strides, same dtype as x
    mask_ptr,  # uint8 [ceil(M / 8), C_out]: the ReLU mask (relu_mask.py), when WRITE_MASK
    stats_ptr,  # fp32 [2, ceil(M / 32), C_out]: statistics partials (channel_stats.py)
    N, C_in, H, W,  # input sizes
    C_out, H_out, W_out,  # output sizes
    cpg_in, cpg_out,  # channels per group: C_in // groups, C_out // groups
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,  # conv geometry
    sxn, sxc, sxh, sxw,  # x element strides
    swo, swi, swh, sww,  # weight element strides (out channel, in channel, kh, kw)
    syn, syc, syh, syw,  # y element strides
    KH: tl.constexpr, KW: tl.constexpr,  # kernel size
    APPLY_RELU: tl.constexpr,
    WRITE_MASK: tl.constexpr,  # also store the ReLU mask (for the backward)
    WRITE_STATS: tl.constexpr,  # also store the outputs' statistics partials (train-mode BN)
    SPANS_GROUPS: tl.constexpr,  # a tile of BLOCK_N output channels may hold several groups
    DOT_IN_FP32: tl.constexpr,  # cast tiles to fp32 before tl.dot (fp32 input; the interpreter)
    DOT_PRECISION: tl.constexpr,  # "tf32" or "ieee", used when DOT_IN_FP32
    INDEX_64: tl.constexpr,  # 64-bit offsets: some tensor spans 2^31 elements or more
    BLOCK_M: tl.constexpr,  # output positions per program
    BLOCK_N: tl.constexpr,  # output channels per program
    BLOCK_K: tl.constexpr,  # input channels per reduction step
):
    # Offsets are 32-bit unless a tensor needs more: 64-bit index math on every tile element
    # doubles the registers the pointer tiles take (ptxas showed 255 registers and KBs of spills).
    pid_m = tl.program_id(0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    arange_k = tl.arange(0, BLOCK_K)
    if INDEX_64:
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        offs_n = offs_n.to(tl.int64)
        arange_k = arange_k.to(tl.int64)

    # Output positions of this tile, decoded from the flat (n, ho, wo) index.
    M = N * H_out * W_out
    if INDEX_64:
        M = N.to(tl.int64) * H_out * W_out
    m_ok = offs_m < M
    wo = offs_m % W_out
    ho = (offs_m // W_out) % H_out
    n = offs_m // (W_out * H_out)

    # Output channels of this tile and the span of input channels their groups read.
    co0 = tl.program_id(1) * BLOCK_N
    n_ok = offs_n < C_out
    group_of_n = offs_n // cpg_out
    co_last = tl.minimum(co0 + BLOCK_N, C_out) - 1
    ci_lo = (co0 // cpg_out) * cpg_in
    ci_hi = (co_last // cpg_out + 1) * cpg_in

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    x_n = x_ptr + n * sxn
    w_n = w_ptr + offs_n * swo  # [BLOCK_N] row pointers of the weight
    # One rolled loop over the taps: unrolling all KH*KW bodies kept their address tiles live
    # at once (register pressure), for no gain at these memory-bound shapes.
    for tap in range(KH * KW):
        kh = tap // KW
        kw = tap % KW
        hi = ho * stride_h - pad_h + kh * dil_h
        wi = wo * stride_w - pad_w + kw * dil_w
        pos_ok = m_ok & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        x_pos = x_n + hi * sxh + wi * sxw  # [BLOCK_M] pointers to channel 0 of each tap
        w_tap = w_n + kh * swh + kw * sww
        for k0 in range(ci_lo, ci_hi, BLOCK_K):
            offs_k = k0 + arange_k
            k_ok = offs_k < ci_hi
            x_tile = tl.load(
                x_pos[:, None] + offs_k[None, :] * sxc,
                mask=pos_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            # Block-diagonal weight tile [BLOCK_K, BLOCK_N]: w[co, ci - group*cpg_in]
            # where ci and co share a group, zero elsewhere.
            same_group = (offs_k // cpg_in)[:, None] == group_of_n[None, :]
            ci_in_group = offs_k[:, None] - group_of_n[None, :] * cpg_in
            w_tile = tl.load(
                w_tap[None, :] + ci_in_group * swi,
                mask=same_group & k_ok[:, None] & n_ok[None, :],
                other=0.0,
            )
            if DOT_IN_FP32:
                acc = tl.dot(
                    x_tile.to(tl.float32),
                    w_tile.to(tl.float32),
                    acc,
                    input_precision=DOT_PRECISION,
                )
            else:
                acc = tl.dot(x_tile, w_tile, acc)

    # Where the tile packs several groups, a NaN sum may be one group's non-finite input times
    # another group's zero weight (0 * NaN): nn.Conv2d keeps groups apart, so such a tile is
    # summed again without tensor cores, one input channel at a time, the other groups'
    # products selected away (only tiles that read a non-finite value pay for it).
    if SPANS_GROUPS and tl.max(tl.where(acc != acc, 1, 0)) > 0:
        if (co0 // cpg_out) != (co_last // cpg_out):
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for tap in range(KH * KW):
                kh = tap // KW
                kw = tap % KW
                hi = ho * stride_h - pad_h + kh * dil_h
                wi = wo * stride_w - pad_w + kw * dil_w
                pos_ok = m_ok & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
                x_pos = x_n + hi * sxh + wi * sxw
                w_tap = w_n + kh * swh + kw * sww
                for c in range(ci_lo, ci_hi):
                    ci = c
                    if INDEX_64:
                        ci = c.to(tl.int64)
                    same_group = (ci // cpg_in) == group_of_n
                    xv = tl.load(x_pos + ci * sxc, mask=pos_ok, other=0.0).to(tl.float32)
                    wv = tl.load(w_tap + (ci - group_of_n * cpg_in) * swi,
                                 mask=same_group & n_ok, other=0.0).to(tl.float32)
                    acc += tl.where(same_group[None, :], xv[:, None] * wv[None, :], 0.0)

    scale = tl.load(scale_ptr + offs_n, mask=n_ok, other=0.0)
    shift = tl.load(shift_ptr + offs_n, mask=n_ok, other=0.0)
    out = acc * scale[None, :] + shift[None, :]
    if APPLY_RELU:
        out = tl.where(out < 0.0, 0.0, out)
    y_off = (n * syn + ho * syh + wo * syw)[:, None] + offs_n[None, :] * syc
    out = out.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + y_off, out, mask=m_ok[:, None] & n_ok[None, :])
    m0 = pid_m * BLOCK_M
    if INDEX_64:
        m0 = pid_m.to(tl.int64) * BLOCK_M
    if WRITE_MASK:
        store_relu_mask(mask_ptr, out, m0, m_ok, offs_n, n_ok, C_out, M, BLOCK_M, BLOCK_N)
    if WRITE_STATS:
        store_channel_stats(stats_ptr, out.to(tl.float32), m0, m_ok, offs_n, n_ok, C_out, M,
                            BLOCK_M, BLOCK_N)


def _channel_tiles(cpg_in: int, cpg_out: int):
    """(BLOCK_N, BLOCK_K) for a channels-per-group class: the path made for each class.

    cpg_out <= 16 (1, 2, 4, 8, 16): 16 output channels, 16 // cpg groups packed block-diagonally;
    cpg_out 17..32: one 32-wide group; larger: 64 channels of one group per program.
    BLOCK_K covers the input-channel span of one tile in one step where that span is <= 32;
    wider spans take several steps (a 64-wide K tile spilled registers: docs/KERNELS.md).
    """
    if cpg_out <= 16:
        block_n = 16
    elif cpg_out <= 32:
        block_n = 32
    else:
        block_n = 64
    groups_spanned = max(1, block_n // cpg_out)
    k_span = groups_spanned * cpg_in
    block_k = min(32, max(16, triton.next_power_of_2(k_span)))
    return block_n, block_k


# A single fixed configuration under the interpreter keeps CPU tests quick; on a GPU the
# launch configuration is autotuned per shape class and cached by triton.autotune.
_INTERPRETER_BLOCK_M = 32
# (BLOCK_M, num_warps): 128-row tiles need 8 warps to stay clear of register spills
# (scripts/triton_aot_check.py checks every one of these for sm_80 and sm_90).
_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": bm}, num_warps=nw, num_stages=ns)
    for bm, nw in ((32, 4), (64, 4), (64, 8), (128, 8))
    for ns in (2, 3)
]


# RESNEXT_KERNELS_TRITON_AUTOTUNE=0 launches this one configuration instead of timing every
# _GPU_CONFIGS entry on each new shape (about a second of compiling and timing per shape): the GPU
# plan's test step sets it, and tests/test_grouped_conv_bn_relu.py runs every entry explicitly.
_FIXED_GPU_CONFIG = _GPU_CONFIGS[2]  # BLOCK_M 64, 4 warps, 2 stages


def _autotune_enabled() -> bool:
    return os.environ.get("RESNEXT_KERNELS_TRITON_AUTOTUNE", "1") != "0"


@functools.lru_cache(maxsize=None)
def _launchable_kernel(interpreted: bool, autotune: bool = True):
    if interpreted or not autotune:
        return _grouped_conv_bn_relu_kernel
    return triton.autotune(
        configs=_GPU_CONFIGS,
        key=["N", "C_in", "C_out", "H_out", "W_out", "cpg_in", "cpg_out", "stride_h", "sxc"],
    )(_grouped_conv_bn_relu_kernel)


# v3's launch configurations (BLOCK_M, warps, NUM_STAGES) per sub-block class (NSUB, see
# triton_plan.sub_blocks). NUM_STAGES 3 pipelines the taps' loads through cp.async (which
# bypasses L1: each tap's tile comes from L2), 1 loads them with L1-cached ld.global (a
# program's 9 taps re-read its pixels from L1, with no prefetch). Which wins is for a GPU to say.
# - NSUB 4 (cpg <= 16, a batch of four mma.sync GEMMs): 4 warps, one per sub-block. Triton lays
#   the warps of a batched dot along the batch first, so 8 warps computed every MMA twice.
# - NSUB 1 (cpg 32, 64: one wgmma GEMM on sm_90): 4 or 8 warps along the pixels.
_V3_GPU_CONFIGS = {
    4: [triton.Config({"BLOCK_M": bm, "NUM_STAGES": ns}, num_warps=4)
        for bm in (64, 128) for ns in (3, 1)],
    1: [triton.Config({"BLOCK_M": bm, "NUM_STAGES": ns}, num_warps=nw)
        for bm, nw in ((64, 4), (128, 8)) for ns in (3, 1)],
}
# the fixed configurations (RESNEXT_KERNELS_TRITON_AUTOTUNE=0, the GPU-free profile): the
# cp.async pipeline on the tile with the fewest registers (105 at NSUB 4, sm_90; 86-120 at 1)
_V3_FIXED_GPU_CONFIG = {4: _V3_GPU_CONFIGS[4][0], 1: _V3_GPU_CONFIGS[1][2]}


@functools.lru_cache(maxsize=None)
def _launchable_v3_kernel(interpreted: bool, autotune: bool = True, nsub: int = 4):
    if interpreted or not autotune:
        return grouped_conv_v3._grouped_conv_v3_kernel
    return triton.autotune(
        configs=_V3_GPU_CONFIGS[nsub],
        key=["C", "CPG", "H", "W", "H_out", "W_out", "M", "stride_h", "sxw"],
    )(grouped_conv_v3._grouped_conv_v3_kernel)


# Tensors whose extent stays within this use 32-bit offsets (fewer registers per tile).
INDEX_32_LIMIT = 2**31 - 1


def _v3_index_64(x, y, packed, padding, dilation, KH, KW) -> bool:
    """Whether v3 needs 64-bit offsets: a tensor's extent, or an address a tap forms beyond
    x's (v3 adds each tap's offset to the address of tap (0, 0), which lies in the padding),
    passes the 32-bit limit."""
    reach = ((padding[0] + dilation[0] * (KH - 1)) * abs(x.stride(2))
             + (padding[1] + dilation[1] * (KW - 1)) * abs(x.stride(3)))
    return max(_max_offset(x) + reach, _max_offset(y), _max_offset(packed)) > INDEX_32_LIMIT


def _max_offset(t):
    """The largest element offset a strided tensor addresses (its extent), plus one."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))


def _output(x, weight, stride, padding, dilation):
    """The op's output, in x's memory format."""
    return torch.empty(output_size(x, weight, stride, padding, dilation), dtype=x.dtype,
                       device=x.device, memory_format=suggest_memory_format(x))


def grouped_conv_bn_relu(x, weight, scale, shift, stride, padding, dilation, groups, relu):
    """Launcher. Arguments are validated by the op (resnext_kernels/ops/grouped_conv_bn_relu.py).
    Packs v3's weights on every call: nothing may outlive a dispatched call (a compiled graph's
    CUDA-graph pool); direct calls keep the pack (grouped_conv_bn_relu_direct)."""
    return _run(x, weight, scale, shift, stride, padding, dilation, groups, relu,
                grouped_conv_v3.pack_weight)


# v3's packed weights per weight tensor, reused while the weight is unchanged (direct calls only)
_PACKED = DerivedTensors()


def _cached_pack(weight, groups, dtype):
    return _PACKED.get((weight,), (dtype, groups),
                       lambda: grouped_conv_v3.pack_weight(weight, groups, dtype))


def grouped_conv_bn_relu_direct(x, weight, scale, shift, stride, padding, dilation, groups,
                                relu):
    """The direct-call variant (plain eager, ops/_direct.py): v3's weight pack is made once per
    weight tensor and dtype and reused while the weight is unchanged (resnext_kernels/_derived.py
    says what "unchanged" covers)."""
    return _run(x, weight, scale, shift, stride, padding, dilation, groups, relu, _cached_pack)


def grouped_conv_bn_relu_masked(x, weight, scale, shift, stride, padding, dilation, groups,
                                relu):
    """The forward whose backward will run: (y, the ReLU mask), the mask stored by the same
    kernel's epilogue (resnext_kernels/relu_mask.py; [0, C_out] without a ReLU)."""
    y = _output(x, weight, stride, padding, dilation)
    mask = torch.empty(relu_mask.mask_shape(relu_mask.pixels(y) if relu else 0, y.shape[1]),
                       dtype=torch.uint8, device=x.device)
    _run(x, weight, scale, shift, stride, padding, dilation, groups, relu,
         grouped_conv_v3.pack_weight, y=y, mask=mask if relu else None)
    return y, mask


def grouped_conv_with_stats(x, weight, stride, padding, dilation, groups):
    """(z = conv2d(x, weight) in x's dtype and memory format, its statistics partials): the
    train-mode forward's conv (a unit scale, no shift, no ReLU; exact), whose epilogue also
    stores fp32 [2, ceil(M / 32), C_out] (mean, M2) per 32 pixels (channel_stats.py). It runs
    the fixed launch configuration (not autotuned), so that the statistics are the same bits
    in every process."""
    z = _output(x, weight, stride, padding, dilation)
    C_out = z.shape[1]
    stats = torch.empty((2, triton.cdiv(relu_mask.pixels(z), STATS_ROWS), C_out),
                        dtype=torch.float32, device=x.device)
    ones = torch.ones(C_out, dtype=torch.float32, device=x.device)
    _run(x, weight, ones, torch.zeros_like(ones), stride, padding, dilation, groups, False,
         grouped_conv_v3.pack_weight, y=z, stats=stats)
    return z, stats


def _run(x, weight, scale, shift, stride, padding, dilation, groups, relu, pack, y=None,
         mask=None, stats=None):
    """v3 where it applies (its weights from pack(weight, groups, dtype)), else v2; into y
    (made here when None), the ReLU mask into `mask` and the statistics partials into `stats`
    when they are given."""
    if y is None:
        y = _output(x, weight, stride, padding, dilation)
    if y.numel() == 0:
        return y
    if v3_enabled() and eligible(x, weight, y, groups):
        return _launch_v3(x, pack(weight, groups, x.dtype), scale, shift, y, mask, stats,
                          stride, padding, dilation, groups, relu, weight.shape[2],
                          weight.shape[3])
    return _launch_v2(x, weight, scale, shift, y, mask, stats, stride, padding, dilation,
                      groups, relu)


def _dot_meta(x, interpreted):
    is_fp32 = x.dtype == torch.float32
    return dict(
        DOT_IN_FP32=is_fp32 or interpreted,
        DOT_PRECISION="tf32" if (is_fp32 and torch.backends.cudnn.allow_tf32) else "ieee",
    )


def _interpreted(x) -> bool:
    return triton_interpreter_enabled() or x.device.type == "cpu"


def _launch_v2(x, weight, scale, shift, y, mask, stats, stride, padding, dilation, groups,
               relu):
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    H_out, W_out = y.shape[2], y.shape[3]
    scale = scale.to(torch.float32).contiguous()
    shift = shift.to(torch.float32).contiguous()
    cpg_in, cpg_out = C_in // groups, C_out // groups
    block_n, block_k = _channel_tiles(cpg_in, cpg_out)
    interpreted = _interpreted(x)
    meta = dict(
        INDEX_64=max(_max_offset(t) for t in (x, weight, y)) > INDEX_32_LIMIT,
        KH=KH,
        KW=KW,
        APPLY_RELU=bool(relu),
        WRITE_MASK=mask is not None,
        WRITE_STATS=stats is not None,
        SPANS_GROUPS=cpg_out % block_n != 0,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        **_dot_meta(x, interpreted),
    )
    # the statistics' bits follow the compiled tile's layout: one fixed configuration for them
    autotune = not interpreted and _autotune_enabled() and stats is None
    if interpreted:
        meta["BLOCK_M"] = _INTERPRETER_BLOCK_M
    elif not autotune:
        meta.update(_FIXED_GPU_CONFIG.kwargs, num_warps=_FIXED_GPU_CONFIG.num_warps,
                    num_stages=_FIXED_GPU_CONFIG.num_stages)

    def grid(m):
        return (triton.cdiv(N * H_out * W_out, m["BLOCK_M"]), triton.cdiv(C_out, block_n))

    with on_device(x):
        _launchable_kernel(interpreted, autotune)[grid](
            x, weight, scale, shift, y, y if mask is None else mask,
            y if stats is None else stats,  # (y stands for a pointer the kernel does not use)
            N, C_in, H, W,
            C_out, H_out, W_out,
            cpg_in, cpg_out,
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
            *x.stride(),
            *weight.stride(),
            *y.stride(),
            **meta,
        )
    return y


def _launch_v3(x, packed, scale, shift, y, mask, stats, stride, padding, dilation, groups,
               relu, KH, KW):
    N, C, H, W = x.shape
    H_out, W_out = y.shape[2], y.shape[3]
    M = N * H_out * W_out
    cpg = C // groups
    nsub, subw = grouped_conv_v3.sub_blocks(cpg)
    interpreted = _interpreted(x)
    meta = dict(
        KH=KH,
        KW=KW,
        NSUB=nsub,
        SUBW=subw,
        CPG=cpg,
        APPLY_RELU=bool(relu),
        WRITE_MASK=mask is not None,
        WRITE_STATS=stats is not None,
        INDEX_64=_v3_index_64(x, y, packed, padding, dilation, KH, KW),
        **_dot_meta(x, interpreted),
    )
    # the statistics' bits follow the compiled tile's layout: one fixed configuration for them
    autotune = not interpreted and _autotune_enabled() and stats is None
    if interpreted:
        meta.update(BLOCK_M=_INTERPRETER_BLOCK_M, NUM_STAGES=1)
    elif not autotune:
        fixed = _V3_FIXED_GPU_CONFIG[nsub]
        meta.update(fixed.kwargs, num_warps=fixed.num_warps)
    n_ct = C // grouped_conv_v3.CHANNEL_TILE

    def grid(m):
        return (triton.cdiv(M, m["BLOCK_M"]) * n_ct,)

    with on_device(x):
        _launchable_v3_kernel(interpreted, autotune, nsub)[grid](
            x, packed, scale.to(torch.float32).contiguous(), shift.to(torch.float32).contiguous(),
            y, y if mask is None else mask,  # (y stands for the pointers it does not write)
            y if stats is None else stats,
            C, H, W, H_out, W_out, M,
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
            x.stride(0), x.stride(2), x.stride(3),
            y.stride(0), y.stride(2), y.stride(3),
            **meta,
        )
    return y

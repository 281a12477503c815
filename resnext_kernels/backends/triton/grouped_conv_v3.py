"""Triton v3: grouped conv + folded BatchNorm + ReLU on 64-channel tiles of channels_last input.

Why (docs/KERNELS.md, "Triton v3"): v2 loaded 16 or 32 channels per pixel per tap with runtime
group bounds, so the compiler could not prove alignment and the hot loop gathered 2-byte
elements (8-16 per thread per tap); its weights were gathered with masks on every tap and
nothing was prefetched across taps. Nsight Compute (H100) found its L1 pipe at 87-92% with
DRAM at 8-37%.

Per program: BLOCK_M output pixels (flat n, ho, wo) x one 64-channel tile (128 bytes of every
pixel in fp16/bf16: whole cache lines), the channel tile fastest in the 1-D grid, so the
programs that run together read the same input pixels.
- The input tile of a tap is one [BLOCK_M, 64] load with no channel mask: 16-byte vectors
  (the channel stride is the constant 1 and the tile start a multiple of 64), a cp.async
  pipeline across the taps when NUM_STAGES > 1 (`tl.range`); with NUM_STAGES = 1 the loads are
  L1-cached `ld.global`, which keeps the 9 taps' re-reads of one program's pixels in L1.
- At cpg <= 16 the tile is viewed as 4 sub-blocks of 16 channels ([4, BLOCK_M, 16]) and
  multiplied by the tap's [4, 16, 16] weights in one batched tl.dot (mma.sync); below cpg 16 a
  sub-block packs 16 / cpg groups and its weights are block-diagonal (zeros between groups:
  16 / cpg times the useful FLOPs, still memory-bound). At cpg 32 and 64 the tile is one
  [BLOCK_M, 64] x [64, 64] GEMM (wgmma on sm_90), block-diagonal over two groups at cpg 32.
- Weights come packed once, [C // 64, KH*KW, NSUB, SUBW, SUBW] contiguous (pack_weight): one
  contiguous, unmasked load per tap. Callers that can keep the pack between calls do (the
  backend's direct-call path, keyed by the weight's version).
- Epilogue: fp32 scale and shift per channel, NaN-keeping ReLU, cast, 16-byte stores; with
  WRITE_MASK (a forward whose backward will run) also the tile's bytes of the ReLU mask
  (relu_mask.py); with WRITE_STATS (train-mode BatchNorm: a unit scale, no shift, no ReLU)
  the per-channel (mean, M2) partials of the stored values, per 32 pixels (channel_stats.py).

Non-finite inputs: the block-diagonal zeros would carry 0 * NaN = NaN (and 0 * inf) from one
group into the others of its sub-block, which nn.Conv2d never does. So at cpg < 16 and at 32 a
program whose accumulators hold a NaN rewrites its tile one group at a time, with the other
groups' inputs zeroed by a select, and stores that group's output columns only (its own inf
times the other columns' packing zeros is NaN there): the exact result, at a cost paid only by
tiles that read a non-finite value (finite inputs cannot make a NaN in these accumulators; an
input full of NaN sends every tile down that path: 64 / cpg or 2 passes over the taps). A
barrier at the start of that path orders the rewrites after every thread's first store; with
WRITE_STATS the tile's statistics are then taken again from the rewritten values (after another
barrier).

Offsets are 32-bit unless a tensor, or an address a tap forms in the padding, passes 2^31
elements (INDEX_64).
"""

import triton
import triton.language as tl

from ..triton_plan import CHANNEL_TILE, sub_blocks  # noqa: F401  (the launcher's too)
from .channel_stats import store_channel_stats
from .relu_mask import store_relu_mask


@triton.jit
def _zero_tile(NSUB: tl.constexpr, BLOCK_M: tl.constexpr, SUBW: tl.constexpr):
    """fp32 accumulators: [NSUB, BLOCK_M, SUBW], or [BLOCK_M, SUBW] for a single sub-block."""
    if NSUB == 1:
        return tl.zeros((BLOCK_M, SUBW), dtype=tl.float32)
    else:
        return tl.zeros((NSUB, BLOCK_M, SUBW), dtype=tl.float32)


@triton.jit
def _accumulate_taps(
    acc,  # fp32 [NSUB, BLOCK_M, SUBW] ([BLOCK_M, SUBW] when NSUB is 1): the sums so far
    x_pix,  # [BLOCK_M] pointers: x at (n, 0, 0, c0) of each output pixel's image
    w_tile,  # pointer: the packed weights of this channel tile, [KH*KW, NSUB, SUBW, SUBW]
    ho, wo, m_ok,  # [BLOCK_M] output row, column, and whether the pixel exists
    H, W, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sxh, sxw,  # x element strides of a row and a column (channels are contiguous)
    KH: tl.constexpr, KW: tl.constexpr,
    NSUB: tl.constexpr, SUBW: tl.constexpr, CPG: tl.constexpr,
    BLOCK_M: tl.constexpr, NUM_STAGES: tl.constexpr,
    DOT_IN_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr, INDEX_64: tl.constexpr,
):
    CT: tl.constexpr = NSUB * SUBW
    offs_c = tl.arange(0, CT)
    sub = tl.arange(0, NSUB)
    k = tl.arange(0, SUBW)
    # [NSUB, SUBW (in), SUBW (out)] offsets of one tap's packed weights
    w_off = sub[:, None, None] * (SUBW * SUBW) + k[None, :, None] * SUBW + k[None, None, :]
    # Per pixel, once: the input row and column under tap (0, 0) and its address (which may
    # lie outside x: masked); per tap only a scalar offset and two unsigned bound checks
    # (a negative index wraps to a large unsigned one) are left.
    hi0 = ho * stride_h - pad_h
    wi0 = wo * stride_w - pad_w
    x_tap0 = (x_pix + hi0 * sxh + wi0 * sxw)[:, None] + offs_c[None, :]
    for tap in tl.range(0, KH * KW, num_stages=NUM_STAGES):
        dh = (tap // KW) * dil_h
        dw = (tap % KW) * dil_w
        if INDEX_64:  # the tap's offset dh * sxh + dw * sxw can pass 2^31 on its own
            dh = dh.to(tl.int64)
            dw = dw.to(tl.int64)
        ok = (m_ok & ((hi0 + dh).to(tl.uint32) < tl.cast(H, tl.uint32))
              & ((wi0 + dw).to(tl.uint32) < tl.cast(W, tl.uint32)))
        a = tl.load(x_tap0 + (dh * sxh + dw * sxw), mask=ok[:, None], other=0.0)
        b = tl.load(w_tile + tap * (CT * SUBW) + w_off)
        if NSUB == 1:  # one 64-wide sub-block: a plain GEMM (wgmma on sm_90)
            b = tl.reshape(b, (SUBW, SUBW))
        else:  # [BLOCK_M, 64] -> [NSUB, BLOCK_M, SUBW]: the sub-blocks as a batch of GEMMs
            a = tl.permute(tl.reshape(a, (BLOCK_M, NSUB, SUBW)), (1, 0, 2))
        if DOT_IN_FP32:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _store_tile(
    acc,  # fp32 [NSUB, BLOCK_M, SUBW] ([BLOCK_M, SUBW] when NSUB is 1)
    scale_ptr, shift_ptr, y_ptr, mask_ptr, stats_ptr, c0, m0, n, ho, wo, m_ok, C, M,
    syn, syh, syw,
    NSUB: tl.constexpr, SUBW: tl.constexpr, CPG: tl.constexpr, BLOCK_M: tl.constexpr,
    APPLY_RELU: tl.constexpr, WRITE_MASK: tl.constexpr, WRITE_STATS: tl.constexpr,
):
    """[NSUB, BLOCK_M, SUBW] -> [BLOCK_M, 64]: fp32 scale and shift, ReLU, cast, store (and
    the ReLU mask's bytes of the tile, from pixel m0 on, when WRITE_MASK; the statistics
    partials of the stored values when WRITE_STATS, channel_stats.py).
    Returns whether any accumulator is NaN (rows past the end hold zeros)."""
    CT: tl.constexpr = NSUB * SUBW
    if NSUB == 1:
        out = acc
    else:
        out = tl.reshape(tl.permute(acc, (1, 0, 2)), (BLOCK_M, CT))
    # (before scale and shift: a NaN there is the caller's, and the exact path would not
    # remove it, only repeat the tile)
    has_nan = tl.max(tl.where(out != out, 1, 0)) > 0
    offs_c = c0 + tl.arange(0, CT)
    scale = tl.load(scale_ptr + offs_c)
    shift = tl.load(shift_ptr + offs_c)
    out = out * scale[None, :] + shift[None, :]
    if APPLY_RELU:
        out = tl.where(out < 0.0, 0.0, out)  # NaN stays NaN, as torch.relu
    y_off = (n * syn + ho * syh + wo * syw)[:, None] + offs_c[None, :]
    out = out.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + y_off, out, mask=m_ok[:, None], eviction_policy="evict_first")
    if WRITE_MASK:
        store_relu_mask(mask_ptr, out, m0, m_ok, offs_c, offs_c < C, C, M, BLOCK_M, CT)
    if WRITE_STATS:
        store_channel_stats(stats_ptr, out.to(tl.float32), m0, m_ok, offs_c, offs_c < C, C, M,
                            BLOCK_M, CT)
    return has_nan


@triton.jit
def _pixels(mt, M, H_out, W_out, BLOCK_M: tl.constexpr, INDEX_64: tl.constexpr):
    """The output pixels of M-tile mt: (its first pixel, n, ho, wo, exists), each [BLOCK_M]
    but the first."""
    m0 = mt * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    if INDEX_64:
        m0 = mt.to(tl.int64) * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
    wo = offs_m % W_out
    ho = (offs_m // W_out) % H_out
    n = offs_m // (W_out * H_out)
    return m0, n, ho, wo, offs_m < M


@triton.jit(noinline=True)
def _store_group_exactly(
    x_ptr, w_tile, scale_ptr, shift_ptr, y_ptr, mask_ptr, mt, c0,
    C, M, H, W, H_out, W_out, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sxn, sxh, sxw, syn, syh, syw,
    sub,  # the sub-block (0 .. NSUB-1) of the tile
    group,  # the group within the sub-block (0 .. SUBW/CPG - 1)
    KH: tl.constexpr, KW: tl.constexpr, NSUB: tl.constexpr, SUBW: tl.constexpr,
    CPG: tl.constexpr, BLOCK_M: tl.constexpr, APPLY_RELU: tl.constexpr,
    WRITE_MASK: tl.constexpr,
    DOT_IN_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr, INDEX_64: tl.constexpr,
):
    """The exact path for one group of a block-diagonal sub-block: the other groups' inputs
    zeroed by a select, and only this group's output columns stored (its own inf times the
    other columns' packing zeros is NaN there), with their ReLU mask bytes. Only tiles that read a non-finite value come
    here, so it is kept out of the fast path's registers: a real call (noinline, scalar
    arguments), [BLOCK_M, SUBW] tiles, no pipeline."""
    CT: tl.constexpr = NSUB * SUBW
    # Every thread stored its part of the tile before this call (the stores cannot move past
    # it); the barrier makes those stores visible to the block before any of the rewrites
    # below, which other threads may make to the same elements.
    tl.debug_barrier()
    m0, n, ho, wo, m_ok = _pixels(mt, M, H_out, W_out, BLOCK_M, INDEX_64)
    x_pix = x_ptr + n * sxn + c0 + sub * SUBW
    k = tl.arange(0, SUBW)
    in_group = (k // CPG) == group
    acc = tl.zeros((BLOCK_M, SUBW), dtype=tl.float32)
    for tap in tl.range(0, KH * KW, num_stages=1):
        kh = tap // KW
        kw = tap % KW
        hi = ho * stride_h - pad_h + kh * dil_h
        wi = wo * stride_w - pad_w + kw * dil_w
        ok = m_ok & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        a = tl.load((x_pix + hi * sxh + wi * sxw)[:, None] + k[None, :], mask=ok[:, None],
                    other=0.0)
        a = tl.where(in_group[None, :], a, 0.0)
        b = tl.load(w_tile + tap * (CT * SUBW) + sub * (SUBW * SUBW)
                    + k[:, None] * SUBW + k[None, :])
        if DOT_IN_FP32:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(a, b, acc)
    offs_c = c0 + sub * SUBW + k
    out = acc * tl.load(scale_ptr + offs_c)[None, :] + tl.load(shift_ptr + offs_c)[None, :]
    if APPLY_RELU:
        out = tl.where(out < 0.0, 0.0, out)
    y_off = (n * syn + ho * syh + wo * syw)[:, None] + offs_c[None, :]
    out = out.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + y_off, out, mask=m_ok[:, None] & in_group[None, :])
    if WRITE_MASK:
        store_relu_mask(mask_ptr, out, m0, m_ok, offs_c, in_group, C, M, BLOCK_M, SUBW)


@triton.jit(noinline=True)
def _restore_tile_stats(
    y_ptr, stats_ptr, mt, c0, C, M, H_out, W_out, syn, syh, syw,
    CT: tl.constexpr, BLOCK_M: tl.constexpr, INDEX_64: tl.constexpr,
):
    """The statistics partials of a tile that the exact path rewrote: from the stored values
    (read back after a barrier that orders them after every thread's rewrites)."""
    tl.debug_barrier()
    m0, n, ho, wo, m_ok = _pixels(mt, M, H_out, W_out, BLOCK_M, INDEX_64)
    offs_c = c0 + tl.arange(0, CT)
    y = tl.load(y_ptr + (n * syn + ho * syh + wo * syw)[:, None] + offs_c[None, :],
                mask=m_ok[:, None], other=0.0)
    store_channel_stats(stats_ptr, y.to(tl.float32), m0, m_ok, offs_c, offs_c < C, C, M,
                        BLOCK_M, CT)


@triton.jit
def _grouped_conv_v3_kernel(
    x_ptr,  # input [N, C, H, W], channels contiguous (channels_last), any other strides
    w_ptr,  # packed weights [C // 64, KH*KW, NSUB, SUBW, SUBW], contiguous, x's dtype
    scale_ptr,  # fp32 [C], contiguous: BN scale
    shift_ptr,  # fp32 [C], contiguous: BN shift
    y_ptr,  # output [N, C, H_out, W_out], channels contiguous
    mask_ptr,  # uint8 [ceil(M / 8), C]: the ReLU mask (relu_mask.py), when WRITE_MASK
    stats_ptr,  # fp32 [2, ceil(M / 32), C]: statistics partials (channel_stats.py), WRITE_STATS
    C, H, W, H_out, W_out, M,  # sizes; M = N * H_out * W_out
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,  # conv geometry
    sxn, sxh, sxw,  # x element strides (image, row, column)
    syn, syh, syw,  # y element strides (image, row, column)
    KH: tl.constexpr, KW: tl.constexpr,
    NSUB: tl.constexpr,  # sub-blocks per 64-channel tile (sub_blocks)
    SUBW: tl.constexpr,  # channels per sub-block: 16 (cpg <= 16) or 64
    CPG: tl.constexpr,  # channels per group
    APPLY_RELU: tl.constexpr,
    WRITE_MASK: tl.constexpr,  # also store the ReLU mask (for the backward)
    WRITE_STATS: tl.constexpr,  # also store the outputs' statistics partials (train-mode BN)
    DOT_IN_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr,  # output pixels per program
    NUM_STAGES: tl.constexpr,  # taps in flight (1: no pipeline, L1-cached loads)
):
    CT: tl.constexpr = NSUB * SUBW
    n_ct = C // CT
    pid = tl.program_id(0)
    ct = pid % n_ct  # the channel tile is the fastest-varying program index
    mt = pid // n_ct
    m0, n, ho, wo, m_ok = _pixels(mt, M, H_out, W_out, BLOCK_M, INDEX_64)
    c0 = ct * CT
    x_pix = x_ptr + n * sxn + c0
    w_tile = w_ptr + ct * (KH * KW * CT * SUBW)

    acc = _accumulate_taps(_zero_tile(NSUB, BLOCK_M, SUBW), x_pix, w_tile, ho, wo, m_ok, H, W,
                           stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, sxh, sxw, KH, KW,
                           NSUB, SUBW, CPG, BLOCK_M, NUM_STAGES, DOT_IN_FP32, DOT_PRECISION,
                           INDEX_64)
    has_nan = _store_tile(acc, scale_ptr, shift_ptr, y_ptr, mask_ptr, stats_ptr, c0, m0, n, ho,
                          wo, m_ok, C, M, syn, syh, syw, NSUB, SUBW, CPG, BLOCK_M, APPLY_RELU,
                          WRITE_MASK, WRITE_STATS)
    if CPG < SUBW:
        # Block-diagonal sub-blocks: a NaN sum may be another group's non-finite input times
        # a packing zero. Rewrite the tile group by group (module docstring).
        if has_nan:
            for sub in range(NSUB):
                for group in range(SUBW // CPG):
                    _store_group_exactly(x_ptr, w_tile, scale_ptr, shift_ptr, y_ptr, mask_ptr,
                                         mt, c0, C, M, H, W, H_out, W_out, stride_h, stride_w,
                                         pad_h, pad_w, dil_h, dil_w, sxn, sxh, sxw, syn, syh,
                                         syw, sub, group, KH, KW, NSUB, SUBW, CPG, BLOCK_M,
                                         APPLY_RELU, WRITE_MASK, DOT_IN_FP32, DOT_PRECISION,
                                         INDEX_64)
            if WRITE_STATS:
                _restore_tile_stats(y_ptr, stats_ptr, mt, c0, C, M, H_out, W_out, syn, syh,
                                    syw, CT, BLOCK_M, INDEX_64)


def pack_weight(weight, groups, dtype):
    """[C, cpg, KH, KW] (any strides) -> [C // 64, KH*KW, NSUB, SUBW (in), SUBW (out)] in
    dtype, contiguous: per 64-channel tile, per tap, each sub-block's weights as the B operand
    of a GEMM, block-diagonal where a sub-block packs several groups (zeros between them)."""
    C, cpg, KH, KW = weight.shape
    nsub, subw = sub_blocks(cpg)
    per_sub = subw // cpg  # groups in one sub-block
    taps = KH * KW
    # w[b, g, n, k, t]: sub-block b, its group g, output n and input k within the group, tap t
    w = weight.to(dtype).reshape(C // subw, per_sub, cpg, cpg, taps)
    dense = weight.new_zeros((C // subw, taps, subw, subw), dtype=dtype)  # [b, t, k, n]
    for g in range(per_sub):
        lo = g * cpg
        dense[:, :, lo:lo + cpg, lo:lo + cpg] = w[:, g].permute(0, 3, 2, 1)
    return dense.reshape(C // CHANNEL_TILE, nsub, taps, subw, subw).transpose(1, 2).contiguous()

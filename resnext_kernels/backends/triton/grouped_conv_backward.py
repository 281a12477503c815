"""Triton: the backward of the fused grouped conv + folded BatchNorm + ReLU.

The forward computed y = relu(conv(x, w) * scale[co] + shift[co]) and saved the ReLU mask
(resnext_kernels/relu_mask.py). With gp = grad_y * mask (the gradient before the ReLU):
- dgrad:  grad_x = conv_transpose(gp * scale, w): per input pixel and tap, the output pixel that
  tap reached (if any: strides skip some), summed over the output channels of the pixel's group.
- wgrad:  G[co, ci, tap] = sum over output pixels of gp[co] * x[ci] under that tap; then
  grad_w = G * scale[co], grad_scale[co] = sum(G[co] * w[co]) (= sum gp * conv(x, w)), and
  grad_shift[co] = sum gp[co]. The pixel sum is split over fixed ranges of pixels, each
  program's partial sums are stored in fp32, and a second kernel adds the splits in a fixed
  order: no atomics, so the result is bitwise the same from run to run.

Tiles follow v2's forward (grouped_conv_bn_relu.py): where a group has fewer than 16 channels,
one tile packs several groups and the weight tile is block-diagonal. In dgrad the packing zeros
would carry 0 * NaN from one group's gradient into another's grad_x (nn.Conv2d's backward keeps
them apart), so a tile whose sums hold a NaN is recomputed without tensor cores, channel by
channel, with the other groups' products selected away: exact, and paid only by such tiles.
wgrad needs no such path: its packed entries pair channels of different groups and are dropped.

The mask bits are read per element (a byte holds 8 pixels of one channel). Every tensor is
addressed through its strides; offsets are 32-bit unless a tensor spans 2^31 elements
(INDEX_64). dgrad is v2 (a program per block of one stride class's pixels, the taps that
never reach the class skipped), wgrad is v2 (a program per kernel row, WGRAD_TAP_ROWS): correct
everywhere, not yet tuned on a GPU (docs/KERNELS.md).
"""

import functools
import math

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from ._device import on_device
from .grouped_conv_bn_relu import (
    INDEX_32_LIMIT,
    _channel_tiles,
    _dot_meta,
    _interpreted,
    _max_offset,
)


@triton.jit
def _masked_gradient(gy_ptr, mask_ptr, gy_off, m_out, offs_c, ok, C_out, HAS_MASK: tl.constexpr):
    """grad_y[m_out, offs_c] where the ReLU passed it, 0 where it did not or where not ok:
    [len(m_out), len(offs_c)] in grad_y's dtype. gy_off: the elements' offsets in grad_y."""
    g = tl.load(gy_ptr + gy_off, mask=ok, other=0.0)
    if HAS_MASK:
        byte = tl.load(mask_ptr + (m_out // 8)[:, None] * C_out + offs_c[None, :], mask=ok,
                       other=0)
        passes = ((byte.to(tl.int32) >> (m_out % 8).to(tl.int32)[:, None]) & 1) != 0
        g = tl.where(passes, g, 0.0)
    return g


@triton.jit
def _gradient_before_conv(gy_ptr, mask_ptr, z_ptr, coef_ptr, gy_off, m_out, offs_c, ok, C_out,
                          HAS_MASK: tl.constexpr, BN_TRAIN: tl.constexpr):
    """The conv output's gradient at [m_out, offs_c] in grad_y's dtype, 0 where not ok: gp
    (_masked_gradient); with BN_TRAIN, train-mode BatchNorm's grad_z formed here, in the
    prologue, from gp, z (at grad_y's offsets: the launcher makes their strides equal) and the
    per-channel coefficients fp32 [4, C_out] = (mean, k_gp, k_x, k_0):
    grad_z = k_gp * gp + k_x * (z - mean) + k_0 (backends/batchnorm_train.py), rounded to
    grad_y's dtype as a grad_z tensor would be."""
    g = _masked_gradient(gy_ptr, mask_ptr, gy_off, m_out, offs_c, ok, C_out, HAS_MASK)
    if BN_TRAIN:
        c_ok = offs_c < C_out
        mean = tl.load(coef_ptr + offs_c, mask=c_ok, other=0.0)
        k_gp = tl.load(coef_ptr + C_out + offs_c, mask=c_ok, other=0.0)
        k_x = tl.load(coef_ptr + 2 * C_out + offs_c, mask=c_ok, other=0.0)
        k_0 = tl.load(coef_ptr + 3 * C_out + offs_c, mask=c_ok, other=0.0)
        z = tl.load(z_ptr + gy_off, mask=ok, other=0.0).to(tl.float32)
        gz = (k_gp[None, :] * g.to(tl.float32) + k_x[None, :] * (z - mean[None, :])
              + k_0[None, :])
        g = tl.where(ok, gz, 0.0).to(g.dtype)
    return g


@triton.jit
def _tap_reaches_class(kh, kw, rh, rw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """Whether tap (kh, kw) reaches an output pixel from the input pixels of stride class
    (rh, rw), i.e. (hi, wi) = (hh * stride_h + rh, ww * stride_w + rw) (scalars: the same for
    every pixel of the class), and if so the output pixel's shift: the forward's tap read input
    row oh * stride_h - pad_h + kh * dil_h, so hi came from oh = hh + dh / stride_h with
    dh = rh + pad_h - kh * dil_h when that division is exact. (% of a negative dh is 0 exactly
    when it divides, whichever sign convention; the exact division then rounds no way.)"""
    dh = rh + pad_h - kh * dil_h
    dw = rw + pad_w - kw * dil_w
    reaches = (dh % stride_h == 0) & (dw % stride_w == 0)
    return reaches, dh // stride_h, dw // stride_w


@triton.jit
def _output_pixel(hh, ww, n, m_ok, shift_h, shift_w, H_out, W_out, sgn, sgh, sgw):
    """The output pixels (hh + shift_h, ww + shift_w) of image n that a reaching tap takes the
    gradient from: (inside the output, flat index n*H_out*W_out + ..., offset in grad_y)."""
    oh = hh + shift_h
    ow = ww + shift_w
    ok = m_ok & (oh >= 0) & (ow >= 0) & (oh < H_out) & (ow < W_out)
    return ok, (n * H_out + oh) * W_out + ow, n * sgn + oh * sgh + ow * sgw


@triton.jit
def _dgrad_kernel(
    gy_ptr,  # grad of the output [N, C_out, H_out, W_out], any strides
    mask_ptr,  # uint8 [ceil(N * H_out * W_out / 8), C_out]: the ReLU mask, when HAS_MASK
    z_ptr,  # BN_TRAIN: the conv's output z, grad_y's shape and strides
    coef_ptr,  # BN_TRAIN: fp32 [4, C_out], contiguous: grad_z's coefficients
    w_ptr,  # weight [C_out, C_in // groups, KH, KW], any strides, grad_y's dtype
    scale_ptr,  # fp32 [C_out], contiguous: the BN scale the forward applied
    gx_ptr,  # grad of the input [N, C_in, H, W], any strides
    N, C_in, H, W,  # input sizes
    C_out, H_out, W_out,  # output sizes
    cpg_in, cpg_out,  # channels per group
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,  # the forward's conv geometry
    Hc, Wc,  # a stride class's rows and columns: cdiv(H, stride_h), cdiv(W, stride_w)
    class_pixels,  # N * Hc * Wc (from the host: 64-bit where it needs to be)
    sgn, sgc, sgh, sgw,  # grad_y element strides
    swo, swi, swh, sww,  # weight element strides
    sxn, sxc, sxh, sxw,  # grad_x element strides
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_MASK: tl.constexpr,  # apply the ReLU mask (the forward had a ReLU)
    BN_TRAIN: tl.constexpr,  # form train-mode BN's grad_z in the prologue
    SPANS_GROUPS: tl.constexpr,  # a tile of BLOCK_N input channels may hold several groups
    DOT_IN_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr,  # input pixels per program
    BLOCK_N: tl.constexpr,  # input channels per program
    BLOCK_K: tl.constexpr,  # output channels per reduction step
):
    # The input pixels by stride class (rh, rw) = (hi % stride_h, wi % stride_w): a class's
    # pixels receive the same taps (at stride 2 and 3x3, 1, 2 or 4 of the 9), so a program
    # takes BLOCK_M pixels of one class and skips the taps that never reach them (docs/
    # KERNELS.md, "Triton dgrad v2"). The classes of a pixel block are neighbouring programs,
    # so the grad_y rows they share are read from L2 together. At stride 1: one class, every
    # tap.
    classes = stride_h * stride_w
    pid_m = tl.program_id(0)
    cls = pid_m % classes
    rh = cls // stride_w
    rw = cls % stride_w
    block = pid_m // classes
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    arange_k = tl.arange(0, BLOCK_K)
    if INDEX_64:
        offs_m = block.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        offs_n = offs_n.to(tl.int64)
        arange_k = arange_k.to(tl.int64)
    ww = offs_m % Wc
    hh = (offs_m // Wc) % Hc
    n = offs_m // (Wc * Hc)
    hi = hh * stride_h + rh
    wi = ww * stride_w + rw
    # (a class's last row or column may fall outside an input of odd size)
    m_ok = (offs_m < class_pixels) & (hi < H) & (wi < W)

    # input channels of this tile, and the span of output channels their groups feed
    ci0 = tl.program_id(1) * BLOCK_N
    n_ok = offs_n < C_in
    group_of_n = offs_n // cpg_in
    ci_last = tl.minimum(ci0 + BLOCK_N, C_in) - 1
    co_lo = (ci0 // cpg_in) * cpg_out
    co_hi = (ci_last // cpg_in + 1) * cpg_out

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in range(KH * KW):
        kh = tap // KW
        kw = tap % KW
        reaches, shift_h, shift_w = _tap_reaches_class(kh, kw, rh, rw, stride_h, stride_w,
                                                       pad_h, pad_w, dil_h, dil_w)
        if reaches:  # (a skipped tap costs a few scalar instructions)
            pos_ok, m_out, g_pix = _output_pixel(hh, ww, n, m_ok, shift_h, shift_w, H_out,
                                                 W_out, sgn, sgh, sgw)
            w_tap = w_ptr + kh * swh + kw * sww
            for k0 in range(co_lo, co_hi, BLOCK_K):
                offs_k = k0 + arange_k
                k_ok = offs_k < co_hi
                ok = pos_ok[:, None] & k_ok[None, :]
                g = _gradient_before_conv(gy_ptr, mask_ptr, z_ptr, coef_ptr,
                                          g_pix[:, None] + offs_k[None, :] * sgc, m_out, offs_k,
                                          ok, C_out, HAS_MASK, BN_TRAIN)
                # block-diagonal [BLOCK_K (co), BLOCK_N (ci)]: w[co, ci - group * cpg_in] *
                # scale[co] where co and ci share a group, zero elsewhere
                same_group = (offs_k // cpg_out)[:, None] == group_of_n[None, :]
                w_tile = tl.load(w_tap + offs_k[:, None] * swo
                                 + (offs_n[None, :] - group_of_n[None, :] * cpg_in) * swi,
                                 mask=same_group & k_ok[:, None] & n_ok[None, :], other=0.0)
                scale = tl.load(scale_ptr + offs_k, mask=k_ok, other=0.0)
                w_tile = w_tile.to(tl.float32) * scale[:, None]
                if DOT_IN_FP32:
                    acc = tl.dot(g.to(tl.float32), w_tile, acc, input_precision=DOT_PRECISION)
                else:
                    acc = tl.dot(g, w_tile.to(g.dtype), acc)

    if SPANS_GROUPS and tl.max(tl.where(acc != acc, 1, 0)) > 0:
        # a NaN: it may be one group's non-finite gradient times another group's packing zero.
        # Recompute the tile exactly, one output channel at a time (module docstring).
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for tap in range(KH * KW):
            kh = tap // KW
            kw = tap % KW
            reaches, shift_h, shift_w = _tap_reaches_class(kh, kw, rh, rw, stride_h,
                                                           stride_w, pad_h, pad_w, dil_h, dil_w)
            if reaches:
                pos_ok, m_out, g_pix = _output_pixel(hh, ww, n, m_ok, shift_h, shift_w, H_out,
                                                     W_out, sgn, sgh, sgw)
                for co in range(co_lo, co_hi):
                    co_v = tl.zeros((1,), dtype=offs_n.dtype) + co
                    g = _gradient_before_conv(gy_ptr, mask_ptr, z_ptr, coef_ptr,
                                              g_pix[:, None] + co_v[None, :] * sgc, m_out, co_v,
                                              pos_ok[:, None], C_out, HAS_MASK, BN_TRAIN)
                    same_group = (co // cpg_out) == group_of_n
                    w_row = tl.load(w_ptr + co * swo + (offs_n - group_of_n * cpg_in) * swi
                                    + kh * swh + kw * sww, mask=same_group & n_ok, other=0.0)
                    w_row = w_row.to(tl.float32) * tl.load(scale_ptr + co)
                    if not DOT_IN_FP32:  # the dot's operand rounding, as on the fast path
                        w_row = w_row.to(g.dtype).to(tl.float32)
                    acc += tl.where(same_group[None, :], g.to(tl.float32) * w_row[None, :], 0.0)

    gx_off = (n * sxn + hi * sxh + wi * sxw)[:, None] + offs_n[None, :] * sxc
    tl.store(gx_ptr + gx_off, acc.to(gx_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _wgrad_partial_kernel(
    x_ptr,  # input [N, C_in, H, W], any strides
    gy_ptr,  # grad of the output [N, C_out, H_out, W_out], any strides
    mask_ptr,  # uint8 [ceil(M / 8), C_out]: the ReLU mask, when HAS_MASK
    z_ptr,  # BN_TRAIN: the conv's output z, grad_y's shape and strides
    coef_ptr,  # BN_TRAIN: fp32 [4, C_out], contiguous: grad_z's coefficients
    part_w_ptr,  # fp32 [splits, C_out, cpg_in, KH*KW], contiguous: per split, G's partial sums
    part_shift_ptr,  # fp32 [splits, C_out], contiguous: per split, sum of gp
    N, C_in, H, W,
    C_out, H_out, W_out,
    cpg_in, cpg_out,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sxn, sxc, sxh, sxw,  # x element strides
    sgn, sgc, sgh, sgw,  # grad_y element strides
    pixels_per_split,  # output pixels per split (a multiple of BLOCK_M)
    k_chunks,  # BLOCK_K chunks of a tile's input-channel span
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BN_TRAIN: tl.constexpr,  # form train-mode BN's grad_z in the prologue
    DOT_IN_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr,  # output pixels per step
    BLOCK_N: tl.constexpr,  # output channels per program
    BLOCK_K: tl.constexpr,  # input channels per program
    # taps per program: 1 (a program per tap) or a power of two >= KW (a program per kernel
    # row: its KW taps side by side in the K dimension, the slots past KW masked off), so the
    # gradient tile, its mask and the pixel indices are loaded and decoded once per row
    TAP_SLOTS: tl.constexpr,
    CI_ALIGN: tl.constexpr,  # a power of two that divides every tile's first input channel
):
    split = tl.program_id(0)
    k_chunk = tl.program_id(2) % k_chunks
    if TAP_SLOTS == 1:
        tap = tl.program_id(2) // k_chunks
        kh = tap // KW
        kw0 = tap % KW
    else:
        kh = tl.program_id(2) // k_chunks
        kw0 = 0
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    arange_m = tl.arange(0, BLOCK_M)
    # the K dimension: TAP_SLOTS slots of BLOCK_K input channels; slot s is tap (kh, kw0 + s)
    arange_j = tl.arange(0, TAP_SLOTS * BLOCK_K)
    slot = arange_j // BLOCK_K
    arange_k = arange_j % BLOCK_K
    m_start = split * pixels_per_split
    if INDEX_64:
        offs_n = offs_n.to(tl.int64)
        arange_m = arange_m.to(tl.int64)
        arange_k = arange_k.to(tl.int64)
        m_start = split.to(tl.int64) * pixels_per_split
    M = N * H_out * W_out
    if INDEX_64:
        M = N.to(tl.int64) * H_out * W_out
    m_end = tl.minimum(m_start + pixels_per_split, M)

    # output channels of this tile, and the span of input channels their groups read
    co0 = tl.program_id(1) * BLOCK_N
    n_ok = offs_n < C_out
    group_of_n = offs_n // cpg_out
    co_last = tl.minimum(co0 + BLOCK_N, C_out) - 1
    ci_lo = tl.multiple_of((co0 // cpg_out) * cpg_in, CI_ALIGN)  # (wide loads of x)
    ci_hi = (co_last // cpg_out + 1) * cpg_in
    offs_k = ci_lo + k_chunk * BLOCK_K + arange_k
    kw = kw0 + slot
    k_ok = (offs_k < ci_hi) & (kw < KW)

    acc = tl.zeros((TAP_SLOTS * BLOCK_K, BLOCK_N), dtype=tl.float32)
    shift_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = m0 + arange_m
        m_ok = offs_m < m_end
        wo = offs_m % W_out
        ho = (offs_m // W_out) % H_out
        n = offs_m // (W_out * H_out)
        g = _gradient_before_conv(gy_ptr, mask_ptr, z_ptr, coef_ptr,
                                  (n * sgn + ho * sgh + wo * sgw)[:, None] + offs_n[None, :] * sgc,
                                  offs_m, offs_n, m_ok[:, None] & n_ok[None, :], C_out, HAS_MASK,
                                  BN_TRAIN)
        shift_acc += tl.sum(g.to(tl.float32), axis=0)
        hi = ho * stride_h - pad_h + kh * dil_h
        row_ok = m_ok & (hi >= 0) & (hi < H)
        wi = (wo * stride_w - pad_w)[:, None] + (kw * dil_w)[None, :]  # [BLOCK_M, slots * K]
        pos_ok = row_ok[:, None] & (wi >= 0) & (wi < W)
        x_tile = tl.load(x_ptr + (n * sxn + hi * sxh)[:, None] + wi * sxw + offs_k[None, :] * sxc,
                         mask=pos_ok & k_ok[None, :], other=0.0)
        if DOT_IN_FP32:
            acc = tl.dot(tl.trans(x_tile.to(tl.float32)), g.to(tl.float32), acc,
                         input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(tl.trans(x_tile), g, acc)

    # keep the entries that pair an input and an output channel of one group:
    # part_w[split, co, ci - group * cpg_in, tap], slot s of the row being tap kh * KW + kw0 + s
    taps = KH * KW
    same_group = (offs_k // cpg_in)[:, None] == group_of_n[None, :]
    ci_local = offs_k[:, None] - group_of_n[None, :] * cpg_in
    split_w = part_w_ptr + split * (C_out * cpg_in * taps)
    if INDEX_64:
        split_w = part_w_ptr + split.to(tl.int64) * (C_out * cpg_in * taps)
    tl.store(split_w + offs_n[None, :] * (cpg_in * taps) + ci_local * taps
             + (kh * KW + kw)[:, None], acc, mask=same_group & k_ok[:, None] & n_ok[None, :])
    if tl.program_id(2) == 0:  # every (tap row, chunk) program summed the same gp; one stores it
        tl.store(part_shift_ptr + split * C_out + offs_n, shift_acc, mask=n_ok)


@triton.jit
def _wgrad_finalize_kernel(
    part_w_ptr,  # fp32 [splits, C_out, R], contiguous (R = cpg_in * KH * KW)
    part_shift_ptr,  # fp32 [splits, C_out], contiguous
    w_ptr,  # weight [C_out, cpg_in, KH, KW], any strides
    scale_ptr,  # fp32 [C_out], contiguous
    gw_ptr,  # grad of the weight [C_out, cpg_in, KH, KW], any strides
    gscale_ptr,  # grad of the scale [C_out], contiguous
    gshift_ptr,  # grad of the shift [C_out], contiguous
    splits, C_out, R,
    swo, swi, swh, sww,  # weight element strides
    sgo, sgi, sgh, sgw,  # grad_w element strides
    KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_R: tl.constexpr,  # weights per step of one output channel
):
    """One program per output channel: G = the splits' partials added in split order; grad_w =
    G * scale; grad_scale = sum(G * w); grad_shift = the splits' gp sums, in split order."""
    co = tl.program_id(0)
    arange_r = tl.arange(0, BLOCK_R)
    scale = tl.load(scale_ptr + co)
    scale_acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + arange_r
        r_ok = r < R
        G = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for s in range(splits):
            G += tl.load(part_w_ptr + (s * C_out + co).to(tl.int64) * R + r, mask=r_ok,
                         other=0.0)
        ci = r // (KH * KW)
        kh = (r % (KH * KW)) // KW
        kw = r % KW
        w = tl.load(w_ptr + co * swo + ci * swi + kh * swh + kw * sww, mask=r_ok, other=0.0)
        scale_acc += tl.where(r_ok, G * w.to(tl.float32), 0.0)
        tl.store(gw_ptr + co * sgo + ci * sgi + kh * sgh + kw * sgw,
                 (G * scale).to(gw_ptr.dtype.element_ty), mask=r_ok)
    shift = 0.0
    for s in range(splits):
        shift += tl.load(part_shift_ptr + s * C_out + co)
    tl.store(gscale_ptr + co, tl.sum(scale_acc, axis=0).to(gscale_ptr.dtype.element_ty))
    tl.store(gshift_ptr + co, shift.to(gshift_ptr.dtype.element_ty))


# ------------------------------------------------------------------------------ launchers
_INTERPRETER_BLOCK_M = 32
# BLOCK_M and num_warps on a GPU: one fixed configuration per tile size for now (not yet tuned
# or measured). 64-wide channel tiles take 8 warps: with 4, ptxas spilled 250-680 bytes at
# cpg 64 on sm_90 (scripts/triton_aot_check.py checks every path).
_GPU_BLOCK_M = 64
# wgrad: how many programs the pixel splits aim for in all (more splits: more parallelism, more
# partial sums to add). A function of the shape only, so the sums' order never changes.
WGRAD_TARGET_PROGRAMS = 2048
# wgrad: a program per kernel row (its KW taps side by side) rather than per tap, so the
# gradient tile, its mask and the pixel indices are loaded and decoded once for KW taps
# (docs/KERNELS.md, wgrad v2). False: v1's program per tap (kept to compare and to test).
WGRAD_TAP_ROWS = True
_FINALIZE_BLOCK_R = 64


def _block_m(t):
    return _INTERPRETER_BLOCK_M if _interpreted(t) else _GPU_BLOCK_M


def _launch_options(t, block_n=16, block_k=16, bn_train=False):
    """bn_train: 8 warps whatever the tile: the prologue's z tile and coefficients took dgrad
    to 255 registers and an 8-byte spill at 4 warps (NCHW, cpg 4, sm_90)."""
    if _interpreted(t):
        return {}
    wide = max(block_n, block_k) >= 64 or bn_train
    return dict(num_warps=8 if wide else 4, num_stages=2)


def wgrad_tap_slots(KW, block_n=16, bn_train=False, channels_last=True):
    """Taps per wgrad program: the kernel row's KW in a power-of-two slot count, or 1 where a
    row's registers spill on sm_90 (scripts/triton_aot_check.py), which then keeps a program
    per tap:
    - NCHW x with 32- and 64-wide tiles: Triton 3.9 spilled 500-2100 bytes (3.6 did not);
    - grad_z formed in the prologue (bn_train) with 64-wide tiles: a 256 x 64 accumulator, the
      z tile and the coefficients took 252-255 registers and spilled 96-128 bytes in NCHW."""
    if (not WGRAD_TAP_ROWS or (bn_train and block_n >= 64)
            or (not channels_last and block_n >= 32)):
        return 1
    return triton.next_power_of_2(KW)


@functools.lru_cache(maxsize=256)  # (per call on the host path: a shape's answer is fixed)
def first_channel_alignment(C_out, block_n, cpg_out, cpg_in, cap=16):
    """The largest power of two (at most cap) dividing the first input channel of every
    output-channel tile: (t * block_n // cpg_out) * cpg_in, promised to the compiler so that
    x's channels_last rows load 16 bytes at a time."""
    firsts = [(t * block_n // cpg_out) * cpg_in for t in range(triton.cdiv(C_out, block_n))]
    common = math.gcd(*firsts) or cap  # (one tile: its first channel is 0)
    return min(cap, common & -common)


def wgrad_splits(M, tiles, block_m, target=None):
    """(pixels per split, splits): the pixel ranges wgrad's programs sum over. `tiles`:
    programs per split. Depends on the shape only (deterministic sums)."""
    target = WGRAD_TARGET_PROGRAMS if target is None else target
    splits = max(1, min(triton.cdiv(M, block_m), target // max(1, tiles)))
    per_split = triton.cdiv(triton.cdiv(M, splits), block_m) * block_m
    return per_split, triton.cdiv(M, per_split)


def packed(z):
    """z itself where it is packed (contiguous or channels_last), else a packed copy in its
    memory format: the launchers that address z, grad_y and grad_z with one set of strides
    allocate the others with empty_like(z), which keeps a packed tensor's strides but packs a
    view with gaps (every second column, say), whose strides would address past their end."""
    if z.is_contiguous() or z.is_contiguous(memory_format=torch.channels_last):
        return z
    return z.contiguous(memory_format=suggest_memory_format(z))


def _bn_train_operands(grad_y, bn_train):
    """(grad_y, z, coefficients) for a BN_TRAIN launch: grad_y in z's strides (the kernels
    address both with grad_y's), or stand-ins (grad_y twice and nothing) without one."""
    if bn_train is None:
        return grad_y, grad_y, grad_y
    z, coef = bn_train
    z = packed(z)
    if grad_y.stride() != z.stride():
        grad_y = torch.empty_like(z).copy_(grad_y)
    return grad_y, z, coef


def grouped_conv_dgrad(grad_y, mask, weight, scale, input_size, stride, padding, dilation,
                       groups, channels_last, bn_train=None):
    """grad_x [N, C_in, H, W] (channels_last or contiguous, as the forward's x). bn_train:
    (z, grad_z coefficients) to take train-mode BN's grad_z, formed in the prologue, for the
    masked gradient (pass a unit scale)."""
    N, C_in, H, W = input_size
    C_out, cpg_in, KH, KW = weight.shape
    H_out, W_out = grad_y.shape[2], grad_y.shape[3]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    grad_x = torch.empty((N, C_in, H, W), dtype=grad_y.dtype, device=grad_y.device,
                         memory_format=fmt)
    if grad_x.numel() == 0:
        return grad_x
    if grad_y.numel() == 0:  # nothing reached the output (cannot happen with N > 0)
        return grad_x.zero_()
    grad_y, z, coef = _bn_train_operands(grad_y, bn_train)
    cpg_out = C_out // groups
    block_n, block_k = _channel_tiles(cpg_out, cpg_in)  # tiles over ci, reduce over co
    block_m = _block_m(grad_y)
    has_mask = mask.shape[0] > 0
    meta = dict(
        KH=KH, KW=KW, HAS_MASK=has_mask, BN_TRAIN=bn_train is not None, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k, SPANS_GROUPS=cpg_in % block_n != 0,
        INDEX_64=max(_max_offset(t) for t in (grad_y, weight, grad_x, mask)) > INDEX_32_LIMIT,
        **_dot_meta(grad_y, _interpreted(grad_y)),
        **_launch_options(grad_y, block_n, block_k, bn_train is not None),
    )
    # programs by stride class (the kernel's comment): each class Hc x Wc pixels per image
    Hc, Wc = triton.cdiv(H, stride[0]), triton.cdiv(W, stride[1])
    class_pixels = N * Hc * Wc
    grid = (stride[0] * stride[1] * triton.cdiv(class_pixels, block_m),
            triton.cdiv(C_in, block_n))
    with on_device(grad_y):
        _dgrad_kernel[grid](
            grad_y, mask if has_mask else grad_y, z, coef, weight,
            scale.to(torch.float32).contiguous(),
            grad_x,
            N, C_in, H, W, C_out, H_out, W_out, cpg_in, cpg_out,
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
            Hc, Wc, class_pixels,
            *grad_y.stride(), *weight.stride(), *grad_x.stride(),
            **meta,
        )
    return grad_x


def grouped_conv_wgrad(grad_y, mask, x, weight, scale, stride, padding, dilation, groups,
                       bn_train=None):
    """(grad_w in weight's dtype and layout, grad_scale fp32, grad_shift fp32). bn_train: as
    grouped_conv_dgrad's (grad_scale and grad_shift are then those of the conv's output)."""
    N, C_in, H, W = x.shape
    C_out, cpg_in, KH, KW = weight.shape
    H_out, W_out = grad_y.shape[2], grad_y.shape[3]
    M = N * H_out * W_out
    device = x.device
    grad_y, z, coef = _bn_train_operands(grad_y, bn_train)
    grad_w = torch.empty_like(weight)
    grad_scale = torch.empty(C_out, dtype=torch.float32, device=device)
    grad_shift = torch.empty(C_out, dtype=torch.float32, device=device)
    cpg_out = C_out // groups
    block_n, _ = _channel_tiles(cpg_in, cpg_out)
    # the most input channels a tile of block_n output channels reads: its groups' (tiles start
    # at group boundaries where block_n is a multiple of cpg_out; elsewhere a tile may touch one
    # group more)
    if block_n % cpg_out == 0:
        k_span = block_n // cpg_out * cpg_in
    else:
        k_span = min(C_in, (triton.cdiv(block_n - 1, cpg_out) + 1) * cpg_in)
    block_k = min(64, max(16, triton.next_power_of_2(k_span)))
    k_chunks = triton.cdiv(k_span, block_k)
    block_m = _block_m(x)
    taps = KH * KW
    # (channels_last: x's channels contiguous, so a row's x tile loads along them)
    tap_slots = wgrad_tap_slots(KW, block_n, bn_train is not None, x.stride(1) == 1)
    tap_programs = KH if tap_slots > 1 else taps  # programs per (split, tile, chunk)
    # the splits as for a program per tap, whatever tap_slots: the same partial sums to add
    # (more splits would add their bytes: at 7x7 they outweigh x), KW times fewer programs
    tiles = triton.cdiv(C_out, block_n) * taps * k_chunks
    if M == 0:
        per_split, splits = 1, 0
    else:
        per_split, splits = wgrad_splits(M, tiles, block_m)
    part_w = torch.empty((splits, C_out, cpg_in * taps), dtype=torch.float32, device=device)
    part_shift = torch.empty((splits, C_out), dtype=torch.float32, device=device)
    has_mask = mask.shape[0] > 0
    scale32 = scale.to(torch.float32).contiguous()
    with on_device(x):
        if splits:
            _wgrad_partial_kernel[(splits, triton.cdiv(C_out, block_n), tap_programs * k_chunks)](
                x, grad_y, mask if has_mask else grad_y, z, coef, part_w, part_shift,
                N, C_in, H, W, C_out, H_out, W_out, cpg_in, cpg_out,
                stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                *x.stride(), *grad_y.stride(), per_split, k_chunks,
                KH=KH, KW=KW, HAS_MASK=has_mask, BN_TRAIN=bn_train is not None,
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, TAP_SLOTS=tap_slots,
                CI_ALIGN=first_channel_alignment(C_out, block_n, cpg_out, cpg_in),
                INDEX_64=max(_max_offset(t) for t in (x, grad_y, mask, part_w)) > INDEX_32_LIMIT,
                **_dot_meta(x, _interpreted(x)),
                **_launch_options(x, block_n, block_k, bn_train is not None),
            )
        _wgrad_finalize_kernel[(C_out,)](
            part_w, part_shift, weight, scale32, grad_w, grad_scale, grad_shift,
            splits, C_out, cpg_in * taps, *weight.stride(), *grad_w.stride(),
            KH=KH, KW=KW, BLOCK_R=_FINALIZE_BLOCK_R, **_launch_options(x),
        )
    return grad_w, grad_scale, grad_shift

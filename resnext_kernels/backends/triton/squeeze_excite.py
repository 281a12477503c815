"""Triton: fused squeeze-and-excitation in three launches, deterministic (no atomics).

1. squeeze: pooled[n, c] = mean_hw u[n, c]          one program per (n, channel block); reads u once
2. excite:  gate[n]   = sigmoid(W2 relu(W1 pooled[n] + b1) + b2)   one program per n; fp32
3. scale:   out = relu?(u * gate[n, c] + residual)  reads u again and residual once, writes once

u is read twice, residual once, out written once (eager PyTorch makes about seven passes).
Tiles are [BLOCK_HW, BLOCK_C] addressed through strides: NCHW and channels_last alike.
"""

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from .. import triton_interpreter_enabled
from ._device import on_device


@triton.jit
def _se_squeeze_kernel(
    u_ptr,  # [N, C, H, W], any strides
    pooled_ptr,  # fp32 [N, C] contiguous: output
    C, HW, W,  # sizes (HW = H * W)
    sun, suc, suh, suw,  # u element strides
    inv_hw,  # 1 / HW
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    acc = tl.zeros((BLOCK_HW, BLOCK_C), dtype=tl.float32)
    for hw0 in range(0, HW, BLOCK_HW):
        offs_hw = hw0 + tl.arange(0, BLOCK_HW)
        hw_off = (offs_hw // W).to(tl.int64) * suh + (offs_hw % W).to(tl.int64) * suw
        tile = tl.load(
            u_ptr + n * sun + hw_off[:, None] + offs_c[None, :].to(tl.int64) * suc,
            mask=(offs_hw < HW)[:, None] & c_ok[None, :],
            other=0.0,
        )
        acc += tile.to(tl.float32)
    tl.store(pooled_ptr + n * C + offs_c, tl.sum(acc, axis=0) * inv_hw, mask=c_ok)


@triton.jit
def _se_excite_kernel(
    pooled_ptr,  # fp32 [N, C] contiguous
    w1_ptr,  # [R, C], any strides, any float dtype
    b1_ptr,  # [R] (unused unless HAS_B1)
    w2_ptr,  # [C, R], any strides, any float dtype
    b2_ptr,  # [C] (unused unless HAS_B2)
    gate_ptr,  # fp32 [N, C] contiguous: output
    C, R,
    sw1r, sw1c,  # w1 element strides
    sw2c, sw2r,  # w2 element strides
    HAS_B1: tl.constexpr,
    HAS_B2: tl.constexpr,
    BLOCK_R: tl.constexpr,  # >= R: the hidden vector stays in registers
    BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    hidden = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        p = tl.load(pooled_ptr + n * C + offs_c, mask=c_ok, other=0.0)
        w1 = tl.load(
            w1_ptr + offs_r[:, None] * sw1r + offs_c[None, :] * sw1c,
            mask=r_ok[:, None] & c_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        hidden += tl.sum(w1 * p[None, :], axis=1)
    if HAS_B1:
        hidden += tl.load(b1_ptr + offs_r, mask=r_ok, other=0.0).to(tl.float32)
    hidden = tl.where(hidden < 0.0, 0.0, hidden)  # ReLU that keeps NaN, as torch.relu does
    # the padding units past R hold 0 * pooled, NaN where pooled is infinite: zero them, or
    # they would reach every gate through W2
    hidden = tl.where(r_ok, hidden, 0.0)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        w2 = tl.load(
            w2_ptr + offs_c[:, None] * sw2c + offs_r[None, :] * sw2r,
            mask=c_ok[:, None] & r_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        a = tl.sum(w2 * hidden[None, :], axis=1)
        if HAS_B2:
            a += tl.load(b2_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        tl.store(gate_ptr + n * C + offs_c, tl.sigmoid(a), mask=c_ok)


@triton.jit
def _se_scale_kernel(
    u_ptr,  # [N, C, H, W], any strides
    gate_ptr,  # fp32 [N, C] contiguous
    res_ptr,  # [N, C, H, W], any strides (unused unless HAS_RESIDUAL)
    out_ptr,  # [N, C, H, W], any strides: output
    C, HW, W,
    sun, suc, suh, suw,  # u element strides
    srn, src, srh, srw,  # residual element strides
    son, soc, soh, sow,  # out element strides
    HAS_RESIDUAL: tl.constexpr,
    APPLY_RELU: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # axis 0 walks (n, hw block) pairs: it is the only grid axis allowed more than 65535 programs
    hw_blocks = tl.cdiv(HW, BLOCK_HW)
    n = (tl.program_id(0) // hw_blocks).to(tl.int64)
    offs_hw = (tl.program_id(0) % hw_blocks) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    mask = (offs_hw < HW)[:, None] & c_ok[None, :]
    h = (offs_hw // W).to(tl.int64)[:, None]
    w = (offs_hw % W).to(tl.int64)[:, None]
    c = offs_c.to(tl.int64)[None, :]
    u = tl.load(u_ptr + n * sun + c * suc + h * suh + w * suw, mask=mask, other=0.0)
    gate = tl.load(gate_ptr + n * C + offs_c, mask=c_ok, other=0.0)
    out = u.to(tl.float32) * gate[None, :]
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + n * srn + c * src + h * srh + w * srw, mask=mask, other=0.0)
        out += r.to(tl.float32)
    if APPLY_RELU:
        out = tl.where(out < 0.0, 0.0, out)
    tl.store(out_ptr + n * son + c * soc + h * soh + w * sow, out.to(out_ptr.dtype.element_ty),
             mask=mask)


def squeeze_excite(u, w1, b1, w2, b2, residual, relu):
    """Launcher. Arguments are validated by the op; w1 is [R, C], w2 is [C, R]."""
    N, C, H, W = u.shape
    R = w1.shape[0]
    HW = H * W
    out = torch.empty(u.shape, dtype=u.dtype, device=u.device,
                      memory_format=suggest_memory_format(u))
    if out.numel() == 0:
        return out
    pooled = torch.empty((N, C), dtype=torch.float32, device=u.device)
    gate = torch.empty((N, C), dtype=torch.float32, device=u.device)
    interpreted = triton_interpreter_enabled() or u.device.type == "cpu"
    block_c = 32 if interpreted else 64
    block_hw = 32 if interpreted else 64
    with on_device(u):
        _se_squeeze_kernel[(N, triton.cdiv(C, block_c))](
            u, pooled, C, HW, W, *u.stride(), 1.0 / HW, BLOCK_HW=block_hw, BLOCK_C=block_c,
        )
        _se_excite_kernel[(N,)](
            pooled, w1, b1 if b1 is not None else pooled, w2, b2 if b2 is not None else pooled, gate,
            C, R, *w1.stride(), *w2.stride(),
            HAS_B1=b1 is not None, HAS_B2=b2 is not None,
            BLOCK_R=max(16, triton.next_power_of_2(R)), BLOCK_C=block_c,
        )
        res = residual if residual is not None else u
        _se_scale_kernel[(N * triton.cdiv(HW, block_hw), triton.cdiv(C, block_c))](
            u, gate, res, out, C, HW, W, *u.stride(), *res.stride(), *out.stride(),
            HAS_RESIDUAL=residual is not None, APPLY_RELU=bool(relu),
            BLOCK_HW=block_hw, BLOCK_C=block_c,
        )
    return out

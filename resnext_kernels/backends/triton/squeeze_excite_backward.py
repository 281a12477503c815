"""Triton: the squeeze-and-excitation op's backward, deterministic (no atomics).

With z = u * s + residual, out = relu?(z), s = sigmoid(a2), a2 = W2 h + b2, h = relu(a1),
a1 = W1 pooled + b1, pooled = mean_hw u (all per image n; fp32):

1. the gate again (the forward's squeeze and excite launches, squeeze_excite.gate), keeping h
2. gate gradient:  g = grad_out where the tail's ReLU passed it (z > 0 or NaN), else 0;
                   d_a2[n, c] = sum_hw (g * u) * s * (1 - s)      one program per (n, channel
                   block), reading grad_out, u, residual once; g is written as grad_residual
                   (exact: g is grad_out or 0, in grad_out's dtype) when that is wanted
3. the FCs' backward, six launches of the forward's FC kernel (fp32, fixed order):
                   d_a1 = (d_a2 W2) where h > 0 (or NaN), d_pooled = d_a1 W1,
                   grad_w1 = d_a1^T pooled, grad_b1 = sum_n d_a1,
                   grad_w2 = d_a2^T h, grad_b2 = sum_n d_a2
4. input gradient: grad_u = g * s + d_pooled / HW, reading g back (or grad_out, and u and the
                   residual for the ReLU's mask, where g was not written)

Passes over [N, C, H, W] tensors, as elements: the tail with a residual, every gradient wanted:
u (1); grad_out, u, residual (3) + g (1); g (1) + grad_u (1): 7. Eager autograd of the
original modules makes about 13 (docs/KERNELS.md, "SE backward").
The ReLUs' gradients follow torch's threshold_backward on their outputs (the tail's as the
forward rounded it): a NaN passes.
"""

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from .. import reference
from ._device import on_device
from .squeeze_excite import (
    FC_BLOCK_J_HIDDEN,
    elementwise_blocks,
    fc,
    fc_splits,
    flat_hw,
    gate,
    pixel_tile,
    plane_offset,
)


@triton.jit
def _tail_gradient(go, u, r, s, HAS_RESIDUAL: tl.constexpr, APPLY_RELU: tl.constexpr,
                   ROUNDS_TO_ZERO: tl.constexpr):
    """g: grad_out through the tail's ReLU, where the forward's output was not <= 0: z = u * s
    (+ r) in fp32 as the scale kernel makes it, whose rounding to the output's dtype is <= 0
    exactly where z <= ROUNDS_TO_ZERO (a comparison, not a conversion: Triton 3.9's
    interpreter converted fp32 to bf16 wrongly here)."""
    g = go.to(tl.float32)
    if APPLY_RELU:
        z = u.to(tl.float32) * s
        if HAS_RESIDUAL:
            z += r.to(tl.float32)
        g = tl.where(z <= ROUNDS_TO_ZERO, 0.0, g)
    return g


@triton.jit
def _se_gate_grad_kernel(
    go_ptr,  # [N, C, H, W], any strides: grad_out
    u_ptr,  # [N, C, H, W], any strides
    res_ptr,  # [N, C, H, W], any strides (unused unless HAS_RESIDUAL)
    gate_ptr,  # fp32 [N, C] contiguous: s
    d_a2_ptr,  # fp32 [N, C] contiguous: output, the gradient of the gate's pre-activation
    g_ptr,  # [N, C, H, W], any strides: output g (unused unless STORE_G)
    C, HW, W,
    sgn, sgc, sgh, sgw,  # grad_out element strides
    sun, suc, suh, suw,  # u element strides
    srn, src, srh, srw,  # residual element strides
    stn, stc, sth, stw,  # g element strides
    HAS_RESIDUAL: tl.constexpr,
    APPLY_RELU: tl.constexpr,
    STORE_G: tl.constexpr,
    ROUNDS_TO_ZERO: tl.constexpr,  # the largest z the output's dtype rounds to 0
    FLAT_HW: tl.constexpr,  # every tensor's plane flat (plane_offset)
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    c = offs_c.to(tl.int64)[None, :]
    s = tl.load(gate_ptr + n * C + offs_c, mask=c_ok, other=0.0)
    acc = tl.zeros((BLOCK_HW, BLOCK_C), dtype=tl.float32)
    for hw0 in range(0, HW, BLOCK_HW):
        offs_hw = hw0 + tl.arange(0, BLOCK_HW)
        mask = (offs_hw < HW)[:, None] & c_ok[None, :]
        go = tl.load(go_ptr + n * sgn + c * sgc + plane_offset(offs_hw, W, sgh, sgw, FLAT_HW),
                     mask=mask, other=0.0)
        u = tl.load(u_ptr + n * sun + c * suc + plane_offset(offs_hw, W, suh, suw, FLAT_HW),
                    mask=mask, other=0.0)
        r = go
        if HAS_RESIDUAL and APPLY_RELU:
            r = tl.load(res_ptr + n * srn + c * src
                        + plane_offset(offs_hw, W, srh, srw, FLAT_HW), mask=mask, other=0.0)
        g = _tail_gradient(go, u, r, s[None, :], HAS_RESIDUAL, APPLY_RELU, ROUNDS_TO_ZERO)
        acc += g * u.to(tl.float32)
        if STORE_G:
            tl.store(g_ptr + n * stn + c * stc + plane_offset(offs_hw, W, sth, stw, FLAT_HW),
                     g.to(g_ptr.dtype.element_ty), mask=mask)
    d_s = tl.sum(acc, axis=0)
    tl.store(d_a2_ptr + n * C + offs_c, d_s * s * (1.0 - s), mask=c_ok)


@triton.jit
def _se_input_grad_kernel(
    go_ptr,  # [N, C, H, W], any strides: g itself where G_WRITTEN, else grad_out
    u_ptr,  # [N, C, H, W], any strides (unused where G_WRITTEN)
    res_ptr,  # [N, C, H, W], any strides (unused unless HAS_RESIDUAL)
    gate_ptr,  # fp32 [N, C] contiguous: s
    d_pooled_ptr,  # fp32 [N, C] contiguous: the gradient of pooled
    grad_u_ptr,  # [N, C, H, W], any strides: output
    C, HW, W,
    sgn, sgc, sgh, sgw,  # go element strides
    sun, suc, suh, suw,  # u element strides
    srn, src, srh, srw,  # residual element strides
    sxn, sxc, sxh, sxw,  # grad_u element strides
    inv_hw,  # 1 / HW: pooled's gradient spread over the pixels
    G_WRITTEN: tl.constexpr,  # go_ptr holds g (the gate gradient kernel wrote it)
    HAS_RESIDUAL: tl.constexpr,
    APPLY_RELU: tl.constexpr,
    ROUNDS_TO_ZERO: tl.constexpr,  # the largest z the output's dtype rounds to 0
    FLAT_HW: tl.constexpr,  # every tensor's plane flat (plane_offset)
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n, offs_c, c_ok, mask, c, offs_hw = pixel_tile(C, HW, BLOCK_HW, BLOCK_C)
    s = tl.load(gate_ptr + n * C + offs_c, mask=c_ok, other=0.0)[None, :]
    go = tl.load(go_ptr + n * sgn + c * sgc + plane_offset(offs_hw, W, sgh, sgw, FLAT_HW),
                 mask=mask, other=0.0)
    if G_WRITTEN:
        g = go.to(tl.float32)
    else:
        u = go
        r = go
        if APPLY_RELU:
            u = tl.load(u_ptr + n * sun + c * suc
                        + plane_offset(offs_hw, W, suh, suw, FLAT_HW), mask=mask, other=0.0)
            if HAS_RESIDUAL:
                r = tl.load(res_ptr + n * srn + c * src
                            + plane_offset(offs_hw, W, srh, srw, FLAT_HW), mask=mask,
                            other=0.0)
        g = _tail_gradient(go, u, r, s, HAS_RESIDUAL, APPLY_RELU, ROUNDS_TO_ZERO)
    d_pooled = tl.load(d_pooled_ptr + n * C + offs_c, mask=c_ok, other=0.0)[None, :]
    grad_u = g * s + d_pooled * inv_hw
    tl.store(grad_u_ptr + n * sxn + c * sxc + plane_offset(offs_hw, W, sxh, sxw, FLAT_HW),
             grad_u.to(grad_u_ptr.dtype.element_ty), mask=mask)


# The largest positive fp32 value each output dtype rounds (to nearest even) to 0: half its
# smallest subnormal, 2^-24 in fp16 and 2^-133 in bf16
ROUNDS_TO_ZERO = {torch.float16: 2.0**-25, torch.bfloat16: 2.0**-134, torch.float32: 0.0}

# 8 warps: three [64, 64] tiles in flight and the accumulator; at 4, sm_90 spilled ~1.3 KB in
# NCHW (Triton 3.6, scripts/triton_aot_check.py)
GATE_GRAD_WARPS = 8


def squeeze_excite_backward(grad_out, u, w1, b1, w2, b2, residual, relu, need_u, need_fc,
                            need_residual):
    """Launcher. Arguments are validated by the op; w1 is [R, C], w2 is [C, R]. Returns
    (grad_u, grad_w1 [R, C], grad_b1 [R], grad_w2 [C, R], grad_b2 [C], grad_residual), the FC
    gradients in fp32; an empty tensor for each gradient not wanted."""
    N, C, H, W = u.shape
    R = w1.shape[0]
    HW = H * W
    def nothing():  # a gradient not wanted: an empty tensor (outputs may not alias)
        return u.new_empty(0)

    grad_u = torch.empty(u.shape, dtype=u.dtype, device=u.device,
                         memory_format=suggest_memory_format(u)) if need_u else nothing()
    need_residual = need_residual and residual is not None
    grad_res = torch.empty(u.shape, dtype=u.dtype, device=u.device,
                           memory_format=suggest_memory_format(residual)) \
        if need_residual else nothing()
    f32 = dict(dtype=torch.float32, device=u.device)
    fc_grads = ((torch.empty((R, C), **f32), torch.empty(R, **f32), torch.empty((C, R), **f32),
                 torch.empty(C, **f32)) if need_fc else tuple(nothing() for _ in range(4)))
    if not (need_u or need_fc or need_residual):
        return (grad_u, *fc_grads, grad_res)
    if N * HW == 0:  # no pixels: the sums over them are 0 (or, over 0 pixels, mean's NaN)
        return reference.squeeze_excite_backward(grad_out, u, w1, b1, w2, b2, residual, relu,
                                                 need_u, need_fc, need_residual)
    # fp32 workspace: pooled, s, d_a2, d_pooled [N, C]; hidden partial sums [splits, N, R];
    # h, d_a1 [N, R]
    splits = fc_splits(C)
    workspace = torch.empty(N * (4 * C + (splits + 2) * R), **f32)
    pooled, s, d_a2, d_pooled = workspace[: 4 * N * C].view(4, N, C)
    hidden_parts = workspace[4 * N * C: (4 * C + splits * R) * N]
    h, d_a1 = workspace[(4 * C + splits * R) * N:].view(2, N, R)
    block_hw, block_c = elementwise_blocks(u)
    res = residual if residual is not None else u
    store_g = need_residual  # g is the residual's gradient; where not wanted, not written
    g_out = grad_res if store_g else u
    apply_relu = bool(relu)
    with on_device(u):
        gate(u, w1, b1, w2, b2, pooled, s, hidden_parts, hidden=h)
        _se_gate_grad_kernel[(N, triton.cdiv(C, block_c))](
            grad_out, u, res, s, d_a2, g_out, C, HW, W, *grad_out.stride(), *u.stride(),
            *res.stride(), *g_out.stride(),
            HAS_RESIDUAL=residual is not None, APPLY_RELU=apply_relu, STORE_G=store_g,
            ROUNDS_TO_ZERO=ROUNDS_TO_ZERO[u.dtype], FLAT_HW=flat_hw(grad_out, u, res, g_out),
            BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=GATE_GRAD_WARPS,
        )
        if need_u or need_fc:
            # d_a1[n, r] = (sum_c d_a2[n, c] W2[c, r]) where h[n, r] > 0: x = d_a2, w = W2^T
            fc(d_a1, d_a2, w2, N, R, C, w_strides=w2.stride()[::-1], relu_out=h,
               block_j=FC_BLOCK_J_HIDDEN)
        if need_u:
            # d_pooled[n, c] = sum_r d_a1[n, r] W1[r, c]: x = d_a1, w = W1^T
            fc(d_pooled, d_a1, w1, N, C, R, w_strides=w1.stride()[::-1],
               block_j=32)  # 32: at 64 Triton 3.9 spilled 8 B on sm_90
            go = grad_res if store_g else grad_out
            _se_input_grad_kernel[(N * triton.cdiv(HW, block_hw), triton.cdiv(C, block_c))](
                go, u, res, s, d_pooled, grad_u, C, HW, W, *go.stride(), *u.stride(),
                *res.stride(), *grad_u.stride(), 1.0 / HW,
                G_WRITTEN=store_g, HAS_RESIDUAL=residual is not None, APPLY_RELU=apply_relu,
                ROUNDS_TO_ZERO=ROUNDS_TO_ZERO[u.dtype],
                FLAT_HW=flat_hw(go, u, res, grad_u), BLOCK_HW=block_hw, BLOCK_C=block_c,
            )
        if need_fc:
            grad_w1, grad_b1, grad_w2, grad_b2 = fc_grads
            ones = torch.ones(1, **f32)  # w = 1 with strides 0: the row sums of x
            for grad_w, grad_b, d, x, width in ((grad_w1, grad_b1, d_a1, pooled, R),
                                                (grad_w2, grad_b2, d_a2, h, C)):
                # grad_w[i, j] = sum_n d[n, i] x[n, j]: x' = d^T [width, N], w' = x^T
                other = x.shape[1]
                fc(grad_w, d, x, width, other, N, x_strides=(0, 1, width), w_strides=(1, other),
                   block_j=32)
                fc(grad_b, d, ones, width, 1, N, x_strides=(0, 1, width), w_strides=(0, 0),
                   block_j=FC_BLOCK_J_HIDDEN)
    return (grad_u, *fc_grads, grad_res)

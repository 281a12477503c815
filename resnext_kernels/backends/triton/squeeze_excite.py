"""Triton: fused squeeze-and-excitation in four launches, deterministic (no atomics).

1. squeeze: pooled[n, c] = mean_hw u[n, c]          one program per (n, channel block); reads u once
2. excite, twice the batched FC kernel (fp32; each program 16 images): W1 pooled in partial
            sums over 512-channel splits, then gate[n] = sigmoid(W2 hidden[n] + b2)
            with hidden[n] = relu(the partials summed in a fixed order + b1)
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
    FLAT_HW: tl.constexpr,  # suh == W * suw (plane_offset)
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    acc = tl.zeros((BLOCK_HW, BLOCK_C), dtype=tl.float32)
    for hw0 in range(0, HW, BLOCK_HW):
        offs_hw = hw0 + tl.arange(0, BLOCK_HW)
        tile = tl.load(
            u_ptr + n * sun + plane_offset(offs_hw, W, suh, suw, FLAT_HW)
            + offs_c[None, :].to(tl.int64) * suc,
            mask=(offs_hw < HW)[:, None] & c_ok[None, :],
            other=0.0,
        )
        acc += tile.to(tl.float32)
    tl.store(pooled_ptr + n * C + offs_c, tl.sum(acc, axis=0) * inv_hw, mask=c_ok)


@triton.jit
def _se_fc_kernel(
    in_ptr,  # fp32 [IN_SPLITS, I, K], strides (sxs, sxi, sxk): pooled, the hidden layer's
             # partial sums, or (backward) a gradient, maybe transposed
    in_bias_ptr,  # [K]: added to the summed input (unused unless HAS_IN_BIAS)
    w_ptr,  # [J, K], any strides, any float dtype: w1 [R, C], w2 [C, R], their transposes,...
    b_ptr,  # [J] (unused unless HAS_BIAS)
    out_ptr,  # fp32 [splits, I, J] contiguous: output, one slice per split of K (grid axis 2)
    in_store_ptr,  # fp32 [I, K] contiguous: the input as formed, stored (unused unless STORE_IN)
    relu_out_ptr,  # fp32 [I, J] contiguous: a ReLU's output (unused unless RELU_GRAD)
    I, J, K,
    IN_SPLITS,  # slices of in_ptr summed (fixed order) into the input
    K_SPLIT,  # the k of one split: program (.., .., s) covers [s * K_SPLIT, (s + 1) * K_SPLIT)
    sxs, sxi, sxk,  # in element strides
    swj, swk,  # w element strides (0, 0 with a one-element w: the row sums of the input)
    HAS_IN_BIAS: tl.constexpr,
    IN_RELU: tl.constexpr,  # the input is relu(sum + in_bias): the hidden layer, formed here
    STORE_IN: tl.constexpr,  # store the input as formed (programs of the first j block)
    HAS_BIAS: tl.constexpr,
    SIGMOID: tl.constexpr,  # sigmoid on the output (the gate); else the raw sums (partials)
    RELU_GRAD: tl.constexpr,  # the output is a gradient through the ReLU whose output is
                              # relu_out: 0 where relu_out <= 0 (torch's threshold_backward)
    BLOCK_I: tl.constexpr,  # input rows (images) per program: each weight tile is read once
    BLOCK_J: tl.constexpr,  # for all of them
    BLOCK_K: tl.constexpr,
    W_INDEX_64: tl.constexpr,  # w's offsets in 64 bits (the weight gradients' w' = x^T, N x C)
):
    # out[s, i, j] = act(sum over k of split s of x[i, k] w[j, k] (+ b[j]))
    offs_i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    split = tl.program_id(2)
    i_ok, j_ok = offs_i < I, offs_j < J
    rows = offs_i.to(tl.int64) * sxi
    k_end = tl.minimum(K, (split + 1) * K_SPLIT)
    acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
    for k0 in range(split * K_SPLIT, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < k_end
        x_mask = i_ok[:, None] & k_ok[None, :]
        x = tl.zeros((BLOCK_I, BLOCK_K), dtype=tl.float32)
        x_ptrs = in_ptr + rows[:, None] + offs_k.to(tl.int64)[None, :] * sxk
        for _ in range(IN_SPLITS):  # the slices in a fixed order; 64-bit steps
            x += tl.load(x_ptrs, mask=x_mask, other=0.0)
            x_ptrs += tl.cast(sxs, tl.int64)
        if HAS_IN_BIAS:
            x += tl.load(in_bias_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        if IN_RELU:
            x = tl.where(x < 0.0, 0.0, x)  # ReLU that keeps NaN, as torch.relu does
        if STORE_IN:
            # the programs of the first j block (the test as a tensor: Triton 3.9's
            # interpreter refuses a mask made with a scalar bool)
            first_j = (tl.zeros((BLOCK_K,), tl.int32) + tl.program_id(1)) == 0
            tl.store(in_store_ptr + offs_i.to(tl.int64)[:, None] * K + offs_k[None, :], x,
                     mask=x_mask & first_j[None, :])
        k_w = offs_k[:, None]
        if W_INDEX_64:
            k_w = k_w.to(tl.int64)
        w = tl.load(w_ptr + offs_j[None, :].to(tl.int64) * swj + k_w * swk,
                    mask=k_ok[:, None] & j_ok[None, :], other=0.0).to(tl.float32)
        # fp32 FMAs, not TF32: the gate must match the fp32 FCs of nn.Linear
        acc += tl.dot(x, w, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_j, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    if SIGMOID:
        acc = tl.sigmoid(acc)
    out_offs = offs_i.to(tl.int64)[:, None] * J + offs_j[None, :]
    out_mask = i_ok[:, None] & j_ok[None, :]
    if RELU_GRAD:
        relu_out = tl.load(relu_out_ptr + out_offs, mask=out_mask, other=0.0)
        acc = tl.where(relu_out <= 0.0, 0.0, acc)
    tl.store(out_ptr + split.to(tl.int64) * I * J + out_offs, acc, mask=out_mask)


@triton.jit
def pixel_tile(C, HW, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """The [BLOCK_HW, BLOCK_C] tile of a program of an elementwise pass over [N, C, H, W]:
    (n, offs_c, c_ok, mask, c, offs_hw); c the 64-bit channel row, offs_hw the flat pixel
    indices h * W + w (plane_offset makes them offsets). Axis 0 walks (n, hw block) pairs: it
    is the only grid axis allowed more than 65535 programs."""
    hw_blocks = tl.cdiv(HW, BLOCK_HW)
    n = (tl.program_id(0) // hw_blocks).to(tl.int64)
    offs_hw = (tl.program_id(0) % hw_blocks) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    mask = (offs_hw < HW)[:, None] & c_ok[None, :]
    return n, offs_c, c_ok, mask, offs_c.to(tl.int64)[None, :], offs_hw


@triton.jit
def plane_offset(offs_hw, W, sh, sw, FLAT_HW: tl.constexpr):
    """The [BLOCK_HW, 1] 64-bit element offsets of flat pixel indices offs_hw (h * W + w) in a
    plane of strides (sh, sw). FLAT_HW (sh == W * sw, which NCHW and channels_last tensors
    both meet: flat_hw): hw * sw, one multiply, and with sw == 1 (NCHW) contiguous along the
    tile's pixels; else h and w apart, a division and a remainder by W per element."""
    if FLAT_HW:
        off = offs_hw.to(tl.int64) * sw
    else:
        off = (offs_hw // W).to(tl.int64) * sh + (offs_hw % W).to(tl.int64) * sw
    return off[:, None]


def flat_hw(*tensors):
    """plane_offset's FLAT_HW for kernels over these [N, C, H, W] tensors: each one's plane
    has stride(2) == W * stride(3) (or a single row)."""
    return all(t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3) for t in tensors)


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
    FLAT_HW: tl.constexpr,  # every tensor's plane flat (plane_offset)
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n, offs_c, c_ok, mask, c, offs_hw = pixel_tile(C, HW, BLOCK_HW, BLOCK_C)
    u = tl.load(u_ptr + n * sun + c * suc + plane_offset(offs_hw, W, suh, suw, FLAT_HW),
                mask=mask, other=0.0)
    gate = tl.load(gate_ptr + n * C + offs_c, mask=c_ok, other=0.0)
    out = u.to(tl.float32) * gate[None, :]
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + n * srn + c * src + plane_offset(offs_hw, W, srh, srw, FLAT_HW),
                    mask=mask, other=0.0)
        out += r.to(tl.float32)
    if APPLY_RELU:
        out = tl.where(out < 0.0, 0.0, out)
    tl.store(out_ptr + n * son + c * soc + plane_offset(offs_hw, W, soh, sow, FLAT_HW),
             out.to(out_ptr.dtype.element_ty), mask=mask)


# The excite's tiles: 16 images per program (tl.dot needs 16 at least) x 16 hidden units (the
# hidden launch) or 64 channels (the gate launch, which re-reads the partial sums per program),
# and the hidden layer's reduction over C split in FC_SPLIT_K-channel parts (grid axis 2) whose
# partial sums the gate launch adds in a fixed order. Each weight element crosses from L2
# ceil(N / 16) times (Triton v1's one program per image: N times, 2 MB per image at
# seresnext50's last stage), over ceil(N / 16) x ceil(R / 16) x ceil(C / 512) programs (v1: N).
FC_BLOCK_I = 16
FC_BLOCK_J_HIDDEN = 16
FC_BLOCK_J_GATE = 64
FC_SPLIT_K = 512


def fc(out, x, w, I, J, K, *, x_strides=None, w_strides=None, k_split=None, in_splits=1,
       in_bias=None, in_relu=False, in_store=None, bias=None, sigmoid=False, relu_out=None,
       block_j=FC_BLOCK_J_GATE):
    """out[s, i, j] = act(sum over k of split s of x[i, k] w[j, k] (+ bias[j])), one
    _se_fc_kernel launch (its comments say what each option does). x: fp32 [in_splits, I, K]
    by x_strides (default: contiguous), w: [J, K] by w_strides (default: w's own); the
    reduction split in k_split-long parts (default: none), one output slice each."""
    sxs, sxi, sxk = x_strides if x_strides is not None else (I * K, K, 1)
    swj, swk = w_strides if w_strides is not None else w.stride()
    k_split = k_split if k_split is not None else max(K, 1)
    splits = triton.cdiv(K, k_split)
    block_k = min(64, max(16, triton.next_power_of_2(min(K, k_split))))
    _se_fc_kernel[(triton.cdiv(I, FC_BLOCK_I), triton.cdiv(J, block_j), splits)](
        x, in_bias if in_bias is not None else x, w, bias if bias is not None else x, out,
        in_store if in_store is not None else x, relu_out if relu_out is not None else x,
        I, J, K, in_splits, k_split, sxs, sxi, sxk, swj, swk,
        HAS_IN_BIAS=in_bias is not None, IN_RELU=in_relu, STORE_IN=in_store is not None,
        HAS_BIAS=bias is not None, SIGMOID=sigmoid, RELU_GRAD=relu_out is not None,
        BLOCK_I=FC_BLOCK_I, BLOCK_J=block_j, BLOCK_K=block_k,
        W_INDEX_64=K * abs(swk) >= 2**31,
    )


def fc_splits(C):
    """The hidden layer's splits of its C-long reduction."""
    return triton.cdiv(C, FC_SPLIT_K)


def elementwise_blocks(u):
    """(BLOCK_HW, BLOCK_C) of the squeeze and scale kernels (smaller under the interpreter)."""
    interpreted = triton_interpreter_enabled() or u.device.type == "cpu"
    return (32, 32) if interpreted else (64, 64)


def gate(u, w1, b1, w2, b2, pooled, gate_out, hidden_parts, hidden=None):
    """pooled = mean_hw u, then gate_out = sigmoid(W2 relu(W1 pooled + b1) + b2) (fp32 [N, C]
    each); hidden_parts: fp32 [fc_splits(C), N, R] workspace; hidden: fp32 [N, R], where the
    hidden layer relu(W1 pooled + b1) is stored if given (the backward's)."""
    N, C, H, W = u.shape
    R = w1.shape[0]
    HW = H * W
    block_hw, block_c = elementwise_blocks(u)
    _se_squeeze_kernel[(N, triton.cdiv(C, block_c))](
        u, pooled, C, HW, W, *u.stride(), 1.0 / HW, FLAT_HW=flat_hw(u), BLOCK_HW=block_hw,
        BLOCK_C=block_c,
    )
    # hidden: partial sums of W1 pooled over each FC_SPLIT_K channels
    fc(hidden_parts, pooled, w1, N, R, C, k_split=FC_SPLIT_K, block_j=FC_BLOCK_J_HIDDEN)
    # gate = sigmoid(W2 relu(sum of the partials + b1) + b2)
    fc(gate_out, hidden_parts, w2, N, C, R, in_splits=fc_splits(C), in_bias=b1, in_relu=True,
       in_store=hidden, bias=b2, sigmoid=True)


def squeeze_excite(u, w1, b1, w2, b2, residual, relu):
    """Launcher. Arguments are validated by the op; w1 is [R, C], w2 is [C, R]."""
    N, C, H, W = u.shape
    R = w1.shape[0]
    HW = H * W
    out = torch.empty(u.shape, dtype=u.dtype, device=u.device,
                      memory_format=suggest_memory_format(u))
    if out.numel() == 0:
        return out
    # one fp32 workspace: pooled [N, C], gate [N, C], the hidden layer's partial sums [splits, N, R]
    workspace = torch.empty(N * (2 * C + fc_splits(C) * R), dtype=torch.float32,
                            device=u.device)
    pooled = workspace[: N * C].view(N, C)
    gate_nc = workspace[N * C: 2 * N * C].view(N, C)
    hidden_parts = workspace[2 * N * C:]
    block_hw, block_c = elementwise_blocks(u)
    with on_device(u):
        gate(u, w1, b1, w2, b2, pooled, gate_nc, hidden_parts)
        res = residual if residual is not None else u
        _se_scale_kernel[(N * triton.cdiv(HW, block_hw), triton.cdiv(C, block_c))](
            u, gate_nc, res, out, C, HW, W, *u.stride(), *res.stride(), *out.stride(),
            HAS_RESIDUAL=residual is not None, APPLY_RELU=bool(relu),
            FLAT_HW=flat_hw(u, res, out), BLOCK_HW=block_hw, BLOCK_C=block_c,
        )
    return out

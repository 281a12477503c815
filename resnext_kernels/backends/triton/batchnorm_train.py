"""Triton: train-mode BatchNorm around the conv (issue 16): the forward's normalize + ReLU + mask,
and the BN backward's sums and grad_z. The batch statistics come from the conv kernels' own
epilogue (channel_stats.py); the formulas are backends/batchnorm_train.py's.

Forward, after the conv wrote z and its statistics partials, and channel_stats.reduce_partials
made mean and the biased variance:
    y = relu?(z * scale + shift), scale = gamma / sqrt(var + eps), shift = beta - mean * scale
in fp32, rounded once to z's dtype; the ReLU mask's bytes from the rounded y.
Backward, with gp = grad_y where the ReLU passed it and x_hat = (z - mean) / sqrt(var + eps):
    sums:   grad_beta = sum gp, grad_gamma = sum gp * x_hat per channel: fp32 partials per
            tile of BLOCK_M pixels, added in a fixed order (channel_stats.reduce_partials)
    grad_z = (gp - grad_beta / M - x_hat * grad_gamma / M) * gamma / sqrt(var + eps),
            rounded to z's dtype.

Every tensor is addressed through its strides (z follows x's memory format); tiles are
[BLOCK_M pixels, BLOCK_C channels] in flat (n, ho, wo) order, so the mask (relu_mask.py) is
read and written in whole bytes. Offsets are 32-bit unless a tensor spans 2^31 elements.
"""

import torch
import triton
import triton.language as tl

from ... import relu_mask
from ._device import on_device
from .channel_stats import reduce_partials
from .grouped_conv_backward import _masked_gradient
from .grouped_conv_bn_relu import INDEX_32_LIMIT, _interpreted, _max_offset
from .relu_mask import store_relu_mask

_BLOCK_C = 64
_GPU_BLOCK_M = 64
_INTERPRETER_BLOCK_M = 32
# 8 warps: with 4, a [64, 64] tile of NCHW tensors took 238-255 registers per thread (ptxas,
# sm_80/sm_90: scripts/triton_aot_check.py), a load of 32 elements per thread per tensor
_GPU_WARPS = 8


@triton.jit
def _tile(C, M, H_out, W_out, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
          INDEX_64: tl.constexpr):
    """This program's pixels and channels: (m0, offs_m, n, ho, wo, m_ok, offs_c, c_ok)."""
    pid_m = tl.program_id(0)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    if INDEX_64:
        m0 = pid_m.to(tl.int64) * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    wo = offs_m % W_out
    ho = (offs_m // W_out) % H_out
    n = offs_m // (W_out * H_out)
    return m0, offs_m, n, ho, wo, offs_m < M, offs_c, offs_c < C


@triton.jit
def _inverse_std(var_ptr, offs_c, c_ok, eps):
    var = tl.load(var_ptr + offs_c, mask=c_ok, other=1.0)
    return 1.0 / tl.sqrt_rn(var + eps)


@triton.jit
def _normalize_kernel(
    z_ptr,  # the conv's output [N, C, H_out, W_out], any strides
    mean_ptr, var_ptr,  # fp32 [C]: the batch mean and biased variance
    gamma_ptr, beta_ptr,  # [C] (any floating dtype): BN's affine parameters
    y_ptr,  # output [N, C, H_out, W_out], any strides, z's dtype
    mask_ptr,  # uint8 [ceil(M / 8), C]: the ReLU mask, when WRITE_MASK
    C, M, H_out, W_out, eps,
    szn, szc, szh, szw,  # z element strides
    syn, syc, syh, syw,  # y element strides
    APPLY_RELU: tl.constexpr, WRITE_MASK: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m0, offs_m, n, ho, wo, m_ok, offs_c, c_ok = _tile(C, M, H_out, W_out, BLOCK_M, BLOCK_C,
                                                      INDEX_64)
    ok = m_ok[:, None] & c_ok[None, :]
    scale = tl.load(gamma_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32) \
        * _inverse_std(var_ptr, offs_c, c_ok, eps)
    shift = tl.load(beta_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32) \
        - tl.load(mean_ptr + offs_c, mask=c_ok, other=0.0) * scale
    z = tl.load(z_ptr + (n * szn + ho * szh + wo * szw)[:, None] + offs_c[None, :] * szc,
                mask=ok, other=0.0)
    out = z.to(tl.float32) * scale[None, :] + shift[None, :]
    if APPLY_RELU:
        out = tl.where(out < 0.0, 0.0, out)  # NaN stays NaN, as torch.relu
    out = out.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + (n * syn + ho * syh + wo * syw)[:, None] + offs_c[None, :] * syc, out,
             mask=ok)
    if WRITE_MASK:
        store_relu_mask(mask_ptr, out, m0, m_ok, offs_c, c_ok, C, M, BLOCK_M, BLOCK_C)


@triton.jit
def _gradient_and_x_hat(gy_ptr, mask_ptr, z_ptr, mean_ptr, var_ptr, eps, n, ho, wo, offs_m,
                        m_ok, offs_c, c_ok, C,
                        sgn, sgc, sgh, sgw, szn, szc, szh, szw, HAS_MASK: tl.constexpr):
    """(gp in fp32, 0 where the ReLU blocked it or outside the tile; x_hat in fp32; invstd)."""
    ok = m_ok[:, None] & c_ok[None, :]
    gp = _masked_gradient(gy_ptr, mask_ptr,
                          (n * sgn + ho * sgh + wo * sgw)[:, None] + offs_c[None, :] * sgc,
                          offs_m, offs_c, ok, C, HAS_MASK).to(tl.float32)
    z = tl.load(z_ptr + (n * szn + ho * szh + wo * szw)[:, None] + offs_c[None, :] * szc,
                mask=ok, other=0.0)
    invstd = _inverse_std(var_ptr, offs_c, c_ok, eps)
    mean = tl.load(mean_ptr + offs_c, mask=c_ok, other=0.0)
    x_hat = (z.to(tl.float32) - mean[None, :]) * invstd[None, :]
    return gp, x_hat, invstd


@triton.jit
def _backward_sums_kernel(
    gy_ptr,  # grad of y [N, C, H_out, W_out], any strides
    mask_ptr,  # uint8 [ceil(M / 8), C]: the ReLU mask, when HAS_MASK
    z_ptr,  # the conv's output [N, C, H_out, W_out], any strides
    mean_ptr, var_ptr,  # fp32 [C]
    part_ptr,  # fp32 [2, cdiv(M, BLOCK_M), C], contiguous: per tile, sum gp and sum gp * x_hat
    C, M, H_out, W_out, eps,
    sgn, sgc, sgh, sgw,  # grad_y element strides
    szn, szc, szh, szw,  # z element strides
    HAS_MASK: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m0, offs_m, n, ho, wo, m_ok, offs_c, c_ok = _tile(C, M, H_out, W_out, BLOCK_M, BLOCK_C,
                                                      INDEX_64)
    gp, x_hat, _ = _gradient_and_x_hat(gy_ptr, mask_ptr, z_ptr, mean_ptr, var_ptr, eps, n, ho,
                                       wo, offs_m, m_ok, offs_c, c_ok, C, sgn, sgc, sgh, sgw,
                                       szn, szc, szh, szw, HAS_MASK)
    ok = m_ok[:, None] & c_ok[None, :]
    tiles = (M + BLOCK_M - 1) // BLOCK_M
    row = tl.program_id(0) * C + offs_c
    tl.store(part_ptr + row, tl.sum(gp, axis=0), mask=c_ok)
    tl.store(part_ptr + tiles * C + row, tl.sum(tl.where(ok, gp * x_hat, 0.0), axis=0),
             mask=c_ok)


@triton.jit
def _grad_z_kernel(
    gy_ptr, mask_ptr, z_ptr, mean_ptr, var_ptr,  # as _backward_sums_kernel
    gamma_ptr,  # [C] (any floating dtype)
    grad_beta_ptr, grad_gamma_ptr,  # fp32 [C]: the sums
    gz_ptr,  # grad of z [N, C, H_out, W_out], any strides, z's dtype
    C, M, H_out, W_out, eps,
    sgn, sgc, sgh, sgw, szn, szc, szh, szw,
    son, soc, soh, sow,  # grad_z element strides
    HAS_MASK: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m0, offs_m, n, ho, wo, m_ok, offs_c, c_ok = _tile(C, M, H_out, W_out, BLOCK_M, BLOCK_C,
                                                      INDEX_64)
    gp, x_hat, invstd = _gradient_and_x_hat(gy_ptr, mask_ptr, z_ptr, mean_ptr, var_ptr, eps, n,
                                            ho, wo, offs_m, m_ok, offs_c, c_ok, C, sgn, sgc,
                                            sgh, sgw, szn, szc, szh, szw, HAS_MASK)
    grad_beta = tl.load(grad_beta_ptr + offs_c, mask=c_ok, other=0.0)
    grad_gamma = tl.load(grad_gamma_ptr + offs_c, mask=c_ok, other=0.0)
    gamma = tl.load(gamma_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    gz = (gp - (grad_beta / M)[None, :] - x_hat * (grad_gamma / M)[None, :]) \
        * (gamma * invstd)[None, :]
    tl.store(gz_ptr + (n * son + ho * soh + wo * sow)[:, None] + offs_c[None, :] * soc,
             gz.to(gz_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


# ------------------------------------------------------------------------------ launchers
def _meta(*tensors):
    """The elementwise kernels' tile and offset width: fixed (no autotuning: the backward's
    partial sums follow BLOCK_M, and must not change with a timing)."""
    interpreted = _interpreted(tensors[0])
    meta = dict(BLOCK_M=_INTERPRETER_BLOCK_M if interpreted else _GPU_BLOCK_M, BLOCK_C=_BLOCK_C,
                INDEX_64=max(_max_offset(t) for t in tensors) > INDEX_32_LIMIT)
    if not interpreted:
        meta["num_warps"] = _GPU_WARPS
    return meta


def _grid(M, C, meta):
    return (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_C"]))


def normalize(z, mean, var, gamma, beta, eps, relu):
    """(y in z's dtype and memory format, the ReLU mask ([0, C] without a ReLU))."""
    C, M = z.shape[1], relu_mask.pixels(z)
    y = torch.empty_like(z)
    mask = torch.empty(relu_mask.mask_shape(M if relu else 0, C), dtype=torch.uint8,
                       device=z.device)
    if M == 0:
        return y, mask
    meta = _meta(z, y, mask)
    with on_device(z):
        _normalize_kernel[_grid(M, C, meta)](
            z, mean, var, gamma, beta, y, mask if relu else y, C, M, z.shape[2], z.shape[3],
            float(eps), *z.stride(), *y.stride(), APPLY_RELU=bool(relu), WRITE_MASK=bool(relu),
            **meta)
    return y, mask


def backward(grad_y, mask, z, mean, var, gamma, eps):
    """(grad_z in z's dtype and memory format, grad_gamma, grad_beta in fp32)."""
    C, M = z.shape[1], relu_mask.pixels(z)
    grad_z = torch.empty_like(z)
    if M == 0:
        zeros = torch.zeros(C, dtype=torch.float32, device=z.device)
        return grad_z, zeros, zeros.clone()
    has_mask = mask.shape[0] > 0
    meta = _meta(grad_y, z, grad_z, mask)
    grid = _grid(M, C, meta)
    part = torch.empty((2, grid[0], C), dtype=torch.float32, device=z.device)
    args = (grad_y, mask if has_mask else grad_y, z, mean, var)
    sizes = (C, M, z.shape[2], z.shape[3], float(eps), *grad_y.stride(), *z.stride())
    with on_device(z):
        _backward_sums_kernel[grid](*args, part, *sizes, HAS_MASK=has_mask, **meta)
        grad_beta, grad_gamma = reduce_partials(part, M, meta["BLOCK_M"], welford=False)
        _grad_z_kernel[grid](*args, gamma, grad_beta, grad_gamma, grad_z, *sizes,
                             *grad_z.stride(), HAS_MASK=has_mask, **meta)
    return grad_z, grad_gamma, grad_beta

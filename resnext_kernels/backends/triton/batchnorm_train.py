"""Triton: train-mode BatchNorm around the conv (issue 16): the forward's normalize + ReLU + mask,
and the BN backward's sums and grad_z. The batch statistics come from the conv kernels' own
epilogue (channel_stats.py); the formulas are backends/batchnorm_train.py's.

Forward, after the conv wrote z and its statistics partials, and channel_stats.reduce_partials
made mean and the biased variance:
    y = relu?(z * scale + shift), scale = gamma / sqrt(var + eps), shift = beta - mean * scale
in fp32, rounded once to z's dtype; the ReLU mask's bytes from the rounded y.
Backward, with gp = grad_y where the ReLU passed it and x_hat = (z - mean) / sqrt(var + eps):
    sums:   grad_beta = sum gp, grad_gamma = sum gp * x_hat per channel: fp32 partials per
            tile of BLOCK_M pixels, added in a fixed order (channel_stats.reduce_partials);
            then the per-channel coefficients of grad_z = k_gp * gp + k_x * (z - mean) + k_0
    grad_z: written out by _grad_z_kernel for the chosen dgrad and wgrad (aten's or this
            backend's), or formed in the dgrad and wgrad kernels' prologue
            (grouped_conv_backward.py; train.py says when); rounded to z's dtype.

Every tensor is addressed through its strides (z follows x's memory format); tiles are
[BLOCK_M pixels, BLOCK_C channels] in flat (n, ho, wo) order, so the mask (relu_mask.py) is
read and written in whole bytes. Offsets are 32-bit unless a tensor spans 2^31 elements. Where
the pixels of an image are contiguous (NCHW), runs of up to 8 are hinted to the compiler as such
(_tile_offsets), so that NCHW tiles load up to 16 bytes per lane along the pixels as
channels_last tiles do along the channels.
"""

import torch
import triton
import triton.language as tl

from ... import relu_mask
from ._device import on_device
from .channel_stats import reduce_partials
from .grouped_conv_backward import _bn_train_operands, _gradient_before_conv, _masked_gradient
from .grouped_conv_bn_relu import INDEX_32_LIMIT, _interpreted, _max_offset
from .relu_mask import store_relu_mask

_BLOCK_C = 64
_GPU_BLOCK_M = 64
_INTERPRETER_BLOCK_M = 32
# 8 warps: with 4, a [64, 64] tile of NCHW tensors took 238-255 registers per thread (ptxas,
# sm_80/sm_90: scripts/triton_aot_check.py), a load of 32 elements per thread per tensor
_GPU_WARPS = 8
# pixels per contiguous run that _tile_offsets may promise the compiler, longest first: 8 is
# 16 bytes of fp16/bf16 (a multiple of 8 pixels per image: 56², 28²), 4 at 14² (196 pixels)
_PIXEL_RUNS = (8, 4, 2)


@triton.jit
def _tile(C, M, H_out, W_out, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
          INDEX_64: tl.constexpr):
    """This program's pixels and channels: (m0, offs_m, n, ho, wo, hw, m_ok, offs_c, c_ok),
    hw = ho * W_out + wo."""
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
    hw = offs_m - n * (W_out * H_out)
    return m0, offs_m, n, ho, wo, hw, offs_m < M, offs_c, offs_c < C


@triton.jit
def _tile_offsets(n, ho, wo, hw, offs_c, sn, sc, sh, sw, PIXEL_RUN: tl.constexpr):
    """[BLOCK_M, BLOCK_C] offsets of the tile's elements in a tensor of strides (sn, sc, sh,
    sw). PIXEL_RUN > 1 (the launcher's _pixel_run checked it for every tensor of the launch:
    an image's pixels contiguous, sw == 1 and sh == W_out; H_out * W_out, sn and sc multiples
    of PIXEL_RUN, for one image or one channel too, so that the promise holds on the masked
    lanes past the last pixel or channel as well): pixel n * sn + hw, and each run of
    PIXEL_RUN pixels from a multiple of PIXEL_RUN (tiles start at multiples of BLOCK_M) is
    contiguous, never crosses an image and starts at a multiple of PIXEL_RUN elements, as is
    every channel's offset. The hints say so
    to the compiler, which can then lay a warp's lanes along the pixels and load PIXEL_RUN
    elements each; it cannot see that through `% W_out`, and an NCHW tile's load would put
    each lane in another channel's plane. (The interpreter ignores hints: a wrong promise would
    only show on a GPU, so _pixel_run promises nothing it has not checked.)"""
    if PIXEL_RUN > 1:
        pixels = tl.max_contiguous(tl.multiple_of(n * sn + hw, PIXEL_RUN), PIXEL_RUN)
        channels = tl.multiple_of(offs_c * sc, PIXEL_RUN)
    else:
        pixels = n * sn + ho * sh + wo * sw
        channels = offs_c * sc
    return pixels[:, None] + channels[None, :]


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
    PIXEL_RUN: tl.constexpr,  # see _tile_offsets
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m0, offs_m, n, ho, wo, hw, m_ok, offs_c, c_ok = _tile(C, M, H_out, W_out, BLOCK_M, BLOCK_C,
                                                          INDEX_64)
    ok = m_ok[:, None] & c_ok[None, :]
    scale = tl.load(gamma_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32) \
        * _inverse_std(var_ptr, offs_c, c_ok, eps)
    shift = tl.load(beta_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32) \
        - tl.load(mean_ptr + offs_c, mask=c_ok, other=0.0) * scale
    z = tl.load(z_ptr + _tile_offsets(n, ho, wo, hw, offs_c, szn, szc, szh, szw, PIXEL_RUN),
                mask=ok, other=0.0)
    out = z.to(tl.float32) * scale[None, :] + shift[None, :]
    if APPLY_RELU:
        out = tl.where(out < 0.0, 0.0, out)  # NaN stays NaN, as torch.relu
    out = out.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + _tile_offsets(n, ho, wo, hw, offs_c, syn, syc, syh, syw, PIXEL_RUN), out,
             mask=ok)
    if WRITE_MASK:
        store_relu_mask(mask_ptr, out, m0, m_ok, offs_c, c_ok, C, M, BLOCK_M, BLOCK_C)


@triton.jit
def _gradient_and_x_hat(gy_ptr, mask_ptr, z_ptr, mean_ptr, var_ptr, eps, gy_off, z_off, offs_m,
                        m_ok, offs_c, c_ok, C, HAS_MASK: tl.constexpr):
    """(gp in fp32, 0 where the ReLU blocked it or outside the tile; x_hat in fp32; invstd).
    gy_off, z_off: the tile's offsets in grad_y and z (_tile_offsets)."""
    ok = m_ok[:, None] & c_ok[None, :]
    gp = _masked_gradient(gy_ptr, mask_ptr, gy_off, offs_m, offs_c, ok, C,
                          HAS_MASK).to(tl.float32)
    z = tl.load(z_ptr + z_off, mask=ok, other=0.0)
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
    PIXEL_RUN: tl.constexpr,  # see _tile_offsets
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m0, offs_m, n, ho, wo, hw, m_ok, offs_c, c_ok = _tile(C, M, H_out, W_out, BLOCK_M, BLOCK_C,
                                                          INDEX_64)
    gp, x_hat, _ = _gradient_and_x_hat(
        gy_ptr, mask_ptr, z_ptr, mean_ptr, var_ptr, eps,
        _tile_offsets(n, ho, wo, hw, offs_c, sgn, sgc, sgh, sgw, PIXEL_RUN),
        _tile_offsets(n, ho, wo, hw, offs_c, szn, szc, szh, szw, PIXEL_RUN),
        offs_m, m_ok, offs_c, c_ok, C, HAS_MASK)
    ok = m_ok[:, None] & c_ok[None, :]
    tiles = (M + BLOCK_M - 1) // BLOCK_M
    row = tl.program_id(0) * C + offs_c
    tl.store(part_ptr + row, tl.sum(gp, axis=0), mask=c_ok)
    tl.store(part_ptr + tiles * C + row, tl.sum(tl.where(ok, gp * x_hat, 0.0), axis=0),
             mask=c_ok)


@triton.jit
def _coefficients_kernel(
    grad_gamma_ptr, grad_beta_ptr, mean_ptr, var_ptr,  # fp32 [C]
    gamma_ptr,  # [C] (any floating dtype)
    coef_ptr,  # fp32 [4, C], contiguous: (mean, k_gp, k_x, k_0) of grad_z
    C, eps,
    per_pixel,  # 1 / M (M: the pixels; 1 / 1 for none)
    BLOCK_C: tl.constexpr,
):
    """grad_z = k_gp * gp + k_x * (z - mean) + k_0 (backends/batchnorm_train.coefficients)."""
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    invstd = _inverse_std(var_ptr, offs_c, c_ok, eps)
    k_gp = tl.load(gamma_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32) * invstd
    grad_gamma = tl.load(grad_gamma_ptr + offs_c, mask=c_ok, other=0.0)
    grad_beta = tl.load(grad_beta_ptr + offs_c, mask=c_ok, other=0.0)
    tl.store(coef_ptr + offs_c, tl.load(mean_ptr + offs_c, mask=c_ok, other=0.0), mask=c_ok)
    tl.store(coef_ptr + C + offs_c, k_gp, mask=c_ok)
    tl.store(coef_ptr + 2 * C + offs_c, -k_gp * invstd * grad_gamma * per_pixel, mask=c_ok)
    tl.store(coef_ptr + 3 * C + offs_c, -k_gp * grad_beta * per_pixel, mask=c_ok)


@triton.jit
def _grad_z_kernel(
    gy_ptr,  # grad of y [N, C, H_out, W_out], z's strides
    mask_ptr,  # uint8 [ceil(M / 8), C]: the ReLU mask, when HAS_MASK
    z_ptr,  # the conv's output, the strides of grad_y
    coef_ptr,  # fp32 [4, C], contiguous: grad_z's coefficients
    gz_ptr,  # grad of z, the strides of grad_y, z's dtype
    C, M, H_out, W_out,
    sn, sc, sh, sw,  # element strides of grad_y, z and grad_z
    HAS_MASK: tl.constexpr, INDEX_64: tl.constexpr,
    PIXEL_RUN: tl.constexpr,  # see _tile_offsets
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_z written out, for the chosen dgrad and wgrad to read (train.py)."""
    m0, offs_m, n, ho, wo, hw, m_ok, offs_c, c_ok = _tile(C, M, H_out, W_out, BLOCK_M, BLOCK_C,
                                                          INDEX_64)
    ok = m_ok[:, None] & c_ok[None, :]
    off = _tile_offsets(n, ho, wo, hw, offs_c, sn, sc, sh, sw, PIXEL_RUN)
    gz = _gradient_before_conv(gy_ptr, mask_ptr, z_ptr, coef_ptr, off, offs_m, offs_c, ok, C,
                               HAS_MASK, True)
    tl.store(gz_ptr + off, gz, mask=ok)


# ------------------------------------------------------------------------------ launchers
def _pixel_run(tensors):
    """_tile_offsets' PIXEL_RUN for a launch over these [N, C, H_out, W_out] tensors: the
    longest of _PIXEL_RUNS such that every one has its images' pixels contiguous (NCHW: W
    stride 1, H stride W_out) with H_out * W_out and the image and channel strides multiples
    of it; else 1 (channels_last, views)."""
    _, _, H_out, W_out = tensors[0].shape
    flat = all((W_out == 1 or t.stride(3) == 1) and (H_out == 1 or t.stride(2) == W_out)
               for t in tensors)
    for run in _PIXEL_RUNS:
        # (the image and channel strides count for one image or channel too: the masked lanes
        # past the last one take the same hints)
        if flat and (H_out * W_out) % run == 0 and all(
                t.stride(0) % run == 0 and t.stride(1) % run == 0 for t in tensors):
            return run
    return 1


def _meta(*tensors):
    """The elementwise kernels' tile, offset width and pixel runs (of the 4-d tensors: the
    mask is 2-d): fixed (no autotuning: the backward's partial sums follow BLOCK_M, and must
    not change with a timing)."""
    interpreted = _interpreted(tensors[0])
    images = [t for t in tensors if t.dim() == 4]
    meta = dict(BLOCK_M=_INTERPRETER_BLOCK_M if interpreted else _GPU_BLOCK_M, BLOCK_C=_BLOCK_C,
                INDEX_64=max(_max_offset(t) for t in tensors) > INDEX_32_LIMIT,
                PIXEL_RUN=_pixel_run(images))
    assert meta["BLOCK_M"] % max(_PIXEL_RUNS) == 0  # (tiles start at a multiple of each run)
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


def backward_sums(grad_y, mask, z, mean, var, gamma, eps):
    """(grad_gamma, grad_beta, grad_z's coefficients fp32 [4, C]): the sums per tile, added in
    a fixed order, then the coefficients."""
    C, M = z.shape[1], relu_mask.pixels(z)
    coef = torch.empty((4, C), dtype=torch.float32, device=z.device)
    if M == 0:
        grad_gamma = torch.zeros(C, dtype=torch.float32, device=z.device)
        grad_beta = torch.zeros_like(grad_gamma)
    else:
        meta = _meta(grad_y, z, mask)
        grid = _grid(M, C, meta)
        part = torch.empty((2, grid[0], C), dtype=torch.float32, device=z.device)
        has_mask = mask.shape[0] > 0
        with on_device(z):
            _backward_sums_kernel[grid](
                grad_y, mask if has_mask else grad_y, z, mean, var, part, C, M, z.shape[2],
                z.shape[3], float(eps), *grad_y.stride(), *z.stride(), HAS_MASK=has_mask,
                **meta)
            grad_beta, grad_gamma = reduce_partials(part, M, meta["BLOCK_M"], welford=False)
    with on_device(z):
        _coefficients_kernel[(triton.cdiv(C, _BLOCK_C),)](
            grad_gamma, grad_beta, mean, var, gamma, coef, C, float(eps), 1.0 / max(M, 1),
            BLOCK_C=_BLOCK_C)
    return grad_gamma, grad_beta, coef


def grad_z(grad_y, mask, z, coef):
    """grad_z in z's dtype and memory format, written out (one pass over grad_y, the mask and
    z)."""
    C, M = z.shape[1], relu_mask.pixels(z)
    # z packed, grad_y in its strides: the kernel addresses the three with one set of strides
    grad_y, z, coef = _bn_train_operands(grad_y, (z, coef))
    gz = torch.empty_like(z)
    if M == 0:
        return gz
    has_mask = mask.shape[0] > 0
    meta = _meta(grad_y, z, gz, mask)
    with on_device(z):
        _grad_z_kernel[_grid(M, C, meta)](
            grad_y, mask if has_mask else grad_y, z, coef, gz, C, M, z.shape[2], z.shape[3],
            *z.stride(), HAS_MASK=has_mask, **meta)
    return gz

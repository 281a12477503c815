"""Triton: the forward epilogue's ReLU mask store (the layout is resnext_kernels/relu_mask.py).

A tile's [BLOCK_M, BLOCK_N] outputs become [BLOCK_M // 8, BLOCK_N] bytes: bit j of a byte is
pixel 8 r + j of the tile. Tiles start at a multiple of BLOCK_M (a multiple of 8) pixels, so a
tile owns whole bytes.
"""

import triton
import triton.language as tl


@triton.jit
def store_relu_mask(
    mask_ptr,  # uint8 [ceil(M / 8), C]: the packed mask
    y,  # [BLOCK_M, BLOCK_N] the tile's outputs, rounded to the output dtype
    m0,  # the tile's first pixel (a multiple of 8; int64 where offsets need it)
    m_ok,  # [BLOCK_M] whether each pixel exists
    offs_c,  # [BLOCK_N] the tile's channels
    c_ok,  # [BLOCK_N] which of them this store writes
    C,  # channels of the output (the mask's row length)
    M,  # pixels of the output
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # 1 where the gradient passes: not (y <= 0), so NaN passes; 0 for pixels past the end
    bits = tl.where((y <= 0.0) | (m_ok[:, None] == 0), 0, 1)
    weights = 1 << tl.arange(0, 8)  # bit j of a byte: pixel j of its 8
    packed = tl.sum(tl.reshape(bits, (BLOCK_M // 8, 8, BLOCK_N)) * weights[None, :, None], axis=1)
    rows = m0 // 8 + tl.arange(0, BLOCK_M // 8)
    row_ok = rows * 8 < M
    tl.store(mask_ptr + rows[:, None] * C + offs_c[None, :], packed.to(tl.uint8),
             mask=row_ok[:, None] & c_ok[None, :])

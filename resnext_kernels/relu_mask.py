"""The ReLU mask that the fused conv's forward saves for its backward: 1 bit per output element.

Layout (every backend writes and reads exactly this): uint8 [ceil(M / 8), C_out], contiguous,
where M = N * H_out * W_out counts the output pixels in (n, ho, wo) order whatever the output's
memory format. Bit j of byte [r, c] belongs to pixel m = 8 r + j, channel c; bits of pixels past
M are 0. A kernel tile of BLOCK_M pixels (a multiple of 8, starting at a multiple of 8) owns
whole bytes, so tiles never share a byte and no atomics are needed.

A bit is 1 where the ReLU passes its gradient: where the output (rounded to its dtype) is not
<= 0, so NaN outputs pass it, as torch's ReLU backward (threshold_backward on its result) does.
That is 1/16 of an fp16 output's bytes; the output itself cannot stand in for the mask, since
what follows the op may change it in place (torchvision's Bottleneck applies an in-place ReLU).
"""

import torch

BITS = 8


def mask_shape(M: int, C: int):
    """The mask's shape for M output pixels of C channels."""
    return ((M + BITS - 1) // BITS, C)


def pixels(y_or_shape) -> int:
    """M = N * H_out * W_out of an output (or its shape)."""
    N, _, H, W = y_or_shape.shape if isinstance(y_or_shape, torch.Tensor) else y_or_shape
    return N * H * W


def pack(passes: torch.Tensor) -> torch.Tensor:
    """bool [N, C, H, W] (any memory format: where the gradient passes) -> the packed mask."""
    N, C, H, W = passes.shape
    M = N * H * W
    flat = passes.permute(0, 2, 3, 1).reshape(M, C).to(torch.uint8)
    rows = mask_shape(M, C)[0]
    padded = flat.new_zeros((rows * BITS, C))
    padded[:M] = flat
    weights = torch.tensor([1 << j for j in range(BITS)], dtype=torch.uint8,
                           device=passes.device).view(1, BITS, 1)
    # no carries: each bit is set once, so the uint8 sum is the bitwise or
    return (padded.view(rows, BITS, C) * weights).sum(1, dtype=torch.uint8)


def from_output(y: torch.Tensor) -> torch.Tensor:
    """The mask of a ReLU's output y (read before anything changes y in place)."""
    return pack(torch.logical_not(y <= 0))


def unpack(mask: torch.Tensor, shape, memory_format=torch.contiguous_format) -> torch.Tensor:
    """The packed mask -> bool [N, C, H, W] for an output of `shape`, in `memory_format`:
    channels_last is a view of the unpacked bits (no copy: they are in (n, h, w) order with
    channels innermost), contiguous_format one transposing copy of 1-byte values."""
    N, C, H, W = shape
    M = N * H * W
    shifts = torch.arange(BITS, dtype=torch.uint8, device=mask.device).view(1, BITS, 1)
    bits = mask.view(-1, 1, C) >> shifts
    bits &= 1  # 0 or 1 in each byte: a valid bool, reinterpreted without a copy
    passes = bits.view(torch.bool).reshape(-1, C)[:M].view(N, H, W, C).permute(0, 3, 1, 2)
    return passes if memory_format == torch.channels_last else \
        passes.contiguous(memory_format=memory_format)

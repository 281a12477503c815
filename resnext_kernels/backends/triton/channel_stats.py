"""Triton: per-channel batch statistics of a conv's output, gathered in its epilogue (train-mode
BatchNorm, issue 16), and the fixed-order reductions that finish them.

Partials: fp32 [2, ceil(M / STATS_ROWS), C], contiguous. Row r holds, per channel, the mean
([0, r]) and the sum of squared deviations from that mean (M2, [1, r]) of the output values of
pixels STATS_ROWS * r .. STATS_ROWS * (r + 1) - 1 (flat (n, ho, wo) order, whatever the memory
format): Welford's pair for a chunk, computed two-pass from the chunk's values in registers. The
values are the stored outputs (rounded to the output dtype, then fp32), the values
F.batch_norm reads. A chunk's count is min(STATS_ROWS, M - STATS_ROWS * r), so it is not
stored.

Why a fixed chunk of 32 pixels rather than the program's tile: which pixels a partial covers
must not depend on the tile (BLOCK_M, a multiple of 32 in every configuration). The order of
tl.sum within a chunk does depend on the layout the compiler gives the tile (an independent
review found two configurations of one path that split a chunk's rows differently), so the
train-mode forward runs one fixed launch configuration, not the autotuner's pick: its bits are
the same from run to run and process to process. Cost: 8 bytes per 32 values, 1/8 of an fp16
output's bytes, written once and read once.

`reduce_partials` adds chunks in a fixed order (a fixed range per program, then the programs'
results in order), merging (count, mean, M2) with Chan et al.'s pairwise formulas, so the
result is bitwise the same from run to run. The same kernel sums plain partials (the BN
backward's, batchnorm_train.py).
"""

import torch
import triton
import triton.language as tl

from ._device import on_device

STATS_ROWS = 32
_ROWS = tl.constexpr(STATS_ROWS)  # (what a jit function may read of a module's globals)
# A level of the reduction merges up to _ROWS_IN_ONE rows in one program per channel block;
# more rows go _ROWS_PER_PROGRAM to a program, and their results to the next level (a fixed
# range per program: the order of the sums depends on the shape only). 256 rows per program
# put resnext50 layer1 (batch 128: 12544 rows of 128 channels) on 98 programs, under one wave
# of 132 SMs (an independent review); 64 puts it on 392.
_ROWS_IN_ONE = 1024
_ROWS_PER_PROGRAM = 64
_TILE_ROWS = 32
_BLOCK_C = 64


@triton.jit
def store_channel_stats(
    stats_ptr,  # fp32 [2, n_rows, C] contiguous: the partials (module docstring)
    z,  # fp32 [BLOCK_M, BLOCK_N]: the tile's outputs as stored (rounded to the output dtype)
    m0,  # the tile's first pixel (a multiple of ROWS; int64 where offsets need it)
    m_ok,  # [BLOCK_M] whether each pixel exists
    offs_c,  # [BLOCK_N] the tile's channels
    c_ok,  # [BLOCK_N] which of them this store writes
    C, M,  # channels and pixels of the output
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    ROWS: tl.constexpr = _ROWS
    CHUNKS: tl.constexpr = BLOCK_M // ROWS
    tl.static_assert(CHUNKS * ROWS == BLOCK_M)  # tiles own whole chunks
    ok = tl.reshape(tl.broadcast_to(m_ok[:, None], (BLOCK_M, BLOCK_N)), (CHUNKS, ROWS, BLOCK_N))
    v = tl.where(ok, tl.reshape(z, (CHUNKS, ROWS, BLOCK_N)), 0.0)
    count = tl.sum(tl.reshape(tl.where(m_ok, 1.0, 0.0), (CHUNKS, ROWS)), axis=1)  # [CHUNKS]
    mean = tl.sum(v, axis=1) / tl.maximum(count, 1.0)[:, None]
    dev = tl.where(ok, v - mean[:, None, :], 0.0)
    m2 = tl.sum(dev * dev, axis=1)
    rows = m0 // ROWS + tl.arange(0, CHUNKS)
    n_rows = (M + ROWS - 1) // ROWS
    off = rows[:, None] * C + offs_c[None, :]
    store_ok = (count > 0)[:, None] & c_ok[None, :]
    tl.store(stats_ptr + off, mean, mask=store_ok)
    tl.store(stats_ptr + n_rows * C + off, m2, mask=store_ok)


@triton.jit
def _reduce_partials_kernel(
    part_ptr,  # fp32 [2, n_rows, C], contiguous: per row (mean, M2), or two plain sums
    out0_ptr,  # fp32 [n_programs_m, C] (row stride C): mean, or the first sum
    out1_ptr,  # fp32 [n_programs_m, C]: M2 (the biased variance when FINAL), or the second sum
    n_rows, C, M,
    pixels_per_row,  # pixels a partial row covers (its count: min(this, M - row * this))
    rows_per_program,  # a multiple of TILE_ROWS
    WELFORD: tl.constexpr,  # (mean, M2) pairs merged by Chan's formulas, else plain sums
    FINAL: tl.constexpr,  # the last level: with WELFORD, out1 gets M2 / M
    TILE_ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    first = tl.program_id(1) * rows_per_program
    last = tl.minimum(first + rows_per_program, n_rows)
    n_a = tl.zeros((BLOCK_C,), dtype=tl.float32)
    acc0 = tl.zeros((BLOCK_C,), dtype=tl.float32)  # the mean so far, or the first sum
    acc1 = tl.zeros((BLOCK_C,), dtype=tl.float32)  # M2 so far, or the second sum
    for r0 in range(first, last, TILE_ROWS):
        rows = r0 + tl.arange(0, TILE_ROWS)
        r_ok = rows < last
        ok = r_ok[:, None] & c_ok[None, :]
        off = rows[:, None].to(tl.int64) * C + offs_c[None, :]
        p0 = tl.load(part_ptr + off, mask=ok, other=0.0)
        # (off is int64; n_rows * C < M * C / 32 stays 32-bit; n_rows may be the constant 1)
        p1 = tl.load(part_ptr + (off + n_rows * C), mask=ok, other=0.0)
        if WELFORD:
            count = tl.minimum(pixels_per_row, M - rows.to(tl.int64) * pixels_per_row)
            count = tl.where(r_ok, count, 0).to(tl.float32)[:, None]
            # the block of rows as one (n_b, mean_b, M2_b), then merged into the running one;
            # means as weighted averages (an inf mean stays inf, as torch.var_mean's)
            n_b = tl.sum(count, axis=0)
            mean_b = tl.sum(count * p0, axis=0) / tl.maximum(n_b, 1.0)
            dev_b = tl.where(ok, p0 - mean_b[None, :], 0.0)
            m2_b = tl.sum(p1, axis=0) + tl.sum(count * dev_b * dev_b, axis=0)
            n = n_a + n_b
            mean = (n_a * acc0 + n_b * mean_b) / n
            da = acc0 - mean
            db = mean_b - mean
            acc1 = acc1 + m2_b + tl.where(n_a > 0, n_a * da * da, 0.0) + n_b * db * db
            acc0 = mean
            n_a = n
        else:
            acc0 += tl.sum(p0, axis=0)
            acc1 += tl.sum(p1, axis=0)
    if WELFORD and FINAL:
        acc1 = acc1 / M
    out = tl.program_id(1) * C + offs_c
    tl.store(out0_ptr + out, acc0, mask=c_ok)
    tl.store(out1_ptr + out, acc1, mask=c_ok)


def reduce_partials(part, M, pixels_per_row, welford):
    """part: fp32 [2, n_rows, C] -> two fp32 [C] tensors: with welford, the mean and the biased
    variance of the M values the rows describe; else the two rows' sums. Fixed order: ranges
    of rows per program, then (if there were several) their results in a further pass of the
    same kernel."""
    _, n_rows, C = part.shape
    meta = dict(WELFORD=welford, TILE_ROWS=_TILE_ROWS, BLOCK_C=_BLOCK_C)
    with on_device(part):
        while True:
            per_program = n_rows if n_rows <= _ROWS_IN_ONE else _ROWS_PER_PROGRAM
            per_program = triton.cdiv(per_program, _TILE_ROWS) * _TILE_ROWS
            programs = triton.cdiv(n_rows, per_program)
            final = programs == 1
            if final:  # two tensors of their own (the op's outputs must not share storage)
                out0 = torch.empty(C, dtype=torch.float32, device=part.device)
                out1 = torch.empty_like(out0)
            else:
                out = torch.empty((2, programs, C), dtype=torch.float32, device=part.device)
                out0, out1 = out[0], out[1]
            _reduce_partials_kernel[(triton.cdiv(C, _BLOCK_C), programs)](
                part, out0, out1, n_rows, C, M, pixels_per_row, per_program, FINAL=final,
                **meta)
            if final:
                return out0, out1
            part, n_rows = out, programs
            pixels_per_row *= per_program

"""The throughput model: predicted time of a kernel path from its GPU-free profile (the access
profile of the CUDA emulator, the compiled-code profile) and the GPU's ceilings. Every constant
is in GPUS below with its source; docs/THROUGHPUT_MODEL.md explains the model and its record.

A call's predicted time is the largest of four terms, summed over its launches:
  dram   compulsory bytes (input and output once, weights once) / measured copy bandwidth;
  l2     bytes from L2 to the SMs / the L2->SM rate;
  l1     L1/shared wavefronts (128 bytes a clock per SM: shared loads, stores, ldmatrix, and a
         quarter of a wavefront per global 32-byte sector) / (SMs x clock x L1 efficiency);
  issue  warp instructions / (4 per clock per SM x SMs x clock);
each per-SM term (l1, issue) stretched by the last wave's idle SMs when a launch has few waves.
"""

import math

GPUS = {
    "H100 SXM": dict(
        sms=132,            # KINDS.md (torch on the lent H100, 2026-11-13): 132 multiprocessors
        clock_hz=1.98e9,    # NVIDIA H100 SXM datasheet: max boost 1980 MHz (a lead, not read here)
        copy_gbs=3000,      # KINDS.md: device-to-device copy on the lent H100, ~3.0 TB/s
        l2_gbs=5875,        # the H200 figure below (same chip and L2); a lower bound of the ceiling
    ),
    "H200": dict(
        sms=132,            # benchmarks/results/grouped_conv-NVIDIA-H200-...json: sm_count 132
        clock_hz=1.98e9,    # session.log of the same run: nvidia-smi clocks.max.sm 1980 MHz
        copy_gbs=4273,      # the same results file: copy_bandwidth_gbs 4273 (measured copy)
        l2_gbs=5875,        # the highest L2->SM rate in that session's ncu profile (Triton conv
                            # cpg64 s2: 11.5 x 103 MB in 201 us): the ceiling is at least this
    ),
}
L1_WAVEFRONT_BYTES = 128    # CUDA C++ Programming Guide: 32 banks x 4 bytes per clock per SM
ISSUE_PER_CLOCK = 4         # 4 SM sub-partitions, one warp instruction each per clock (Hopper
                            # and Ampere architecture whitepapers)
# The fraction of the L1 pipe's peak that an L1-bound kernel sustains, calibrated once on the
# H200 run of 2026-11-26: the L1 term of the 12 CUDA conv cases came to 0.80-0.87 of the times
# Nsight Compute measured for them (median 0.83), with L1 throughput at 87-98% of peak.
L1_EFFICIENCY = 0.83


def tail_factor(waves):
    """How much longer a launch of `waves` waves takes than its work at full occupancy would:
    ceil(waves) / waves (1 for many waves, 2 for 1.01 waves, 1/waves for under one wave of
    blocks: the idle SMs of a part-filled GPU)."""
    if not waves:
        return 1.0
    return math.ceil(waves) / waves


def terms(gpu, *, dram_bytes, l2_bytes, l1_wavefronts, warp_instructions, waves):
    g = GPUS[gpu]
    per_sm_clock = g["sms"] * g["clock_hz"]
    stretch = tail_factor(waves)
    return dict(
        dram_us=dram_bytes / (g["copy_gbs"] * 1e3),
        l2_us=l2_bytes / (g["l2_gbs"] * 1e3),
        l1_us=l1_wavefronts / (per_sm_clock * L1_EFFICIENCY) * 1e6 * stretch,
        issue_us=warp_instructions / (per_sm_clock * ISSUE_PER_CLOCK) * 1e6 * stretch,
    )


def predict(gpu, launches):
    """launches: [dict(dram_bytes, l2_bytes, l1_wavefronts, warp_instructions, waves)].
    Returns the predicted microseconds, the terms summed over launches, and the bound."""
    total = dict(dram_us=0.0, l2_us=0.0, l1_us=0.0, issue_us=0.0)
    time_us, bounds, per_launch = 0.0, {}, []
    for launch in launches:
        t = terms(gpu, **launch)
        for k, v in t.items():
            total[k] += v
        bound = max(t, key=t.get)
        bounds[bound] = bounds.get(bound, 0) + t[bound]
        time_us += t[bound]
        per_launch.append(dict(time_us=t[bound], bound=bound))
    return dict(time_us=time_us, bound=max(bounds, key=bounds.get) if bounds else None,
                launches=per_launch, **total)


def floor_us(gpu, nbytes):
    return nbytes / (GPUS[gpu]["copy_gbs"] * 1e3)

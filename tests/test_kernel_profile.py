"""The GPU-free kernel profile's pieces that need no compiler: the SASS reader, occupancy, the
throughput model's arithmetic and the regression guard (scripts/sass_mix.py,
compiled_profile.py, throughput_model.py, kernel_profile.py). The access profiler itself is
tested in test_access_profile.py; the whole report runs in CI (.ci/run, --check)."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import compiled_profile  # noqa: E402
import kernel_profile  # noqa: E402
import sass_mix  # noqa: E402
import throughput_model as tm  # noqa: E402

# cuobjdump -sass's format: a loop from 0x0020 to 0x0090 (the backward branch) with an
# ldmatrix.x4, a transposed one, two HMMAs and a 16-byte load; a 4-byte store after it.
SASS = """
        code for sm_90
                Function : _Z6kernelPKfPf
        .headerflags    @"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   IMAD.MOV.U32 R2, RZ, RZ, RZ ;
        /*0020*/                   LDG.E.128 R4, desc[UR6][R10.64] ;
        /*0030*/                   LDSM.16.M88.4 R12, [R12] ;
        /*0040*/                   LDSM.16.MT88.4 R16, [R16] ;
        /*0050*/                   HMMA.16816.F32 R20, R12, R16, R20 ;
        /*0060*/                   HMMA.16816.F32 R24, R12, R18, R24 ;
        /*0070*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0080*/                   ISETP.GE.AND P0, PT, R2, 0x9, PT ;
        /*0090*/               @!P0 BRA 0x20 ;
        /*00a0*/                   STG.E desc[UR6][R8.64], R20 ;
        /*00b0*/                   LDG.E.U16 R3, desc[UR6][R8.64] ;
        /*00c0*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*00d0*/                   EXIT ;
"""


def test_sass_mix_reads_widths_ldmatrix_and_the_hot_loop():
    (name, instrs), = sass_mix.parse(SASS).items()
    assert name == "_Z6kernelPKfPf" and len(instrs) == 14
    mix = sass_mix.mix(instrs)
    assert mix["global_load_16B"] == 1 and mix["global_load_2B"] == 1
    assert mix["global_store_4B"] == 1 and mix["ldmatrix_x4"] == 2 and mix["hmma"] == 2
    assert mix["barrier"] == 1 and mix["int"] >= 3
    start, end, hot = sass_mix.hot_loop(instrs)
    assert (start, end) == (0x20, 0x90)
    assert hot["hmma"] == 2 and hot["ldmatrix_x4"] == 2 and "global_store_4B" not in hot


# A kernel whose only HMMA loop is in a subroutine after its EXIT (a Triton noinline function),
# and its own code unrolled: one HMMA, no loop.
SASS_WITH_SUBROUTINE = """
                Function : kernel_with_call
        /*0000*/                   LDG.E.128 R4, desc[UR6][R10.64] ;
        /*0010*/                   HMMA.16816.F32 R20, R12, R16, R20 ;
        /*0020*/              @P0  CALL.REL.NOINC 0x60 ;
        /*0030*/                   STG.E desc[UR6][R8.64], R20 ;
        /*0040*/                   EXIT ;
        /*0050*/                   BRA 0x50;
        /*0060*/                   HMMA.16816.F32 R24, R12, R18, R24 ;
        /*0070*/                   LDG.E.U16 R3, desc[UR6][R8.64] ;
        /*0080*/               @!P1 BRA 0x60 ;
        /*0090*/                   RET.REL.NODEC R14 0x0 ;
"""


def test_sass_mix_keeps_a_subroutine_apart():
    """A CALL.REL target's code is its own function: its loop is not the kernel's hot loop and
    its instructions are not counted as the kernel's."""
    functions = sass_mix.split_subroutines(sass_mix.parse(SASS_WITH_SUBROUTINE))
    assert sorted(functions) == ["kernel_with_call", "kernel_with_call/subroutine@60"]
    kernel = functions["kernel_with_call"]
    assert [o for o, _, _ in kernel] == [0x0, 0x10, 0x20, 0x30, 0x40, 0x50]
    assert sass_mix.mix(kernel)["hmma"] == 1 and "global_load_2B" not in sass_mix.mix(kernel)
    start, end, hot = sass_mix.hot_loop(functions["kernel_with_call/subroutine@60"])
    assert (start, end) == (0x60, 0x80) and hot["hmma"] == 1
    hot_in_kernel = sass_mix.hot_loop(kernel)  # only the self-loop at 0x50, no HMMA in it
    assert hot_in_kernel is None or not hot_in_kernel[2].get("hmma")


@pytest.mark.parametrize("regs, threads, smem, blocks, limit", [
    (64, 128, 8064, 8, "registers"),        # 4 warps x 2048 registers: 8 blocks
    (40, 128, 8064, 12, "registers"),       # 40 -> 1280 per warp (units of 256)
    (32, 128, 54400, 4, "shared_memory"),   # 228 KB / (54400 + 1 KB reserved)
    (16, 1024, 0, 2, "warps"),              # 32 warps per block, 64 per SM
])
def test_occupancy_limits(regs, threads, smem, blocks, limit):
    occ = compiled_profile.occupancy(90, regs, threads, smem)
    assert occ["blocks_per_sm"] == blocks and occ["limited_by"] == limit
    assert occ["warps_per_sm"] == blocks * threads // 32


def test_sm80_has_less_shared_memory():
    assert compiled_profile.occupancy(80, 32, 128, 54400)["blocks_per_sm"] == 3


def test_tail_factor_and_terms():
    assert tm.tail_factor(10) == 1 and tm.tail_factor(None) == 1
    assert tm.tail_factor(1.25) == pytest.approx(1.6)
    assert tm.tail_factor(0.5) == pytest.approx(2)  # half the SMs idle
    g = tm.GPUS["H200"]
    t = tm.terms("H200", dram_bytes=g["copy_gbs"] * 1e3, l2_bytes=0, l1_wavefronts=0,
                 warp_instructions=0, waves=100)
    assert t["dram_us"] == pytest.approx(1.0)  # copy_gbs GB/s: that many kB per microsecond
    one_clock_each = g["sms"] * g["clock_hz"] * 1e-6  # wavefronts that fill every SM for 1 us
    t = tm.terms("H200", dram_bytes=0, l2_bytes=0, l1_wavefronts=one_clock_each,
                 warp_instructions=4 * one_clock_each, waves=100)
    assert t["l1_us"] == pytest.approx(1 / tm.L1_EFFICIENCY)
    assert t["issue_us"] == pytest.approx(1.0)
    p = tm.predict("H200", [dict(dram_bytes=0, l2_bytes=0, l1_wavefronts=one_clock_each,
                                 warp_instructions=0, waves=100)] * 2)
    assert p["time_us"] == pytest.approx(2 / tm.L1_EFFICIENCY) and p["bound"] == "l1_us"


def test_wavefronts_per_instruction():
    w = kernel_profile.wavefronts_per_instruction
    assert w("ldmatrix_x4", 2) == 8 and w("ldmatrix_x1", 3) == 3
    assert w("global_load_16B", 1) == 4 and w("global_load_2B", 5) == 5
    assert w("cp_async_16B", 1) == 8  # the global read and the shared write
    assert w("hmma", 4) == 0


def _report(**figures):
    base = dict(model="m", layer="l", backend="cuda", dtype="fp16", layout="nhwc")
    return dict(paths=[dict(base, **figures)])


def test_guard_fails_on_a_regression_over_10_percent_only():
    old = _report(**{"global_ld_sectors_per_request": 4.0, "predicted_us_H100 SXM": 100.0})
    assert kernel_profile.check(old, old) == []
    slightly = _report(**{"global_ld_sectors_per_request": 4.3, "predicted_us_H100 SXM": 95.0})
    assert kernel_profile.check(slightly, old) == []  # 7.5% worse, and a gain
    worse = _report(**{"global_ld_sectors_per_request": 4.0, "predicted_us_H100 SXM": 120.0})
    problems = kernel_profile.check(worse, old)
    assert len(problems) == 1 and "predicted_us_H100 SXM" in problems[0] and "+20%" in problems[0]


def test_guard_fails_when_paths_differ():
    old = _report(**{"predicted_us_H100 SXM": 1.0})
    new = dict(paths=old["paths"] + [dict(old["paths"][0], layout="nchw")])
    assert kernel_profile.check(new, old) == ["path not in the committed report: m l cuda fp16 nchw"]
    assert kernel_profile.check(old, new) == ["path gone from the profile: m l cuda fp16 nchw"]


def _results_file(folder, name, gpu, date, rows):
    import json
    env = dict(gpu=gpu, date=date)
    (folder / name).write_text(json.dumps(dict(environment=env, rows=rows)))


def test_measured_rows_keep_each_rows_newest_measurement_of_one_gpu(tmp_path, monkeypatch):
    """Every GPU results file counts, oldest first, so a later run of a few providers leaves the
    other rows; files of another GPU than the newest file's are ignored; rows without a
    weight_layout were measured with contiguous weights ("nhwc,w-nchw")."""
    folder = tmp_path / "benchmarks" / "results"
    folder.mkdir(parents=True)
    monkeypatch.setattr(kernel_profile, "REPO", tmp_path)

    def row(provider, p50, layout="nhwc", weight_layout=None, dtype="float16", cuda_path=None):
        r = dict(model="m", layer="l1", provider=provider, layout=layout, dtype=dtype,
                 status="ok", p50_ms=p50)
        if weight_layout:
            r["weight_layout"] = weight_layout
        if cuda_path:
            r["cuda_path"] = cuda_path
        return r

    _results_file(folder, "grouped_conv-a.json", "H200", "2026-01-01",
                  [row("cuda", 1.0), row("triton", 2.0), row("cudnn_eager", 3.0),
                   row("cuda", 4.0, dtype="bfloat16"), row("cuda", 5.0, dtype="float32")])
    _results_file(folder, "grouped_conv-b.json", "H200", "2026-01-02",
                  [row("cuda", 0.5), row("triton", 1.5, weight_layout="nhwc"),
                   row("cuda", 0.25, weight_layout="nhwc", cuda_path="v3")])
    _results_file(folder, "grouped_conv-c.json", "H100", "2025-12-31", [row("cuda", 9.0)])
    _results_file(folder, "grouped_conv-cpu.json", None, "2026-01-03", [row("cuda", 7.0)])
    measured, sources = kernel_profile.measured_rows()
    # fp32 rows are left out: whether TF32 was on is not recorded
    assert measured == {("m", "l1", "cuda", "nhwc,w-nchw", "fp16"): (500.0, None),
                        ("m", "l1", "cuda", "nhwc", "fp16"): (250.0, "v3"),
                        ("m", "l1", "triton", "nhwc,w-nchw", "fp16"): (2000.0, None),
                        ("m", "l1", "triton", "nhwc", "fp16"): (1500.0, None),
                        ("m", "l1", "cudnn_eager", "nhwc,w-nchw", "fp16"): (3000.0, None),
                        ("m", "l1", "cuda", "nhwc,w-nchw", "bf16"): (4000.0, None)}
    assert [f for f, _ in sources] == ["benchmarks/results/grouped_conv-a.json",
                                       "benchmarks/results/grouped_conv-b.json"]


def test_measured_rows_leave_out_retired_kernels(tmp_path, monkeypatch):
    """CUDA v3.1's rows (reverted after its GPU run) carry cuda_v3_schedule: a newer file of them
    does not replace the older v3 measurement, and its other providers still count."""
    folder = tmp_path / "benchmarks" / "results"
    folder.mkdir(parents=True)
    monkeypatch.setattr(kernel_profile, "REPO", tmp_path)
    base = dict(model="m", layer="l1", layout="nhwc", dtype="float16", status="ok")
    _results_file(folder, "grouped_conv-v3.json", "H100", "2026-01-01",
                  [dict(base, provider="cuda", p50_ms=1.0, cuda_path="v3"),
                   dict(base, provider="triton", p50_ms=3.0)])
    schedule = dict(rows=2, steps_per_cta=7, stages=2, ring_rows=8, smem_bytes=73728)
    _results_file(folder, "grouped_conv-v31.json", "H100", "2026-01-02",
                  [dict(base, provider="cuda", p50_ms=2.0, cuda_path="v3",
                        cuda_v3_schedule=schedule),
                   dict(base, provider="cuda_v3_unpipelined", p50_ms=2.5, cuda_path="v3",
                        cuda_v3_schedule=schedule),
                   dict(base, provider="triton", p50_ms=2.75)])
    measured, _ = kernel_profile.measured_rows()
    assert measured == {("m", "l1", "cuda", "nhwc,w-nchw", "fp16"): (1000.0, "v3"),
                        ("m", "l1", "triton", "nhwc,w-nchw", "fp16"): (2750.0, None)}


def test_measured_cuda_rows_meet_only_the_kernel_they_ran():
    """A CUDA measurement is compared with the prediction of the kernel that ran: rows from
    before v3 (no cuda_path) never stand for a v3 prediction, and v3 rows only for v3."""
    assert kernel_profile.same_cuda_kernel(None, "path wmma block_channels 16 workspace_bytes 0")
    assert kernel_profile.same_cuda_kernel(None, "path direct block_channels 0 workspace_bytes 0")
    assert not kernel_profile.same_cuda_kernel(None, "path v3 block_channels 0 workspace_bytes 9")
    assert kernel_profile.same_cuda_kernel("v3", "path v3 block_channels 0 workspace_bytes 9")
    assert not kernel_profile.same_cuda_kernel("v3", "path wmma block_channels 16 x")
    assert not kernel_profile.same_cuda_kernel("wmma", "path v3 block_channels 0 x")


def test_measured_triton_rows_meet_only_the_kernel_they_ran():
    """Triton rows without triton_path predate v3 (v2 ran): they stand for v2's prediction
    only, and v3 rows only for v3's."""
    v3_label, v2_label = "conv_v3 sm_90 fp16 4x16 cpg4 M128 w8 p3 nhwc", "conv sm_90 fp16 N16"
    assert kernel_profile.same_triton_kernel(None, v2_label)
    assert not kernel_profile.same_triton_kernel(None, v3_label)
    assert kernel_profile.same_triton_kernel("v3", v3_label)
    assert not kernel_profile.same_triton_kernel("v2", v3_label)


def test_other_dtypes_cover_every_cpg_stride_class_and_se_stage():
    """bf16 and fp32/TF32 are profiled on one layer of every grouped-conv (cpg, stride) class of
    the real models and on every SE stage; fp16 on every layer."""
    every = list(compiled_profile.layer_shapes())
    chosen = list(compiled_profile.class_shapes())
    conv_classes = {(s["cpg"], s["stride"]) for s in every if s["op"] == "conv"}
    assert sorted((s["cpg"], s["stride"]) for s in chosen if s["op"] == "conv") == sorted(
        conv_classes)
    assert [s for s in chosen if s["op"] == "se"] == [s for s in every if s["op"] == "se"]
    pairs = list(compiled_profile.dtype_shapes(("fp16", "bf16")))
    assert len(pairs) == len(every) + len(chosen)
    assert compiled_profile.op_dtype("se", "fp32/tf32") == "fp32"
    assert compiled_profile.op_dtype("conv", "fp32/tf32") == "fp32/tf32"


RESNEXT50_LAYER2_0 = dict(op="conv", C=256, H=56, W=56, cpg=8, stride=2)  # y: 128 x 256 x 28²


def test_streaming_kernels_move_their_bytes_at_their_loads_width():
    """The elementwise model: requests of the width the loads move the bytes at, weighted by
    bytes (16-byte tensor loads beside a few 4-byte parameter loads stay near 16 bytes; 2-byte
    loads make 8 times the requests and, with as many other instructions per memory
    instruction, 8 times the instructions)."""
    wide = kernel_profile.streaming_launch(
        2**20, {"global_load_16B": 8, "global_load_4B": 2, "int": 20}, programs=1, warps=1,
        waves=10)
    narrow = kernel_profile.streaming_launch(
        2**20, {"global_load_2B": 64, "global_load_4B": 2, "int": 132}, programs=1, warps=1,
        waves=10)
    assert wide["dram_bytes"] == narrow["dram_bytes"] == wide["l2_bytes"] == 2**20
    width = (8 * 256 + 2 * 16) / (8 * 16 + 2 * 4)
    assert wide["warp_instructions"] == pytest.approx(2**20 / (32 * width) * 3)
    assert narrow["warp_instructions"] / wide["warp_instructions"] == pytest.approx(
        width / ((64 * 4 + 2 * 16) / (64 * 2 + 2 * 4)), rel=1e-9)
    assert narrow["warp_instructions"] > 6 * wide["warp_instructions"]


def test_wgrad_tap_rows_read_kw_x_tiles_per_step_in_a_third_of_the_programs():
    """Triton wgrad v2 (TAP_SLOTS > 1: a program per kernel row) against v1 (a program per
    tap) on the same splits: a step reads one gradient tile and KW x tiles, the grid has KH
    instead of KH * KW programs per tile, and the compulsory bytes are the same."""
    shape = dict(C=128, H=56, W=56, cpg=4, stride=1)
    elem, x_bytes = 2, kernel_profile.BATCH * 128 * 56 * 56 * 2
    mix = {"global_load_16B": 2, "int": 30}
    per_tap = dict(BLOCK_M=64, BLOCK_N=16, BLOCK_K=16, KW=3, HAS_MASK=True)
    row = dict(per_tap, TAP_SLOTS=4)
    v1 = kernel_profile.triton_backward_launch("conv_wgrad", mix, per_tap, [28, 8, 9], 4, 2,
                                               shape, x_bytes, elem)
    v2 = kernel_profile.triton_backward_launch("conv_wgrad", mix, row, [28, 8, 3], 4, 2, shape,
                                               x_bytes, elem)
    assert v1["dram_bytes"] == v2["dram_bytes"]
    step_v1 = 64 * 16 * (elem + 1) + 64 * 16 * elem
    step_v2 = 64 * 16 * (elem + 1) + 3 * 64 * 16 * elem
    assert v2["l2_bytes"] / v1["l2_bytes"] == pytest.approx(step_v2 / (3 * step_v1))
    assert v2["warp_instructions"] == pytest.approx(v1["warp_instructions"] / 3)


@pytest.mark.parametrize("stride,taps", [(1, 9), (2, 2.25), (3, 1)])
def test_dgrad_programs_run_the_taps_that_reach_their_stride_class(stride, taps):
    """Triton dgrad v2: a program's pixels share a stride class and it runs only the taps that
    reach the class (3x3, padding 1: at stride 2 the classes run 1, 2, 2 and 4 taps), so the
    model's steps per program are those taps x the channel steps, on the launcher's grid of
    stride^2 classes' programs (checked against the launcher itself in
    test_grouped_conv_backward.test_dgrad_grid_has_a_program_block_per_stride_class)."""
    assert kernel_profile.dgrad_taps_per_program(stride) == pytest.approx(taps)
    per_class = [[k for k in range(3) if (r + 1 - k) % stride == 0] for r in range(stride)]
    assert sum(len(a) * len(b) for a in per_class for b in per_class) / stride**2 == taps
    shape = dict(C=256, H=56, W=56, cpg=8, stride=stride)
    elem, x_bytes = 2, kernel_profile.BATCH * 256 * 56 * 56 * 2
    mix = {"global_load_16B": 2, "int": 30}
    c = dict(BLOCK_M=64, BLOCK_N=16, BLOCK_K=16, HAS_MASK=True)
    grid = [stride**2 * 100, 16, 1]
    launch = kernel_profile.triton_backward_launch("conv_dgrad", mix, c, grid, 4, 2, shape,
                                                   x_bytes, elem)
    # (a 16-channel tile holds 2 groups of 8: one 16-wide channel step per tap)
    assert launch["warp_instructions"] == pytest.approx(math.prod(grid) * taps * 32 * 4)


def test_train_bn_bytes_follow_the_tensors_each_kernel_reads_and_writes():
    """Per launch: z, y, grad_y alike (the conv's output), the mask 1 bit per output, fp32
    partials [2, rows, C]; the rows each reduction reads are those the previous launch wrote."""
    shape, elem = RESNEXT50_LAYER2_0, 2
    x = 128 * 256 * 56 * 56 * elem
    y, mask = x // 4, x // 4 / elem / 8
    b = kernel_profile.train_bn_bytes
    assert b("bn_normalize", dict(WRITE_MASK=True), [1568, 4], shape, x, elem, 3136) == (
        2 * y + mask, 3136)
    assert b("bn_backward_sums", dict(HAS_MASK=True), [1568, 4], shape, x, elem, None) == (
        2 * y + mask + 2 * 1568 * 256 * 4, 1568)
    assert b("stats_reduce", dict(FINAL=False), [4, 49], shape, x, elem, 3136) == (
        2 * (3136 + 49) * 256 * 4, 49)
    assert b("stats_reduce", dict(FINAL=True), [4, 1], shape, x, elem, 49) == (
        2 * (49 + 1) * 256 * 4, 1)
    assert b("bn_grad_z", dict(HAS_MASK=True), [1568, 4], shape, x, elem, 1) == (
        3 * y + mask, 1)
    # the step's floor: the "write z" design, 10.13 GB over resnext50's grouped layers
    assert kernel_profile.train_bn_floor_bytes(shape, elem) == pytest.approx(
        3 * x + 10 * y + 3 * mask)


def test_se_backward_bytes_and_its_fc_launches_in_order():
    se = dict(op="se", C=256, H=56, W=56, R=16)
    u = 128 * 256 * 56 * 56 * 2
    b = kernel_profile.se_backward_bytes
    full = dict(HAS_RESIDUAL=True, APPLY_RELU=True, STORE_G=True)
    assert b("se_gate_grad", full, u) == 4 * u  # grad_out, u, the residual; g written
    assert b("se_gate_grad", dict(full, HAS_RESIDUAL=False, STORE_G=False), u) == 2 * u
    assert b("se_input_grad", dict(G_WRITTEN=True), u) == 2 * u  # g read, grad_u written
    assert b("se_input_grad", dict(G_WRITTEN=False, APPLY_RELU=True, HAS_RESIDUAL=True),
             u) == 4 * u
    assert kernel_profile.se_train_floor_bytes(se, 2) == 8 * u
    c = dict(BLOCK_I=16, BLOCK_J=32, BLOCK_K=16)
    launch = kernel_profile.se_backward_fc_launch(1, c, [8, 8, 1], instr=10, warps=4,
                                                  waves=0.1, shape=se)  # d_pooled: N x C
    assert launch["dram_bytes"] == (128 * 16 + 256 * 16 + 128 * 256) * 4
    assert launch["l2_bytes"] == 64 * 1 * (16 + 32) * 16 * 4  # 64 programs, one K step each
    with pytest.raises(RuntimeError, match="launch order changed"):
        kernel_profile.se_backward_fc_launch(2, c, [8, 8, 1], instr=10, warps=4, waves=0.1,
                                             shape=se)  # grad_W1 is R x C: grid [1, 8]


def _row(launches):
    """A compiled-profile row and its kernel table from (label, grid, constexprs, mix)."""
    row, kernels = dict(dtype="fp16", launches=[]), {}
    for i, (label, grid, c, mix) in enumerate(launches):
        kernels[f"k{i}"] = dict(sass=dict(mix=mix), num_warps=4)
        row["launches"].append(dict(kernel=label, grid=grid, blocks=grid[0] * grid[1],
                                    sm_90=dict(kernel_id=f"k{i}", constexprs=c, waves=2.0)))
    return row, kernels


def test_triton_layer_passes_the_partials_rows_along_a_train_bn_step():
    """The statistics' rows: written by the conv (ceil(M / 32) of them), read by the first
    reduction, whose programs' rows the final one reads; the backward's sums write one row per
    tile, read the same way. A written grad_z is read by dgrad without a mask; the normalize's
    mask is counted once (not again as a conv's)."""
    shape = dict(RESNEXT50_LAYER2_0)
    x = 128 * 256 * 56 * 56 * 2
    y, mask, C = x // 4, x // 4 / 16, 256
    mix = {"global_load_16B": 4, "int": 8}
    conv = dict(BLOCK_N=16, BLOCK_K=16, BLOCK_M=64, WRITE_STATS=True)
    row, kernels = _row([
        ("conv sm_90 fp16 stats", [1568, 16], conv, mix),
        ("stats_reduce sm_90 welford", [4, 98], dict(FINAL=False), mix),
        ("stats_reduce sm_90 welford final", [4, 1], dict(FINAL=True), mix),
        ("bn_normalize sm_90 fp16", [1568, 4], dict(WRITE_MASK=True), mix),
        ("bn_backward_sums sm_90 fp16", [1568, 4], dict(HAS_MASK=True), mix),
        ("stats_reduce sm_90 sum", [4, 25], dict(FINAL=False), mix),
        ("stats_reduce sm_90 sum final", [4, 1], dict(FINAL=True), mix),
        ("bn_grad_z sm_90 fp16", [1568, 4], dict(HAS_MASK=True), mix),
        ("conv_dgrad sm_90 fp16 nomask", [1568, 16],
         dict(BLOCK_N=16, BLOCK_K=16, BLOCK_M=64, HAS_MASK=False), mix),
    ])
    dram = [m["dram_bytes"] for m in kernel_profile.triton_layer(row, kernels, shape)]
    rows = 128 * 28 * 28 // 32  # 3136
    assert dram[0] == pytest.approx(x + y + 2 * rows * C * 4)
    assert dram[1:3] == [2 * (rows + 98) * C * 4, 2 * (98 + 1) * C * 4]
    assert dram[3] == 2 * y + mask
    assert dram[4] == 2 * y + mask + 2 * 1568 * C * 4
    assert dram[5:7] == [2 * (1568 + 25) * C * 4, 2 * (25 + 1) * C * 4]
    assert dram[7] == 3 * y + mask
    assert dram[8] == y + x  # grad_z read (no mask), grad_x written


def test_cuda_train_bn_launches_pass_the_partials_rows_along():
    """The CUDA train-mode BN kernels (compiled_profile's "train_bn" row): the statistics read z
    and write a row per 256-pixel tile, each reduction level reads the rows before it and writes
    one per block of rows (its grid's first axis), the last level one; the normalize reads z and
    writes y and the mask; the sums read grad_y, the mask and z; grad_z writes z's size too. The
    kernel names are the compiled profile's (bn_train_launch_kernels)."""
    shape = dict(RESNEXT50_LAYER2_0)
    x = 128 * 256 * 56 * 56 * 2
    y, mask, C = x // 4, x // 4 / 16, 256
    tiles = 128 * 28 * 28 // 256  # 392
    names = (compiled_profile.bn_train_launch_kernels("bn_forward", "fp16", 3)
             + compiled_profile.bn_train_launch_kernels("bn_backward_sums", "fp16", 4)
             + compiled_profile.bn_train_launch_kernels("bn_grad_z", "fp16", 1))
    grids = [[tiles, 4], [1, 8], [tiles, 4], [tiles, 4], [7, 8], [1, 8], [1, 1], [tiles, 4]]
    launches = [dict(kernel=k, grid=g + [1], blocks=g[0] * g[1], threads=256,
                     sm_90=dict(waves=1.0)) for k, g in zip(names, grids)]
    mix = {"global_load_16B": 8, "int": 24}
    kernels = {k: dict(sass=dict(mix=mix)) for k in names}
    dram = [m["dram_bytes"] for m in kernel_profile.cuda_train_bn_launches(launches, kernels,
                                                                           shape, 2)]
    assert names[0] == "statistics_partials_kernel<half>" and names[2] == "normalize_kernel<half>"
    assert names[6] == "coefficients_kernel" and names[7] == "grad_z_kernel<half>"
    assert dram[0] == pytest.approx(y + 2 * tiles * C * 4)
    assert dram[1] == 2 * (tiles + 1) * C * 4
    assert dram[2] == 2 * y + mask
    assert dram[3] == 2 * y + mask + 2 * tiles * C * 4
    assert dram[4:6] == [2 * (tiles + 7) * C * 4, 2 * (7 + 1) * C * 4]
    assert dram[6] == 9 * C * 4
    assert dram[7] == 3 * y + mask


def test_triton_layer_models_the_se_backward_fcs_in_launch_order():
    """An SE training row: the forward's and the recomputed gate's FC launches by the forward
    model, the six after the gate gradient by the backward's dimensions (their grids checked:
    one out of place raises), with the input gradient between the second and the third."""
    se = dict(op="se", C=256, H=56, W=56, R=16)
    mix = {"global_load_16B": 4, "int": 8}
    fc = dict(BLOCK_I=16, BLOCK_J=16, BLOCK_K=64, SIGMOID=False)
    gate = dict(BLOCK_I=16, BLOCK_J=64, BLOCK_K=16, SIGMOID=True)
    wide = dict(BLOCK_I=16, BLOCK_J=32, BLOCK_K=16)
    tail = dict(HAS_RESIDUAL=True, APPLY_RELU=True)
    forward = [("se_squeeze sm_90", [128, 4], {}, mix), ("se_fc sm_90", [8, 1, 1], fc, mix),
               ("se_fc sm_90 sigmoid", [8, 4, 1], gate, mix)]
    backward = [("se_gate_grad sm_90", [128, 4], dict(tail, STORE_G=True), mix),
                ("se_fc sm_90 relu_grad", [8, 1, 1], fc, mix),
                ("se_fc sm_90", [8, 8, 1], wide, mix),
                ("se_input_grad sm_90", [6272, 4], dict(G_WRITTEN=True), mix),
                ("se_fc sm_90", [1, 8, 1], wide, mix), ("se_fc sm_90", [1, 1, 1], fc, mix),
                ("se_fc sm_90", [16, 1, 1], wide, mix), ("se_fc sm_90", [16, 1, 1], fc, mix)]
    row, kernels = _row(forward + [("se_scale sm_90", [128, 4], tail, mix)]
                        + forward + backward)
    model = kernel_profile.triton_layer(row, kernels, se)
    u = 128 * 256 * 56 * 56 * 2
    assert [m["dram_bytes"] for m in model][7:11] == [
        4 * u, (128 * 256 + 16 * 256 + 128 * 16) * 4, (128 * 16 + 256 * 16 + 128 * 256) * 4,
        2 * u]
    row, kernels = _row(forward + backward[:4] + backward[5:])  # d_pooled's launch missing
    with pytest.raises(RuntimeError, match="launch order changed"):
        kernel_profile.triton_layer(row, kernels, se)


def test_layout_copies_move_their_operand_once_each_way_in_launch_order():
    """The backward on v3: dgrad packs grad_y, wgrad x and grad_y, where they have neither
    16-byte chunks nor contiguous rows (the harness's reports name them in launch order);
    channels_last and NCHW copy nothing."""
    reports = ["path v3 pack grad_y",
               "path v3 splits 3 threads 32 element_chunks 1 pack x pack grad_y"]
    assert kernel_profile.layout_copy_bytes(reports, x_bytes=4, y_bytes=1) == [2, 8, 2]
    assert kernel_profile.layout_copy_bytes(["path v3", "path v3 splits 3 threads 32 "
                                             "element_chunks 1"], 4, 1) == []
    names = compiled_profile.cuda_launch_kernels("dgrad", reports[0], "fp16", 2, 8)
    assert names[0] == compiled_profile.CHANNELS_LAST_PACK
    assert names[1:] == ["dgrad_fold_flip_weights_kernel<half>", "pack_b_fragments_kernel<half, 8>",
                         "grouped_conv_bn_relu_v3_kernel<half, 8, 1, true>"]
    assert compiled_profile.cuda_launch_kernels("wgrad", reports[1], "fp16", 2, 8)[:2] == [
        compiled_profile.CHANNELS_LAST_PACK] * 2
    for report in ("path v3 select", "path v3 pack grad_y unpack grad_x"):
        with pytest.raises(ValueError, match="no launch sequence"):
            compiled_profile.cuda_launch_kernels("dgrad", report, "fp16", 1, 8)


def test_the_forwards_layout_copy_comes_before_v3():
    """The forward on v3 with an x that has neither 16-byte chunks nor contiguous rows: x packed
    before v3's weight packing and conv, moving x once each way; NCHW (planes) copies nothing;
    the epilogue's mask goes on the conv launch, the last."""
    report = "path v3 block_channels 0 workspace_bytes 4096 pack x"
    assert kernel_profile.layout_copy_bytes([report], x_bytes=4, y_bytes=1) == [8]
    names = compiled_profile.cuda_launch_kernels("conv", report, "fp16", 2, 8)
    assert names == [compiled_profile.CHANNELS_LAST_PACK, "pack_b_fragments_kernel<half, 8>",
                     "grouped_conv_bn_relu_v3_kernel<half, 8, 2, false>"]
    planes = compiled_profile.cuda_launch_kernels("conv", report.replace(" pack x", ""), "bf16",
                                                  1, 32)
    assert planes == ["pack_weight_rows_kernel<bf16, 32>",
                      "grouped_conv_bn_relu_v3_wide_kernel<bf16, 32, 1, false>"]
    for bad in (" unpack y", " unpack x"):
        with pytest.raises(ValueError, match="no launch sequence"):
            compiled_profile.cuda_launch_kernels("conv", report + bad, "fp16", 1, 8)

    shape = dict(C=64, H=8, W=8, stride=1)
    model = [dict(dram_bytes=10.0) for _ in names]
    masked = kernel_profile.with_epilogue_mask(model, names, shape, 2)
    mask_bytes = kernel_profile.BATCH * 64 * 8 * 8 / 8
    assert [m["dram_bytes"] for m in masked] == [10.0, 10.0, 10.0 + mask_bytes]
    with pytest.raises(ValueError, match="no single v3 conv launch"):
        kernel_profile.with_epilogue_mask(model, names[:1], shape, 2)

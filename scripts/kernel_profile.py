"""The GPU-free kernel profile: for every kernel path and every real layer of resnext50_32x4d,
resnext101_32x8d (grouped 3x3 conv + BN + ReLU) and seresnext50_32x4d (SE stages), at batch
128, fp16 (and bf16 and fp32 with TF32 on one layer of each (cpg, stride) class and on every SE
stage: compiled_profile.class_shapes): what a GPU profiler would show, computed on the CPU, and
the time the throughput model predicts from it, next to what a GPU measured where a GPU session has measured it.

    python scripts/kernel_profile.py            # writes benchmarks/results/gpu-free-profile.{md,json}
                                                # and compiled-profile.{md,json}
    python scripts/kernel_profile.py --check    # CI: regenerate and compare with the committed report
    python scripts/kernel_profile.py --fresh    # ... running every emulator profile (below)

Sources: the CUDA emulator's access profile (scripts/access_profile.py; CUDA kernels only), the
compiled-code profile of both backends (scripts/compiled_profile.py), the throughput model
(scripts/throughput_model.py, docs/THROUGHPUT_MODEL.md). Every figure in the report is a
prediction or a GPU-free count, never a measurement, except the columns marked measured, which
are copied from GPU results files under benchmarks/results/ (named in the report).

--check (the regression guard): every per-path figure of the committed report (global sectors
per request, shared wavefronts per request, L2->SM bytes per input byte, predicted time) is
recomputed; one more than 10% worse, or a path missing from either side, fails, unless the
commit also updates the committed report (then the two agree). Run it in the environment the
report was made in (the GPU machine's versions: torch 2.11, Triton 3.6, nvcc 13.0): the Triton
figures depend on Triton's compiler.

The emulator's access profiles of the CUDA kernels take two thirds of the time (about 15 of 20
minutes on 2 cores). Each one is saved beside the report
(benchmarks/results/gpu-free-profile-emulator.json) under a key of everything it depends on:
the CUDA and emulator sources by content (the same key in any checkout), the compiler's
version, the build flags, torch's version, the Python that drives the emulator, CUDA_EMULATOR_
variables, and the case (scripts/access_profile.inputs_digest, ProfileStore). Both modes reuse
a saved profile whose key matches, and run the rest. A change to the CUDA kernels therefore
reruns all of them, and a change to the Triton kernels or the model reruns none. --fresh
ignores the saved profiles.
"""

import argparse
import concurrent.futures
import glob
import importlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

import access_profile  # noqa: E402
import compiled_profile  # noqa: E402
import sass_mix  # noqa: E402
import throughput_model as tm  # noqa: E402

REPORT = REPO / "benchmarks" / "results" / "gpu-free-profile"
BATCH = 128
DTYPES = ("fp16", "bf16", "fp32/tf32")
GPUS = ("H100 SXM", "H200")
GUARD_TOLERANCE = 0.10
GUARDED = ("global_ld_sectors_per_request", "global_st_sectors_per_request",
           "shared_ld_wavefronts_per_request", "l2_to_sm_per_input_byte", "predicted_us_H100 SXM")
SHARED_KINDS = ("shared_load", "shared_store", "ldmatrix", "fragment_store")


def wavefronts_per_instruction(category: str, count: int) -> float:
    """L1 wavefronts a warp-wide instruction of a SASS category costs when conflict-free."""
    if category.startswith("ldmatrix_x"):
        return count * int(category[-1])
    for prefix in ("global_load_", "global_store_", "shared_load_", "shared_store_", "cp_async_"):
        if category.startswith(prefix):
            width = int(category[len(prefix):-1])
            per = max(1.0, 32 * width / tm.L1_WAVEFRONT_BYTES)
            return count * per * (2 if prefix == "cp_async_" else 1)  # cp.async: read + write
    return 0.0


def memory_instructions(mix: dict) -> int:
    return sum(v for k, v in mix.items() if k.startswith(sass_mix.MEMORY))


def sass_of(cuda_kernels, name):
    return (cuda_kernels.get(name) or {}).get("sass") or {}


def instructions_per_memory_request(sass):
    """Warp instructions per memory instruction in the kernel's hot loop (whole kernel when it
    has no loop): the ratio that turns memory requests into issued instructions."""
    body = sass.get("hot_loop") or sass
    mix = body.get("mix", {})
    mem = memory_instructions(mix)
    return (sum(mix.values()) / mem) if mem else 1.0


def access_case(shape, layout, dtype):
    """The access profiler's case (scripts/access_profile.py) of one CUDA call at batch 1."""
    return dict(shape, C_out=shape["C"], dtype=dtype.split("/")[0], layout=layout,
                tf32=dtype == "fp32/tf32")


def access_profiles(binary, calls, blocks, store):
    """{(model, layer, layout, dtype): access_profile.run_case(...)} for every CUDA call, from
    `store` (an access_profile.ProfileStore) where an earlier run's profile matches, else run
    side by side (each is an emulator process) on every core."""
    def run(call):
        shape, layout, dtype = call
        return store.get(access_profile.run_case, binary, access_case(shape, layout, dtype),
                         blocks)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        results = pool.map(run, calls)
        return {(shape["model"], shape["layer"], layout, dtype): result
                for (shape, layout, dtype), result in zip(calls, results)}


def backward_profiles(binary, calls, blocks, store):
    """{(model, layer, layout): access_profile.run_backward_case(...)} for the CUDA backward of
    every fp16 conv call, from `store` or run side by side on every core."""
    def run(call):
        shape, layout = call
        return store.get(access_profile.run_backward_case, binary,
                         access_case(shape, layout, "fp16"), blocks)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        results = pool.map(run, calls)
        return {(shape["model"], shape["layer"], layout): result
                for (shape, layout), result in zip(calls, results)}


def wgrad_splits(report):
    """The pixel splits in the harness's wgrad report ("path direct splits S ...")."""
    words = report.split()
    return int(words[words.index("splits") + 1])


def layout_copy_bytes(reports, x_bytes, y_bytes):
    """The DRAM bytes of each layout copy of a call, in launch order, from its reports (an
    operand with neither 16-byte chunks nor contiguous rows, packed before a v3 kernel: the
    forward's x, dgrad's grad_y, wgrad's x and grad_y; NCHW copies nothing): the operand read
    once and written once."""
    operand_bytes = {"grad_y": y_bytes, "x": x_bytes}
    return [2 * operand_bytes[operand] for report in reports
            for operand in compiled_profile.layout_copies(report)]


def cuda_backward_layer(profiled, shape, layout, cuda_kernels, plan):
    """The model launches of the CUDA backward of one fp16 layer at batch BATCH, from its access
    profile at batch 1 (backward_profiles), scaled per launch by the work's growth: dgrad's
    launches by their blocks (the layout copies of NCHW operands: the operand read and written
    once; the direct kernel: a thread per grad_x element; on v3
    (csrc/kernels/grouped_conv_dgrad_v3.cu): the scaled, flipped weights, v3's weight packing
    and its forward of the gradient, gated by the mask in its loader), wgrad's partial
    sums (direct, or v3's: csrc/kernels/grouped_conv_wgrad_v3.cu) by the pixels (BATCH: each
    block sums its split of the pixels; the splits differ between batch 1 and BATCH, the total
    work does not) and the finalize by the splits (it reads every split's partial sums)."""
    elem = 2
    launches, reports = profiled
    b1, b128 = plan["b1"]["launches"], plan["b128"]["launches"]
    if len(launches) != len(b128) or len(b1) != len(b128):
        raise ValueError(f"{shape['layer']} {layout}: the profiled backward made "
                         f"{len(launches)} launches, the plans {len(b1)} and {len(b128)}")
    x_bytes = BATCH * shape["C"] * shape["H"] * shape["W"] * elem
    y_bytes = output_bytes(shape, x_bytes)
    mask_bytes = y_bytes / elem / 8
    w_bytes = 9 * shape["C"] * shape["cpg"] * elem
    splits, splits_b1 = wgrad_splits(plan["b128"]["reports"][1]), wgrad_splits(reports[1])
    copies = iter(layout_copy_bytes(plan["b128"]["reports"], x_bytes, y_bytes))
    partial_bytes = splits * shape["C"] * (9 * shape["cpg"] + 1) * 4

    def growth_and_dram(i, name):
        if name.startswith(("grouped_conv_wgrad_partial", "grouped_conv_wgrad_v3")):
            return BATCH, y_bytes + mask_bytes + x_bytes + partial_bytes
        if name.startswith("grouped_conv_wgrad_finalize"):
            return splits / splits_b1, partial_bytes + 2 * w_bytes
        grow = b128[i]["blocks"] / max(1, b1[i]["blocks"])
        if name.startswith("grouped_conv_dgrad_kernel"):      # grad_y, mask -> grad_x
            return grow, y_bytes + mask_bytes + x_bytes + w_bytes
        if name.startswith("channels_last_copy"):             # an operand, re-laid out
            return grow, next(copies)
        if name.startswith(("dgrad_fold_flip", "pack_")):    # the weights, re-laid out
            return grow, 2 * w_bytes
        if name.startswith("grouped_conv_bn_relu_v3") and name.endswith("true>"):
            return grow, y_bytes + mask_bytes + x_bytes + w_bytes  # grad_y, mask -> grad_x
        raise ValueError(f"no traffic model for the backward's launch {name}")

    model = []
    for i, launch in enumerate(launches):
        grow, dram = growth_and_dram(i, b128[i]["kernel"])
        s = access_profile.scaled(launch)
        requests = sum(s[k]["requests"] for k in access_profile.KINDS) * grow
        sass = sass_of(cuda_kernels, b128[i]["kernel"])
        model.append(dict(
            dram_bytes=dram,
            l2_bytes=32 * s["block_unique_load_sectors"] * grow,
            l1_wavefronts=(sum(s[k]["wavefronts"] for k in SHARED_KINDS)
                           + (s["global_load"]["sectors"] + s["global_store"]["sectors"]) / 4)
            * grow,
            warp_instructions=requests * instructions_per_memory_request(sass),
            waves=b128[i]["sm_90"]["waves"]))
    return model


def mask_kernel_traffic(shape, elem):
    """csrc/kernels/relu_mask.cu (the direct and WMMA paths' mask): y read once, the mask
    written. Its traffic only."""
    x_bytes = BATCH * shape["C"] * shape["H"] * shape["W"] * elem
    y_bytes = output_bytes(shape, x_bytes)
    return [dict(dram_bytes=y_bytes + y_bytes / elem / 8, l2_bytes=0, l1_wavefronts=0,
                 warp_instructions=0, waves=None)]


def with_epilogue_mask(model, kernels, shape, elem):
    """v3's launches (`kernels` their names) with the mask its epilogue writes: the conv launch
    moves the mask's bytes too (the access profile ran without a mask: its staged reads and the
    merged words are not counted)."""
    x_bytes = BATCH * shape["C"] * shape["H"] * shape["W"] * elem
    mask_bytes = output_bytes(shape, x_bytes) / elem / 8
    conv = [i for i, k in enumerate(kernels) if k.startswith("grouped_conv_bn_relu_v3")]
    if len(conv) != 1:
        raise ValueError(f"no single v3 conv launch among {kernels}")
    return [dict(m, dram_bytes=m["dram_bytes"] + mask_bytes) if i == conv[0] else m
            for i, m in enumerate(model)]


def cuda_layer(profiled, shape, layout, dtype, cuda_kernels, plan):
    """(model launches, guard figures) of one CUDA call at batch BATCH, from its access profile
    at batch 1 (`profiled`, access_profiles' result) scaled by each launch's blocks at BATCH
    over its blocks at 1. A conv's DRAM bytes per launch: the weights' re-layout reads and
    writes them; x's layout copy before v3, where it has one (neither 16-byte chunks nor
    contiguous rows), x once each way; the conv x, y and the weights (NCHW: v3 reads and
    writes them by channel planes)."""
    elem = compiled_profile.ELEM_BYTES[dtype]
    launches, input_bytes, path = profiled
    summary = access_profile.summarise(f"{shape['op']} cuda", path, launches, input_bytes)
    b1 = plan["b1"]["launches"]
    b128 = plan["b128"]["launches"]
    x_bytes = BATCH * shape["C"] * shape["H"] * shape["W"] * elem
    # the conv's layout copy (x packed before v3; none in the profile's layouts)
    copies = iter(layout_copy_bytes(plan["b128"]["reports"], x_bytes,
                                    output_bytes(shape, x_bytes))
                  if shape["op"] == "conv" else [])
    model = []
    for i, launch in enumerate(launches):
        s = access_profile.scaled(launch)
        grow = b128[i]["blocks"] / max(1, b1[i]["blocks"])
        requests = sum(s[k]["requests"] for k in access_profile.KINDS) * grow
        sass = sass_of(cuda_kernels, b128[i]["kernel"])
        name = b128[i]["kernel"]
        if shape["op"] == "conv":
            H_out = (shape["H"] - 1) // shape["stride"] + 1
            y_bytes = x_bytes * H_out * H_out // (shape["H"] * shape["W"])
            w_bytes = 9 * shape["C"] * shape["cpg"] * elem
            dram = (2 * w_bytes if name.startswith(("repack", "pack_")) else
                    next(copies) if name.startswith("channels_last_copy") else
                    x_bytes + y_bytes + w_bytes)
        else:
            # squeeze: u; each excite FC: its fp32 weight matrix once; scale: u, residual, out
            dram = (x_bytes if name.startswith("se_squeeze") else
                    3 * x_bytes if name.startswith("se_scale") else shape["R"] * shape["C"] * 4)
        model.append(dict(
            dram_bytes=dram,
            l2_bytes=32 * s["block_unique_load_sectors"] * grow,
            l1_wavefronts=(sum(s[k]["wavefronts"] for k in SHARED_KINDS)
                           + (s["global_load"]["sectors"] + s["global_store"]["sectors"]) / 4)
            * grow,
            warp_instructions=requests * instructions_per_memory_request(sass),
            waves=b128[i]["sm_90"]["waves"]))
    guard = {k: summary[k] for k in ("global_ld_sectors_per_request",
                                     "global_st_sectors_per_request",
                                     "shared_ld_wavefronts_per_request")}
    guard["l2_to_sm_per_input_byte"] = summary["l2_to_sm_per_input_byte_block_l1"]
    guard["shared_ld_conflict_share"] = summary["shared_ld_conflict_share"]
    return model, guard, path


def triton_layer(row, triton_kernels, shape):
    """Model launches of one Triton call at batch BATCH, from its compiled profile: the hot
    loop's instructions x its trip count x the programs (no access profile for Triton yet)."""
    elem = compiled_profile.ELEM_BYTES[row["dtype"]]
    model = []
    x_bytes = BATCH * shape["C"] * shape["H"] * shape["W"] * elem
    splits = None  # a training call's wgrad splits (its grid's first axis), for the sum
    partial_rows = None  # rows of fp32 [2, rows, C] partials the next stats_reduce reads
    se_backward_fcs = None  # the SE backward's FC launches seen so far (after its gate grad)
    for i, launch in enumerate(row["launches"]):
        info = launch["sm_90"]
        k = triton_kernels[info["kernel_id"]]
        sass, c = k.get("sass") or {}, info.get("constexprs") or {}
        programs, warps = launch["blocks"], k["num_warps"]
        # the hot loop, unless it moves no memory: a kernel without a loop of its own has only
        # the branch to itself that ptxas puts after its exit, and then the whole kernel is
        # what a program runs
        hot = sass.get("hot_loop")
        body = hot if hot and memory_instructions(hot.get("mix", {})) else sass
        mix = body.get("mix", {})
        per_warp = sum(wavefronts_per_instruction(cat, n) for cat, n in mix.items())
        instr = sum(mix.values())
        kind = launch["kernel"].split()[0]
        if kind == "conv_wgrad":
            splits = launch["grid"][0]
        if kind in TRITON_BACKWARD:
            grid = [splits or 1, 1, 1] if kind == "conv_wgrad_sum" else launch["grid"]
            model.append(triton_backward_launch(kind, mix, c, grid, warps, info["waves"],
                                                shape, x_bytes, elem))
        elif kind in TRAIN_BN_KERNELS:
            dram, partial_rows = train_bn_bytes(kind, c, launch["grid"], shape, x_bytes, elem,
                                                partial_rows)
            model.append(streaming_launch(dram, mix, programs, warps, info["waves"]))
        elif kind in ("se_gate_grad", "se_input_grad"):
            if kind == "se_gate_grad":
                se_backward_fcs = 0
            model.append(streaming_launch(se_backward_bytes(kind, c, x_bytes), mix, programs,
                                          warps, info["waves"]))
        elif kind == "se_fc" and se_backward_fcs is not None:
            model.append(se_backward_fc_launch(se_backward_fcs, c, launch["grid"], instr, warps,
                                               info["waves"], shape))
            se_backward_fcs += 1
        elif launch["kernel"].startswith("conv_v3"):
            model.append(triton_conv_v3_launch(sass, c, programs, warps, info["waves"], shape,
                                               x_bytes, elem))
        elif launch["kernel"].startswith("conv"):
            cpg, bn, bk, bm = shape["cpg"], c["BLOCK_N"], c["BLOCK_K"], c["BLOCK_M"]
            span = (math.ceil(bn / cpg) * cpg) if bn >= cpg else cpg
            iterations = 9 * math.ceil(span / bk)
            operand = ((bm * bk + bk * bn) * elem / tm.L1_WAVEFRONT_BYTES
                       if mix.get("hgmma") else 0)
            H_out = (shape["H"] - 1) // shape["stride"] + 1
            y_bytes = x_bytes * H_out * H_out // (shape["H"] * shape["W"])
            model.append(dict(
                dram_bytes=x_bytes + y_bytes,
                # every tap's tiles from L2 (no reuse in L1): an upper bound
                l2_bytes=programs * iterations * (bm * bk + bk * bn) * elem,
                l1_wavefronts=programs * iterations * (per_warp * warps + operand),
                warp_instructions=programs * iterations * instr * warps,
                waves=info["waves"]))
        elif launch["kernel"].startswith("se_fc"):
            # an excite FC, out = act(x . w^T) on BLOCK_I x BLOCK_J tiles: w (J x K, fp32
            # here) once from DRAM, and per program ceil(K' / BLOCK_K) tiles of x
            # (BLOCK_I x BLOCK_K, `splits` partial-sum slices of it in the gate launch) and of
            # w (BLOCK_K x BLOCK_J) from L2, K' the k of one program: the hidden launch splits
            # C in FC_SPLIT_K parts, the gate launch reads every split's partial sums
            # importlib: the package re-exports the launcher under the module's own name
            triton_se = importlib.import_module("resnext_kernels.backends.triton.squeeze_excite")
            splits = math.ceil(shape["C"] / triton_se.FC_SPLIT_K)
            if c["SIGMOID"]:  # the gate launch
                J, K, k_program, x_slices = shape["C"], shape["R"], shape["R"], splits
            else:
                J, K = shape["R"], shape["C"]
                k_program, x_slices = min(K, triton_se.FC_SPLIT_K), 1
            iterations = math.ceil(k_program / c["BLOCK_K"])
            tile_bytes = (x_slices * c["BLOCK_I"] + c["BLOCK_J"]) * c["BLOCK_K"] * 4
            model.append(dict(
                dram_bytes=J * K * 4,
                l2_bytes=programs * iterations * tile_bytes,
                l1_wavefronts=programs * iterations * tile_bytes / tm.L1_WAVEFRONT_BYTES,
                warp_instructions=programs * iterations * instr * warps,
                waves=info["waves"]))
        else:  # SE: squeeze reads u; scale reads u and the residual and writes the output
            kind = launch["kernel"].split()[0]
            dram = {"se_squeeze": x_bytes, "se_scale": 3 * x_bytes}[kind]
            loads = [cat for cat in mix if cat.startswith(("global_load_", "cp_async_"))]
            width = max((int(cat.rsplit("_", 1)[1][:-1]) for cat in loads), default=4)
            requests = dram / (32 * width)  # the bytes in warp-wide requests of that width
            model.append(dict(
                dram_bytes=dram,
                l2_bytes=dram,
                l1_wavefronts=requests * max(1.0, 32 * width / tm.L1_WAVEFRONT_BYTES),
                warp_instructions=max(requests, programs * warps) * max(
                    1.0, instr / max(1, memory_instructions(mix))),
                waves=info["waves"]))
        if c.get("WRITE_MASK") and kind.startswith("conv"):  # a training forward: its ReLU
            # mask, 1 bit per output
            model[-1]["dram_bytes"] += output_bytes(shape, x_bytes) / elem / 8
        if c.get("WRITE_STATS"):  # train-mode BN's forward: fp32 (mean, M2) per 32 pixels
            partial_rows = math.ceil(output_pixels(shape) / stats_rows())
            model[-1]["dram_bytes"] += 2 * partial_rows * shape["C"] * 4
    return model


def stats_rows():
    """Pixels per row of the conv's statistics partials (backends/triton/channel_stats.py)."""
    return importlib.import_module("resnext_kernels.backends.triton.channel_stats").STATS_ROWS


def output_pixels(shape):
    H_out = (shape["H"] - 1) // shape["stride"] + 1
    W_out = (shape["W"] - 1) // shape["stride"] + 1
    return BATCH * H_out * W_out


def streaming_launch(dram, mix, programs, warps, waves):
    """A kernel that streams its bytes once (elementwise, reductions): DRAM and L2 = its
    compulsory bytes; L1 wavefronts and instructions from those bytes in warp-wide requests of
    the width its loads move them at (bytes-weighted over the load instructions of its hot
    loop, or of the whole kernel where it has no loop), times the instructions per memory
    instruction."""
    loads = {}  # width in bytes: load instructions of that width
    for cat, n in mix.items():
        if cat.startswith(("global_load_", "cp_async_")):
            width = int(cat.rsplit("_", 1)[1][:-1])
            loads[width] = loads.get(width, 0) + n
    moved = sum(width * n for width, n in loads.items())
    width = sum(width * width * n for width, n in loads.items()) / moved if moved else 4
    requests = dram / (32 * width)
    return dict(dram_bytes=dram, l2_bytes=dram,
                l1_wavefronts=requests * max(1.0, 32 * width / tm.L1_WAVEFRONT_BYTES),
                warp_instructions=max(requests, programs * warps) * max(
                    1.0, sum(mix.values()) / max(1, memory_instructions(mix))),
                waves=waves)


# train-mode BatchNorm's kernels besides the conv (backends/triton/batchnorm_train.py,
# channel_stats.py)
TRAIN_BN_KERNELS = ("stats_reduce", "bn_normalize", "bn_backward_sums", "bn_coefficients",
                    "bn_grad_z")


def train_bn_bytes(kind, c, grid, shape, x_bytes, elem, partial_rows):
    """(compulsory bytes of one train-mode BN launch, the partials' rows after it). y is the
    conv's output size (z, y, grad_y, grad_z alike), the mask 1 bit per output.
    - stats_reduce: reads its fp32 [2, rows, C] partials, writes [2, programs, C] (or the two
      [C] results when FINAL); its programs' rows are what a next level reads;
    - bn_normalize: reads z, writes y and the mask;
    - bn_backward_sums: reads grad_y, the mask and z, writes fp32 [2, tiles, C] partials;
    - bn_coefficients: reads 5 fp32 [C] vectors, writes [4, C];
    - bn_grad_z: reads grad_y, the mask and z, writes grad_z."""
    C = shape["C"]
    y = output_bytes(shape, x_bytes)
    mask = y / elem / 8
    if kind == "stats_reduce":
        out_rows = 1 if c["FINAL"] else grid[1]
        return 2 * (partial_rows + out_rows) * C * 4, out_rows
    if kind == "bn_normalize":
        return 2 * y + (mask if c["WRITE_MASK"] else 0), partial_rows
    if kind == "bn_backward_sums":
        return 2 * y + (mask if c["HAS_MASK"] else 0) + 2 * grid[0] * C * 4, grid[0]
    if kind == "bn_coefficients":
        return 9 * C * 4, partial_rows
    return 3 * y + (mask if c["HAS_MASK"] else 0), partial_rows  # bn_grad_z


# csrc/kernels/batchnorm_train.cu's kernels: train_bn_bytes' kind of each
CUDA_TRAIN_BN_KINDS = {"statistics_partials_kernel": "statistics_partials",
                       "reduce_partials_kernel": "stats_reduce",
                       "normalize_kernel": "bn_normalize",
                       "backward_sums_partials_kernel": "bn_backward_sums",
                       "coefficients_kernel": "bn_coefficients",
                       "grad_z_kernel": "bn_grad_z"}


def cuda_train_bn_launches(launches, cuda_kernels, shape, elem):
    """The model launches of the CUDA train-mode BatchNorm kernels of one layer at batch BATCH
    (compiled_profile's "train_bn" row: the forward's statistics and normalize, the backward's
    sums and grad_z), as streaming kernels of train_bn_bytes' compulsory bytes (the statistics'
    partials: z read, fp32 [2, tiles, C] written) at the load width of their SASS (the loop's
    where it has one that moves memory, else the whole kernel's). The emulator's access profile
    does not cover them."""
    x_bytes = BATCH * shape["C"] * shape["H"] * shape["W"] * elem
    model, partial_rows = [], None
    for launch in launches:
        kind = CUDA_TRAIN_BN_KINDS[launch["kernel"].split("<")[0]]
        grid = launch["grid"]
        if kind == "statistics_partials":
            partial_rows = grid[0]
            dram = output_bytes(shape, x_bytes) + 2 * partial_rows * shape["C"] * 4
        else:
            # (the reduction's grid is (blocks of rows, channel blocks), Triton's the other way
            # round; its last level is its one block of rows: FINAL)
            c = dict(FINAL=grid[0] == 1, WRITE_MASK=True, HAS_MASK=True)
            dram, partial_rows = train_bn_bytes(
                kind, c, [grid[1], grid[0]] if kind == "stats_reduce" else grid, shape, x_bytes,
                elem, partial_rows)
        sass = sass_of(cuda_kernels, launch["kernel"])
        hot = sass.get("hot_loop")
        body = hot if hot and memory_instructions(hot.get("mix", {})) else sass
        model.append(streaming_launch(dram, body.get("mix", {}), launch["blocks"],
                                      launch["threads"] // 32, launch["sm_90"]["waves"]))
    return model


def se_backward_bytes(kind, c, x_bytes):
    """Compulsory bytes of the SE backward's elementwise kernels
    (backends/triton/squeeze_excite_backward.py), x_bytes one [N, C, H, W] tensor:
    - se_gate_grad: reads grad_out and u, the residual where the tail's ReLU needs it (the
      mask), writes g (the residual's gradient) when STORE_G;
    - se_input_grad: reads g where it was written, else grad_out, u and the residual for the
      mask again; writes grad_u."""
    if kind == "se_gate_grad":
        return x_bytes * (2 + (c["HAS_RESIDUAL"] and c["APPLY_RELU"]) + c["STORE_G"])
    if c["G_WRITTEN"]:
        return 2 * x_bytes
    return x_bytes * (2 + c["APPLY_RELU"] * (1 + c["HAS_RESIDUAL"]))


def se_backward_fc_dims(shape):
    """(I, J, K) of the SE backward's FC launches in launch order, out[I, J] = x[I, K] w[J, K]
    (squeeze_excite_backward.py; N the images, C the channels, R the hidden width): d_a1 =
    (d_a2 W2) masked, d_pooled = d_a1 W1, grad_W1 = d_a1^T pooled, grad_b1 = the sums of d_a1,
    grad_W2 = d_a2^T h, grad_b2 = the sums of d_a2."""
    N, C, R = BATCH, shape["C"], shape["R"]
    return [(N, R, C), (N, C, R), (R, C, N), (R, 1, N), (C, R, N), (C, 1, N)]


def se_backward_fc_launch(index, c, grid, instr, warps, waves, shape):
    """One FC launch of the SE backward: its fp32 operands and output once from DRAM; per
    program ceil(K / BLOCK_K) steps, each a BLOCK_I x BLOCK_K tile of x and a BLOCK_J x BLOCK_K
    tile of w from L2. The grid is checked against the dimensions assumed for its place."""
    I, J, K = se_backward_fc_dims(shape)[index]
    expected = [math.ceil(I / c["BLOCK_I"]), math.ceil(J / c["BLOCK_J"])]
    if list(grid[:2]) != expected:
        raise RuntimeError(f"SE backward FC launch {index}: grid {grid}, expected {expected} "
                           f"for (I, J, K) = {(I, J, K)}: the launch order changed?")
    programs = math.prod(grid)
    steps = math.ceil(K / c["BLOCK_K"])
    tile_bytes = (c["BLOCK_I"] + c["BLOCK_J"]) * c["BLOCK_K"] * 4
    return dict(dram_bytes=(I * K + J * K + I * J) * 4,
                l2_bytes=programs * steps * tile_bytes,
                l1_wavefronts=programs * steps * tile_bytes / tm.L1_WAVEFRONT_BYTES,
                warp_instructions=programs * steps * instr * warps, waves=waves)


TRITON_BACKWARD = ("conv_dgrad", "conv_wgrad", "conv_wgrad_sum")


def dgrad_taps_per_program(stride, kernel=3, pad=1, dil=1):
    """The taps a Triton dgrad program runs, averaged over its stride classes (dgrad v2: a
    program takes pixels of one class (hi % stride, wi % stride) and skips the taps that never
    reach it): 9 at stride 1; at stride 2 a class runs 1, 2, 2 or 4, 2.25 on average. The
    classes' programs are equally many (each sized to the largest class)."""
    per_class = [sum((r + pad - k * dil) % stride == 0 for k in range(kernel))
                 for r in range(stride)]
    return (sum(per_class) / stride) ** 2


def output_bytes(shape, x_bytes):
    H_out = (shape["H"] - 1) // shape["stride"] + 1
    return x_bytes * H_out * H_out // (shape["H"] * shape["W"])


def triton_backward_launch(kind, mix, c, grid, warps, waves, shape, x_bytes, elem):
    """One launch of the Triton backward (backends/triton/grouped_conv_backward.py), modelled as
    v2's conv is: the hot loop's instructions and L1 wavefronts x its trips x the programs, and
    every trip's tiles from L2 (no reuse in L1: an upper bound). The mask is read a byte per
    element (8 pixels share a byte; each loads it).
    - dgrad: per program the taps that reach its stride class (dgrad_taps_per_program) x the
      output-channel span of its groups in BLOCK_K steps; per step a [BLOCK_M, BLOCK_K] tile of
      grad_y and of mask bytes, [BLOCK_K, BLOCK_N] weights.
    - wgrad: per program (pixel split, channel tile, tap, or kernel row where TAP_SLOTS > 1:
      v2) its split's pixels in BLOCK_M steps; per step [BLOCK_M, BLOCK_N] of grad_y and mask
      bytes, [BLOCK_M, BLOCK_K] of x per tap (KW of them for a row); its fp32 partial sums
      written once.
    - wgrad_sum: the partial sums read once, in split order (a DRAM pass)."""
    cpg, programs = shape["cpg"], math.prod(grid)
    y_bytes = output_bytes(shape, x_bytes)
    # (no mask where the gradient is a written grad_z: HAS_MASK false)
    mask_elem = 1 if c.get("HAS_MASK", True) else 0
    mask_bytes = mask_elem * y_bytes / elem / 8
    per_warp = sum(wavefronts_per_instruction(cat, n) for cat, n in mix.items())
    instr = sum(mix.values())
    partial_bytes = grid[0] * shape["C"] * cpg * 9 * 4 if kind != "conv_dgrad" else 0
    if kind == "conv_wgrad_sum":  # grid: (splits, 1, 1); a program per output channel adds
        # the splits' partial sums for BLOCK_R of its weights at a time
        trips = math.ceil(cpg * 9 / c["BLOCK_R"]) * grid[0]
        return dict(dram_bytes=partial_bytes, l2_bytes=partial_bytes,
                    l1_wavefronts=partial_bytes / tm.L1_WAVEFRONT_BYTES,
                    warp_instructions=shape["C"] * trips * instr * warps, waves=waves)
    bm, bn, bk = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]
    # train-mode BN (BN_TRAIN): grad_z formed in the prologue, so z is read with grad_y
    z_elem, z_bytes = (elem, y_bytes) if c.get("BN_TRAIN") else (0, 0)
    if kind == "conv_dgrad":
        span = (math.ceil(bn / cpg) * cpg) if bn >= cpg else cpg
        trips = dgrad_taps_per_program(shape["stride"]) * math.ceil(span / bk)
        step_bytes = bm * bk * (elem + mask_elem + z_elem) + bk * bn * elem
        dram = y_bytes + mask_bytes + x_bytes + z_bytes
    else:
        M = y_bytes // (shape["C"] * elem)  # output pixels
        trips = math.ceil(M / grid[0] / bm)
        taps = c["KW"] if c.get("TAP_SLOTS", 1) > 1 else 1  # x tiles per step
        step_bytes = bm * bn * (elem + mask_elem + z_elem) + taps * bm * bk * elem
        dram = y_bytes + mask_bytes + x_bytes + partial_bytes + z_bytes
    operand = step_bytes / tm.L1_WAVEFRONT_BYTES if mix.get("hgmma") else 0
    return dict(dram_bytes=dram, l2_bytes=programs * trips * step_bytes,
                l1_wavefronts=programs * trips * (per_warp * warps + operand),
                warp_instructions=programs * trips * instr * warps, waves=waves)


def train_floor_bytes(shape, elem):
    """A training step's compulsory bytes for one fused layer: the forward reads x and writes y
    and its mask; the backward reads grad_y, the mask and x, and writes grad_x."""
    x_bytes = BATCH * shape["C"] * shape["H"] * shape["W"] * elem
    y_bytes = output_bytes(shape, x_bytes)
    return 3 * x_bytes + 2 * y_bytes + 2 * y_bytes / elem / 8


def train_bn_floor_bytes(shape, elem):
    """A train-mode BatchNorm step's bytes for one fused layer, as the "write z" design moves
    them (docs/KERNELS.md, train-mode BatchNorm v0): the forward reads x, writes z, reads it
    and writes y and the mask; the backward reads grad_y, the mask and z twice (the sums, then
    grad_z) and writes grad_z, dgrad reads it and writes grad_x, wgrad reads it and x."""
    x_bytes = BATCH * shape["C"] * shape["H"] * shape["W"] * elem
    y_bytes = output_bytes(shape, x_bytes)
    mask = y_bytes / elem / 8
    return (x_bytes + 3 * y_bytes + mask) + (7 * y_bytes + 2 * mask + 2 * x_bytes)


def se_train_floor_bytes(shape, elem):
    """An SE tail's training step (relu(u * gate + residual)): the forward reads u and the
    residual and writes the output (the SE's 3-pass floor); the backward reads grad_out, u and
    the residual (its mask) and writes the gradients of u and of the residual."""
    return 8 * BATCH * shape["C"] * shape["H"] * shape["W"] * elem


def cudnn_eager_train_traffic(shape, elem):
    """conv + BN (eval) + ReLU and their autograd in eager, each op a pass over memory: forward
    conv (x, y), BN and ReLU (2 y each); backward ReLU (3 y), BN (3 y), conv dgrad (y, x) and
    wgrad (y, x). A lower bound of its traffic."""
    x_bytes = BATCH * shape["C"] * shape["H"] * shape["W"] * elem
    y_bytes = output_bytes(shape, x_bytes)
    return [dict(dram_bytes=3 * x_bytes + 13 * y_bytes, l2_bytes=0, l1_wavefronts=0,
                 warp_instructions=0, waves=0)]


def triton_conv_v3_launch(sass, c, programs, warps, waves, shape, x_bytes, elem):
    """One Triton conv v3 launch (backends/triton/grouped_conv_v3.py). Per program and tap: the
    [BLOCK_M, 64] input tile and the tap's [NSUB, SUBW, SUBW] packed weights from L2 (cp.async
    bypasses L1, so at NUM_STAGES > 1 nothing is re-read from L1: an upper bound for the
    L1-cached NUM_STAGES 1 loads). Instructions and L1 wavefronts per program: the kernel's
    static code (its noinline exact path for non-finite inputs apart: sass_mix) plus the hot
    loop once more per further trip when the tap loop stayed rolled; the compiler unrolls it
    (9 constant trips) in some configurations, and then the static code is what runs."""
    taps, bm, ct = 9, c["BLOCK_M"], c["NSUB"] * c["SUBW"]
    tile_bytes = (bm * ct + c["NSUB"] * c["SUBW"] ** 2) * elem
    static = sass.get("mix", {})
    hot = (sass.get("hot_loop") or {}).get("mix", {})
    rolled = any(hot.get(k) for k in ("hmma", "hgmma"))
    trips = (taps - (c["NUM_STAGES"] - 1)) if rolled else 1
    instr = sum(static.values()) + (trips - 1) * sum(hot.values())
    per_warp = (sum(wavefronts_per_instruction(k, n) for k, n in static.items())
                + (trips - 1) * sum(wavefronts_per_instruction(k, n) for k, n in hot.items()))
    # a wgmma reads its shared operand tiles itself (no ldmatrix in the mix): once per tap
    operand = (taps * (bm * ct + ct * c["SUBW"]) * elem / tm.L1_WAVEFRONT_BYTES
               if static.get("hgmma") else 0)
    H_out = (shape["H"] - 1) // shape["stride"] + 1
    y_bytes = x_bytes * H_out * H_out // (shape["H"] * shape["W"])
    weights = shape["C"] * ct // c["NSUB"] * 9 * elem  # the packed weights, once from DRAM
    return dict(dram_bytes=x_bytes + y_bytes + weights,
                l2_bytes=programs * taps * tile_bytes,
                l1_wavefronts=programs * (per_warp * warps + operand),
                warp_instructions=programs * instr * warps,
                waves=waves)


def program_footprint_pixels(shape, block_m, images=2):
    """Distinct in-bounds input pixels the 3x3 taps of one program read, on average over the
    programs: BLOCK_M consecutive output pixels of the flat (n, ho, wo) order, padding 1. This
    is what crosses from L2 when L1 keeps what a program re-reads (L1-cached loads); computed
    exactly over `images` images (tiles that cross an image boundary included)."""
    H, W, stride = shape["H"], shape["W"], shape["stride"]
    H_out, W_out = (H - 1) // stride + 1, (W - 1) // stride + 1
    total = images * H_out * W_out
    pixels, tiles = 0, 0
    for start in range(0, total, block_m):
        seen = set()
        for m in range(start, min(start + block_m, total)):
            n, rest = divmod(m, H_out * W_out)
            ho, wo = divmod(rest, W_out)
            for kh in range(3):
                hi = ho * stride - 1 + kh
                if not 0 <= hi < H:
                    continue
                for kw in range(3):
                    wi = wo * stride - 1 + kw
                    if 0 <= wi < W:
                        seen.add((n, hi, wi))
        pixels += len(seen)
        tiles += 1
    return pixels / tiles


def triton_v3_l1_cached(model, shape, elem, c):
    """Triton v3 with NUM_STAGES 1 (L1-cached ld.global instead of cp.async, which bypasses
    L1), predicted: the same launch with its L2 bytes cut to each program's input footprint
    (program_footprint_pixels) plus its 9 taps' weights; the instruction count kept (the
    NUM_STAGES 1 and 3 compiles differ by under 1% in static instructions at BLOCK_M 128, 8
    warps: triton_aot_check). The footprint model matched Triton v2's measured L2->SM traffic
    (docs/KERNELS.md, "Triton v3"). No latency term: these loads are not prefetched."""
    launch = dict(model[0])
    programs = launch["l2_bytes"] / (9 * (c["BLOCK_M"] * 64 + c["NSUB"] * c["SUBW"] ** 2) * elem)
    footprint = program_footprint_pixels(shape, c["BLOCK_M"]) * 64 * elem
    weights = 9 * c["NSUB"] * c["SUBW"] ** 2 * elem
    launch["l2_bytes"] = programs * (footprint + weights)
    x_bytes = BATCH * shape["C"] * shape["H"] * shape["W"] * elem
    out = dict(l2_to_sm_per_input_byte=launch["l2_bytes"] / x_bytes,
               l2_to_sm_per_input_byte_cp_async=model[0]["l2_bytes"] / x_bytes)
    for gpu in GPUS:
        p = tm.predict(gpu, [launch])
        out[f"predicted_us_{gpu}"] = p["time_us"]
        out[f"bound_{gpu}"] = p["bound"]
    return out


def cudnn_eager_traffic(shape, elem):
    """cuDNN's grouped conv, then BatchNorm, then ReLU, each a pass over memory."""
    x_bytes = BATCH * shape["C"] * shape["H"] * shape["W"] * elem
    H_out = (shape["H"] - 1) // shape["stride"] + 1
    y_bytes = x_bytes * H_out * H_out // (shape["H"] * shape["W"])
    return [dict(dram_bytes=x_bytes + y_bytes, l2_bytes=0, l1_wavefronts=0, warp_instructions=0,
                 waves=None),
            dict(dram_bytes=2 * y_bytes, l2_bytes=0, l1_wavefronts=0, warp_instructions=0,
                 waves=None),
            dict(dram_bytes=2 * y_bytes, l2_bytes=0, l1_wavefronts=0, warp_instructions=0,
                 waves=None)]


def floor_bytes(shape, elem):
    x_bytes = BATCH * shape["C"] * shape["H"] * shape["W"] * elem
    if shape["op"] == "se":
        return 3 * x_bytes
    H_out = (shape["H"] - 1) // shape["stride"] + 1
    return x_bytes + x_bytes * H_out * H_out // (shape["H"] * shape["W"])


def gpu_results(prefix):
    """The GPU results files of a benchmark (benchmarks/results/<prefix>-*.json) made on the GPU
    of the newest one, oldest first (measurements of two GPUs are never mixed)."""
    envs = {f: json.load(open(f))["environment"]
            for f in glob.glob(str(REPO / "benchmarks" / "results" / f"{prefix}-*.json"))}
    files = sorted((f for f, env in envs.items() if env.get("gpu")),
                   key=lambda f: envs[f].get("date", ""))
    return [f for f in files if envs[f]["gpu"] == envs[files[-1]]["gpu"]] if files else []


def measured_layout(prefix, row):
    """A results row's layout in the report's terms: "nhwc,w-nchw" for a channels_last input
    with contiguous weights (every grouped_conv results file without a weight_layout field)."""
    if (prefix == "grouped_conv" and row["layout"] == "nhwc"
            and row.get("weight_layout", "nchw") == "nchw"):
        return "nhwc,w-nchw"
    return row["layout"]


MEASURED_DTYPES = {"float16": "fp16", "bfloat16": "bf16"}  # fp32 rows: TF32 or not is unrecorded

# CUDA kernels that were measured and then reverted (docs/KERNELS.md, "Fourth GPU session"): their
# rows stand for no kernel in the tree, so they neither meet a prediction nor hide the older
# measurement of the kernel that is there.
RETIRED_CUDA_KERNELS = {"v3.1"}


def measured_cuda_path(row):
    """The CUDA kernel a results row ran. CUDA v3.1's rows (f43d976) say "v3" but carry the
    schedule it planned (cuda_v3_schedule), which no other kernel recorded."""
    return "v3.1" if "cuda_v3_schedule" in row else row.get("cuda_path")


def measured_rows():
    """{(model, layer, provider, layout, dtype): (p50 us, the kernel: cuda_path or triton_path)}
    and the source files, from the GPU
    results (fp16, bf16): every file is read, oldest first, so each row holds its newest
    measurement (a later run of a few providers, such as the GPU plan's max-autotune step, leaves
    the rest as they were)."""
    out, sources = {}, []
    for prefix, key in (("grouped_conv", "layer"), ("squeeze_excite", "stage")):
        for path in gpu_results(prefix):
            data = json.load(open(path))
            rows = [r for r in data["rows"]
                    if r.get("dtype") in MEASURED_DTYPES and r.get("status") == "ok"
                    and measured_cuda_path(r) not in RETIRED_CUDA_KERNELS]
            if rows:
                sources.append((os.path.relpath(path, REPO), data["environment"].get("gpu")))
            for r in rows:
                provider = {"eager": "cudnn_eager"}.get(r["provider"], r["provider"])
                out[(r["model"], r[key], provider, measured_layout(prefix, r),
                     MEASURED_DTYPES[r["dtype"]])] = (r["p50_ms"] * 1e3,
                                                      r.get("cuda_path") or r.get("triton_path"))
    return out, sources


def same_cuda_kernel(measured_path, profiled_path):
    """Whether a measured CUDA row ran the profiled kernel ("path v3 ...", the emulator's
    report). Rows without cuda_path predate v3 (benchmarks/grouped_conv.py): wmma or direct."""
    kernel = profiled_path.split()[1] if profiled_path.startswith("path ") else None
    if measured_path is None:
        return kernel != "v3"
    return measured_path == kernel


def same_kernel(backend, shape, profiled, measured_path):
    """Whether a measured conv row ran the kernel whose prediction it would sit beside."""
    if shape["op"] != "conv":
        return True
    if backend == "cuda":
        return same_cuda_kernel(measured_path, profiled)
    if backend == "triton":
        return same_triton_kernel(measured_path, profiled)
    return True


def same_triton_kernel(measured_path, profiled_label):
    """Whether a measured Triton row ran the profiled conv kernel (its launch label: "conv_v3
    ..." or "conv ..." for v2). Rows without triton_path predate v3: v2."""
    kernel = "v3" if profiled_label.startswith("conv_v3") else "v2"
    return (measured_path or "v2") == kernel


def stand_in(path):
    """"†" where a path's measured time is of another weight layout (see measured_layout)."""
    return "†" if path.get("measured_layout", path["layout"]) != path["layout"] else ""


def gpu_key(name):
    return "H200" if name and "H200" in name else "H100 SXM"


def build(blocks: int, earlier_profiles=None):
    """(the report, the compiled-code profile it used: sm_90 and sm_80, batch 128 and 1, the
    emulator's access profiles: an access_profile.ProfileStore that reused those of
    `earlier_profiles` (a file it saved) whose inputs are unchanged)."""
    binary = access_profile.cuda_emulator.build("profile")
    store = access_profile.ProfileStore(binary, earlier_profiles)
    cuda_kernels, cuda_all = compiled_profile.cuda_profile([90, 80], layouts=("nhwc", "nchw"),
                                                           batches=(BATCH, 1), dtypes=DTYPES)
    triton_kernels, triton_all = compiled_profile.triton_profile([90, 80], batches=(BATCH, 1),
                                                                 dtypes=DTYPES)
    compiled = dict(sms=compiled_profile.SMS, cuda_kernels=cuda_kernels,
                    triton_kernels=triton_kernels, layers=cuda_all + triton_all,
                    markdown=compiled_profile.markdown(cuda_kernels, triton_kernels,
                                                       cuda_all + triton_all, [90, 80]))
    cuda_rows = cuda_all
    triton_rows = [row for row in triton_all if row["batch"] == BATCH]
    ck = cuda_kernels["sm_90"]
    plans = {}
    for row in cuda_rows:
        key = (row["model"], row["layer"], row["layout"], row["dtype"], row["phase"])
        plans.setdefault(key, {})[f"b{row['batch']}"] = row
    measured, sources = measured_rows()
    paths = []
    dtype_shapes = list(compiled_profile.dtype_shapes(DTYPES))
    calls = [(shape, layout, compiled_profile.op_dtype(shape["op"], dtype))
             for dtype, shape in dtype_shapes for layout in ("nhwc", "nchw")]
    profiles = access_profiles(binary, calls, blocks, store)
    bw_profiles = backward_profiles(binary, [(shape, layout) for dtype, shape in dtype_shapes
                                             if dtype == "fp16" and shape["op"] == "conv"
                                             for layout in ("nhwc", "nchw")], blocks, store)
    for report_dtype, shape in dtype_shapes:
        dtype = compiled_profile.op_dtype(shape["op"], report_dtype)
        elem = compiled_profile.ELEM_BYTES[dtype]
        base = dict(model=shape["model"], layer=shape["layer"], op=shape["op"], C=shape["C"],
                    H=shape["H"], W=shape["W"], count=shape["count"],
                    cpg=shape.get("cpg"), stride=shape.get("stride"), R=shape.get("R"),
                    dtype=dtype)
        fb = floor_bytes(shape, elem)
        entries = []
        for layout in ("nhwc", "nchw"):
            plan = plans[(shape["model"], shape["layer"], layout, dtype, "inference")]
            profiled = profiles[(shape["model"], shape["layer"], layout, dtype)]
            model, guard, path = cuda_layer(profiled, shape, layout, dtype, ck, plan)
            kernels = [l["kernel"] for l in plan["b128"]["launches"]]
            entries.append(("cuda", layout, model, guard, path, kernels))
            if shape["op"] == "conv" and dtype == "fp16":
                # a training step: the masked forward (v3 writes the mask in its epilogue; the
                # direct and WMMA paths read it back from y in a kernel), dgrad, wgrad, finalize
                train = plans[(shape["model"], shape["layer"], layout, dtype, "train")]
                if path.startswith("path v3"):
                    forward, mask_kernels = with_epilogue_mask(model, kernels, shape, elem), []
                else:
                    forward = model + mask_kernel_traffic(shape, elem)
                    mask_kernels = ["relu_mask_from_output_kernel"]
                backward = cuda_backward_layer(bw_profiles[(shape["model"], shape["layer"],
                                                            layout)], shape, layout, ck, train)
                entries.append(("cuda_train", layout, forward + backward,
                                dict(floor_bytes=train_floor_bytes(shape, elem)), path,
                                kernels + mask_kernels
                                + [l["kernel"] for l in train["b128"]["launches"]]))
                # a training step with train-mode BatchNorm: the conv (z: the inference
                # launches, no mask), the BN kernels around it, the conv's backward of grad_z
                bn = plans[(shape["model"], shape["layer"], layout, dtype, "train_bn")]
                entries.append(("cuda_train_bn", layout,
                                model + cuda_train_bn_launches(bn["b128"]["launches"], ck,
                                                               shape, elem) + backward,
                                dict(floor_bytes=train_bn_floor_bytes(shape, elem)), path,
                                kernels + [l["kernel"] for l in bn["b128"]["launches"]]
                                + [l["kernel"] for l in train["b128"]["launches"]]))
        for row in triton_rows:
            if (row["model"], row["layer"], row["dtype"]) == (shape["model"], shape["layer"],
                                                              dtype):
                model = triton_layer(row, triton_kernels, shape)
                label = row["launches"][0]["kernel"]
                if row.get("phase") in ("train", "train_bn", "train_bn_prologue"):
                    # conv, train: the masked forward, dgrad, wgrad, the sum; conv, train_bn
                    # (_prologue): train-mode BN's forward and backward; se, train: the tail's
                    # forward and backward
                    floor = (se_train_floor_bytes if shape["op"] == "se" else
                             train_bn_floor_bytes if row["phase"].startswith("train_bn") else
                             train_floor_bytes)(shape, elem)
                    entries.append((f"triton_{row['phase']}", row["layout"], model,
                                    dict(floor_bytes=floor), label,
                                    [l["kernel"] for l in row["launches"]]))
                    continue
                extra = {}
                if label.startswith("conv_v3"):  # and its L1-cached variant, predicted apart
                    extra["l1_cached"] = triton_v3_l1_cached(
                        model, shape, elem, row["launches"][0]["sm_90"]["constexprs"])
                entries.append(("triton", row["layout"], model, extra, label,
                                [l["kernel"] for l in row["launches"]]))
        if shape["op"] == "conv":
            entries.append(("cudnn_eager", "nhwc", cudnn_eager_traffic(shape, elem), {},
                            "traffic only (3 passes)", ["conv", "batch_norm", "relu"]))
            if dtype == "fp16":
                entries.append(("cudnn_eager_train", "nhwc",
                                cudnn_eager_train_traffic(shape, elem),
                                dict(floor_bytes=train_floor_bytes(shape, elem)),
                                "traffic only (forward 3 passes, backward 4)", ["all"]))
        for backend, layout, model, guard, path, kernels in entries:
            entry = dict(base, backend=backend, layout=layout, path=path, floor_bytes=fb)
            entry.update(guard)
            for gpu in GPUS:
                p = tm.predict(gpu, model)
                entry[f"launches_{gpu}"] = [dict(kernel=k, time_us=round(l["time_us"], 2),
                                                 bound=l["bound"])
                                            for k, l in zip(kernels, p["launches"])]
                entry[f"predicted_us_{gpu}"] = p["time_us"]
                entry[f"pct_of_floor_{gpu}"] = (100 * tm.floor_us(gpu, entry["floor_bytes"])
                                                / p["time_us"])
                entry[f"bound_{gpu}"] = p["bound"]
                entry[f"terms_{gpu}"] = {k: round(v, 2) for k, v in p.items()
                                         if k.endswith("_us") and k != "time_us"}
            # Triton's paths differ by the weights' layout, so its measurement must match it;
            # the CUDA kernels repack the weights and cudnn_eager is a traffic bound: for them
            # a channels_last measurement with contiguous weights stands in for want of one
            # with channels_last weights (the report says which: measured_layout)
            candidates = [layout]
            if backend != "triton" and layout == "nhwc":
                candidates.append("nhwc,w-nchw")
            if "_train" in backend:  # (no training measurement is read yet)
                candidates = []
            found = [c for c in candidates
                     if (shape["model"], shape["layer"], backend, c, dtype) in measured
                     and same_kernel(backend, shape, path, measured[
                         (shape["model"], shape["layer"], backend, c, dtype)][1])]
            if found:
                m = measured[(shape["model"], shape["layer"], backend, found[0], dtype)][0]
                entry["measured_us"] = m
                entry["measured_layout"] = found[0]
                entry["measured_over_predicted"] = (
                    m / entry[f"predicted_us_{gpu_key(sources[0][1])}"])
            paths.append(entry)
    report = dict(batch=BATCH, dtypes=list(DTYPES), blocks_per_grid=blocks, gpus=list(GPUS),
                  model_constants={g: tm.GPUS[g] for g in GPUS},
                  l1_efficiency=tm.L1_EFFICIENCY, measured_sources=sources, paths=paths)
    return report, compiled, store


def path_id(p):
    return f"{p['model']} {p['layer']} {p['backend']} {p.get('dtype', 'fp16')} {p['layout']}"


def fmt(v, spec=".2f"):
    return "" if v is None else format(v, spec)


def per_kernel(launches):
    """'squeeze 120.1 dram / excite 2.0 issue / ...': the model's time per launch."""
    if len(launches) < 2:
        return ""
    return " / ".join(f"{l['kernel'].split('<')[0].split()[0].replace('_kernel', '')} "
                      f"{l['time_us']:.1f} {l['bound'].replace('_us', '')}" for l in launches)


def markdown(report):
    src = ", ".join(f"{f} ({g})" for f, g in report["measured_sources"]) or "none"
    measured_on = ", ".join(sorted({g for _, g in report["measured_sources"]})) or "no GPU"
    lines = [
        "# GPU-free kernel profile and predicted times",
        "",
        f"Generated by scripts/kernel_profile.py: batch {report['batch']}, fp16 on every real "
        "layer of resnext50_32x4d, resnext101_32x8d (grouped conv + BN + ReLU) and "
        "seresnext50_32x4d (SE stages); bf16 and fp32 (TF32 allowed, as by default: the conv's "
        "TF32 paths) on the first layer of each (cpg, stride) class and on every SE stage "
        "(the SE's fp32 is plain fp32). **Predicted** times come from the throughput model "
        "(docs/THROUGHPUT_MODEL.md); sectors, wavefronts and L2 figures from the CUDA "
        "emulator's access profile (CUDA paths) at batch 1, "
        f"{report['blocks_per_grid']} blocks per grid. Nothing here is measured except the "
        f"column `measured us`, copied from: {src}.",
        "",
        "Layouts: nhwc = channels_last activations and weights (a converted model); "
        "nhwc,w-nchw = channels_last activations, contiguous weights (the op called directly "
        "on a channels_last input only; every benchmark run before grouped_conv.py recorded "
        "weight_layout); nchw (CUDA v3: x read and y written by channel planes, 2-byte "
        "accesses a lane per pixel; the guard figures are of the conv kernel alone). "
        "cudnn_eager: its memory traffic only (a lower bound). A measured "
        "figure marked † is of nhwc,w-nchw standing in for nhwc (CUDA kernels and cudnn_eager "
        "only, until a run with channels_last weights). triton_train: a training step of the "
        "layer on the Triton backend (the forward that stores the ReLU mask, dgrad, wgrad and "
        "its sum; floor: x read twice, y and the mask written, grad_y and the mask read, "
        "grad_x written); cuda_train: the same step on the CUDA backend (its forward with the "
        "mask: v3 writes it in its epilogue, the other paths read it back from y in a kernel; "
        "dgrad: v3's forward of the masked gradient (at stride 2 spread on the input's grid) "
        "with scaled, flipped weights at stride 1 and 2; wgrad's partial sums on tensor cores "
        "(v3's bands) at stride 1 and 2, and the finalize; in nchw grad_y, x and grad_x read "
        "and written by channel planes, no layout copy); "
        "cudnn_eager_train: "
        "the traffic of conv + BN + ReLU and their autograd in eager (a lower bound). "
        "triton_train_bn: a training step with train-mode BatchNorm on the Triton backend "
        "(the conv with its statistics epilogue, their reduction, normalize + ReLU + mask; the "
        "BN backward's sums, their reduction, grad_z's coefficients, grad_z written; dgrad and "
        "wgrad of it, and wgrad's sum: RESNEXT_KERNELS_TRITON_BACKWARD=kernels; floor: the "
        "\"write z\" design's bytes, docs/KERNELS.md); triton_train_bn_prologue: the same with "
        "grad_z formed in dgrad's and wgrad's prologue, never written "
        "(RESNEXT_KERNELS_TRITON_BN_GRAD_Z=prologue); cuda_train_bn: the same step on the "
        "CUDA backend (its conv writes z; csrc/kernels/batchnorm_train.cu's statistics (z read "
        "once more: not in the conv's epilogue), their reduction, normalize + ReLU + mask, the "
        "BN backward's sums, their reduction, the coefficients, grad_z written; then cuda_train's "
        "dgrad and wgrad, modelled with a mask that grad_z does not have). SE rows, "
        "triton_train: the "
        "tail's forward and its backward (the gate again, the gate gradient, the FC gradients, "
        "the input gradient; fp32 FC weights as under autocast; floor: u and the residual read "
        "and the output written, then grad_out, u and the residual read and both gradients "
        "written). The model of these elementwise and reduction kernels: their compulsory "
        "bytes in requests of the width their loads move them at, so a scattered (uncoalesced) "
        "access is not seen.",
        "",
        "| layer | backend | dtype | layout | ld sect/req | st sect/req | sh wf/req | sh confl | "
        "L2→SM/in | pred us H100 | % floor H100 | bound | per kernel (H100) | pred us H200 | "
        f"measured us ({measured_on}) | meas/pred |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["paths"]:
        lines.append(
            f"| {p['model']} {p['layer']} {p['op']} | {p['backend']} | {p['dtype']} | "
            f"{p['layout']} | "
            f"{fmt(p.get('global_ld_sectors_per_request'))} | "
            f"{fmt(p.get('global_st_sectors_per_request'))} | "
            f"{fmt(p.get('shared_ld_wavefronts_per_request'))} | "
            f"{fmt(p.get('shared_ld_conflict_share'))} | {fmt(p.get('l2_to_sm_per_input_byte'))} | "
            f"{fmt(p['predicted_us_H100 SXM'], '.1f')} | {fmt(p['pct_of_floor_H100 SXM'], '.0f')} | "
            f"{p['bound_H100 SXM']} | {per_kernel(p['launches_H100 SXM'])} | "
            f"{fmt(p['predicted_us_H200'], '.1f')} | "
            f"{fmt(p.get('measured_us'), '.1f')}{stand_in(p)} | "
            f"{fmt(p.get('measured_over_predicted'))} |")
    lines += ["", "## Per model (fp16, sum over blocks, predicted, H100 SXM)", "",
              "| model | backend | layout | predicted ms | % of floor |", "|---|---|---|---|---|"]
    totals = {}
    for p in report["paths"]:
        if p["dtype"] != "fp16":  # the other dtypes cover one layer per class, not the model
            continue
        key = (p["model"], p["backend"], p["layout"])
        t = totals.setdefault(key, [0.0, 0.0])
        t[0] += p["predicted_us_H100 SXM"] * p["count"]
        t[1] += tm.floor_us("H100 SXM", p["floor_bytes"]) * p["count"]
    for (model, backend, layout), (t, f) in sorted(totals.items()):
        lines.append(f"| {model} | {backend} | {layout} | {t / 1e3:.3f} | {100 * f / t:.0f} |")
    lines += ["", "## Triton v3: the cp.async pipeline (the fixed configuration above) against "
              "L1-cached loads (NUM_STAGES 1)", "",
              "Predicted, H100 SXM. cp.async (NUM_STAGES 3) bypasses L1, so every tap's tile "
              "comes from L2; with NUM_STAGES 1 the loads are L1-cached, and the L2 term is each "
              "program's input footprint plus its weights (kernel_profile.triton_v3_l1_cached; "
              "no latency term: those loads are not prefetched). The GPU's autotuner chooses "
              "between them per shape.", "",
              "| layer | dtype | layout | L2→SM/in cp.async | L2→SM/in L1-cached | pred us cp.async "
              "| pred us L1-cached | % floor L1-cached | bound L1-cached |",
              "|---|---|---|---|---|---|---|---|---|"]
    for p in report["paths"]:
        alt = p.get("l1_cached")
        if not alt:
            continue
        floor = tm.floor_us("H100 SXM", p["floor_bytes"])
        lines.append(
            f"| {p['model']} {p['layer']} | {p['dtype']} | {p['layout']} | "
            f"{fmt(alt['l2_to_sm_per_input_byte_cp_async'])} | "
            f"{fmt(alt['l2_to_sm_per_input_byte'])} | {fmt(p['predicted_us_H100 SXM'], '.1f')} | "
            f"{fmt(alt['predicted_us_H100 SXM'], '.1f')} | "
            f"{fmt(100 * floor / alt['predicted_us_H100 SXM'], '.0f')} | "
            f"{alt['bound_H100 SXM']} |")
    return "\n".join(lines) + "\n"


def check(report, committed):
    """Regressions of more than GUARD_TOLERANCE against the committed report."""
    old = {path_id(p): p for p in committed["paths"]}
    new = {path_id(p): p for p in report["paths"]}
    problems = [f"path not in the committed report: {k}" for k in sorted(set(new) - set(old))]
    problems += [f"path gone from the profile: {k}" for k in sorted(set(old) - set(new))]
    for k in sorted(set(new) & set(old)):
        for metric in GUARDED:
            a, b = old[k].get(metric), new[k].get(metric)
            if a is None or b is None:
                if (a is None) != (b is None):
                    problems.append(f"{k}: {metric} {a} -> {b}")
                continue
            if b > a * (1 + GUARD_TOLERANCE) + 1e-9:
                problems.append(f"{k}: {metric} {a:.3f} -> {b:.3f} (+{100 * (b / a - 1):.0f}%)")
    return problems


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="compare with the committed report instead of writing it")
    p.add_argument("--out-prefix", default=str(REPORT))
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--fresh", action="store_true",
                   help="run every emulator profile, reusing none of <out-prefix>-emulator.json")
    args = p.parse_args(argv)
    # the emulator's access profiles: reused where their inputs are unchanged (docstring)
    emulator_profiles = args.out_prefix + "-emulator.json"
    report, compiled, store = build(args.blocks, None if args.fresh else emulator_profiles)
    print(f"emulator access profiles: {store.reused} reused from {emulator_profiles}, "
          f"{store.ran} run")
    if args.check:
        committed = json.loads(Path(args.out_prefix + ".json").read_text())
        problems = check(report, committed)
        with tempfile.NamedTemporaryFile("w", suffix=".md", delete=False) as f:
            f.write(markdown(report))
        print(f"regenerated report: {f.name}")
        if problems:
            print(f"{len(problems)} figure(s) more than {GUARD_TOLERANCE:.0%} worse than the "
                  "committed report (benchmarks/results/gpu-free-profile.json), or paths that "
                  "differ. If the change is intended, regenerate and commit the report with it:"
                  "\n    python scripts/kernel_profile.py")
            for line in problems:
                print("  " + line)
            return 1
        print(f"kernel profile guard: {len(report['paths'])} paths, none more than "
              f"{GUARD_TOLERANCE:.0%} worse than the committed report")
        return 0
    Path(args.out_prefix + ".json").write_text(json.dumps(report, indent=1))
    Path(args.out_prefix + ".md").write_text(markdown(report))
    store.save(emulator_profiles)
    # the compiled-code profile beside it: registers, occupancy, waves, instruction mix
    compiled_prefix = str(Path(args.out_prefix).parent / "compiled-profile")
    Path(compiled_prefix + ".md").write_text(compiled.pop("markdown"))
    Path(compiled_prefix + ".json").write_text(json.dumps(compiled, indent=1))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

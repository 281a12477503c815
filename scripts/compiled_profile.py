"""The compiled-code profile of both backends, for sm_90 and sm_80, without a GPU: per kernel
as a real call compiles it, registers, spills, shared memory, occupancy (blocks and warps per
SM) and the hot loop's instruction mix; per real layer (resnext50_32x4d, resnext101_32x8d
grouped convs, seresnext50_32x4d SE stages) at batch 128 and 1, each launch's grid and its
waves on 132 SMs.

    python scripts/compiled_profile.py [--archs 90 80] [--json OUT.json] [--md OUT.md]

CUDA: csrc/kernels/*.cu compiled with plain nvcc to cubins (ptxas' resource report per
function); the launches of a call (kernel, grid, block, dynamic shared memory) come from the
launchers themselves, run in the CUDA emulator's plan-only mode (tests/cuda_emulator.py
launch_shapes), so the grids are the ones the real launchers compute.
Triton: each launch recorded and compiled as scripts/triton_aot_check.py does (Triton's own JIT
specialisation, Triton's ptxas), with the conv's fixed configuration
(RESNEXT_KERNELS_TRITON_AUTOTUNE=0: BLOCK_M 64, 4 warps, 2 stages): which configuration the
autotuner picks on a GPU is not known here. The launches are recorded first, then each distinct
specialisation is compiled once, in a process per core.
Both: fp16 on every real layer, and bf16 and fp32 with TF32 on one layer per (cpg, stride) class
and on the SE stages (class_shapes), channels_last (and NCHW) activations; instruction mix from
cuobjdump -sass (scripts/sass_mix.py).

Occupancy limits (CUDA C++ Programming Guide, "Technical Specifications per Compute
Capability", for 8.0 and 9.0): 65536 32-bit registers per SM, allocated per warp in units of
256; at most 64 resident warps and 32 resident blocks per SM; shared memory per SM 164 KB
(8.0) and 228 KB (9.0), of which 1 KB is reserved per resident block.
"""

import argparse
import concurrent.futures
import functools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

import sass_mix  # noqa: E402

SMS = 132  # H100 SXM and H200: the machines the GPU plan runs on
ARCH_LIMITS = {  # (shared memory per SM, registers per SM, warps per SM, blocks per SM)
    80: dict(smem_per_sm=164 * 1024, regs_per_sm=65536, warps=64, blocks=32),
    90: dict(smem_per_sm=228 * 1024, regs_per_sm=65536, warps=64, blocks=32),
}
SMEM_RESERVED_PER_BLOCK = 1024


def occupancy(arch, regs, threads, smem_bytes):
    """Resident blocks and warps per SM, and what limits them."""
    lim = ARCH_LIMITS[arch]
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by = dict(registers=lim["regs_per_sm"] // (regs_per_warp * warps),
              warps=lim["warps"] // warps, blocks=lim["blocks"],
              shared_memory=(lim["smem_per_sm"] // (smem_bytes + SMEM_RESERVED_PER_BLOCK)
                             if smem_bytes else lim["blocks"]))
    blocks = min(by.values())
    return dict(blocks_per_sm=blocks, warps_per_sm=blocks * warps,
                occupancy_pct=100 * blocks * warps / lim["warps"],
                limited_by=min(by, key=by.get))


def waves(blocks, blocks_per_sm):
    return None if not blocks_per_sm else blocks / (blocks_per_sm * SMS)


# ------------------------------------------------------------------------------------- CUDA
NVCC_FLAGS = ["-std=c++17", "-O3", "--expt-relaxed-constexpr"]
RESOURCE = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")


def short_name(mangled: str) -> str:
    pretty = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip()
    pretty = re.sub(r"^void |resnext_kernels::|\(anonymous namespace\)::", "", pretty)
    return re.sub(r"\(.*$", "", pretty).replace("__nv_bfloat16", "bf16").replace(
        "__half", "half")


def cuda_kernels(arch: int):
    """{short name: {regs, spill_bytes, stack, smem_static, sass}} of every kernel in csrc."""
    nvcc = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    kernels = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cu in sorted((REPO / "csrc" / "kernels").glob("*.cu")):
            cubin = Path(tmp) / (cu.stem + ".cubin")
            log = subprocess.run([str(nvcc), *NVCC_FLAGS, f"-I{REPO / 'csrc'}",
                                  f"-arch=sm_{arch}", "--resource-usage", "-cubin", str(cu),
                                  "-o", str(cubin)], capture_output=True, text=True)
            if log.returncode != 0:
                raise RuntimeError(f"nvcc failed on {cu.name}:\n{log.stderr[-3000:]}")
            resources, name = {}, None
            for line in log.stdout.splitlines() + log.stderr.splitlines():
                m = RESOURCE.search(line)
                if m:
                    name = m.group(1)
                    resources[name] = {}
                elif name and "spill stores" in line:
                    nums = [int(x) for x in re.findall(r"(\d+) bytes", line)]
                    resources[name].update(stack=nums[0], spill_bytes=nums[1] + nums[2])
                elif name and "Used" in line and "registers" in line:
                    resources[name]["regs"] = int(re.search(r"Used (\d+) registers", line).group(1))
                    smem = re.search(r"(\d+) bytes smem", line)
                    resources[name]["smem_static"] = int(smem.group(1)) if smem else 0
            for mangled, sass in sass_mix.profile_cubin(cubin).items():
                kernels[short_name(mangled)] = dict(resources.get(mangled, {}), sass=sass)
    return kernels


CUDA_TYPES = {"fp16": "half", "bf16": "bf16", "fp32/tf32": "float", "fp32": "float"}
# the report's dtypes: (torch dtype name, TF32 allowed)
DTYPES = {"fp16": ("float16", False), "bf16": ("bfloat16", False), "fp32/tf32": ("float32", True)}
ELEM_BYTES = {"fp16": 2, "bf16": 2, "fp32/tf32": 4, "fp32": 4}


# csrc/kernels/channels_last_copy.cu: to dense channels_last (a pack)
CHANNELS_LAST_PACK = "channels_last_copy_kernel"


def layout_copies(path_report):
    """The operands a call's layout copies move, in launch order, from the harness's report:
    the forward's "path v3 block_channels 0 workspace_bytes B[ pack x]", dgrad's
    "path v3[ pack grad_y]", wgrad's "path v3 splits ...[ pack x][ pack
    grad_y]"."""
    words = path_report.split()
    if "unpack" in words:  # (v3 writes every output itself: no report names an unpack)
        raise ValueError(f"no launch sequence for an unpack: {path_report!r}")
    return [words[i + 1] for i, w in enumerate(words) if w == "pack"]


def cuda_launch_kernels(op, path_report, dtype, stride, cpg=None, gated=False):
    """The kernel of each launch of a call, in launch order (gated: v3's conv with its input
    gated in the loader, dgrad's)."""
    t = CUDA_TYPES[dtype]
    if op == "dgrad" and path_report.startswith("path v3"):
        # the scaled, flipped weights, then v3's forward of them at stride 1 on the gradient
        # gated by the mask in its loader (NCHW grad_y and grad_x read and written by channel
        # planes); a grad_y with neither 16-byte chunks nor contiguous rows packed first
        words = path_report.split()[2:]
        if " ".join(words) not in ("", "pack grad_y"):
            raise ValueError(f"no launch sequence for dgrad's {path_report!r}")
        return ([CHANNELS_LAST_PACK] * ("pack" in words)
                + [f"dgrad_fold_flip_weights_kernel<{t}>",
                   *cuda_launch_kernels("conv", "path v3 block_channels 0", dtype, 1, cpg,
                                        gated=True)])
    if op == "dgrad" and path_report == "path direct":
        return [f"grouped_conv_dgrad_kernel<{t}>"]
    if op == "dgrad":
        raise ValueError(f"no launch sequence for dgrad's {path_report!r}")
    if op == "wgrad" and path_report.startswith("path v3"):
        # x's and grad_y's packed copies where they have neither 16-byte chunks nor contiguous
        # rows (NCHW is read by channel planes), in that order
        packs = len(layout_copies(path_report))
        return [CHANNELS_LAST_PACK] * packs + [
            f"grouped_conv_wgrad_v3_kernel<{t}, {cpg}, {stride}>",
            f"grouped_conv_wgrad_finalize_kernel<{t}>"]
    if op == "wgrad":
        return [f"grouped_conv_wgrad_partial_kernel<{t}>", f"grouped_conv_wgrad_finalize_kernel<{t}>"]
    if op == "se":
        # the excite: the batched FC kernel twice, the hidden layer's partial sums then the
        # gate; squeeze and scale by 16-byte chunks where the harness reports "path chunked"
        chunked = "_chunked" if "path chunked" in path_report else ""
        return [f"se_squeeze{chunked}_kernel<{t}>", "se_fc_kernel<false>", "se_fc_kernel<true>",
                f"se_scale{chunked}_kernel<{t}>"]
    m = re.search(r"path (\w+) block_channels (\d+)", path_report)
    gate = "true" if gated else "false"
    if m.group(1) == "v3":
        # its weights packed, then the conv (NCHW read and written by channel planes); an x
        # with neither 16-byte chunks nor contiguous rows packed channels_last first
        copies = layout_copies(path_report)
        if copies not in ([], ["x"]):
            raise ValueError(f"no launch sequence for the conv's {path_report!r}")
        conv = ([f"pack_weight_rows_kernel<{t}, {cpg}>",
                 f"grouped_conv_bn_relu_v3_wide_kernel<{t}, {cpg}, {stride}, {gate}>"]
                if cpg >= 32 else
                [f"pack_b_fragments_kernel<{t}, {cpg}>",
                 f"grouped_conv_bn_relu_v3_kernel<{t}, {cpg}, {stride}, {gate}>"])
        return [CHANNELS_LAST_PACK] * ("x" in copies) + conv
    if m.group(1) == "wmma":
        bc = m.group(2)
        return [f"repack_weights_kernel<{t}, {bc}>",
                f"grouped_conv_bn_relu_wmma_kernel<{t}, {bc}, {stride}>"]
    return [f"grouped_conv_bn_relu_direct_kernel<{t}>"]


# csrc/kernels/batchnorm_train.cu's calls (cuda_emulator.launch_shapes' ops)
BN_TRAIN_OPS = ("bn_forward", "bn_backward_sums", "bn_grad_z")


def bn_train_launch_kernels(op, dtype, launches):
    """The kernel of each of a train-mode BatchNorm call's `launches` launches: the statistics'
    or the sums' partials, as many levels of their reduction as the rest, then the normalize or
    the coefficients; grad_z's one kernel."""
    t = CUDA_TYPES[dtype]
    if op == "bn_grad_z":
        return [f"grad_z_kernel<{t}>"] * launches
    first, last = ((f"statistics_partials_kernel<{t}>", f"normalize_kernel<{t}>")
                   if op == "bn_forward" else
                   (f"backward_sums_partials_kernel<{t}>", "coefficients_kernel"))
    return [first] + ["reduce_partials_kernel"] * (launches - 2) + [last]


# ----------------------------------------------------------------------------------- shapes
def layer_shapes():
    from resnext_kernels.models.shapes import grouped_conv_shapes, se_shapes

    for model in ("resnext50_32x4d", "resnext101_32x8d"):
        for layer, C, H, W, C_out, groups, stride, count in grouped_conv_shapes(model):
            yield dict(op="conv", model=model, layer=layer, C=C, H=H, W=W, groups=groups,
                       cpg=C // groups, stride=stride, count=count)
    for layer, C, H, W, R, count in se_shapes("seresnext50_32x4d"):
        yield dict(op="se", model="seresnext50_32x4d", layer=layer, C=C, H=H, W=W, R=R,
                   count=count)


def class_shapes():
    """One real layer per grouped-conv (cpg, stride) class (its first in layer_shapes), and every
    SE stage: the shapes the dtypes other than fp16 are profiled at."""
    seen = set()
    for shape in layer_shapes():
        if shape["op"] == "se":
            yield shape
        elif (shape["cpg"], shape["stride"]) not in seen:
            seen.add((shape["cpg"], shape["stride"]))
            yield shape


def op_dtype(op, dtype):
    """The dtype's name for an op: the SE has no TF32 switch, its "fp32/tf32" is plain fp32."""
    return dtype.split("/")[0] if op == "se" else dtype


def dtype_shapes(dtypes):
    """(dtype, shape) pairs: fp16 on every real layer, other dtypes on class_shapes()."""
    for dtype in dtypes:
        for shape in (layer_shapes() if dtype == "fp16" else class_shapes()):
            yield dtype, shape


def layer_name(shape, batch, layout, dtype="fp16"):
    if shape["op"] == "conv":
        return (f"{shape['model']} {shape['layer']} conv cpg{shape['cpg']} s{shape['stride']} "
                f"C{shape['C']} {shape['H']}x{shape['W']} b{batch} {dtype} {layout}")
    return (f"{shape['model']} {shape['layer']} se C{shape['C']} R{shape['R']} "
            f"{shape['H']}x{shape['W']} b{batch} {dtype} {layout}")


def launch_entry(kernels, archs, name, launch):
    """A launch's row: its kernel, grid, block, shared memory, and per arch the occupancy the
    kernel's compile allows and the waves its grid makes."""
    entry = dict(kernel=name, grid=launch["grid"], blocks=launch["blocks"],
                 threads=launch["threads"], smem_dynamic=launch["smem_bytes"])
    for arch in archs:
        k = kernels[arch].get(name, {})
        occ = occupancy(arch, k.get("regs", 0), launch["threads"],
                        launch["smem_bytes"] + k.get("smem_static", 0))
        entry[f"sm_{arch}"] = dict(occ, waves=waves(launch["blocks"], occ["blocks_per_sm"]))
    return entry


def cuda_profile(archs, layouts=("nhwc", "nchw"), batches=(128, 1), dtypes=("fp16",)):
    """(the CUDA kernels' compile profile per arch, one row per call: its launches). Every conv
    and SE call, and for fp16 convs a "train" row: the backward's launches (dgrad, wgrad), and
    a "train_bn" row: train-mode BatchNorm's launches around the conv (BN_TRAIN_OPS)."""
    import torch

    import cuda_emulator

    binary = cuda_emulator.build("profile")
    kernels = {arch: cuda_kernels(arch) for arch in archs}
    layers = []
    for dtype, shape in dtype_shapes(dtypes):
        torch_dtype, tf32 = DTYPES[dtype]
        for batch in batches:
            for layout in layouts:
                kw = dict(N=batch, C=shape["C"], H=shape["H"], W=shape["W"],
                          dtype=getattr(torch, torch_dtype), channels_last=layout == "nhwc")
                if shape["op"] == "conv":
                    kw.update(groups=shape["groups"], stride=shape["stride"], allow_tf32=tf32)
                else:
                    kw.update(R=shape["R"])
                calls = [("inference", [shape["op"]])]
                if shape["op"] == "conv" and dtype == "fp16":
                    calls.append(("train", ["dgrad", "wgrad"]))  # the backward's launches
                    # train-mode BatchNorm's kernels around the conv (its conv and backward
                    # are the rows above: kernel_profile.py composes the step)
                    calls.append(("train_bn", list(BN_TRAIN_OPS)))
                for phase, ops in calls:
                    row = dict(name=layer_name(shape, batch, layout, op_dtype(shape["op"], dtype))
                               + ("" if phase == "inference" else f" {phase}"),
                               backend="cuda", phase=phase, batch=batch, layout=layout,
                               dtype=op_dtype(shape["op"], dtype), **shape, launches=[],
                               reports=[])
                    for op in ops:
                        report, launches = cuda_emulator.launch_shapes(binary, op, **kw)
                        names = (bn_train_launch_kernels(op, dtype, len(launches))
                                 if op in BN_TRAIN_OPS else
                                 cuda_launch_kernels(op, report, dtype, shape.get("stride"),
                                                     shape.get("cpg")))
                        row["reports"].append(report)
                        for name, launch in zip(names, launches):
                            row["launches"].append(
                                launch_entry(kernels, archs, name, launch))
                    layers.append(row)
    used = {l["kernel"] for row in layers for l in row["launches"]}
    table = {f"sm_{arch}": {name: k for name, k in ks.items() if name in used}
             for arch, ks in kernels.items()}
    return table, layers


# ----------------------------------------------------------------------------------- Triton
def triton_calls(shape, batch, layout, dtype):
    """(name, phase, the launcher call) of one Triton call, and for fp16 in nhwc and nchw at
    batch 128 its training calls:
    - a conv's "train" (eval-mode BN: the masked forward, dgrad, wgrad:
      triton_aot_check.train_launches), "train_bn" (train-mode BN's forward and backward on
      the backend's dgrad and wgrad kernels, grad_z written once: fusedtrain_launches) and
      "train_bn_prologue" (the same with grad_z formed in dgrad's and wgrad's prologue);
    - an SE tail's "train": its forward, then its backward (autocast's fp32 FC weights)."""
    import triton_aot_check as tac

    training = dtype == "fp16" and batch == 128 and layout in ("nhwc", "nchw")
    if shape["op"] == "conv":
        conv_shape = (shape["C"], shape["H"], shape["W"], shape["C"], shape["groups"],
                      shape["stride"], batch, dtype, layout)
        name = layer_name(shape, batch, layout, dtype)
        yield name, "inference", tac.conv_launch(*conv_shape)
        if training:
            yield name + " train", "train", tac.train_launches(*conv_shape)
            for grad_z in ("written", "prologue"):
                phase = "train_bn" + ("_prologue" if grad_z == "prologue" else "")
                yield (f"{name} {phase}", phase,
                       tac.fusedtrain_launches(*conv_shape, grad_z=grad_z))
    else:
        se_shape = (shape["C"], shape["H"], shape["W"], shape["R"], batch,
                    op_dtype("se", dtype), "fp32", layout)
        name = layer_name(shape, batch, layout, op_dtype("se", dtype))
        forward = tac.se_launch(*se_shape)
        yield name, "inference", forward
        if training:
            backward = tac.se_train_launch(*se_shape)
            yield name + " train", "train", lambda: (forward(), backward())


def triton_profile(archs, layouts=("nhwc", "nhwc,w-nchw", "nchw"), batches=(128, 1),
                   dtypes=("fp16",)):
    os.environ["RESNEXT_KERNELS_TRITON_AUTOTUNE"] = "0"
    import triton_aot_check as tac

    # 1. every launch of every call (and of the fp16 convs' training calls), recorded (no
    # compiling yet), and the distinct specialisations among them
    layers, launches, jobs = [], [], {}
    for dtype, shape in dtype_shapes(dtypes):
        # other dtypes at the first batch only: their grids are fp16's, and compiling each
        # batch's specialisation again would double the profile's time in CI
        for batch in (batches if dtype == "fp16" else batches[:1]):
            for layout in layouts:
                for name, phase, launch in triton_calls(shape, batch, layout, dtype):
                    row = dict(name=name, backend="triton", phase=phase, batch=batch,
                               layout=layout, dtype=op_dtype(shape["op"], dtype), **shape,
                               launches=[])
                    for arch in archs:
                        recs = []
                        with tac.recording_launches(arch, recs):
                            launch()
                        for i, rec in enumerate(recs):
                            path = dict(rec, arch=arch)
                            kid = f"sm_{arch}/{rec['kernel']}/{rec['key']}"
                            label = f"{tac.path_label(path)} {layout}"
                            jobs.setdefault(kid, (tac.job_of(path), label,
                                                  rec["options"]["num_warps"],
                                                  tac.constexpr_values(path)))
                            launches.append((row, arch, i, rec, kid, label))
                    layers.append(row)
    # 2. each specialisation compiled once, on every core (as triton_aot_check does)
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:
        results = pool.map(functools.partial(tac.compile_path, sass=True),
                           [job for job, _, _, _ in jobs.values()])
        kernels = {kid: dict(result, label=label, num_warps=warps, constexprs=constexprs)
                   for (kid, (_, label, warps, constexprs)), result in zip(jobs.items(), results)}
    # 3. per launch: grid, occupancy and waves
    for row, arch, i, rec, kid, label in launches:
        k = kernels[kid]
        blocks = math.prod(rec["grid"])
        occ = occupancy(arch, k.get("regs") or 0, 32 * k["num_warps"], k.get("smem") or 0)
        if len(row["launches"]) <= i:
            row["launches"].append(dict(kernel=label, grid=list(rec["grid"]), blocks=blocks,
                                        threads=32 * k["num_warps"],
                                        smem_dynamic=k.get("smem")))
        row["launches"][i][f"sm_{arch}"] = dict(
            occ, waves=waves(blocks, occ["blocks_per_sm"]), kernel_id=kid,
            constexprs=k["constexprs"])
    return kernels, layers


# ----------------------------------------------------------------------------------- report
HOT = ("global_load_16B", "global_load_8B", "global_load_4B", "global_load_2B", "cp_async_16B",
       "cp_async_8B", "cp_async_4B",
       "bulk_copy", "shared_load_16B", "shared_load_4B", "shared_load_2B", "ldmatrix_x4",
       "ldmatrix_x2", "ldmatrix_x1", "hmma", "hgmma", "barrier", "global_store_16B",
       "global_store_4B", "global_store_2B", "shared_store_16B", "shared_store_8B",
       "shared_store_4B", "shared_store_2B", "local", "int", "fp")


def mix_text(sass):
    hot = (sass or {}).get("hot_loop")
    tensor_core = ("hmma", "hgmma")
    if (sass and any(sass.get("mix", {}).get(k) for k in tensor_core)
            and not (hot and any(hot["mix"].get(k) for k in tensor_core))):
        # the MMA loop was unrolled (a constant trip count: Triton v3's 9 taps): the whole
        # kernel's static mix is what one program runs
        mix = sass["mix"]
        return ("unrolled, whole kernel: " + " ".join(f"{k}:{mix[k]}" for k in HOT if mix.get(k))
                + f" (of {sass['instructions']})")
    if not hot:
        return "(no loop)"
    return " ".join(f"{k}:{hot['mix'][k]}" for k in HOT if hot["mix"].get(k)) + \
        f" (of {hot['instructions']})"


def markdown(cuda_table, triton_table, layers, archs):
    lines = ["# Compiled-code profile (no GPU)", "",
             "Generated by scripts/compiled_profile.py. Occupancy is the resident blocks/warps "
             "per SM the compile allows; waves = blocks / (blocks per SM x 132 SMs). Hot loop: "
             "the innermost loop with tensor-core instructions (else the busiest loop), static "
             "instruction counts per iteration; where the compiler unrolled the tensor-core "
             "loop (Triton v3's 9 taps), the whole kernel's static counts (a noinline "
             "subroutine, v3's path for non-finite inputs, apart: scripts/sass_mix.py).", "",
             "## Kernels", "",
             "| backend | arch | kernel | regs | spill B | smem static B | hot loop mix |",
             "|---|---|---|---|---|---|---|"]
    for arch_key, ks in cuda_table.items():
        for name, k in sorted(ks.items()):
            lines.append(f"| cuda | {arch_key} | {name} | {k.get('regs')} | "
                         f"{k.get('spill_bytes')} | {k.get('smem_static')} | "
                         f"{mix_text(k.get('sass'))} |")
    seen = set()
    for kid, k in sorted(triton_table.items(), key=lambda kv: (kv[0].split("/")[0], kv[1]["label"])):
        line = (f"| triton | {kid.split('/')[0]} | {k['label']} | {k.get('regs')} | "
                f"{k.get('spills')} | {k.get('smem')} | {mix_text(k.get('sass'))} |")
        if line not in seen:  # specialisations that compile alike (batch, divisibility) once
            seen.add(line)
            lines.append(line)
    lines += ["", "## Launches per layer", "",
              "| layer | backend | kernel | grid | threads | smem B | "
              + " | ".join(f"sm_{a} blocks/SM (limit) | sm_{a} occ % | sm_{a} waves" for a in archs)
              + " |", "|---|---|---|---|---|---|" + "---|---|---|" * len(archs)]
    for row in layers:
        for l in row["launches"]:
            cells = []
            for a in archs:
                o = l.get(f"sm_{a}", {})
                cells += [f"{o.get('blocks_per_sm')} ({o.get('limited_by')})",
                          f"{o.get('occupancy_pct', 0):.0f}",
                          "" if o.get("waves") is None else f"{o['waves']:.2f}"]
            lines.append(f"| {row['name']} | {row['backend']} | {l['kernel']} | "
                         f"{'x'.join(map(str, l['grid']))} | {l['threads']} | "
                         f"{l.get('smem_dynamic')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", type=int, nargs="+", default=[90, 80])
    p.add_argument("--json", default="compiled-profile.json")
    p.add_argument("--md", default="compiled-profile.md")
    p.add_argument("--backends", nargs="+", default=["cuda", "triton"])
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    args = p.parse_args(argv)
    cuda_table, triton_table, layers = {}, {}, []
    if "cuda" in args.backends:
        cuda_table, cuda_layers = cuda_profile(args.archs, dtypes=args.dtypes)
        layers += cuda_layers
    if "triton" in args.backends:
        triton_table, triton_layers = triton_profile(args.archs, dtypes=args.dtypes)
        layers += triton_layers
    Path(args.json).write_text(json.dumps(dict(sms=SMS, cuda_kernels=cuda_table,
                                               triton_kernels=triton_table, layers=layers),
                                          indent=1))
    text = markdown(cuda_table, triton_table, layers, args.archs)
    Path(args.md).write_text(text)
    print(text[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())

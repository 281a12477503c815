"""Compile every Triton kernel path for real GPUs (sm_80, sm_90) on a machine without one.

Triton compiles to PTX and cubin without a driver, so CI can prove the kernels compile for the
GPU (tl.dot shape and dtype rules, layouts, constexpr paths) and report what ptxas allocated:
registers, spills, shared memory, and whether the tensor-core instructions are there (mma on
sm_80, wgmma on sm_90). This says nothing about correctness or speed on a GPU.

    python scripts/triton_aot_check.py            # CI: every tile path, one launch config
    python scripts/triton_aot_check.py --all-configs   # every autotune config too
Exit status 1 if any path fails to compile, or if an fp16/bf16 or SE path spills registers
(the configurations that matter for speed); fp32 spills are reported only.
"""

import argparse
import concurrent.futures
import importlib
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: this compiles the kernels for real GPUs")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

conv = importlib.import_module("resnext_kernels.backends.triton.grouped_conv_bn_relu")
se = importlib.import_module("resnext_kernels.backends.triton.squeeze_excite")

PTXAS = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "ptxas")
TRITON_TYPE = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


def ptxas_report(ptx: str):
    arch = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        out = subprocess.run([PTXAS, f"-arch={arch}", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True, timeout=120).stderr
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return (int(regs.group(1)) if regs else -1,
            int(spill.group(1)) + int(spill.group(2)) if spill else -1)


def compile_kernel(fn, types: dict, constexprs: dict, arch: int, num_warps=4, num_stages=2):
    """types: {arg: triton type} for runtime args; constexprs: {arg: value}."""
    names = fn.arg_names
    sig = {n: ("constexpr" if n in constexprs else types.get(n, "i32")) for n in names}
    # integer args pinned to 1 (a unit stride) are constexpr, as Triton specialises them
    src = ASTSource(fn=fn, signature=sig,
                    constexprs={(names.index(n),): v for n, v in constexprs.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=num_warps, num_stages=num_stages))
    ptx = compiled.asm["ptx"]
    regs, spills = ptxas_report(ptx)
    mma = "wgmma" if "wgmma.mma_async" in ptx else ("mma" if re.search(r"\bmma\.sync", ptx) else "-")
    return dict(regs=regs, spills=spills, smem=compiled.metadata.shared, mma=mma)


def conv_jobs(all_configs: bool):
    tiles = sorted({conv._channel_tiles(c, c) for c in (1, 3, 4, 8, 16, 32, 64, 128)})
    configs = [(c.kwargs["BLOCK_M"], c.num_warps, c.num_stages) for c in conv._GPU_CONFIGS]
    if not all_configs:  # the smallest and the largest tile of the autotune list
        configs = [configs[0], configs[-1]]
    for arch in (90, 80):
        for dtype, precision in (("fp16", None), ("bf16", None), ("fp32", "tf32"), ("fp32", "ieee")):
            for block_n, block_k in tiles:
                for layout in ("nhwc", "nchw"):
                    for block_m, warps, stages in configs:
                        t = TRITON_TYPE[dtype]
                        types = {"x_ptr": f"*{t}", "w_ptr": f"*{t}", "y_ptr": f"*{t}",
                                 "scale_ptr": "*fp32", "shift_ptr": "*fp32"}
                        const = dict(KH=3, KW=3, APPLY_RELU=True, DOT_IN_FP32=dtype == "fp32",
                                     DOT_PRECISION=precision or "ieee", INDEX_64=False,
                                     BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
                        # unit strides are constexpr, as Triton specialises them at launch
                        const.update({"sxc": 1, "syc": 1} if layout == "nhwc"
                                     else {"sxw": 1, "syw": 1})
                        label = (f"conv sm_{arch} {dtype}{'/' + precision if precision else ''} "
                                 f"N{block_n} K{block_k} {layout} M{block_m} w{warps} s{stages}")
                        yield label, ("conv", types, const, arch, warps, stages)


def se_jobs():
    for arch in (90, 80):
        for dtype in ("fp16", "bf16", "fp32"):
            t = TRITON_TYPE[dtype]
            yield f"se_squeeze sm_{arch} {dtype}", (
                "se_squeeze", {"u_ptr": f"*{t}", "pooled_ptr": "*fp32", "inv_hw": "fp32"},
                dict(BLOCK_HW=64, BLOCK_C=64), arch, 4, 2)
            yield f"se_scale sm_{arch} {dtype}", (
                "se_scale", {"u_ptr": f"*{t}", "gate_ptr": "*fp32", "res_ptr": f"*{t}",
                             "out_ptr": f"*{t}"},
                dict(HAS_RESIDUAL=True, APPLY_RELU=True, BLOCK_HW=64, BLOCK_C=64), arch, 4, 2)
        yield f"se_excite sm_{arch} (fp32 weights, C block 64, R 128)", (
            "se_excite", {"pooled_ptr": "*fp32", "w1_ptr": "*fp32", "b1_ptr": "*fp32",
                          "w2_ptr": "*fp32", "b2_ptr": "*fp32", "gate_ptr": "*fp32"},
            dict(HAS_B1=True, HAS_B2=True, BLOCK_R=128, BLOCK_C=64), arch, 4, 2)


KERNELS = {"conv": lambda: conv._grouped_conv_bn_relu_kernel,
           "se_squeeze": lambda: se._se_squeeze_kernel,
           "se_scale": lambda: se._se_scale_kernel,
           "se_excite": lambda: se._se_excite_kernel}


def run_job(job):
    kernel, types, const, arch, warps, stages = job
    try:
        return compile_kernel(KERNELS[kernel](), types, const, arch, warps, stages)
    except Exception as exc:  # a failed path is the finding
        return dict(error=f"{type(exc).__name__}: {str(exc)[:300]}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--all-configs", action="store_true", help="every autotune config")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    jobs = list(conv_jobs(args.all_configs)) + list(se_jobs())
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_job, [job for _, job in jobs]))
    print(f"{'path':<62} {'regs':>5} {'spill_B':>8} {'smem_B':>7} {'mma':>6}")
    bad = 0
    for (label, _), r in zip(jobs, results):
        if "error" in r:
            bad += 1
            print(f"{label:<62} FAILED: {r['error']}")
            continue
        fatal = " fp32/" not in f" {label.split()[2]}/" if label.startswith("conv") else True
        flag = ("  <- SPILLS" if fatal else "  (fp32 spill, reported)") if r["spills"] else ""
        bad += bool(r["spills"]) and fatal
        print(f"{label:<62} {r['regs']:>5} {r['spills']:>8} {r['smem']:>7} {r['mma']:>6}{flag}")
    print(f"{len(jobs)} paths: {bad} failed to compile or spilled where it matters")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Host overhead on a GPU: the CPU time to issue each layer of one grouped conv + BN + ReLU
call, and a whole model's forward, with a profile of where the fused model's host time goes.

    python benchmarks/overhead_gpu.py [--out DIR] [--profile-steps 20] [--quick]

Why: the first GPU run of the swapped models (H100, commit 46be7db,
benchmarks/results/models-NVIDIA-H100-80GB-HBM3-46be7dbe19ed-*.json) measured resnext50_32x4d
at 8.14 ms of host time per forward with replace_modules against 4.61 ms without, above its
6.38 ms of device time: host-bound. benchmarks/overhead.py, on the CPU with the reference
backend, finds the swapped module within 1.03x of the original, so the cost is in what only a
GPU runs. This script takes the call apart, layer by layer, on the GPU.

Rows (host_us_per_call: common.bench's issuing loop, timed while a spin kernel holds the GPU,
so the host never waits for it; the device time beside it), one grouped conv of resnext50's
layer3 (512 channels, 14x14, cpg 16, stride 1) at batch 1, fp16, channels_last:
- "aten conv2d + relu_": the cuDNN launches alone, weights folded beforehand
- "original module": nn.Sequential(conv, BatchNorm2d, ReLU) (cuDNN)
- "swapped module": the same after replace_modules(backend)
- "op, direct call": resnext_kernels.grouped_conv_bn_relu(..., backend), folded weights
- "op through the dispatcher": torch.ops.resnext_kernels.grouped_conv_bn_relu
- "C++ op" (GPU only): torch.ops.resnext_kernels.grouped_conv_bn_relu_cuda, the backend's op
each under torch.no_grad and torch.inference_mode, and the two modules also as
benchmarks/models.py runs them: fp32 modules under autocast(fp16) and no_grad.
Whole model: resnext50_32x4d (resnext_kernels.models), batch 1, 224x224 (32x32 on the CPU),
channels_last, autocast fp16, no_grad: eager against replace_modules(backend).
Then cProfile over --profile-steps forwards of the swapped model (batch 1: the GPU keeps up, so
the host never blocks), its 30 costliest functions by own time and by cumulative time, printed
and written next to the results as <prefix>-cprofile.txt.

On a machine without a GPU (CI's dry run of the GPU plan) it runs the same rows with the
reference backend on the CPU, wall time, small shapes; no C++ op row.
Writes benchmarks/results/overhead_gpu-<GPU>-<commit>-<date>.{json,csv} (--out to change).
"""

import argparse
import contextlib
import copy
import cProfile
import io
import os
import pstats
import sys

import torch
from torch import nn

# Only benchmarks/ goes on the path: the repository root would shadow the installed package with
# the source tree, which has no compiled resnext_kernels._C (the H100 run of f43d976 failed so:
# "backend: 'cuda' is not available").
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import resnext_kernels as rk  # noqa: E402
from overhead import conv_bn_relu, randomise  # noqa: E402
from resnext_kernels import models  # noqa: E402

C, HW, GROUPS = 512, 14, 32  # resnext50_32x4d layer3's grouped conv: cpg 16
C_CPU, HW_CPU = 64, 8


def layer_cases(device, backend, channels, dtype):
    """{row name: (fn, context name)}: every layer of one call, on the same parameters."""
    cl = torch.channels_last
    original = randomise(conv_bn_relu(channels, GROUPS)).to(device, memory_format=cl)
    swapped = conv_bn_relu(channels, GROUPS).to(device, memory_format=cl)
    swapped.load_state_dict(original.state_dict())
    rk.replace_modules(swapped.eval(), backend=backend, verbose=False)
    low = ([copy.deepcopy(m).to(dtype) for m in (original, swapped)]
           if dtype != torch.float32 else None)
    with torch.no_grad():
        weight = original[0].weight.detach().to(dtype)
        scale, shift = rk.fold_batchnorm(original[1])
        folded = (weight.float() * scale.view(-1, 1, 1, 1)).to(dtype)
        bias = shift.to(dtype)
    args = ([1, 1], [1, 1], [1, 1], GROUPS, True)
    cases = {
        "aten conv2d + relu_": lambda x: torch.conv2d(x, folded, bias, 1, 1, 1, GROUPS).relu_(),
        "op, direct call": lambda x: rk.grouped_conv_bn_relu(x, weight, scale, shift,
                                                             groups=GROUPS, backend=backend),
        "op through the dispatcher": lambda x: torch.ops.resnext_kernels.grouped_conv_bn_relu(
            x, weight, scale, shift, *args, backend),
    }
    if device.type == "cuda":
        cases["C++ op"] = lambda x: torch.ops.resnext_kernels.grouped_conv_bn_relu_cuda(
            x, weight, scale, shift, *args)
    rows = [(name, fn, ctx) for name, fn in cases.items() for ctx in ("no_grad", "inference_mode")]
    modules = {"original module": original, "swapped module": swapped}
    if low is not None:  # modules in the input's dtype, and fp32 ones under autocast
        rows += [(name, m, ctx) for name, m in zip(modules, low)
                 for ctx in ("no_grad", "inference_mode")]
        rows += [(name, m, "no_grad + autocast") for name, m in modules.items()]
    else:
        rows += [(name, m, ctx) for name, m in modules.items()
                 for ctx in ("no_grad", "inference_mode")]
    return rows


@contextlib.contextmanager
def context(name, device, dtype):
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode() if name == "inference_mode"
                            else torch.no_grad())
        if "autocast" in name:
            stack.enter_context(torch.autocast(device.type, dtype=dtype, cache_enabled=False))
        yield


def model_pair(device, backend, image):
    eager = randomise(models.resnext50_32x4d()).to(device, memory_format=torch.channels_last)
    fused = randomise(models.resnext50_32x4d()).to(device, memory_format=torch.channels_last)
    fused.load_state_dict(eager.state_dict())
    rk.replace_modules(fused.eval(), backend=backend, verbose=False)
    x = torch.randn(1, 3, image, image, device=device).to(memory_format=torch.channels_last)
    return eager, fused, x


def profile_text(fn, steps):
    fn()  # warm
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        fn()
    profiler.disable()
    out = io.StringIO()
    for order in ("tottime", "cumulative"):
        out.write(f"--- {steps} forwards, by {order}\n")
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(30)
    return out.getvalue()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=common.RESULTS_DIR, help="directory for the results files")
    p.add_argument("--samples", type=int, default=15)
    p.add_argument("--profile-steps", type=int, default=20)
    p.add_argument("--quick", action="store_true",
                   help="3 samples per row, 2 profiled forwards (the plan's dry run)")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.profile_steps = 3, 2
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    backend = "cuda" if on_gpu else "reference"
    dtype = torch.float16 if on_gpu else torch.float32
    channels, hw = (C, HW) if on_gpu else (C_CPU, HW_CPU)
    env = common.environment(device)
    prefix = common.result_prefix("overhead_gpu", env)
    torch.manual_seed(0)
    rows = []

    x = torch.randn(1, channels, hw, hw, device=device, dtype=dtype)
    x = x.to(memory_format=torch.channels_last)
    for name, fn, ctx in layer_cases(device, backend, channels, dtype):
        with context(ctx, device, dtype):
            r = common.bench(fn, [(x,)], device, samples=args.samples)
        rows.append(dict(case=name, context=ctx, backend=backend, input=list(x.shape),
                         dtype=str(dtype).replace("torch.", ""), **r))

    eager, fused, image = model_pair(device, backend, 224 if on_gpu else 32)

    def forward(model):
        def run(inp):
            with context("no_grad + autocast", device, torch.float16 if on_gpu
                         else torch.bfloat16):
                return model(inp)
        return run

    for name, model in (("resnext50_32x4d, original", eager),
                        ("resnext50_32x4d, replace_modules", fused)):
        r = common.bench(forward(model), [(image,)], device, samples=args.samples)
        rows.append(dict(case=name, context="no_grad + autocast", backend=backend,
                         input=list(image.shape), dtype="autocast", **r))
    run_fused = forward(fused)
    text = profile_text(lambda: run_fused(image), args.profile_steps)
    if on_gpu:
        torch.cuda.synchronize()

    paths = common.write_results(prefix, env, rows, args.out)
    profile_path = os.path.join(args.out, prefix + "-cprofile.txt")
    with open(profile_path, "w") as f:
        f.write(text)
    print(text)
    print(common.format_table(rows, [
        ("case", "case", "{}"), ("context", "context", "{}"),
        ("host_us_per_call", "host us", "{:.1f}"), ("p50_ms", "dev ms", "{:.4f}"),
        ("device_timing", "timing", "{}")]))
    print("\n" + "\n".join(paths + (profile_path,)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small cases of every CUDA (and Triton) code path, for compute-sanitizer (memcheck, racecheck).
The fused conv's training path too: the forward that stores the ReLU mask, dgrad and wgrad, for
the backends with backward kernels of their own (OWN_BACKWARD).

    compute-sanitizer --tool memcheck python3 scripts/sanitize_cases.py [--backends cuda triton]
Each case is also checked against the reference backend, so a silent wrong answer fails too.
The references run on CPU copies: under the sanitizer every GPU kernel is instrumented, and
cuDNN's would cost the time the checks need (on the H200, 2026-11-26, neither tool had finished
its first case within 75 s when the references ran cuDNN on the GPU). A progress line per group
of cases, with the time, shows in the log how far a run got.
--device cpu (the GPU plan's dry run) runs the same cases on CPU tensors with the backends given.
Triton runs its one fixed launch configuration (RESNEXT_KERNELS_TRITON_AUTOTUNE=0, set here):
autotuning under memcheck on the H200 (2026-11-26, commit 6806982) filled the GPU's 139 GiB
with memory held by PyTorch (the allocation that failed was Triton's 256 MiB benchmarking buffer)
by the 12th group and ended in an out-of-memory error; every configuration is checked for
correctness by tests/test_grouped_conv_bn_relu.py::test_triton_every_launch_config instead.
"""

import argparse
import os
import sys
import time

os.environ["RESNEXT_KERNELS_TRITON_AUTOTUNE"] = "0"  # before any launch: see above

import torch

import resnext_kernels as rk
from resnext_kernels import relu_mask

OPS = torch.ops.resnext_kernels
# the backends whose backward ops are their own kernels (the reference's are aten's: cuDNN under
# the sanitizer would cost the time the other cases need)
OWN_BACKWARD = ("triton", "cuda")


def conv_cases():
    for cpg in (1, 3, 4, 8, 16, 32, 64):
        for stride in (1, 2):
            for cl in (False, True):
                for dtype in (torch.float32, torch.float16, torch.bfloat16):
                    yield cpg, stride, cl, dtype, True
                    if dtype != torch.float32 and cpg in (4, 8, 16, 32, 64):
                        yield cpg, stride, cl, dtype, False  # the same call on CUDA v2


START = time.monotonic()


def progress(what: str):
    print(f"[{time.monotonic() - START:6.1f} s] done: {what}", flush=True)


def backward_cases():
    for cpg in (1, 3, 4, 8, 16, 32, 64):
        for stride in (1, 2):
            yield cpg, stride, True, torch.float16
        yield cpg, 2, False, torch.float32


def check_backward(backend, device, cpg, stride, cl, dtype):
    """The masked forward's mask against its output's; dgrad and wgrad against the reference
    backend's on CPU copies, with the same mask. Returns the number of wrong results."""
    groups = max(2, 64 // cpg)
    C = cpg * groups
    args = ([stride, stride], [1, 1], [1, 1], groups)
    x = torch.randn(2, C, 7, 5, device=device, dtype=dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, cpg, 3, 3, device=device) / (3 * cpg**0.5)).to(dtype)
    s, b = torch.rand(C, device=device) + 0.5, torch.randn(C, device=device)
    y, mask = OPS.grouped_conv_bn_relu_masked(x, w, s, b, *args, True, backend)
    grad_y = torch.randn(y.shape, device=device).to(dtype)
    grad_x = OPS.grouped_conv_dgrad(grad_y, mask, w, s, list(x.shape), *args, cl, backend)
    grads = OPS.grouped_conv_wgrad(grad_y, mask, x, w, s, *args, backend)
    cx, cw, cs, cgy = cpu_float(x, w, s, grad_y)
    cmask = mask.cpu()
    wrong = 0
    if not torch.equal(cmask, relu_mask.from_output(y.cpu())):
        print(f"masked forward {backend} cpg={cpg} stride={stride} cl={cl} {dtype}: the mask "
              "is not its output's")
        wrong += 1
    expected = [OPS.grouped_conv_dgrad(cgy, cmask, cw, cs, list(x.shape), *args, cl,
                                       "reference"),
                *OPS.grouped_conv_wgrad(cgy, cmask, cx, cw, cs, *args, "reference")]
    for name, got, ref in zip(("grad_x", "grad_w", "grad_scale", "grad_shift"),
                              (grad_x, *grads), expected):
        err = (got.float().cpu() - ref).abs().max().item() / max(1.0, ref.abs().max().item())
        if not err < 0.05:
            print(f"backward {backend} cpg={cpg} stride={stride} cl={cl} {dtype} {name}: "
                  f"max rel err {err}")
            wrong += 1
    return wrong


def cpu_float(*tensors):
    """float32 CPU copies (None stays None), for the reference."""
    return [None if t is None else t.detach().float().cpu() for t in tensors]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backends", nargs="+", default=["cuda"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args()
    device = args.device
    torch.manual_seed(0)
    failures = 0
    for backend in args.backends:
        for cpg, stride, cl, dtype, v3 in conv_cases():
            # C >= 64: cpg 1/4/8 take the packed tensor-core path (v2), and fp16/bf16 at cpg
            # 4-64 CUDA v3 (NCHW by channel planes; Triton v3: channels_last, also at
            # cpg 1), or v2 where v3 is off (read on every call)
            os.environ["RESNEXT_KERNELS_CUDA_V3"] = "1" if v3 else "0"
            os.environ["RESNEXT_KERNELS_TRITON_V3"] = "1" if v3 else "0"
            non_finite = v3 and cl and dtype == torch.float16 and cpg in (4, 32)
            groups = max(2, 64 // cpg)
            x = torch.randn(2, cpg * groups, 7, 5, device=device, dtype=dtype)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            if non_finite:  # the v3 kernels' exact path for a tile that read a NaN
                x[1, 3, 2, 2] = float("nan")
            w = (torch.randn(cpg * groups, cpg, 3, 3, device=device) / (3 * cpg**0.5)).to(dtype)
            s, b = torch.rand(cpg * groups, device=device) + 0.5, torch.randn(cpg * groups, device=device)
            y = rk.grouped_conv_bn_relu(x, w, s, b, stride=stride, groups=groups, backend=backend)
            ref = rk.grouped_conv_bn_relu(*cpu_float(x, w, s, b), stride=stride, groups=groups,
                                          backend="reference")
            y = y.float().cpu()
            if not torch.equal(y.isnan(), ref.isnan()):
                print(f"conv {backend} cpg={cpg} stride={stride} cl={cl} {dtype} v3={v3}: "
                      "NaN where the reference has none, or the reverse")
                failures += 1
            err = (y - ref).nan_to_num().abs().max().item()
            if not err < 0.1:
                print(f"conv {backend} cpg={cpg} stride={stride} cl={cl} {dtype} v3={v3}: "
                      f"max err {err}")
                failures += 1
            if cl and dtype == torch.bfloat16:
                progress(f"conv {backend} cpg {cpg} stride {stride}")
        for cl in (False, True):
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                for C, R, H in ((37, 5, 3), (256, 16, 7), (64, 8, 1)):
                    u = torch.randn(2, C, H, H + 1, device=device, dtype=dtype)
                    res = torch.randn_like(u)
                    if cl:
                        u, res = (t.contiguous(memory_format=torch.channels_last) for t in (u, res))
                    w1, w2 = torch.randn(R, C, device=device) / C**0.5, torch.randn(C, R, device=device)
                    b1, b2 = torch.randn(R, device=device), torch.randn(C, device=device)
                    out = rk.squeeze_excite(u, w1, b1, w2, b2, residual=res, relu=True, backend=backend)
                    cu, cw1, cb1, cw2, cb2, cres = cpu_float(u, w1, b1, w2, b2, res)
                    ref = rk.squeeze_excite(cu, cw1, cb1, cw2, cb2, residual=cres, relu=True,
                                            backend="reference")
                    err = (out.float().cpu() - ref).abs().max().item()
                    if not err < 0.1:
                        print(f"se {backend} C={C} R={R} cl={cl} {dtype}: max err {err}")
                        failures += 1
                progress(f"se {backend} {'nhwc' if cl else 'nchw'} {dtype}")
        if backend in OWN_BACKWARD:
            os.environ["RESNEXT_KERNELS_CUDA_V3"] = "1"
            os.environ["RESNEXT_KERNELS_TRITON_V3"] = "1"
            # their kernels, not the aten backward they default to
            os.environ["RESNEXT_KERNELS_CUDA_BACKWARD"] = "kernels"
            os.environ["RESNEXT_KERNELS_TRITON_BACKWARD"] = "kernels"
            for cpg, stride, cl, dtype in backward_cases():
                failures += check_backward(backend, device, cpg, stride, cl, dtype)
                if not cl:
                    progress(f"backward {backend} cpg {cpg}")
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"sanitize cases done: {failures} wrong")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

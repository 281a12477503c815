"""Small cases of every CUDA (and Triton) code path, for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck python3 scripts/sanitize_cases.py [--backends cuda triton]
Each case is also checked against the reference backend, so a silent wrong answer fails too.
--device cpu (the GPU plan's dry run) runs the same cases on CPU tensors with the backends given.
"""

import argparse
import sys

import torch

import resnext_kernels as rk


def conv_cases():
    for cpg in (1, 3, 4, 8, 16, 32, 64):
        for stride in (1, 2):
            for cl in (False, True):
                for dtype in (torch.float32, torch.float16, torch.bfloat16):
                    yield cpg, stride, cl, dtype


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backends", nargs="+", default=["cuda"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args()
    device = args.device
    torch.manual_seed(0)
    failures = 0
    for backend in args.backends:
        for cpg, stride, cl, dtype in conv_cases():
            groups = max(2, 32 // cpg)  # C >= 32: cpg 1/4/8 take the packed tensor-core path
            x = torch.randn(2, cpg * groups, 7, 5, device=device, dtype=dtype)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            w = (torch.randn(cpg * groups, cpg, 3, 3, device=device) / (3 * cpg**0.5)).to(dtype)
            s, b = torch.rand(cpg * groups, device=device) + 0.5, torch.randn(cpg * groups, device=device)
            y = rk.grouped_conv_bn_relu(x, w, s, b, stride=stride, groups=groups, backend=backend)
            ref = rk.grouped_conv_bn_relu(x, w, s, b, stride=stride, groups=groups, backend="reference")
            err = (y.float() - ref.float()).abs().max().item()
            if not err < 0.1:
                print(f"conv {backend} cpg={cpg} stride={stride} cl={cl} {dtype}: max err {err}")
                failures += 1
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
                    ref = rk.squeeze_excite(u, w1, b1, w2, b2, residual=res, relu=True, backend="reference")
                    err = (out.float() - ref.float()).abs().max().item()
                    if not err < 0.1:
                        print(f"se {backend} C={C} R={R} cl={cl} {dtype}: max err {err}")
                        failures += 1
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"sanitize cases done: {failures} wrong")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

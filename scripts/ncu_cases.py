"""One call of every kernel path on a real ResNeXt / SE-ResNeXt shape: the program that Nsight
Compute profiles in the GPU plan (scripts/gpu_session.sh, step "ncu").

    ncu --profile-from-start off --csv --page details --metrics ... \\
        python3 scripts/ncu_cases.py --manifest cases.json
    python3 scripts/ncu_summary.py ncu.csv cases.json          # the per-path summary

Every case is first run once outside the profiled region (Triton's autotuning, cuDNN's algorithm
search and first-call allocations stay out of the profile). Then, inside one
cudaProfilerStart/Stop region, each case runs once, preceded by a tiny marker kernel
("ncu_case_marker"): the summary assigns the kernels between the k-th and the (k+1)-th marker
to the k-th case of the manifest, whatever kernels (repacks, dtype casts, cuDNN's) a case runs.

Cases, fp16 channels_last at batch 128 unless named otherwise:
- conv, backends cuda, triton and reference (cuDNN, BN folded): the first real layer of every
  (channels per group, stride) class of resnext50_32x4d and resnext101_32x8d;
- conv variants on the cpg 8 stride 1 layer: bf16, NCHW, fp32 with TF32 (the TF32 tensor-core
  path) and without (the CUDA direct kernel), and fp16 channels_last on each backend's v2
  (RESNEXT_KERNELS_CUDA_V3=0, RESNEXT_KERNELS_TRITON_V3=0: the kernels v3 replaced, for
  comparison);
- SE (bottleneck tail: u * s + residual, ReLU), backends cuda, triton and reference, at every
  seresnext50_32x4d SE stage.
--device cpu (the plan's dry run) builds and runs the same cases on the CPU with the backends
given (reference by default), batch 1, no profiler: the plumbing, not the GPU.
"""

import argparse
import json
import os
import sys
import time

import torch

import resnext_kernels as rk
from resnext_kernels.models.shapes import grouped_conv_shapes, se_shapes

CONV_MODELS = ("resnext50_32x4d", "resnext101_32x8d")
SE_MODEL = "seresnext50_32x4d"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def conv_cases(backends):
    """[(case dict)] for the conv op, one per (backend, class or variant)."""
    classes = {}
    for model in CONV_MODELS:
        for layer, C_in, H, W, C_out, groups, stride, _count in grouped_conv_shapes(model):
            classes.setdefault((C_in // groups, stride), dict(
                model=model, layer=layer, C=C_in, H=H, W=W, C_out=C_out, groups=groups,
                stride=stride, cpg=C_in // groups))
    base = [dict(shape, dtype="fp16", layout="nhwc", tf32=False)
            for _, shape in sorted(classes.items())]
    probe = classes[(8, 1)]
    variants = [dict(probe, dtype="bf16", layout="nhwc", tf32=False),
                dict(probe, dtype="fp16", layout="nchw", tf32=False),
                dict(probe, dtype="fp32", layout="nhwc", tf32=True),
                dict(probe, dtype="fp32", layout="nhwc", tf32=False)]
    for backend in backends:
        for case in base + variants:
            yield dict(case, op="conv", backend=backend)
        if backend == "cuda":
            yield dict(probe, dtype="fp16", layout="nhwc", tf32=False, op="conv", backend=backend,
                       cuda_v3=False)
        if backend == "triton":
            yield dict(probe, dtype="fp16", layout="nhwc", tf32=False, op="conv", backend=backend,
                       triton_v3=False)


def se_cases(backends):
    for backend in backends:
        for layer, C, H, W, R, _count in se_shapes(SE_MODEL):
            yield dict(op="se", backend=backend, model=SE_MODEL, layer=layer, C=C, H=H, W=W, R=R,
                       dtype="fp16", layout="nhwc")


def case_name(case):
    if case["op"] == "conv":
        tf32 = "/tf32" if case["dtype"] == "fp32" and case["tf32"] else ""
        v2 = " v2" if case.get("cuda_v3") is False or case.get("triton_v3") is False else ""
        return (f"conv {case['backend']}{v2} cpg{case['cpg']} s{case['stride']} C{case['C']} "
                f"{case['H']}x{case['W']} {case['dtype']}{tf32} {case['layout']}")
    return f"se {case['backend']} C{case['C']} R{case['R']} {case['H']}x{case['W']} " \
           f"{case['dtype']} {case['layout']}"


def floor_bytes(case, batch):
    """The fewest bytes a case must move: every input read once, every output written once."""
    elem = torch.finfo(DTYPES[case["dtype"]]).bits // 8
    if case["op"] == "conv":
        H_out, W_out = (case["H"] - 1) // case["stride"] + 1, (case["W"] - 1) // case["stride"] + 1
        return batch * (case["C"] * case["H"] * case["W"] + case["C_out"] * H_out * W_out) * elem
    return 3 * batch * case["C"] * case["H"] * case["W"] * elem  # u, residual, out


def input_bytes(case, batch):
    """Bytes of the activation input (x, or u): what an L2 re-read factor is counted against."""
    return batch * case["C"] * case["H"] * case["W"] * torch.finfo(DTYPES[case["dtype"]]).bits // 8


def build_call(case, batch, device, seed):
    """A zero-argument callable running the case once on fresh random inputs."""
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[case["dtype"]]
    fmt = torch.channels_last if case["layout"] == "nhwc" else torch.contiguous_format

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=g) * scale)

    if case["op"] == "conv":
        C, C_out, G = case["C"], case["C_out"], case["groups"]
        x = rand(batch, C, case["H"], case["W"]).to(dtype).contiguous(memory_format=fmt)
        w = rand(C_out, C // G, 3, 3, scale=1 / (3 * (C // G) ** 0.5)).to(dtype)
        scale, shift = rand(C_out).abs() + 0.5, rand(C_out, scale=0.2)

        def call():
            torch.backends.cudnn.allow_tf32 = case["tf32"]
            # read by the CUDA glue on every call
            os.environ["RESNEXT_KERNELS_CUDA_V3"] = "0" if case.get("cuda_v3") is False else "1"
            os.environ["RESNEXT_KERNELS_TRITON_V3"] = (
                "0" if case.get("triton_v3") is False else "1")
            return rk.grouped_conv_bn_relu(x, w, scale, shift, stride=case["stride"], groups=G,
                                           backend=case["backend"])
        return call
    C, R = case["C"], case["R"]
    u = rand(batch, C, case["H"], case["W"]).to(dtype).contiguous(memory_format=fmt)
    res = rand(batch, C, case["H"], case["W"]).to(dtype).contiguous(memory_format=fmt)
    w1, b1 = rand(R, C, 1, 1, scale=C ** -0.5), rand(R, scale=0.1)
    w2, b2 = rand(C, R, 1, 1, scale=R ** -0.5), rand(C, scale=0.1)
    return lambda: rk.squeeze_excite(u, w1, b1, w2, b2, residual=res, relu=True,
                                     backend=case["backend"])


def marker_kernel():
    """A tiny Triton kernel with a name no other kernel has: the case boundary in the profile."""
    import triton
    import triton.language as tl

    @triton.jit
    def ncu_case_marker(ptr, value):
        tl.store(ptr, value)

    return ncu_case_marker


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="where to write the list of cases (JSON)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--backends", nargs="+", help="default: cuda triton reference on a GPU, "
                                                  "reference on the CPU")
    p.add_argument("--batch", type=int, help="default: 128 on a GPU, 1 on the CPU")
    p.add_argument("--ops", nargs="+", default=["conv", "se"], choices=["conv", "se"])
    args = p.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        sys.exit("no CUDA device: use --device cpu for the dry run")
    backends = args.backends or (["cuda", "triton", "reference"] if on_gpu else ["reference"])
    batch = args.batch or (128 if on_gpu else 1)

    cases = ([c for c in conv_cases(backends)] if "conv" in args.ops else []) + \
            ([c for c in se_cases(backends)] if "se" in args.ops else [])
    calls, skipped = [], []
    t0 = time.perf_counter()
    for i, case in enumerate(cases):
        case.update(name=case_name(case), batch=batch, floor_bytes=floor_bytes(case, batch),
                    input_bytes=input_bytes(case, batch))
        try:
            call = build_call(case, batch, device, seed=i)
            call()  # warm-up, outside the profiled region
            calls.append((case, call))
        except Exception as exc:  # an unavailable path is reported, the others still profile
            skipped.append(dict(case, error=f"{type(exc).__name__}: {str(exc)[:200]}"))
    if on_gpu:
        torch.cuda.synchronize()
        flag = torch.zeros(1, dtype=torch.int32, device=device)
        marker = marker_kernel()
        marker[(1,)](flag, 0)  # compiled outside the profiled region
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        for k, (_case, call) in enumerate(calls):
            marker[(1,)](flag, k)
            call()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    else:
        for _case, call in calls:
            call()
    with open(args.manifest, "w") as f:
        json.dump({"device": str(device), "batch": batch,
                   "gpu": torch.cuda.get_device_name(device) if on_gpu else None,
                   "torch": torch.__version__, "cases": [c for c, _ in calls],
                   "skipped": skipped}, f, indent=1)
    print(f"ncu cases: {len(calls)} run, {len(skipped)} skipped, "
          f"{time.perf_counter() - t0:.1f} s; manifest {os.path.abspath(args.manifest)}")
    for s in skipped:
        print(f"  skipped {s['name']}: {s['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

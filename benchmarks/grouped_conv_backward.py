"""Per-layer training benchmark: the backward of grouped 3x3 conv + BN + ReLU, and forward +
backward, on every grouped-conv shape of ResNeXt models. BN in eval mode (--bn eval, the
default: fine-tuning with frozen BN, the folded op) or in train mode (--bn train: batch
statistics, the train-mode op resnext_kernels.grouped_conv_bn_relu_train; running statistics
updated as nn.BatchNorm2d does, on each provider's own copy).

Providers (each checked against float64 autograd before it is timed):
  cudnn_eager      nn.Conv2d(groups) + nn.BatchNorm2d (eval) + nn.ReLU in eager: cuDNN's
                   convolution_backward plus eager BN and ReLU backward; leaves x, conv weight,
                   BN weight and bias
  reference        resnext_kernels.grouped_conv_bn_relu, backend "reference" (aten backward ops)
  triton, cuda     the op with that backend: the masked forward (1-bit ReLU mask), then the
                   backend's dgrad and wgrad ops; leaves x, weight, scale, shift (the BN fold
                   in front of the op, a few per-channel ops, is not timed). Their dgrad and
                   wgrad are aten's by default (backends/backward_choice.py)
  triton_kernels   triton with RESNEXT_KERNELS_TRITON_BACKWARD=kernels: its own backward kernels
  cuda_kernels     cuda with RESNEXT_KERNELS_CUDA_BACKWARD=kernels: its own backward kernels
                   (dgrad and wgrad on v3's machinery where they apply, else direct)
  cuda_dgrad       cuda with RESNEXT_KERNELS_CUDA_BACKWARD=dgrad: its dgrad kernels, aten's wgrad
  triton_kernels_prologue   --bn train only: triton_kernels with grad_z formed in dgrad's and
                   wgrad's prologue (RESNEXT_KERNELS_TRITON_BN_GRAD_Z=prologue), never written
In train mode every provider's leaves are x, the conv weight, BN's weight and bias, and all four
gradients are checked (in eval mode the op's leaves are the folded scale and shift: x and the
weight are checked).
Phases:
  backward         torch.autograd.grad of a saved forward (retain_graph): the backward alone
  fwd+bwd          the forward and its backward, as a training step runs them
Timing and rows as benchmarks/grouped_conv.py (common.py): p20/p50/p80 device ms with calls
queued, host us per call; no CUDA-graph timing here. kernels (fwd+bwd rows, on a GPU): the
device time of each kernel one step launches, the longest first, from the profiler: where a
provider's time goes (dgrad, wgrad, the mask's passes). floor_ms: the bytes a fused backward must
move (grad_y, the mask and x read, grad_x written; fwd+bwd adds the forward's x read and y and
mask written) at the copy bandwidth measured here; in train mode the "write z" design's bytes
(docs/KERNELS.md, train-mode BatchNorm v0; scripts/kernel_profile.py train_bn_floor_bytes):
the backward 7 y + 2 x + 2 masks, fwd+bwd adds x + 3 y + a mask. speedup_vs_cudnn_eager: same
phase, layout and BN mode.

  python benchmarks/grouped_conv_backward.py --quick
  python benchmarks/grouped_conv_backward.py --models resnext50_32x4d --batch 128 --dtypes fp16
"""

import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from grouped_conv import make_layer  # noqa: E402  (the same layers as the forward benchmark)

import resnext_kernels as rk  # noqa: E402
from resnext_kernels import backends  # noqa: E402
from resnext_kernels.models.shapes import grouped_conv_shapes  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROVIDERS = ["cudnn_eager", "reference", "triton", "triton_kernels", "triton_kernels_prologue",
             "cuda", "cuda_kernels", "cuda_dgrad"]
# providers that are a backend run with environment settings: (backend, {variable: value})
VARIANTS = {"triton_kernels": ("triton", {"RESNEXT_KERNELS_TRITON_BACKWARD": "kernels"}),
            "triton_kernels_prologue": ("triton", {"RESNEXT_KERNELS_TRITON_BACKWARD": "kernels",
                                                   "RESNEXT_KERNELS_TRITON_BN_GRAD_Z": "prologue"}),
            "cuda_kernels": ("cuda", {"RESNEXT_KERNELS_CUDA_BACKWARD": "kernels"}),
            "cuda_dgrad": ("cuda", {"RESNEXT_KERNELS_CUDA_BACKWARD": "dgrad"})}
TRAIN_ONLY = {"triton_kernels_prologue"}  # (its setting means nothing with eval-mode BN)
CPU_PROVIDERS = ["cudnn_eager", "reference"]
PHASES = ["backward", "fwd+bwd"]
BN_MODES = ["eval", "train"]
# relative to max |float64 gradient|, per gradient
TOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 8e-2}


class Provider:
    """forward(x) -> y, and the leaves whose gradients a backward computes (x first)."""

    def __init__(self, name, conv, bn, device, bn_mode="eval"):
        self.name = name
        backend, self.env = VARIANTS.get(name, (name, {}))
        if bn_mode == "train":  # its own BN (running statistics it may update), in train mode
            bn = copy.deepcopy(bn).train()
            self.params = [conv.weight, bn.weight, bn.bias]
            if name == "cudnn_eager":
                relu = nn.ReLU(inplace=True)
                self.forward = lambda x: relu(bn(conv(x)))
            else:
                self.forward = lambda x: rk.grouped_conv_bn_relu_train(
                    x, conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                    momentum=bn.momentum, eps=bn.eps, stride=conv.stride, groups=conv.groups,
                    backend=backend)
        elif name == "cudnn_eager":
            relu = nn.ReLU(inplace=True)
            self.params = [conv.weight, bn.weight, bn.bias]
            self.forward = lambda x: relu(bn(conv(x)))
        else:
            with torch.no_grad():
                scale, shift = rk.fold_batchnorm(bn)
            self.params = [conv.weight, scale.requires_grad_(), shift.requires_grad_()]
            self.forward = lambda x: rk.grouped_conv_bn_relu(
                x, conv.weight, self.params[1], self.params[2], stride=conv.stride,
                groups=conv.groups, backend=backend)
        for p in self.params:
            p.requires_grad_(True)

    def grads(self, x, y, grad_y, retain):
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)  # read by the backend's backward ops on every call
        try:
            return torch.autograd.grad(y, [x, *self.params], grad_y, retain_graph=retain)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def available(name, device):
    if name == "cudnn_eager":
        return None
    ok, reason = backends.backend_status(VARIANTS.get(name, (name, {}))[0], device.type)
    return None if ok else reason


def reference_grads(x, y, grad_y, conv, bn, bn_mode="eval"):
    """float64 autograd of conv + BN + ReLU, the ReLU decided by y (the provider's output: near 0
    the two forwards may decide differently, and either is right): [x, w, gamma, beta]. BN in
    eval mode (the running statistics) or train mode (the batch's)."""
    xr = x.detach().double().requires_grad_()
    wr = conv.weight.detach().double().requires_grad_()
    gamma = bn.weight.detach().double().requires_grad_()
    beta = bn.bias.detach().double().requires_grad_()
    z = F.conv2d(xr, wr, None, conv.stride, conv.padding, 1, conv.groups)
    if bn_mode == "train":
        pre = F.batch_norm(z, None, None, gamma, beta, True, 0.0, bn.eps)
    else:
        pre = F.batch_norm(z, bn.running_mean.double(), bn.running_var.double(), gamma, beta,
                           False, 0.0, bn.eps)
    pre = pre * torch.logical_not(y.detach() <= 0).double()
    return torch.autograd.grad(pre, [xr, wr, gamma, beta], grad_y.double())


def check(provider, x, grad_y, conv, bn, bn_mode="eval"):
    """The largest error, relative to max |float64 gradient|, of grad x and grad weight, and in
    train mode of BN's weight and bias too (in eval mode the op's per-channel leaves are the
    folded scale and shift, not cuDNN eager's: not compared)."""
    x = x.detach().requires_grad_()
    y = provider.forward(x)
    got = provider.grads(x, y, grad_y, retain=False)
    ref = reference_grads(x, y, grad_y, conv, bn, bn_mode)
    compared = 4 if bn_mode == "train" else 2
    return max(common.relative_error(g.double(), r)
               for g, r in zip(got[:compared], ref[:compared]))


class Cases(common.CaseCache):
    def make(self, si, dtype, layout):
        _model, _layer, C_in, H, W, C_out, groups, stride, _count = self.shapes[si]
        conv, bn = make_layer(C_in, C_out, groups, stride, self.device, dtype, seed=si)
        if layout == "nhwc":
            conv = conv.to(memory_format=torch.channels_last)
        H_out, W_out = (H - 1) // stride + 1, (W - 1) // stride + 1
        elem = torch.finfo(dtype).bits // 8
        in_bytes = self.batch * C_in * H * W * elem
        out_bytes = self.batch * C_out * H_out * W_out * elem
        mask_bytes = self.batch * C_out * H_out * W_out / 8
        fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        g = torch.Generator(device=self.device).manual_seed(1000 + si)
        sets = []
        for _ in range(common.rotation_sets(2 * in_bytes + out_bytes, self.device, max_sets=16)):
            x = torch.randn(self.batch, C_in, H, W, device=self.device, generator=g)
            grad_y = torch.randn(self.batch, C_out, H_out, W_out, device=self.device, generator=g)
            sets.append((x.to(dtype).contiguous(memory_format=fmt).requires_grad_(),
                         grad_y.to(dtype).contiguous(memory_format=fmt)))
        backward_bytes = 2 * in_bytes + out_bytes + mask_bytes
        # train mode, the "write z" design: the backward reads grad_y, the mask and z twice,
        # writes grad_z, dgrad reads it and writes grad_x, wgrad reads it and x; the forward
        # reads x, writes z, reads it and writes y and the mask
        train_backward = 7 * out_bytes + 2 * in_bytes + 2 * mask_bytes
        train_forward = in_bytes + 3 * out_bytes + mask_bytes
        gbs = self.bandwidth_gbs() * 1e9
        return dict(conv=conv, bn=bn, inputs=sets,
                    floor_ms={("eval", "backward"): backward_bytes / gbs * 1e3,
                              ("eval", "fwd+bwd"): (backward_bytes + in_bytes + out_bytes
                                                    + mask_bytes) / gbs * 1e3,
                              ("train", "backward"): train_backward / gbs * 1e3,
                              ("train", "fwd+bwd"): (train_backward + train_forward) / gbs
                              * 1e3})


def plan(shapes, dtypes, layouts, providers, phases, batch, bn_modes=("eval",)):
    rows = []
    for si, (model, layer, C_in, H, W, C_out, groups, stride, count) in enumerate(shapes):
        for dtype in dtypes:
            for layout in layouts:
                for bn_mode in bn_modes:
                    for phase in phases:
                        for provider in providers:
                            if provider in TRAIN_ONLY and bn_mode != "train":
                                continue
                            row = dict(model=model, layer=layer, blocks=count, C=C_in, H=H,
                                       W=W, C_out=C_out, groups=groups, cpg=C_in // groups,
                                       stride=stride, batch=batch,
                                       dtype=str(dtype).replace("torch.", ""), layout=layout,
                                       bn=bn_mode, phase=phase, provider=provider)
                            rows.append((row, (si, dtype, layout, bn_mode, phase, provider)))
    return rows


def run_row(row, job, cases, device, args):
    si, dtype, layout, bn_mode, phase, name = job
    try:
        case = cases.get(si, dtype, layout)
        row.update(floor_ms=case["floor_ms"][bn_mode, phase], n_sets=len(case["inputs"]))
        reason = available(name, device)
        if reason is not None:
            row["status"] = f"unavailable: {reason}"
            return
        provider = Provider(name, case["conv"], case["bn"], device, bn_mode)
        x0, g0 = case["inputs"][0]
        err = check(provider, x0, g0, case["conv"], case["bn"], bn_mode)
        row["max_rel_err"] = err
        if not err <= TOL[dtype]:
            row["status"] = f"wrong: max rel err {err:.2e}"
            return
        if phase == "backward":  # a saved forward per input set, its graph kept
            inputs = [(x, provider.forward(x), gy) for x, gy in case["inputs"]]

            def fn(x, y, grad_y):
                return provider.grads(x, y, grad_y, retain=True)
        else:
            inputs = case["inputs"]

            def fn(x, grad_y):
                return provider.grads(x, provider.forward(x), grad_y, retain=False)
        row.update(common.bench(fn, inputs, device, samples=args.reps,
                                target_ms=args.target_ms))
        if phase == "fwd+bwd" and device.type == "cuda":
            row["kernels"] = kernel_breakdown(fn, inputs[0])
        common.add_percent_of_floor(row, row["floor_ms"])
        row["status"] = "ok"
    except Exception as exc:  # a provider failing is a result, not a crash
        row["status"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        torch.cuda.empty_cache() if device.type == "cuda" else None


def summarize_kernels(times, top=6, width=70):
    """{kernel name: device us} -> "name us; ..." for the `top` longest (names cut to `width`),
    then the rest as one "others" entry."""
    ranked = sorted(times.items(), key=lambda kv: -kv[1])
    parts = [f"{name[:width]} {us:.1f}" for name, us in ranked[:top]]
    rest = sum(us for _, us in ranked[top:])
    if rest:
        parts.append(f"{len(ranked) - top} others {rest:.1f}")
    return "; ".join(parts)


def kernel_breakdown(fn, args):
    """The device time of each kernel that one call of fn(*args) launches (the profiler's CUDA
    activity), summarized; a failure is recorded, never raised (this is extra to the timing)."""
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(*args)
            torch.cuda.synchronize()
        times = {}
        for avg in prof.key_averages():
            us = getattr(avg, "self_device_time_total", None)
            if us is None:  # (torch before the cuda -> device renaming)
                us = getattr(avg, "self_cuda_time_total", 0)
            if us > 0:
                times[avg.key] = times.get(avg.key, 0.0) + float(us)
        return summarize_kernels(times)
    except Exception as exc:  # noqa: BLE001
        return f"unavailable: {type(exc).__name__}: {str(exc)[:100]}"


def add_speedups(rows):
    def key(r):
        return (r["model"], r["layer"], r["C"], r["H"], r["stride"], r["groups"], r["dtype"],
                r["layout"], r.get("bn", "eval"), r["phase"])

    eager = {key(r): r["p50_ms"] for r in rows
             if r.get("status") == "ok" and r["provider"] == "cudnn_eager"}
    for r in rows:
        if r.get("status") == "ok" and key(r) in eager:
            r["speedup_vs_cudnn_eager"] = eager[key(r)] / r["p50_ms"]


COLUMNS = [
    ("model", "model", "{}"), ("layer", "layer", "{}"), ("C", "C", "{}"), ("H", "H", "{}"),
    ("cpg", "cpg", "{}"), ("stride", "s", "{}"), ("dtype", "dtype", "{}"),
    ("layout", "layout", "{}"), ("bn", "bn", "{}"), ("phase", "phase", "{}"),
    ("provider", "provider", "{}"),
    ("p50_ms", "dev ms", "{:.4f}"), ("host_us_per_call", "host us", "{:.0f}"),
    ("pct_of_floor", "% floor", "{:.0f}"), ("speedup_vs_cudnn_eager", "x eager", "{:.2f}"),
    ("max_rel_err", "err", "{:.1e}"), ("status", "status", "{}"),
]


def main(argv=None):
    budget = common.TimeBudget()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=["resnext50_32x4d", "resnext101_32x8d",
                                                   "resnext101_64x4d"])
    p.add_argument("--batch", type=int)
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES))
    p.add_argument("--layouts", nargs="+", choices=["nhwc", "nchw"])
    p.add_argument("--phases", nargs="+", choices=PHASES)
    p.add_argument("--bn", nargs="+", choices=BN_MODES, default=["eval"],
                   help="BatchNorm's mode: eval (folded, the default), train (batch statistics)")
    p.add_argument("--providers", nargs="+", choices=PROVIDERS)
    p.add_argument("--shape", help="a custom shape C,H,W,groups,stride")
    p.add_argument("--reps", type=int, default=20, help="timed samples per row (default 20)")
    p.add_argument("--target-ms", type=float, default=common.TARGET_SAMPLE_MS)
    p.add_argument("--time-budget", type=float, metavar="SECONDS")
    p.add_argument("--quick", action="store_true", help="the first 3 shapes of resnext50")
    p.add_argument("--out", default=common.RESULTS_DIR)
    args = p.parse_args(argv)
    budget.seconds = args.time_budget
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    env = common.environment(device)
    providers = args.providers or (PROVIDERS if on_gpu else CPU_PROVIDERS)
    if not on_gpu:
        print("No CUDA device: the CPU providers (aten's CPU convolutions) on small shapes")
    batch = args.batch or (128 if on_gpu else 1)
    dtypes = [DTYPES[d] for d in (args.dtypes or (["fp16", "bf16"] if on_gpu else ["fp32"]))]
    layouts = args.layouts or ["nhwc", "nchw"]
    if args.shape:
        C, H, W, G, S = (int(v) for v in args.shape.split(","))
        shapes = [("custom", "custom", C, H, W, C, G, S, 1)]
    else:
        names = args.models or ["resnext50_32x4d"]
        shapes = [(m, *s) for m in names for s in grouped_conv_shapes(m)]
        if args.quick:
            shapes = shapes[:3]
    print(f"device: {env.get('gpu') or env.get('cpu')}; batch {batch}; commit "
          f"{env['git_commit']}")
    cases = Cases(shapes, batch, device)
    prefix = common.result_prefix("grouped_conv_backward", env)

    def checkpoint(rows):
        env["copy_bandwidth_gbs"] = cases._bandwidth and round(cases._bandwidth, 3)
        common.write_results(prefix, env, rows, args.out)

    torch.backends.cudnn.benchmark = True
    jobs = plan(shapes, dtypes, layouts, providers, args.phases or PHASES, batch, args.bn)
    with common.sigterm_as_interrupt():
        interrupted = common.run_rows(
            jobs, lambda row, job: run_row(row, job, cases, device, args), budget,
            "backward bench", checkpoint)
    rows = [row for row, _ in jobs]
    env["copy_bandwidth_gbs"] = cases._bandwidth and round(cases._bandwidth, 3)
    add_speedups(rows)
    print()
    print(common.format_table(rows, COLUMNS))
    json_path, csv_path = common.write_results(prefix, env, rows, args.out)
    print(f"\nwrote {json_path}\n      {csv_path}")
    bad = [r for r in rows if str(r.get("status", "")).startswith("wrong")]
    if bad:
        print(f"{len(bad)} provider results were WRONG against float64", file=sys.stderr)
        return 1
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

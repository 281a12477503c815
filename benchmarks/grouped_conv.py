"""Per-layer benchmark: grouped 3x3 conv + BN + ReLU on every grouped-conv shape of ResNeXt models.

Providers (each checked against a float64 reference before it is timed):
  cudnn_eager           nn.Conv2d(groups) + nn.BatchNorm2d (eval) + nn.ReLU, eager
  cudnn_folded          BN folded into the conv weights and bias, one conv + in-place ReLU
  compile_max_autotune  torch.compile(conv + BN + ReLU, mode="max-autotune-no-cudagraphs")
  reference             the op with backend="reference" (BN folded per call, then cuDNN): what
                        "auto" runs without a table entry, the baseline of auto_table.py
  triton, cuda          resnext_kernels.grouped_conv_bn_relu with that backend; rows record
                        the kernel that ran (cuda_path; triton_path, and for Triton v3 the
                        launch configuration: triton_config)
  triton_v2             the triton backend with RESNEXT_KERNELS_TRITON_V3=0: Triton v2 on the
                        calls v3 takes (not in --quick runs)
  cuda_v3_band128/64    the cuda backend with RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS 128 or 64
Weights: by default in the input's memory format, as `model.to(memory_format=torch.channels_last)`
leaves a model's conv weights (cuDNN's grouped conv is much slower on a channels_last input with
contiguous weights); --weight-layout contiguous keeps them NCHW whatever the input, as every
results file without a weight_layout field was measured. Each row records weight_layout.
Without a GPU only cudnn_eager and cudnn_folded run (on the CPU, small shapes), and the script
says that the GPU providers were skipped.

Timing (benchmarks/common.py says how): per row
  p20_ms, p50_ms, p80_ms    device time per call: the GPU's time for a call with calls queued
                            back to back (no host time in it), over `samples` samples of
                            `calls_per_sample` calls; device_timing "queued" (or "unqueued":
                            see common.py; "wall" on the CPU)
  host_us_per_call          CPU time to issue one call (Python, dispatch, launch)
  graph_p20_ms, graph_p50_ms, graph_p80_ms
                            per call when `graph_calls_per_sample` calls replay as one CUDA
                            graph; graph_status "ok", or why not (capture failed, ...)
Calls rotate over n_sets input sets that together exceed the L2 cache several times.
Derived from p50_ms: TFLOP/s, achieved GB/s (input + output bytes), pct_of_floor (floor_ms,
those bytes at the copy bandwidth measured here, over p50_ms), speed-up over cuDNN eager (best of
NCHW and channels_last) and over cuDNN with BN folded; graph_pct_of_floor from graph_p50_ms.
--time-budget SECONDS: no row starts after that; the rest are written with status
"not run: time budget". The result files are rewritten after every row (and on SIGTERM), so a
run stopped from outside leaves what it finished. Results: console table, CSV + JSON with the
environment under benchmarks/results/ (or --out), and a PNG chart when matplotlib is installed.
Exit status 1 if any provider's output (or its CUDA-graph replay) was wrong, 130 if interrupted.

  python benchmarks/grouped_conv.py --quick
  python benchmarks/grouped_conv.py --models resnext50_32x4d --batch 128 --dtypes fp16 bf16
  python benchmarks/grouped_conv.py --shape 256,56,56,32,2        # C,H,W,groups,stride
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

import resnext_kernels as rk  # noqa: E402
from resnext_kernels import backends  # noqa: E402
from resnext_kernels.backends.cuda_plan import cuda_conv_path  # noqa: E402
from resnext_kernels.backends.triton_plan import sub_blocks, triton_conv_path  # noqa: E402
from resnext_kernels.models.shapes import grouped_conv_shapes  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# "reference" is the op with backend="reference" (what "auto" runs when no table entry says
# otherwise: BN folded per call, then cuDNN), the baseline benchmarks/auto_table.py compares with.
# "cuda_v3_band128", "cuda_v3_band64": the cuda backend with RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS
# at 128 or 64 (v3's bands are up to 256 output pixels): more, smaller CTAs, for more halo rows
# re-read; the GPU plan's bench step runs them beside "cuda" to measure which way v3 should go.
V3_BAND_PROVIDERS = {"cuda_v3_band128": 128, "cuda_v3_band64": 64}
# "triton_v2": the triton backend with RESNEXT_KERNELS_TRITON_V3=0 (Triton v2 on the calls v3
# takes), to measure what v3 changed.
GPU_PROVIDERS = ["cudnn_eager", "cudnn_folded", "compile_max_autotune", "reference", "triton",
                 "triton_v2", "cuda", *V3_BAND_PROVIDERS]
CPU_PROVIDERS = ["cudnn_eager", "cudnn_folded"]
TOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 8e-2}  # relative to max |ref|


def make_layer(C_in, C_out, groups, stride, device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(C_in, C_out, 3, stride=stride, padding=1, groups=groups, bias=False)
    bn = nn.BatchNorm2d(C_out)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / (3 * (C_in // groups) ** 0.5))
        bn.weight.copy_(torch.rand(C_out, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(C_out, generator=g) * 0.2)
        bn.running_mean.copy_(torch.randn(C_out, generator=g) * 0.2)
        bn.running_var.copy_(torch.rand(C_out, generator=g) + 0.5)
    return conv.to(device, dtype).eval(), bn.to(device).eval()


def provider_fn(name, conv, bn, dtype, device):
    """A callable x -> y for a provider, or a string saying why it is unavailable."""
    scale, shift = rk.fold_batchnorm(bn)
    folded_w = (conv.weight.float() * scale.view(-1, 1, 1, 1)).to(dtype)
    folded_b = shift.to(dtype)
    # BN keeps fp32 parameters whatever the activations' dtype, as in an AMP model
    if name == "cudnn_eager":
        relu = nn.ReLU(inplace=True)
        return lambda x: relu(bn(conv(x)))
    if name == "cudnn_folded":
        return lambda x: F.conv2d(x, folded_w, folded_b, conv.stride, conv.padding, 1,
                                  conv.groups).relu_()
    if name == "compile_max_autotune":
        if device.type != "cuda":
            return "GPU only"
        # A fresh Dynamo cache per row: every row compiles nn.Sequential.forward again, and past
        # the recompile limit (8) Dynamo would silently run it eagerly. No CUDA graphs inside:
        # Inductor's would copy each rotated input into its static buffer (an extra pass over
        # the input) on every call; the graph_* fields time a CUDA graph of every provider alike.
        torch._dynamo.reset()
        block = nn.Sequential(conv, bn, nn.ReLU()).eval()
        return torch.compile(block, mode="max-autotune-no-cudagraphs")
    if name in ("reference", "triton", "cuda"):
        ok, reason = backends.backend_status(name, device.type)
        if not ok:
            return reason
        return lambda x: rk.grouped_conv_bn_relu(x, conv.weight, scale, shift, stride=conv.stride,
                                                 groups=conv.groups, backend=name)
    if name == "triton_v2":
        ok, reason = backends.backend_status("triton", device.type)
        if not ok:
            return reason
        return lambda x: with_environment(
            "RESNEXT_KERNELS_TRITON_V3", "0",
            lambda: rk.grouped_conv_bn_relu(x, conv.weight, scale, shift, stride=conv.stride,
                                            groups=conv.groups, backend="triton"))
    if name in V3_BAND_PROVIDERS:
        ok, reason = backends.backend_status("cuda", device.type)
        if not ok:
            return reason

        def smaller_bands(x):  # the glue reads the variable on every call
            return with_environment(
                "RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS", str(V3_BAND_PROVIDERS[name]),
                lambda: rk.grouped_conv_bn_relu(x, conv.weight, scale, shift,
                                                stride=conv.stride, groups=conv.groups,
                                                backend="cuda"))
        return smaller_bands
    return f"unknown provider {name}"


def triton_v3_config(cpg):
    """The launch configuration of the last v3 call at cpg channels per group: the one Triton's
    autotuner chose (BLOCK_M, warps, NUM_STAGES: 1 is L1-cached loads, 3 a cp.async pipeline),
    or the fixed one."""
    import importlib

    launcher = importlib.import_module("resnext_kernels.backends.triton.grouped_conv_bn_relu")
    nsub = sub_blocks(cpg)[0]
    if launcher._autotune_enabled():
        config = getattr(launcher._launchable_v3_kernel(False, True, nsub), "best_config", None)
    else:  # RESNEXT_KERNELS_TRITON_AUTOTUNE=0: the fixed configuration ran
        config = launcher._V3_FIXED_GPU_CONFIG[nsub]
    if config is None:
        return None
    return dict(config.kwargs, num_warps=config.num_warps)


def with_environment(variable, value, call):
    """call() with the environment variable set (the kernels read it on every call), then the
    variable as it was: a user's own value still holds for the other providers."""
    before = os.environ.get(variable)
    os.environ[variable] = value
    try:
        return call()
    finally:
        if before is None:
            del os.environ[variable]
        else:
            os.environ[variable] = before


def check(fn, x, conv, bn):
    """Max error relative to max |ref| against float64, on the first two images of a call on the
    whole batch (the batch that is timed: a compiled provider sees no second shape)."""
    bn64 = copy.deepcopy(bn).double()
    with torch.no_grad():
        got = fn(x)[:2].double()
        ref = torch.relu(bn64(F.conv2d(x[:2].double(), conv.weight.double(), None,
                                       conv.stride, conv.padding, 1, conv.groups)))
    return common.relative_error(got, ref)


class Cases(common.CaseCache):
    """The layer and the rotated input sets of the rows being run: made when a row first needs
    them, dropped when a row needs another (one shape's inputs in memory at a time)."""

    weight_layout = "input"  # or "contiguous" (--weight-layout)

    def make(self, si, dtype, layout):
        _model, _layer, C_in, H, W, C_out, groups, stride, _count = self.shapes[si]
        conv, bn = make_layer(C_in, C_out, groups, stride, self.device, dtype, seed=si)
        if self.weight_layout == "input" and layout == "nhwc":
            conv = conv.to(memory_format=torch.channels_last)
        H_out, W_out = (H - 1) // stride + 1, (W - 1) // stride + 1
        elem = torch.finfo(dtype).bits // 8
        in_bytes = self.batch * C_in * H * W * elem
        nbytes = in_bytes + self.batch * C_out * H_out * W_out * elem
        fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        g = torch.Generator(device=self.device).manual_seed(1000 + si)
        inputs = [(torch.randn(self.batch, C_in, H, W, device=self.device, generator=g)
                   .to(dtype).contiguous(memory_format=fmt),)
                  for _ in range(common.rotation_sets(in_bytes, self.device))]
        return dict(conv=conv, bn=bn, inputs=inputs, nbytes=nbytes,
                    flops=2 * self.batch * C_out * H_out * W_out * 9 * (C_in // groups),
                    floor_ms=nbytes / (self.bandwidth_gbs() * 1e9) * 1e3)


def weight_layout_of(layout, weight_layout):
    """The weights' layout in a row: "nhwc" (channels_last) or "nchw"."""
    return layout if weight_layout == "input" else "nchw"


def plan(shapes, dtypes, layouts, providers, batch, on_gpu, weight_layout="input"):
    """[(row, job)]: a row's identifying fields, and what run_row needs to measure it."""
    rows = []
    for si, (model, layer, C_in, H, W, C_out, groups, stride, count) in enumerate(shapes):
        for dtype in dtypes:
            for layout in layouts:
                for provider in providers:
                    # on the CPU the "cudnn" providers are aten's CPU convolutions: say so
                    label = provider if on_gpu else provider.replace("cudnn_", "aten_cpu_")
                    row = dict(model=model, layer=layer, blocks=count, C=C_in, H=H, W=W,
                               C_out=C_out, groups=groups, cpg=C_in // groups, stride=stride,
                               batch=batch, dtype=str(dtype).replace("torch.", ""),
                               layout=layout,
                               weight_layout=weight_layout_of(layout, weight_layout),
                               provider=label)
                    rows.append((row, (si, dtype, layout, provider)))
    return rows


def run_row(row, job, cases, device, args):
    si, dtype, layout, provider = job

    def derive(row, case):
        t = row["p50_ms"] * 1e-3
        row.update(tflops=case["flops"] / t / 1e12, gbs=case["nbytes"] / t / 1e9)
        if (provider == "cuda" or provider in V3_BAND_PROVIDERS) and device.type == "cuda":
            # which of our CUDA kernels ran: reports compare a kernel's measurement with its own
            # prediction only (rows without the field predate v3: "wmma" or "direct")
            conv, x = case["conv"], case["inputs"][0][0]
            row["cuda_path"] = cuda_conv_path(
                x, conv.weight, conv.stride, conv.padding, conv.dilation, conv.groups,
                device_major=torch.cuda.get_device_capability(device)[0],
                allow_tf32=torch.backends.cudnn.allow_tf32)
            if provider in V3_BAND_PROVIDERS:
                row["cuda_v3_band_pixels"] = V3_BAND_PROVIDERS[provider]
        if provider in ("triton", "triton_v2") and device.type == "cuda":
            # which Triton kernel ran (rows without the field predate v3: "v2")
            conv, x = case["conv"], case["inputs"][0][0]
            row["triton_path"] = "v2" if provider == "triton_v2" else triton_conv_path(
                x, conv.weight, conv.stride, conv.padding, conv.dilation, conv.groups)
            if row["triton_path"] == "v3":  # what the autotuner chose (the last call's shape)
                row["triton_config"] = triton_v3_config(conv.in_channels // conv.groups)

    common.measure_row(
        row, lambda: cases.get(si, dtype, layout),
        lambda case: provider_fn(provider, case["conv"], case["bn"], dtype, device),
        lambda fn, case: check(fn, case["inputs"][0][0], case["conv"], case["bn"]),
        TOL[dtype], device, args, derive)


def run(args, budget=None):
    """Returns (env, rows, skipped providers, interrupted)."""
    budget = budget or common.TimeBudget(args.time_budget)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    on_gpu = device.type == "cuda"
    env = common.environment(device)
    providers = args.providers or (GPU_PROVIDERS if on_gpu else CPU_PROVIDERS)
    skipped = [p for p in GPU_PROVIDERS if p not in providers]
    if not on_gpu:
        skipped = [p for p in GPU_PROVIDERS if p not in CPU_PROVIDERS]
        print("No CUDA device: running the CPU providers (eager conv+BN+ReLU vs the folded "
              f"reference) on small shapes; GPU providers skipped: {', '.join(skipped)}")
    if args.quick and on_gpu and not args.providers:
        providers = [p for p in providers if p not in (
            "compile_max_autotune", "triton_v2", *V3_BAND_PROVIDERS)]
    batch = args.batch or (128 if on_gpu else 1)
    dtypes = [DTYPES[d] for d in (args.dtypes or (["fp16", "bf16"] if on_gpu else ["fp32"]))]
    layouts = args.layouts or ["nhwc", "nchw"]

    if args.shape:
        C, H, W, G, S = (int(v) for v in args.shape.split(","))
        shapes = [("custom", "custom", C, H, W, C, G, S, 1)]
    else:
        names = args.models or (["resnext50_32x4d"] if args.quick or not on_gpu else
                                ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"])
        shapes = [(m, *s) for m in names for s in grouped_conv_shapes(m)]
        if args.quick:
            shapes = shapes[:3]
    print(f"device: {env.get('gpu') or env.get('cpu')}; batch {batch}; commit "
          f"{env['git_commit']}" + (f"; time budget {args.time_budget:g} s"
                                    if args.time_budget is not None else ""))

    cases = Cases(shapes, batch, device)
    cases.weight_layout = args.weight_layout
    prefix = common.result_prefix("grouped_conv", env)
    env["skipped_providers"] = skipped

    def checkpoint(rows):
        env["copy_bandwidth_gbs"] = cases._bandwidth and round(cases._bandwidth, 3)
        common.write_results(prefix, env, rows, args.out)

    torch.backends.cudnn.benchmark = True
    jobs = plan(shapes, dtypes, layouts, providers, batch, on_gpu, args.weight_layout)
    interrupted = common.run_rows(jobs, lambda row, job: run_row(row, job, cases, device, args),
                                  budget, "bench", checkpoint)
    rows = [row for row, _ in jobs]
    env["copy_bandwidth_gbs"] = cases._bandwidth and round(cases._bandwidth, 3)
    add_speedups(rows)
    return env, rows, skipped, interrupted


def add_speedups(rows):
    """speedup_vs_cudnn_eager (best of its layouts) and speedup_vs_cudnn_folded (same layout),
    both from p50 device times."""
    def key(r):
        return (r["model"], r["layer"], r["C"], r["H"], r["stride"], r["groups"], r["dtype"])

    best_eager, folded = {}, {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        if r["provider"].endswith("_eager"):
            best_eager[key(r)] = min(best_eager.get(key(r), float("inf")), r["p50_ms"])
        if r["provider"].endswith("_folded"):
            folded[key(r) + (r["layout"],)] = r["p50_ms"]
    for r in rows:
        if r.get("status") == "ok":
            if key(r) in best_eager:
                r["speedup_vs_cudnn_eager"] = best_eager[key(r)] / r["p50_ms"]
            if key(r) + (r["layout"],) in folded:
                r["speedup_vs_cudnn_folded"] = folded[key(r) + (r["layout"],)] / r["p50_ms"]


# The console table: device time first, then what it costs to issue, then the graph time; p20,
# p80, GB/s and the full status texts are in the files.
COLUMNS = [
    ("model", "model", "{}"), ("layer", "layer", "{}"), ("C", "C", "{}"), ("H", "H", "{}"),
    ("cpg", "cpg", "{}"), ("stride", "s", "{}"), ("dtype", "dtype", "{}"),
    ("layout", "layout", "{}"), ("provider", "provider", "{}"),
    ("p50_ms", "dev ms", "{:.4f}"), ("host_us_per_call", "host us", "{:.0f}"),
    ("calls_per_sample", "K", "{}"), ("graph_p50_ms", "graph ms", "{:.4f}"),
    ("pct_of_floor", "% floor", "{:.0f}"), ("graph_pct_of_floor", "% fl g", "{:.0f}"),
    ("tflops", "TFLOP/s", "{:.1f}"),
    ("speedup_vs_cudnn_eager", "x eager", "{:.2f}"), ("speedup_vs_cudnn_folded", "x folded", "{:.2f}"),
    ("status", "status", "{}"), ("graph", "graph", "{}"),
]
LEGEND = ("dev ms: device time per call (p50; GPU time with calls queued back to back, wall "
          "time on the CPU); host us: CPU time to issue one call;\nK: calls per timed sample; "
          "graph ms: per call replayed in a CUDA graph; % floor, % fl g: memory floor / dev ms, "
          "/ graph ms")


def short_status(text):
    """"capture failed: RuntimeError: ..." -> "capture failed" (the files hold the rest)."""
    return None if text is None else str(text).split(":", 1)[0]


def console_table(rows, columns, legend):
    shown = [dict(r, graph=short_status(r.get("graph_status"))) for r in rows]
    return legend + "\n" + common.format_table(shown, columns)


def chart(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart")
        return None
    ours = [r for r in rows if r.get("status") == "ok" and r["provider"] in ("triton", "cuda")]
    if not ours:
        ours = [r for r in rows if r.get("status") == "ok"]
    if not ours:
        return None
    labels = sorted({f"{r['model'][:12]} {r['layer']} {r['dtype']} {r['layout']}" for r in ours})
    provs = sorted({r["provider"] for r in ours})
    fig, axes = plt.subplots(2, 1, figsize=(max(8, len(labels) * 0.6), 8), sharex=True)
    width = 0.8 / max(len(provs), 1)
    for pi, prov in enumerate(provs):
        by = {f"{r['model'][:12]} {r['layer']} {r['dtype']} {r['layout']}": r for r in ours
              if r["provider"] == prov}
        xs = [i + pi * width for i in range(len(labels))]
        axes[0].bar(xs, [by.get(lab, {}).get("speedup_vs_cudnn_eager", 0) for lab in labels],
                    width, label=prov)
        axes[1].bar(xs, [by.get(lab, {}).get("pct_of_floor", 0) for lab in labels], width,
                    label=prov)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_ylabel("speed-up vs cuDNN eager (best layout)")
    axes[1].set_ylabel("% of memory floor")
    axes[1].set_xticks(range(len(labels)))
    axes[1].set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    budget = common.TimeBudget()  # started now: the budget covers the whole script
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=["resnext50_32x4d", "resnext101_32x8d",
                                                   "resnext101_64x4d", "seresnext50_32x4d"])
    p.add_argument("--batch", type=int)
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES))
    p.add_argument("--layouts", nargs="+", choices=["nhwc", "nchw"])
    p.add_argument("--providers", nargs="+", choices=GPU_PROVIDERS)
    p.add_argument("--shape", help="a custom shape C,H,W,groups,stride")
    p.add_argument("--weight-layout", choices=["input", "contiguous"], default="input",
                   help="conv weights in the input's memory format (default, as a channels_last "
                        "model has them) or always contiguous (NCHW)")
    p.add_argument("--reps", type=int, default=30, help="timed samples per row (default 30)")
    p.add_argument("--target-ms", type=float, default=common.TARGET_SAMPLE_MS,
                   help="GPU work per sample; K calls per sample follow from it (default 1)")
    p.add_argument("--no-graphs", action="store_true", help="no CUDA-graph timing")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="start no row after this many seconds; the rest are written with "
                        f"status '{common.NOT_RUN_BUDGET}'")
    p.add_argument("--quick", action="store_true", help="few shapes, no max-autotune")
    p.add_argument("--cpu", action="store_true", help="run the CPU providers even with a GPU")
    p.add_argument("--out", default=common.RESULTS_DIR, help="directory for the result files")
    args = p.parse_args(argv)
    budget.seconds = args.time_budget
    with common.sigterm_as_interrupt():
        env, rows, skipped, interrupted = run(args, budget)
    print()
    print(console_table(rows, COLUMNS, LEGEND))
    prefix = common.result_prefix("grouped_conv", env)
    json_path, csv_path = common.write_results(prefix, env, rows, args.out)
    png = None if interrupted else chart(rows, os.path.join(args.out, prefix + ".png"))
    print(f"\nwrote {json_path}\n      {csv_path}" + (f"\n      {png}" if png else ""))
    return exit_code(rows, interrupted)


def exit_code(rows, interrupted):
    """1 if any result (eager or CUDA-graph replay) was wrong, 130 if interrupted, else 0."""
    bad = [r for r in rows if str(r.get("status", "")).startswith("wrong")
           or str(r.get("graph_status", "")).startswith("wrong")]
    not_run = sum(str(r.get("status", "")).startswith("not run") for r in rows)
    if not_run:
        print(f"{not_run} rows not run ({'interrupted' if interrupted else 'time budget'})")
    if bad:
        print(f"{len(bad)} provider results were WRONG against the float64 reference or the "
              "eager output", file=sys.stderr)
        return 1
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

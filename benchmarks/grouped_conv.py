"""Per-layer benchmark: grouped 3x3 conv + BN + ReLU on every grouped-conv shape of ResNeXt models.

Providers (each checked against a float64 reference before it is timed):
  cudnn_eager           nn.Conv2d(groups) + nn.BatchNorm2d (eval) + nn.ReLU, eager
  cudnn_folded          BN folded into the conv weights and bias, one conv + in-place ReLU
                        (this is also our "reference" backend)
  compile_max_autotune  torch.compile(conv + BN + ReLU, mode="max-autotune")
  triton, cuda          resnext_kernels.grouped_conv_bn_relu with that backend
Without a GPU only cudnn_eager and cudnn_folded run (on the CPU, small shapes), and the script
says that the GPU providers were skipped.

Metrics: p20/p50/p80 time, TFLOP/s, achieved GB/s (input + output bytes), percent of the memory
floor (those bytes at the copy bandwidth measured here), speed-up over cuDNN eager (best of NCHW
and channels_last) and over cuDNN with BN folded. Results: console table, CSV + JSON with the
environment under benchmarks/results/ (or --out), and a PNG chart when matplotlib is installed.

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
from resnext_kernels import backends, models  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# "reference" is the op with backend="reference" (what "auto" runs when no table entry says
# otherwise: BN folded per call, then cuDNN), the baseline benchmarks/auto_table.py compares with.
GPU_PROVIDERS = ["cudnn_eager", "cudnn_folded", "compile_max_autotune", "reference", "triton",
                 "cuda"]
CPU_PROVIDERS = ["cudnn_eager", "cudnn_folded"]
TOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 8e-2}  # relative to max |ref|


def grouped_conv_shapes(model_name: str, image: int = 224):
    """Every distinct grouped-conv shape of a model, read from its definition (meta tensors):
    [(layer, C_in, H, W, C_out, groups, stride, count)]."""
    with torch.device("meta"):
        model = getattr(models, model_name)().eval()
    found = {}

    def hook(name):
        def record(module, inputs, _output):
            x = inputs[0]
            key = (x.shape[1], x.shape[2], x.shape[3], module.out_channels, module.groups,
                   module.stride[0])
            layer, count = found.get(key, (name.rsplit(".conv", 1)[0], 0))
            found[key] = (layer, count + 1)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and m.groups > 1 and m.kernel_size == (3, 3)]
    with torch.no_grad():
        model(torch.empty(1, 3, image, image, device="meta"))
    for h in handles:
        h.remove()
    return [(layer, *key, count) for key, (layer, count) in found.items()]


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
        block = nn.Sequential(conv, bn, nn.ReLU()).eval()
        return torch.compile(block, mode="max-autotune")
    if name in ("reference", "triton", "cuda"):
        ok, reason = backends.backend_status(name, device.type)
        if not ok:
            return reason
        return lambda x: rk.grouped_conv_bn_relu(x, conv.weight, scale, shift, stride=conv.stride,
                                                 groups=conv.groups, backend=name)
    return f"unknown provider {name}"


def check(fn, x, conv, bn, dtype):
    """Max error relative to max |ref|, on two images of the batch, against float64."""
    xs = x[:2]
    bn64 = copy.deepcopy(bn).double()
    with torch.no_grad():
        ref = torch.relu(bn64(F.conv2d(xs.double(), conv.weight.double(), None,
                                       conv.stride, conv.padding, 1, conv.groups)))
        got = fn(xs).double()
    err = (got - ref).abs().max().item() / max(ref.abs().max().item(), 1e-6)
    return err


def run(args):
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
        providers = [p for p in providers if p != "compile_max_autotune"]
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

    bw = common.copy_bandwidth_gbs(device)
    env["copy_bandwidth_gbs"] = round(bw, 1)
    print(f"device: {env.get('gpu') or env.get('cpu')}; copy bandwidth {bw:.0f} GB/s; "
          f"batch {batch}; commit {env['git_commit']}")

    rows = []
    progress = common.Progress(len(shapes) * len(dtypes) * len(layouts) * len(providers), "bench")
    torch.backends.cudnn.benchmark = True
    for si, (model, layer, C_in, H, W, C_out, groups, stride, count) in enumerate(shapes):
        for dtype in dtypes:
            conv, bn = make_layer(C_in, C_out, groups, stride, device, dtype, seed=si)
            H_out, W_out = (H - 1) // stride + 1, (W - 1) // stride + 1
            elem = torch.finfo(dtype).bits // 8
            nbytes = batch * (C_in * H * W + C_out * H_out * W_out) * elem
            flops = 2 * batch * C_out * H_out * W_out * 9 * (C_in // groups)
            floor_ms = nbytes / (bw * 1e9) * 1e3
            for layout in layouts:
                fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
                g = torch.Generator(device=device).manual_seed(1000 + si)
                n_sets = 1 if not on_gpu else max(2, min(8, (256 << 20) // max(nbytes, 1) + 1))
                inputs = [(torch.randn(batch, C_in, H, W, device=device, generator=g)
                           .to(dtype).contiguous(memory_format=fmt),) for _ in range(n_sets)]
                for provider in providers:
                    # on the CPU the "cudnn" providers are aten's CPU convolutions: say so
                    label = provider if on_gpu else provider.replace("cudnn_", "aten_cpu_")
                    row = dict(model=model, layer=layer, blocks=count, C=C_in, H=H, W=W,
                               C_out=C_out, groups=groups, cpg=C_in // groups, stride=stride,
                               batch=batch, dtype=str(dtype).replace("torch.", ""),
                               layout=layout, provider=label, floor_ms=floor_ms)
                    fn = provider_fn(provider, conv, bn, dtype, device)
                    if isinstance(fn, str):
                        row["status"] = f"unavailable: {fn}"
                    else:
                        try:
                            err = check(fn, inputs[0][0], conv, bn, dtype)
                            row["max_rel_err"] = err
                            if err > TOL[dtype]:
                                row["status"] = f"wrong: max rel err {err:.2e}"
                            else:
                                with torch.no_grad():
                                    row.update(common.bench(fn, inputs, device,
                                                            reps=args.reps))
                                t = row["p50_ms"] * 1e-3
                                row.update(status="ok", tflops=flops / t / 1e12,
                                           gbs=nbytes / t / 1e9,
                                           pct_of_floor=100 * floor_ms / row["p50_ms"])
                        except Exception as exc:  # a provider failing is a result, not a crash
                            row["status"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
                    rows.append(row)
                    progress.step(f"{model} {layer} {row['dtype']} {layout} {provider}")
    add_speedups(rows)
    return env, rows, skipped


def add_speedups(rows):
    """speedup_vs_cudnn_eager (best of its layouts) and speedup_vs_cudnn_folded (same layout)."""
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


COLUMNS = [
    ("model", "model", "{}"), ("layer", "layer", "{}"), ("C", "C", "{}"), ("H", "H", "{}"),
    ("cpg", "cpg", "{}"), ("stride", "s", "{}"), ("dtype", "dtype", "{}"),
    ("layout", "layout", "{}"), ("provider", "provider", "{}"), ("p50_ms", "p50 ms", "{:.4f}"),
    ("p20_ms", "p20", "{:.4f}"), ("p80_ms", "p80", "{:.4f}"), ("tflops", "TFLOP/s", "{:.1f}"),
    ("gbs", "GB/s", "{:.0f}"), ("pct_of_floor", "% floor", "{:.0f}"),
    ("speedup_vs_cudnn_eager", "x eager", "{:.2f}"), ("speedup_vs_cudnn_folded", "x folded", "{:.2f}"),
    ("status", "status", "{}"),
]


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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=["resnext50_32x4d", "resnext101_32x8d",
                                                   "resnext101_64x4d", "seresnext50_32x4d"])
    p.add_argument("--batch", type=int)
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES))
    p.add_argument("--layouts", nargs="+", choices=["nhwc", "nchw"])
    p.add_argument("--providers", nargs="+", choices=GPU_PROVIDERS)
    p.add_argument("--shape", help="a custom shape C,H,W,groups,stride")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="few shapes, no max-autotune")
    p.add_argument("--cpu", action="store_true", help="run the CPU providers even with a GPU")
    p.add_argument("--out", default=common.RESULTS_DIR, help="directory for the result files")
    args = p.parse_args(argv)
    env, rows, skipped = run(args)
    print()
    print(common.format_table(rows, COLUMNS))
    prefix = common.result_prefix("grouped_conv", env)
    env["skipped_providers"] = skipped
    json_path, csv_path = common.write_results(prefix, env, rows, args.out)
    png = chart(rows, os.path.join(args.out, prefix + ".png"))
    print(f"\nwrote {json_path}\n      {csv_path}" + (f"\n      {png}" if png else ""))
    bad = [r for r in rows if str(r.get("status", "")).startswith("wrong")]
    if bad:
        print(f"{len(bad)} provider results were WRONG against the float64 reference", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

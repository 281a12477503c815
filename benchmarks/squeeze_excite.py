"""Per-stage benchmark: the squeeze-excite bottleneck tail relu(u * SE(u) + residual) of every SE
stage of seresnext50_32x4d, as SEBottleneck runs it (se -> += shortcut -> act3).

Shapes come from the model's definition (meta tensors): u and the residual are [N, C, H, W]
with C = 256, 512, 1024, 2048 at 56², 28², 14², 7² for a 224² image; the SE reduces C to
R = C/16 (timm's make_divisible). Providers (each checked against a float64 reference before
it is timed):
  eager      timm's SEModule (mean -> fc1 -> ReLU -> fc2 -> sigmoid -> u * gate), then
             += residual and an in-place ReLU, eager PyTorch (the unfused model)
  reference  resnext_kernels.squeeze_excite(..., residual=, relu=True, backend="reference")
  triton     the same op, backend="triton"
  cuda       the same op, backend="cuda"
Without a GPU: eager and reference on the CPU, batch 1, small images (the stage shapes of a
64² input), fp32: a smoke run; the script says which providers it skipped (triton runs on CPU
tensors only under the interpreter, far too slow to time: ask for it with --providers).
--backward: each call is the tail's forward and backward (torch.autograd.grad of the output
with a fixed random gradient, for u, the residual and the four FC parameters: a training
step's SE), the op's backward being resnext_kernels::squeeze_excite_backward; checked against
float64 autograd on the whole batch (every gradient within the tolerance).

Timing (benchmarks/common.py says how), per row: p20_ms/p50_ms/p80_ms device time per call with
calls queued back to back, host_us_per_call the CPU time to issue one, graph_p20_ms/
graph_p50_ms/graph_p80_ms per call replayed in a CUDA graph (graph_status says why not when
there is none), samples, calls_per_sample, device_timing; calls rotate over n_sets input sets
(u and residual) that together exceed the L2 cache several times.
Floor: the 3-pass floor, u read + residual read + output written once each (floor_ms: those
bytes at the copy bandwidth measured here); with --backward the 8-pass floor, those 3 and the
backward's grad_out, u and residual read (the ReLU's mask) and grad_u and grad_residual
written; pct_of_floor = floor_ms / p50_ms,
graph_pct_of_floor = floor_ms / graph_p50_ms. A fused kernel that reads u twice (pool, then
scale) moves a 4th pass unless the second read hits L2. speedup_vs_eager: the best eager layout
over p50_ms; speedup_vs_reference: the same layout's reference over p50_ms.
--time-budget SECONDS: no row starts after that; the rest are written with status
"not run: time budget" (the files are rewritten after every row, and on SIGTERM).
Results: console table, CSV + JSON (environment included) under benchmarks/results/ (or --out).
Exit status 1 if any provider's output (or its CUDA-graph replay) was wrong, 130 if interrupted.

  python benchmarks/squeeze_excite.py --quick
  python benchmarks/squeeze_excite.py --batch 128 --dtypes fp16 bf16
  python benchmarks/squeeze_excite.py --batch 128 --dtypes fp16 --backward
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import resnext_kernels as rk  # noqa: E402
from resnext_kernels import backends, models  # noqa: E402
from resnext_kernels.models.shapes import se_shapes  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GPU_PROVIDERS = ["eager", "reference", "triton", "cuda"]
CPU_PROVIDERS = ["eager", "reference"]
TOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 8e-2}  # relative to max |ref|


def make_se(C, device, dtype, seed):
    """The model's SEModule with weights that keep the gate away from 0 and 1 (a saturated
    sigmoid would hide errors in the excite path)."""
    g = torch.Generator().manual_seed(seed)
    se = models.SEModule(C)
    R = se.fc1.out_channels
    with torch.no_grad():
        se.fc1.weight.copy_(torch.randn(se.fc1.weight.shape, generator=g) / C**0.5)
        se.fc1.bias.copy_(torch.randn(R, generator=g) * 0.1)
        se.fc2.weight.copy_(torch.randn(se.fc2.weight.shape, generator=g) / R**0.5)
        se.fc2.bias.copy_(torch.randn(C, generator=g) * 0.1)
    # in the model's dtype, as in a model converted with .half(); under autocast the FCs also
    # run in 16 bits
    return se.to(device, dtype).eval()


def provider_fn(name, se, device):
    """A callable (u, residual) -> out for a provider, or a string saying why it is unavailable."""
    if name == "eager":
        act3 = nn.ReLU(inplace=True)

        def eager(u, residual):
            x = se(u)  # a new tensor: the in-place ops below never touch the inputs
            x += residual
            return act3(x)
        return eager
    if name in backends.BACKENDS:
        ok, reason = backends.backend_status(name, device.type)
        if not ok:
            return reason
        w1, b1, w2, b2 = se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias
        return lambda u, residual: rk.squeeze_excite(u, w1, b1, w2, b2, residual=residual,
                                                     relu=True, backend=name)
    return f"unknown provider {name}"


def fc_params(se):
    return [se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias]


def with_backward(forward, se, grad_out):
    """(u, residual) -> the gradients of forward(u, residual) for u, the residual and the FC
    parameters, with grad_out (a training step's SE, forward and backward)."""
    def step(u, residual):
        with torch.enable_grad():
            u, residual = u.requires_grad_(), residual.requires_grad_()
            out = forward(u, residual)
            return torch.autograd.grad(out, [u, residual, *fc_params(se)], grad_out)
    return step


def tail64(u, residual, w1, b1, w2, b2):
    """The tail relu(u * gate + residual), every argument float64 (the FC weights in 1x1-conv
    form)."""
    hidden = torch.relu(F.linear(u.mean((2, 3)), w1.flatten(1), b1))
    gate = torch.sigmoid(F.linear(hidden, w2.flatten(1), b2))
    return torch.relu(u * gate[:, :, None, None] + residual)


def check_backward(fn, u, residual, se, grad_out):
    """The largest error, relative to its max |ref|, of the gradients against float64 autograd
    on the whole batch (the FC gradients sum over every image)."""
    got = fn(u, residual)
    leaves = [t.detach().double().requires_grad_() for t in (u, residual, *fc_params(se))]
    with torch.enable_grad():
        exp = torch.autograd.grad(tail64(*leaves), leaves, grad_out.double())
    return max(common.relative_error(g, e) for g, e in zip(got, exp))


def check(fn, u, residual, se):
    """Max error relative to max |ref| against float64, on the first two images of a call on
    the whole batch."""
    with torch.no_grad():
        got = fn(u, residual)[:2].double()
        ref = tail64(u[:2].double(), residual[:2].double(),
                     *(p.double() for p in fc_params(se)))
    return common.relative_error(got, ref)


class Cases(common.CaseCache):
    """The SE module and the rotated (u, residual) sets of the rows being run: made when a row
    first needs them, dropped when a row needs another."""

    backward = False  # --backward: a grad_out per case, and the 8-pass floor

    def make(self, si, dtype, layout):
        _stage, C, H, W, _R, _count = self.shapes[si]
        se = make_se(C, self.device, dtype, seed=si)
        elem = torch.finfo(dtype).bits // 8
        tensor_bytes = self.batch * C * H * W * elem
        fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        g = torch.Generator(device=self.device).manual_seed(2000 + si)

        def tensor():
            return (torch.randn(self.batch, C, H, W, device=self.device, generator=g)
                    .to(dtype).contiguous(memory_format=fmt))
        sets = common.rotation_sets(2 * tensor_bytes, self.device)
        nbytes = (8 if self.backward else 3) * tensor_bytes  # the floor's passes (docstring)
        return dict(se=se, inputs=[(tensor(), tensor()) for _ in range(sets)],
                    grad_out=tensor() if self.backward else None,
                    nbytes=nbytes, floor_ms=nbytes / (self.bandwidth_gbs() * 1e9) * 1e3)


def plan(shapes, dtypes, layouts, providers, batch, model_name, backward=False):
    """[(row, job)]: a row's identifying fields, and what run_row needs to measure it."""
    rows = []
    for si, (stage, C, H, W, R, count) in enumerate(shapes):
        for dtype in dtypes:
            for layout in layouts:
                for provider in providers:
                    row = dict(model=model_name, stage=stage, blocks=count, C=C, R=R, H=H, W=W,
                               batch=batch, dtype=str(dtype).replace("torch.", ""),
                               layout=layout, provider=provider,
                               direction="forward+backward" if backward else "forward")
                    rows.append((row, (si, dtype, layout, provider)))
    return rows


def run_row(row, job, cases, device, args):
    si, dtype, layout, provider = job

    def derive(row, case):
        row["gbs"] = case["nbytes"] / (row["p50_ms"] * 1e-3) / 1e9

    def make_fn(case):
        fn = provider_fn(provider, case["se"], device)
        if args.backward and not isinstance(fn, str):
            fn = with_backward(fn, case["se"], case["grad_out"])
        return fn

    def check_fn(fn, case):
        if args.backward:
            return check_backward(fn, *case["inputs"][0], case["se"], case["grad_out"])
        return check(fn, *case["inputs"][0], case["se"])

    common.measure_row(row, lambda: cases.get(si, dtype, layout), make_fn, check_fn,
                       TOL[dtype], device, args, derive)


def add_speedups(rows):
    """speedup_vs_eager (best eager layout) and speedup_vs_reference (same layout), from p50."""
    def key(r):
        return (r["model"], r["stage"], r["C"], r["H"], r["dtype"], r["direction"])

    best_eager, reference = {}, {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        if r["provider"] == "eager":
            best_eager[key(r)] = min(best_eager.get(key(r), float("inf")), r["p50_ms"])
        if r["provider"] == "reference":
            reference[key(r) + (r["layout"],)] = r["p50_ms"]
    for r in rows:
        if r.get("status") == "ok":
            if key(r) in best_eager:
                r["speedup_vs_eager"] = best_eager[key(r)] / r["p50_ms"]
            if key(r) + (r["layout"],) in reference:
                r["speedup_vs_reference"] = reference[key(r) + (r["layout"],)] / r["p50_ms"]


COLUMNS = [
    ("stage", "stage", "{}"), ("C", "C", "{}"), ("R", "R", "{}"), ("H", "H", "{}"),
    ("dtype", "dtype", "{}"), ("layout", "layout", "{}"), ("provider", "provider", "{}"),
    ("p50_ms", "dev ms", "{:.4f}"), ("host_us_per_call", "host us", "{:.0f}"),
    ("calls_per_sample", "K", "{}"), ("graph_p50_ms", "graph ms", "{:.4f}"),
    ("gbs", "GB/s", "{:.0f}"), ("pct_of_floor", "% floor", "{:.0f}"),
    ("graph_pct_of_floor", "% fl g", "{:.0f}"), ("speedup_vs_eager", "x eager", "{:.2f}"),
    ("speedup_vs_reference", "x ref", "{:.2f}"), ("status", "status", "{}"),
    ("graph", "graph", "{}"),
]
LEGEND = ("dev ms: device time per call (p50; GPU time with calls queued back to back, wall "
          "time on the CPU); host us: CPU time to issue one call;\nK: calls per timed sample; "
          "graph ms: per call replayed in a CUDA graph; % floor, % fl g: 3-pass floor / dev ms, "
          "/ graph ms")


def run(args, budget):
    """Returns (env, rows, skipped providers, interrupted)."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    on_gpu = device.type == "cuda"
    env = common.environment(device)
    providers = args.providers or (GPU_PROVIDERS if on_gpu else CPU_PROVIDERS)
    skipped = [p for p in GPU_PROVIDERS if p not in providers]
    if not on_gpu and not args.providers:
        print("No CUDA device: the CPU providers (eager SE + add + ReLU vs the reference op) on "
              f"small shapes, fp32; skipped: {', '.join(skipped)} (the Triton interpreter is "
              "too slow to time: --providers triton to run it anyway)")
    batch = args.batch or (128 if on_gpu else 1)
    image = args.image or (224 if on_gpu else 64)
    dtypes = [DTYPES[d] for d in (args.dtypes or (["fp16", "bf16"] if on_gpu else ["fp32"]))]
    layouts = args.layouts or ["nhwc", "nchw"]
    if args.quick and on_gpu and not args.dtypes:
        dtypes = dtypes[:1]
    shapes = se_shapes(args.model, image)
    print(f"device: {env.get('gpu') or env.get('cpu')}; {args.model} at {image}²; batch {batch}; "
          f"commit {env['git_commit']}" + (f"; time budget {args.time_budget:g} s"
                                           if args.time_budget is not None else ""))

    cases = Cases(shapes, batch, device)
    cases.backward = args.backward
    prefix = common.result_prefix(result_name(args), env)
    env["skipped_providers"] = skipped

    def checkpoint(rows):
        env["copy_bandwidth_gbs"] = cases._bandwidth and round(cases._bandwidth, 3)
        common.write_results(prefix, env, rows, args.out)

    torch.backends.cudnn.benchmark = True  # the eager provider's 1x1 convs
    jobs = plan(shapes, dtypes, layouts, providers, batch, args.model, args.backward)
    interrupted = common.run_rows(jobs, lambda row, job: run_row(row, job, cases, device, args),
                                  budget, "squeeze_excite", checkpoint)
    rows = [row for row, _ in jobs]
    env["copy_bandwidth_gbs"] = cases._bandwidth and round(cases._bandwidth, 3)
    add_speedups(rows)
    return env, rows, skipped, interrupted


def result_name(args):
    return "squeeze_excite_backward" if args.backward else "squeeze_excite"


def main(argv=None):
    budget = common.TimeBudget()  # started now: the budget covers the whole script
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="seresnext50_32x4d",
                   choices=["seresnext50_32x4d", "seresnext101_32x4d", "seresnext101_32x8d"])
    p.add_argument("--batch", type=int)
    p.add_argument("--image", type=int, help="input image size the stage shapes follow from "
                                             "(224 on a GPU, 64 on the CPU)")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES))
    p.add_argument("--layouts", nargs="+", choices=["nhwc", "nchw"])
    p.add_argument("--providers", nargs="+", choices=GPU_PROVIDERS)
    p.add_argument("--reps", type=int, default=30, help="timed samples per row (default 30)")
    p.add_argument("--target-ms", type=float, default=common.TARGET_SAMPLE_MS,
                   help="GPU work per sample; K calls per sample follow from it (default 1)")
    p.add_argument("--no-graphs", action="store_true", help="no CUDA-graph timing")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="start no row after this many seconds; the rest are written with "
                        f"status '{common.NOT_RUN_BUDGET}'")
    p.add_argument("--quick", action="store_true", help="one dtype on a GPU; few samples on "
                                                        "the CPU")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    p.add_argument("--backward", action="store_true",
                   help="time forward + backward (the op's backward: squeeze_excite_backward)")
    p.add_argument("--out", default=common.RESULTS_DIR, help="directory for the result files")
    args = p.parse_args(argv)
    budget.seconds = args.time_budget
    if args.quick and not (torch.cuda.is_available() and not args.cpu):
        args.reps = min(args.reps, 5)
    with common.sigterm_as_interrupt():
        env, rows, _skipped, interrupted = run(args, budget)
    print()
    print(LEGEND)
    shown = [dict(r, graph=str(r.get("graph_status", "")).split(":", 1)[0] or None) for r in rows]
    print(common.format_table(shown, COLUMNS))
    json_path, csv_path = common.write_results(common.result_prefix(result_name(args), env),
                                               env, rows, args.out)
    print(f"\nwrote {json_path}\n      {csv_path}")
    bad = [r for r in rows if str(r.get("status", "")).startswith("wrong")
           or str(r.get("graph_status", "")).startswith("wrong")]
    not_run = sum(str(r["status"]).startswith("not run") for r in rows)
    if not_run:
        print(f"{not_run} rows not run ({'interrupted' if interrupted else 'time budget'})")
    if bad:
        print(f"{len(bad)} provider results were WRONG against the float64 reference or the "
              "eager output", file=sys.stderr)
        return 1
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

"""Whole-model throughput (images/s): eager vs torch.compile vs replace_modules, inference and
a training step, for resnext50_32x4d, seresnext50_32x4d and resnext101_32x8d.

Modes:
  eager_nchw_fp32        eager, NCHW, fp32
  eager_cl_fp16/bf16     eager, channels_last, autocast
  compile_cl_fp16        torch.compile(model), channels_last, autocast fp16
  fused_cl_fp16          replace_modules(model), channels_last, autocast fp16
  fused_compile_cl_fp16  replace_modules + torch.compile
  fusedtrain_cl_fp16     replace_modules(fuse_training=True): the train-mode BN op in training
  fusedtrain_compile_cl_fp16   the same + torch.compile (fusedtrain_*: train rows only; their
                         inference is fused_*'s)
Each in "inference" (no_grad, eval) and "train" (forward + backward + SGD step, train mode;
replace_modules runs the unfused computation in train mode unless fuse_training=True, the
fusedtrain_* modes). Without a GPU it runs a
smoke version on the CPU (small images, batch 1, a few modes) and says so.

Per row (benchmarks/common.py says how each is measured): p20_ms/p50_ms/p80_ms, the device time
of one step with steps queued back to back, and images_per_s = batch / p50_ms;
host_us_per_call, the CPU time to issue one step; samples, calls_per_sample, device_timing.
--cuda-graphs: each inference step is also captured in a CUDA graph and replayed:
graph_p20_ms/graph_p50_ms/graph_p80_ms, graph_images_per_s and graph_status (train rows say
why they are not captured). --time-budget SECONDS: no row starts after that; the rest are
written with status "not run: time budget" (the files are rewritten after every row, and on
SIGTERM). Output: console table, CSV + JSON under benchmarks/results/ (or --out).

  python benchmarks/models.py --quick
  python benchmarks/models.py --models resnext50_32x4d --batch 128
  python benchmarks/models.py --phases train --modes eager_cl_fp16 fusedtrain_cl_fp16
"""

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import resnext_kernels as rk  # noqa: E402
from resnext_kernels import models  # noqa: E402

MODES = {
    # name: (channels_last, autocast dtype, compile, fused, fuse_training)
    "eager_nchw_fp32": (False, None, False, False, False),
    "eager_cl_fp16": (True, torch.float16, False, False, False),
    "eager_cl_bf16": (True, torch.bfloat16, False, False, False),
    "compile_cl_fp16": (True, torch.float16, True, False, False),
    "fused_cl_fp16": (True, torch.float16, False, True, False),
    "fused_compile_cl_fp16": (True, torch.float16, True, True, False),
    "fusedtrain_cl_fp16": (True, torch.float16, False, True, True),
    "fusedtrain_compile_cl_fp16": (True, torch.float16, True, True, True),
}
CPU_MODES = {
    "eager_nchw_fp32": (False, None, False, False, False),
    "eager_cl_bf16": (True, torch.bfloat16, False, False, False),
    "fused_cl_bf16": (True, torch.bfloat16, False, True, False),
    "fusedtrain_cl_bf16": (True, torch.bfloat16, False, True, True),
}


def build(model_name, mode, device, backend):
    channels_last, _, compile_it, fused, fuse_training = mode
    model = getattr(models, model_name)().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fused:
        rk.replace_modules(model, backend=backend, verbose=False, fuse_training=fuse_training)
    return torch.compile(model) if compile_it else model, model


def step_fn(model, params_model, mode, device, train):
    amp_dtype = mode[1]
    opt = torch.optim.SGD(params_model.parameters(), lr=0.01, momentum=0.9) if train else None
    loss_fn = nn.CrossEntropyLoss()

    def run(x, y):
        # no autocast weight cache, as CUDA-graph capture asks (torch.cuda.graphs notes); each
        # weight is cast once per forward anyway
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None, cache_enabled=False):
            if not train:
                with torch.no_grad():
                    return model(x)
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return run


def plan(names, modes, phases, batch, image, backend):
    return [(dict(model=name, mode=mode_name, phase=phase, batch=batch, image=image,
                  backend=backend if mode[3] else ""), (name, mode, phase))
            for name in names for mode_name, mode in modes.items() for phase in phases
            if phase == "train" or not mode[4]]  # fuse_training changes train rows only


def run_row(row, job, device, args, reps):
    name, mode, phase = job
    on_gpu = device.type == "cuda"
    try:
        model, plain = build(name, mode, device, args.backend)
        model.train(phase == "train")
        fmt = torch.channels_last if mode[0] else torch.contiguous_format
        g = torch.Generator(device=device).manual_seed(0)
        # two input sets: a whole model streams far more than L2 per call anyway
        inputs = [(torch.randn(row["batch"], 3, row["image"], row["image"], device=device,
                               generator=g).contiguous(memory_format=fmt),
                   torch.randint(0, 1000, (row["batch"],), device=device, generator=g))
                  for _ in range(2)]
        fn = step_fn(model, plain, mode, device, phase == "train")
        graphs = args.cuda_graphs and on_gpu and phase == "inference"
        row.update(common.bench(fn, inputs, device, warmup=3, samples=reps, graph=graphs,
                                graph_tol=GRAPH_TOL))
        if phase == "train" and args.cuda_graphs:
            row["graph_status"] = "not tried: a training step (optimizer state) is not captured"
        elif not on_gpu and args.cuda_graphs:
            row["graph_status"] = "not applicable: no CUDA graphs on cpu"
        row["images_per_s"] = row["batch"] / (row["p50_ms"] * 1e-3)
        if row.get("graph_p50_ms"):
            row["graph_images_per_s"] = row["batch"] / (row["graph_p50_ms"] * 1e-3)
        row["status"] = "ok"
    except Exception as exc:
        row["status"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"


GRAPH_TOL = 2e-2  # the replayed logits against eager's, relative to max |logit|

COLUMNS = [("model", "model", "{}"), ("mode", "mode", "{}"), ("phase", "phase", "{}"),
           ("batch", "batch", "{}"), ("p50_ms", "dev ms", "{:.2f}"),
           ("p20_ms", "p20", "{:.2f}"), ("p80_ms", "p80", "{:.2f}"),
           ("host_us_per_call", "host ms", "{}"), ("images_per_s", "img/s", "{:.1f}"),
           ("graph_p50_ms", "graph ms", "{:.2f}"), ("graph_images_per_s", "graph img/s", "{:.1f}"),
           ("device_timing", "timing", "{}"), ("status", "status", "{}"), ("graph", "graph", "{}")]
LEGEND = ("dev ms: device time per step (GPU time, steps queued back to back; wall time on the "
          "CPU); host ms: CPU time to issue one step;\nimg/s from dev ms; graph ms, graph img/s: "
          "the step replayed as a CUDA graph (--cuda-graphs, inference)")


def console_rows(rows):
    return [dict(r, graph=str(r.get("graph_status", "")).split(":", 1)[0] or None,
                 host_us_per_call=(f"{r['host_us_per_call'] / 1e3:.2f}"
                                   if r.get("host_us_per_call") is not None else None))
            for r in rows]


def main(argv=None):
    budget = common.TimeBudget()  # started now: the budget covers the whole script
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None,
                   choices=["resnext50_32x4d", "seresnext50_32x4d", "resnext101_32x8d"])
    p.add_argument("--batch", type=int)
    p.add_argument("--image", type=int)
    p.add_argument("--modes", nargs="+")
    p.add_argument("--backend", default="auto", help="backend for replace_modules")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--phases", nargs="+", choices=["inference", "train"],
                   help="which phases to run (default: both; --no-train: inference)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time each inference step replayed as a CUDA graph (graph_* fields)")
    p.add_argument("--reps", type=int, default=20, help="timed samples per row (default 20)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="start no row after this many seconds; the rest are written with "
                        f"status '{common.NOT_RUN_BUDGET}'")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=common.RESULTS_DIR)
    args = p.parse_args(argv)
    budget.seconds = args.time_budget

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    env = common.environment(device)
    modes = MODES if on_gpu else CPU_MODES
    if not on_gpu:
        print("No CUDA device: CPU smoke run (small images, batch 1); GPU modes skipped: "
              + ", ".join(m for m in MODES if m not in CPU_MODES))
    names = args.models or (["resnext50_32x4d"] if args.quick or not on_gpu else
                            ["resnext50_32x4d", "seresnext50_32x4d", "resnext101_32x8d"])
    selected = {k: v for k, v in modes.items() if not args.modes or k in args.modes}
    batch = args.batch or (128 if on_gpu else 1)
    image = args.image or (224 if on_gpu else 64)
    reps = 3 if args.quick and not on_gpu else args.reps
    phases = ["inference"] + ([] if args.no_train or (args.quick and not on_gpu) else ["train"])
    if args.phases:
        phases = [p for p in ("inference", "train") if p in args.phases]
    torch.backends.cudnn.benchmark = True

    prefix = common.result_prefix("models", env)
    jobs = plan(names, selected, phases, batch, image, args.backend)
    with common.sigterm_as_interrupt():
        interrupted = common.run_rows(
            jobs, lambda row, job: run_row(row, job, device, args, reps), budget, "models",
            lambda rows: common.write_results(prefix, env, rows, args.out))
    rows = [row for row, _ in jobs]
    print()
    print(LEGEND)
    print(common.format_table(console_rows(rows), COLUMNS))
    json_path, csv_path = common.write_results(prefix, env, rows, args.out)
    print(f"\nwrote {json_path}\n      {csv_path}")
    not_run = sum(str(r["status"]).startswith("not run") for r in rows)
    if not_run:
        print(f"{not_run} rows not run ({'interrupted' if interrupted else 'time budget'})")
    if any(str(r.get("graph_status", "")).startswith("wrong") for r in rows):
        print("a CUDA-graph replay differed from the eager step", file=sys.stderr)
        return 1
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

"""Whole-model throughput (images/s): eager vs torch.compile vs replace_modules, inference and
a training step, for resnext50_32x4d, seresnext50_32x4d and resnext101_32x8d.

Modes:
  eager_nchw_fp32        eager, NCHW, fp32
  eager_cl_fp16/bf16     eager, channels_last, autocast
  compile_cl_fp16        torch.compile(model), channels_last, autocast fp16
  fused_cl_fp16          replace_modules(model), channels_last, autocast fp16
  fused_compile_cl_fp16  replace_modules + torch.compile
Each in "inference" (no_grad, eval) and "train" (forward + backward + SGD step, train mode;
replace_modules falls back to the unfused computation in train mode). --cuda-graphs adds
CUDA-graph inference rows. Without a GPU it runs a smoke version on the CPU (small images,
batch 1, a few modes) and says so. Output: console table, CSV + JSON under benchmarks/results/.

  python benchmarks/models.py --quick
  python benchmarks/models.py --models resnext50_32x4d --batch 128
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
    # name: (channels_last, autocast dtype, compile, fused)
    "eager_nchw_fp32": (False, None, False, False),
    "eager_cl_fp16": (True, torch.float16, False, False),
    "eager_cl_bf16": (True, torch.bfloat16, False, False),
    "compile_cl_fp16": (True, torch.float16, True, False),
    "fused_cl_fp16": (True, torch.float16, False, True),
    "fused_compile_cl_fp16": (True, torch.float16, True, True),
}
CPU_MODES = {
    "eager_nchw_fp32": (False, None, False, False),
    "eager_cl_bf16": (True, torch.bfloat16, False, False),
    "fused_cl_bf16": (True, torch.bfloat16, False, True),
}


def build(model_name, mode, device, backend):
    channels_last, _, compile_it, fused = mode
    model = getattr(models, model_name)().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fused:
        rk.replace_modules(model, backend=backend, verbose=False)
    return torch.compile(model) if compile_it else model, model


def step_fn(model, params_model, mode, device, train):
    _, amp_dtype, _, _ = mode
    opt = torch.optim.SGD(params_model.parameters(), lr=0.01, momentum=0.9) if train else None
    loss_fn = nn.CrossEntropyLoss()

    def run(x, y):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            if not train:
                with torch.no_grad():
                    return model(x)
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None,
                   choices=["resnext50_32x4d", "seresnext50_32x4d", "resnext101_32x8d"])
    p.add_argument("--batch", type=int)
    p.add_argument("--image", type=int)
    p.add_argument("--modes", nargs="+")
    p.add_argument("--backend", default="auto", help="backend for replace_modules")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=common.RESULTS_DIR)
    args = p.parse_args(argv)

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
    torch.backends.cudnn.benchmark = True

    rows = []
    progress = common.Progress(len(names) * len(selected) * len(phases), "models")
    for name in names:
        for mode_name, mode in selected.items():
            for phase in phases:
                row = dict(model=name, mode=mode_name, phase=phase, batch=batch, image=image,
                           backend=args.backend if mode[3] else "")
                try:
                    model, plain = build(name, mode, device, args.backend)
                    model.train(phase == "train")
                    fmt = torch.channels_last if mode[0] else torch.contiguous_format
                    g = torch.Generator(device=device).manual_seed(0)
                    inputs = [(torch.randn(batch, 3, image, image, device=device, generator=g)
                               .contiguous(memory_format=fmt),
                               torch.randint(0, 1000, (batch,), device=device, generator=g))
                              for _ in range(2)]
                    fn = step_fn(model, plain, mode, device, phase == "train")
                    if args.cuda_graphs and on_gpu and phase == "inference":
                        fn = cuda_graphed(fn, inputs)
                        row["mode"] += "+graphs"
                    row.update(common.bench(fn, inputs, device, warmup=3, reps=reps))
                    row["images_per_s"] = batch / (row["p50_ms"] * 1e-3)
                    row["status"] = "ok"
                except Exception as exc:
                    row["status"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
                rows.append(row)
                progress.step(f"{name} {mode_name} {phase}")
    columns = [("model", "model", "{}"), ("mode", "mode", "{}"), ("phase", "phase", "{}"),
               ("batch", "batch", "{}"), ("p50_ms", "p50 ms", "{:.2f}"), ("p20_ms", "p20", "{:.2f}"),
               ("p80_ms", "p80", "{:.2f}"), ("images_per_s", "img/s", "{:.1f}"),
               ("status", "status", "{}")]
    print()
    print(common.format_table(rows, columns))
    json_path, csv_path = common.write_results(common.result_prefix("models", env), env, rows,
                                               args.out)
    print(f"\nwrote {json_path}\n      {csv_path}")
    return 0


def cuda_graphed(fn, inputs):
    """Captures fn on static copies of the inputs; replays copy new inputs in first."""
    static = [tuple(t.clone() for t in inp) for inp in inputs[:1]][0]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn(*static)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(*static)

    def replay(*inp):
        for dst, src in zip(static, inp):
            dst.copy_(src)
        graph.replay()
    return replay


if __name__ == "__main__":
    sys.exit(main())

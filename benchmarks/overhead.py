"""Host overhead of the fused path against the original modules, on the CPU.

    python benchmarks/overhead.py               # times, as ratios taken in one run
    python benchmarks/overhead.py --callgrind   # and instructions per call under callgrind

Tiny CPU tensors and the reference backend, so the aten work is small and the same on both
sides, and what differs is the Python and dispatch around it: the cost a GPU run pays per call
on the host, where the kernels are asynchronous. Rows:

- a module pair: the original module and its replace_modules swap, same parameters. Time: the
  two are called in alternation, `rounds` rounds of `calls` calls each, every other round
  in the other order; a round's ratio is swapped over original, and the row gives the ratios' p20/p50/p80 (a busy machine slows both
  sides of a round alike). Instructions: under valgrind's callgrind, the instructions one call
  executes (all of them: Python, dispatch, aten), counted only while the calls run; repeatable
  on a busy machine.
- the op against what its backend launches: grouped_conv_bn_relu(backend="reference") against
  the aten calls the reference backend makes for it (conv2d with the folded weight, relu_):
  the op's own cost per call, in microseconds and instructions; and the same for a call of the
  registered op, torch.ops.resnext_kernels.grouped_conv_bn_relu, which always goes through the
  dispatcher (what the direct calls of ops/_direct.py save; since ed01663 it also folds the
  weight on every call, as only direct calls keep the reference backend's fold).

Each under torch.inference_mode and torch.no_grad. Writes
benchmarks/results/overhead-host-<commit>-<date>.{json,csv} (see results/README.md).
"""

import argparse
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

# benchmarks/ only, not the repository root: that would shadow the installed package (and its
# compiled resnext_kernels._C) with the source tree.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import resnext_kernels as rk  # noqa: E402
from resnext_kernels.backends import reference  # noqa: E402
from resnext_kernels.models.seresnext import SEModule  # noqa: E402

MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}


def conv_bn_relu(channels=64, groups=32):
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False),
                         nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def randomise(module):
    """Non-trivial parameters and BN statistics (fresh random, never zeros)."""
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.5, 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return module.eval()


def module_pair(make):
    original = randomise(make())
    swapped = randomise(make())
    swapped.load_state_dict(original.state_dict())
    rk.replace_modules(swapped, backend="reference", verbose=False)
    return original, swapped


def op_pair():
    """(the aten calls the op's reference backend makes, the op, the registered op called
    through the dispatcher), on the same tensors."""
    conv, bn, _ = randomise(conv_bn_relu())
    with torch.no_grad():  # plain tensors, as a deployed model's would be
        weight = conv.weight.detach()
        scale, shift = rk.fold_batchnorm(bn)
        x = torch.randn(INPUT_SHAPE)
        rk.grouped_conv_bn_relu(x, weight, scale, shift, groups=32, backend="reference")
    # the very tensors the backend's conv gets (a copy could differ in alignment, and so in
    # the CPU convolution's instruction count)
    folded, bias = reference._FOLDED.get((weight, scale, shift), (x.dtype,), None)

    def op(x):
        return rk.grouped_conv_bn_relu(x, weight, scale, shift, groups=32, backend="reference")

    def dispatched(x):  # the registered op itself: what every call cost before direct calls
        return torch.ops.resnext_kernels.grouped_conv_bn_relu(
            x, weight, scale, shift, [1, 1], [1, 1], [1, 1], 32, True, "reference")

    def aten(x):
        return torch.conv2d(x, folded, bias, [1, 1], [1, 1], [1, 1], 32).relu_()

    return aten, op, dispatched


# name -> (build (first, second), what the ratio is of)
CASES = {
    "conv+BN+ReLU module": (lambda: module_pair(conv_bn_relu), "swapped / original"),
    "SE module": (lambda: module_pair(lambda: SEModule(64)), "swapped / original"),
    "grouped_conv_bn_relu op": (lambda: op_pair()[:2], "op / its aten calls"),
    "the op through the dispatcher": (lambda: op_pair()[::2], "torch.ops call / aten calls"),
}
INPUT_SHAPE = (1, 64, 4, 4)


def check_same(first, second, x):
    got, expected = second(x), first(x)
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise SystemExit(f"the two sides differ: max |diff| {(got - expected).abs().max():.3g}")


def time_row(name, mode, rounds, calls):
    first, second = CASES[name][0]()
    x = torch.randn(INPUT_SHAPE)
    with MODES[mode]():
        check_same(first, second, x)
        for _ in range(20):
            first(x), second(x)
        per_call = {"first": [], "second": []}
        ratios = []
        for i in range(rounds):
            spent = {}
            order = (("first", first), ("second", second))
            for side, fn in order if i % 2 == 0 else order[::-1]:  # ABBA: no order bias
                start = time.perf_counter()
                for _ in range(calls):
                    fn(x)
                spent[side] = (time.perf_counter() - start) / calls * 1e6
                per_call[side].append(spent[side])
            ratios.append(spent["second"] / spent["first"])
    q = statistics.quantiles
    row = dict(case=name, mode=mode, ratio_of=CASES[name][1], input=list(INPUT_SHAPE),
               backend="reference", rounds=rounds, calls_per_round=calls)
    for side in ("first", "second"):
        p = q(per_call[side], n=10)
        row[f"{side}_us_p50"] = statistics.median(per_call[side])
        row[f"{side}_us_p20"], row[f"{side}_us_p80"] = p[1], p[7]
    p = q(ratios, n=10)
    row.update(ratio_p20=p[1], ratio_p50=statistics.median(ratios), ratio_p80=p[7],
               extra_us_p50=row["second_us_p50"] - row["first_us_p50"])
    return row


# ----------------------------------------------------------------------------- callgrind
def callgrind_child(calls):
    """Runs under callgrind (instrumentation off until now): per case, mode and side, `calls`
    calls with collection on, then a dump, so each dump file holds one side's calls alone."""
    subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=True,
                   capture_output=True)
    for name in CASES:
        for mode in MODES:
            first, second = CASES[name][0]()
            x = torch.randn(INPUT_SHAPE)
            with MODES[mode]():
                for fn in (first, second):
                    for _ in range(5):  # warm: lazy initialisation, caches
                        fn(x)
                    torch._C._valgrind_toggle()
                    for _ in range(calls):
                        fn(x)
                    torch._C._valgrind_toggle_and_dump_stats()


def instructions(calls):
    """{(case, mode, side): instructions per call}, from one callgrind run of this script."""
    if not torch._C._valgrind_supported_platform():
        raise SystemExit("this torch build has no valgrind hooks")
    with tempfile.TemporaryDirectory() as out:
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
               f"--callgrind-out-file={out}/cg.out", sys.executable, os.path.abspath(__file__),
               "--callgrind-child", "--calls", str(calls)]
        subprocess.run(cmd, check=True, capture_output=True)
        parts = sorted(glob.glob(f"{out}/cg.out.*"), key=lambda p: int(p.rsplit(".", 1)[1]))
        totals = []
        for path in parts:
            with open(path) as f:
                match = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
            totals.append(int(match.group(1)))
    keys = [(name, mode, side) for name in CASES for mode in MODES
            for side in ("first", "second")]
    if len(totals) != len(keys):
        raise SystemExit(f"callgrind wrote {len(totals)} dumps, expected {len(keys)}")
    return {k: t / calls for k, t in zip(keys, totals)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--calls", type=int, default=200, help="calls per round (timing), or per "
                   "side (callgrind: 50 unless given)")
    p.add_argument("--callgrind", action="store_true",
                   help="also count instructions per call under valgrind (a few minutes)")
    p.add_argument("--callgrind-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", default=common.RESULTS_DIR)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the calls are tiny; one thread, as a GPU host thread issues them
    if args.callgrind_child:
        callgrind_child(args.calls)
        return 0
    rows = [time_row(name, mode, args.rounds, args.calls) for name in CASES for mode in MODES]
    if args.callgrind:
        counts = instructions(50 if args.calls == 200 else args.calls)
        for row in rows:
            first = counts[(row["case"], row["mode"], "first")]
            second = counts[(row["case"], row["mode"], "second")]
            row.update(first_instructions=round(first), second_instructions=round(second),
                       instructions_ratio=second / first,
                       extra_instructions=round(second - first))
    env = common.environment(torch.device("cpu"))
    env["load_average"] = os.getloadavg()
    env["cpu_count"] = os.cpu_count()
    prefix = common.result_prefix("overhead", dict(env, gpu="host"))
    paths = common.write_results(prefix, env, rows, args.out_dir)
    columns = [("case", "case", "{}"), ("mode", "mode", "{}"), ("ratio_of", "ratio of", "{}"),
               ("first_us_p50", "first us", "{:.1f}"), ("second_us_p50", "second us", "{:.1f}"),
               ("ratio_p20", "p20", "{:.3f}"), ("ratio_p50", "p50", "{:.3f}"),
               ("ratio_p80", "p80", "{:.3f}")]
    if args.callgrind:
        columns += [("first_instructions", "first instr", "{:,}"),
                    ("second_instructions", "second instr", "{:,}"),
                    ("instructions_ratio", "instr ratio", "{:.3f}")]
    print(common.format_table(rows, columns))
    print("\n" + "\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

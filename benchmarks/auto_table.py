"""Builds a backend="auto" table from a GPU run of benchmarks/grouped_conv.py or
benchmarks/squeeze_excite.py.

    python benchmarks/auto_table.py benchmarks/results/grouped_conv-<gpu>-<commit>-<date>.json
    python benchmarks/auto_table.py benchmarks/results/squeeze_excite-<gpu>-<commit>-<date>.json

For every measured (dtype, input layout, weight layout, layer shape) it keeps the fastest of the
providers "auto" can choose ("reference", "triton", "cuda") by p50, among those whose output
matched the float64 reference, and writes resnext_kernels/backends/auto_tables/<arch>.json
(<arch>-squeeze_excite.json for SE results). A shape without a "reference" measurement gets no
entry: no baseline, no claim. An SE shape where no choosable provider beat the unfused module
("eager") gets none either: "auto" then runs the aten reference, which computes what that module
does. CPU results are refused.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE_DIR = os.path.join(HERE, "..", "resnext_kernels", "backends", "auto_tables")
CHOOSABLE = ("reference", "triton", "cuda")


def build_table(results: dict, source: str) -> dict:
    env, rows = results["environment"], results["rows"]
    if not env.get("gpu"):
        raise ValueError(f"{source}: not a GPU run (environment has no 'gpu'); auto tables "
                         "come from GPU measurements only")
    arch = env.get("gpu_capability")
    if not arch:
        raise ValueError(f"{source}: the environment has no 'gpu_capability' (re-run the "
                         "benchmark with this version of benchmarks/common.py)")
    if rows and "R" in rows[0]:
        return _se_table(env, rows, arch, source)
    groups = {}
    for r in rows:
        if r.get("status") != "ok" or r["provider"] not in CHOOSABLE:
            continue
        # results from before grouped_conv.py recorded the weights' layout were all measured
        # with contiguous weights
        key = (r["dtype"], r["layout"], r.get("weight_layout", "nchw"), r["C"], r["C_out"],
               r["groups"], r["H"], r["W"], r["stride"])
        groups.setdefault(key, {})[r["provider"]] = r["p50_ms"]
    entries = []
    for (dtype, layout, weight_layout, C, C_out, g, H, W, stride), times in sorted(groups.items()):
        if "reference" not in times:
            continue
        best = min(times, key=times.get)
        entries.append(dict(arch=arch, dtype=dtype, layout=layout, weight_layout=weight_layout,
                            C_in=C, C_out=C_out, groups=g, H=H, W=W, stride=[stride, stride],
                            padding=[1, 1], dilation=[1, 1], backend=best,
                            p50_ms={k: round(v, 5) for k, v in sorted(times.items())}))
    batches = sorted({r["batch"] for r in rows})
    return dict(source=source, gpu=env["gpu"], arch=arch, batch=batches,
                git_commit=env.get("git_commit"), date=env.get("date"), entries=entries)


def _se_table(env, rows, arch, source):
    """squeeze_excite.py's rows: the bottleneck tail, relu(u * SE(u) + residual), per stage."""
    groups = {}
    for r in rows:
        if r.get("status") != "ok" or r["provider"] not in CHOOSABLE + ("eager",):
            continue
        key = (r["dtype"], r["layout"], r["C"], r["R"], r["H"], r["W"])
        groups.setdefault(key, {})[r["provider"]] = r["p50_ms"]
    entries = []
    for (dtype, layout, C, R, H, W), times in sorted(groups.items()):
        choosable = {k: v for k, v in times.items() if k in CHOOSABLE}
        if "reference" not in choosable:
            continue
        best = min(choosable, key=choosable.get)
        if "eager" in times and choosable[best] >= times["eager"]:
            continue  # nothing beat the module it replaces: the default (aten) runs
        entries.append(dict(op="squeeze_excite", arch=arch, dtype=dtype, layout=layout, C=C,
                            R=R, H=H, W=W, residual=True, relu=True, backend=best,
                            p50_ms={k: round(v, 5) for k, v in sorted(times.items())}))
    batches = sorted({r["batch"] for r in rows})
    return dict(source=source, gpu=env["gpu"], arch=arch, op="squeeze_excite", batch=batches,
                git_commit=env.get("git_commit"), date=env.get("date"), entries=entries)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="a benchmarks/grouped_conv.py or squeeze_excite.py results "
                                   ".json from a GPU run")
    p.add_argument("--out-dir", default=TABLE_DIR)
    p.add_argument("--source", help="the results file's path in the repository, when it is read "
                                    "from elsewhere (the GPU plan's staging tree)")
    args = p.parse_args(argv)
    with open(args.results) as f:
        results = json.load(f)
    source = args.source or os.path.relpath(args.results, os.path.join(HERE, ".."))
    table = build_table(results, source)
    os.makedirs(args.out_dir, exist_ok=True)
    suffix = "-squeeze_excite" if table.get("op") == "squeeze_excite" else ""
    path = os.path.join(args.out_dir, f"{table['arch']}{suffix}.json")
    with open(path, "w") as f:
        json.dump(table, f, indent=1)
    picks = {}
    for e in table["entries"]:
        picks[e["backend"]] = picks.get(e["backend"], 0) + 1
    print(f"wrote {path}: {len(table['entries'])} shapes; chosen: {picks}")
    return 0 if table["entries"] else 1


if __name__ == "__main__":
    sys.exit(main())

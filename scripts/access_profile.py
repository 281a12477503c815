"""The GPU-free access profile of every CUDA kernel path: what Nsight Compute's memory metrics
would show, computed on the CPU by the CUDA emulator's access profiler
(csrc/emulation/access_profile.h; the "profile" build of tests/cuda_emulator.py).

    python scripts/access_profile.py [--all] [--ncu benchmarks/results/.../ncu-summary-rederived.json]
        [--out-prefix benchmarks/results/access-profile]

Cases: by default the paths the GPU plan's Nsight Compute step profiles (scripts/ncu_cases.py:
the first real layer of every channels-per-group × stride class, the cpg 8 variants, the SE
stages), with the same names, so `--ncu` puts the measured figures of a GPU session next to
the profile's. --all adds every class × stride × layout (NHWC, NCHW) × dtype (fp16, bf16).
Each case runs at batch 1 with its real channels and spatial size, `--blocks` blocks of each
grid (spread evenly; counts are scaled to the whole grid): per-request figures do not depend on
the batch, and the per-input-byte ones only through the edges of the image.

Figures per case: for conv, of the conv kernel (the weight repack that precedes it runs once
per call, whatever the batch: its bytes are given apart); for SE, of its three kernels together:
- global_ld/st_sectors_per_request: distinct 32-byte sectors per warp-level request (4 when 32
  lanes read 32 consecutive floats, 16 for 16 bytes per lane, 32 at worst);
- shared_ld_wavefronts_per_request: shared loads and ldmatrix together, as ncu counts them
  (ideal: 1 for 32-bit loads, 4 for 16-byte loads and ldmatrix.x4);
- shared_ld/st_conflict_share: the share of shared wavefronts that bank conflicts add (ncu:
  l1tex__data_bank_conflicts / wavefronts);
- l2_to_sm_per_input_byte, from no reuse in L1 (every request's sectors cross from L2) down to
  perfect reuse within a block (each block's distinct sectors once): ncu's figure, which also
  has reuse across the blocks resident on one SM, should fall near or below the range;
- barriers_per_block, mma_per_block (wmma::mma_sync per block), global bytes used per byte
  moved.
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))
import compiled_profile  # noqa: E402  (it does not import this module)
import cuda_emulator  # noqa: E402
import ncu_cases  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def all_conv_cases():
    seen = set()
    for case in ncu_cases.conv_cases(["cuda"]):
        if case["dtype"] != "fp16" or case["layout"] != "nhwc":
            continue
        for dtype in ("fp16", "bf16"):
            for layout in ("nhwc", "nchw"):
                c = dict(case, dtype=dtype, layout=layout)
                key = ncu_cases.case_name(c)
                if key not in seen:
                    seen.add(key)
                    yield c


def cases(everything: bool):
    base = list(ncu_cases.conv_cases(["cuda"]))
    if everything:
        names = {ncu_cases.case_name(c) for c in base}
        base += [c for c in all_conv_cases() if ncu_cases.case_name(c) not in names]
    return base + list(ncu_cases.se_cases(["cuda"]))


def run_case(binary, case, blocks: int, seed: int = 0):
    """(launches, input bytes) of one case at batch 1."""
    g = torch.Generator().manual_seed(seed)
    dtype = DTYPES[case["dtype"]]
    C, H, W = case["C"], case["H"], case["W"]
    x = torch.randn(1, C, H, W, generator=g).to(dtype)
    if case["layout"] == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    if case["op"] == "conv":
        cpg = case["cpg"]
        w = (torch.randn(case["C_out"], cpg, 3, 3, generator=g) / (3 * cpg**0.5)).to(dtype)
        scale, shift = torch.rand(case["C_out"], generator=g) + 0.5, torch.randn(case["C_out"], generator=g)
        (_, path), launches = cuda_emulator.profile_launches(
            cuda_emulator.grouped_conv_bn_relu, binary, x, w, scale, shift,
            stride=case["stride"], groups=case["groups"], allow_tf32=case.get("tf32", False),
            allow_v3=case.get("cuda_v3") is not False, sample_blocks=blocks)
        return launches, x.numel() * x.element_size(), path
    R = case["R"]
    w1, w2 = torch.randn(R, C, generator=g) / C**0.5, torch.randn(C, R, generator=g) / R**0.5
    b1, b2 = torch.randn(R, generator=g), torch.randn(C, generator=g)
    res = torch.randn_like(x)
    _, launches = cuda_emulator.profile_launches(
        cuda_emulator.squeeze_excite, binary, x, w1, b1, w2, b2, residual=res, relu=True,
        sample_blocks=blocks)
    return launches, 2 * x.numel() * x.element_size(), "se squeeze+excite+scale"


def run_backward_case(binary, case, blocks: int, seed: int = 0):
    """(launches, reports) of the CUDA backward of one conv case at batch 1: dgrad's launches
    (the direct kernel, or on v3: the scaled, flipped weights, v3's packing and its forward of
    the gradient gated by the mask in its loader; in NCHW grad_y read and grad_x written by
    channel planes), then wgrad's (the partial sums, in NCHW x and grad_y read by channel
    planes; the finalize), with a random ReLU mask; reports: the harness's
    path lines of dgrad ("path direct" or "path v3[ pack grad_y]") and wgrad (which names its
    pixel splits and packs)."""
    from resnext_kernels import relu_mask

    g = torch.Generator().manual_seed(seed)
    dtype = DTYPES[case["dtype"]]
    C, H, W, cpg, stride = case["C"], case["H"], case["W"], case["cpg"], case["stride"]
    H_out, W_out = (H - 1) // stride + 1, (W - 1) // stride + 1
    fmt = torch.channels_last if case["layout"] == "nhwc" else torch.contiguous_format
    x = torch.randn(1, C, H, W, generator=g).to(dtype).contiguous(memory_format=fmt)
    grad_y = torch.randn(1, C, H_out, W_out, generator=g).to(dtype).contiguous(memory_format=fmt)
    mask = relu_mask.pack(torch.rand(1, C, H_out, W_out, generator=g) < 0.5)
    w = (torch.randn(C, cpg, 3, 3, generator=g) / (3 * cpg**0.5)).to(dtype)
    scale = torch.rand(C, generator=g) + 0.5
    (_, dgrad_report), dgrad = cuda_emulator.profile_launches(
        cuda_emulator.grouped_conv_dgrad, binary, grad_y, mask, w, scale, list(x.shape),
        stride=stride, groups=case["groups"], channels_last=case["layout"] == "nhwc",
        sample_blocks=blocks)
    (_, wgrad_report), wgrad = cuda_emulator.profile_launches(
        cuda_emulator.grouped_conv_wgrad, binary, grad_y, mask, x, w, scale, stride=stride,
        groups=case["groups"], sample_blocks=blocks)
    return dgrad + wgrad, [dgrad_report, wgrad_report]


# ------------------------------------------------------------- reusing earlier runs' profiles
def driver_sources():
    """The Python that runs the emulator and shapes its calls: the files of the modules these
    runs import (resnext_kernels from wherever it is installed, not necessarily this
    checkout)."""
    from resnext_kernels import relu_mask

    return [Path(cuda_emulator.__file__), Path(__file__).resolve(), Path(relu_mask.__file__)]


def inputs_digest(binary) -> str:
    """The digest of everything an access profile depends on besides its case, its block count
    and the function that runs it: the emulator binary's name (cuda_emulator.build_digest: the
    C++ sources, the compiler's version and the build flags, whatever the checkout's path),
    torch's version (it draws the random inputs), driver_sources() and any CUDA_EMULATOR_
    variable in the environment the emulator inherits. The same digest, case, block count and
    function give the same profile (the tallies are per block, whatever the threads' schedule:
    tests/test_access_profile.py runs a case twice), so a profile stored under its key can
    stand in for running the case again."""
    digest = hashlib.sha256(Path(binary).parent.name.encode() + b"\0")
    digest.update(torch.__version__.encode() + b"\0")
    for path in driver_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    emulator_env = sorted((k, v) for k, v in os.environ.items() if k.startswith("CUDA_EMULATOR_"))
    digest.update(json.dumps(emulator_env).encode())
    return digest.hexdigest()


def case_key(digest: str, kind: str, case: dict, blocks: int) -> str:
    """The key of one profile: `kind` is the name of the function that runs it (run_case or
    run_backward_case)."""
    text = json.dumps([digest, kind, case, blocks], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def portable(result):
    """run_case's or run_backward_case's result as it is stored: through JSON (lists, never
    tuples), its launches without their per-site tallies, which name sites by code address
    (different in every run: ASLR) and which the kernel profile does not read."""
    result = json.loads(json.dumps(result))
    for launch in result[0]:
        launch.pop("sites", None)
    return result


class ProfileStore:
    """Profiles by case_key: those of an earlier run (a JSON file written by save()), reused
    where the key matches, and those this run makes. Every result is portable(), reused or
    not, so the two are the same Python values."""

    def __init__(self, binary, path=None):
        self.digest = inputs_digest(binary)
        earlier = json.loads(Path(path).read_text()) if path and Path(path).exists() else {}
        self.earlier = earlier.get("profiles", {})
        self.profiles, self.reused, self.ran = {}, 0, 0
        self._lock = threading.Lock()  # get() runs on a thread pool

    def get(self, fn, binary, case, blocks):
        """The profile of fn(binary, case, blocks) (run_case or run_backward_case), reused or
        run."""
        key = case_key(self.digest, fn.__name__, case, blocks)
        result = self.earlier.get(key)
        if result is None:
            result = portable(fn(binary, case, blocks))
        with self._lock:
            self.reused += key in self.earlier
            self.ran += key not in self.earlier
            self.profiles[key] = result
        return result

    def save(self, path):
        """This run's profiles (and only this run's: none of an earlier run's that no longer
        match)."""
        Path(path).write_text(json.dumps(
            {"about": "CUDA emulator access profiles by scripts/access_profile.case_key "
                      "(scripts/kernel_profile.py reuses a profile whose key matches)",
             "profiles": self.profiles}, sort_keys=True, indent=1) + "\n")


KINDS = ("global_load", "global_store", "shared_load", "shared_store", "ldmatrix",
         "fragment_store")


def scaled(launch):
    """The launch's tallies for its whole grid."""
    f = launch["blocks"] / max(1, launch["sampled_blocks"])
    out = {k: {m: v * f for m, v in launch[k].items()} for k in KINDS}
    out["block_unique_load_sectors"] = launch["global_load_block_unique_sectors"] * f
    return out


def _ratio(a, b):
    return None if not b else a / b


def summarise(name, path, launches, input_bytes):
    """The figures of a case's kernels. For conv, the conv kernel alone (the last launch): the
    weight repack runs once per call whatever the batch, so at batch 1 it would weigh 128 times
    more than in the GPU plan's batch-128 profile (its traffic is reported apart, per call); x's
    layout copy before v3 (`path` "... pack x": an x with neither 16-byte channel chunks nor
    contiguous rows) is neither (its traffic: kernel_profile's model)."""
    totals = {k: {"requests": 0, "cost": 0, "ideal": 0, "bytes_used": 0} for k in KINDS}
    unique = 0
    if name.startswith("conv"):
        copies = len(compiled_profile.layout_copies(path))  # before the weights' repack
        repack, main_launches = launches[copies:-1], [launches[-1]]
    else:
        repack, main_launches = [], launches
    for launch in main_launches:
        s = scaled(launch)
        unique += s["block_unique_load_sectors"]
        for k in KINDS:
            cost = s[k].get("sectors", s[k].get("wavefronts", 0))
            for m, v in (("requests", s[k]["requests"]), ("cost", cost), ("ideal", s[k]["ideal"]),
                         ("bytes_used", s[k]["bytes_used"])):
                totals[k][m] += v
    main = max(main_launches,
               key=lambda l: l["global_load"]["sectors"] + l["global_store"]["sectors"])
    repack_bytes = sum(32 * (s["global_load"]["sectors"] + s["global_store"]["sectors"])
                       for s in map(scaled, repack))
    sh_ld = {m: totals["shared_load"][m] + totals["ldmatrix"][m] for m in totals["shared_load"]}
    sh_st = {m: totals["shared_store"][m] + totals["fragment_store"][m] for m in totals["shared_store"]}
    gl, gs = totals["global_load"], totals["global_store"]
    return dict(
        name=name, path=path, launches=len(launches),
        global_ld_sectors_per_request=_ratio(gl["cost"], gl["requests"]),
        global_st_sectors_per_request=_ratio(gs["cost"], gs["requests"]),
        global_bytes_used_per_byte_moved=_ratio(gl["bytes_used"] + gs["bytes_used"],
                                                32 * (gl["cost"] + gs["cost"])),
        shared_ld_wavefronts_per_request=_ratio(sh_ld["cost"], sh_ld["requests"]),
        shared_ld_conflict_share=(None if not sh_ld["cost"] else
                                  1 - sh_ld["ideal"] / sh_ld["cost"]),
        shared_st_conflict_share=(None if not sh_st["cost"] else
                                  1 - sh_st["ideal"] / sh_st["cost"]),
        l2_to_sm_per_input_byte_no_l1=_ratio(32 * gl["cost"], input_bytes),
        l2_to_sm_per_input_byte_block_l1=_ratio(32 * unique, input_bytes),
        repack_bytes_per_call=repack_bytes or None,
        barriers_per_block=main["barriers_per_block"], mma_per_block=main["mma_per_block"],
        main_grid=main["grid"], sampled_blocks=main["sampled_blocks"], blocks=main["blocks"],
    )


COLUMNS = [("global_ld_sectors_per_request", "ld sect/req", "global_ld_sectors_per_request"),
           ("global_st_sectors_per_request", "st sect/req", "global_st_sectors_per_request"),
           ("shared_ld_wavefronts_per_request", "sh ld wf/req", "shared_ld_wavefronts_per_instr"),
           ("shared_ld_conflict_share", "sh ld confl", "shared_ld_conflict_share"),
           ("shared_st_conflict_share", "sh st confl", "shared_st_conflict_share"),
           ("l2_to_sm_per_input_byte_no_l1", "L2→SM/in (no L1)", "l2_to_sm_bytes_per_input_byte"),
           ("l2_to_sm_per_input_byte_block_l1", "L2→SM/in (block L1)", None),
           ("barriers_per_block", "bar/blk", None), ("mma_per_block", "mma/blk", None)]


def fmt(v):
    return "" if v is None else f"{v:.2f}"


def markdown(rows, measured, header):
    cols = []
    for key, label, ncu_key in COLUMNS:
        cols.append((label, key, None))
        if measured and ncu_key:
            ncu_label = "L2→SM/in ncu" if ncu_key.startswith("l2_to_sm") else f"{label} ncu"
            cols.append((ncu_label, None, ncu_key))
    lines = [header, "", "| case | " + " | ".join(c[0] for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for r in rows:
        m = measured.get(r["name"], {})
        cells = [fmt(r[k]) if k else fmt(m.get(n)) for _, k, n in cols]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true", help="every class x stride x layout x dtype")
    p.add_argument("--blocks", type=int, default=12, help="blocks run per grid (0: all)")
    p.add_argument("--ncu", help="an ncu summary JSON (scripts/ncu_summary.py) to set beside")
    p.add_argument("--out-prefix", default="access-profile")
    p.add_argument("--only", help="only the cases whose name contains this")
    args = p.parse_args(argv)
    binary = cuda_emulator.build("profile")
    measured, source = {}, None
    if args.ncu:
        data = json.load(open(args.ncu))
        measured = {c["name"]: c for c in data["cases"]}
        source = f"{os.path.relpath(args.ncu, REPO)} ({data.get('gpu')})"
    rows = []
    for case in cases(args.all):
        name = ncu_cases.case_name(case)
        if args.only and args.only not in name:
            continue
        t0 = time.time()
        launches, input_bytes, path = run_case(binary, case, args.blocks)
        rows.append(summarise(name, path, launches, input_bytes))
        print(f"{name}: {path}, {len(launches)} launches, {time.time() - t0:.1f} s",
              file=sys.stderr, flush=True)
    header = ("# Access profile of the CUDA kernels (CUDA emulator, no GPU)\n\n"
              f"{len(rows)} cases, batch 1, {args.blocks or 'all'} blocks per grid scaled to "
              "the grid. Columns marked ncu: measured by Nsight Compute in "
              f"{source}." if source else
              f"# Access profile of the CUDA kernels (CUDA emulator, no GPU)\n\n{len(rows)} "
              f"cases, batch 1, {args.blocks or 'all'} blocks per grid scaled to the grid.")
    text = markdown(rows, measured, header)
    Path(args.out_prefix + ".md").write_text(text)
    Path(args.out_prefix + ".json").write_text(json.dumps(
        {"blocks_per_grid": args.blocks, "ncu_source": source, "cases": rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

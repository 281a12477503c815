"""Turns Nsight Compute's CSV of scripts/ncu_cases.py into a per-path summary (JSON + markdown).

    python3 scripts/ncu_summary.py --metrics                 # the metric list, comma-separated
    python3 scripts/ncu_summary.py ncu.csv cases.json --out-prefix ncu-summary
    python3 scripts/ncu_summary.py --stalls --metrics        # the warp-stall metrics
    python3 scripts/ncu_summary.py --stalls ncu-stalls.csv cases.json --out-prefix ncu-stalls

Input: `ncu --csv --page details --print-units base --metrics <list>` (one row per kernel and
metric: "ID", "Kernel Name", "Block Size", "Grid Size", "Metric Name", "Metric Unit",
"Metric Value", ...), and the manifest ncu_cases.py wrote. Kernels are assigned to cases by the
"ncu_case_marker" kernel that precedes each case. Per case it reports, summed over the case's
kernels (the main kernel, the longest, gives the launch figures):
- time (gpu__time_duration) and DRAM bytes read + written, against the case's floor bytes;
- global load/store sectors per request (4 is a fully used 128-byte line per request);
- shared-memory wavefronts per instruction for loads, stores and ldmatrix (1 = no bank
  conflicts), and the bank-conflict counts;
- bytes from L2 to the SMs per byte of input (re-reads, halo, weights);
- achieved occupancy, registers, shared memory, grid, block and waves of the main kernel.
These are the figures that the GPU-free profile (issue "Kernel efficiency without a GPU")
predicts; a later tool puts the two side by side.

--stalls: where the main kernel's warps wait, from a separate (smaller) ncu run with
STALL_METRICS: per stall reason, the warps stalled for it per issued instruction (their sum is
the cycles between two issues of a warp), the reasons largest first.
"""

import argparse
import csv
import json
import re
import sys

MARKER = "ncu_case_marker"

# Metric names of Nsight Compute 2025 for sm_80/sm_90. The plan drops any that the installed ncu
# does not know (ncu --query-metrics) instead of failing the whole run on one name.
METRICS = [
    "gpu__time_duration.sum",
    "dram__bytes_read.sum", "dram__bytes_write.sum",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "lts__t_sectors_srcunit_tex_op_read.sum",
    "l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum",
    "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum",
    "l1tex__t_requests_pipe_lsu_mem_global_op_st.sum",
    "l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum",
    "smsp__sass_inst_executed_op_shared_ld.sum",
    "smsp__sass_inst_executed_op_shared_st.sum",
    "smsp__sass_inst_executed_op_ldsm.sum",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ldsm.sum",
    "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum",
    "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum",
    "l1tex__throughput.avg.pct_of_peak_sustained_active",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__warps_active.avg.pct_of_peak_sustained_active",
    "sm__maximum_warps_per_active_cycle_pct",
    "launch__registers_per_thread",
    "launch__shared_mem_per_block_dynamic",
    "launch__shared_mem_per_block_static",
    "launch__grid_size",
    "launch__block_size",
    "launch__waves_per_multiprocessor",
]

# Warp-stall reasons (Nsight Compute's Warp State section), as warps stalled per issued
# instruction; gpu__time_duration picks the main kernel.
STALL_REASONS = ["long_scoreboard", "barrier", "short_scoreboard", "mio_throttle", "wait",
                 "math_pipe_throttle", "not_selected", "selected", "lg_throttle",
                 "dispatch_stall", "no_instruction", "branch_resolving", "tex_throttle",
                 "membar", "drain", "imc_miss", "misc", "sleeping"]
def stall_metric(reason: str) -> str:
    return f"smsp__average_warps_issue_stalled_{reason}_per_issue_active.ratio"


STALL_METRICS = ["gpu__time_duration.sum"] + [stall_metric(r) for r in STALL_REASONS]

# ncu scales units unless --print-units base; convert whatever came to bytes, ns and plain counts
UNIT_SCALE = {
    "byte": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9,
    "nsecond": 1, "usecond": 1e3, "msecond": 1e6, "second": 1e9,
}


def available_metrics(query_output: str, metrics=None):
    """The subset of METRICS (or `metrics`) whose base name `ncu --query-metrics` lists, plus
    the launch__ attributes: ncu 2025.3 on the H200 (2026-11-26) did not list them (they are
    launch statistics, not hardware counters), so filtering by the query dropped registers and
    waves."""
    known = set(re.findall(r"^\s*([a-z0-9_]+__[a-z0-9_]+)", query_output, re.M))
    return [m for m in (metrics or METRICS)
            if m.split(".")[0] in known or m.startswith("launch__")]


def parse_value(value: str, unit: str):
    text = value.replace(",", "").strip()
    try:
        number = float(text)
    except ValueError:
        return None
    return number * UNIT_SCALE.get(unit.strip().lower(), 1)


def read_kernels(csv_text: str):
    """[{id, name, block, grid, metrics: {name: value}}] in profile order."""
    lines = csv_text.splitlines()
    # the table starts at its header; ncu's "==PROF==" notes (and any program output that
    # reached the same file) come before it or between rows
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), len(lines))
    lines = [line for line in lines[start:] if line and not line.startswith("==")]
    kernels = {}
    for row in csv.DictReader(lines):
        kid = row.get("ID")
        if kid is None or row.get("Metric Name") is None:
            continue
        k = kernels.setdefault(int(kid), dict(id=int(kid), name=row.get("Kernel Name", ""),
                                              block=row.get("Block Size", ""),
                                              grid=row.get("Grid Size", ""), metrics={}))
        k["metrics"][row["Metric Name"]] = parse_value(row.get("Metric Value", ""),
                                                       row.get("Metric Unit", ""))
    return [kernels[i] for i in sorted(kernels)]


def assign_to_cases(kernels, n_cases: int):
    """Splits the kernels at the markers: [[kernels of case 0], [case 1], ...]."""
    groups, current = [], None
    for k in kernels:
        if MARKER in k["name"]:
            current = []
            groups.append(current)
        elif current is not None:
            current.append(k)
    if len(groups) != n_cases:
        raise ValueError(f"the profile has {len(groups)} case markers, the manifest "
                         f"{n_cases} cases: was the profile cut short (ncu --launch-count, a "
                         f"crash)?")
    return groups


def _ratio(num, den):
    return None if num is None or not den else num / den


def _add(a, b):
    return None if a is None and b is None else (a or 0) + (b or 0)


def _sum(kernels, metric):
    values = [k["metrics"].get(metric) for k in kernels]
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def main_kernel(kernels):
    """The case's longest kernel (None if it has none): the one whose launch figures count."""
    return max(kernels, key=lambda k: k["metrics"].get("gpu__time_duration.sum") or 0,
               default=None)


def summarise_case(case, kernels):
    m = lambda name: _sum(kernels, name)  # noqa: E731
    time_ns = m("gpu__time_duration.sum")
    dram = None
    if m("dram__bytes_read.sum") is not None:
        dram = m("dram__bytes_read.sum") + (m("dram__bytes_write.sum") or 0)
    main = main_kernel(kernels)
    mm = (main or {}).get("metrics", {})
    l2_read = m("lts__t_sectors_srcunit_tex_op_read.sum")
    return dict(
        name=case["name"], op=case["op"], backend=case["backend"], dtype=case["dtype"],
        layout=case["layout"], batch=case["batch"],
        kernels=[k["name"][:90] for k in kernels],
        time_us=None if time_ns is None else time_ns / 1e3,
        floor_bytes=case["floor_bytes"],
        dram_bytes=dram,
        dram_bytes_over_floor=_ratio(dram, case["floor_bytes"]),
        dram_gbs=_ratio(dram, time_ns),  # bytes per ns = GB/s
        global_ld_sectors_per_request=_ratio(m("l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum"),
                                             m("l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum")),
        global_st_sectors_per_request=_ratio(m("l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum"),
                                             m("l1tex__t_requests_pipe_lsu_mem_global_op_st.sum")),
        # The op_ld wavefronts include ldmatrix's (H200, ncu 2025.3: 36.8 M wavefronts against
        # 0.46 M LDS and 4.1 M LDSM instructions in one WMMA kernel), so they are divided by
        # both instruction counts; the ideal is 1 for 32-bit LDS, 4 for LDS.128 and LDSM.x4.
        shared_ld_wavefronts_per_instr=_ratio(
            m("l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum"),
            _add(m("smsp__sass_inst_executed_op_shared_ld.sum"),
                 m("smsp__sass_inst_executed_op_ldsm.sum"))),
        # the share of shared-load wavefronts that bank conflicts added (0 = conflict-free)
        shared_ld_conflict_share=_ratio(
            m("l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum"),
            m("l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum")),
        shared_st_conflict_share=_ratio(
            m("l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum"),
            m("l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum")),
        shared_st_wavefronts_per_instr=_ratio(
            m("l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum"),
            m("smsp__sass_inst_executed_op_shared_st.sum")),
        ldsm_wavefronts_per_instr=_ratio(
            m("l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ldsm.sum"),
            m("smsp__sass_inst_executed_op_ldsm.sum")),
        shared_ld_bank_conflicts=m("l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum"),
        shared_st_bank_conflicts=m("l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum"),
        l2_to_sm_bytes_per_input_byte=_ratio(None if l2_read is None else 32 * l2_read,
                                             case.get("input_bytes")),
        main_kernel=(main or {}).get("name", "")[:90],
        achieved_occupancy_pct=mm.get("sm__warps_active.avg.pct_of_peak_sustained_active"),
        theoretical_occupancy_pct=mm.get("sm__maximum_warps_per_active_cycle_pct"),
        registers=mm.get("launch__registers_per_thread"),
        shared_mem_bytes=(None if mm.get("launch__shared_mem_per_block_dynamic") is None else
                          mm["launch__shared_mem_per_block_dynamic"]
                          + (mm.get("launch__shared_mem_per_block_static") or 0)),
        grid=(main or {}).get("grid"), block=(main or {}).get("block"),
        waves=mm.get("launch__waves_per_multiprocessor"),
        l1_throughput_pct=mm.get("l1tex__throughput.avg.pct_of_peak_sustained_active"),
        dram_throughput_pct=mm.get("dram__throughput.avg.pct_of_peak_sustained_elapsed"),
    )


def summarise_stalls(case, kernels):
    """The main kernel's stall reasons: {reason: warps stalled per issued instruction}."""
    main = main_kernel(kernels)
    mm = (main or {}).get("metrics", {})
    stalls = {r: mm.get(stall_metric(r)) for r in STALL_REASONS}
    stalls = {r: v for r, v in stalls.items() if v is not None}
    return dict(name=case["name"], main_kernel=(main or {}).get("name", "")[:90],
                cycles_per_issue=sum(stalls.values()) if stalls else None,
                stalls=dict(sorted(stalls.items(), key=lambda kv: -kv[1])))


def stalls_markdown(summary, header: str, top=5):
    lines = [header, "", "Warps stalled per issued instruction, by reason, in each case's main "
             "kernel (their sum: cycles between two issues of a warp); the largest "
             f"{top}.", "", "| name | cycles per issue | largest stall reasons |", "|---|---|---|"]
    for row in summary:
        total = row["cycles_per_issue"]
        reasons = ", ".join(f"{r} {v:.2f}" for r, v in list(row["stalls"].items())[:top])
        lines.append(f"| {row['name']} | {'' if total is None else f'{total:.2f}'} | "
                     f"{reasons} |")
    return "\n".join(lines) + "\n"


COLUMNS = [("name", "{}"), ("time_us", "{:.1f}"), ("dram_bytes_over_floor", "{:.2f}"),
           ("dram_gbs", "{:.0f}"), ("global_ld_sectors_per_request", "{:.2f}"),
           ("global_st_sectors_per_request", "{:.2f}"),
           ("shared_ld_wavefronts_per_instr", "{:.2f}"), ("shared_ld_conflict_share", "{:.2f}"),
           ("shared_st_conflict_share", "{:.2f}"),
           ("l2_to_sm_bytes_per_input_byte", "{:.2f}"), ("achieved_occupancy_pct", "{:.0f}"),
           ("registers", "{:.0f}"), ("waves", "{:.2f}")]


def markdown(summary, header: str):
    lines = [header, "", "| " + " | ".join(c for c, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for row in summary:
        lines.append("| " + " | ".join("" if row.get(c) is None else fmt.format(row[c])
                                       for c, fmt in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", action="store_true",
                   help="print the metric list (comma-separated) and exit")
    p.add_argument("--query-output", help="a file with `ncu --query-metrics` output: "
                                          "--metrics then prints only the metrics it lists")
    p.add_argument("csv", nargs="?")
    p.add_argument("manifest", nargs="?")
    p.add_argument("--out-prefix", default="ncu-summary")
    p.add_argument("--stalls", action="store_true",
                   help="the warp-stall metrics and their summary instead of the main ones")
    args = p.parse_args(argv)
    wanted = STALL_METRICS if args.stalls else METRICS
    if args.metrics:
        names = wanted
        if args.query_output:
            names = available_metrics(open(args.query_output).read(), wanted)
            dropped = sorted(set(wanted) - set(names))
            if dropped:
                print(f"ncu does not know: {', '.join(dropped)}", file=sys.stderr)
        print(",".join(names))
        return 0
    if not (args.csv and args.manifest):
        p.error("give the ncu CSV and the manifest (or --metrics)")
    manifest = json.load(open(args.manifest))
    kernels = read_kernels(open(args.csv, errors="replace").read())
    groups = assign_to_cases(kernels, len(manifest["cases"]))
    header = f"# ncu summary: {manifest.get('gpu')}, batch {manifest.get('batch')}"
    if args.stalls:
        summary = [summarise_stalls(case, ks) for case, ks in zip(manifest["cases"], groups)]
        with open(args.out_prefix + ".json", "w") as f:
            json.dump({"gpu": manifest.get("gpu"), "batch": manifest.get("batch"),
                       "cases": summary}, f, indent=1)
        text = stalls_markdown(summary, header.replace("summary", "warp stalls"))
        with open(args.out_prefix + ".md", "w") as f:
            f.write(text)
        print(text)
        return 0
    summary = [summarise_case(case, ks) for case, ks in zip(manifest["cases"], groups)]
    with open(args.out_prefix + ".json", "w") as f:
        json.dump({"gpu": manifest.get("gpu"), "torch": manifest.get("torch"),
                   "batch": manifest.get("batch"), "cases": summary,
                   "skipped": manifest.get("skipped", [])}, f, indent=1)
    text = markdown(summary, header)
    with open(args.out_prefix + ".md", "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A made-up Nsight Compute profile, in ncu's own CSV format, for a manifest of
scripts/ncu_cases.py: what `ncu --csv --page details --print-units base` prints.

The GPU plan's dry run parses it (so a parsing error shows on the CPU, not on the GPU), and
tests/test_gpu_plan.py checks the summary's figures against the values chosen here:
per case two kernels (a small one and the main one, 1:3 in every additive metric), DRAM bytes
exactly the case's floor, 2000 bytes per ns, 4 sectors per global load request, 8 per store,
1 shared wavefront per LDS and 2 per ldmatrix (9/7 per shared load, as ncu counts them), a
quarter of the load wavefronts from bank conflicts, L2-to-SM reads 1.5x the input; warp stalls
per issue (ncu_summary --stalls) of 3 (long_scoreboard), 1.5 (barrier) and 0.25 (wait) in the
main kernel, 1 (long_scoreboard) in the small one.
Values above 999 carry thousands separators and some units are scaled, as ncu may print them.

    python tests/ncu_fixture.py MANIFEST > ncu.csv
"""

import csv
import io
import json
import sys

HEADER = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream",
          "Block Size", "Grid Size", "Device", "CC", "Section Name", "Metric Name",
          "Metric Unit", "Metric Value"]


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:g}"


def case_metrics(case, share: float):
    """The metrics of one kernel carrying `share` of the case's work."""
    floor, inp = case["floor_bytes"], case["input_bytes"]
    requests = floor / 128 * share
    return [
        ("gpu__time_duration.sum", "usecond", floor / 2000 * share / 1e3),  # scaled unit
        ("dram__bytes_read.sum", "byte", inp * share),
        ("dram__bytes_write.sum", "Kbyte", (floor - inp) * share / 1e3),  # scaled unit
        ("lts__t_sectors_srcunit_tex_op_read.sum", "sector", 1.5 * inp / 32 * share),
        ("l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum", "", requests),
        ("l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum", "sector", 4 * requests),
        ("l1tex__t_requests_pipe_lsu_mem_global_op_st.sum", "", requests / 2),
        ("l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum", "sector", 4 * requests),
        # as ncu counts them: the op_ld wavefronts include the ldmatrix ones
        ("smsp__sass_inst_executed_op_shared_ld.sum", "inst", 1000 * share),
        ("smsp__sass_inst_executed_op_ldsm.sum", "inst", 400 * share),
        ("l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum", "", (1000 + 800) * share),
        ("l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ldsm.sum", "", 800 * share),
        ("l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum", "", 450 * share),
        ("sm__warps_active.avg.pct_of_peak_sustained_active", "%", 40 + 20 * share),
        ("launch__registers_per_thread", "register/thread", 64 if share > 0.5 else 16),
        ("launch__waves_per_multiprocessor", "", 1.25),
        *stall_metrics(share),
    ]


def stall_metrics(share: float):
    stalls = dict(long_scoreboard=3.0, barrier=1.5, wait=0.25) if share > 0.5 else dict(
        long_scoreboard=1.0)
    return [(f"smsp__average_warps_issue_stalled_{r}_per_issue_active.ratio", "", v)
            for r, v in stalls.items()]


def profile_csv(manifest: dict) -> str:
    out = io.StringIO()
    out.write("==PROF== Connected to process 4242 (/usr/bin/python3)\n")
    out.write("ncu cases: 3 run, 0 skipped (program output that reached the same file)\n")
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(HEADER)
    kid = 0

    def kernel(name, metrics):
        nonlocal kid
        for metric, unit, value in metrics:
            writer.writerow([kid, 4242, "python3", "127.0.0.1", name, 1, 7, "(128, 1, 1)",
                             "(264, 1, 1)", 0, "9.0", "Command line profiler metrics", metric,
                             unit, _fmt(value)])
        kid += 1

    for i, case in enumerate(manifest["cases"]):
        kernel("ncu_case_marker", [("gpu__time_duration.sum", "nsecond", 1500)])
        kernel(f"prologue_kernel_{i}", case_metrics(case, 0.25))
        kernel(f"main_kernel_{i}<128, 64>", case_metrics(case, 0.75))
    out.write("==PROF== Disconnected from process 4242\n")
    return out.getvalue()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        sys.stdout.write(profile_csv(json.load(f)))

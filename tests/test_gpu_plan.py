"""The GPU plan's plumbing (scripts/gpu_session.sh and its helpers), checked on the CPU so that
its first real use cannot fail on a path, an argument or a file name. CI also runs the whole
plan with --dry-run."""

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ncu_fixture  # noqa: E402
import ncu_summary  # noqa: E402

PLAN = os.path.join(ROOT, "scripts", "gpu_session.sh")


def manifest(n_cases=3):
    cases = []
    for i in range(n_cases):
        cases.append(dict(name=f"conv cuda case{i}", op="conv", backend="cuda", dtype="fp16",
                          layout="nhwc", batch=128, floor_bytes=1_000_000 * (i + 1),
                          input_bytes=600_000 * (i + 1)))
    return {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "batch": 128, "cases": cases,
            "skipped": []}


def test_ncu_summary_figures_from_a_profile_in_ncus_format():
    m = manifest()
    kernels = ncu_summary.read_kernels(ncu_fixture.profile_csv(m))
    assert len(kernels) == 9  # a marker and two kernels per case
    groups = ncu_summary.assign_to_cases(kernels, len(m["cases"]))
    for case, ks in zip(m["cases"], groups):
        s = ncu_summary.summarise_case(case, ks)
        assert len(s["kernels"]) == 2 and s["main_kernel"].startswith("main_kernel_")
        assert s["dram_bytes"] == pytest.approx(case["floor_bytes"])  # Kbyte scaled back
        assert s["dram_bytes_over_floor"] == pytest.approx(1.0)
        assert s["time_us"] == pytest.approx(case["floor_bytes"] / 2000 / 1e3)  # usecond
        assert s["dram_gbs"] == pytest.approx(2000, rel=1e-3)
        assert s["global_ld_sectors_per_request"] == pytest.approx(4, rel=1e-3)
        assert s["global_st_sectors_per_request"] == pytest.approx(8, rel=1e-3)
        assert s["shared_ld_wavefronts_per_instr"] == pytest.approx(1800 / 1400)
        assert s["shared_ld_conflict_share"] == pytest.approx(0.25)
        assert s["l2_to_sm_bytes_per_input_byte"] == pytest.approx(1.5, rel=1e-3)
        assert s["registers"] == 64 and s["waves"] == 1.25  # the main kernel's launch figures
        assert s["achieved_occupancy_pct"] == pytest.approx(55)
        assert s["shared_st_wavefronts_per_instr"] is None  # not in the profile: no figure
        assert s["shared_st_conflict_share"] is None


def test_ncu_stall_summary_from_a_profile_in_ncus_format(tmp_path):
    """--stalls: the main kernel's reasons, largest first, and their sum; the metric list is
    the stall one, filtered by ncu's query like the main list."""
    m = manifest()
    groups = ncu_summary.assign_to_cases(ncu_summary.read_kernels(ncu_fixture.profile_csv(m)),
                                         len(m["cases"]))
    s = ncu_summary.summarise_stalls(m["cases"][0], groups[0])
    assert s["main_kernel"].startswith("main_kernel_")
    assert s["stalls"] == {"long_scoreboard": 3.0, "barrier": 1.5, "wait": 0.25}
    assert list(s["stalls"]) == ["long_scoreboard", "barrier", "wait"]
    assert s["cycles_per_issue"] == pytest.approx(4.75)
    query = "smsp__average_warps_issue_stalled_barrier_per_issue_active  Counter ...\n"
    assert ncu_summary.available_metrics(query, ncu_summary.STALL_METRICS) == [
        "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio"]
    (tmp_path / "m.json").write_text(json.dumps(m))
    (tmp_path / "p.csv").write_text(ncu_fixture.profile_csv(m))
    assert ncu_summary.main(["--stalls", str(tmp_path / "p.csv"), str(tmp_path / "m.json"),
                             "--out-prefix", str(tmp_path / "stalls")]) == 0
    text = (tmp_path / "stalls.md").read_text()
    assert "| 4.75 | long_scoreboard 3.00, barrier 1.50, wait 0.25 |" in text


def test_ncu_summary_refuses_a_profile_that_does_not_match_the_manifest():
    m = manifest(3)
    kernels = ncu_summary.read_kernels(ncu_fixture.profile_csv(m))
    with pytest.raises(ValueError, match="3 case markers, the manifest 4 cases"):
        ncu_summary.assign_to_cases(kernels, 4)
    with pytest.raises(ValueError, match="0 case markers"):
        ncu_summary.assign_to_cases(
            [k for k in kernels if ncu_summary.MARKER not in k["name"]], 3)


def test_ncu_summary_command_writes_json_and_markdown(tmp_path):
    man = tmp_path / "cases.json"
    man.write_text(json.dumps(manifest(2)))
    raw = tmp_path / "ncu.csv"
    raw.write_text(ncu_fixture.profile_csv(manifest(2)))
    assert ncu_summary.main([str(raw), str(man), "--out-prefix", str(tmp_path / "s")]) == 0
    data = json.loads((tmp_path / "s.json").read_text())
    assert [c["name"] for c in data["cases"]] == ["conv cuda case0", "conv cuda case1"]
    assert "| conv cuda case1 |" in (tmp_path / "s.md").read_text()


def test_metric_list_keeps_only_what_ncu_knows():
    query = ("Device GH100\nMetric Name   Metric Type  Metric Unit  Metric Description\n"
             "dram__bytes_read    Counter  byte  # of bytes read from DRAM\n"
             "gpu__time_duration  Counter  nsecond  total duration\n")
    kept = ncu_summary.available_metrics(query)
    # launch__ attributes are kept: ncu's query does not list them
    assert [m for m in kept if not m.startswith("launch__")] == ["gpu__time_duration.sum",
                                                                "dram__bytes_read.sum"]
    assert "launch__registers_per_thread" in kept


def test_ncu_cases_build_every_path_on_the_cpu(tmp_path):
    """The cases script on CPU tensors (the reference backend): every real shape and variant."""
    import ncu_cases

    out = tmp_path / "cases.json"
    assert ncu_cases.main(["--device", "cpu", "--manifest", str(out), "--ops", "se"]) == 0
    cases = json.loads(out.read_text())["cases"]
    assert [c["C"] for c in cases] == [256, 512, 1024, 2048]  # the seresnext50 SE stages
    conv = list(ncu_cases.conv_cases(["cuda"]))
    classes = {(c["cpg"], c["stride"]) for c in conv}
    assert classes == {(4, 1), (8, 1), (8, 2), (16, 1), (16, 2), (32, 1), (32, 2), (64, 1),
                       (64, 2)}
    names = [ncu_cases.case_name(c) for c in conv]
    assert len(set(names)) == len(names), "case names must be unique"


def _plan(*args, cwd=None):
    return subprocess.run(["bash", PLAN, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


def test_plan_rejects_an_unknown_step():
    r = _plan("benchmark-everything")
    assert r.returncode == 2 and "unknown step 'benchmark-everything'" in r.stdout


def test_plan_unpacks_results_into_the_repository_tree(tmp_path):
    # a copy of the script in a scratch "repository", so the real one is not written to
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(PLAN, repo / "scripts" / "gpu_session.sh")
    stage = tmp_path / "stage"
    (stage / "benchmarks" / "results").mkdir(parents=True)
    (stage / "benchmarks" / "results" / "grouped_conv-H100-abc-1.json").write_text("{}")
    (stage / "resnext_kernels" / "backends" / "auto_tables").mkdir(parents=True)
    (stage / "resnext_kernels" / "backends" / "auto_tables" / "sm_90.json").write_text("{}")
    files_at = tmp_path / "files_at"
    files_at.mkdir()
    with tarfile.open(files_at / "results.tar.gz", "w:gz") as tar:
        tar.add(stage, arcname=".")
    r = subprocess.run(["bash", str(repo / "scripts" / "gpu_session.sh"), "--unpack",
                        str(files_at)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (repo / "benchmarks" / "results" / "grouped_conv-H100-abc-1.json").exists()
    assert (repo / "resnext_kernels" / "backends" / "auto_tables" / "sm_90.json").exists()
    assert "unpacked: ./resnext_kernels/backends/auto_tables/sm_90.json" in r.stdout

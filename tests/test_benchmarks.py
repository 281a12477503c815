"""The benchmark scripts and their timing helper (benchmarks/common.py), on the CPU.

The scripts run in quick mode and must write result files with every field a GPU plan reads;
--time-budget and SIGTERM must still leave result files. The GPU timing logic (calls queued
behind a spin, the checks that a sample really was queued) runs here against a simulated GPU,
so its arithmetic is tested where no GPU is.
"""

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import common  # noqa: E402
import resnext_kernels as rk  # noqa: E402

TIMING_FIELDS = ("p20_ms", "p50_ms", "p80_ms", "samples", "calls_per_sample", "host_us_per_call",
                 "device_timing", "graph_status")


def script_env():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the benchmarks time real kernels, never the interpreter
    return env


def run_script(name, out_dir, *extra, quick=True):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", name), *(["--quick"] if quick else []),
         "--out", str(out_dir), *extra],
        capture_output=True, text=True, timeout=900, env=script_env(), cwd=str(out_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def load_script(name):
    """A benchmark script as a module, to call its main() in this process (no interpreter
    start-up: these runs do little work)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                  os.path.join(ROOT, "benchmarks", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_cudnn_benchmark(monkeypatch):
    """The scripts turn cudnn.benchmark on: put it back for the other tests."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)


def load_outputs(out_dir, kind):
    files = sorted(os.listdir(out_dir))
    js = [f for f in files if f.startswith(kind) and f.endswith(".json")]
    cs = [f for f in files if f.startswith(kind) and f.endswith(".csv")]
    assert len(js) == 1 and len(cs) == 1, files
    assert not [f for f in files if f.endswith(".tmp")], files
    with open(os.path.join(out_dir, js[0])) as f:
        data = json.load(f)
    with open(os.path.join(out_dir, cs[0])) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data["rows"]) > 0
    for key in ("gpu", "torch", "triton", "git_commit", "date", "resnext_kernels_build"):
        assert key in data["environment"], key
    return data, rows


def check_timing_fields(row, reps):
    for key in TIMING_FIELDS:
        assert key in row, key
    assert 0 < row["p20_ms"] <= row["p50_ms"] <= row["p80_ms"]
    assert row["samples"] == reps and row["calls_per_sample"] >= 1
    if row["device_timing"] == "wall":  # CPU: the host time is the wall time
        assert row["host_us_per_call"] == pytest.approx(row["p50_ms"] * 1e3)
        assert row["graph_status"].startswith("not applicable")
    else:
        assert row["device_timing"] in ("queued", "unqueued") and row["host_us_per_call"] > 0


# --------------------------------------------------------------------------- the scripts
def test_grouped_conv_benchmark_quick(tmp_path):
    out = run_script("grouped_conv.py", tmp_path, "--reps", "4")
    data, rows = load_outputs(tmp_path, "grouped_conv")
    if data["environment"]["gpu"] is None:
        assert "GPU providers skipped" in out
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    assert ok, data["rows"]
    for r in ok:
        check_timing_fields(r, reps=4)
        assert r["pct_of_floor"] == pytest.approx(100 * r["floor_ms"] / r["p50_ms"])
        assert r["max_rel_err"] < 0.1 and r["n_sets"] >= 1
    assert {"host_us_per_call", "graph_status", "calls_per_sample"} <= set(rows[0])
    assert data["environment"]["copy_bandwidth_gbs"] > 0
    assert "host us" in out and "graph ms" in out, "the console table shows both new times"


def test_grouped_conv_benchmark_custom_shape(tmp_path, keep_cudnn_benchmark):
    gc = load_script("grouped_conv")
    assert gc.main(["--cpu", "--shape", "64,9,9,16,2", "--reps", "3", "--out", str(tmp_path),
                    "--layouts", "nhwc"]) == 0
    data, _ = load_outputs(tmp_path, "grouped_conv")
    assert {(r["C"], r["H"], r["cpg"], r["stride"]) for r in data["rows"]} == {(64, 9, 4, 2)}
    assert all(r["status"] == "ok" and r["samples"] == 3 for r in data["rows"]), data["rows"]
    assert {r["weight_layout"] for r in data["rows"]} == {"nhwc"}


def test_backward_benchmark_custom_shape(tmp_path, keep_cudnn_benchmark):
    """Both phases, checked against float64 before timing; floors; speed-ups over cuDNN eager."""
    bw = load_script("grouped_conv_backward")
    assert bw.main(["--shape", "64,9,9,16,2", "--reps", "3", "--out", str(tmp_path),
                    "--layouts", "nhwc", "--dtypes", "fp32"]) == 0
    data, _ = load_outputs(tmp_path, "grouped_conv_backward")
    rows = data["rows"]
    assert {(r["phase"], r["provider"]) for r in rows} == {
        (phase, p) for phase in ("backward", "fwd+bwd") for p in ("cudnn_eager", "reference")}
    for r in rows:
        assert r["status"] == "ok", r
        check_timing_fields(dict(r, graph_status="not applicable"), reps=3)
        assert r["max_rel_err"] < 1e-3
        assert r["pct_of_floor"] == pytest.approx(100 * r["floor_ms"] / r["p50_ms"])
        assert "speedup_vs_cudnn_eager" in r
    floors = {r["phase"]: r["floor_ms"] for r in rows}
    assert floors["fwd+bwd"] > floors["backward"] > 0


def test_backward_benchmark_train_mode_batchnorm(tmp_path, keep_cudnn_benchmark):
    """--bn train: BatchNorm with batch statistics (cuDNN eager's nn.BatchNorm2d in train mode,
    the train-mode op for ours), all four gradients checked against float64; the "write z"
    floors; the prologue provider only in train mode; speed-ups within a BN mode."""
    bw = load_script("grouped_conv_backward")
    assert bw.main(["--shape", "32,7,7,8,1", "--reps", "2", "--out", str(tmp_path),
                    "--layouts", "nchw", "--dtypes", "fp32", "--bn", "eval", "train"]) == 0
    data, _ = load_outputs(tmp_path, "grouped_conv_backward")
    rows = data["rows"]
    assert {(r["bn"], r["phase"], r["provider"]) for r in rows} == {
        (bn, phase, p) for bn in ("eval", "train") for phase in ("backward", "fwd+bwd")
        for p in ("cudnn_eager", "reference")}
    for r in rows:
        assert r["status"] == "ok" and r["max_rel_err"] < 1e-3, r
        assert r["speedup_vs_cudnn_eager"] > 0
    floor = {(r["bn"], r["phase"]): r["floor_ms"] for r in rows}
    # the same layer (C_in = C_out, stride 1: in = out bytes, the mask 1/32 of fp32's)
    unit = floor["eval", "backward"] / (3 + 1 / 32)
    assert floor["train", "backward"] == pytest.approx(unit * (9 + 2 / 32))
    assert floor["train", "fwd+bwd"] == pytest.approx(unit * (13 + 3 / 32))
    jobs = bw.plan([("m", "l", 32, 7, 7, 32, 4, 1, 1)], [torch.float32], ["nhwc"],
                   ["triton_kernels_prologue", "cudnn_eager"], ["fwd+bwd"], 1, ["eval", "train"])
    assert [(row["bn"], row["provider"]) for row, _ in jobs] == [
        ("eval", "cudnn_eager"), ("train", "triton_kernels_prologue"), ("train", "cudnn_eager")]


def test_backward_benchmark_kernel_summary():
    """The fwd+bwd rows' kernel breakdown (GPU only): the longest first, names cut, the rest
    counted as others; on the CPU the profiler part records why it has nothing, never raises."""
    bw = load_script("grouped_conv_backward")
    times = {"wgrad_kernel_with_a_long_name": 30.0, "dgrad": 50.0, "select": 5.0, "a": 1.0}
    assert bw.summarize_kernels(times, top=2, width=10) == \
        "dgrad 50.0; wgrad_kern 30.0; 2 others 6.0"
    assert bw.summarize_kernels({"x": 2.0}) == "x 2.0"
    assert bw.summarize_kernels({}) == ""

    def broken():
        raise RuntimeError("no")
    # (on the CPU the profiler refuses first: it has no CUDA activity; on a GPU, the call fails)
    assert bw.kernel_breakdown(broken, ()).startswith("unavailable: ")


def test_grouped_conv_weights_follow_the_input_layout_unless_told(keep_cudnn_benchmark):
    """By default a channels_last row's conv weights are channels_last too (as
    model.to(memory_format=torch.channels_last) leaves them: cuDNN's speed depends on it);
    --weight-layout contiguous keeps them NCHW, and the rows say which."""
    gc = load_script("grouped_conv")
    shapes = [("custom", "custom", 64, 9, 9, 64, 16, 1, 1)]
    for weight_layout, expected in (("input", torch.channels_last),
                                    ("contiguous", torch.contiguous_format)):
        cases = gc.Cases(shapes, 1, torch.device("cpu"))
        cases.weight_layout = weight_layout
        weight = cases.get(0, torch.float32, "nhwc")["conv"].weight
        assert weight.is_contiguous(memory_format=expected), weight_layout
        assert cases.get(0, torch.float32, "nchw")["conv"].weight.is_contiguous()
        rows = gc.plan(shapes, [torch.float32], ["nhwc", "nchw"], ["cudnn_eager"], 1, False,
                       weight_layout)
        assert [r["weight_layout"] for r, _ in rows] == (
            ["nhwc", "nchw"] if weight_layout == "input" else ["nchw", "nchw"])


def test_squeeze_excite_benchmark_quick(tmp_path, capsys, keep_cudnn_benchmark):
    se = load_script("squeeze_excite")
    assert se.main(["--cpu", "--quick", "--reps", "3", "--out", str(tmp_path)]) == 0
    assert "skipped: triton, cuda" in capsys.readouterr().out
    data, _ = load_outputs(tmp_path, "squeeze_excite")
    rows = data["rows"]
    assert {r["provider"] for r in rows} == {"eager", "reference"}
    # the SE stages of seresnext50_32x4d: C = 256..2048, R = C/16, blocks 3, 4, 6, 3
    stages = {(r["stage"], r["C"], r["R"], r["blocks"]) for r in rows}
    assert stages == {("layer1.0", 256, 16, 3), ("layer2.0", 512, 32, 4),
                      ("layer3.0", 1024, 64, 6), ("layer4.0", 2048, 128, 3)}
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    for r in rows:
        check_timing_fields(r, reps=3)
        assert r["max_rel_err"] < 1e-3
        elem = torch.finfo(getattr(torch, r["dtype"])).bits // 8
        assert r["floor_ms"] == pytest.approx(
            3 * r["batch"] * r["C"] * r["H"] * r["W"] * elem
            / (data["environment"]["copy_bandwidth_gbs"] * 1e9) * 1e3, rel=0.01)
        assert r["pct_of_floor"] == pytest.approx(100 * r["floor_ms"] / r["p50_ms"])
        if r["provider"] == "reference":
            assert r["speedup_vs_reference"] == pytest.approx(1.0)
    assert max(r["speedup_vs_eager"] for r in rows if r["provider"] == "eager") == \
        pytest.approx(1.0), "the best eager layout is the eager baseline"


def test_squeeze_excite_backward_benchmark(tmp_path, monkeypatch, keep_cudnn_benchmark):
    """--backward: forward + backward rows against float64 autograd, the 8-pass floor; a
    backend whose backward is wrong (grad_u doubled) is reported wrong, not timed."""
    se = load_script("squeeze_excite")
    args = ["--cpu", "--quick", "--reps", "2", "--backward", "--layouts", "nhwc"]
    assert se.main(args + ["--out", str(tmp_path / "ok")]) == 0
    data, _ = load_outputs(tmp_path / "ok", "squeeze_excite_backward")
    for r in data["rows"]:
        assert r["status"] == "ok" and r["direction"] == "forward+backward", r
        assert r["max_rel_err"] < 1e-3
        elem = torch.finfo(getattr(torch, r["dtype"])).bits // 8
        assert r["floor_ms"] == pytest.approx(
            8 * r["batch"] * r["C"] * r["H"] * r["W"] * elem
            / (data["environment"]["copy_bandwidth_gbs"] * 1e9) * 1e3, rel=0.01)
    reference = rk.backends.implementation("squeeze_excite_backward", "reference")

    def doubled(*args):
        grads = list(reference(*args))
        grads[0] = grads[0] * 2
        return tuple(grads)

    monkeypatch.setattr(sys.modules["resnext_kernels.backends.reference"],
                        "squeeze_excite_backward", doubled)
    rk.backends.implementation.cache_clear()
    try:
        assert se.main(args + ["--out", str(tmp_path / "bad")]) == 1
    finally:
        monkeypatch.undo()
        rk.backends.implementation.cache_clear()
    data, _ = load_outputs(tmp_path / "bad", "squeeze_excite_backward")
    for r in data["rows"]:
        assert r["status"].startswith("wrong" if r["provider"] == "reference" else "ok"), r


def test_model_benchmark_quick(tmp_path):
    run_script("models.py", tmp_path, "--modes", "eager_nchw_fp32", "fused_cl_bf16",
               "--cuda-graphs")
    data, _ = load_outputs(tmp_path, "models")
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    assert ok and all(r["images_per_s"] > 0 for r in ok), data["rows"]
    assert any(r["mode"].startswith("fused") for r in ok), "replace_modules mode must run"
    for r in ok:
        check_timing_fields(r, reps=3)
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["p50_ms"] * 1e-3))


def test_model_benchmark_fused_training_rows(tmp_path):
    """fusedtrain_*: a training step through the train-mode BN op (train rows only)."""
    run_script("models.py", tmp_path, "--modes", "fusedtrain_cl_bf16", "--reps", "2",
               "--image", "32", "--batch", "2", quick=False)
    data, _ = load_outputs(tmp_path, "models")
    assert [(r["mode"], r["phase"], r["status"]) for r in data["rows"]] == \
        [("fusedtrain_cl_bf16", "train", "ok")], data["rows"]


@pytest.mark.parametrize("script,kind,extra", [
    ("grouped_conv", "grouped_conv", ["--cpu", "--quick"]),
    ("squeeze_excite", "squeeze_excite", ["--cpu", "--quick"]),
    ("models", "models", ["--quick"]),
])
def test_spent_time_budget_writes_every_row_as_not_run(tmp_path, keep_cudnn_benchmark, script,
                                                       kind, extra):
    module = load_script(script)
    assert module.main([*extra, "--time-budget", "0", "--out", str(tmp_path)]) == 0
    data, rows = load_outputs(tmp_path, kind)
    assert {r["status"] for r in data["rows"]} == {common.NOT_RUN_BUDGET}
    assert {r["status"] for r in rows} == {common.NOT_RUN_BUDGET}
    assert all("provider" in r or "mode" in r for r in data["rows"]), "rows say what was skipped"


def test_sigterm_leaves_the_finished_rows_in_the_files(tmp_path):
    """A hard time limit stops the script with SIGTERM: the rows it finished are written, the
    rest say they were interrupted."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "benchmarks", "squeeze_excite.py"), "--cpu",
         "--reps", "400", "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env(),
        cwd=str(tmp_path))
    deadline = time.monotonic() + 120
    while not any(f.endswith(".json") for f in os.listdir(tmp_path)):  # the first checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    data, _ = load_outputs(tmp_path, "squeeze_excite")
    statuses = [r["status"] for r in data["rows"]]
    assert statuses[0] == "ok" and statuses[-1] == common.NOT_RUN_INTERRUPTED, statuses
    assert set(statuses) <= {"ok", common.NOT_RUN_INTERRUPTED}, statuses


# --------------------------------------------------------------------------- the timing helper
@pytest.mark.parametrize("est_ms,target_ms,max_calls,expected", [
    (0.3, 1.0, 64, 4),     # ceil(1 / 0.3)
    (0.25, 1.0, 64, 4),    # exactly 4 calls reach the target
    (0.01, 1.0, 64, 64),   # capped
    (5.0, 1.0, 64, 1),     # one call already exceeds the target
    (0.0, 1.0, 64, 64),    # no estimate: the cap
    (float("nan"), 1.0, 8, 8),
])
def test_calls_per_sample(est_ms, target_ms, max_calls, expected):
    assert common.calls_per_sample(est_ms, target_ms, max_calls) == expected


def test_bench_on_the_cpu_times_a_known_call_and_rotates_the_inputs():
    seen = []

    def fn(i):
        seen.append(i)
        time.sleep(0.002)

    row = common.bench(fn, [(0,), (1,), (2,)], torch.device("cpu"), samples=5, warmup=2,
                       target_ms=5.0)
    k = row["calls_per_sample"]
    assert 2 <= k <= 3, "5 ms per sample of 2+ ms calls"
    # per call, not per sample; p80 is left open above: a loaded machine oversleeps now and then
    assert 1.9 <= row["p20_ms"] <= row["p50_ms"] <= row["p80_ms"], row
    assert row["p50_ms"] <= 4.0, row
    assert row["host_us_per_call"] == pytest.approx(row["p50_ms"] * 1e3)
    assert row["samples"] == 5 and row["device_timing"] == "wall"
    assert row["graph_status"] == "off"
    # warm-up (every set once), one call to estimate K, then 5 samples of K calls, the sets
    # taken in turn throughout
    assert len(seen) == 3 + 1 + 5 * k
    assert seen == [i % 3 for i in range(len(seen))]


def test_graphs_are_not_applicable_on_the_cpu():
    row = common.bench(lambda x: x + 1, [(torch.ones(3),)], torch.device("cpu"), samples=2,
                       graph=True, graph_tol=0.0)
    assert row["graph_status"].startswith("not applicable") and "graph_p50_ms" not in row


class FakeGPU:
    """Simulates _cuda_sampler's sample(n, spin_ms) for issues costing the host `host` ms and
    the GPU `device` ms each. The GPU waits for the host wherever the host is the slower side
    and the issues were not queued ahead; queue_limit issues fit the launch queue (the host
    blocks beyond it until the GPU drains it); spin_factor scales the spin actually run;
    syncs: every call waits for the GPU, so nothing can be queued ahead."""

    def __init__(self, host, device, queue_limit=10**9, spin_factor=1.0, syncs=False):
        self.host, self.device = host, device
        self.queue_limit, self.spin_factor, self.syncs = queue_limit, spin_factor, syncs
        self.calls = []

    def __call__(self, n, spin_ms):
        self.calls.append((n, spin_ms))
        spun = spin_ms * self.spin_factor
        host_ms = n * self.host
        if self.syncs or n > self.queue_limit:
            host_ms += spun  # the host waits until the GPU has left the spin
        queue_ms = 0.05 + host_ms
        queued = 0 < spun and queue_ms < spun
        device_ms = n * (self.device if queued else max(self.device, self.host))
        return common.Sample(device_ms, host_ms, spun, queue_ms)


def test_queued_samples_time_the_gpu_not_the_host():
    """The case the per-call events got wrong: 100 us of host work per call, 20 us of GPU work."""
    gpu = FakeGPU(host=0.1, device=0.02)
    device, host, k, timing = common.queued_samples(gpu, samples=7, target_ms=1.0, max_issues=64)
    assert timing == "queued" and len(device) == len(host) == 7
    assert device == pytest.approx([0.02] * 7), "device time per call, not host time"
    assert host == pytest.approx([0.1] * 7)
    assert k == 50, "1 ms of GPU work per sample"
    assert all(spin > 0.1 * k for n, spin in gpu.calls[-7:]), "each sample queued behind a spin"


def test_queued_samples_take_fewer_calls_when_the_launch_queue_is_full():
    gpu = FakeGPU(host=0.1, device=0.02, queue_limit=8)
    device, _host, k, timing = common.queued_samples(gpu, samples=5, target_ms=1.0)
    assert timing == "queued" and k <= 8
    assert device == pytest.approx([0.02] * 5)


def test_queued_samples_lengthen_a_spin_that_ran_short():
    gpu = FakeGPU(host=0.1, device=0.02, spin_factor=0.5)  # the GPU clock ran faster
    device, _host, k, timing = common.queued_samples(gpu, samples=5, target_ms=1.0)
    assert timing == "queued" and k == 50
    assert device == pytest.approx([0.02] * 5)


def test_queued_samples_report_calls_that_cannot_be_queued():
    gpu = FakeGPU(host=0.1, device=0.02, syncs=True)
    device, _host, k, timing = common.queued_samples(gpu, samples=4, target_ms=1.0)
    assert timing == "unqueued" and len(device) == 4
    assert device == pytest.approx([0.1] * 4), "an upper bound, and labelled as one"
    assert len(gpu.calls) < 60, "gives up after a bounded number of tries"


def test_queued_samples_divide_graph_replays_into_calls():
    gpu = FakeGPU(host=0.01, device=0.2)  # one issue = one replay of a 10-call graph
    device, host, replays, timing = common.queued_samples(gpu, samples=3, target_ms=1.0,
                                                          max_issues=16, calls_per_issue=10)
    assert timing == "queued" and replays == 5
    assert device == pytest.approx([0.02] * 3) and host == pytest.approx([0.001] * 3)


def test_rotation_sets_exceed_the_l2_cache(monkeypatch):
    monkeypatch.setattr(common, "l2_cache_bytes", lambda device: 50 << 20)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 << 30, 80 << 30))
    cuda = torch.device("cuda")
    small = 128 * 1024 * 7 * 7 * 2  # a 7x7 layer's fp16 input at batch 128
    sets = common.rotation_sets(small, cuda)
    assert sets * small >= 4 * (50 << 20) and sets * small >= 256 << 20 and sets <= 64
    assert common.rotation_sets(200 << 20, cuda) == 2, "at least two sets"
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 30, 80 << 30))
    assert common.rotation_sets(small, cuda) == (1 << 30) // 4 // small, "within free memory"
    assert common.rotation_sets(small, torch.device("cpu")) == 1


# --------------------------------------------------------------------------- running rows
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_run_rows_stops_starting_rows_when_the_budget_is_spent():
    clock = FakeClock()
    budget = common.TimeBudget(2.5, clock=clock)
    plan = [(dict(provider=f"p{i}"), i) for i in range(5)]
    checkpoints = []

    def run_one(row, job):
        clock.now += 1.0  # each row takes a second
        row["status"] = "ok"

    interrupted = common.run_rows(plan, run_one, budget, "test", checkpoints.append)
    assert not interrupted
    assert [r["status"] for r, _ in plan] == ["ok"] * 3 + [common.NOT_RUN_BUDGET] * 2
    assert len(checkpoints) == 3
    assert [r["status"] for r in checkpoints[0]] == ["ok"] + [common.NOT_RUN_PENDING] * 4


def test_run_rows_marks_the_rest_interrupted_on_sigterm():
    plan = [(dict(provider=f"p{i}"), i) for i in range(4)]

    def run_one(row, job):
        if job == 1:
            row["p50_ms"] = 1.0  # half-measured when the signal comes
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises before this ends
        row["status"] = "ok"

    before = signal.getsignal(signal.SIGTERM)
    with common.sigterm_as_interrupt():
        interrupted = common.run_rows(plan, run_one, common.TimeBudget(None), "test")
    assert interrupted
    assert [r["status"] for r, _ in plan] == ["ok"] + [common.NOT_RUN_INTERRUPTED] * 3
    assert signal.getsignal(signal.SIGTERM) == before, "the handler is put back"


def test_run_rows_records_an_escaped_error_and_goes_on():
    plan = [(dict(provider=f"p{i}"), i) for i in range(3)]

    def run_one(row, job):
        if job == 1:
            raise MemoryError("CUDA out of memory")
        row["status"] = "ok"

    assert not common.run_rows(plan, run_one, common.TimeBudget(None), "test")
    assert [r["status"] for r, _ in plan] == ["ok", "error: MemoryError: CUDA out of memory", "ok"]

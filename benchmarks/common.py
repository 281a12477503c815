"""Shared by the benchmark scripts: timing, the environment record, result files, progress, the
time budget.

How `bench` times a call, and what its numbers mean
---------------------------------------------------
Device time (p20_ms / p50_ms / p80_ms): the GPU's time per call in steady state. A sample is K
back-to-back calls between one pair of CUDA events, issued while a spin kernel
(torch.cuda._sleep) holds the GPU: the host has queued all K calls and the end event before the
GPU reaches the start event, so the GPU runs the calls without ever waiting for Python, and
elapsed / K is kernel time plus the GPU's own gaps between launches, none of the host's work.
(One event pair around each call, recorded while the GPU is idle, would time the host's work
before the launch instead: ~100 us of Python against kernels of 10-20 us.) Every sample checks
that it was queued in time: the host finished issuing (perf_counter) before the spin ended (its
length measured by an event before it). A sample that was not is taken again with a longer spin,
then with fewer calls (the driver's launch queue holds about a thousand launches); if none can
be (a call that waits for the GPU itself), the samples are taken without the spin and
device_timing says "unqueued": they then include any time the GPU waited for the host, exact only
where the GPU is the slower side (whole models). K is chosen from a first measurement so that a
sample holds about `target_ms` of GPU work (events resolve ~0.5 us), at most `max_calls`. The
calls rotate over the caller's input sets, which together exceed the L2 cache
(`rotation_sets`), so a call never finds its inputs left in L2 by an earlier one.

Host time (host_us_per_call): the CPU wall time to issue one call: the loop issuing a sample's K
calls, timed with perf_counter and no synchronisation inside, while the spin holds the GPU, so
the host never waits for the GPU and this is the Python + dispatcher + launch cost alone. Where
it exceeds the device time, code that issues these calls one by one is host-bound (the GPU
idles between calls), which CUDA graphs remove. In "unqueued" samples it also includes any time
the host blocked on the GPU (a full launch queue, a call that synchronises).

Graph time (graph_p20_ms / graph_p50_ms / graph_p80_ms): G calls (K rounded up to whole
rotations of the input sets) captured into one torch.cuda.CUDAGraph and replayed, R replays per
sample, queued behind the spin the same way: elapsed / (R * G) per call. It is the call's cost
with no host work at all, what a CUDA-graphed model sees. Before it is timed, the replay's first
output (poisoned with NaN before the replay) must match the eager output. graph_status is "ok",
or says why there is no graph time (capture failed, replay failed, wrong, off, CPU).

On the CPU there are no events and nothing to queue: device time is wall time per call (K calls
per sample timed with perf_counter), host_us_per_call is that same time in us, device_timing is
"wall", and there is no graph time.
"""

import contextlib
import csv
import datetime
import itertools
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

TARGET_SAMPLE_MS = 1.0  # GPU work per sample: event resolution and sample edges become noise
MAX_CALLS = 64          # calls per sample: 64 calls of <= ~10 launches fit the launch queue
MAX_REPLAYS = 16        # graph replays per sample
MAX_SPIN_MS = 250.0     # the longest spin a sample may queue behind
SPIN_RETRIES = 2        # a sample not queued in time: this many longer spins, then fewer calls

NOT_RUN_BUDGET = "not run: time budget"
NOT_RUN_INTERRUPTED = "not run: interrupted"
NOT_RUN_PENDING = "not run: stopped before this row"  # in checkpoints; final files overwrite it


# --------------------------------------------------------------------------- environment
def git_commit() -> str:
    """The commit the results are of. RESNEXT_KERNELS_COMMIT wins: the GPU plan sets it, since
    the device machine may get the working tree without its .git."""
    if os.environ.get("RESNEXT_KERNELS_COMMIT"):
        return os.environ["RESNEXT_KERNELS_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10,
                               cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "device": str(device),
        "timing": dict(target_sample_ms=TARGET_SAMPLE_MS, max_calls=MAX_CALLS,
                       method="device time: K calls queued behind a GPU spin, events around "
                              "them; host time: the issuing loop; graph time: CUDA-graph "
                              "replays (see benchmarks/common.py)"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        import resnext_kernels

        env["resnext_kernels_build"] = resnext_kernels.build_info()
    except ImportError as exc:
        env["resnext_kernels_build"] = f"not importable: {exc}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = props.name
        env["gpu_capability"] = f"sm_{props.major}{props.minor}"
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["sm_count"] = props.multi_processor_count
        env["l2_cache_mib"] = round(l2_cache_bytes(device) / 2**20, 1)
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            env["driver"] = "unknown"
    else:
        env["gpu"] = None
        env["cpu"] = platform.processor() or platform.machine()
        env["cpu_threads"] = torch.get_num_threads()
    return env


def l2_cache_bytes(device: torch.device) -> int:
    # L2_cache_size is missing from older torch builds: assume an H100's 50 MB then
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or 50 << 20)


def rotation_sets(bytes_per_set: int, device: torch.device, max_sets: int = 64) -> int:
    """How many input sets a benchmark rotates through: together at least 4x the L2 cache (and
    256 MiB), so a set's data has been evicted when its turn comes again; at least 2, and within
    a quarter of the free GPU memory. One on the CPU (a smoke run, not a measurement)."""
    if device.type != "cuda":
        return 1
    bytes_per_set = max(int(bytes_per_set), 1)
    wanted = math.ceil(max(4 * l2_cache_bytes(device), 256 << 20) / bytes_per_set)
    free, _total = torch.cuda.mem_get_info(device)
    affordable = free // 4 // bytes_per_set
    return int(max(2, min(wanted, max_sets, affordable)))


# --------------------------------------------------------------------------- timing
def percentiles(samples_ms, prefix=""):
    s = sorted(samples_ms)
    q = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
    return {f"{prefix}p20_ms": q[1], f"{prefix}p50_ms": statistics.median(s),
            f"{prefix}p80_ms": q[7]}


def calls_per_sample(est_ms_per_call: float, target_ms: float = TARGET_SAMPLE_MS,
                     max_calls: int = MAX_CALLS) -> int:
    """Enough calls for target_ms of work per sample, given an estimate of one call's time
    (max_calls when the estimate is zero or unknown)."""
    if not est_ms_per_call > 0:  # also catches NaN
        return max_calls
    return max(1, min(max_calls, math.ceil(target_ms / est_ms_per_call)))


class Sample(NamedTuple):
    """One timed sample of n issues (see _cuda_sampler)."""

    device_ms: float  # start -> end event: the n issues on the GPU
    host_ms: float    # perf_counter around the loop issuing them
    spin_ms: float    # the spin's measured length (0: no spin)
    queue_ms: float   # perf_counter from before the spin was queued to after the end event

    @property
    def queued(self) -> bool:
        """Everything was issued before the GPU left the spin (so it never waited for us)."""
        return self.spin_ms > 0 and self.queue_ms < self.spin_ms


_SPIN_CYCLES_PER_MS = {}


def spin_cycles_per_ms(device: torch.device) -> float:
    """SM clock cycles per ms of torch.cuda._sleep, measured once per device (clocks vary with
    the card and its boost state; each sample measures its own spin anyway)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SPIN_CYCLES_PER_MS:
        cycles = 1 << 21
        torch.cuda._sleep(cycles)  # loads the kernel
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        _SPIN_CYCLES_PER_MS[index] = cycles / max(start.elapsed_time(end), 1e-3)
    return _SPIN_CYCLES_PER_MS[index]


def _cuda_sampler(issue, device):
    """sample(n, spin_ms): n issues between two events, queued behind a spin of ~spin_ms."""
    cycles_per_ms = spin_cycles_per_ms(device)  # calibrated now, not inside a timed sample

    def sample(n, spin_ms):
        torch.cuda.synchronize(device)  # the GPU is idle: the mark event fires as it is queued
        mark, start, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        t0 = time.perf_counter()
        mark.record()
        if spin_ms > 0:
            torch.cuda._sleep(max(1, int(spin_ms * cycles_per_ms)))
        start.record()
        t1 = time.perf_counter()
        for _ in range(n):
            issue()
        t2 = time.perf_counter()
        end.record()
        t3 = time.perf_counter()
        end.synchronize()
        spun = mark.elapsed_time(start) if spin_ms > 0 else 0.0
        return Sample(start.elapsed_time(end), (t2 - t1) * 1e3, spun, (t3 - t0) * 1e3)
    return sample


def _spin_for(host_ms: float) -> float:
    """The spin to queue host_ms of issuing behind: 1.5x, plus the events' and the spin's own
    launches."""
    return 1.5 * host_ms + 0.2


def queued_samples(sample, samples: int, target_ms: float = TARGET_SAMPLE_MS,
                   max_issues: int = MAX_CALLS, calls_per_issue: int = 1):
    """Takes `samples` samples with sample(n, spin_ms) (see _cuda_sampler); returns
    (device ms per call, host ms per call, issues per sample, device_timing), the lists with one
    entry per sample. An issue may enqueue several calls (a graph replay): calls_per_issue."""
    # First measurements: one issue without a spin gives the host's cost (and an upper bound of
    # the device's); a spun sample of n issues then gives the device time to choose n from.
    probe = sample(1, 0.0)
    host_per_issue = probe.host_ms
    n = calls_per_sample(probe.device_ms, target_ms, max_issues)
    probe = sample(n, min(MAX_SPIN_MS, _spin_for(host_per_issue * n)))
    sized = probe.queued  # n chosen from a true device time (else again at the first one)
    if sized:
        host_per_issue = probe.host_ms / n
        n = calls_per_sample(probe.device_ms / n, target_ms, max_issues)
    want = _spin_for(host_per_issue * n)  # the spin wanted, in ms actually spun
    scale = 1.0  # ms asked for per ms spun: corrects the one-off clock calibration
    device, host = [], []
    timing, misses = "queued", 0
    while len(device) < samples:
        ask = min(MAX_SPIN_MS, want * scale) if timing == "queued" else 0.0
        s = sample(n, ask)
        if ask > 0 and s.spin_ms > 0:
            scale = min(4.0, max(0.25, ask / s.spin_ms))
        if timing == "queued" and not s.queued:
            misses += 1
            if misses <= SPIN_RETRIES and ask < MAX_SPIN_MS:
                want = 2 * max(s.queue_ms, want)  # the host needed longer than the spin
            elif n > 1:  # perhaps the launch queue does not hold n issues: fewer
                n, misses, sized = max(1, n // 2), 0, True
                want = _spin_for(max(host_per_issue, s.host_ms / (2 * n)) * n)
            else:  # a call that waits for the GPU cannot be queued: time it as it comes
                timing = "unqueued"
                device.clear()
                host.clear()
            continue
        device.append(s.device_ms / (n * calls_per_issue))
        host.append(s.host_ms / (n * calls_per_issue))
        if timing == "queued":
            misses = 0
            if not sized:
                sized, n = True, calls_per_sample(device[-1] * calls_per_issue, target_ms,
                                                  max_issues)
            want = _spin_for(host[-1] * calls_per_issue * n)  # the host's pace, down or up
    return device, host, n, timing


def wall_samples(issue, samples: int, target_ms: float = TARGET_SAMPLE_MS,
                 max_calls: int = MAX_CALLS):
    """The CPU version of queued_samples: wall time is both the device and the host time."""
    t0 = time.perf_counter()
    issue()
    n = calls_per_sample((time.perf_counter() - t0) * 1e3, target_ms, max_calls)
    per_call = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(n):
            issue()
        per_call.append((time.perf_counter() - t0) * 1e3 / n)
    return per_call, list(per_call), n, "wall"


def bench(fn, inputs, device: torch.device, *, samples: int = 30, warmup: int = 5,
          target_ms: float = TARGET_SAMPLE_MS, max_calls: int = MAX_CALLS, graph: bool = False,
          graph_tol: float = None):
    """Times fn(*inputs[i]) with the input sets taken in rotation. Returns the row fields
    p20_ms, p50_ms, p80_ms (device time per call), samples, calls_per_sample,
    host_us_per_call, device_timing, and graph_status (+ graph_p20_ms, graph_p50_ms,
    graph_p80_ms, graph_calls_per_sample when graph=True and a graph ran); see the module
    docstring. graph_tol: the graph's output may differ from the eager one by this much,
    relative to max |eager| (None: not checked)."""
    sets = len(inputs)
    # every set once at least: lazy initialisation, autotuning (cudnn.benchmark, Triton, Inductor)
    for i in range(max(warmup, sets)):
        fn(*inputs[i % sets])
    rotation = itertools.cycle(inputs)

    def issue():
        fn(*next(rotation))

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        device_ms, host_ms, k, timing = queued_samples(_cuda_sampler(issue, device), samples,
                                                       target_ms, max_calls)
    else:
        device_ms, host_ms, k, timing = wall_samples(issue, samples, target_ms, max_calls)
    row = percentiles(device_ms)
    row.update(samples=len(device_ms), calls_per_sample=k,
               host_us_per_call=statistics.median(host_ms) * 1e3, device_timing=timing)
    if graph:
        row.update(bench_graph(fn, inputs, device, calls=k, samples=samples,
                               target_ms=target_ms, tol=graph_tol))
    else:
        row["graph_status"] = "off"
    return row


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    return None


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected| (NaN anywhere in got gives NaN)."""
    diff = (got.double() - expected.double()).abs().max().item()
    return diff / max(expected.double().abs().max().item(), 1e-6)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _describe(exc: BaseException) -> str:
    """One line: the error, and the one it followed (capture_end fails after the real error)."""
    text = _first_line(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        text += f" (after {_first_line(cause)[:150]})"
    return text[:300]


def capture_graph(fn, inputs, calls: int, device: torch.device):
    """Captures `calls` calls of fn over the input sets in rotation into one CUDAGraph; returns
    (graph, the first call's output). Warmed up first on the capture stream itself: lazily
    created per-stream state (cuBLAS workspaces and the like) must not be created in capture."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for i in range(max(3, len(inputs))):
            fn(*inputs[i % len(inputs)])
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        first = fn(*inputs[0])
        for i in range(1, calls):
            fn(*inputs[i % len(inputs)])
    return graph, first


def bench_graph(fn, inputs, device: torch.device, calls: int, samples: int = 30,
                target_ms: float = TARGET_SAMPLE_MS, tol: float = None):
    """The graph_* fields of `bench`: fn captured `calls` times (rounded up to whole rotations
    of the input sets) in one CUDA graph, replays timed. A capture or replay that fails, or a
    replay whose output differs from eager, is recorded in graph_status, never raised."""
    if device.type != "cuda":
        return {"graph_status": f"not applicable: no CUDA graphs on {device.type}"}
    sets = len(inputs)
    calls = sets * math.ceil(max(calls, 1) / sets)
    expected = None
    if tol is not None:
        expected = _first_tensor(fn(*inputs[0]))
        expected = expected.clone() if expected is not None else None  # outputs may be reused
    try:
        graph, first = capture_graph(fn, inputs, calls, device)
    except Exception as exc:
        _settle(device)
        return {"graph_status": "capture failed: " + _describe(exc)}
    try:
        first = _first_tensor(first)
        if expected is not None and first is not None:
            if first.is_floating_point():
                first.fill_(float("nan"))  # an output the replay does not write shows up
            graph.replay()
            torch.cuda.synchronize(device)
            err = relative_error(first, expected)
            if not err <= tol:
                return {"graph_status": f"wrong: replay differs from eager by {err:.2e} "
                                        "(max, relative to max |eager|)"}
        device_ms, _host, replays, timing = queued_samples(
            _cuda_sampler(graph.replay, device), samples, target_ms, MAX_REPLAYS, calls)
    except Exception as exc:
        _settle(device)
        return {"graph_status": "replay failed: " + _describe(exc)}
    finally:
        del graph
    row = percentiles(device_ms, prefix="graph_")
    row.update(graph_calls_per_sample=replays * calls,
               graph_status="ok" if timing == "queued" else f"ok ({timing})")
    return row


def _settle(device):
    """After a failed capture or replay: let the GPU finish, ignoring the error a failed
    capture may leave behind, so the next row starts clean (a sticky error will show there)."""
    try:
        torch.cuda.synchronize(device)
    except Exception:
        pass


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), in GB/s."""
    if device.type != "cuda":
        nbytes = 1 << 27
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), [()], device, warmup=3, samples=20)["p50_ms"]
    return 2 * nbytes / (t * 1e-3) / 1e9


class CaseCache:
    """The inputs of the rows being run, made when a row first needs them and dropped when a row
    needs another (one shape's rotated input sets in memory at a time). A benchmark subclasses it
    with make(si, dtype, layout) -> the case dict; the copy bandwidth (for floors) is measured
    when the first row runs, so not at all if none does."""

    def __init__(self, shapes, batch, device):
        self.shapes, self.batch, self.device = shapes, batch, device
        self.key, self.case, self._bandwidth = None, None, None

    def bandwidth_gbs(self):
        if self._bandwidth is None:
            self._bandwidth = copy_bandwidth_gbs(self.device)
        return self._bandwidth

    def get(self, si, dtype, layout):
        if self.key != (si, dtype, layout):
            self.key, self.case = None, None  # free the previous inputs before making new ones
            self.case = self.make(si, dtype, layout)
            self.key = (si, dtype, layout)
        return self.case

    def make(self, si, dtype, layout):
        raise NotImplementedError


def add_percent_of_floor(row: dict, floor_ms: float):
    """pct_of_floor from the device time, graph_pct_of_floor from the graph time (if any)."""
    if row.get("p50_ms"):
        row["pct_of_floor"] = 100 * floor_ms / row["p50_ms"]
    if row.get("graph_p50_ms"):
        row["graph_pct_of_floor"] = 100 * floor_ms / row["graph_p50_ms"]


# --------------------------------------------------------------------------- running rows
class TimeBudget:
    """--time-budget: no row starts once `seconds` have passed since the script began (a row
    already started runs to its end). None: no limit."""

    def __init__(self, seconds=None, clock=time.monotonic):
        self.seconds, self.clock, self.start = seconds, clock, clock()

    def exceeded(self) -> bool:
        return self.seconds is not None and self.clock() - self.start >= self.seconds


def measure_row(row: dict, get_case, make_fn, check, tol: float, device: torch.device, args,
                derive=None):
    """The steps every benchmark row takes, in order: the case's inputs (get_case(), which may
    run out of memory), floor_ms and n_sets; the provider's callable (make_fn(case): a string
    says why it is unavailable); its error against float64 (check(fn, case)) within tol; the
    timing (bench, with args.reps, args.target_ms, args.no_graphs); derive(row, case) for the
    benchmark's own figures; the % of floor; status "ok". A provider failing at any step is a
    result in row["status"], not a crash."""
    try:
        case = get_case()
        row.update(floor_ms=case["floor_ms"], n_sets=len(case["inputs"]))
        fn = make_fn(case)
        if isinstance(fn, str):
            row["status"] = f"unavailable: {fn}"
            return
        err = check(fn, case)
        row["max_rel_err"] = err
        if not err <= tol:
            row["status"] = f"wrong: max rel err {err:.2e}"
            return
        with torch.no_grad():
            row.update(bench(fn, case["inputs"], device, samples=args.reps,
                             target_ms=args.target_ms, graph=not args.no_graphs, graph_tol=tol))
        if derive is not None:
            derive(row, case)
        add_percent_of_floor(row, case["floor_ms"])
        row["status"] = "ok"
    except Exception as exc:  # a provider failing is a result, not a crash
        row["status"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"


@contextlib.contextmanager
def sigterm_as_interrupt():
    """A hard time limit (timeout(1), a job runner) stops a script with SIGTERM: raise
    KeyboardInterrupt instead, so the script still writes the rows it finished."""
    def interrupt(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not stop the writing
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_rows(plan, run_one, budget: TimeBudget, label: str, checkpoint=None) -> bool:
    """Runs run_one(row, job) for each (row, job) of `plan` in order; run_one fills in `row`
    (a dict holding the row's identifying fields), its "status" included. Rows not started
    because the budget ran out get NOT_RUN_BUDGET; on KeyboardInterrupt (or SIGTERM, see
    sigterm_as_interrupt) the row in progress and the rest get NOT_RUN_INTERRUPTED.
    checkpoint(rows) is called after every row, unfinished rows marked NOT_RUN_PENDING, so a
    killed run leaves its finished rows on disk. Returns True if interrupted."""
    rows = [row for row, _ in plan]
    progress = Progress(len(plan), label)
    current, finished, interrupted = None, True, False
    try:
        for row, job in plan:
            if budget.exceeded():
                break
            current, finished = row, False
            try:
                run_one(row, job)
            except Exception as exc:  # the scripts record their own errors: this is a backstop
                row["status"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
            finished = True
            progress.step(row.get("status", "")[:12] + " " + " ".join(
                str(v) for k, v in row.items() if k in ("model", "layer", "stage", "mode",
                                                        "phase", "dtype", "layout", "provider")))
            if checkpoint is not None:
                checkpoint([r if "status" in r else dict(r, status=NOT_RUN_PENDING)
                            for r in rows])
    except KeyboardInterrupt:
        interrupted = True
        if not finished:  # whatever the row in progress measured is incomplete
            current["status"] = NOT_RUN_INTERRUPTED
    progress.close()
    for row in rows:
        row.setdefault("status", NOT_RUN_INTERRUPTED if interrupted else NOT_RUN_BUDGET)
    return interrupted


class Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, label: str):
        self.total, self.done, self.label = max(total, 1), 0, label

    def step(self, what: str = ""):
        self.done += 1
        width = 30
        filled = int(width * self.done / self.total)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done}/{self.total} {what[:50]:<50}")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self):
        if 0 < self.done < self.total:
            sys.stderr.write("\n")
            sys.stderr.flush()


# --------------------------------------------------------------------------- result files
def write_results(prefix: str, env: dict, rows: list, out_dir: str = RESULTS_DIR):
    """Writes <prefix>.json (environment + rows) and <prefix>.csv (rows); returns the paths.
    Each file is written to a temporary name and renamed: a run killed mid-write leaves the
    previous checkpoint, never a truncated file."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, prefix + ".json")
    csv_path = os.path.join(out_dir, prefix + ".csv")
    with open(json_path + ".tmp", "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=2, default=str)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(csv_path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(json_path + ".tmp", json_path)
    os.replace(csv_path + ".tmp", csv_path)
    return json_path, csv_path


def result_prefix(kind: str, env: dict) -> str:
    device = (env.get("gpu") or "cpu").replace(" ", "-").replace("/", "-")
    stamp = env["date"].replace(":", "").replace("-", "")[:15]
    return f"{kind}-{device}-{env['git_commit']}-{stamp}"


def format_table(rows: list, columns: list, max_width: int = 48) -> str:
    """A plain-text table of `columns` ((key, header, format) triples); cells are cut at
    max_width characters (the files hold the full text)."""
    def cell(r, key, fmt):
        if r.get(key) is None:
            return ""
        text = fmt.format(r[key])
        return text if len(text) <= max_width else text[:max_width - 3] + "..."

    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([cell(r, k, fmt) for k, _, fmt in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

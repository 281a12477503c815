"""Runs the CUDA kernels of csrc/kernels/ on the CPU through the host-side CUDA emulator.

The emulator (csrc/emulation/, see its README.md) compiles the very same kernel sources as C++
with AddressSanitizer and UndefinedBehaviorSanitizer, one OS thread per CUDA thread. This module
builds it once per source version (under build/cuda_emulator/), writes a call's tensors to a
directory, runs the harness and reads the outputs back as torch tensors.

What it checks that a compile-only build cannot: the kernels' index math, tiling, halo and
padding logic, shared-memory staging and block-diagonal weight packing give the right numbers;
no access leaves its buffer (ASan: global and dynamic shared memory); no barrier is reached by
only some threads; WMMA pointers and leading dimensions meet the documented alignment rules;
launch configurations fit the GPU's limits. What it cannot check: timing, the real warp
scheduling (so not every race), the hardware's WMMA rounding order, and 64-bit offsets at sizes
that need them.
"""

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SOURCES = [
    *sorted((REPO / "csrc" / "emulation").glob("*.cpp")),
    *sorted((REPO / "csrc" / "kernels").glob("*.cu")),
]
FLAGS = [
    "-std=c++17", "-O1", "-g", "-pthread", "-fno-strict-aliasing",
    "-DRESNEXT_KERNELS_EMULATION", "-D__CUDA_ARCH__=900",  # the sm_90 code paths
    f"-I{REPO / 'csrc' / 'emulation'}", f"-I{REPO / 'csrc'}",
    "-Wall", "-Wno-unknown-pragmas", "-Wno-sign-compare",
]
# Two builds. "memcheck": AddressSanitizer + UndefinedBehaviorSanitizer (out-of-bounds, overflow).
# "racecheck": ThreadSanitizer. Every CUDA thread is an OS thread and the emulator's barriers are
# mutex/condition-variable handoffs, so TSan reports exactly the shared- or global-memory
# accesses that no __syncthreads/__syncwarp orders: what compute-sanitizer's racecheck looks for.
SANITIZERS = {
    "memcheck": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"],
    "racecheck": ["-fsanitize=thread"],
    # "profile": the access profiler (csrc/emulation/access_profile.h). Only the kernel sources
    # (and the self-test kernels) get ThreadSanitizer's instrumentation, whose hooks the profiler
    # defines; no sanitizer runtime is linked.
    "profile": ["-DRESNEXT_KERNELS_ACCESS_PROFILE"],
}
PROFILE_INSTRUMENTATION = ["-fsanitize=thread"]
PROFILED_SOURCES = {"selftest.cpp"} | {p.name for p in SOURCES if p.suffix == ".cu"}
LINK_FLAGS = {"memcheck": SANITIZERS["memcheck"], "racecheck": SANITIZERS["racecheck"],
              "profile": []}
# Leak checking needs ptrace, which containers often forbid; every other ASan check stays on.
RUN_ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1",
           "TSAN_OPTIONS": "halt_on_error=1:exitcode=66:report_signal_unsafe=0"}
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def compiler():
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


@functools.lru_cache(maxsize=None)
def compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True,
                          check=True).stdout


# Every file of these kinds under csrc/emulation and csrc/kernels is an input of a build, not
# only the SOURCES it compiles: the headers they include, nested or not, count too.
BUILD_INPUT_SUFFIXES = {".c", ".cc", ".cpp", ".cu", ".h", ".hh", ".hpp", ".cuh", ".inc", ".inl"}


def build_digest(sanitizer: str, repo: Path = REPO, cxx: str = None) -> str:
    """The digest that names a build's directory: the relative path and contents of every C/C++
    file under csrc/emulation and csrc/kernels of `repo`, the compiler's version, and the
    compile, instrumentation and link flags of `sanitizer`'s build, with the checkout's own
    path replaced by a placeholder. The same sources give the same digest in every checkout
    (scripts/access_profile.py keys the profiles it stores by it)."""
    digest = hashlib.sha256()
    for sub in ("emulation", "kernels"):
        base = repo / "csrc" / sub
        for path in sorted(p for p in base.rglob("*") if p.suffix in BUILD_INPUT_SUFFIXES):
            digest.update(path.relative_to(repo).as_posix().encode() + b"\0"
                          + path.read_bytes() + b"\0")
    flags = [*FLAGS, *SANITIZERS[sanitizer], "|", *PROFILE_INSTRUMENTATION,
             *sorted(PROFILED_SOURCES), "|", *LINK_FLAGS[sanitizer]]
    digest.update(" ".join(flags).replace(str(REPO), "<repo>").encode())
    digest.update(compiler_version(cxx or compiler()).encode())
    return digest.hexdigest()


def build(sanitizer: str = "memcheck") -> Path:
    """The harness binary for the current sources, compiled if it is not there yet."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (set CXX or install g++)")
    flags = [*FLAGS, *SANITIZERS[sanitizer]]
    digest = build_digest(sanitizer, cxx=cxx)
    out_dir = REPO / "build" / "cuda_emulator" / f"{sanitizer}-{digest[:16]}"
    binary = out_dir / "harness"
    if binary.exists():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    # one build per variant at a time: test processes that start together (pytest -n) would
    # otherwise write the same object files and rename each other's harness.tmp away
    with open(out_dir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():  # (built by the process that held the lock before)
            _compile_harness(cxx, flags, sanitizer, out_dir, binary)
    return binary


def _compile_harness(cxx, flags, sanitizer, out_dir, binary):
    jobs = []
    for src in SOURCES:
        obj = out_dir / (src.name + ".o")
        extra = PROFILE_INSTRUMENTATION if sanitizer == "profile" and src.name in PROFILED_SOURCES else []
        cmd = [cxx, *flags, *extra, "-x", "c++", "-c", str(src), "-o", str(obj)]
        jobs.append((obj, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    for obj, job in jobs:
        log = job.communicate()[0].decode()
        if job.returncode != 0:
            raise RuntimeError(f"emulator build failed on {obj.name}:\n{log}")
    tmp = out_dir / "harness.tmp"
    subprocess.run([cxx, *LINK_FLAGS[sanitizer], "-pthread",
                    *[str(obj) for obj, _ in jobs], "-o", str(tmp)], check=True)
    tmp.rename(binary)


def _storage_span(t: torch.Tensor) -> torch.Tensor:
    """The 1-D span of storage that the view t addresses, starting at its first element."""
    if t.numel() == 0:
        return t.new_empty(0)
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.as_strided((span,), (1,), t.storage_offset())


def _write(directory: Path, name: str, t: torch.Tensor):
    flat = _storage_span(t.detach().cpu()).contiguous()
    (directory / f"{name}.bin").write_bytes(flat.view(torch.uint8).numpy().tobytes())


def _read_like(directory: Path, name: str, like: torch.Tensor) -> torch.Tensor:
    data = bytearray((directory / f"{name}.bin").read_bytes())
    if like.numel() == 0:
        return like.clone()
    flat = torch.frombuffer(data, dtype=torch.uint8).view(like.dtype)
    return flat.as_strided(like.shape, like.stride()).clone()


def _write_params(directory: Path, params: dict):
    lines = []
    for key, value in params.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        lines.append(" ".join([key, *(str(int(v)) for v in values)]))
    (directory / "params.txt").write_text("\n".join(lines) + "\n")


# The environment profile_launches() and launch_shapes() add for the call they wrap: per thread,
# so that profiles can run side by side (scripts/kernel_profile.py runs them in a thread pool).
_EXTRA_ENV = threading.local()


def _run(binary: Path, *args) -> str:
    proc = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True,
                          env={**RUN_ENV, **getattr(_EXTRA_ENV, "env", {})}, timeout=600)
    if proc.returncode != 0:
        raise EmulatorError(proc.returncode, proc.stdout + proc.stderr)
    return proc.stdout


class EmulatorError(RuntimeError):
    def __init__(self, returncode, output):
        super().__init__(f"emulated kernel failed (exit {returncode}):\n{output[-6000:]}")
        self.returncode = returncode
        self.output = output


def _poisoned_like_glue(shape, dtype, memory_format):
    """The output the torch glue allocates (x's memory format), filled with NaN."""
    return torch.full(shape, float("nan"), dtype=dtype).contiguous(memory_format=memory_format)


def grouped_conv_bn_relu(binary, x, weight, scale, shift, **kwargs):
    """Runs the CUDA launch path (plan, weight re-layout, kernel) like the torch glue does;
    allow_tf32 stands for torch.backends.cudnn.allow_tf32, which the glue reads; allow_v3=False
    for RESNEXT_KERNELS_CUDA_V3=0 (calls v3 would take run v2); v3_band_pixels for
    RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS (the report then ends with "v3_band_rows R");
    y_channels_last overrides y's layout, which follows x's as in the glue.

    Returns (y, path): path is the harness's report, e.g. "wmma block_channels 16 ...".
    """
    y, _, report = _grouped_conv(binary, x, weight, scale, shift, with_mask=False, **kwargs)
    return y, report


def grouped_conv_bn_relu_masked(binary, x, weight, scale, shift, **kwargs):
    """As grouped_conv_bn_relu, with the ReLU mask (the torch glue's masked op): returns (y,
    mask, path). The mask starts as 0xff bytes (every bit poisoned to 1), as the glue leaves it
    uninitialised; with relu=False it is [0, C_out]."""
    return _grouped_conv(binary, x, weight, scale, shift, with_mask=True, **kwargs)


def _grouped_conv(binary, x, weight, scale, shift, *, stride=1, padding=1, dilation=1, groups,
                  relu=True, device_major=9, force_direct=False, x_lead_elems=0,
                  allow_tf32=False, allow_v3=True, v3_band_pixels=None, y_channels_last=None,
                  with_mask):
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    H_out = (H + 2 * padding - dilation * (KH - 1) - 1) // stride + 1
    W_out = (W + 2 * padding - dilation * (KW - 1) - 1) // stride + 1
    memory_format = torch._prims_common.suggest_memory_format(x)
    if y_channels_last is not None:
        memory_format = torch.channels_last if y_channels_last else torch.contiguous_format
    y = _poisoned_like_glue((N, C_out, H_out, W_out), x.dtype, memory_format)
    mask_rows = (N * H_out * W_out + 7) // 8 if with_mask and relu else 0
    mask = torch.full((mask_rows, C_out), 0xFF, dtype=torch.uint8)
    with tempfile.TemporaryDirectory(prefix="emu_conv_") as tmp:
        d = Path(tmp)
        if with_mask:
            _write(d, "mask", mask)
        _write(d, "x", x)
        _write(d, "w", weight)
        _write(d, "scale", scale.float().contiguous())
        _write(d, "shift", shift.float().contiguous())
        _write(d, "y", y)
        _write_params(d, dict(
            dtype=DTYPE_CODES[x.dtype], N=N, C_in=C_in, H=H, W=W, C_out=C_out, H_out=H_out,
            W_out=W_out, groups=groups, KH=KH, KW=KW, stride=[stride] * 2,
            padding=[padding] * 2, dilation=[dilation] * 2, x_stride=x.stride(),
            w_stride=weight.stride(), y_stride=y.stride(), relu=relu,
            y_channels_last=memory_format == torch.channels_last, device_major=device_major,
            force_direct=force_direct, x_lead_elems=x_lead_elems, allow_tf32=allow_tf32,
            allow_v3=allow_v3, with_mask=with_mask,
            **({} if v3_band_pixels is None else dict(v3_band_pixels=v3_band_pixels))))
        report = _run(binary, "grouped_conv", d)
        if with_mask:
            mask = _read_like(d, "mask", mask)
        return _read_like(d, "y", y), mask, report.strip()


def _pair(v):
    return list(v) if isinstance(v, (list, tuple)) else [v, v]


def _backward_geometry(grad_y, weight, input_size, stride, padding, dilation, groups):
    """stride, padding, dilation: an int or an (h, w) pair."""
    N, C_in, H, W = input_size
    C_out, _, KH, KW = weight.shape
    return dict(N=N, C_in=C_in, H=H, W=W, C_out=C_out, H_out=grad_y.shape[2],
                W_out=grad_y.shape[3], groups=groups, KH=KH, KW=KW, stride=_pair(stride),
                padding=_pair(padding), dilation=_pair(dilation), grad_y_stride=grad_y.stride(),
                w_stride=weight.stride())


def grouped_conv_dgrad(binary, grad_y, mask, weight, scale, input_size, *, stride=1, padding=1,
                       dilation=1, groups, channels_last, device_major=9, allow_v3=True,
                       grad_y_lead_elems=0):
    """Runs plan_grouped_conv_dgrad + launch_grouped_conv_dgrad like the torch glue: grad_x
    (allocated as the glue does, poisoned with NaN) in `channels_last` or NCHW. mask: the packed
    ReLU mask, [0, C_out] for none; stride, padding, dilation: an int or an (h, w) pair;
    allow_v3=False stands for RESNEXT_KERNELS_CUDA_V3=0; grad_y_lead_elems places grad_y that
    many elements past an aligned base (a view). Returns (grad_x, the harness's report: "path
    direct", "path v3", or "path v3 pack grad_y" where grad_y has neither 16-byte channel chunks
    nor contiguous rows)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    grad_x = _poisoned_like_glue(tuple(input_size), grad_y.dtype, fmt)
    with tempfile.TemporaryDirectory(prefix="emu_dgrad_") as tmp:
        d = Path(tmp)
        _write(d, "grad_y", grad_y)
        _write(d, "mask", mask.contiguous())
        _write(d, "w", weight)
        _write(d, "scale", scale.float().contiguous())
        _write(d, "grad_x", grad_x)
        _write_params(d, dict(
            dtype=DTYPE_CODES[grad_y.dtype],
            **_backward_geometry(grad_y, weight, input_size, stride, padding, dilation, groups),
            grad_x_stride=grad_x.stride(), grad_x_channels_last=channels_last,
            device_major=device_major, allow_v3=allow_v3, grad_y_lead_elems=grad_y_lead_elems))
        report = _run(binary, "grouped_conv_dgrad", d)
        return _read_like(d, "grad_x", grad_x), report.strip()


def grouped_conv_wgrad(binary, grad_y, mask, x, weight, scale, *, stride=1, padding=1,
                       dilation=1, groups, splits=None, device_major=9, allow_v3=True):
    """Runs plan_grouped_conv_wgrad + launch_grouped_conv_wgrad like the torch glue; `splits`
    overrides the plan's number of pixel ranges; device_major and allow_v3 as dgrad's. Returns
    ((grad_w, grad_scale, grad_shift), the harness's report: "path P splits S threads T
    element_chunks E", P "direct" or "v3")."""
    C_out = weight.shape[0]
    grad_w = torch.full_like(weight, float("nan"))
    grad_scale = torch.full((C_out,), float("nan"))
    grad_shift = torch.full((C_out,), float("nan"))
    with tempfile.TemporaryDirectory(prefix="emu_wgrad_") as tmp:
        d = Path(tmp)
        for name, t in (("grad_y", grad_y), ("mask", mask.contiguous()), ("x", x), ("w", weight),
                        ("scale", scale.float().contiguous()), ("grad_w", grad_w),
                        ("grad_scale", grad_scale), ("grad_shift", grad_shift)):
            _write(d, name, t)
        _write_params(d, dict(
            dtype=DTYPE_CODES[grad_y.dtype],
            **_backward_geometry(grad_y, weight, x.shape, stride, padding, dilation, groups),
            x_stride=x.stride(), grad_w_stride=grad_w.stride(), device_major=device_major,
            allow_v3=allow_v3, **({} if splits is None else dict(splits=splits))))
        report = _run(binary, "grouped_conv_wgrad", d)
        grads = tuple(_read_like(d, name, t) for name, t in (
            ("grad_w", grad_w), ("grad_scale", grad_scale), ("grad_shift", grad_shift)))
        return grads, report.strip()


def channels_last_copy(binary, src, dense_lead_bytes=0, max_blocks=0):
    """Runs launch_channels_last_copy: src ([N, C, H, W], any strides) copied into a dense
    channels_last tensor (poisoned with NaN), which is returned. dense_lead_bytes places it that
    many bytes past an aligned base; max_blocks caps the grid (each block then walks several
    tiles; 0: the launcher's cap)."""
    dst = torch.full(src.shape, float("nan"), dtype=src.dtype).contiguous(
        memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory(prefix="emu_layout_") as tmp:
        d = Path(tmp)
        _write(d, "src", src)
        _write(d, "dst", dst)
        N, C, H, W = src.shape
        _write_params(d, dict(N=N, C=C, H=H, W=W, strided=src.stride(),
                              dense_lead_bytes=dense_lead_bytes, max_blocks=max_blocks))
        _run(binary, "channels_last_copy", d)
        return _read_like(d, "dst", dst)


def squeeze_excite(binary, u, w1, b1, w2, b2, residual=None, relu=False, with_path=False):
    """Runs the CUDA SE launches like the torch glue does. Returns out, or (out, path) with
    with_path: the harness's report, "path chunked" (16-byte chunks) or "path elementwise"."""
    N, C, H, W = u.shape
    R = w1.shape[0]
    memory_format = torch._prims_common.suggest_memory_format(u)
    out = _poisoned_like_glue(u.shape, u.dtype, memory_format)
    with tempfile.TemporaryDirectory(prefix="emu_se_") as tmp:
        d = Path(tmp)
        _write(d, "u", u)
        _write(d, "out", out)
        _write(d, "w1", w1.reshape(R, C).float().contiguous())
        _write(d, "w2", w2.reshape(C, R).float().contiguous())
        params = dict(dtype=DTYPE_CODES[u.dtype], N=N, C=C, H=H, W=W, R=R,
                      u_stride=u.stride(), out_stride=out.stride(), relu=relu,
                      channels_last=memory_format == torch.channels_last,
                      has_residual=residual is not None, has_b1=b1 is not None,
                      has_b2=b2 is not None)
        if residual is not None:
            _write(d, "residual", residual)
            params["residual_stride"] = residual.stride()
        if b1 is not None:
            _write(d, "b1", b1.float().contiguous())
        if b2 is not None:
            _write(d, "b2", b2.float().contiguous())
        _write_params(d, params)
        report = _run(binary, "squeeze_excite", d).strip()
        out = _read_like(d, "out", out)
        return (out, report) if with_path else out


def _batchnorm_train_call(binary, op, d, z, eps, params, *, z_lead_elems=0,
                          reduce_rows_in_one=None):
    """Writes what every train-mode BatchNorm op reads (z, eps, geometry) and runs `op`."""
    N, C, H, W = z.shape
    _write(d, "z", z)
    (d / "eps.bin").write_bytes(torch.tensor([eps], dtype=torch.float32).numpy().tobytes())
    params = dict(dtype=DTYPE_CODES[z.dtype], N=N, C=C, H=H, W=W, z_stride=z.stride(),
                  z_lead_elems=z_lead_elems, **params)
    if reduce_rows_in_one is not None:
        params["reduce_rows_in_one"] = reduce_rows_in_one
    _write_params(d, params)
    return _run(binary, op, d).strip()


def _per_channel(t):
    return t.float().contiguous()  # (what the glue passes the kernels)


def batchnorm_train_forward(binary, z, gamma, beta, eps, relu, **kwargs):
    """The CUDA train-mode BatchNorm forward after the conv, like the torch glue: the statistics
    of z, then y (z's memory format) and its ReLU mask. Returns (y, mask, mean, var, report):
    report names each operand's access, e.g. "z channels y channels". kwargs: z_lead_elems,
    reduce_rows_in_one."""
    N, C, H, W = z.shape
    M = N * H * W
    y = _poisoned_like_glue(z.shape, z.dtype, torch._prims_common.suggest_memory_format(z))
    mask = torch.full((((M + 7) // 8) if relu else 0, C), 0xA5, dtype=torch.uint8)
    mean = torch.full((C,), float("nan"))
    var = torch.full((C,), float("nan"))
    with tempfile.TemporaryDirectory(prefix="emu_bn_") as tmp:
        d = Path(tmp)
        for name, t in (("y", y), ("mask", mask), ("mean", mean), ("var", var),
                        ("gamma", _per_channel(gamma)), ("beta", _per_channel(beta))):
            _write(d, name, t)
        report = _batchnorm_train_call(binary, "batchnorm_train_forward", d, z, eps,
                                       dict(y_stride=y.stride(), relu=relu), **kwargs)
        return (_read_like(d, "y", y), _read_like(d, "mask", mask), _read_like(d, "mean", mean),
                _read_like(d, "var", var), report)


def _gradient_params(d, grad_y, mask, grad_y_lead_elems):
    _write(d, "grad_y", grad_y)
    _write(d, "mask", mask.contiguous())
    return dict(grad_y_stride=grad_y.stride(), grad_y_lead_elems=grad_y_lead_elems)


def batchnorm_train_backward_sums(binary, grad_y, mask, z, mean, var, gamma, eps, *,
                                  grad_y_lead_elems=0, **kwargs):
    """BN's training-mode backward sums through the ReLU (mask [0, C]: none) and grad_z's
    coefficients, like the torch glue. Returns (grad_gamma, grad_beta, coef [4, C], report)."""
    C = z.shape[1]
    grad_gamma = torch.full((C,), float("nan"))
    grad_beta = torch.full((C,), float("nan"))
    coef = torch.full((4, C), float("nan"))
    with tempfile.TemporaryDirectory(prefix="emu_bn_") as tmp:
        d = Path(tmp)
        for name, t in (("grad_gamma", grad_gamma), ("grad_beta", grad_beta), ("coef", coef),
                        ("mean", _per_channel(mean)), ("var", _per_channel(var)),
                        ("gamma", _per_channel(gamma))):
            _write(d, name, t)
        params = _gradient_params(d, grad_y, mask, grad_y_lead_elems)
        report = _batchnorm_train_call(binary, "batchnorm_train_backward_sums", d, z, eps,
                                       params, **kwargs)
        return (_read_like(d, "grad_gamma", grad_gamma), _read_like(d, "grad_beta", grad_beta),
                _read_like(d, "coef", coef), report)


def batchnorm_train_grad_z(binary, grad_y, mask, z, coef, *, grad_y_lead_elems=0, **kwargs):
    """grad_z (z's memory format) from grad_y, the mask, z and the coefficients, like the torch
    glue. Returns (grad_z, report)."""
    grad_z = _poisoned_like_glue(z.shape, z.dtype, torch._prims_common.suggest_memory_format(z))
    with tempfile.TemporaryDirectory(prefix="emu_bn_") as tmp:
        d = Path(tmp)
        _write(d, "grad_z", grad_z)
        _write(d, "coef", coef.float().contiguous())
        params = dict(_gradient_params(d, grad_y, mask, grad_y_lead_elems),
                      grad_z_stride=grad_z.stride())
        report = _batchnorm_train_call(binary, "batchnorm_train_grad_z", d, z, 0.0, params,
                                       **kwargs)
        return _read_like(d, "grad_z", grad_z), report


# The emulator's adversarial schedule (csrc/emulation/emulator.cpp): the thread that completes a
# block barrier runs until it next waits, or finishes, before the others leave the barrier.
COMPLETER_FIRST = {"CUDA_EMULATOR_SCHEDULE": "completer_first"}


def selftest(binary, name, env=None) -> str:
    """Runs selftest.cpp's kernel `name`; env: extra environment, such as COMPLETER_FIRST."""
    outer = getattr(_EXTRA_ENV, "env", {})  # profile_launches(selftest, ...) sets its own
    _EXTRA_ENV.env = {**outer, **(env or {})}
    try:
        return _run(binary, "selftest", name)
    finally:
        _EXTRA_ENV.env = outer


def profile_launches(call, binary, *args, sample_blocks: int = 0, **kwargs):
    """Runs `call` (grouped_conv_bn_relu, squeeze_excite or selftest of this module) with the
    "profile" build's `binary`; returns (its result, one dict per kernel launch).

    Each dict is the profiler's report of that launch (csrc/emulation/access_profile.cpp):
    grid, blocks, sampled_blocks, per kind of access ("global_load", "global_store",
    "shared_load", "shared_store", "ldmatrix", "fragment_store") the requests, sectors or
    wavefronts, their ideal, bytes and bytes used, barriers and MMAs per block, and per access
    site the same tallies. Counts are over the sampled blocks: sample_blocks > 0 runs only that
    many blocks of each grid, spread evenly (the first and last among them); scale by
    blocks / sampled_blocks for the whole grid.
    """
    import json

    with tempfile.TemporaryDirectory(prefix="emu_profile_") as tmp:
        out = Path(tmp) / "profile.jsonl"
        _EXTRA_ENV.env = {"CUDA_EMULATOR_PROFILE_OUT": str(out),
                          "CUDA_EMULATOR_PROFILE_BLOCKS": str(sample_blocks)}
        try:
            result = call(binary, *args, **kwargs)
        finally:
            _EXTRA_ENV.env = {}
        launches = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return result, launches


def launch_shapes(binary, op: str, *, N, C, H, W, dtype, channels_last, groups=None, stride=1,
                  R=None, allow_tf32=False, device_major=9):
    """The launches (grid, block threads, dynamic shared memory) that one call of `op` ("conv",
    "dgrad", "wgrad" (the conv's backward, with a ReLU mask), "se", or train-mode BatchNorm's
    "bn_forward", "bn_backward_sums", "bn_grad_z" (on the conv's output of this shape, with a
    ReLU mask)) makes at this shape, without running them: the profile build's plan-only mode,
    on placeholder buffers, so real batch sizes cost nothing. Returns (path report,
    launches)."""
    import json

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.empty(N, C, H, W, dtype=dtype, device="meta").contiguous(memory_format=fmt)
    with tempfile.TemporaryDirectory(prefix="emu_plan_") as tmp:
        d = Path(tmp)
        out = d / "profile.jsonl"
        if op == "conv":
            H_out, W_out = (H - 1) // stride + 1, (W - 1) // stride + 1
            y = torch.empty(N, C, H_out, W_out, dtype=dtype, device="meta").contiguous(
                memory_format=fmt)
            w = torch.empty(C, C // groups, 3, 3, dtype=dtype, device="meta")
            for name in ("x", "w", "scale", "shift", "y"):
                (d / f"{name}.bin").write_bytes(b"")
            _write_params(d, dict(
                dtype=DTYPE_CODES[dtype], N=N, C_in=C, H=H, W=W, C_out=C, H_out=H_out,
                W_out=W_out, groups=groups, KH=3, KW=3, stride=[stride] * 2, padding=[1, 1],
                dilation=[1, 1], x_stride=x.stride(), w_stride=w.stride(), y_stride=y.stride(),
                relu=True, y_channels_last=channels_last, device_major=device_major,
                force_direct=False, x_lead_elems=0, allow_tf32=allow_tf32))
            args = ("grouped_conv", d)
        elif op in ("dgrad", "wgrad"):
            H_out, W_out = (H - 1) // stride + 1, (W - 1) // stride + 1
            gy = torch.empty(N, C, H_out, W_out, dtype=dtype, device="meta").contiguous(
                memory_format=fmt)
            w = torch.empty(C, C // groups, 3, 3, dtype=dtype, device="meta")
            for name in ("grad_y", "w", "scale", "x", "grad_x", "grad_w", "grad_scale",
                         "grad_shift"):
                (d / f"{name}.bin").write_bytes(b"")
            (d / "mask.bin").write_bytes(b"\0")  # not empty: the kernels read a mask
            _write_params(d, dict(
                dtype=DTYPE_CODES[dtype], N=N, C_in=C, H=H, W=W, C_out=C, H_out=H_out,
                W_out=W_out, groups=groups, KH=3, KW=3, stride=[stride] * 2, padding=[1, 1],
                dilation=[1, 1], grad_y_stride=gy.stride(), w_stride=w.stride(),
                x_stride=x.stride(), grad_x_stride=x.stride(), grad_w_stride=w.stride(),
                grad_x_channels_last=channels_last, device_major=device_major))
            args = (f"grouped_conv_{op}", d)
        elif op.startswith("bn_"):
            H_out, W_out = (H - 1) // stride + 1, (W - 1) // stride + 1
            z = torch.empty(N, C, H_out, W_out, dtype=dtype, device="meta").contiguous(
                memory_format=fmt)
            for name in ("z", "y", "gamma", "beta", "mean", "var", "grad_y", "grad_gamma",
                         "grad_beta", "coef", "grad_z"):
                (d / f"{name}.bin").write_bytes(b"")
            (d / "mask.bin").write_bytes(b"\0")  # not empty: the backward reads a mask
            (d / "eps.bin").write_bytes(torch.tensor([1e-5]).numpy().tobytes())
            _write_params(d, dict(
                dtype=DTYPE_CODES[dtype], N=N, C=C, H=H_out, W=W_out, z_stride=z.stride(),
                y_stride=z.stride(), grad_y_stride=z.stride(), grad_z_stride=z.stride(),
                relu=True))
            args = ({"bn_forward": "batchnorm_train_forward",
                     "bn_backward_sums": "batchnorm_train_backward_sums",
                     "bn_grad_z": "batchnorm_train_grad_z"}[op], d)
        else:
            for name in ("u", "out", "w1", "w2", "residual", "b1", "b2"):
                (d / f"{name}.bin").write_bytes(b"")
            _write_params(d, dict(
                dtype=DTYPE_CODES[dtype], N=N, C=C, H=H, W=W, R=R, u_stride=x.stride(),
                out_stride=x.stride(), residual_stride=x.stride(), relu=True,
                channels_last=channels_last, has_residual=True, has_b1=True, has_b2=True))
            args = ("squeeze_excite", d)
        _EXTRA_ENV.env = {"CUDA_EMULATOR_PROFILE_OUT": str(out), "CUDA_EMULATOR_PLAN_ONLY": "1"}
        try:
            report = _run(binary, *args)
        finally:
            _EXTRA_ENV.env = {}
        launches = [json.loads(line) for line in out.read_text().splitlines()]
    return report.strip(), [dict(grid=l["grid"], blocks=l["blocks"], threads=l["block_threads"],
                                 smem_bytes=l["smem_bytes"]) for l in launches]

"""Compile every Triton kernel path as real calls specialise it, for sm_90 and sm_80, without a GPU.

Triton compiles to PTX and cubin without a driver, so CI can prove the kernels compile for the GPU
(tl.dot shape and dtype rules, layouts, constexpr paths) and report what ptxas allocated:
registers, spills, shared memory, and whether the tensor-core instructions are there (wgmma on
sm_90, mma on sm_80). These are compile reports, not GPU measurements: nothing here says anything
about correctness or speed on a GPU.

What is compiled: every distinct grouped 3x3 conv of resnext50_32x4d, resnext101_32x8d and
resnext101_64x4d and every SE tail (squeeze, excite, scale with residual and ReLU) of
seresnext50_32x4d, read from the model definitions on meta tensors; at batch 128 and 1; conv in
fp16, bf16 and fp32 (TF32 and IEEE), SE in fp16, bf16, fp32 (FC weights fp32 as under autocast,
or in u's dtype); NCHW, channels_last with channels_last weights (a model converted with
.to(memory_format=torch.channels_last)) and channels_last with contiguous weights (the op called
directly, as the benchmarks do); for sm_90 and sm_80.

How each path is specialised (the point of this script): Triton's JIT specialises a kernel on
its arguments' values (an int equal to 1 becomes a constant, ints divisible by 16 and 16-byte
aligned pointers get divisibility hints, ints of 2^31 or more become i64), and ptxas' register
counts depend on it. So nothing is derived by hand here: the real launchers run on meta tensors
(their data pointers are 0 plus the storage offset, i.e. aligned like a fresh CUDA allocation),
with a stand-in driver that only names the target GPU, and Triton's own JITFunction.run binds the
arguments and computes the cache key, signature, constexprs, attributes and options, exactly as
on a GPU. The conv's autotuner is driven through its own warmup(), which passes each autotune
config the way Autotuner.run does. JITFunction._do_compile is intercepted to record what it was
given instead of compiling; each distinct (arch, kernel, JIT cache key) is then compiled with
triton.compile(ASTSource(fn, signature, constexprs, attrs), target, options), the call
_do_compile itself makes. Registers and spills come from the ptxas -v log of that compile: Triton's
own ptxas (the one the JIT runs on the GPU machine) with Triton's flags.

Every run also checks itself: a few launches are compiled both by JITFunction._do_compile itself
and as above, and must give the same Triton hash (source, specialisation, options, target).

    python scripts/triton_aot_check.py                  # CI: see in_ci (~260 paths)
    python scripts/triton_aot_check.py --all-configs    # every call at every autotune config
    python scripts/triton_aot_check.py --json out.json  # the same report as JSON
    python scripts/triton_aot_check.py --self-check     # only the check against the JIT

Exit status 1 if any path fails to compile, if an fp16/bf16 conv path or any SE path spills
registers on sm_90 (the configurations that matter for speed, on the target GPU; fp32 conv and
sm_80 spills are reported only), or if
the self-check differs; 3 if Triton cannot compile for NVIDIA GPUs here.
"""

import argparse
import collections
import concurrent.futures
import contextlib
import io
import importlib
import json
import os
import re
import subprocess
import sys
import time
import warnings
from unittest import mock

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: this compiles the kernels for real GPUs")

# Triton 3.9 warns once per process that its FP-fusion default will change; the default (fusion
# on) is what the JIT uses on the GPU machine too, so the warning says nothing about this report.
warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

# the real shapes, read from the models: the same ones the benchmarks and the GPU plan use
from resnext_kernels.models.shapes import grouped_conv_shapes, se_shapes  # noqa: E402

# importlib: the package re-exports the launchers under the modules' own names
conv = importlib.import_module("resnext_kernels.backends.triton.grouped_conv_bn_relu")
conv_v3 = importlib.import_module("resnext_kernels.backends.triton.grouped_conv_v3")
conv_bw = importlib.import_module("resnext_kernels.backends.triton.grouped_conv_backward")
se = importlib.import_module("resnext_kernels.backends.triton.squeeze_excite")
se_bw = importlib.import_module("resnext_kernels.backends.triton.squeeze_excite_backward")
bn_train = importlib.import_module("resnext_kernels.backends.triton.train")
TRITON_BACKWARD_ENV = importlib.import_module(
    "resnext_kernels.backends.triton.backward").TRITON_BACKWARD_ENV
bn_kernels = importlib.import_module("resnext_kernels.backends.triton.batchnorm_train")
channel_stats = importlib.import_module("resnext_kernels.backends.triton.channel_stats")

KERNELS = {
    "conv": conv._grouped_conv_bn_relu_kernel,
    "conv_v3": conv_v3._grouped_conv_v3_kernel,
    "se_squeeze": se._se_squeeze_kernel,
    "se_fc": se._se_fc_kernel,
    "se_scale": se._se_scale_kernel,
    "conv_dgrad": conv_bw._dgrad_kernel,
    "conv_wgrad": conv_bw._wgrad_partial_kernel,
    "conv_wgrad_sum": conv_bw._wgrad_finalize_kernel,
    "stats_reduce": channel_stats._reduce_partials_kernel,
    "bn_normalize": bn_kernels._normalize_kernel,
    "bn_backward_sums": bn_kernels._backward_sums_kernel,
    "bn_coefficients": bn_kernels._coefficients_kernel,
    "bn_grad_z": bn_kernels._grad_z_kernel,
    "se_gate_grad": se_bw._se_gate_grad_kernel,
    "se_input_grad": se_bw._se_input_grad_kernel,
}
TRAINING_KERNELS = ("conv_dgrad", "conv_wgrad", "conv_wgrad_sum", "stats_reduce",
                    "bn_normalize", "bn_backward_sums", "bn_coefficients", "bn_grad_z",
                    "se_gate_grad", "se_input_grad")

CONV_MODELS = ("resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d")
SE_MODEL = "seresnext50_32x4d"
BATCHES = (128, 1)
ARCHS = (90, 80)
# name: (dtype, torch.backends.cudnn.allow_tf32: the launcher's TF32 switch for fp32)
CONV_DTYPES = {"fp16": (torch.float16, False), "bf16": (torch.bfloat16, False),
               "fp32/tf32": (torch.float32, True), "fp32/ieee": (torch.float32, False)}
SE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CL = torch.channels_last
NCHW = torch.contiguous_format
# name: (memory format of x / u, of the conv weight)
LAYOUTS = {"nhwc": (CL, CL), "nhwc,w-nchw": (CL, NCHW), "nchw": (NCHW, NCHW)}
SE_LAYOUTS = ("nhwc", "nchw")

# What CI compiles (the default). Every call's distinct specialisations at every autotune config
# is about 3500 compiles (--all-configs: 20-30 minutes on 2 cores), so the default takes:
#  1. every distinct specialisation of every fp16 call (each shape, batch and layout: what the
#     spill gate is about) at the reference config: the tile with the most output rows per warp,
#     so the most accumulator registers per thread (64 rows x 4 warps), the smaller tile of
#     equals, the shallower pipeline. In --all-configs runs it took the most registers of all
#     configs per cpg class, or within 8 of the most (Triton 3.6 on sm_90).
#  2. bf16 and fp32 (TF32 and IEEE; for fp32 a compile failure fails, a spill is reported only)
#     at the reference config: the batch-128 channels_last and NCHW calls of CI_CONFIG_SHAPES,
#     one shape per tile class (BLOCK_N x BLOCK_K). bf16 took exactly fp16's registers and
#     spills on all 864 fp16/bf16 pairs of --all-configs runs under Triton 3.6 and 3.9.
#  3. every other autotune config: the fp16 batch-128 NCHW calls (NCHW took the most registers
#     in every --all-configs run so far) of CI_CONFIG_SHAPES: does each config compile, and
#     does it spill where pressure peaks.
#  4. every SE path (they are few).
#  5. conv v3 (channels_last fp16/bf16: every such call of the models now runs it) as 1-3 for
#     v2: every fp16 call at its fixed config (the one the GPU plan's tests and the GPU-free
#     profile run), bf16 on CI_CONFIG_SHAPES there, and every other config on the fp16
#     CI_CONFIG_SHAPES at batch 128.
#  6. training (train_cases: batch 128, fp16): the forward that stores the ReLU mask (v3 at its
#     fixed config in channels_last, v2 at the reference config in NCHW) and every backward
#     kernel path (one fixed configuration each); train-mode BatchNorm's (fusedtrain_cases,
#     batch 128 and 1): the conv that stores its statistics partials (at its fixed config: it
#     is not autotuned), every BN kernel, dgrad and wgrad of a written grad_z and with grad_z
#     formed in their prologue (both choices of RESNEXT_KERNELS_TRITON_BN_GRAD_Z); the
#     SE-ResNeXt tail's backward (se_train_cases: batch 128 and 1, fp16 and bf16).
def _reference_config():
    c = max(conv._GPU_CONFIGS, key=lambda c: (c.kwargs["BLOCK_M"] / c.num_warps, -c.num_warps,
                                             -c.num_stages))
    return c.kwargs["BLOCK_M"], c.num_warps, c.num_stages


REFERENCE_CONFIG = _reference_config()  # (BLOCK_M, num_warps, num_stages)
# (C_in, H, groups, stride): resnext50 layer1 (cpg 4: 16x16 tiles), resnext50 layer3 (cpg 32:
# 32x32), resnext101_32x8d layer4 (cpg 64: 64x32)
CI_CONFIG_SHAPES = {(128, 56, 32, 1), (1024, 14, 32, 1), (2048, 7, 32, 1)}


def config_of(path):
    c = constexpr_values(path)
    stages = c["NUM_STAGES"] if path["kernel"] == "conv_v3" else path["options"]["num_stages"]
    return (c["BLOCK_M"], path["options"]["num_warps"], stages)


V3_FIXED_CONFIGS = {nsub: (c.kwargs["BLOCK_M"], c.num_warps, c.kwargs["NUM_STAGES"])
                    for nsub, c in conv._V3_FIXED_GPU_CONFIG.items()}


def in_ci(path):
    """Whether the default (CI) run compiles this path: see the comment above _reference_config."""
    if path["kernel"] in TRAINING_KERNELS:
        return True
    if constexpr_values(path).get("WRITE_MASK") or constexpr_values(path).get("WRITE_STATS"):
        return config_of(path) in (REFERENCE_CONFIG, *V3_FIXED_CONFIGS.values())
    if path["kernel"] == "conv_v3":
        fixed = config_of(path) == V3_FIXED_CONFIGS[constexpr_values(path)["NSUB"]]
        for c in path["cases"]:
            sample = (c["batch"] == 128 and
                      (c["C_in"], c["H"], c["groups"], c["stride"]) in CI_CONFIG_SHAPES)
            if fixed and (c["dtype"] == "fp16" or sample) or c["dtype"] == "fp16" and sample:
                return True
        return False
    if path["kernel"] != "conv":
        return True
    reference = config_of(path) == REFERENCE_CONFIG
    for c in path["cases"]:
        sample = (c["batch"] == 128 and
                  (c["C_in"], c["H"], c["groups"], c["stride"]) in CI_CONFIG_SHAPES)
        if reference and (c["dtype"] == "fp16" or sample and c["layout"] in ("nhwc", "nchw")):
            return True
        if not reference and c["dtype"] == "fp16" and sample and c["layout"] == "nchw":
            return True
    return False


# ----------------------------------------------------------------- Triton's JIT, minus the GPU
class TargetOnlyDriver:
    """What JITFunction.run asks the driver for before compiling: the device (the arch doubles as
    the device id, so each arch gets its own binder, as each GPU does), a stream, the target."""

    def __init__(self, arch):
        self.arch = arch

    def get_current_device(self):
        return self.arch

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)


TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
                torch.uint8: "u8"}


def rule_mismatches(fn, args, kwargs, signature, constexprs, attrs):
    """Triton's specialisation of one launch against the rules as Triton documents them: an int
    equal to 1 becomes the constant 1; other ints are i32 (i64 from 2^31 on) with a
    divisibility-16 hint when divisible by 16; a pointer has the hint when its address is 16-byte
    aligned; fp32 scalars get none. A sanity check of what the JIT did (the compiled paths are
    the JIT's own either way): [description of each argument where they differ]."""
    values = {**dict(zip(fn.arg_names, args)), **kwargs}
    bad = []
    for i, param in enumerate(fn.params):
        if param.is_constexpr:
            continue
        v, ty = values[param.name], signature[param.name]
        div = ["tt.divisibility", 16] in [list(a) for a in attrs.get((i,), [])]
        if isinstance(v, bool) or isinstance(v, float):
            want = (("u1" if isinstance(v, bool) else "fp32"), False)
        elif isinstance(v, int):
            want = (("constexpr", None) if v == 1 else
                    ("i32" if -2**31 <= v < 2**31 else "i64", v % 16 == 0))
        else:
            want = ("*" + TRITON_DTYPE[v.dtype], v.data_ptr() % 16 == 0)
        got = (ty, None) if ty == "constexpr" else (ty, div)
        if ty == "constexpr" and constexprs.get((i,)) != 1:
            got = (ty, constexprs.get((i,)))
        if got != want:
            shown = v if isinstance(v, (int, float)) else "pointer"
            bad.append(f"{fn.fn.__name__}.{param.name}={shown}: JIT {got}, rules {want}")
    return bad


@contextlib.contextmanager
def recording_launches(arch, launches, compile_first=0):
    """Launches made inside append what JITFunction.run would compile (kernel, JIT cache key,
    signature, constexprs, options, attrs; the grid; rule_mismatches) to launches, and return
    without compiling or running anything. The first compile_first launches are also compiled
    by JITFunction._do_compile itself (the CompiledKernel goes in the record as "jit_kernel")."""
    calls = {}
    saved_run = Autotuner.run

    def autotuner_run(self, *args, grid, warmup, **kwargs):
        # Autotuner.run would time every config (a GPU); warmup() passes each config to the
        # kernel as run() does, and compiles each, as the first real call does.
        self.warmup(*args, grid=grid, **kwargs)

    def recorder(name, fn):
        def run(*args, grid, warmup, **kwargs):
            calls[name] = (grid, args, kwargs)
            return type(fn).run(fn, *args, grid=grid, warmup=warmup, **kwargs)

        def do_compile(key, signature, device, constexprs, options, attrs, warmup):
            grid, args, kwargs = calls[name]
            if callable(grid):  # evaluated as run() does: on the bound arguments
                grid = grid({**dict(zip(fn.arg_names, args)), **kwargs})
            rec = dict(kernel=name, key=str(key), signature=signature, constexprs=constexprs,
                       options=options.__dict__, attrs=attrs, grid=tuple(int(g) for g in grid),
                       rule_mismatches=rule_mismatches(fn, args, kwargs, signature, constexprs,
                                                       attrs))
            if len(launches) < compile_first:
                rec["jit_kernel"] = type(fn)._do_compile(fn, key, signature, device, constexprs,
                                                         options, attrs, warmup)
            launches.append(rec)
            return None  # run() returns without launching
        return run, do_compile

    saved_driver = driver._active  # None until something asks for the (absent) GPU driver
    Autotuner.run = autotuner_run
    driver.set_active(TargetOnlyDriver(arch))
    try:
        for name, fn in KERNELS.items():
            fn.run, fn._do_compile = recorder(name, fn)
        yield
    finally:
        for fn in KERNELS.values():
            del fn.run, fn._do_compile
            fn.device_caches.clear()  # binders and kernels made under the stand-in driver
        Autotuner.run = saved_run
        driver.set_active(saved_driver)


def meta(shape, dtype, fmt=NCHW):
    return torch.empty(shape, dtype=dtype, device="meta").contiguous(memory_format=fmt)


def conv_launch(C_in, H, W, C_out, groups, stride, batch, dtype, layout):
    """The real launcher's call for one conv, on meta tensors (what fused_conv_bn passes)."""
    torch_dtype, tf32 = CONV_DTYPES[dtype]
    xfmt, wfmt = LAYOUTS[layout]
    x = meta((batch, C_in, H, W), torch_dtype, xfmt)
    w = meta((C_out, C_in // groups, 3, 3), torch_dtype, wfmt)
    bn = meta((C_out,), torch.float32)

    def launch():
        saved = torch.backends.cudnn.allow_tf32  # the launcher's TF32 switch for fp32
        torch.backends.cudnn.allow_tf32 = tf32
        try:
            conv.grouped_conv_bn_relu(x, w, bn, bn, (stride, stride), (1, 1), (1, 1), groups,
                                      True)
        finally:
            torch.backends.cudnn.allow_tf32 = saved
    return launch


def _se_operands(C, H, W, R, batch, dtype, fc, layout):
    """One SE-ResNeXt tail's meta operands (what fused_se passes: the 1x1-conv FC weights
    reshaped to matrices, biases): u, w1, b1, w2, b2, residual."""
    fmt = CL if layout == "nhwc" else NCHW
    u_dtype, fc_dtype = SE_DTYPES[dtype], SE_DTYPES[fc]
    u, res = meta((batch, C, H, W), u_dtype, fmt), meta((batch, C, H, W), u_dtype, fmt)
    w1 = meta((R, C, 1, 1), fc_dtype, fmt).reshape(R, C)
    w2 = meta((C, R, 1, 1), fc_dtype, fmt).reshape(C, R)
    b1, b2 = meta((R,), fc_dtype), meta((C,), fc_dtype)
    return u, w1, b1, w2, b2, res


def se_launch(*shape):
    """The real launcher's call for one SE-ResNeXt tail, relu(u * gate + residual), on meta
    tensors."""
    operands = _se_operands(*shape)
    return lambda: se.squeeze_excite(*operands, True)


def se_train_launch(*shape):
    """The SE-ResNeXt tail's backward on meta tensors, every gradient wanted (a training
    block's call)."""
    u, w1, b1, w2, b2, res = _se_operands(*shape)
    return lambda: se_bw.squeeze_excite_backward(torch.empty_like(u), u, w1, b1, w2, b2, res,
                                                 True, True, True, True)


def _conv_operands(C_in, H, W, C_out, groups, stride, batch, dtype, layout):
    """One conv's meta operands: (x, w, a per-channel fp32 vector, conv_args, dtype, x's
    memory format)."""
    torch_dtype, _ = CONV_DTYPES[dtype]
    xfmt, wfmt = LAYOUTS[layout]
    x = meta((batch, C_in, H, W), torch_dtype, xfmt)
    w = meta((C_out, C_in // groups, 3, 3), torch_dtype, wfmt)
    per_channel = meta((C_out,), torch.float32)
    return x, w, per_channel, ((stride, stride), (1, 1), (1, 1), groups), torch_dtype, xfmt


def train_launches(*shape):
    """The training calls of one conv, on meta tensors: the forward that stores the ReLU mask,
    then the backward's dgrad and wgrad (what the op's autograd formula calls)."""
    x, w, bn, conv_args, torch_dtype, xfmt = _conv_operands(*shape)

    def launch():
        y, mask = conv.grouped_conv_bn_relu_masked(x, w, bn, bn, *conv_args, True)
        grad_y = meta(y.shape, torch_dtype, xfmt)
        conv_bw.grouped_conv_dgrad(grad_y, mask, w, bn, list(x.shape), *conv_args,
                                   xfmt == CL)
        conv_bw.grouped_conv_wgrad(grad_y, mask, x, w, bn, *conv_args)
    return launch


def fusedtrain_launches(*shape, grad_z="both"):
    """Train-mode BatchNorm's calls of one conv (replace_modules(fuse_training=True)), on meta
    tensors, with the backend's own dgrad and wgrad kernels: the conv with its statistics
    epilogue, the reduction, the normalize; the BN backward's sums, their reduction and
    grad_z's coefficients; then, as bn_train.BN_GRAD_Z_ENV chooses, grad_z written and dgrad
    and wgrad of it ("written"), or dgrad and wgrad forming grad_z in their prologue
    ("prologue"), or ("both") the two (backends/triton/train.py)."""
    x, w, bn, conv_args, torch_dtype, xfmt = _conv_operands(*shape)
    choices = bn_train.BN_GRAD_Z_CHOICES if grad_z == "both" else (grad_z,)

    def launch():
        y, mask, z, mean, var = bn_train.grouped_conv_bn_relu_train(x, w, bn, bn, 1e-5,
                                                                    *conv_args, True)
        grad_y = meta(y.shape, torch_dtype, xfmt)
        _, _, coef = bn_train.batchnorm_train_backward_sums(grad_y, mask, z, mean, var, bn,
                                                            1e-5)
        for choice in choices:
            with mock.patch.dict(os.environ, {TRITON_BACKWARD_ENV: "kernels",
                                              bn_train.BN_GRAD_Z_ENV: choice}):
                bn_train.grouped_conv_bn_train_backward(grad_y, mask, z, coef, x, w,
                                                        *conv_args, True, True)
    return launch


def _training_cases(launches, batches, label):
    """launches(...) of every distinct fp16 conv of the models at the given batches, in
    channels_last and NCHW; label: the case's extra keys."""
    for case, _ in conv_cases():
        if case["batch"] in batches and case["dtype"] == "fp16" \
                and case["layout"] != "nhwc,w-nchw":
            yield (dict(case, op="conv", training=True, **label),
                   launches(case["C_in"], case["H"], case["W"], case["C_out"], case["groups"],
                            case["stride"], case["batch"], "fp16", case["layout"]))


def train_cases():
    """The training calls (train_launches) of every distinct conv of the models: batch 128."""
    return _training_cases(train_launches, (128,), {})


def fusedtrain_cases():
    """fusedtrain_launches of every distinct conv of the models: batch 128 and 1 (a single
    row of partials: Triton makes an int argument equal to 1 a constant, which once broke the
    reduction's compile)."""
    return _training_cases(fusedtrain_launches, (128, 1), dict(fusedtrain=True))


def conv_cases():
    shapes = {}
    for model_name in CONV_MODELS:
        for layer, C_in, H, W, C_out, groups, stride, count in grouped_conv_shapes(model_name):
            shapes.setdefault((C_in, H, W, C_out, groups, stride), []).append(
                f"{model_name}.{layer}" + (f" (x{count})" if count > 1 else ""))
    for (C_in, H, W, C_out, groups, stride), layers in shapes.items():
        shape = dict(op="conv", C_in=C_in, H=H, W=W, C_out=C_out, groups=groups,
                     cpg=C_in // groups, stride=stride, layers=layers)
        for batch in BATCHES:
            for dtype in CONV_DTYPES:
                for layout in LAYOUTS:
                    yield (dict(shape, batch=batch, dtype=dtype, layout=layout),
                           conv_launch(C_in, H, W, C_out, groups, stride, batch, dtype, layout))


def se_cases():
    for layer, C, H, W, R, count in se_shapes(SE_MODEL):
        shape = dict(op="se", C=C, H=H, W=W, R=R,
                     layers=[f"{SE_MODEL}.{layer}" + (f" (x{count})" if count > 1 else "")])
        for batch in BATCHES:
            for dtype in SE_DTYPES:
                # FC weights: fp32 parameters under autocast, or a model cast to u's dtype
                for fc in dict.fromkeys(("fp32", dtype)):
                    for layout in SE_LAYOUTS:
                        yield (dict(shape, batch=batch, dtype=dtype, fc=fc, layout=layout),
                               se_launch(C, H, W, R, batch, dtype, fc, layout))


def se_train_cases():
    """se_train_launch of every SE-ResNeXt tail shape: batch 128 and 1, fp16 and bf16 with
    fp32 FC weights (autocast's training), both layouts."""
    for case, _ in se_cases():
        if case["dtype"] != "fp32" and case["fc"] == "fp32":
            yield (dict(case, training=True),
                   se_train_launch(case["C"], case["H"], case["W"], case["R"], case["batch"],
                                   case["dtype"], case["fc"], case["layout"]))


def collect(archs):
    """{(arch, kernel, JIT key): path, with every case that launches it}; the number of calls;
    the launches whose specialisation differs from rule_mismatches' rules."""
    paths, calls, odd = {}, 0, []
    cases = (list(conv_cases()) + list(se_cases()) + list(train_cases())
             + list(fusedtrain_cases()) + list(se_train_cases()))
    for arch in archs:
        for case, launch in cases:
            calls += 1
            launches = []
            with recording_launches(arch, launches):
                launch()
            for rec in launches:
                path = paths.setdefault((arch, rec["kernel"], rec["key"]),
                                        dict(rec, arch=arch, cases=[]))
                path["cases"].append(dict(case, grid=rec["grid"]))
                odd += rec["rule_mismatches"]
    for path in paths.values():
        del path["rule_mismatches"]
    return paths, calls, sorted(set(odd))


# ----------------------------------------------------------------------------------- compiling
def job_of(path):
    return (path["kernel"], path["arch"], path["signature"], path["constexprs"], path["options"],
            path["attrs"])


def compile_path(job, sass=False):
    """triton.compile as JITFunction._do_compile calls it; the ptxas -v log of its cubin step.
    sass=True adds the instruction mix of its cubin (scripts/sass_mix.py)."""
    kernel, arch, signature, constexprs, options, attrs = job
    from triton import knobs

    saved = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log = True  # make_cubin prints its ptxas -v log
    knobs.compilation.always_compile = True  # so a Triton cache hit still runs ptxas
    log, start = io.StringIO(), time.time()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(KERNELS[kernel], signature, constexprs, attrs),
                                      target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as exc:  # a failed path is the finding
        return dict(error=f"{type(exc).__name__}: {str(exc)[:400]}")
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    ptx = compiled.asm["ptx"]
    mma = ("wgmma" if "wgmma.mma_async" in ptx else
           "mma" if re.search(r"\bmma\.sync", ptx) else "-")
    result = dict(regs=int(regs.group(1)) if regs else None,
                  spills=int(spill.group(1)) + int(spill.group(2)) if spill else None,
                  smem=compiled.metadata.shared, mma=mma, triton_hash=compiled.hash,
                  compile_s=round(time.time() - start, 2))
    if sass:
        import tempfile

        import sass_mix
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            result["sass"] = next(iter(sass_mix.profile_cubin(f.name).values()))
    return result


# Launches compiled both by the JIT itself (JITFunction._do_compile) and as this script compiles
# every path, in the self-check: the autotuned conv v3 (channels_last fp16) and v2 (its first
# config, channels_last fp32 and NCHW), the SE kernels (plain JIT launches).
SELF_CHECK = [
    (90, "conv v3 128x56² g32 s1, b128 fp16 nhwc", 1,
     conv_launch(128, 56, 56, 128, 32, 1, 128, "fp16", "nhwc")),
    (90, "conv 128x56² g32 s1, b128 fp32 nhwc", 1,
     conv_launch(128, 56, 56, 128, 32, 1, 128, "fp32/tf32", "nhwc")),
    (80, "conv 512x28² g32 s2, b1 bf16 nchw", 1,
     conv_launch(512, 28, 28, 512, 32, 2, 1, "bf16", "nchw")),
    (90, "SE 256x56² R16, b128 fp16 nhwc, fc fp32", 3,
     se_launch(256, 56, 56, 16, 128, "fp16", "fp32", "nhwc")),
]


def self_check():
    """Whether the script compiles what the JIT compiles: each SELF_CHECK launch goes through
    JITFunction.run and _do_compile for real (stand-in driver, no launch) and through this
    script's path (recorded specialisation, compile_path); the two must give the same Triton
    hash (of the source, specialisation, options and target). Returns (compiled pairs,
    [problems])."""
    problems, pairs = [], 0
    for arch, what, n, launch in SELF_CHECK:
        launches = []
        with recording_launches(arch, launches, compile_first=n), \
                contextlib.redirect_stdout(io.StringIO()):
            launch()
        for rec in launches[:n]:
            jit = rec["jit_kernel"]
            path = dict(rec, arch=arch)
            ours = compile_path(job_of(path))
            pairs += 1
            label = f"{path_label(path)} ({what})"
            if "error" in ours:
                problems.append(f"{label}: {ours['error']}")
            elif ours["triton_hash"] != jit.hash:
                problems.append(f"{label}: hash {ours['triton_hash']} != the JIT's {jit.hash}")
            if not re.search("[D1]", key_string(path)):
                problems.append(f"{label}: no runtime argument was specialised")
    return pairs, problems


def ptxas_version(arch):
    from triton.backends.nvidia.compiler import get_ptxas

    path = get_ptxas(arch).path
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    version = re.search(r"release (\S+),", out)
    return f"{version.group(1) if version else '?'} ({path})"


# ------------------------------------------------------------------------------------ reporting
ARG_LEGEND = ("key: one character per runtime argument, in order: D = divisibility-16 hint "
              "(16-byte aligned pointer, int divisible by 16), . = none, 1 = the constant 1 "
              "(specialised away), f = fp32 scalar; upper/lower case L for i64 with/without D")


def key_string(path):
    chars = []
    for i, (name, ty) in enumerate(path["signature"].items()):
        if ty == "constexpr":
            if path["constexprs"].get((i,)) == 1 and name not in CONSTEXPR_PARAMS[path["kernel"]]:
                chars.append("1")
            continue
        div = ["tt.divisibility", 16] in [list(a) for a in path["attrs"].get((i,), [])]
        if ty.startswith("fp") or ty.startswith("bf"):
            chars.append("f")
        elif ty == "i64":
            chars.append("L" if div else "l")
        else:
            chars.append("D" if div else ".")
    return "".join(chars)


CONSTEXPR_PARAMS = {name: {p.name for p in fn.params if p.is_constexpr}
                    for name, fn in KERNELS.items()}


def constexpr_values(path):
    names = list(path["signature"])
    return {names[i[0]]: v for i, v in path["constexprs"].items()
            if names[i[0]] in CONSTEXPR_PARAMS[path["kernel"]]}


def path_label(path):
    c, o, kernel = constexpr_values(path), path["options"], path["kernel"]
    arch = f"sm_{path['arch']}"
    if kernel == "conv":
        dt = path["signature"]["x_ptr"][1:]
        if c["DOT_IN_FP32"]:
            dt += "/" + c["DOT_PRECISION"]
        return (f"conv {arch} {dt} N{c['BLOCK_N']} K{c['BLOCK_K']} M{c['BLOCK_M']} "
                f"w{o['num_warps']} s{o['num_stages']}" + (" i64" if c["INDEX_64"] else "")
                + (" mask" if c["WRITE_MASK"] else "") + (" stats" if c["WRITE_STATS"] else ""))
    if kernel == "conv_v3":
        return (f"conv_v3 {arch} {path['signature']['x_ptr'][1:]} {c['NSUB']}x{c['SUBW']} "
                f"cpg{c['CPG']} M{c['BLOCK_M']} w{o['num_warps']} p{c['NUM_STAGES']}"
                + (" i64" if c["INDEX_64"] else "") + (" mask" if c["WRITE_MASK"] else "")
                + (" stats" if c["WRITE_STATS"] else ""))
    if kernel in ("conv_dgrad", "conv_wgrad"):
        return (f"{kernel} {arch} {path['signature']['w_ptr' if kernel == 'conv_dgrad' else 'x_ptr'][1:]} "
                f"N{c['BLOCK_N']} K{c['BLOCK_K']} M{c['BLOCK_M']} w{o['num_warps']}"
                + ("" if c["HAS_MASK"] else " nomask") + (" i64" if c["INDEX_64"] else "")
                + (" bn" if c["BN_TRAIN"] else "")
                + (f" taps{c['TAP_SLOTS']}" if c.get("TAP_SLOTS", 1) > 1 else ""))
    if kernel == "conv_wgrad_sum":
        return f"{kernel} {arch} {path['signature']['gw_ptr'][1:]} R{c['BLOCK_R']}"
    if kernel == "stats_reduce":
        return (f"{kernel} {arch} {'welford' if c['WELFORD'] else 'sum'}"
                + (" final" if c["FINAL"] else "") + f" R{c['TILE_ROWS']} C{c['BLOCK_C']}")
    if kernel == "bn_coefficients":
        return f"{kernel} {arch} gamma {path['signature']['gamma_ptr'][1:]} C{c['BLOCK_C']}"
    if kernel.startswith("bn_"):
        flags = "".join(f" {name.lower()}" for name in ("HAS_MASK", "APPLY_RELU", "INDEX_64")
                        if c.get(name))
        run = f" run{c['PIXEL_RUN']}" if c.get("PIXEL_RUN", 1) > 1 else ""  # NCHW pixel runs
        return (f"{kernel} {arch} {path['signature']['z_ptr'][1:]} M{c['BLOCK_M']} "
                f"C{c['BLOCK_C']}{flags}{run}")
    if kernel == "se_fc":  # the excite's launches (hidden, gate) and the backward's FCs
        flags = "".join(f" {name.lower()}" for name in ("IN_RELU", "STORE_IN", "SIGMOID",
                                                         "RELU_GRAD") if c.get(name))
        return (f"se_fc {arch} w{path['signature']['w_ptr'][1:]}{flags} I{c['BLOCK_I']} "
                f"J{c['BLOCK_J']} K{c['BLOCK_K']}")
    flags = "".join(f" {name.lower()}" for name in ("HAS_RESIDUAL", "APPLY_RELU", "STORE_G",
                                                     "G_WRITTEN") if c.get(name))
    return (f"{kernel} {arch} {path['signature']['u_ptr'][1:]} HW{c['BLOCK_HW']} "
            f"C{c['BLOCK_C']}{flags}")


def shape_id(case):
    if case["op"] == "conv":
        return (f"{case['C_in']}x{case['H']}² g{case['groups']} s{case['stride']}")
    return f"{case['C']}x{case['H']}² R{case['R']}"


def shapes_summary(path):
    """The calls of a path, grouped: 'b128 nhwc / b1 nhwc: 256x56² g32 s1, 512x28² g32 s1'.
    (The dtype is in the path's label; the excite's FC kernel sees the batch but not u.)"""
    groups = collections.OrderedDict()
    for case in path["cases"]:
        tag = (f"b{case['batch']} u {case['dtype']}" if path["kernel"] == "se_fc"
               else f"b{case['batch']} {case['layout']}")
        groups.setdefault(tag, {})[shape_id(case)] = None
    merged = collections.OrderedDict()
    for tag, ids in groups.items():
        merged.setdefault(", ".join(ids), []).append(tag)
    return "; ".join(f"{' / '.join(dict.fromkeys(tags))}: {ids}" for ids, tags in merged.items())


def is_fatal_spill(path):
    """Spills fail the check on sm_90, the H100/H200 target (as scripts/ptxas_report.sh does for
    the CUDA kernels), in every fp16/bf16 conv path and every SE path. fp32 conv (not a speed
    target) and sm_80 are reported only: under Triton 3.9 ptxas spills 8-24 B on sm_80 in one of
    the eight autotune candidates at cpg 32 (64 rows, 8 warps), which autotuning can pass over."""
    fp32_conv = path["kernel"] == "conv" and path["signature"]["x_ptr"] == "*fp32"
    return path["arch"] == 90 and not fp32_conv


def sort_key(path):
    c = constexpr_values(path)
    order = ["conv_v3", "conv", "se_squeeze", "se_fc", "se_scale", *TRAINING_KERNELS].index(
        path["kernel"])
    return (-path["arch"], order, path_label(path).split()[2], c.get("BLOCK_N", 0),
            c.get("BLOCK_M", 0), path["options"]["num_warps"], path["options"]["num_stages"],
            key_string(path))


def jsonable(path, result):
    names = list(path["signature"])
    return dict(
        path=path_label(path), arch=f"sm_{path['arch']}", kernel=path["kernel"],
        key=key_string(path), jit_cache_key=path["key"],
        signature=path["signature"],
        constexprs={names[i[0]]: v for i, v in path["constexprs"].items()},
        divisibility_16=[names[i[0]] for i, a in path["attrs"].items()
                         if ["tt.divisibility", 16] in [list(x) for x in a]],
        options={k: path["options"][k] for k in ("num_warps", "num_stages", "num_ctas", "maxnreg")
                 if k in path["options"]},
        **result, cases=path["cases"])


def cannot_compile_here():
    """Why Triton cannot compile for NVIDIA GPUs here (no CUDA backend, no ptxas), or None."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(90).path
    except Exception as exc:
        return f"Triton's CUDA backend is unavailable: {type(exc).__name__}: {exc}"
    if not (path and os.access(path, os.X_OK)):
        return f"no ptxas at {path!r}"
    return None


def cpg_summary(paths, results):
    """Conv registers (and the largest spill) per arch, dtype and channels-per-group class, over
    every shape, batch, layout and launch config compiled:
    {(arch, dtype): {cpg: (lowest, highest, largest spill)}}."""
    table = collections.defaultdict(dict)
    for path, r in zip(paths, results):
        if not path["kernel"].startswith("conv") or "error" in r or r["regs"] is None:
            continue
        dtype = path_label(path).split()[2]
        kind = {"conv": "", "conv_v3": "v3 "}.get(path["kernel"], path["kernel"][5:] + " ")
        row = table[(path["arch"], kind + dtype)]
        for cpg in {c["cpg"] for c in path["cases"]}:
            lo, hi, spill = row.get(cpg, (r["regs"], r["regs"], 0))
            row[cpg] = (min(lo, r["regs"]), max(hi, r["regs"]), max(spill, r["spills"]))
    return table


def print_cpg_summary(table):
    cpgs = sorted({cpg for row in table.values() for cpg in row})
    print("conv registers per thread by channels per group, min-max over every shape, batch, "
          "layout and config above (+ largest spill in bytes, if any):")
    print(f"  {'':<16}" + "".join(f"{f'cpg {c}':>14}" for c in cpgs))
    for (arch, dtype), row in sorted(table.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        cells = []
        for c in cpgs:
            if c not in row:
                cells.append(f"{'-':>14}")
                continue
            lo, hi, spill = row[c]
            cell = f"{lo}-{hi}" if lo != hi else f"{lo}"
            cells.append(f"{cell + (f' +{spill}B' if spill else ''):>14}")
        print(f"  sm_{arch} {dtype:<10}" + "".join(cells))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--all-configs", action="store_true", help="every autotune config")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--arch", type=int, action="append", choices=ARCHS,
                   help="only this arch (repeatable); default: sm_90 and sm_80")
    p.add_argument("--only", metavar="REGEX", help="only the paths whose label matches")
    p.add_argument("--self-check", action="store_true",
                   help="only check that the script compiles what Triton's JIT compiles "
                        "(every run does this too); exit status 3 if nothing can compile here")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    t0 = time.time()
    print(f"Triton {triton.__version__}, torch {torch.__version__}: the kernels compiled as real "
          f"calls specialise them (compile reports, not GPU measurements)")
    reason = cannot_compile_here()
    if reason:
        print(f"cannot compile for NVIDIA GPUs here: {reason}")
        return 3
    archs = tuple(args.arch) if args.arch else ARCHS
    for arch in archs:
        print(f"  ptxas for sm_{arch} (Triton's, as its JIT runs it): {ptxas_version(arch)}")
    if args.self_check:
        pairs, problems = self_check()
        for problem in problems:
            print(f"self-check: {problem}")
        print(f"self-check: {pairs} launches compiled by the JIT and by this script: "
              f"{'identical' if not problems else f'{len(problems)} problems'} "
              f"({time.time() - t0:.0f} s)")
        return 1 if problems else 0

    paths, calls, odd = collect(archs)
    missing = CI_CONFIG_SHAPES - {(c["C_in"], c["H"], c["groups"], c["stride"])
                                  for p in paths.values() for c in p["cases"] if c["op"] == "conv"}
    if args.only:
        paths = {k: v for k, v in paths.items() if re.search(args.only, path_label(v))}
    if not args.all_configs:
        paths = {k: v for k, v in paths.items() if in_ci(v)}
    paths = sorted(paths.values(), key=sort_key)
    if not paths:
        print("no path to compile (--only matches none)")
        return 2
    scope = "every call at every autotune config" if args.all_configs else "the CI set, see in_ci"
    print(f"{calls} calls (shape x batch x dtype x layout x arch) through the real launchers; "
          f"{len(paths)} distinct specialisations to compile ({scope}); "
          f"collected in {time.time() - t0:.0f} s")
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        check = pool.submit(self_check)
        results = list(pool.map(compile_path, [job_of(p) for p in paths]))
        pairs, problems = check.result()

    print("shapes (read from the models; conv C_in = C_out):")
    legend = {}
    for path in paths:
        for c in path["cases"]:
            cpg = f" (cpg {c['cpg']})" if c["op"] == "conv" else ""
            legend.setdefault(shape_id(c) + cpg, ", ".join(c["layers"]))
    for shape, layers in legend.items():
        print(f"  {shape:<24} {layers}")
    print(ARG_LEGEND)
    width = max(len(path_label(p)) for p in paths)
    kwidth = max(len(key_string(p)) for p in paths)
    print(f"{'path':<{width}} {'key':<{kwidth}} {'regs':>4} {'spill_B':>7} {'smem_B':>6} "
          f"{'mma':>5}  shapes (conv: C_in x H² groups stride; SE: C x H² R)")
    bad = 0
    for path, r in zip(paths, results):
        head = f"{path_label(path):<{width}} {key_string(path):<{kwidth}}"
        if "error" in r:
            bad += 1
            print(f"{head} FAILED: {r['error']}")
            continue
        flag = ""
        if r["spills"] is None or r["regs"] is None:
            bad += 1
            flag = "  <- no ptxas report"
        elif r["spills"]:
            fatal = is_fatal_spill(path)
            bad += fatal
            flag = "  <- SPILLS" if fatal else "  (fp32 or sm_80 spill, reported)"
        print(f"{head} {r['regs']:>4} {r['spills']:>7} {r['smem']:>6} {r['mma']:>5}  "
              f"{shapes_summary(path)}{flag}")
    print_cpg_summary(cpg_summary(paths, results))
    for problem in problems:
        print(f"self-check FAILED: {problem}")
    print(f"self-check: {pairs} sample launches compiled by Triton's JIT (_do_compile) and by this "
          f"script give {'the same' if not problems else 'DIFFERENT'} Triton hash")
    print(f"specialisation of all {calls} calls' launches against the documented rules "
          f"(1 -> constant, divisible by 16 / 16-byte aligned -> hint): "
          + ("agree" if not odd else f"{len(odd)} differ (reported only): " + "; ".join(odd[:5])))
    if missing:  # the shapes CI compiles every autotune config on are gone from the models
        bad += 1
        print(f"CI_CONFIG_SHAPES not among the models' convs: {sorted(missing)}")
    print(f"{len(paths)} paths: {bad} failed to compile or spilled where it matters "
          f"({time.time() - t0:.0f} s)")
    if args.json:
        report = dict(triton=triton.__version__, torch=torch.__version__,
                      ptxas={f"sm_{a}": ptxas_version(a) for a in archs},
                      all_configs=args.all_configs, key_legend=ARG_LEGEND,
                      self_check=dict(pairs=pairs, problems=problems),
                      rule_mismatches=odd,
                      conv_regs_by_cpg=[dict(arch=f"sm_{a}", dtype=d, cpg=c, regs_min=lo,
                                             regs_max=hi, spill_max=sp)
                                        for (a, d), row in cpg_summary(paths, results).items()
                                        for c, (lo, hi, sp) in sorted(row.items())],
                      paths=[jsonable(p, r) for p, r in zip(paths, results)])
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return 1 if bad or problems else 0


if __name__ == "__main__":
    sys.exit(main())

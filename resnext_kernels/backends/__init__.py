"""Backend registry: which implementations exist, which are usable here, and which "auto" picks.

Every backend implements the same signature per op (see resnext_kernels/ops/); the op's contract
(validation, fake, autograd) lives in the op, never in a backend.
"""

import functools
import importlib
import os
import re

import torch

from .. import _extension
from . import auto_table

BACKENDS = ("reference", "triton", "cuda")

# What "auto" tries, in order, per device type, for calls that no measured per-shape table
# (auto_table.py) covers. Only backends verified and measured faster than the reference on that
# device belong before "reference". Measured so far on sm_90 only (H200 and H100, 2026-11-26),
# and there per shape: CUDA v3 beat cuDNN on most ResNeXt layers and Triton's SE beat the eager
# module on three of four SE-ResNeXt stages (auto_tables/sm_90*.json), so an unmeasured shape
# or GPU stays on the aten reference (cuDNN on a GPU).
AUTO_PREFERENCE = {
    "cuda": ("reference",),
    "cpu": ("reference",),
}


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _version_tuple(version: str):
    """(major, minor) of a version string such as "3.6.0" or "2.4.0rc1"."""
    parts = re.findall(r"\d+", version)[:2]
    return tuple(int(p) for p in parts) + (0,) * (2 - len(parts))


@functools.lru_cache(maxsize=None)
def triton_interpreter_problem():
    """Why the installed Triton interpreter cannot run our kernels, or None if it can.

    Triton 3.6's interpreter turns a loop bound into a Python int with int() on a one-element
    array, which numpy 2.4 made an error ("only 0-dimensional arrays can be converted to Python
    scalars"); every kernel with a runtime loop bound fails. Triton 3.7 squeezes the array first.
    The compiled (GPU) path does not use numpy this way and is unaffected.
    """
    import numpy
    import triton

    if _version_tuple(triton.__version__) < (3, 7) and _version_tuple(numpy.__version__) >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter fails with numpy {numpy.__version__} "
                "(numpy >= 2.4; fixed in Triton 3.7): install 'numpy<2.4' to run Triton kernels "
                "on the CPU, or Triton >= 3.7")
    return None


def _triton_status(device_type: str):
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, f"triton is not installed ({exc})"
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device is visible"
        return True, "available"
    if device_type == "cpu":
        if triton_interpreter_enabled():
            problem = triton_interpreter_problem()
            if problem is not None:
                return False, problem
            return True, "available through the Triton interpreter (TRITON_INTERPRET=1; slow)"
        return False, "Triton runs on CPU tensors only under TRITON_INTERPRET=1"
    return False, f"Triton kernels do not run on {device_type} devices"


def _cuda_status(device_type: str):
    if not _extension.extension_loaded():
        return False, f"the compiled extension did not load: {_extension.EXTENSION_ERROR}"
    if not _extension.cuda_kernels_registered():
        return False, "the compiled extension has no CUDA kernels registered"
    if device_type != "cuda":
        return False, f"the CUDA kernels need CUDA tensors, not {device_type}"
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    return True, "available"


def backend_status(name: str, device_type: str):
    """(available, reason) for one backend on one device type."""
    if name == "reference":
        return True, "available"
    if name == "triton":
        return _triton_status(device_type)
    if name == "cuda":
        return _cuda_status(device_type)
    raise ValueError(f"backend: unknown backend {name!r}; expected one of {BACKENDS} or 'auto'")


def available_backends(device=None) -> dict:
    """{backend: reason} for every backend: "available", or why it is not.

    `device` defaults to the current CUDA device when one is visible, else the CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    return {name: backend_status(name, device_type)[1] for name in BACKENDS}


def gpu_arch(device: torch.device) -> str:
    """"sm_90" for a compute capability 9.0 device: how auto tables name GPUs."""
    return _gpu_arch(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _gpu_arch(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


def resolve(backend: str, device: torch.device, table_key=None) -> str:
    """The concrete backend for `backend` ("auto" or a name) on `device`, or a clear error.

    For "auto", `table_key` (see auto_table.conv_key) looks the call up in the measured
    per-shape tables first; without an entry, AUTO_PREFERENCE decides.
    """
    if backend == "auto":
        if table_key is not None:
            measured = auto_table.lookup(table_key)
            if measured is not None and backend_status(measured, device.type)[0]:
                return measured
        for name in AUTO_PREFERENCE.get(device.type, ("reference",)):
            if backend_status(name, device.type)[0]:
                return name
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(
            f"backend: unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}"
        )
    ok, reason = backend_status(backend, device.type)
    if not ok:
        usable = [n for n in BACKENDS if backend_status(n, device.type)[0]]
        raise RuntimeError(
            f"backend: {backend!r} is not available for {device.type} tensors ({reason}); "
            f"available here: {usable + ['auto']}"
        )
    return backend


_MODULES = {
    "reference": "resnext_kernels.backends.reference",
    "triton": "resnext_kernels.backends.triton",
    "cuda": "resnext_kernels.backends.cuda",
}


@functools.lru_cache(maxsize=None)
def implementation(op_name: str, backend: str, direct: bool = False):
    """The function implementing `op_name` in a concrete backend (imported on first use).

    direct=True: for a direct call in plain eager (ops/_direct.py), a backend's
    `<op_name>_direct` where it has one: a variant that may keep values between calls (the
    reference backend's folded weight). Under the dispatcher the plain function runs, which
    keeps nothing: a compiled graph's call must not hold tensors past its run (CUDA-graph
    trees check that their memory pool holds only the graph's outputs)."""
    module = importlib.import_module(_MODULES[backend])
    if direct and hasattr(module, op_name + "_direct"):
        return getattr(module, op_name + "_direct")
    return getattr(module, op_name)

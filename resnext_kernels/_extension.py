"""Loading the compiled extension `resnext_kernels._C`, and what the build recorded.

A missing or broken extension never breaks `import resnext_kernels`: the error is kept and
reported by `build_info()` and `available_backends()`, and the Triton and reference backends
work without it.
"""

import functools
import importlib
import importlib.util
import json
import os

import torch

_BUILD_INFO_PATH = os.path.join(os.path.dirname(__file__), "_build_info.json")



def _load_extension():
    """Imports _C (which registers its ops with the dispatcher); returns None or why it failed."""
    if importlib.util.find_spec(f"{__package__}._C") is None:
        return (
            "resnext_kernels._C is not built (see build_info()['cuda_extension']; "
            "install with `pip install --no-build-isolation .` and a CUDA build of torch)"
        )
    try:
        importlib.import_module(f"{__package__}._C")
    except ImportError as exc:  # e.g. built against another torch: undefined symbols
        return f"{type(exc).__name__}: {exc}"
    return None


EXTENSION_ERROR = _load_extension()


# The ops resnext_kernels._C registers (schemas in csrc/torch/module.cpp).
CUDA_OPS = ("grouped_conv_bn_relu_cuda", "grouped_conv_bn_relu_masked_cuda",
            "grouped_conv_dgrad_cuda", "grouped_conv_wgrad_cuda", "squeeze_excite_cuda")


def extension_loaded() -> bool:
    return EXTENSION_ERROR is None


@functools.lru_cache(maxsize=None)  # registered when _C is imported, above, or never
def cuda_kernels_registered() -> bool:
    """True when the CUDA kernels of the extension are registered for the CUDA dispatch key."""
    if not extension_loaded():
        return False
    return all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"resnext_kernels::{op}", "CUDA")
        for op in CUDA_OPS
    )


def build_info() -> dict:
    """What was built, for which torch / CUDA / archs, and what loaded in this process."""
    try:
        with open(_BUILD_INFO_PATH) as f:
            info = json.load(f)
    except OSError:
        info = {"cuda_extension": "unknown: not installed through setup.py (no build record)"}
    info["extension_loaded"] = extension_loaded()
    info["extension_error"] = EXTENSION_ERROR
    info["cuda_kernels_registered"] = cuda_kernels_registered()
    info["runtime_torch"] = torch.__version__
    info["runtime_torch_cuda"] = torch.version.cuda
    built_for = info.get("torch")
    if built_for and built_for != torch.__version__:
        info["warning"] = (
            f"built against torch {built_for} but running torch {torch.__version__}: "
            "reinstall with `pip install --no-build-isolation .`"
        )
    return info

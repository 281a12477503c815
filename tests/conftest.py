"""Shared test setup: interpreter gating, backend/device parameters, the dtype tolerance table.

On a machine without a GPU the Triton kernels run on CPU tensors through the Triton interpreter
(TRITON_INTERPRET=1, set here before anything imports triton, unless the caller chose already).
Tests marked `gpu` skip cleanly without a CUDA device.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import resnext_kernels  # noqa: E402  (after TRITON_INTERPRET is decided)
from resnext_kernels import backends  # noqa: E402

# Tolerances against a float64 reference, by dtype: stated once, used by every test.
# fp32 is compared with TF32 off; "tf32" is the row for fp32 with TF32 allowed on a GPU.
# Inputs are scaled so outputs are O(1): the fp16/bf16 rows are a few units of their rounding
# (2^-11 and 2^-8) on values up to ~4, plus fp32-accumulation noise.
TOLERANCES = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    "tf32": dict(atol=1e-2, rtol=1e-2),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=4e-2, rtol=4e-2),
}

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def tolerance(dtype):
    return TOLERANCES[dtype]


def _backend_device_params():
    params = []
    for device in ("cpu", "cuda"):
        for name in backends.BACKENDS:
            if name == "cuda" and device == "cpu":
                continue  # the CUDA kernels take CUDA tensors only; test_build checks that error
            marks = [pytest.mark.gpu] if device == "cuda" else []
            ok, reason = backends.backend_status(name, device)
            if not ok:
                marks.append(pytest.mark.skip(reason=f"{name} on {device}: {reason}"))
            params.append(pytest.param((name, device), id=f"{name}-{device}", marks=marks))
    return params


BACKEND_DEVICE_PARAMS = _backend_device_params()


@pytest.fixture(params=BACKEND_DEVICE_PARAMS)
def backend_device(request):
    """(backend name, device) for every backend usable on this machine."""
    return request.param


def pytest_report_header(config):
    info = resnext_kernels.build_info()
    return [
        f"resnext_kernels from {os.path.dirname(resnext_kernels.__file__)}",
        f"extension: {info.get('cuda_extension')}; loaded: {info['extension_loaded']}; "
        f"archs: {info.get('cuda_archs')}",
        f"backends: {resnext_kernels.available_backends()}",
    ]


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_slow = pytest.mark.skip(reason="large shapes are not run under the Triton interpreter")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_slow)


@pytest.fixture
def poison_outputs(monkeypatch):
    """Makes freshly allocated outputs hold NaN, so an element a kernel never writes shows up.

    Python backends allocate with torch.empty: it is wrapped to fill floating outputs with NaN.
    The C++ glue allocates through the CUDA caching allocator: `prime(nbytes, device)` allocates
    a NaN block of that size and frees it, so the next allocation of that size reuses it.
    """
    real_empty = torch.empty

    def nan_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point() and not isinstance(t, torch._subclasses.FakeTensor):
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", nan_empty)

    def prime(nbytes, device):
        if torch.device(device).type == "cuda":
            block = real_empty(nbytes, dtype=torch.uint8, device=device)
            block.fill_(0xFF)  # 0xFFFF.. is NaN in fp16, bf16 and fp32
            del block

    return prime


def channels_last_if(t, channels_last: bool):
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()


def seeded(seed: int):
    """A fresh generator per test case: inputs differ between cases, and reruns reproduce."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _no_tf32_unless_asked():
    """fp32 tests compare against the fp32 row; a test that wants TF32 turns it on itself."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


__all__ = ["resnext_kernels", "tolerance", "DTYPES", "channels_last_if", "seeded"]

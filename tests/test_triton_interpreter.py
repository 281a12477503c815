"""Whether the Triton kernels can run on the CPU here, through the Triton interpreter.

Triton 3.6 (torch 2.11's) with numpy >= 2.4 cannot: the backend then says why instead of
failing inside the interpreter. With RESNEXT_KERNELS_REQUIRE_TRITON_INTERPRETER=1 (CI sets it)
an unusable interpreter fails here instead of skipping every Triton CPU test.
"""

import os

import pytest
import torch

import resnext_kernels as rk
from resnext_kernels import backends

triton = pytest.importorskip("triton")
numpy = pytest.importorskip("numpy")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is for machines without a GPU")
def test_triton_runs_on_the_cpu_when_required():
    ok, reason = backends.backend_status("triton", "cpu")
    if os.environ.get("RESNEXT_KERNELS_REQUIRE_TRITON_INTERPRETER") == "1":
        assert ok, f"RESNEXT_KERNELS_REQUIRE_TRITON_INTERPRETER=1 but: {reason}"
    elif not ok:
        pytest.skip(reason)


@pytest.mark.parametrize("triton_version, numpy_version, broken", [
    ("3.6.0", "2.4.0", True),
    ("3.6.0", "2.5.2", True),
    ("3.6.0", "2.3.5", False),
    ("3.7.1", "2.4.6", False),
    ("3.9.0", "2.5.0", False),
    ("3.10.0", "2.4.0", False),  # numeric, not string, comparison of versions
])
def test_interpreter_problem_names_the_versions_and_the_fix(monkeypatch, triton_version,
                                                            numpy_version, broken):
    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    backends.triton_interpreter_problem.cache_clear()
    try:
        problem = backends.triton_interpreter_problem()
    finally:
        monkeypatch.undo()
        backends.triton_interpreter_problem.cache_clear()
    if broken:
        assert problem is not None and triton_version in problem and numpy_version in problem
        assert "numpy<2.4" in problem
    else:
        assert problem is None


def test_unusable_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(backends, "triton_interpreter_problem", lambda: "numpy too new (test)")
    assert backends.backend_status("triton", "cpu") == (False, "numpy too new (test)")
    x = torch.randn(1, 8, 4, 4)
    w = torch.randn(8, 2, 3, 3)
    with pytest.raises(RuntimeError, match=r"backend: 'triton' is not available .*numpy too new"):
        rk.grouped_conv_bn_relu(x, w, torch.ones(8), torch.zeros(8), groups=4, backend="triton")

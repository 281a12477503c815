"""The op contract of grouped_conv_bn_relu: named errors, opcheck, torch.compile, backend choice."""

import pytest
import torch

import resnext_kernels as rk
from resnext_kernels import backends


def good_args(device="cpu"):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 6, 6, generator=g).to(device)
    w = (torch.randn(32, 4, 3, 3, generator=g) / 6).to(device)
    scale = (torch.rand(32, generator=g) + 0.5).to(device)
    shift = torch.randn(32, generator=g).to(device)
    return x, w, scale, shift


def call(x=None, w=None, scale=None, shift=None, **kw):
    gx, gw, gs, gb = good_args()
    kw.setdefault("groups", 4)
    kw.setdefault("backend", "reference")
    return rk.grouped_conv_bn_relu(
        gx if x is None else x, gw if w is None else w,
        gs if scale is None else scale, gb if shift is None else shift, **kw)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=torch.randn(16, 6, 6)), ValueError, r"x: expected a 4-D tensor"),
        (dict(w=torch.randn(32, 4, 3)), ValueError, r"weight: expected a 4-D tensor"),
        (dict(w=torch.randn(32, 4, 5, 5)), ValueError, r"weight: kernel size 5x5 is not supported"),
        (dict(groups=3), ValueError, r"x: channels \(16\) must be divisible by groups \(3\)"),
        (dict(w=torch.randn(30, 4, 3, 3)), ValueError, r"weight: output channels \(30\)"),
        (dict(w=torch.randn(32, 2, 3, 3)), ValueError,
         r"weight: expected shape \(32, 4, 3, 3\) \(\[C_out, C_in // groups, KH, KW\]\)"),
        (dict(scale=torch.rand(16)), ValueError, r"scale: expected shape \(32,\)"),
        (dict(shift=torch.rand(32, 1)), ValueError, r"shift: expected a 1-D tensor"),
        (dict(w=torch.randn(32, 4, 3, 3).half()), TypeError, r"weight: expected dtype torch.float32"),
        (dict(x=torch.randn(2, 16, 6, 6).double(), w=torch.randn(32, 4, 3, 3).double()),
         TypeError, r"x: expected float32, float16 or bfloat16, got torch.float64"),
        (dict(scale=torch.ones(32, dtype=torch.int32)), TypeError, r"scale: expected a floating"),
        (dict(shift=torch.ones(32, device="meta")), ValueError, r"shift: expected a tensor on cpu"),
        (dict(stride=0), ValueError, r"stride: expected positive values"),
        (dict(dilation=(1, 0)), ValueError, r"dilation: expected positive values"),
        (dict(padding=-1), ValueError, r"padding: expected non-negative values"),
        (dict(stride=(1, 2, 3)), ValueError, r"stride: expected an int or a pair of ints"),
        (dict(groups=0), ValueError, r"groups: expected a positive integer"),
        (dict(x=torch.randn(2, 16, 1, 1), padding=0), ValueError, r"x: spatial size 1x1 is too small"),
        (dict(backend="cudnn"), ValueError, r"backend: unknown backend 'cudnn'"),
        (dict(x="not a tensor"), TypeError, r"x: expected a torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        call(**kwargs)


def test_unavailable_backend_lists_the_available_ones():
    if backends.backend_status("cuda", "cpu")[0]:
        pytest.skip("cuda backend unexpectedly available for CPU tensors")
    with pytest.raises(RuntimeError, match=r"backend: 'cuda' is not available for cpu tensors.*"
                                           r"available here: \[.*'reference'.*'auto'\]"):
        call(backend="cuda")


def test_auto_resolves_to_an_available_backend(backend_device):
    _, device = backend_device
    name = backends.resolve("auto", torch.device(device))
    assert backends.backend_status(name, device)[0]
    x, w, s, b = good_args(device)
    torch.testing.assert_close(
        rk.grouped_conv_bn_relu(x, w, s, b, groups=4, backend="auto"),
        rk.grouped_conv_bn_relu(x, w, s, b, groups=4, backend="reference"))


def test_available_backends_explains_every_backend():
    report = rk.available_backends("cpu")
    assert set(report) == set(backends.BACKENDS)
    assert report["reference"] == "available"
    assert all(isinstance(v, str) and v for v in report.values())


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(backend_device, requires_grad, channels_last):
    backend, device = backend_device
    x, w, s, b = good_args(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = [x, w, s, b]
    if requires_grad:
        args = [t.requires_grad_() for t in args]
    torch.library.opcheck(
        torch.ops.resnext_kernels.grouped_conv_bn_relu.default,
        (*args, [1, 1], [1, 1], [1, 1], 4, True, backend),
    )


def test_compile_fullgraph(backend_device):
    """torch.compile traces the op through its fake implementation: no graph break."""
    backend, device = backend_device
    x, w, s, b = good_args(device)

    def block(x):
        y = rk.grouped_conv_bn_relu(x, w, s, b, groups=4, stride=2, backend=backend)
        return y * 2 + 1

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), block(x))

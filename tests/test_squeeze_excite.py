"""squeeze_excite: every backend against a float64 eager SE (+ bottleneck tail) reference."""

import pytest
import torch
import torch.nn.functional as F

import resnext_kernels as rk
from conftest import DTYPES, channels_last_if, seeded, tolerance


def make_case(N, C, H, W, R, dtype, device, channels_last, seed, conv_form=False, bias=True,
              residual=False):
    g = seeded(seed)
    u = channels_last_if(torch.randn(N, C, H, W, generator=g).to(dtype), channels_last).to(device)
    w1 = (torch.randn(R, C, generator=g) / C**0.5).to(device)
    w2 = (torch.randn(C, R, generator=g) / R**0.5).to(device)
    b1 = (torch.randn(R, generator=g) * 0.1).to(device) if bias else None
    b2 = (torch.randn(C, generator=g) * 0.1).to(device) if bias else None
    if conv_form:
        w1, w2 = w1[:, :, None, None], w2[:, :, None, None]
    res = None
    if residual:
        res = channels_last_if(torch.randn(N, C, H, W, generator=g).to(dtype), channels_last)
        res = res.to(device)
    return u, w1, b1, w2, b2, res


def reference(u, w1, b1, w2, b2, residual, relu):
    """The eager sequence mean -> fc1 -> relu -> fc2 -> sigmoid -> mul (-> add -> relu), float64."""
    d = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    u64 = d(u)
    W1, W2 = d(w1).reshape(w1.shape[0], -1), d(w2).reshape(w2.shape[0], -1)
    s = torch.sigmoid(F.linear(torch.relu(F.linear(u64.mean((2, 3)), W1, d(b1))), W2, d(b2)))
    out = u64 * s[:, :, None, None]
    if residual is not None:
        out = out + d(residual)
    return torch.relu(out) if relu else out


def check(backend, u, w1, b1, w2, b2, res, relu):
    out = rk.squeeze_excite(u, w1, b1, w2, b2, residual=res, relu=relu, backend=backend)
    assert out.shape == u.shape and out.dtype == u.dtype and out.device == u.device
    fmt = torch._prims_common.suggest_memory_format(u)
    assert out.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(out.double().cpu(), reference(u, w1, b1, w2, b2, res, relu),
                               **tolerance(u.dtype))
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("tail", ["plain", "residual_relu"])
def test_matches_eager_se(backend_device, poison_outputs, dtype, channels_last, tail):
    backend, device = backend_device
    seed = DTYPES.index(dtype) * 10 + channels_last * 2 + (tail == "plain")
    u, w1, b1, w2, b2, res = make_case(2, 40, 7, 5, 12, dtype, device, channels_last, seed,
                                       residual=tail != "plain")
    check(backend, u, w1, b1, w2, b2, res, relu=tail != "plain")


@pytest.mark.parametrize("H,W", [(1, 1), (7, 7), (3, 11)])
def test_spatial_sizes(backend_device, poison_outputs, H, W):
    backend, device = backend_device
    u, w1, b1, w2, b2, res = make_case(3, 24, H, W, 8, torch.float32, device, True, H * 100 + W)
    check(backend, u, w1, b1, w2, b2, res, relu=False)


def test_odd_widths_conv_form_no_bias(backend_device, poison_outputs):
    """C and R not multiples of 16, 1x1-conv weights, no biases, relu without residual."""
    backend, device = backend_device
    u, w1, b1, w2, b2, res = make_case(2, 37, 6, 6, 5, torch.float16, device, False, 3,
                                       conv_form=True, bias=False)
    check(backend, u, w1, b1, w2, b2, res, relu=True)


def test_excite_tiles_across_images(backend_device, poison_outputs):
    """The excite FCs tile the batch (Triton: 16 images per program, CUDA: 8): 18 images give a
    partial last image tile; R 20 partial output and reduction tiles; C 600 two 512-channel
    splits of the hidden layer's sum, the second partial."""
    backend, device = backend_device
    u, w1, b1, w2, b2, res = make_case(18, 600, 1, 3, 20, torch.float32, device, True, 41,
                                       residual=True)
    check(backend, u, w1, b1, w2, b2, res, relu=True)


def non_finite_case(dtype, device):
    """A NaN in image 0's input, a +inf in image 1's (R = 6: Triton pads the hidden units)."""
    u, w1, b1, w2, b2, res = make_case(2, 24, 3, 5, 6, dtype, device, True, 77, residual=True)
    u[0, 2, 1, 1] = float("nan")
    u[1, 5, 0, 3] = float("inf")
    return u, w1, b1, w2, b2, res


def check_non_finite(out, u, w1, b1, w2, b2, res):
    """The NaN makes image 0's pooled value NaN and, through W1, every hidden unit: torch.relu
    keeps NaN, so its whole gate and output are NaN (a ReLU that maps NaN to 0 would give
    finite gates instead). The +inf goes through the same path as in eager PyTorch (inf, or
    NaN where +inf and -inf meet), and nothing else turns NaN."""
    ref = reference(u, w1, b1, w2, b2, res, relu=True)
    assert torch.isnan(out[0]).all(), "a NaN input must make its image's gate NaN"
    torch.testing.assert_close(out.double().cpu(), ref, equal_nan=True, **tolerance(u.dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_finite_inputs_behave_as_in_pytorch(backend_device, poison_outputs, dtype):
    backend, device = backend_device
    u, w1, b1, w2, b2, res = non_finite_case(dtype, device)
    out = rk.squeeze_excite(u, w1, b1, w2, b2, residual=res, relu=True, backend=backend)
    check_non_finite(out, u, w1, b1, w2, b2, res)


@pytest.mark.parametrize("N", [0, 1])
def test_batch_zero_and_one(backend_device, N):
    backend, device = backend_device
    u, w1, b1, w2, b2, res = make_case(N, 16, 4, 4, 4, torch.bfloat16, device, True, 9 + N,
                                       residual=True)
    check(backend, u, w1, b1, w2, b2, res, relu=True)


def test_deterministic(backend_device):
    backend, device = backend_device
    u, w1, b1, w2, b2, res = make_case(2, 64, 9, 9, 16, torch.float16, device, True, 4,
                                       residual=True)
    a = rk.squeeze_excite(u, w1, b1, w2, b2, residual=res, relu=True, backend=backend)
    b = rk.squeeze_excite(u, w1, b1, w2, b2, residual=res, relu=True, backend=backend)
    assert torch.equal(a, b)


def test_gradients_match_autograd(backend_device):
    backend, device = backend_device
    case = make_case(2, 20, 5, 4, 6, torch.float32, device, True, 8, conv_form=True, residual=True)
    leaves = [t.clone().requires_grad_() for t in case]
    out = rk.squeeze_excite(*leaves[:5], residual=leaves[5], relu=True, backend=backend)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    ref_leaves = [t.detach().double().requires_grad_() for t in case]
    ref = reference(*ref_leaves, relu=True)
    exp = torch.autograd.grad(ref, ref_leaves, grad.double().cpu())  # reference() runs on the CPU
    for name, a, b in zip(["u", "w1", "b1", "w2", "b2", "residual"], got, exp):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a.double().cpu(), b.cpu(), atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(u=torch.randn(2, 8, 4)), ValueError, r"u: expected a 4-D tensor"),
        (dict(w1=torch.randn(4, 9)), ValueError, r"w1: expected shape \[R, C\] = \[4, 8\]"),
        (dict(w1=torch.randn(4, 8, 3, 3)), ValueError, r"w1: expected shape .* or \[R, C, 1, 1\]"),
        (dict(w2=torch.randn(8, 5)), ValueError, r"w2: expected shape \[C, R\] = \[8, 4\]"),
        (dict(b1=torch.randn(5)), ValueError, r"b1: expected shape \(4,\)"),
        (dict(b2=torch.randn(4)), ValueError, r"b2: expected shape \(8,\)"),
        (dict(residual=torch.randn(2, 8, 4, 5)), ValueError,
         r"residual: expected shape \(2, 8, 4, 4\) \(the shape of u\)"),
        (dict(residual=torch.randn(2, 8, 4, 4).half()), TypeError,
         r"residual: expected dtype torch.float32 \(the dtype of u\)"),
        (dict(u=torch.randn(2, 8, 4, 4).double()), TypeError, r"u: expected float32, float16"),
        (dict(w2=torch.randn(8, 4, device="meta")), ValueError, r"w2: expected a tensor on cpu"),
        (dict(w1=[[1.0]]), TypeError, r"w1: expected a torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(change, error, match):
    args = dict(u=torch.randn(2, 8, 4, 4), w1=torch.randn(4, 8), b1=torch.randn(4),
                w2=torch.randn(8, 4), b2=torch.randn(8), residual=None)
    args.update(change)
    with pytest.raises(error, match=match):
        rk.squeeze_excite(args["u"], args["w1"], args["b1"], args["w2"], args["b2"],
                          residual=args["residual"], backend="reference")


def test_layouts_mixed_and_autocast(backend_device):
    """u channels_last with an NCHW residual: the output takes u's layout. Under autocast the
    gate is still fp32 (the kernels' contract): the same output as without autocast."""
    backend, device = backend_device
    u, w1, b1, w2, b2, res = make_case(2, 16, 3, 5, 4, torch.float32, device, True, 7,
                                       residual=True)
    res = res.contiguous()
    out = rk.squeeze_excite(u, w1, b1, w2, b2, residual=res, relu=True, backend=backend)
    assert out.is_contiguous(memory_format=torch.channels_last)
    check_out = reference(u, w1, b1, w2, b2, res, True)
    torch.testing.assert_close(out.double().cpu(), check_out, **tolerance(torch.float32))
    with torch.autocast(device, dtype=torch.bfloat16):
        in_autocast = rk.squeeze_excite(u, w1, b1, w2, b2, residual=res, relu=True,
                                        backend=backend)
    torch.testing.assert_close(in_autocast, out, rtol=0, atol=0)


@pytest.mark.parametrize("with_residual", [False, True])
def test_opcheck(backend_device, with_residual):
    backend, device = backend_device
    u, w1, b1, w2, b2, res = make_case(2, 16, 3, 3, 4, torch.float32, device, True, 1,
                                       residual=with_residual)
    args = [t.requires_grad_() if t is not None else None for t in (u, w1, b1, w2, b2, res)]
    torch.library.opcheck(torch.ops.resnext_kernels.squeeze_excite.default,
                          (*args, with_residual, backend))


def test_compile_fullgraph(backend_device):
    backend, device = backend_device
    u, w1, b1, w2, b2, res = make_case(2, 16, 3, 3, 4, torch.float32, device, True, 2,
                                       residual=True)

    def tail(u, res):
        return rk.squeeze_excite(u, w1, b1, w2, b2, residual=res, relu=True, backend=backend) + 1

    compiled = torch.compile(tail, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(u, res), tail(u, res))


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("C,H", [(256, 56), (512, 28), (1024, 14), (2048, 7)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_seresnext50_shapes(backend_device, poison_outputs, C, H, dtype):
    backend, device = backend_device
    if device != "cuda":
        pytest.skip("real shapes run on the GPU only")
    R = C // 16
    u, w1, b1, w2, b2, res = make_case(4, C, H, H, R, dtype, device, True, C, conv_form=True,
                                       residual=True)
    check(backend, u, w1, b1, w2, b2, res, relu=True)

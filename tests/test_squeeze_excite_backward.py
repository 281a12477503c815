"""squeeze_excite's backward (resnext_kernels::squeeze_excite_backward): every backend against
float64 autograd of the eager SE sequence (test_squeeze_excite.reference)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import resnext_kernels as rk
from conftest import DTYPES, seeded, tolerance
from test_squeeze_excite import make_case, non_finite_case, reference

NAMES = ("u", "w1", "b1", "w2", "b2", "residual")
TAILS = {  # (residual, relu)
    "plain": (False, False),
    "residual": (True, False),
    "relu": (False, True),
    "residual_relu": (True, True),
}


def gradients(backend, case, relu, grad, wanted=NAMES):
    """The op's gradients of the inputs named in `wanted` (None for the others)."""
    leaves = [t.detach().clone().requires_grad_(name in wanted) if t is not None else None
              for t, name in zip(case, NAMES)]
    out = rk.squeeze_excite(*leaves[:5], residual=leaves[5], relu=relu, backend=backend)
    inputs = [t for t in leaves if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(out, inputs, grad))
    return [next(got) if t is not None and t.requires_grad else None for t in leaves]


def expected(case, relu, grad):
    """float64 autograd of the eager sequence, on the CPU."""
    leaves = [t.detach().double().cpu().requires_grad_() if t is not None else None
              for t in case]
    out = reference(*leaves, relu=relu)
    inputs = [t for t in leaves if t is not None]
    got = iter(torch.autograd.grad(out, inputs, grad.double().cpu()))
    return [next(got) if t is not None else None for t in leaves]


def check_gradients(got, exp, case, dtype):
    """Each gradient has its input's shape, dtype and (u's, the residual's) memory format, and
    matches float64 relative to its largest element."""
    for name, g, e, t in zip(NAMES, got, exp, case):
        if g is None:
            continue
        assert g.shape == t.shape and g.dtype == t.dtype and g.device == t.device, name
        if t.dim() == 4:
            fmt = torch._prims_common.suggest_memory_format(t)
            assert g.is_contiguous(memory_format=fmt), name
        span = e.abs().max().clamp_min(1e-30)
        torch.testing.assert_close(g.double().cpu() / span, e / span, **tolerance(dtype),
                                   msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("tail", list(TAILS))
def test_gradients_match_float64(backend_device, poison_outputs, dtype, channels_last, tail):
    backend, device = backend_device
    with_residual, relu = TAILS[tail]
    seed = 100 + DTYPES.index(dtype) * 10 + channels_last * 5 + list(TAILS).index(tail)
    case = make_case(3, 40, 7, 5, 12, dtype, device, channels_last, seed,
                     residual=with_residual)
    grad = torch.randn(case[0].shape, generator=seeded(seed + 1000)).to(dtype).to(device)
    check_gradients(gradients(backend, case, relu, grad), expected(case, relu, grad), case,
                    dtype)


def _unflat_view(t, kind, fill):
    """t's values in a view whose (H, W) plane is not flat (stride(2) != W * stride(3)): the
    left columns of a wider image, or every second row of a taller one; the rest `fill`."""
    N, C, H, W = t.shape
    if kind == "columns":
        big = torch.full((N, C, H, W + 3), fill, dtype=t.dtype, device=t.device)
        view = big[..., :W]
    else:  # channels_last, every second row
        big = torch.full((N, 2 * H, W, C), fill, dtype=t.dtype, device=t.device)
        view = big.permute(0, 3, 1, 2)[:, :, ::2]
    view.copy_(t)
    assert view.stride(2) != W * view.stride(3) and torch.equal(view, t)
    return view


@pytest.mark.parametrize("kind", ["columns", "rows"])
def test_planes_that_are_not_flat(backend_device, poison_outputs, kind):
    """u, the residual and grad_out as views whose pixel planes are not flat: the kernels'
    general (h, w) addressing, forward and backward (flat planes, NCHW and channels_last, take
    plane_offset's one-multiply path in every other test)."""
    backend, device = backend_device
    case = list(make_case(2, 40, 5, 6, 12, torch.float16, device, kind == "rows", 170,
                          residual=True))
    grad = torch.randn(case[0].shape, generator=seeded(171)).half().to(device)
    unflat = [_unflat_view(case[0], kind, float("nan")), *case[1:5],
              _unflat_view(case[5], kind, float("nan"))]
    out = rk.squeeze_excite(*unflat[:5], residual=unflat[5], relu=True, backend=backend)
    torch.testing.assert_close(out.double().cpu(), reference(*case, relu=True),
                               **tolerance(torch.float16))
    exp = expected(case, True, grad)
    # the views themselves as leaves (a clone would be dense); with the residual's gradient
    # wanted the input gradient reads g back (dense), without it grad_out (a view)
    for wanted in (NAMES, NAMES[:5]):
        leaves = [t.detach().requires_grad_(name in wanted) for t, name in zip(unflat, NAMES)]
        inputs = [t for t in leaves if t.requires_grad]
        out = rk.squeeze_excite(*leaves[:5], residual=leaves[5], relu=True, backend=backend)
        got = torch.autograd.grad(out, inputs, _unflat_view(grad, kind, float("nan")))
        for name, g, t in zip(wanted, got, inputs):
            e = exp[NAMES.index(name)]
            span = e.abs().max()
            torch.testing.assert_close(g.double().cpu() / span, e / span,
                                       **tolerance(torch.float16), msg=name)


@pytest.mark.parametrize("relu", [False, True], ids=["no-relu", "relu"])
def test_the_residual_is_saved_only_for_the_relu(relu):
    """Without the tail's ReLU the backward needs no residual values (its gradient is
    grad_out's, in the residual's memory format), so autograd does not keep it alive."""
    u, w1, b1, w2, b2, res = [t.requires_grad_() if t is not None else None for t in make_case(
        2, 24, 3, 4, 8, torch.float32, "cpu", True, 140, residual=True)]
    res = res.detach().contiguous().requires_grad_()  # NCHW, u channels_last
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = rk.squeeze_excite(u, w1, b1, w2, b2, residual=res, relu=relu,
                                backend="reference")
    assert any(t is res for t in saved) == relu
    grad = torch.randn(out.shape, generator=seeded(141)).contiguous(
        memory_format=torch.channels_last)
    got = torch.autograd.grad(out, [u, w1, res], grad)
    exp = expected((u, w1, b1, w2, b2, res), relu, grad)
    assert got[2].is_contiguous()
    for g, e in zip(got, (exp[0], exp[1], exp[5])):
        span = e.abs().max()
        torch.testing.assert_close(g.double() / span, e / span, **tolerance(torch.float32))


@pytest.mark.parametrize("wanted", [("u",), ("w1", "b2"), ("residual",), ("w2",)],
                         ids=lambda w: "+".join(w))
def test_only_the_wanted_gradients(backend_device, poison_outputs, wanted):
    backend, device = backend_device
    case = make_case(2, 24, 3, 4, 8, torch.float16, device, True, 130, residual=True)
    grad = torch.randn(case[0].shape, generator=seeded(131)).half().to(device)
    got = gradients(backend, case, True, grad, wanted)
    assert [name for name, g in zip(NAMES, got) if g is not None] == list(wanted)
    check_gradients(got, expected(case, True, grad), case, torch.float16)


def test_conv_form_no_bias_and_grad_of_another_layout(backend_device, poison_outputs):
    """1x1-conv FC weights without biases, fp32 FC weights with a bf16 u (autocast's case), a
    gradient and a residual in NCHW with u in channels_last."""
    backend, device = backend_device
    u, w1, b1, w2, b2, res = make_case(2, 20, 5, 3, 6, torch.bfloat16, device, True, 140,
                                       conv_form=True, bias=False, residual=True)
    case = (u, w1, b1, w2, b2, res.contiguous())
    grad = torch.randn(u.shape, generator=seeded(141)).bfloat16().to(device)
    got = gradients(backend, case, True, grad)
    assert got[1].shape == w1.shape and got[3].shape == w2.shape
    check_gradients(got, expected(case, True, grad), case, torch.bfloat16)


def test_excite_tiles_across_images_and_channel_splits(backend_device, poison_outputs):
    """18 images (two 16-image FC tiles) and C = 520 (the hidden layer's reduction in two
    512-channel splits): the FC gradients sum over images and channels tile by tile."""
    backend, device = backend_device
    case = make_case(18, 520, 2, 3, 20, torch.float32, device, False, 150, residual=True)
    grad = torch.randn(case[0].shape, generator=seeded(151)).to(device)
    check_gradients(gradients(backend, case, True, grad), expected(case, True, grad), case,
                    torch.float32)


def test_many_images_wide_hidden_layer_and_an_expanded_gradient(backend_device, poison_outputs):
    """70 images (five 16-image blocks of the FC gradients' reduction), R 65 (two blocks of the
    hidden layer and its store), 1x1 pixels, and the gradient of out.sum(): autograd hands
    over an expanded tensor (every stride 0)."""
    backend, device = backend_device
    case = make_case(70, 24, 1, 1, 65, torch.float32, device, True, 165, residual=True)
    grad = torch.ones((), device=device).expand(case[0].shape)
    check_gradients(gradients(backend, case, True, grad), expected(case, True, grad), case,
                    torch.float32)


def test_tail_mask_is_the_forward_outputs(backend_device, poison_outputs):
    """A residual of about -u * s in fp16: many outputs at or within rounding of 0. The
    residual's gradient (the tail's mask on a gradient of ones) is nonzero exactly where the
    op's own forward output is > 0 (or NaN), as threshold_backward on that output."""
    backend, device = backend_device
    u, w1, b1, w2, b2, _ = make_case(2, 32, 8, 8, 8, torch.float16, device, True, 166)
    gate = torch.sigmoid(torch.relu(u.float().mean((2, 3)) @ w1.float().t() + b1.float())
                         @ w2.float().t() + b2.float())
    res = (-(u.float() * gate[:, :, None, None])).half().contiguous(
        memory_format=torch.channels_last)
    case = (u, w1, b1, w2, b2, res)
    out = rk.squeeze_excite(u, w1, b1, w2, b2, residual=res, relu=True, backend=backend)
    got = gradients(backend, case, True, torch.ones_like(out), ("residual",))[5]
    assert (out == 0).sum() > 100  # the ties this is about
    assert torch.equal(got != 0, ~(out <= 0))


@pytest.mark.parametrize("N", [0, 1])
def test_batch_zero_and_one(backend_device, poison_outputs, N):
    backend, device = backend_device
    case = make_case(N, 16, 4, 4, 4, torch.float16, device, True, 160 + N, residual=True)
    grad = torch.randn(case[0].shape, generator=seeded(162)).half().to(device)
    got = gradients(backend, case, True, grad)
    if N == 0:  # sums over no image: zero FC gradients, empty tensor gradients
        assert all(g.numel() == 0 or not g.any() for g in got)
        assert got[1].shape == case[1].shape
        return
    check_gradients(got, expected(case, True, grad), case, torch.float16)


def test_non_finite_inputs_as_autograd(backend_device, poison_outputs):
    """A NaN in image 0's u and +inf in image 1's: the gradients are NaN (or inf) exactly
    where float64 autograd of the eager sequence has them, and equal elsewhere."""
    backend, device = backend_device
    case = non_finite_case(torch.float32, device)
    grad = torch.randn(case[0].shape, generator=seeded(171)).to(device)
    got = gradients(backend, case, True, grad)
    exp = expected(case, True, grad)
    for name, g, e in zip(NAMES, got, exp):
        g = g.double().cpu()
        assert torch.equal(g.isnan(), e.isnan()), name
        assert torch.equal(g.isinf(), e.isinf()), name
        finite = torch.isfinite(e)
        if finite.any():
            span = e[finite].abs().max()
            torch.testing.assert_close(g[finite] / span, e[finite] / span,
                                       **tolerance(torch.float32), msg=name)


def test_deterministic(backend_device):
    backend, device = backend_device
    case = make_case(18, 520, 3, 3, 20, torch.float16, device, True, 180, residual=True)
    grad = torch.randn(case[0].shape, generator=seeded(181)).half().to(device)
    first = gradients(backend, case, True, grad)
    second = gradients(backend, case, True, grad)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


class _FullSizeOps(TorchDispatchMode):
    """Records the aten ops that make a tensor of `numel` elements, other than allocations,
    poison_outputs' fill and the Triton interpreter's write-back of a kernel's output."""

    ALLOCATIONS = {"empty.memory_format", "empty_strided.default", "empty_like.default",
                   "new_empty.default", "detach.default", "fill_.Scalar",
                   "set_.source_Storage_storage_offset"}

    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (isinstance(out, torch.Tensor) and out.numel() == self.numel
                and func.__name__ not in self.ALLOCATIONS):
            self.ops.append(func.__name__)
        return out


def test_triton_backward_runs_in_kernels(poison_outputs):
    """The triton backend's backward makes no [N, C, H, W] tensor in aten ops (the reference's
    does): the passes over u, grad_out and the residual are its kernels."""
    if not rk.backends.backend_status("triton", "cpu")[0]:
        pytest.skip("triton does not run on the CPU here")
    case = make_case(2, 24, 3, 4, 8, torch.float32, "cpu", True, 190, residual=True)
    grad = torch.randn(case[0].shape, generator=seeded(191))
    u, w1, b1, w2, b2, res = case
    for backend, expect_aten in (("triton", False), ("reference", True)):
        impl = rk.backends.implementation("squeeze_excite_backward", backend)
        with _FullSizeOps(u.numel()) as mode:  # the backend itself: a mode sees no op's inside
            impl(grad, u, w1, b1, w2, b2, res, True, True, True, True)
        assert bool(mode.ops) == expect_aten, (backend, mode.ops)


def test_double_backward_is_refused(backend_device):
    backend, device = backend_device
    case = make_case(2, 16, 3, 3, 4, torch.float32, device, True, 200, residual=True)
    leaves = [t.clone().requires_grad_() for t in case]
    out = rk.squeeze_excite(*leaves[:5], residual=leaves[5], relu=True, backend=backend)
    with pytest.raises(RuntimeError, match="squeeze_excite: double backward"):
        torch.autograd.grad(out.sum(), leaves[0], create_graph=True)


@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False),
                                   (False, True, False), (False, False, True)])
def test_opcheck(backend_device, needs):
    backend, device = backend_device
    u, w1, b1, w2, b2, res = make_case(2, 16, 3, 3, 4, torch.float32, device, True, 210,
                                       residual=True)
    grad = torch.randn(u.shape, generator=seeded(211)).to(device)
    torch.library.opcheck(torch.ops.resnext_kernels.squeeze_excite_backward.default,
                          (grad, u, w1, b1, w2, b2, res, True, *needs, backend))


def test_bad_grad_out_names_the_argument():
    u, w1, b1, w2, b2, res = make_case(2, 8, 3, 3, 4, torch.float32, "cpu", False, 220)
    for grad in (torch.randn(2, 8, 3, 4), u.half(), torch.randn(2, 8, 3)):
        with pytest.raises(ValueError, match="grad_out: expected"):
            torch.ops.resnext_kernels.squeeze_excite_backward(
                grad, u, w1, b1, w2, b2, res, True, True, True, True, "reference")


def test_compile_fullgraph_forward_and_backward(backend_device):
    backend, device = backend_device
    case = make_case(2, 16, 3, 3, 4, torch.float32, device, True, 230, residual=True)

    def step(*leaves):
        out = rk.squeeze_excite(*leaves[:5], residual=leaves[5], relu=True, backend=backend)
        return (out * out).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    grads = []
    for fn in (compiled, step):
        leaves = [t.clone().requires_grad_() for t in case]
        fn(*leaves).backward()
        grads.append([t.grad for t in leaves])
    for name, a, b in zip(NAMES, *grads):
        torch.testing.assert_close(a, b, msg=name)

"""The fused conv's backward: the masked forward, dgrad and wgrad, on every backend.

Gradients are checked against float64 autograd of conv2d * scale + shift -> ReLU, with the ReLU
decided by the op's own output: where a pre-activation lies within rounding of 0, the op and a
float64 forward may decide differently, and either is right. That the mask is the op's output's
own is checked on its own (test_mask_is_the_outputs).
"""

import pytest
import torch
import torch.nn.functional as F

import resnext_kernels as rk
from conftest import channels_last_if, seeded, tolerance
from resnext_kernels import relu_mask
from resnext_kernels.backends.triton_plan import v3_enabled
from test_triton_v3 import device  # noqa: F401  (the fixture: cpu, and cuda where it runs)

OPS = torch.ops.resnext_kernels


def aten_on_gpu(backend, device):
    """The reference backend on a GPU is aten's conv, i.e. cuDNN, which does not promise to keep
    a non-finite value in its group: the tests of that promise are our kernels' (on the H100,
    session of 344631f, this file's NaN tests failed for reference-cuda at cpg 4 and 6 in half
    precision and passed for the Triton and CUDA kernels)."""
    return backend == "reference" and device == "cuda"


def skip_if_aten_on_gpu(backend, device):
    if aten_on_gpu(backend, device):
        pytest.skip("aten's (cuDNN's) grouped conv need not keep a NaN in its group")


BACKWARD_ENVS = ("RESNEXT_KERNELS_CUDA_BACKWARD", "RESNEXT_KERNELS_TRITON_BACKWARD")


@pytest.fixture(autouse=True)
def _kernel_backends_run_their_backward_kernels(monkeypatch):
    """backends "cuda" and "triton" run their own dgrad and wgrad kernels in these tests, not
    the aten backward they default to while the kernels are slower (backends/backward_choice.py;
    test_backward_choice_aten_and_dgrad checks the default)."""
    for env in BACKWARD_ENVS:
        monkeypatch.setenv(env, "kernels")


def make_case(cpg, groups, dtype, device, channels_last, seed, N=2, H=7, W=9, cpg_out=None):
    """x, weight, scale, shift: random, never zero; scaled so outputs and gradients are O(1)."""
    cpg_out = cpg_out or cpg
    g = seeded(seed)
    C_in, C_out = cpg * groups, cpg_out * groups
    x = channels_last_if(torch.randn(N, C_in, H, W, generator=g).to(dtype), channels_last)
    w = (torch.randn(C_out, cpg, 3, 3, generator=g) / (3.0 * cpg**0.5)).to(dtype)
    scale = torch.rand(C_out, generator=g) + 0.5
    shift = torch.randn(C_out, generator=g) * 0.5
    return [t.to(device) for t in (x, w, scale, shift)]


def reference_grads(x, w, scale, shift, y, grad_y, stride, padding, dilation, groups, relu):
    """float64 autograd of the fused computation, the ReLU decided where y (the op's output)
    is > 0 or NaN (as torch's ReLU backward decides from its result)."""
    leaves = [t.detach().double().cpu().requires_grad_() for t in (x, w, scale, shift)]
    xr, wr, sr, br = leaves
    pre = F.conv2d(xr, wr, None, stride, padding, dilation, groups) * sr.view(-1, 1, 1) \
        + br.view(-1, 1, 1)
    if relu:  # a select, as torch's ReLU backward: a NaN gradient where it blocks stays out
        pre = torch.where(torch.logical_not(y.detach().cpu() <= 0), pre, 0.0)
    return torch.autograd.grad(pre, leaves, grad_y.double().cpu())


def check_grads(grads, ref, dtype, names=("x", "weight", "scale", "shift")):
    for got, exp, name in zip(grads, ref, names):
        # wgrad sums over every pixel: scale the tolerance by the gradient's size
        span = max(1.0, exp.abs().max().item())
        tol = tolerance(dtype)
        torch.testing.assert_close(got.double().cpu() / span, exp / span, **tol,
                                   msg=lambda m: f"grad {name}: {m}")


def run_case(backend, device, cpg, groups, dtype, channels_last, seed, *, stride=1, dilation=1,
             relu=True, N=2, H=7, W=9, cpg_out=None):
    x, w, scale, shift = make_case(cpg, groups, dtype, device, channels_last, seed, N, H, W,
                                   cpg_out)
    leaves = [t.clone().requires_grad_() for t in (x, w, scale, shift)]
    y = rk.grouped_conv_bn_relu(*leaves, stride=stride, padding=dilation, dilation=dilation,
                                groups=groups, relu=relu, backend=backend)
    grad_y = torch.randn(y.shape, generator=seeded(seed + 1)).to(dtype).to(device)
    grads = torch.autograd.grad(y, leaves, grad_y)
    for got, leaf in zip(grads, leaves):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype and got.device == leaf.device
    assert grads[0].is_contiguous(memory_format=torch._prims_common.suggest_memory_format(x))
    ref = reference_grads(x, w, scale, shift, y, grad_y, stride, dilation, dilation,
                          groups, relu)
    check_grads(grads, ref, dtype)
    return grads


# every channels-per-group class of the forward (the backward tiles follow v2's), 3 an odd one;
# 6 and 24: groups that straddle the 16- and 32-channel tiles
CPG_CLASSES = [1, 3, 4, 6, 8, 16, 24, 32, 64]


@pytest.mark.parametrize("cpg", CPG_CLASSES)
def test_gradients_every_cpg_class(backend_device, cpg):
    backend, device = backend_device
    groups = max(2, 32 // cpg)
    small = dict(N=1, H=5, W=6) if cpg >= 32 else {}  # (the interpreter's time)
    run_case(backend, device, cpg, groups, torch.float32, cpg % 2 == 0, 1000 + cpg,
             stride=1 + cpg % 2, **small)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_half_precision(backend_device, dtype, channels_last, stride):
    backend, device = backend_device
    run_case(backend, device, 8, 4, dtype, channels_last, 1100 + stride, stride=stride, H=6,
             W=7)


@pytest.mark.parametrize("cpg", [4, 32])
def test_gradients_v3_forward(backend_device, cpg):
    """64-channel channels_last fp16: the Triton v3 forward stores the mask."""
    backend, device = backend_device
    run_case(backend, device, cpg, 64 // cpg, torch.float16, True, 1200 + cpg, N=1, H=5, W=6)


def test_gradients_dilation_odd_sizes_no_relu(backend_device):
    backend, device = backend_device
    run_case(backend, device, 3, 4, torch.float32, False, 1300, stride=2, dilation=2, H=9, W=8)
    run_case(backend, device, 4, 4, torch.float32, True, 1301, relu=False, H=5, W=5)


def test_gradients_different_cpg_in_out(backend_device):
    backend, device = backend_device
    run_case(backend, device, 4, 4, torch.float32, True, 1400, cpg_out=8, stride=2)


# dgrad's stride classes (Triton: a program per class of input pixels, the taps that never
# reach a class skipped): (kernel, stride, padding, dilation, H, W), each with a class that
# some taps miss, odd sizes whose last class row or column falls outside the input, and a 1x1
# kernel at stride 2 whose odd rows and columns receive no tap at all (their grad_x is 0)
STRIDE_CLASS_GEOMETRIES = [
    ((3, 3), (2, 2), (1, 1), (1, 1), 9, 8),
    ((3, 3), (2, 1), (1, 1), (1, 1), 7, 6),
    ((3, 3), (3, 3), (0, 1), (1, 1), 10, 7),
    ((1, 1), (2, 2), (0, 0), (1, 1), 7, 6),
    ((5, 3), (2, 3), (2, 1), (1, 2), 9, 11),
    ((3, 3), (3, 3), (1, 1), (1, 1), 5, 2),  # (W < stride: class column 2 lies outside)
]


@pytest.mark.parametrize("kernel,stride,padding,dilation,H,W", STRIDE_CLASS_GEOMETRIES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_dgrad_every_stride_class(backend_device, poison_outputs, monkeypatch, kernel, stride,
                                  padding, dilation, H, W, channels_last):
    """grad_x of the dgrad op, with and without the ReLU mask, against float64 autograd of the
    conv with the scale folded in, into a NaN-poisoned output: every input pixel written,
    including those no tap reaches. channels_last cases take the 64-bit offsets path."""
    backend, device = backend_device
    if channels_last:
        from resnext_kernels.backends.triton import grouped_conv_backward as conv_bw

        monkeypatch.setattr(conv_bw, "INDEX_32_LIMIT", 0)
    cpg, groups = 4, 2
    g = seeded(1500 + 7 * H + W)
    x = channels_last_if(torch.randn(2, cpg * groups, H, W, generator=g), channels_last)
    w = torch.randn(cpg * groups, cpg, *kernel, generator=g) / (3.0 * cpg**0.5)
    scale = torch.rand(cpg * groups, generator=g) + 0.5
    y_shape = F.conv2d(x, w, None, stride, padding, dilation, groups).shape
    grad_y = channels_last_if(torch.randn(y_shape, generator=g), channels_last)
    keep = torch.rand(y_shape, generator=g) > 0.3  # the ReLU passed these
    mask = relu_mask.pack(keep.to(device))
    for m, gp in ((mask, grad_y * keep), (mask[:0], grad_y)):
        poison_outputs(x.numel() * 4, device)
        got = OPS.grouped_conv_dgrad(grad_y.to(device), m, w.to(device), scale.to(device),
                                     list(x.shape), list(stride), list(padding), list(dilation),
                                     groups, channels_last, backend)
        xr = x.double().requires_grad_()
        (exp,) = torch.autograd.grad(
            F.conv2d(xr, w.double() * scale.double().view(-1, 1, 1, 1), None, stride, padding,
                     dilation, groups), xr, gp.double())
        assert got.is_contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        torch.testing.assert_close(got.double().cpu(), exp, **tolerance(torch.float32))
        if kernel == (1, 1):  # the classes no tap reaches: zeros, written
            assert (got[:, :, 1::2].cpu() == 0).all() and (got[:, :, :, 1::2].cpu() == 0).all()


@pytest.mark.parametrize("stride,classes", [((1, 1), 1), ((2, 2), 4), ((2, 1), 2)])
def test_dgrad_grid_has_a_program_block_per_stride_class(monkeypatch, stride, classes):
    """Triton dgrad's launcher: stride_h * stride_w programs per block of BLOCK_M pixels of a
    class (each class cdiv(H, stride_h) x cdiv(W, stride_w) pixels per image), as the kernel
    decodes its program id and as the GPU-free profile models the launch."""
    from resnext_kernels.backends.triton import grouped_conv_backward as conv_bw

    grids = []

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *args, **meta: None

    monkeypatch.setattr(conv_bw, "_dgrad_kernel", Recorder())
    N, C, H, W = 2, 8, 9, 7
    w = torch.randn(C, 4, 3, 3)
    H_out, W_out = (H - 1) // stride[0] + 1, (W - 1) // stride[1] + 1
    grad_y = torch.randn(N, C, H_out, W_out)
    conv_bw.grouped_conv_dgrad(grad_y, torch.empty(0, C, dtype=torch.uint8), w, torch.ones(C),
                               [N, C, H, W], stride, [1, 1], [1, 1], 2, False)
    block_m = conv_bw._block_m(grad_y)
    class_pixels = N * -(-H // stride[0]) * -(-W // stride[1])
    assert grids == [(classes * -(-class_pixels // block_m), 1)]


def test_batch_one_and_zero(backend_device):
    backend, device = backend_device
    run_case(backend, device, 4, 4, torch.float32, True, 1500, N=1)
    x, w, scale, shift = make_case(4, 4, torch.float32, device, True, 1501, N=0)
    leaves = [t.clone().requires_grad_() for t in (x, w, scale, shift)]
    y = rk.grouped_conv_bn_relu(*leaves, groups=4, backend=backend)
    grads = torch.autograd.grad(y, leaves, torch.ones_like(y))
    assert grads[0].shape == x.shape
    for g in grads[1:]:
        assert torch.equal(g, torch.zeros_like(g))


# ------------------------------------------------------------------------ the mask
@pytest.mark.parametrize("dtype,channels_last,C,groups", [(torch.float32, False, 16, 4),
                                                          (torch.float16, True, 64, 4),
                                                          (torch.float16, True, 64, 16),
                                                          (torch.bfloat16, True, 24, 4)])
def test_mask_is_the_outputs(backend_device, dtype, channels_last, C, groups):
    """The masked forward's y is the plain forward's, and its mask is y's (relu_mask.py),
    including the bits of a NaN output and a partial last byte (M = 2*5*7 = 70). Triton: v2
    (16, 24 channels), v3 (64), and v3's exact rewrite of a NaN tile at cpg 4, whose mask bytes
    it rewrites too (the packing zeros made NaN in the other groups' columns first)."""
    backend, device = backend_device
    x, w, scale, shift = make_case(C // groups, groups, dtype, device, channels_last, 1600, N=2,
                                   H=5, W=7)
    x[1, 0, 2, 3] = float("nan")
    y, mask = OPS.grouped_conv_bn_relu_masked(x, w, scale, shift, [1, 1], [1, 1], [1, 1], groups,
                                              True, backend)
    plain = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=groups, backend=backend)
    if not aten_on_gpu(backend, device):
        assert not y[1, C // groups:].isnan().any(), "the NaN stays in its group"
    assert torch.equal(y.isnan(), plain.isnan())
    torch.testing.assert_close(y, plain, equal_nan=True, atol=0, rtol=0)
    assert mask.dtype == torch.uint8 and mask.shape == (9, C) and mask.is_contiguous()
    assert torch.equal(mask.cpu(), relu_mask.from_output(y).cpu())
    assert torch.equal(mask[-1].cpu() >> 6, torch.zeros(C, dtype=torch.uint8)), \
        "bits past the last pixel are 0"
    assert relu_mask.unpack(mask.cpu(), y.shape)[1, 0, 2, 3], "a NaN output passes the gradient"


def test_mask_pack_unpack_round_trip():
    passes = torch.rand(3, 5, 4, 3, generator=seeded(1700)) > 0.5
    mask = relu_mask.pack(passes)
    assert mask.shape == relu_mask.mask_shape(3 * 4 * 3, 5)
    assert torch.equal(relu_mask.unpack(mask, passes.shape), passes)
    assert relu_mask.unpack(mask, passes.shape).is_contiguous()
    nhwc = relu_mask.unpack(mask, passes.shape, torch.channels_last)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and nhwc.dtype == torch.bool
    assert torch.equal(nhwc, passes)
    assert set(nhwc.view(torch.uint8).unique().tolist()) <= {0, 1}, "valid bools only"
    # bit j of byte [r, c] is pixel 8r + j (pixels in n, h, w order)
    flat = passes.permute(0, 2, 3, 1).reshape(-1, 5)
    assert int(mask[1, 2]) == sum(int(flat[8 + j, 2]) << j for j in range(8))


def test_gradients_survive_inplace_changes_of_the_output(backend_device):
    """The mask is saved, not read from y: torchvision's in-place ReLU (or any in-place change
    of y) after the op leaves the gradients unchanged."""
    backend, device = backend_device
    x, w, scale, shift = make_case(4, 4, torch.float32, device, False, 1800)
    grads = []
    for change in (None, torch.relu_, lambda t: t.mul_(0).sub_(1)):
        leaves = [t.clone().requires_grad_() for t in (x, w, scale, shift)]
        y = rk.grouped_conv_bn_relu(*leaves, groups=4, backend=backend)
        y2 = y.clone() if change is None else y
        if change is not None:
            with torch.no_grad():
                change(y2)
        grads.append(torch.autograd.grad(y, leaves, torch.ones_like(y)))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------ non-finite values
def test_nan_gradient_stays_in_its_group(backend_device):
    """A NaN in grad_y reaches grad_x only in the channels of its group (nn.Conv2d's backward);
    at cpg 4 the Triton dgrad packs 4 groups per tile and recomputes such a tile exactly."""
    backend, device = backend_device
    skip_if_aten_on_gpu(backend, device)
    x, w, scale, shift = make_case(4, 8, torch.float16, device, True, 1900)
    x.requires_grad_()
    y = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=8, relu=False, backend=backend)
    grad_y = torch.randn(y.shape, generator=seeded(1901)).to(y.dtype).to(device)
    grad_y[0, 5, 3, 4] = float("nan")  # group 1 (channels 4-7)
    grad_y[1, 30, 0, 0] = float("inf")  # group 7
    (gx,) = torch.autograd.grad(y, x, grad_y)
    gx = gx.cpu()
    assert gx[0, 4:8, 2:5, 3:6].isnan().all()
    assert not gx[1, 28:32].isnan().any() and gx[1, 28:32, 0:2, 0:2].isinf().any()
    others = torch.ones(8, dtype=torch.bool)
    others[[1, 7]] = False
    assert torch.isfinite(gx.reshape(2, 8, 4, 7, 9)[:, others]).all()
    assert torch.isfinite(gx[1, 4:8]).all() and torch.isfinite(gx[0, 28:32]).all()


@pytest.mark.parametrize("channels_last", [False, True])
def test_nan_gradient_stays_in_its_group_at_stride_2(backend_device, channels_last):
    """As above at stride 2, where Triton's dgrad programs take one stride class each and its
    exact recompute of a NaN tile must skip the same taps: grad_x equals float64 autograd's,
    NaN for NaN."""
    backend, device = backend_device
    skip_if_aten_on_gpu(backend, device)
    x, w, scale, _ = make_case(4, 8, torch.float16, device, channels_last, 1950, H=8, W=7)
    y_shape = (2, 32, 4, 4)
    grad_y = channels_last_if(torch.randn(y_shape, generator=seeded(1951)), channels_last)
    grad_y[0, 5, 1, 2] = float("nan")  # group 1
    grad_y[1, 30, 0, 3] = float("inf")  # group 7
    got = OPS.grouped_conv_dgrad(grad_y.half().to(device), torch.empty(0, 32, dtype=torch.uint8,
                                                                       device=device),
                                 w, scale, list(x.shape), [2, 2], [1, 1], [1, 1], 8,
                                 channels_last, backend).cpu()
    xr = x.cpu().double().requires_grad_()
    wr = w.cpu().double() * scale.cpu().double().view(-1, 1, 1, 1)
    (exp,) = torch.autograd.grad(F.conv2d(xr, wr, None, 2, 1, 1, 8), xr,
                                 grad_y.half().double())
    assert exp.isnan().any() and exp.isinf().any()
    torch.testing.assert_close(got.double(), exp, **tolerance(torch.float16), equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nan_input_leaves_the_other_groups_gradients_alone(backend_device, dtype):
    """A NaN input reaches only its group's outputs (Triton v2 packs 4 groups of 4 channels in
    a tile and sums a NaN tile again exactly), so the other groups' ReLU mask, and their
    gradients, are what they would be without it. Two exceptions to the first part, whose
    gradients are checked all the same: CUDA's WMMA kernel on packed groups (here fp16 NCHW)
    carries the NaN into other groups' y, and so may aten's conv on a GPU (cuDNN); the mask is
    y's own, so there the gradient passes at those NaN outputs, as torch's ReLU backward would."""
    backend, device = backend_device
    x, w, scale, shift = make_case(4, 4, dtype, device, False, 1950)
    x[0, 1, 2, 2] = float("nan")  # group 0
    leaves = [t.clone().requires_grad_() for t in (x, w, scale, shift)]
    y = rk.grouped_conv_bn_relu(*leaves, groups=4, backend=backend)
    assert y[0, :4].isnan().any() and not y[1].isnan().any()
    wmma_packed = backend == "cuda" and dtype == torch.float16
    if not wmma_packed and not aten_on_gpu(backend, device):
        assert not y[0, 4:].isnan().any(), "the NaN stays in its group"
    grad_y = torch.randn(y.shape, generator=seeded(1951)).to(dtype).to(device)
    grads = torch.autograd.grad(y, leaves, grad_y)
    ref = reference_grads(x, w, scale, shift, y, grad_y, 1, 1, 1, 4, True)
    clean = [(grads[0][:, 4:], ref[0][:, 4:]), (grads[1][4:], ref[1][4:]),
             (grads[2][4:], ref[2][4:]), (grads[3][4:], ref[3][4:])]
    check_grads([g for g, _ in clean], [r for _, r in clean], dtype)


def test_nan_gradient_where_the_relu_blocked_stays_out(backend_device):
    """torch's ReLU backward selects (where(y <= 0, 0, grad)): a NaN gradient at a blocked
    output does not reach any gradient."""
    backend, device = backend_device
    x, w, scale, shift = make_case(4, 4, torch.float32, device, True, 1960)
    leaves = [t.clone().requires_grad_() for t in (x, w, scale, shift)]
    y = rk.grouped_conv_bn_relu(*leaves, groups=4, backend=backend)
    grad_y = torch.randn(y.shape, generator=seeded(1961)).to(device)
    grad_y[y.detach() <= 0] = float("nan")
    for g in torch.autograd.grad(y, leaves, grad_y):
        assert torch.isfinite(g).all()


def test_gradient_strides_are_the_fakes(backend_device):
    """grad_w has the weight's strides (the fake's empty_like), also for a weight that is
    neither contiguous nor channels_last: a compiled graph asserts the fake's strides."""
    backend, device = backend_device
    x, w, scale, _, mask, grad_y = _backward_args(device)
    w_t = w.transpose(2, 3)
    for weight in (w, w_t, w.contiguous(memory_format=torch.channels_last)):
        gw, _, _ = OPS.grouped_conv_wgrad(grad_y, mask, x, weight, scale, [1, 1], [1, 1],
                                          [1, 1], 4, backend)
        assert gw.stride() == torch.empty_like(weight).stride()
    for cl in (False, True):
        gx = OPS.grouped_conv_dgrad(grad_y, mask, w, scale, list(x.shape), [1, 1], [1, 1],
                                    [1, 1], 4, cl, backend)
        fmt = torch.channels_last if cl else torch.contiguous_format
        assert gx.is_contiguous(memory_format=fmt)


# ------------------------------------------------------------------------ determinism, aten
@pytest.mark.parametrize("groups", [4, 8])  # 32 channels; 64 (the cuda kernels' v3 wgrad)
def test_wgrad_is_deterministic_over_splits(backend_device, monkeypatch, groups):
    """wgrad adds fixed splits of the pixels in a fixed order: bitwise the same each run; and
    (Triton) the same sums, to rounding, whatever the number of splits."""
    backend, device = backend_device
    x, w, scale, shift = make_case(8, groups, torch.float16, device, True, 2000, N=2, H=8, W=8)
    y, mask = OPS.grouped_conv_bn_relu_masked(x, w, scale, shift, [1, 1], [1, 1], [1, 1],
                                              groups, True, backend)
    grad_y = torch.randn(y.shape, generator=seeded(2001)).to(y.dtype).to(device)
    grad_y = grad_y.contiguous(memory_format=torch.channels_last)

    def wgrad():
        return OPS.grouped_conv_wgrad(grad_y, mask, x, w, scale, [1, 1], [1, 1], [1, 1], groups,
                                      backend)

    first, second = wgrad(), wgrad()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    if backend == "triton":
        from resnext_kernels.backends.triton import grouped_conv_backward as bw
        assert bw.wgrad_splits(2 * 64, 18, 32)[1] > 1, "the default splits the pixels"
        monkeypatch.setattr(bw, "WGRAD_TARGET_PROGRAMS", 1)  # one split
        for a, b in zip(first, wgrad()):
            torch.testing.assert_close(a.float(), b.float(), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("cpg, groups, stride, channels_last", [
    (1, 16, 1, True), (3, 6, 2, False), (4, 8, 1, False), (8, 4, 2, True), (24, 2, 1, True),
    (24, 4, 1, True), (48, 3, 2, True),  # tiles whose channel span takes 2 and 3 K chunks
    (64, 1, 2, True)])  # (NCHW with tiles of 32 and more keeps a program per tap)
def test_wgrad_tap_rows_equal_a_program_per_tap(device, monkeypatch, cpg, groups, stride,
                                                channels_last):
    """Triton wgrad v2 (a program per kernel row, its taps side by side) and v1 (a program per
    tap) sum the same products: the same gradients, to the dot's rounding, in every tile."""
    from resnext_kernels.backends.triton import grouped_conv_backward as bw
    small = dict(N=1, H=5, W=6) if cpg >= 24 else dict(N=2, H=7, W=5)
    x, w, scale, shift = make_case(cpg, groups, torch.float32, device, channels_last, 2100 + cpg,
                                   **small)
    y, mask = OPS.grouped_conv_bn_relu_masked(x, w, scale, shift, [stride] * 2, [1, 1], [1, 1],
                                              groups, True, "triton")
    grad_y = torch.randn(y.shape, generator=seeded(2101)).to(device)

    def wgrad():
        return OPS.grouped_conv_wgrad(grad_y, mask, x, w, scale, [stride] * 2, [1, 1], [1, 1],
                                      groups, "triton")

    assert bw.wgrad_tap_slots(3) == 4
    assert bw.wgrad_tap_slots(3, 32, channels_last=False) == 1
    rows = wgrad()
    monkeypatch.setattr(bw, "WGRAD_TAP_ROWS", False)
    assert bw.wgrad_tap_slots(3) == 1
    for a, b in zip(rows, wgrad()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("C_out, block_n, cpg_out, cpg_in, expected", [
    (128, 16, 4, 4, 16),  # tiles of 4 whole groups: channels 0, 16, 32, ...
    (48, 16, 3, 3, 1),  # 0, 15, 30: a tile starts inside a group's span
    (96, 32, 24, 24, 8),  # 0, 24, 48, 96
    (64, 16, 4, 2, 8),  # cpg_in < cpg_out: 0, 8, 16, 24
    (16, 16, 16, 16, 16),  # one tile, first channel 0
    (2048, 64, 64, 64, 16)])  # capped at 16
def test_first_channel_alignment_divides_every_tile(C_out, block_n, cpg_out, cpg_in, expected):
    """The alignment wgrad promises the compiler (tl.multiple_of) divides every tile's first
    input channel: a promise that does not hold would load from the wrong addresses on a GPU,
    and the interpreter ignores it, so it is checked here."""
    from resnext_kernels.backends.triton import grouped_conv_backward as bw
    align = bw.first_channel_alignment(C_out, block_n, cpg_out, cpg_in)
    assert align == expected
    firsts = [(t * block_n // cpg_out) * cpg_in for t in range(-(-C_out // block_n))]
    assert all(f % align == 0 for f in firsts)
    assert align == 16 or any(f % (2 * align) for f in firsts), "the largest such power of two"


class _OpsCalled:
    """The names of the ops the dispatcher runs inside the block, nested calls included
    ("aten::convolution_backward", "resnext_kernels::grouped_conv_dgrad_cuda"): the profiler
    records every dispatcher call. (A TorchDispatchMode, used here before, sees only the
    outermost op: not what a custom op's implementation calls, so it could not tell aten's
    backward from the kernels' and its GPU test of the cuda default failed on the H100.)"""

    def __enter__(self):
        self._profile = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], acc_events=True)
        self._profile.__enter__()
        return self

    def __exit__(self, *exc):
        self._profile.__exit__(*exc)
        self.names = sorted({event.name for event in self._profile.events()})


def _ours(names, prefix):
    """The names of this package's ops that start with `prefix` (not the autograd nodes named
    after them)."""
    return [n for n in names if n.startswith("resnext_kernels::" + prefix)]


def test_ops_called_sees_the_calls_inside_a_custom_op():
    """The recorder's own check: the reference backend's backward runs aten's convolution
    backward inside resnext_kernels::grouped_conv_dgrad; the tests below rely on seeing it."""
    x, w, scale, shift = make_case(4, 4, torch.float32, "cpu", False, 2050, N=1, H=5, W=6)
    leaves = [t.clone().requires_grad_() for t in (x, w, scale, shift)]
    y = rk.grouped_conv_bn_relu(*leaves, groups=4, backend="reference")
    with _OpsCalled() as seen:
        torch.autograd.grad(y, leaves, torch.ones_like(y))
    assert "aten::convolution_backward" in seen.names, seen.names
    assert _ours(seen.names, "grouped_conv_dgrad") and _ours(seen.names, "grouped_conv_wgrad")


def test_backward_runs_no_aten_convolution(backend_device):
    backend, device = backend_device
    if backend == "reference":
        pytest.skip("the reference backend is aten")
    for dtype, cl, C in ((torch.float32, False, 16), (torch.float16, True, 64)):
        x, w, scale, shift = make_case(C // 4, 4, dtype, device, cl, 2100, N=1, H=5, W=6)
        leaves = [t.clone().requires_grad_() for t in (x, w, scale, shift)]
        y = rk.grouped_conv_bn_relu(*leaves, groups=4, backend=backend)
        with _OpsCalled() as seen:
            torch.autograd.grad(y, leaves, torch.ones_like(y))
        convs = [n for n in seen.names if n.startswith("aten::") and "convolution" in n]
        assert not convs, convs
        suffix = "_cuda" if backend == "cuda" else ""
        assert _ours(seen.names, "grouped_conv_dgrad" + suffix), seen.names
        assert _ours(seen.names, "grouped_conv_wgrad" + suffix), seen.names


@pytest.mark.parametrize("env", BACKWARD_ENVS)
def test_backward_kernels_are_opt_in(monkeypatch, env):
    from resnext_kernels.backends import cuda as cuda_backend
    from resnext_kernels.backends.triton import backward as triton_backward
    choice = {"RESNEXT_KERNELS_CUDA_BACKWARD": cuda_backend.cuda_backward_kernels,
              "RESNEXT_KERNELS_TRITON_BACKWARD": triton_backward.triton_backward_kernels}[env]
    monkeypatch.delenv(env)
    assert choice() == "aten"
    monkeypatch.setenv(env, "")
    assert choice() == "aten"
    monkeypatch.setenv(env, "kernels")
    assert choice() == "kernels"
    monkeypatch.setenv(env, "dgrad")
    assert choice() == "dgrad"
    monkeypatch.setenv(env, "fast")
    with pytest.raises(ValueError, match=f"{env}: expected one of"):
        choice()


@pytest.mark.parametrize("choice", ["aten", "dgrad"])
def test_backward_choice_aten_and_dgrad(backend_device, monkeypatch, choice):
    """Unset ("aten"), the cuda and triton backends' backward is aten's (cuDNN on a GPU), from
    the mask their forward saved; "dgrad": their dgrad kernel, aten's wgrad. The kernels that
    must not run do not."""
    backend, device = backend_device
    if backend == "reference":
        pytest.skip("the reference backend is aten")
    for env in BACKWARD_ENVS:
        monkeypatch.delenv(env)
        if choice != "aten":
            monkeypatch.setenv(env, choice)
    if backend == "triton":  # (Triton kernels are no dispatcher ops: make them fail if called)
        from resnext_kernels.backends.triton import grouped_conv_backward as triton_kernels

        def not_this(*args, **kwargs):
            raise AssertionError("a Triton backward kernel ran that should not have")
        monkeypatch.setattr(triton_kernels, "grouped_conv_wgrad", not_this)
        if choice == "aten":
            monkeypatch.setattr(triton_kernels, "grouped_conv_dgrad", not_this)
    x, w, scale, shift = make_case(4, 4, torch.float16, device, True, 2200, N=1, H=5, W=6)
    leaves = [t.clone().requires_grad_() for t in (x, w, scale, shift)]
    y = rk.grouped_conv_bn_relu(*leaves, groups=4, backend=backend)
    with _OpsCalled() as seen:
        grads = torch.autograd.grad(y, leaves, torch.ones_like(y))
    assert "aten::convolution_backward" in seen.names, seen.names
    if backend == "cuda":
        assert bool(_ours(seen.names, "grouped_conv_dgrad_cuda")) == (choice == "dgrad"), \
            seen.names
    assert not _ours(seen.names, "grouped_conv_wgrad_cuda"), seen.names
    ref = reference_grads(x, w, scale, shift, y, torch.ones_like(y), 1, 1, 1, 4, True)
    check_grads(grads, ref, torch.float16)


def test_forward_with_grad_saves_the_mask_not_recomputes(backend_device):
    """A call whose backward will run goes through the masked op; the backward calls no forward."""
    backend, device = backend_device
    x, w, scale, shift = make_case(4, 4, torch.float32, device, False, 2200)
    x.requires_grad_()
    with _OpsCalled() as seen:
        y = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend=backend)
    assert _ours(seen.names, "grouped_conv_bn_relu_masked"), seen.names
    with _OpsCalled() as seen:
        torch.autograd.grad(y, x, torch.ones_like(y))
    assert not _ours(seen.names, "grouped_conv_bn_relu"), seen.names


def test_plain_op_backward_uses_the_backward_ops(backend_device):
    """torch.ops.resnext_kernels.grouped_conv_bn_relu called directly with grad: its backward
    makes the mask again (one more forward) and runs the same ops."""
    backend, device = backend_device
    x, w, scale, shift = make_case(4, 4, torch.float32, device, True, 2300)
    leaves = [t.clone().requires_grad_() for t in (x, w, scale, shift)]
    y = OPS.grouped_conv_bn_relu(*leaves, [2, 2], [1, 1], [1, 1], 4, True, backend)
    grad_y = torch.randn(y.shape, generator=seeded(2301)).to(device)
    grads = torch.autograd.grad(y, leaves, grad_y)
    check_grads(grads, reference_grads(x, w, scale, shift, y, grad_y, 2, 1, 1, 4, True),
                torch.float32)


def test_double_backward_is_refused(backend_device):
    backend, device = backend_device
    x, w, scale, shift = make_case(4, 4, torch.float32, device, False, 2400)
    x.requires_grad_()
    y = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend=backend)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(y.sum(), x, create_graph=True)


# ------------------------------------------------------------------------ the contract
def _backward_args(device, dtype=torch.float32):
    x, w, scale, shift = make_case(4, 4, dtype, device, True, 2500, N=2, H=5, W=6)
    y, mask = OPS.grouped_conv_bn_relu_masked(x, w, scale, shift, [1, 1], [1, 1], [1, 1], 4,
                                              True, "reference")
    grad_y = torch.randn(y.shape, generator=seeded(2501)).to(dtype).to(device)
    return x, w, scale, shift, mask, grad_y


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_masked(backend_device, requires_grad):
    backend, device = backend_device
    x, w, scale, shift, _, _ = _backward_args(device)
    args = [x, w, scale, shift]
    if requires_grad:
        args = [t.requires_grad_() for t in args]
    torch.library.opcheck(OPS.grouped_conv_bn_relu_masked.default,
                          (*args, [2, 2], [1, 1], [1, 1], 4, True, backend))


def test_opcheck_dgrad_and_wgrad(backend_device):
    backend, device = backend_device
    x, w, scale, _, mask, grad_y = _backward_args(device)
    for m in (mask, mask[:0]):
        torch.library.opcheck(OPS.grouped_conv_dgrad.default,
                              (grad_y, m, w, scale, list(x.shape), [1, 1], [1, 1], [1, 1], 4,
                               True, backend))
        torch.library.opcheck(OPS.grouped_conv_wgrad.default,
                              (grad_y, m, x, w, scale, [1, 1], [1, 1], [1, 1], 4, backend))


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(mask=a["mask"][:, :3]), "relu_mask: expected a contiguous"),
    (lambda a: a.update(mask=a["mask"].float()), "relu_mask: expected a 2-D uint8"),
    (lambda a: a.update(grad_y=a["grad_y"].half()), "grad_y: expected torch.float32"),
    (lambda a: a.update(scale=a["scale"][:8]), "weight, scale: expected 16 output channels"),
])
def test_backward_ops_name_bad_arguments(change, match):
    x, w, scale, _, mask, grad_y = _backward_args("cpu")
    a = dict(grad_y=grad_y, mask=mask, scale=scale)
    change(a)
    with pytest.raises(ValueError, match=match):
        OPS.grouped_conv_wgrad(a["grad_y"], a["mask"], x, w, a["scale"], [1, 1], [1, 1], [1, 1],
                               4, "reference")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_backward_ops_check_the_inputs_geometry(backend):
    """An x or input_size that does not convolve to grad_y is refused, not computed from."""
    x, w, scale, _, mask, grad_y = _backward_args("cpu")
    args = ([1, 1], [1, 1], [1, 1], 4)
    with pytest.raises(ValueError, match=r"x: \[3, 16, 5, 6\] convolves to \[3"):
        OPS.grouped_conv_wgrad(grad_y, mask, torch.cat([x, x[:1]]), w, scale, *args, backend)
    with pytest.raises(ValueError, match="x: expected 16 channels"):
        OPS.grouped_conv_wgrad(grad_y, mask, x[:, :12], w, scale, *args, backend)
    with pytest.raises(ValueError, match=r"input_size: \[2, 16, 7, 6\] convolves to"):
        OPS.grouped_conv_dgrad(grad_y, mask, w, scale, [2, 16, 7, 6], *args, True, backend)
    with pytest.raises(ValueError, match="stride: expected 2 values"):
        OPS.grouped_conv_dgrad(grad_y, mask, w, scale, list(x.shape), [1], [1, 1], [1, 1], 4,
                               True, backend)


def test_compile_forward_and_backward(backend_device):
    """torch.compile(fullgraph=True) traces forward and backward: the masked op and the backward
    ops through their fakes, no graph break; the gradients match eager's."""
    backend, device = backend_device
    x, w, scale, shift = make_case(4, 4, torch.float32, device, True, 2600)

    def step(x, w, scale, shift):
        y = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, stride=2, backend=backend)
        return (y * y).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (step, compiled):
        leaves = [t.clone().requires_grad_() for t in (x, w, scale, shift)]
        loss = fn(*leaves)
        results.append((loss, *torch.autograd.grad(loss, leaves)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_v3_eligibility_is_exercised():
    """The v3 tests above take v3's path only while it is enabled."""
    assert v3_enabled()

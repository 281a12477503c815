"""Grouped conv + train-mode BatchNorm (+ ReLU): the op against float64 autograd of
conv2d -> F.batch_norm(training=True) -> ReLU on every backend, its running-statistics update,
its contract, and swapped models training as the originals do (issue 16)."""

import concurrent.futures
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resnext_kernels as rk
from conftest import channels_last_if, seeded, tolerance
from resnext_kernels import models
from resnext_kernels.replace import is_fused

OPS = torch.ops.resnext_kernels
BACKWARD_ENVS = ("RESNEXT_KERNELS_CUDA_BACKWARD", "RESNEXT_KERNELS_TRITON_BACKWARD")


@pytest.fixture(params=["grad_z_written", "grad_z_prologue"])
def backward_kernels(monkeypatch, request, backend_device):
    """The cuda and triton backends run their own dgrad and wgrad kernels (not aten's); the
    triton backend's take train-mode BN's grad_z written, or form it in their prologue (a
    choice the other backends do not have: their prologue variant is skipped)."""
    if request.param == "grad_z_prologue" and backend_device[0] != "triton":
        pytest.skip("RESNEXT_KERNELS_TRITON_BN_GRAD_Z is the triton backend's")
    for env in BACKWARD_ENVS:
        monkeypatch.setenv(env, "kernels")
    monkeypatch.setenv("RESNEXT_KERNELS_TRITON_BN_GRAD_Z", request.param.split("_")[-1])


def make_case(cpg, groups, dtype, device, channels_last, seed, N=2, H=7, W=9):
    """x, weight, gamma, beta, running_mean, running_var: random, never zero. x has a
    per-channel offset, so that the batch mean matters."""
    g = seeded(seed)
    C = cpg * groups
    x = torch.randn(N, C, H, W, generator=g) + torch.randn(1, C, 1, 1, generator=g)
    x = channels_last_if(x.to(dtype), channels_last)
    w = (torch.randn(C, cpg, 3, 3, generator=g) / (3.0 * cpg**0.5)).to(dtype)
    gamma = torch.rand(C, generator=g) + 0.5
    beta = torch.randn(C, generator=g) * 0.5
    running_mean = torch.randn(C, generator=g) * 0.2
    running_var = torch.rand(C, generator=g) + 0.5
    return [t.to(device) for t in (x, w, gamma, beta, running_mean, running_var)]


def reference(x, w, gamma, beta, running_mean, running_var, stride, groups, relu, passes=None,
              momentum=0.1, eps=1e-5):
    """float64 conv2d -> F.batch_norm(training=True) -> ReLU on the CPU: (leaves, y, running
    mean, running var). `passes`: where the ReLU passes (our y's decision: a pre-activation
    within rounding of 0 may go either way, and either is right), else relu()."""
    leaves = [t.detach().double().cpu().requires_grad_() for t in (x, w, gamma, beta)]
    rm, rv = running_mean.double().cpu(), running_var.double().cpu()
    z = F.conv2d(leaves[0], leaves[1], None, stride, 1, 1, groups)
    y = F.batch_norm(z, rm, rv, leaves[2], leaves[3], True, momentum, eps)
    if relu:
        y = F.relu(y) if passes is None else torch.where(passes, y, 0.0)
    return leaves, y, rm, rv


def check(got, exp, dtype, name):
    span = max(1.0, exp.abs().max().item())
    torch.testing.assert_close(got.double().cpu() / span, exp.double() / span,
                               **tolerance(dtype), msg=lambda m: f"{name}: {m}")


def check_but_ties(got, exp, dtype, name, ties=0.03, own_scale=False):
    """check(), except that up to `ties` of the elements may lie outside the tolerance: in a
    whole model's backward a ReLU (ours or the original's, downstream) whose input lies within
    rounding of 0 passes the gradient in one model and not in the other, which moves the
    gradients it feeds by O(the gradient) (seen: 6 of 288 elements of one fp32 weight gradient,
    channels_last). A wrong backward moves them all. own_scale: relative to the gradient's
    largest element (else to max(1, that)), for a gradient that is small but not noise."""
    span = (exp.abs().max().item() or 1.0) if own_scale else max(1.0, exp.abs().max().item())
    tol = tolerance(dtype)
    g, e = got.double().cpu() / span, exp.double() / span
    outside = ((g - e).abs() > tol["atol"] + tol["rtol"] * e.abs()) | (g.isnan() != e.isnan())
    assert outside.float().mean().item() <= ties, \
        f"{name}: {outside.sum().item()} of {outside.numel()} elements outside {tol}"


def run_case(backend, device, cpg, groups, dtype, channels_last, seed, *, stride=1, relu=True,
             N=2, H=7, W=9):
    x, w, gamma, beta, rm, rv = make_case(cpg, groups, dtype, device, channels_last, seed, N, H,
                                          W)
    rm_before, rv_before = rm.clone(), rv.clone()
    ours = [t.clone().requires_grad_() for t in (x, w, gamma, beta)]
    y = rk.grouped_conv_bn_relu_train(*ours, rm, rv, stride=stride, groups=groups, relu=relu,
                                      backend=backend)
    assert y.dtype == dtype and y.device == x.device
    assert y.is_contiguous(memory_format=torch._prims_common.suggest_memory_format(x))
    passes = torch.logical_not(y.detach().cpu() <= 0)
    leaves, y_ref, rm_ref, rv_ref = reference(x, w, gamma, beta, rm_before, rv_before, stride,
                                              groups, relu, passes)
    check(y, y_ref, dtype, "y")
    check(rm, rm_ref, dtype, "running_mean")
    check(rv, rv_ref, dtype, "running_var")
    grad_y = torch.randn(y.shape, generator=seeded(seed + 1)).to(dtype).to(device)
    grads = torch.autograd.grad(y, ours, grad_y)
    ref = torch.autograd.grad(y_ref, leaves, grad_y.double().cpu())
    for got, exp, leaf, name in zip(grads, ref, ours, ("x", "weight", "gamma", "beta")):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype, name
        check(got, exp, dtype, "grad " + name)
    assert grads[0].is_contiguous(memory_format=torch._prims_common.suggest_memory_format(x))


# ------------------------------------------------------------------------ the op
@pytest.mark.parametrize("cpg", [1, 3, 4, 8, 16, 32, 64])
def test_every_cpg_class(backend_device, backward_kernels, cpg):
    backend, device = backend_device
    groups = max(2, 32 // cpg)
    small = dict(N=2, H=4, W=5) if cpg >= 32 else {}  # (the interpreter's time)
    run_case(backend, device, cpg, groups, torch.float32, cpg % 2 == 0, 3000 + cpg,
             stride=1 + cpg % 2, **small)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_half_precision(backend_device, backward_kernels, dtype, channels_last, stride):
    backend, device = backend_device
    run_case(backend, device, 8, 4, dtype, channels_last, 3100 + stride, stride=stride, H=6, W=7)


def test_no_relu_odd_sizes_and_aten_backward(backend_device):
    """No ReLU, odd sizes; the cuda and triton backends' default (aten) dgrad and wgrad."""
    backend, device = backend_device
    run_case(backend, device, 4, 4, torch.float32, False, 3200, relu=False, N=3, H=5, W=11)


def test_batch_one_and_zero(backend_device, backward_kernels):
    backend, device = backend_device
    run_case(backend, device, 4, 4, torch.float32, True, 3300, N=1, H=3, W=3)
    x, w, gamma, beta, rm, rv = make_case(4, 4, torch.float32, device, True, 3301, N=0)
    rm0, rv0 = rm.clone(), rv.clone()
    leaves = [t.clone().requires_grad_() for t in (x, w, gamma, beta)]
    y = rk.grouped_conv_bn_relu_train(*leaves, rm, rv, groups=4, backend=backend)
    assert y.shape == (0, 16, 7, 9)
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)  # aten leaves them alone too
    grads = torch.autograd.grad(y.sum(), leaves)
    assert grads[0].shape == x.shape and not grads[1].abs().sum() and not grads[2].abs().sum()


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_non_finite_input_as_batch_norm(backend_device, value):
    """A non-finite input: the running statistics and y have F.batch_norm's non-finite pattern
    (an inf: its channels' mean inf and variance NaN, their y NaN) and its finite values
    elsewhere. (The triton backend's kernels: test_triton_train_kernels.py, every path.)"""
    backend, device = backend_device
    if backend == "triton":
        pytest.skip("test_triton_train_kernels.py's test_non_finite_input_as_batch_norm")
    x, w, gamma, beta, _, _ = make_case(4, 16, torch.float16, device, True, 4500, N=2, H=6,
                                        W=8)
    with torch.no_grad():
        x[1, 5, 3, 4] = value  # group 1's channels
        w[4:8] = w[4:8].abs()  # (an inf then makes +inf outputs only: those channels' mean +inf)
    C = w.shape[0]
    rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
    y = rk.grouped_conv_bn_relu_train(x, w, gamma, beta, rm, rv, groups=16, backend=backend)
    z = F.conv2d(x.double().cpu(), w.double().cpu(), None, 1, 1, 1, 16)
    rm_ref, rv_ref = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    y_ref = torch.relu(F.batch_norm(z, rm_ref, rv_ref, gamma.double().cpu(),
                                    beta.double().cpu(), True, 0.1, 1e-5))
    for got, exp, name in ((rm, rm_ref, "running_mean"), (rv, rv_ref, "running_var"),
                           (y, y_ref, "y")):
        got = got.double().cpu()
        assert torch.equal(got.isnan(), exp.isnan()), name
        assert torch.equal(got.isinf(), exp.isinf()), name
        finite = torch.isfinite(exp)
        assert not finite.all() and finite.any()
        check(got[finite], exp[finite], torch.float16, name)


def test_one_value_per_channel_is_refused_as_batchnorm_does():
    x, w, gamma, beta, rm, rv = make_case(4, 4, torch.float32, "cpu", False, 3400, N=1, H=1,
                                          W=1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm2d(16).train()(torch.randn(1, 16, 1, 1))  # torch's own rule
    with pytest.raises(ValueError, match="x: expected more than 1 value per channel when"):
        rk.grouped_conv_bn_relu_train(x, w, gamma, beta, groups=4)


def test_affine_none_and_momentum_tensor():
    """gamma/beta None are 1 and 0; a 0-d momentum tensor (the cumulative average's)."""
    x, w, _, _, rm, rv = make_case(4, 4, torch.float32, "cpu", True, 3500)
    rm_ref, rv_ref = rm.double().clone(), rv.double().clone()
    y = rk.grouped_conv_bn_relu_train(x, w, None, None, rm, rv, momentum=torch.tensor(0.25),
                                      groups=4, backend="reference")
    z = F.conv2d(x.double(), w.double(), None, 1, 1, 1, 4)
    y_ref = F.relu(F.batch_norm(z, rm_ref, rv_ref, None, None, True, 0.25, 1e-5))
    check(y, y_ref, torch.float32, "y")
    check(rm, rm_ref, torch.float32, "running_mean")
    check(rv, rv_ref, torch.float32, "running_var")


@pytest.mark.parametrize("bad,match", [
    (dict(gamma=torch.ones(8)), r"gamma: expected shape \(16,\)"),
    (dict(beta=torch.ones(16, dtype=torch.int64)), "beta: expected a floating-point"),
    (dict(gamma=torch.ones(16, 1)), "gamma: expected a 1-D tensor"),
    (dict(eps=-1.0), "eps: expected a non-negative float"),
])
def test_bad_arguments_are_named(bad, match):
    x, w, gamma, beta, _, _ = make_case(4, 4, torch.float32, "cpu", False, 3600)
    args = dict(gamma=gamma, beta=beta, eps=1e-5)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        OPS.grouped_conv_bn_relu_train(x, w, args["gamma"], args["beta"], args["eps"], [1, 1],
                                       [1, 1], [1, 1], 4, True, "reference")


def test_backward_ops_name_bad_arguments():
    x, w, gamma, beta, _, _ = make_case(4, 4, torch.float32, "cpu", False, 3650)
    y, mask, z, mean, var = OPS.grouped_conv_bn_relu_train(x, w, gamma, beta, 1e-5, [1, 1],
                                                           [1, 1], [1, 1], 4, True, "reference")
    with pytest.raises(ValueError, match="grad_y: expected z's shape"):
        OPS.batchnorm_train_backward_sums(y[:1], mask, z, mean, var, gamma, 1e-5, "reference")
    with pytest.raises(ValueError, match="relu_mask: expected a contiguous"):
        OPS.batchnorm_train_backward_sums(y, mask[:1], z, mean, var, gamma, 1e-5, "reference")
    with pytest.raises(ValueError, match=r"batch_var: expected a floating-point \[16\]"):
        OPS.batchnorm_train_backward_sums(y, mask, z, mean, var[:4], gamma, 1e-5, "reference")
    _, _, coef = OPS.batchnorm_train_backward_sums(y, mask, z, mean, var, gamma, 1e-5,
                                                   "reference")
    conv_args = ([1, 1], [1, 1], [1, 1], 4, True, True, "reference")
    for bad, match in (
            (dict(coef=coef[:3]), r"grad_z_coefficients: expected a floating-point \[4, 16\]"),
            (dict(coef=coef.double()), "grad_z_coefficients: expected a contiguous float32"),
            (dict(weight=w[:8]), "weight: expected 16 output channels"),
            (dict(x=x[:, :8]), "x: expected 16 channels"),
            (dict(grad_y=y.double()), "grad_y: expected z's shape")):
        args = dict(grad_y=y, coef=coef, x=x, weight=w)
        args.update(bad)
        with pytest.raises(ValueError, match=match):
            OPS.grouped_conv_bn_train_backward(args["grad_y"], mask, z, args["coef"], args["x"],
                                               args["weight"], *conv_args)


@pytest.mark.parametrize("relu", [False, True])
def test_opcheck(backend_device, relu):
    backend, device = backend_device
    x, w, gamma, beta, _, _ = make_case(4, 4, torch.float32, device, True, 3700, N=2, H=5, W=6)
    args = [t.requires_grad_() for t in (x, w, gamma, beta)]
    torch.library.opcheck(OPS.grouped_conv_bn_relu_train.default,
                          (*args, 1e-5, [2, 2], [1, 1], [1, 1], 4, relu, backend))
    y, mask, z, mean, var = OPS.grouped_conv_bn_relu_train(
        *[t.detach() for t in args], 1e-5, [1, 1], [1, 1], [1, 1], 4, relu, backend)
    grad_y = torch.randn_like(y)
    torch.library.opcheck(OPS.batchnorm_train_backward_sums.default,
                          (grad_y, mask, z, mean, var, gamma.detach(), 1e-5, backend))
    _, _, coef = OPS.batchnorm_train_backward_sums(grad_y, mask, z, mean, var, gamma.detach(),
                                                   1e-5, backend)
    for need_x, need_weight in ((True, True), (False, True), (True, False)):
        torch.library.opcheck(OPS.grouped_conv_bn_train_backward.default,
                              (grad_y, mask, z, coef, x.detach(), w.detach(), [1, 1], [1, 1],
                               [1, 1], 4, need_x, need_weight, backend))


def test_backward_runs_no_aten_convolution(backend_device, backward_kernels):
    """With its own backward kernels asked for, a kernel backend's train-mode backward runs
    them on grad_z, and no aten convolution anywhere."""
    from test_grouped_conv_backward import _OpsCalled, _ours

    backend, device = backend_device
    if backend == "reference":
        pytest.skip("the reference backend is aten")
    x, w, gamma, beta, rm, rv = make_case(16, 4, torch.float16, device, True, 3800, N=1, H=5,
                                          W=6)
    leaves = [t.clone().requires_grad_() for t in (x, w, gamma, beta)]
    with _OpsCalled() as seen_forward:
        y = rk.grouped_conv_bn_relu_train(*leaves, rm, rv, groups=4, backend=backend)
    with _OpsCalled() as seen:
        torch.autograd.grad(y, leaves, torch.ones_like(y))
    for names in (seen_forward.names, seen.names):
        convs = [n for n in names if n.startswith("aten::") and "convolution" in n]
        assert not convs, convs
    assert _ours(seen.names, "batchnorm_train_backward_sums"), seen.names
    assert _ours(seen.names, "grouped_conv_bn_train_backward"), seen.names
    if backend == "cuda":  # the BN around the conv in CUDA kernels, not torch ops
        assert _ours(seen_forward.names, "batchnorm_train_forward_cuda"), seen_forward.names
        assert _ours(seen.names, "batchnorm_train_backward_sums_cuda"), seen.names
        assert _ours(seen.names, "batchnorm_train_grad_z_cuda"), seen.names
        for names in (seen_forward.names, seen.names):
            torch_ops = [n for n in names if n in ("aten::var_mean", "aten::where",
                                                   "aten::rsqrt", "aten::sum")]
            assert not torch_ops, torch_ops


def test_double_backward_is_refused():
    x, w, gamma, beta, _, _ = make_case(4, 4, torch.float32, "cpu", False, 3900)
    x.requires_grad_()
    y = rk.grouped_conv_bn_relu_train(x, w, gamma, beta, groups=4, backend="reference")
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(y.sum(), x, create_graph=True)


# ------------------------------------------------------------------------ swapped models
def small_residuals(model, gamma=0.2):
    """bn3's weights (the residual branch's last BN) at `gamma`: with the learning rate below,
    20 steps stay out of the chaotic regime (with the default init and lr 1e-3 a 1e-5 relative
    change of the parameters grows to 1e-2 within 20 steps even between two runs of the
    original, and no comparison could tell a wrong gradient from rounding; here to 3e-5),
    while gradients still reach every fused op (zero_init_residual alone would make them 0)."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.endswith("bn3"):
                m.weight.fill_(gamma)
    return model


def narrow_resnext():
    """Our ResNeXt, narrow and shallow (cpg 4 in layer1)."""
    return small_residuals(models.ResNet(models.Bottleneck, [1, 1, 1, 1], groups=8,
                                         width_per_group=2, num_classes=10))


def narrow_seresnext():
    return small_residuals(models.SEResNeXt([1, 1, 1, 1], groups=8, width_per_group=2,
                                            num_classes=10))


def train_steps(model, x, target, autocast_dtype, steps=20, lr=3e-5):
    """(the losses, the first step's gradients by parameter name)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for step in range(steps):
        opt.zero_grad()
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        if step == 0:
            first_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), first_grads


def check_trains_as_the_original(build, backend, device, dtype, channels_last, steps=20,
                                 lr=3e-5, batch=16, size=32, own_scale=()):
    """own_scale: names (substrings) of the parameters whose first-step gradients are checked
    relative to their own scale (check_but_ties)."""
    torch.manual_seed(0)
    model = build().train().to(device)
    fused = rk.replace_modules(copy.deepcopy(model), backend=backend, verbose=False,
                               fuse_training=True)
    g = seeded(4000)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    target = torch.randint(0, 10, (batch,), generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        for m in (model, fused):
            m.to(memory_format=torch.channels_last)
    autocast_dtype = None if dtype == torch.float32 else dtype
    (losses, grads), (fused_losses, fused_grads) = [
        train_steps(m, x, target, autocast_dtype, steps, lr) for m in (model, fused)]
    # the first step's gradients (the same parameters: rounding apart, the same function),
    # the stem's aside: its max pool's backward goes to each window's argmax, which a
    # rounding-level difference of its input can move
    for k, g in grads.items():
        if not k.startswith(("conv1.", "bn1.")):
            check_but_ties(fused_grads[k], g, dtype, "the first step's grad of " + k,
                           own_scale=any(name in k for name in own_scale))
    assert fused_grads["layer1.0.conv2.weight"].abs().max() > 1e-3  # through the fused op
    # 20 steps: the losses, parameters and statistics
    check(fused_losses, losses, dtype, "losses")
    assert losses[-1] < 0.9 * losses[0]  # it did learn
    for (k, a), (_, b) in zip(model.state_dict().items(), fused.state_dict().items()):
        check(b, a, dtype, k)
    return model, fused


@pytest.mark.parametrize("build", [narrow_resnext, narrow_seresnext])
@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False),
                                                 (torch.float32, True),
                                                 (torch.bfloat16, False),
                                                 (torch.bfloat16, True)])
def test_training_matches_the_original_reference(build, dtype, channels_last):
    check_trains_as_the_original(build, "reference", "cpu", dtype, channels_last)


@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.bfloat16, True)])
def test_training_matches_the_original(backend_device, dtype, channels_last):
    """Every backend (triton under the interpreter: about a minute a case)."""
    backend, device = backend_device
    if backend == "reference" and device == "cpu":
        pytest.skip("test_training_matches_the_original_reference")
    if device == "cpu" and dtype != torch.bfloat16:
        pytest.skip("one interpreter case: bf16 autocast, channels_last")
    in_fresh_thread(check_trains_as_the_original, narrow_resnext, backend, device, dtype,
                    channels_last)


class TinySENet(nn.Module):
    """A 4x4 stride-4 stem and two SE bottlenecks (timm's layout;
    the second strided, with a downsample; 2 and 4 channels per group, SE over 32 and 64
    channels): the SE tail's op and its backward in a model small enough for 20 steps under
    the Triton interpreter (the SE-ResNeXt's 256-2048 channels take about a minute a step
    there)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 4, stride=4, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        downsample = nn.Sequential(nn.Conv2d(32, 64, 1, stride=2, bias=False),
                                   nn.BatchNorm2d(64))
        self.layer1 = nn.Sequential(
            models.seresnext.SEBottleneck(32, 8, groups=4, base_width=16),
            models.seresnext.SEBottleneck(32, 16, stride=2, downsample=downsample, groups=4,
                                          base_width=16))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.bfloat16, True)])
def test_training_with_the_se_tail_matches_the_original(backend_device, dtype, channels_last):
    """Every backend, the SE tail fused too (test_training_runs_the_se_tail_op_as_asked);
    under the interpreter about 30 s a case."""
    backend, device = backend_device
    build = lambda: small_residuals(TinySENet())  # noqa: E731
    # 8 images of 16x16 (4x4 and 2x2 in the blocks), lr 1e-2: it learns in the 20 steps.
    # In fp32 the SE FCs' first gradients (about 1e-3, behind the small residual branch) are
    # checked at their own scale; under bf16 autocast the original's excite runs in bf16 and
    # the op's in fp32, which differ at that scale
    own_scale = (".se.",) if dtype == torch.float32 else ()
    in_fresh_thread(check_trains_as_the_original, build, backend, device, dtype, channels_last,
                    20, 1e-2, 8, 16, own_scale)


def in_fresh_thread(fn, *args):
    """fn(*args) on a new thread, whose Python frame stack starts empty. CPython 3.11 keeps
    frames in 16 KB chunks; at pytest's call depth the Triton interpreter's hot calls crossed a
    chunk boundary on every call, an mmap + munmap pair each time (strace), which tripled this
    test's time (64 s as a script, 180 s under pytest)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()


def test_train_mode_runs_the_fused_op_and_options():
    """Train mode runs the train-mode op; fuse_training=False, a SyncBatchNorm, a conv bias
    and BN without running statistics keep the original forward; a BN in eval mode inside a
    training block (frozen BN) runs the eval-mode op."""
    from test_grouped_conv_backward import _OpsCalled, _ours

    x = torch.randn(2, 3, 32, 32)

    def ran(model):
        with _OpsCalled() as seen:
            model(x)
        return sorted({n.split(".")[0] for n in _ours(seen.names, "grouped_conv_bn_relu")})

    model = rk.replace_modules(narrow_resnext().train(), verbose=False, fuse_training=True)
    assert ran(model) == ["resnext_kernels::grouped_conv_bn_relu_train"]
    assert ran(copy.deepcopy(model)) == ["resnext_kernels::grouped_conv_bn_relu_train"]
    model.layer1[0].bn2.eval()  # frozen: its running statistics, folded (with grad: masked)
    assert "resnext_kernels::grouped_conv_bn_relu_masked" in ran(model)
    assert ran(model.eval()) == ["resnext_kernels::grouped_conv_bn_relu_masked"]
    assert ran(rk.replace_modules(narrow_resnext().train(), verbose=False)) == []  # default
    assert ran(rk.replace_modules(narrow_resnext().train(), verbose=False,
                                  fuse_training=False)) == []
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(
        rk.replace_modules(narrow_resnext(), verbose=False, fuse_training=True)).train()
    assert is_fused(synced.layer1[0]) and isinstance(synced.layer1[0].bn2, nn.SyncBatchNorm)
    with torch.no_grad():  # (SyncBatchNorm trains only in a process group: look at the choice)
        from resnext_kernels.modules import _fused_mode
        assert _fused_mode(synced.layer1[0], x, synced.layer1[0].conv2,
                           synced.layer1[0].bn2) is None
    model = rk.replace_modules(narrow_resnext().train(), verbose=False, fuse_training=True)
    model.layer1[0].conv2.bias = nn.Parameter(torch.zeros(model.layer1[0].conv2.out_channels))
    model.layer2[0].bn2 = nn.BatchNorm2d(model.layer2[0].bn2.num_features,
                                         track_running_stats=False)
    assert ran(model) == ["resnext_kernels::grouped_conv_bn_relu_train"]  # layers 3 and 4
    with _OpsCalled() as seen:
        for block in (model.layer1[0], model.layer2[0]):
            block(torch.randn(2, block.conv1.in_channels, 8, 8))
    assert not _ours(seen.names, "grouped_conv_bn_relu"), seen.names


def test_training_runs_the_se_tail_op_as_asked():
    """fuse_training=True: the SE tail runs the squeeze_excite op in training mode and its
    backward op; not by default, and not with stochastic depth (drop_path), where the block
    runs its original tail."""
    from test_grouped_conv_backward import _OpsCalled, _ours

    x = torch.randn(2, 3, 32, 32, generator=seeded(4250))

    def ran(model):
        with _OpsCalled() as seen:
            model(x).square().mean().backward()
        return sorted({n.split(".")[0] for n in _ours(seen.names, "squeeze_excite")})

    fused = rk.replace_modules(narrow_seresnext().train(), backend="reference", verbose=False,
                               fuse_training=True)
    assert ran(fused) == ["resnext_kernels::squeeze_excite",
                          "resnext_kernels::squeeze_excite_backward"]
    assert ran(rk.replace_modules(narrow_seresnext().train(), backend="reference",
                                  verbose=False)) == []
    for block in fused.modules():
        if hasattr(block, "drop_path"):
            block.drop_path = nn.Dropout(0.1)  # stands in for timm's DropPath
    assert ran(fused) == []


def test_frozen_bn_in_a_training_block_by_default():
    """Default fuse_training=False: a BN in eval mode inside a block in training mode runs the
    folded op; the gradients are the original's."""
    from test_grouped_conv_backward import _OpsCalled, _ours

    torch.manual_seed(3)
    model = narrow_resnext().train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    fused = rk.replace_modules(copy.deepcopy(model), backend="reference", verbose=False)
    x = torch.randn(2, 3, 32, 32, generator=seeded(4200))
    with _OpsCalled() as seen:
        fused(x).square().mean().backward()
    assert _ours(seen.names, "grouped_conv_bn_relu_masked"), seen.names
    model(x).square().mean().backward()
    for (k, a), (_, b) in zip(model.named_parameters(), fused.named_parameters()):
        check(b.grad, a.grad, torch.float32, k)


def test_track_running_stats_turned_off_after_construction():
    """Buffers kept, tracking off: BN normalizes by the batch and neither updates nor counts
    its running statistics; so does the fused op."""
    torch.manual_seed(4)
    model = narrow_resnext().train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
    fused = rk.replace_modules(copy.deepcopy(model), backend="reference", verbose=False,
                               fuse_training=True)
    x = torch.randn(4, 3, 32, 32, generator=seeded(4300))
    with torch.no_grad():
        check(fused(x), model(x), torch.float32, "logits")
    for (k, a), (_, b) in zip(model.state_dict().items(), fused.state_dict().items()):
        assert torch.equal(a, b), k


def test_momentum_none_and_num_batches_tracked():
    """momentum=None (the cumulative average) and num_batches_tracked as nn.BatchNorm2d."""
    torch.manual_seed(1)
    model = narrow_resnext().train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    fused = rk.replace_modules(copy.deepcopy(model), backend="reference", verbose=False,
                               fuse_training=True)
    for seed in (1, 2, 3):
        x = torch.randn(4, 3, 32, 32, generator=seeded(seed))
        with torch.no_grad():
            model(x), fused(x)
    for (k, a), (_, b) in zip(model.state_dict().items(), fused.state_dict().items()):
        if k.endswith("num_batches_tracked"):
            assert a.item() == b.item() == 3, k
        else:
            check(b, a, torch.float32, k)


def test_compile_fullgraph_training_step():
    """torch.compile(fullgraph=True) of a swapped model's training forward and backward: the
    train-mode op and its backward ops through their fakes, the running statistics' update in
    the graph; the same loss, gradients and statistics as eager."""
    torch.manual_seed(2)
    model = rk.replace_modules(narrow_resnext().train(), backend="reference", verbose=False,
                               fuse_training=True)
    twin = copy.deepcopy(model)
    x = torch.randn(4, 3, 32, 32, generator=seeded(4100))
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    for m in (model, compiled):
        m(x).square().mean().backward()
    for (k, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=k)
    for (k, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=k)

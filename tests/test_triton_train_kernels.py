"""The Triton backend's train-mode BatchNorm kernels (backends/triton/channel_stats.py,
batchnorm_train.py, the conv epilogue's statistics, grad_z written or formed in the dgrad/wgrad
prologue): the partials are the statistics of what the conv stored, every row of them written,
whatever the tile; the fixed-order reduction against float64 at one, two and three levels;
non-finite values as F.batch_norm treats them; eps; the backward's select keeps a blocked NaN
gradient out; grad_z is written unless the prologue forms it (RESNEXT_KERNELS_TRITON_BN_GRAD_Z);
the NCHW pixel-run hints promise only what holds; a z with gaps. The op-level comparisons with
float64 autograd are in test_grouped_conv_bn_relu_train.py.

On the CPU these run through the Triton interpreter; on a GPU the compiled kernels (gpu-marked)."""

import importlib

import pytest
import torch
import torch.nn.functional as F

import resnext_kernels as rk
from conftest import channels_last_if, seeded, tolerance
from resnext_kernels import relu_mask
from resnext_kernels.backends import batchnorm_train as torch_ops_version
from resnext_kernels.backends import reference
from resnext_kernels.backends.triton_plan import triton_conv_path
from test_triton_v3 import device  # noqa: F401  (the fixture: cpu, and cuda where it runs)

launcher = importlib.import_module("resnext_kernels.backends.triton.grouped_conv_bn_relu")
channel_stats = importlib.import_module("resnext_kernels.backends.triton.channel_stats")
bn_kernels = importlib.import_module("resnext_kernels.backends.triton.batchnorm_train")
train = importlib.import_module("resnext_kernels.backends.triton.train")

ROWS = channel_stats.STATS_ROWS


def conv_case(cpg, groups, dtype, device, channels_last, seed, N=2, H=7, W=9, offset=3.0):
    g = seeded(seed)
    C = cpg * groups
    x = torch.randn(N, C, H, W, generator=g) + offset * torch.randn(1, C, 1, 1, generator=g)
    x = channels_last_if(x.to(dtype), channels_last).to(device)
    w = (torch.randn(C, cpg, 3, 3, generator=g) / (3.0 * cpg**0.5)).to(dtype).to(device)
    return x, w


def chunk_statistics(z):
    """float64 (mean, M2) of every 32 pixels of z, per channel: [n_rows, C] each."""
    flat = z.detach().double().cpu().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    means, m2s = [], []
    for r0 in range(0, flat.shape[0], ROWS):
        chunk = flat[r0:r0 + ROWS]
        mean = chunk.mean(0)
        means.append(mean)
        m2s.append(((chunk - mean) ** 2).sum(0))
    return torch.stack(means), torch.stack(m2s)


# (cpg, groups, channels_last, stride): v3's packed (4), 16-wide and two-group (32) classes;
# v2 in NCHW with channels that fill no tile evenly (3 x 12) and a packed class (8)
CASES = [(4, 16, True, 1), (16, 4, True, 2), (32, 2, True, 1), (3, 12, False, 2),
         (8, 6, False, 1)]


@pytest.mark.parametrize("cpg,groups,channels_last,stride", CASES)
@pytest.mark.parametrize("dtype,offset", [(torch.float32, 3.0), (torch.float16, 3.0),
                                          (torch.float32, 300.0), (torch.float16, 300.0)],
                         ids=["fp32", "fp16", "fp32-mean300", "fp16-mean300"])
def test_partials_are_the_chunk_statistics_of_z(device, poison_outputs, cpg, groups,
                                                channels_last, stride, dtype, offset):
    """Every row of the partials holds the mean and M2 of the values the conv stored (its
    rounded output), and z is the unit-scale conv, bit for bit. With a per-channel input
    offset of 300 (and no padding, whose zeros would spread z) a chunk's mean is far from 0
    relative to its spread: a sum of squares minus n mean^2 would lose M2 there."""
    if dtype == torch.float32 and channels_last:
        pytest.skip("v3 takes fp16/bf16; fp32 channels_last runs v2 as NCHW does")
    x, w = conv_case(cpg, groups, dtype, device, channels_last, 4000 + cpg, offset=offset)
    stride2 = (stride, stride)
    pad = 0 if offset > 100 else 1
    expected_path = "v3" if channels_last else "v2"
    assert triton_conv_path(x, w, stride2, (pad, pad), (1, 1), groups) == expected_path
    z, partials = launcher.grouped_conv_with_stats(x, w, stride2, (pad, pad), (1, 1), groups)
    C = w.shape[0]
    ones = torch.ones(C, device=device)
    plain = rk.grouped_conv_bn_relu(x, w, ones, torch.zeros_like(ones), stride=stride,
                                    padding=pad, groups=groups, relu=False, backend="triton")
    assert torch.equal(z, plain)
    M = relu_mask.pixels(z)
    assert partials.shape == (2, -(-M // ROWS), C) and M % ROWS  # a last chunk that is partial
    assert not z.isnan().any()
    mean, m2 = chunk_statistics(z)
    assert not partials.isnan().any()  # every row written (poisoned with NaN before)
    torch.testing.assert_close(partials[0].double().cpu(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(partials[1].double().cpu(), m2, rtol=1e-4, atol=1e-4)
    if offset > 100:  # (the case is what the docstring says it is)
        assert (mean.abs() > 30 * (m2 / ROWS).sqrt()).float().mean() > 0.5


@pytest.mark.parametrize("channels_last", [True, False])
def test_partials_do_not_depend_on_the_tile(monkeypatch, channels_last):
    """Which pixels a partial covers does not depend on the tile: the interpreter's tile of 32
    pixels against one of 64 (v3 and v2) give the same partials. (On a GPU tl.sum's order also
    follows the compiled layout, so the statistics' conv runs one fixed configuration.)"""
    if not rk.backends.backend_status("triton", "cpu")[0]:
        pytest.skip("the Triton interpreter is not usable here")
    x, w = conv_case(4, 16, torch.float16, "cpu", channels_last, 4100, N=3, H=6, W=7)
    results = []
    for block_m in (32, 64):
        monkeypatch.setattr(launcher, "_INTERPRETER_BLOCK_M", block_m)
        results.append(launcher.grouped_conv_with_stats(x, w, (1, 1), (1, 1), (1, 1), 16))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("n_rows", [5, 2000, 64 * 1024 + 3])
def test_reduce_partials_against_float64(device, n_rows):
    """One level (5 rows), two (2000: 32 programs, then one), three (65539 rows: 1025
    programs, 17, one). Means far from 0 relative to the spread (the case a sum of squares gets
    wrong)."""
    C = 70 if n_rows < 10**4 else 3  # (a channel block past 64; the interpreter's time)
    M = n_rows * ROWS - 7
    g = seeded(4200 + n_rows)
    counts = torch.full((n_rows,), float(ROWS), dtype=torch.float64)
    counts[-1] = ROWS - 7
    means = 1000.0 + torch.randn(n_rows, C, generator=g, dtype=torch.float64)
    m2s = torch.rand(n_rows, C, generator=g, dtype=torch.float64) * counts[:, None]
    part = torch.stack([means, m2s]).float().to(device)
    mean, var = channel_stats.reduce_partials(part, M, ROWS, welford=True)
    means32, m2s32 = part.double().cpu()
    exp_mean = (counts[:, None] * means32).sum(0) / M
    exp_m2 = m2s32.sum(0) + (counts[:, None] * (means32 - exp_mean) ** 2).sum(0)
    torch.testing.assert_close(mean.double().cpu(), exp_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double().cpu(), exp_m2 / M, rtol=1e-4, atol=0)
    sums = channel_stats.reduce_partials(part, M, ROWS, welford=False)
    for got, exp in zip(sums, part.double().cpu().sum(1)):
        torch.testing.assert_close(got.double().cpu(), exp, rtol=1e-5, atol=0)


def test_reduce_partials_non_finite_as_batch_norm(device):
    """A chunk with +inf: mean inf, variance NaN (as F.batch_norm's on the CPU); NaN: NaN."""
    part = torch.rand(2, 600, 3, generator=seeded(4300)).to(device)
    part[0, 400, 1] = float("inf")
    part[0, 17, 2] = float("nan")
    mean, var = channel_stats.reduce_partials(part, 600 * ROWS, ROWS, welford=True)
    mean, var = mean.cpu(), var.cpu()
    assert torch.isfinite(mean[0]) and torch.isfinite(var[0])
    assert torch.isposinf(mean[1]) and torch.isnan(var[1])
    assert torch.isnan(mean[2]) and torch.isnan(var[2])


@pytest.mark.parametrize("cpg,channels_last", [(4, True), (32, True), (4, False)])
@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_non_finite_input_as_batch_norm(device, poison_outputs, cpg, channels_last, value):
    """A non-finite input reaches the statistics of its own group's channels only: the packed
    tiles' exact path rewrites z and the tile's partials are taken again from it (v3), or the
    exact sums come before the epilogue (v2). The statistics, running buffers and y follow
    float64 conv2d -> F.batch_norm(training=True) -> ReLU on the CPU, non-finite pattern and
    finite values."""
    groups = max(4, 64 // cpg)  # (at cpg 32: two 64-channel tiles, one of them finite)
    x, w = conv_case(cpg, groups, torch.float16, device, channels_last, 4400 + cpg)
    with torch.no_grad():
        x[1, 5, 3, 4] = value  # group 5 // cpg
        x[0, cpg + 1, 0, 8] = value  # another group, at the image's edge
    C = w.shape[0]
    gamma = torch.rand(C, generator=seeded(4401)).to(device) + 0.5
    beta = torch.randn(C, generator=seeded(4402)).to(device)
    rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
    y = rk.grouped_conv_bn_relu_train(x, w, gamma, beta, rm, rv, groups=groups,
                                      backend="triton")
    z = F.conv2d(x.double().cpu(), w.double().cpu(), None, 1, 1, 1, groups)
    rm_ref, rv_ref = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    y_ref = torch.relu(F.batch_norm(z, rm_ref, rv_ref, gamma.double().cpu(),
                                    beta.double().cpu(), True, 0.1, 1e-5))
    for got, exp in ((rm, rm_ref), (rv, rv_ref), (y, y_ref)):
        got = got.double().cpu()
        assert torch.equal(got.isnan(), exp.isnan())
        assert torch.equal(got.isinf(), exp.isinf())
        finite = torch.isfinite(exp)
        assert not finite.all() and finite.any()
        span = exp[finite].abs().max()
        torch.testing.assert_close(got[finite] / span, exp[finite] / span,
                                   **tolerance(torch.float16))


def _train_forward(device, cpg, dtype, channels_last, seed, N, H=5, W=6):
    """A Triton train-mode forward (groups 4, H x W pixels, unit stride) on fresh random inputs;
    returns (x, w, gamma, y, mask, z, mean, var)."""
    x, w = conv_case(cpg, 4, dtype, device, channels_last, seed, N=N, H=H, W=W)
    C = w.shape[0]
    gamma = torch.rand(C, generator=seeded(seed + 1)).to(device) + 0.5
    beta = torch.randn(C, generator=seeded(seed + 2)).to(device)
    y, mask, z, mean, var = train.grouped_conv_bn_relu_train(x, w, gamma, beta, 1e-5, (1, 1),
                                                             (1, 1), (1, 1), 4, True)
    return x, w, gamma, y, mask, z, mean, var


@pytest.mark.parametrize("backward, grad_z", [("kernels", "written"), ("kernels", "prologue"),
                                              ("aten", "written")])
@pytest.mark.parametrize("channels_last", [True, False])
def test_backward_keeps_a_blocked_nan_gradient_out(device, poison_outputs, monkeypatch,
                                                   backward, grad_z, channels_last):
    """grad_y NaN where the ReLU blocked it: gp is a select, so grad_gamma, grad_beta, the
    coefficients and grad_z (written out for the kernels or aten's, and formed in the dgrad
    and wgrad prologue) stay finite and equal the torch-op version's
    (backends/batchnorm_train.py)."""
    monkeypatch.setenv("RESNEXT_KERNELS_TRITON_BACKWARD", backward)
    monkeypatch.setenv(train.BN_GRAD_Z_ENV, grad_z)
    x, w, gamma, y, mask, z, mean, var = _train_forward(device, 8, torch.float32,
                                                        channels_last, 4500, N=3)
    grad_y = torch.randn(y.shape, generator=seeded(4503)).to(device)
    blocked = y <= 0
    assert blocked.any()
    grad_y = torch.where(blocked, float("nan"), grad_y)
    got = bn_kernels.backward_sums(grad_y, mask, z, mean, var, gamma, 1e-5)
    exp = torch_ops_version.backward_sums(grad_y, mask, z, mean, var, gamma, 1e-5)
    for g, e, name in zip(got, exp, ("grad_gamma", "grad_beta", "coefficients")):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, e, **tolerance(torch.float32), msg=name)
    coef = exp[2]
    gz = bn_kernels.grad_z(grad_y, mask, z, coef)
    gz_exp = torch_ops_version.grad_z(grad_y, mask, z, coef)
    assert torch.isfinite(gz).all() and gz.stride() == z.stride()
    torch.testing.assert_close(gz, gz_exp, **tolerance(torch.float32))
    for need_x, need_weight in ((True, True), (True, False), (False, True)):
        grads = train.grouped_conv_bn_train_backward(grad_y, mask, z, coef, x, w, (1, 1),
                                                     (1, 1), (1, 1), 4, need_x, need_weight)
        exp_grads = torch_ops_version.conv_backward_on_grad_z(
            reference.grouped_conv_dgrad, reference.grouped_conv_wgrad, grad_y, mask, z, coef,
            x, w, (1, 1), (1, 1), (1, 1), 4, need_x, need_weight)
        for g, e, need in zip(grads, exp_grads, (need_x, need_weight)):
            assert g.numel() == 0 if not need else torch.isfinite(g).all()
            torch.testing.assert_close(g, e, **tolerance(torch.float32))


@pytest.mark.parametrize("grad_z", ["written", "prologue", ""])
@pytest.mark.parametrize("backward", ["kernels", "aten", "dgrad"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_grad_z_is_written_unless_the_kernels_form_it(device, monkeypatch, grad_z, backward,
                                                      channels_last):
    """grad_z is written once for the gradients wanted (the default, "" too), except where
    this backend's kernels run every one of them (dgrad and wgrad, or with "dgrad" grad_x
    alone) and RESNEXT_KERNELS_TRITON_BN_GRAD_Z=prologue: then they form it in their prologue
    and it is never written; with no gradient wanted nothing runs. The gradients agree either
    way (float64 comparisons: test_grouped_conv_bn_relu_train.py)."""
    monkeypatch.setenv("RESNEXT_KERNELS_TRITON_BACKWARD", backward)
    monkeypatch.setenv(train.BN_GRAD_Z_ENV, grad_z)
    x, w, gamma, y, mask, z, mean, var = _train_forward(device, 4, torch.float16,
                                                        channels_last, 4600, N=2)
    grad_y = torch.randn(y.shape, generator=seeded(4603)).to(torch.float16).to(device)
    if not channels_last:  # a gradient in another layout than z's
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
    _, _, coef = bn_kernels.backward_sums(grad_y, mask, z, mean, var, gamma, 1e-5)
    written = []
    real_grad_z = bn_kernels.grad_z
    monkeypatch.setattr(bn_kernels, "grad_z",
                        lambda *args: written.append(1) or real_grad_z(*args))
    for need_x, need_weight in ((True, True), (True, False), (False, True), (False, False)):
        written.clear()
        grads = train.grouped_conv_bn_train_backward(grad_y, mask, z, coef, x, w, (1, 1),
                                                     (1, 1), (1, 1), 4, need_x, need_weight)
        # the prologue where the kernels run every gradient wanted ("dgrad": grad_x's only);
        # nothing at all where no gradient is wanted
        kernels_run_all = backward == "kernels" or (backward == "dgrad" and not need_weight)
        formed = grad_z == "prologue" and kernels_run_all
        assert len(written) == (0 if formed or not (need_x or need_weight) else 1)
        exp = torch_ops_version.conv_backward_on_grad_z(
            reference.grouped_conv_dgrad, reference.grouped_conv_wgrad, grad_y, mask, z, coef,
            x, w, (1, 1), (1, 1), (1, 1), 4, need_x, need_weight)
        for g, e, need in zip(grads, exp, (need_x, need_weight)):
            if not need:
                assert g.numel() == 0
                continue
            span = e.abs().max().float()
            torch.testing.assert_close(g.float() / span, e.float() / span,
                                       **tolerance(torch.float16))


def test_an_unknown_grad_z_choice_is_refused(device, monkeypatch):
    """A misspelt RESNEXT_KERNELS_TRITON_BN_GRAD_Z is an error naming the variable and the
    choices, whatever the backward choice (not a silent fallback)."""
    x, w, gamma, y, mask, z, mean, var = _train_forward(device, 4, torch.float32, True, 4650,
                                                        N=1)
    _, _, coef = bn_kernels.backward_sums(torch.ones_like(y), mask, z, mean, var, gamma, 1e-5)
    for backward in ("kernels", "aten"):
        monkeypatch.setenv("RESNEXT_KERNELS_TRITON_BACKWARD", backward)
        monkeypatch.setenv(train.BN_GRAD_Z_ENV, "prolog")
        with pytest.raises(ValueError, match="RESNEXT_KERNELS_TRITON_BN_GRAD_Z.*'prologue'"):
            train.grouped_conv_bn_train_backward(torch.ones_like(y), mask, z, coef, x, w,
                                                 (1, 1), (1, 1), (1, 1), 4, True, True)


@pytest.mark.parametrize("channels_last", [True, False])
def test_eps_and_a_channel_of_tiny_variance(device, poison_outputs, channels_last):
    """eps = 0.5 and a channel whose variance is far below it: y, the sums and the
    coefficients follow the torch-op version (which eps-free kernels would not)."""
    C, M_side = 64, (2, 5, 7)
    g = seeded(4700)
    z = torch.randn(M_side[0], C, M_side[1], M_side[2], generator=g) * 2.0 + 1.0
    z[:, 3] = 0.25 + 1e-3 * torch.randn(M_side[0], M_side[1], M_side[2], generator=g)
    z = channels_last_if(z, channels_last).to(device)
    var, mean = torch.var_mean(z, dim=(0, 2, 3), correction=0)
    gamma = torch.rand(C, generator=seeded(4701)).to(device) + 0.5
    beta = torch.randn(C, generator=seeded(4702)).to(device)
    eps = 0.5
    y, mask = bn_kernels.normalize(z, mean, var, gamma, beta, eps, True)
    y_exp = torch.relu((z - mean[:, None, None]) / torch.sqrt(var[:, None, None] + eps)
                       * gamma[:, None, None] + beta[:, None, None])
    torch.testing.assert_close(y, y_exp, **tolerance(torch.float32))
    assert torch.equal(mask, relu_mask.from_output(y))
    grad_y = torch.randn(z.shape, generator=seeded(4703)).to(device)
    got = bn_kernels.backward_sums(grad_y, mask, z, mean, var, gamma, eps)
    exp = torch_ops_version.backward_sums(grad_y, mask, z, mean, var, gamma, eps)
    for a, b, name in zip(got, exp, ("grad_gamma", "grad_beta", "coefficients")):
        torch.testing.assert_close(a, b, **tolerance(torch.float32), msg=name)


@pytest.mark.parametrize("grad_z", ["written", "prologue"])
def test_a_z_with_gaps_is_read_where_it_lies(device, monkeypatch, grad_z):
    """z a view with gaps (every second column of a wider tensor): grad_z and the gradients
    equal those of a packed z, written or formed in the prologue (the launchers allocate
    grad_y's copy and grad_z with empty_like(z), which packs)."""
    monkeypatch.setenv("RESNEXT_KERNELS_TRITON_BACKWARD", "kernels")
    monkeypatch.setenv(train.BN_GRAD_Z_ENV, grad_z)
    x, w, gamma, y, mask, z, mean, var = _train_forward(device, 4, torch.float32, False, 4660,
                                                        N=2)
    wide = torch.full((*z.shape[:3], 2 * z.shape[3]), float("nan"), device=device)
    wide[..., ::2] = z
    gappy = wide[..., ::2]
    assert gappy.stride() != z.stride() and torch.equal(gappy, z)
    grad_y = torch.randn(y.shape, generator=seeded(4663)).to(device)
    _, _, coef = bn_kernels.backward_sums(grad_y, mask, z, mean, var, gamma, 1e-5)
    torch.testing.assert_close(bn_kernels.grad_z(grad_y, mask, gappy, coef),
                               bn_kernels.grad_z(grad_y, mask, z, coef), rtol=0, atol=0)
    got = train.grouped_conv_bn_train_backward(grad_y, mask, gappy, coef, x, w, (1, 1), (1, 1),
                                               (1, 1), 4, True, True)
    exp = train.grouped_conv_bn_train_backward(grad_y, mask, z, coef, x, w, (1, 1), (1, 1),
                                               (1, 1), 4, True, True)
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nchw_runs_of_eight_pixels(device, poison_outputs, dtype):
    """8 x 8 pixels in NCHW (the 56² and 28² layers' case: runs of 8, 16-byte loads on a GPU):
    y and the mask, the sums and coefficients and grad_z equal the torch-op version's."""
    x, w, gamma, y, mask, z, mean, var = _train_forward(device, 8, dtype, False, 4670, N=2,
                                                        H=8, W=8)
    assert bn_kernels._pixel_run([z]) == 8
    beta = torch.randn(z.shape[1], generator=seeded(4672)).to(device)
    y_exp = torch.relu((z.float() - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
                       * gamma[:, None, None] + beta[:, None, None]).to(dtype)
    got_y, got_mask = bn_kernels.normalize(z, mean, var, gamma, beta, 1e-5, True)
    torch.testing.assert_close(got_y, y_exp, **tolerance(dtype))
    assert torch.equal(got_mask, relu_mask.from_output(got_y))
    grad_y = torch.randn(y.shape, generator=seeded(4673)).to(dtype).to(device)
    got = bn_kernels.backward_sums(grad_y, got_mask, z, mean, var, gamma, 1e-5)
    exp = torch_ops_version.backward_sums(grad_y, got_mask, z, mean, var, gamma, 1e-5)
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, **tolerance(torch.float32))
    torch.testing.assert_close(bn_kernels.grad_z(grad_y, got_mask, z, exp[2]),
                               torch_ops_version.grad_z(grad_y, got_mask, z, exp[2]),
                               **tolerance(dtype))


def _strided(shape, strides):
    return torch.empty(2000).as_strided(shape, strides)


@pytest.mark.parametrize("tensors, run", [
    ([torch.empty(2, 3, 8, 8)], 8),  # NCHW, 64 pixels per image (as 56², 28²)
    ([torch.empty(2, 3, 14, 14)], 4),  # 196 pixels
    ([torch.empty(2, 3, 7, 7)], 1),  # 49
    ([torch.empty(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)], 1),
    ([torch.empty(2, 3, 8, 8), torch.empty(2, 3, 8, 8).contiguous(
        memory_format=torch.channels_last)], 1),  # every tensor of the launch must qualify
    ([_strided((2, 3, 4, 4), (52, 16, 4, 1))], 4),  # an image stride of 52
    ([_strided((2, 3, 4, 4), (50, 16, 4, 1))], 2),
    ([_strided((1, 3, 4, 4), (49, 16, 4, 1))], 1),  # one image: its stride counts too (the
    ([_strided((2, 3, 4, 4), (56, 18, 4, 1))], 2),  # masked lanes past it); a channel stride
    ([_strided((2, 1, 4, 4), (56, 17, 4, 1))], 1),  # of 18; one channel
    ([torch.empty(2, 3, 8, 16)[..., :8]], 1),  # a column slice: rows 16 apart
    ([torch.empty(2, 3, 16, 8)[:, :, ::2]], 1),  # every second row
    ([_strided((2, 3, 1, 8), (24, 8, 99, 1))], 8),  # one row: its stride never counts
    ([_strided((2, 3, 8, 1), (24, 8, 1, 99))], 8),  # one column
])
def test_pixel_runs_promise_only_what_holds(tensors, run):
    """The NCHW hint (batchnorm_train._tile_offsets): where _pixel_run allows runs of r > 1
    pixels, n * sn + hw is every pixel's true offset, each run of r pixels from a multiple of
    r is contiguous and starts at a multiple of r elements, and so does every channel's
    offset. The interpreter ignores hints, so this host-side check is what stands between a
    wrong promise and wrong loads on a GPU."""
    assert bn_kernels._pixel_run(tensors) == run
    for t in tensors:
        N, _, H, W = t.shape
        m = torch.arange(N * H * W)
        n, hw = m // (H * W), m % (H * W)
        true = n * t.stride(0) + (hw // W) * t.stride(2) + (hw % W) * t.stride(3)
        if run == 1:
            continue
        assert torch.equal(n * t.stride(0) + hw, true)
        runs = true.reshape(-1, run)
        assert torch.equal(runs - runs[:, :1], torch.arange(run).expand_as(runs))
        # run starts, and channel offsets, multiples of run: also one image and one channel
        # further (the masked lanes of a last tile)
        assert (runs[:, 0] % run == 0).all() and t.stride(0) % run == 0
        assert (torch.arange(t.shape[1] + 1) * t.stride(1) % run == 0).all()

"""The CUDA train-mode BatchNorm kernels (csrc/kernels/batchnorm_train.cu: the statistics, the
normalize + ReLU + mask, the backward's sums and coefficients, grad_z), run on the CPU by the
CUDA emulator (tests/cuda_emulator.py), against float64.

z, grad_y: random, never zero; the mask is a random one, packed as resnext_kernels/relu_mask.py
lays it out, so a wrong bit address gives a wrong sum. Every output starts poisoned (NaN, or
0xA5 mask bytes). The per-channel results (statistics, sums, coefficients) are fp32 sums of
the stored values, so they are held to the fp32 row of the tolerance table whatever z's dtype;
y and grad_z are rounded to z's dtype and held to its row. On a GPU the same kernels run for
real through the cuda backend in test_grouped_conv_bn_relu_train.py.
"""

import pytest
import torch

import cuda_emulator
from conftest import channels_last_if, seeded, tolerance
from resnext_kernels import relu_mask
from test_cuda_emulated import emulator, racecheck  # noqa: F401  (fixtures)

# (emulator_backward: CI runs this file in its other environment, beside the tests that are
# not the emulator's, so that its two halves take about as long)
pytestmark = [pytest.mark.emulator, pytest.mark.emulator_backward]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CHANNELS = (0, 2, 3)
EPS = 1e-5
PER_CHANNEL = tolerance(torch.float32)


def make_z(shape, dtype, channels_last, seed):
    """z ~ N(mean_c, std_c) per channel (means away from 0, as a conv's output has), and
    gamma, beta."""
    g = seeded(seed)
    N, C, H, W = shape
    centre = torch.randn(1, C, 1, 1, generator=g) * 2
    spread = torch.rand(1, C, 1, 1, generator=g) + 0.5
    z = (torch.randn(shape, generator=g) * spread + centre).to(dtype)
    gamma = torch.rand(C, generator=g) + 0.5
    beta = torch.randn(C, generator=g)
    return channels_last_if(z, channels_last), gamma, beta


def reference_forward(z, gamma, beta, eps, relu):
    """(y, mean, biased var) in float64 from z's stored values, two-pass: an inf makes its
    channel's mean inf and variance NaN, as nn.BatchNorm2d's running statistics show
    (torch.var_mean's one pass makes that mean NaN on the CPU)."""
    z64 = z.double()
    mean = z64.mean(CHANNELS)
    var = ((z64 - mean.view(1, -1, 1, 1)) ** 2).mean(CHANNELS)
    scale = gamma.double() / torch.sqrt(var + eps)
    y = (z64 - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + beta.double().view(1, -1, 1, 1)
    return (y.clamp_min(0) if relu else y), mean, var


def check_forward(emulator, z, gamma, beta, relu, expect_access, **kwargs):
    y, mask, mean, var, report = cuda_emulator.batchnorm_train_forward(
        emulator, z, gamma, beta, EPS, relu, **kwargs)
    assert report == expect_access
    ref_y, ref_mean, ref_var = reference_forward(z, gamma, beta, EPS, relu)
    torch.testing.assert_close(mean.double(), ref_mean, **PER_CHANNEL)
    torch.testing.assert_close(var.double(), ref_var, **PER_CHANNEL)
    assert y.stride() == z.contiguous(
        memory_format=torch._prims_common.suggest_memory_format(z)).stride()
    torch.testing.assert_close(y.double(), ref_y, **tolerance(z.dtype))
    if relu:  # the mask is y's own, as stored (relu_mask.py's layout, bits past M 0)
        assert torch.equal(mask, relu_mask.from_output(y))
    else:
        assert mask.shape == (0, z.shape[1])
    return y, mean, var


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last,access", [(False, "z pixels y pixels"),
                                                  (True, "z channels y channels")])
@pytest.mark.parametrize("relu", [True, False])
def test_forward_matches_batchnorm(emulator, dtype, channels_last, access, relu):
    """Two tiles of pixels (360 > 256) and of channels (72 > 64), H * W a multiple of 8."""
    z, gamma, beta = make_z((3, 72, 10, 12), dtype, channels_last, seed=11)
    check_forward(emulator, z, gamma, beta, relu, access)


@pytest.mark.parametrize("case,shape,channels_last,access", [
    ("C not a multiple of 8, channels_last", (2, 20, 6, 4), True, "z scalar y scalar"),
    ("C not a multiple of 8, NCHW: part chunks", (2, 20, 6, 4), False, "z pixels y pixels"),
    ("H * W odd, NCHW", (3, 16, 5, 7), False, "z scalar y scalar"),
    ("H * W odd, channels_last: runs across images", (3, 16, 5, 7), True,
     "z channels y channels"),
    ("batch 1", (1, 24, 4, 4), False, "z pixels y pixels"),
    ("one pixel per image", (5, 8, 1, 1), False, "z channels y channels"),
])
def test_forward_odd_shapes(emulator, case, shape, channels_last, access):
    z, gamma, beta = make_z(shape, torch.float16, channels_last, seed=len(case))
    check_forward(emulator, z, gamma, beta, True, access)


def test_forward_views_and_misaligned_z(emulator):
    """A width slice of a wider tensor (rows not contiguous) and a z 2 bytes off the 16-byte
    grid run through strides, an element at a time."""
    wide, gamma, beta = make_z((2, 16, 4, 9), torch.bfloat16, False, seed=5)
    check_forward(emulator, wide[..., :8], gamma, beta, True, "z scalar y pixels")
    z, gamma, beta = make_z((2, 16, 4, 8), torch.bfloat16, True, seed=6)
    check_forward(emulator, z, gamma, beta, True, "z scalar y channels", z_lead_elems=1)


@pytest.mark.parametrize("rows_in_one", [2, 3, None])
def test_statistics_reduce_in_levels(emulator, rows_in_one):
    """Twelve tiles of partials merged in one level (None: one block, its lanes 2 rows each)
    or several (2 rows a block: 12, 6, 3, 2, 1 rows; 3: 12, 4, 2, 1: the levels
    test_access_profile.py's test_batchnorm_train_reduces_in_levels sees), each in a fixed
    order: the statistics agree with float64 either way."""
    z, gamma, beta = make_z((1, 8, 96, 32), torch.float32, False, seed=7)
    check_forward(emulator, z, gamma, beta, True, "z pixels y pixels",
                  reduce_rows_in_one=rows_in_one)


def test_forward_non_finite_values_stay_in_their_channel(emulator):
    """An inf in channel 1 and a NaN in channel 5: those channels' statistics are
    nn.BatchNorm2d's (mean inf or NaN, var NaN) and their y is NaN, which the mask passes; the
    other channels are untouched."""
    z, gamma, beta = make_z((2, 16, 6, 8), torch.float16, True, seed=8)
    z[1, 1, 2, 3] = float("inf")
    z[0, 5, 4, 1] = float("nan")
    y, mask, mean, var, _ = cuda_emulator.batchnorm_train_forward(
        emulator, z, gamma, beta, EPS, True)
    ref_y, ref_mean, ref_var = reference_forward(z, gamma, beta, EPS, True)
    torch.testing.assert_close(mean.double(), ref_mean, equal_nan=True, **PER_CHANNEL)
    torch.testing.assert_close(var.double(), ref_var, equal_nan=True, **PER_CHANNEL)
    bad = torch.zeros(16, dtype=torch.bool)
    bad[[1, 5]] = True
    assert torch.isinf(mean[1]) and torch.isnan(mean[5]) and torch.isnan(var[bad]).all()
    assert torch.isnan(y[:, bad]).all()
    torch.testing.assert_close(y[:, ~bad].double(), ref_y[:, ~bad], **tolerance(z.dtype))
    assert torch.equal(mask, relu_mask.from_output(y))


# ------------------------------------------------------------------------ the backward
def make_backward_case(shape, dtype, z_channels_last, grad_channels_last, relu, seed):
    """(grad_y, mask ([0, C] without a ReLU), z, mean, var, gamma): the statistics those of z,
    as the forward made them; a random mask; grad_y in its own layout."""
    z, gamma, _ = make_z(shape, dtype, z_channels_last, seed)
    _, mean, var = reference_forward(z, gamma, gamma, EPS, False)
    g = seeded(seed + 1)
    grad_y = channels_last_if(torch.randn(shape, generator=g).to(dtype), grad_channels_last)
    N, C, H, W = shape
    if relu:
        mask = relu_mask.pack(torch.rand(shape, generator=g) < 0.6)
    else:
        mask = torch.empty((0, C), dtype=torch.uint8)
    return grad_y, mask, z, mean.float(), var.float(), gamma


def reference_backward(grad_y, mask, z, mean, var, gamma, eps):
    """(grad_gamma, grad_beta, coef [4, C], grad_z) in float64 from the stored values."""
    gp = grad_y.double()
    if mask.shape[0]:
        gp = torch.where(relu_mask.unpack(mask, grad_y.shape), gp, 0.0)
    mean64, var64 = mean.double(), var.double()
    invstd = 1.0 / torch.sqrt(var64 + eps)
    dev = z.double() - mean64.view(1, -1, 1, 1)
    grad_beta = gp.sum(CHANNELS)
    grad_gamma = (gp * dev * invstd.view(1, -1, 1, 1)).sum(CHANNELS)
    M = relu_mask.pixels(z)
    k_gp = gamma.double() * invstd
    coef = torch.stack([mean64, k_gp, -k_gp * invstd * grad_gamma / max(M, 1),
                        -k_gp * grad_beta / max(M, 1)])
    grad_z = (coef[1].view(1, -1, 1, 1) * gp + coef[2].view(1, -1, 1, 1) * dev
              + coef[3].view(1, -1, 1, 1))
    return grad_gamma, grad_beta, coef, grad_z


def check_backward(emulator, case, expect_sums_access, expect_grad_z_access, **kwargs):
    grad_y, mask, z, mean, var, gamma = case
    grad_gamma, grad_beta, coef, report = cuda_emulator.batchnorm_train_backward_sums(
        emulator, grad_y, mask, z, mean, var, gamma, EPS, **kwargs)
    assert report == expect_sums_access
    ref_gamma, ref_beta, ref_coef, ref_grad_z = reference_backward(*case, EPS)
    torch.testing.assert_close(grad_beta.double(), ref_beta, **PER_CHANNEL)
    torch.testing.assert_close(grad_gamma.double(), ref_gamma, **PER_CHANNEL)
    torch.testing.assert_close(coef.double(), ref_coef, **PER_CHANNEL)
    # grad_z from the kernel's own coefficients (as the op chains them)
    grad_z, report = cuda_emulator.batchnorm_train_grad_z(emulator, grad_y, mask, z, coef,
                                                          **kwargs)
    assert report == expect_grad_z_access
    assert grad_z.stride() == z.contiguous(
        memory_format=torch._prims_common.suggest_memory_format(z)).stride()
    torch.testing.assert_close(grad_z.double(), ref_grad_z, **tolerance(z.dtype))
    return grad_z


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("relu", [True, False])
def test_backward_matches_batchnorm(emulator, dtype, channels_last, relu):
    case = make_backward_case((3, 72, 10, 12), dtype, channels_last, channels_last, relu,
                              seed=21)
    access = "channels" if channels_last else "pixels"
    check_backward(emulator, case, f"z {access} grad_y {access}",
                   f"z {access} grad_y {access} grad_z {access}")


@pytest.mark.parametrize("case,shape,z_cl,grad_cl,access", [
    ("grad_y NCHW, z channels_last", (2, 24, 4, 6), True, False,
     ("z channels grad_y pixels", "z channels grad_y pixels grad_z channels")),
    ("C not a multiple of 8", (2, 20, 6, 4), True, True,
     ("z scalar grad_y scalar", "z scalar grad_y scalar grad_z scalar")),
    ("H * W odd", (3, 16, 5, 7), False, False,
     ("z scalar grad_y scalar", "z scalar grad_y scalar grad_z scalar")),
    ("batch 1", (1, 16, 4, 4), False, False,
     ("z pixels grad_y pixels", "z pixels grad_y pixels grad_z pixels")),
])
def test_backward_layouts_and_odd_shapes(emulator, case, shape, z_cl, grad_cl, access):
    check_backward(emulator, make_backward_case(shape, torch.bfloat16, z_cl, grad_cl, True,
                                                seed=len(case)), *access)


def test_backward_misaligned_gradient_and_levels(emulator):
    case = make_backward_case((2, 16, 24, 24), torch.float16, False, False, True, seed=31)
    check_backward(emulator, case, "z pixels grad_y scalar",
                   "z pixels grad_y scalar grad_z pixels", grad_y_lead_elems=3,
                   reduce_rows_in_one=2)


def test_backward_blocked_nan_gradient_stays_out(emulator):
    """A NaN gradient where the ReLU blocked it is selected away (not multiplied by 0): every
    sum and grad_z stay finite; one where the ReLU passed it makes its channel's sums NaN."""
    grad_y, mask, z, mean, var, gamma = make_backward_case((2, 16, 4, 8), torch.float16, True,
                                                           True, True, seed=41)
    passes = relu_mask.unpack(mask, z.shape, torch.channels_last)
    blocked = (~passes).nonzero()[0].tolist()
    grad_y[tuple(blocked)] = float("nan")
    grad_z = check_backward(emulator, (grad_y, mask, z, mean, var, gamma),
                            "z channels grad_y channels",
                            "z channels grad_y channels grad_z channels")
    assert torch.isfinite(grad_z).all()
    passed = passes.nonzero()[0].tolist()
    grad_y[tuple(passed)] = float("nan")
    grad_gamma, grad_beta, _, _ = cuda_emulator.batchnorm_train_backward_sums(
        emulator, grad_y, mask, z, mean, var, gamma, EPS)
    channel = passed[1]
    assert torch.isnan(grad_beta[channel]) and torch.isnan(grad_gamma[channel])
    others = torch.arange(16) != channel
    assert torch.isfinite(grad_beta[others]).all() and torch.isfinite(grad_gamma[others]).all()


def test_forward_batch_zero(emulator):
    """No pixels: zero statistics, nothing launched (as the glue), an empty y and mask."""
    z, gamma, beta = make_z((0, 16, 4, 4), torch.float16, True, seed=52)
    y, mask, mean, var, _ = cuda_emulator.batchnorm_train_forward(emulator, z, gamma, beta, EPS,
                                                                  True)
    assert y.shape == z.shape and mask.shape == (0, 16)
    assert torch.equal(mean, torch.zeros(16)) and torch.equal(var, torch.zeros(16))


def test_backward_batch_zero(emulator):
    """No pixels: zero sums, the coefficients of zero sums; grad_z is empty."""
    case = make_backward_case((0, 16, 4, 4), torch.float16, True, True, True, seed=51)
    grad_y, mask, z, mean, var, gamma = case
    mean, var = torch.randn(16), torch.rand(16) + 0.5  # (what a caller may pass)
    grad_gamma, grad_beta, coef, _ = cuda_emulator.batchnorm_train_backward_sums(
        emulator, grad_y, mask, z, mean, var, gamma, EPS)
    assert torch.equal(grad_gamma, torch.zeros(16)) and torch.equal(grad_beta, torch.zeros(16))
    invstd = 1.0 / torch.sqrt(var.double() + EPS)
    torch.testing.assert_close(coef.double(), torch.stack(
        [mean.double(), gamma.double() * invstd, torch.zeros(16, dtype=torch.float64),
         torch.zeros(16, dtype=torch.float64)]), **PER_CHANNEL)
    grad_z, _ = cuda_emulator.batchnorm_train_grad_z(emulator, grad_y, mask, z, coef)
    assert grad_z.shape == z.shape


@pytest.mark.parametrize("channels_last", [False, True])
def test_racecheck_batchnorm_train(racecheck, channels_last):
    """The tile merges' shared memory: no pair of accesses without a barrier between them."""
    z, gamma, beta = make_z((2, 72, 12, 12), torch.float16, channels_last, seed=61)
    check_forward(racecheck, z, gamma, beta, True,
                  "z channels y channels" if channels_last else "z pixels y pixels",
                  reduce_rows_in_one=2)
    case = make_backward_case((2, 72, 12, 12), torch.float16, channels_last, channels_last, True,
                              seed=62)
    access = "channels" if channels_last else "pixels"
    check_backward(racecheck, case, f"z {access} grad_y {access}",
                   f"z {access} grad_y {access} grad_z {access}")

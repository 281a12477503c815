"""The CUDA backward kernels (csrc/kernels/grouped_conv_backward.cu: dgrad, wgrad), run on the
CPU by the CUDA emulator (tests/cuda_emulator.py), against float64 references.

The mask is a random one (not an output's), packed as resnext_kernels/relu_mask.py lays it
out, so a wrong bit address (pixel order, byte row, bit) gives a wrong gradient. Outputs and the
wgrad workspace start as NaN. On a GPU the same kernels run for real in
test_grouped_conv_backward.py (backend "cuda").
"""

import re

import pytest
import torch

import cuda_emulator
from conftest import channels_last_if, seeded, tolerance
from resnext_kernels import relu_mask
from test_cuda_emulated import emulator, racecheck  # noqa: F401  (fixtures)

# (emulator_backward: CI runs this file in its other environment, beside the tests that are
# not the emulator's, so that its two halves take about as long)
pytestmark = [pytest.mark.emulator, pytest.mark.emulator_backward]


def make_case(cpg, groups, dtype, channels_last, seed, *, N=2, H=7, W=6, stride=(1, 1),
              dilation=(1, 1), padding=None, kernel=(3, 3), cpg_out=None, relu=True):
    """grad_y, mask (random; [0, C_out] without ReLU), x, w, scale: random, never zero.
    stride, dilation, padding (default: the dilation, "same" at stride 1): (h, w) pairs."""
    cpg_out = cpg_out or cpg
    padding = padding or dilation
    g = seeded(seed)
    C_in, C_out = cpg * groups, cpg_out * groups
    H_out, W_out = ((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
                    zip((H, W), padding, dilation, kernel, stride))
    x = channels_last_if(torch.randn(N, C_in, H, W, generator=g).to(dtype), channels_last)
    w = (torch.randn(C_out, cpg, *kernel, generator=g) / (3.0 * cpg**0.5)).to(dtype)
    scale = torch.rand(C_out, generator=g) + 0.5
    grad_y = channels_last_if(torch.randn(N, C_out, H_out, W_out, generator=g).to(dtype),
                              channels_last)
    if relu:
        passes = torch.rand(N, C_out, H_out, W_out, generator=g) < 0.6
        mask = relu_mask.pack(passes)
    else:
        mask = torch.empty((0, C_out), dtype=torch.uint8)
    return grad_y, mask, x, w, scale


def reference(grad_y, mask, x, w, scale, groups, stride=(1, 1), dilation=(1, 1), padding=None):
    """float64 (grad_x, grad_w, grad_scale, grad_shift) of relu(scale * conv(x, w) + shift) with
    the ReLU's decisions given by the mask (a select, as torch's ReLU backward), by aten's conv
    backward: its sums, and where non-finite values go."""
    padding = padding or dilation
    gp = grad_y.double()
    if mask.shape[0]:
        gp = torch.where(relu_mask.unpack(mask, grad_y.shape), gp, 0.0)
    x64, w64, s64 = x.double(), w.double(), scale.double()
    grad_x = torch.nn.grad.conv2d_input(list(x.shape), w64 * s64.view(-1, 1, 1, 1), gp, stride,
                                        padding, dilation, groups)
    G = torch.nn.grad.conv2d_weight(x64, list(w.shape), gp, stride, padding, dilation, groups)
    return grad_x, G * s64.view(-1, 1, 1, 1), (G * w64).sum((1, 2, 3)), gp.sum((0, 2, 3))


def run_both(binary, grad_y, mask, x, w, scale, *, groups, stride=(1, 1), dilation=(1, 1),
             padding=None, splits=None, allow_v3=True):
    """dgrad and wgrad on the direct kernels (cases v3 does not take, or allow_v3=False)."""
    padding = padding or dilation
    channels_last = torch._prims_common.suggest_memory_format(x) == torch.channels_last
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                allow_v3=allow_v3)
    grad_x, report = cuda_emulator.grouped_conv_dgrad(
        binary, grad_y, mask, w, scale, list(x.shape), channels_last=channels_last, **conv)
    assert report == "path direct"
    (gw, gs, gb), report = cuda_emulator.grouped_conv_wgrad(binary, grad_y, mask, x, w, scale,
                                                            splits=splits, **conv)
    assert report.startswith("path direct splits")
    return (grad_x, gw, gs, gb), report


def check(got, ref, dtype):
    for g, r, name in zip(got, ref, ("grad_x", "grad_w", "grad_scale", "grad_shift")):
        span = max(1.0, r.abs().max().item())  # sums over many pixels: relative to their size
        torch.testing.assert_close(g.double() / span, r / span, **tolerance(dtype),
                                   msg=lambda m: f"{name}: {m}")


# every channels-per-group class of the forward, 3 an odd one
@pytest.mark.parametrize("cpg", [1, 3, 4, 8, 16, 32, 64])
@pytest.mark.parametrize("stride", [1, 2])
def test_matches_float64_every_cpg(emulator, cpg, stride):
    groups = max(1, 32 // cpg) if cpg < 32 else 2
    s = (stride, stride)
    case = make_case(cpg, groups, torch.float32, cpg % 2 == 0, 100 + cpg + stride, N=1, H=5,
                     W=6, stride=s)
    got, _ = run_both(emulator, *case, stride=s, groups=groups)
    check(got, reference(*case, groups, s), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("stride", [1, 2])
def test_half_precision_both_layouts(emulator, dtype, channels_last, stride):
    s = (stride, stride)
    case = make_case(8, 4, dtype, channels_last, 200 + stride + 2 * channels_last, stride=s)
    got, _ = run_both(emulator, *case, stride=s, groups=4)
    check(got, reference(*case, 4, s), dtype)


def test_odd_sizes_dilation_cpg_in_out_no_relu(emulator):
    case = make_case(4, 3, torch.float32, True, 300, N=3, H=9, W=5, dilation=(2, 2), cpg_out=8,
                     relu=False)
    got, _ = run_both(emulator, *case, dilation=(2, 2), groups=3)
    check(got, reference(*case, 3, dilation=(2, 2)), torch.float32)


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    ((1, 3), (1, 2), (0, 2), (1, 1)),
    ((5, 3), (2, 1), (1, 0), (1, 2)),
    ((3, 3), (3, 2), (2, 1), (2, 1)),
])
def test_every_h_w_parameter_on_its_own_axis(emulator, channels_last, kernel, stride, padding,
                                             dilation):
    """Kernel size, stride, padding and dilation differ between h and w (the kernels take any;
    the op's forward is 3x3): a mix-up of the two axes gives wrong numbers or shapes."""
    conv = dict(stride=stride, padding=padding, dilation=dilation)
    case = make_case(2, 3, torch.float32, channels_last, 350 + kernel[0], N=2, H=9, W=8,
                     kernel=kernel, **conv)
    got, _ = run_both(emulator, *case, groups=3, **conv)
    check(got, reference(*case, 3, **conv), torch.float32)


def test_batch_one_and_zero(emulator):
    case = make_case(8, 2, torch.float16, True, 400, N=1, H=3, W=3)
    got, _ = run_both(emulator, *case, groups=2)
    check(got, reference(*case, 2), torch.float16)
    grad_y, mask, x, w, scale = make_case(8, 2, torch.float16, True, 401, N=0)
    (grad_x, gw, gs, gb), _ = run_both(emulator, grad_y, mask, x, w, scale, groups=2)
    assert grad_x.shape == x.shape
    # no pixel: every sum is exactly 0 (the NaN the outputs started as is gone)
    for t in (gw, gs, gb):
        assert torch.equal(t.float(), torch.zeros_like(t.float()))


def test_strided_views_and_weight_strides(emulator):
    """Every tensor through its strides: a sliced x and grad_y, a permuted weight."""
    grad_y, mask, x, w, scale = make_case(4, 4, torch.float32, False, 500, H=8, W=7)
    x_big = torch.randn(2, 16, 8, 9, generator=seeded(501))
    x_big[..., 1:8] = x
    x = x_big[..., 1:8]
    gy_big = torch.randn(2, 16, 8, 8, generator=seeded(502))
    gy_big[..., :7] = grad_y
    grad_y = gy_big[..., :7]
    w = w.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
    assert not x.is_contiguous() and not grad_y.is_contiguous() and not w.is_contiguous()
    got, _ = run_both(emulator, grad_y, mask, x, w, scale, groups=4)
    check(got, reference(grad_y, mask, x, w, scale, 4), torch.float32)


def test_wgrad_splits_add_up_alike(emulator):
    """The same sums, to rounding, for any number of pixel ranges (and the default plan does
    split them at this size); a rerun is bitwise the same. (The emulator runs blocks one after
    another, so the rerun shows only that nothing reads the poisoned workspace; determinism on
    a GPU rests on the kernels' design: no atomics, splits added in a fixed order.)"""
    case = make_case(4, 8, torch.float16, True, 600, N=4, H=24, W=24)
    (first, report) = cuda_emulator.grouped_conv_wgrad(emulator, *case[:2], case[2], case[3],
                                                        case[4], groups=8)
    assert int(report.split()[3]) > 1, report
    second, _ = cuda_emulator.grouped_conv_wgrad(emulator, *case[:2], case[2], case[3], case[4],
                                                 groups=8)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    one, _ = cuda_emulator.grouped_conv_wgrad(emulator, *case[:2], case[2], case[3], case[4],
                                              groups=8, splits=1)
    for a, b in zip(first, one):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-3, rtol=2e-3)


def test_non_finite_stays_in_its_group(emulator):
    """A NaN gradient reaches its own group's grad_x only; a NaN gradient the ReLU blocked
    reaches nothing; a NaN input reaches its own group's grad_w only (as nn.Conv2d's backward)."""
    groups, cpg = 4, 4
    grad_y, mask, x, w, scale = make_case(cpg, groups, torch.float16, True, 700, H=6, W=6)
    passes = relu_mask.unpack(mask, grad_y.shape)
    passes[0, 5, 2, 3] = True
    blocked = (0, 9, 1, 1)
    passes[blocked] = False
    mask = relu_mask.pack(passes)
    grad_y = grad_y.clone()
    grad_y[0, 5, 2, 3] = float("nan")      # group 1, passed
    grad_y[blocked] = float("inf")          # group 2, blocked by the ReLU
    x = x.clone()
    x[1, 13, 2, 2] = float("nan")          # group 3
    (grad_x, gw, gs, gb), _ = run_both(emulator, grad_y, mask, x, w, scale, groups=groups)
    nan_x = grad_x.isnan().any(dim=(0, 2, 3))
    assert nan_x.tolist() == [c // cpg == 1 for c in range(16)]
    # G sums gp * x: the NaN gradient reaches its channel's row; the NaN input every row of
    # its group (0 * NaN is NaN, as in aten's sums), no other
    touched = [c == 5 or c // cpg == 3 for c in range(16)]
    assert gw.isnan().flatten(1).any(1).tolist() == touched
    assert gs.isnan().tolist() == touched
    assert gb.isnan().tolist() == [c == 5 for c in range(16)]
    ref = reference(grad_y.nan_to_num(0.0, 0.0, 0.0), mask, x.nan_to_num(0.0), w, scale, groups)
    finite = [c for c in range(16) if not touched[c]]
    torch.testing.assert_close(gw[finite].double(), ref[1][finite], **tolerance(torch.float16))


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_non_finite_where_aten_puts_it(emulator, channels_last):
    """NaN gradients at border pixels (whose taps read the zero padding: 0 * NaN is NaN in
    aten's sums too) and inside, a NaN input at a corner: every gradient NaN exactly where
    aten's conv backward has NaN, and equal elsewhere."""
    conv = dict(stride=(2, 1), padding=(1, 1), dilation=(1, 1))
    grad_y, mask, x, w, scale = make_case(4, 2, torch.float32, channels_last, 900, H=7, W=6,
                                          relu=False, **conv)
    grad_y, x = grad_y.clone(), x.clone()
    grad_y[0, 1, 0, 0] = float("nan")   # corner
    grad_y[1, 6, 3, 5] = float("nan")   # right border
    grad_y[1, 2, 2, 3] = float("nan")   # inside
    x[0, 7, 6, 0] = float("nan")        # an input corner
    got, _ = run_both(emulator, grad_y, mask, x, w, scale, groups=2, **conv)
    ref = reference(grad_y, mask, x, w, scale, 2, **conv)
    for g, r, name in zip(got, ref, ("grad_x", "grad_w", "grad_scale", "grad_shift")):
        assert torch.equal(g.isnan(), r.isnan()), name
        torch.testing.assert_close(g.double().nan_to_num(0.0), r.nan_to_num(0.0),
                                   **tolerance(torch.float32), msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("cpg,stride,channels_last,dtype", [
    (4, 1, True, torch.float16),      # 64 weight elements: one 64-thread block per channel
    (64, 2, False, torch.bfloat16),   # 576 elements: three 256-thread blocks per channel
])
def test_racecheck_backward(racecheck, cpg, stride, channels_last, dtype):
    """The direct kernels (v3 would take the second case: kept off it)."""
    groups = 2 if cpg == 64 else 4
    s = (stride, stride)
    case = make_case(cpg, groups, dtype, channels_last, 800 + cpg, N=1, H=5, W=4, stride=s)
    got, _ = run_both(racecheck, *case, stride=s, groups=groups, splits=2, allow_v3=False)
    check(got, reference(*case, groups, s), dtype)


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("cpg", [8, 32])
def test_racecheck_dgrad_v3_gated(racecheck, cpg, channels_last):
    """dgrad on v3 at stride 2 with the gradient gated in its loader (by chunks, or NCHW by
    channel planes): each thread's register stores into the band before the barrier, the
    mainloop's reads after it (the narrow kernel, and the wide one whose weight copies are in
    flight meanwhile)."""
    groups = 64 // cpg
    case = make_case(cpg, groups, torch.float16, channels_last, 850 + cpg, N=1, H=6, W=5,
                     stride=(2, 2))
    grad_x, report = dgrad(racecheck, case, groups, stride=(2, 2))
    assert report == "path v3"
    check_grad_x(grad_x, reference(*case, groups, (2, 2))[0], torch.float16)


# ---- dgrad on v3 (csrc/kernels/grouped_conv_dgrad_v3.cu): stride 1 and 2, channels_last
# fp16/bf16, C a multiple of 64. The workspace (gs, flipped weights, v3's constants) starts as
# NaN bytes.

def dgrad(binary, case, groups, **kwargs):
    grad_y, mask, x, w, scale = case
    return cuda_emulator.grouped_conv_dgrad(binary, grad_y, mask, w, scale, list(x.shape),
                                            groups=groups, channels_last=True, **kwargs)


def check_grad_x(got, ref, dtype):
    span = max(1.0, ref.abs().max().item())
    torch.testing.assert_close(got.double() / span, ref / span, **tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cpg", [4, 8, 16, 32, 64])
def test_dgrad_v3_every_cpg_class(emulator, cpg, stride, dtype):
    """Both strides; at stride 2 an odd input height (5: output rows 0-2 land on input rows 0,
    2, 4) and an even width (6: the last input column is between output pixels)."""
    groups = 64 // cpg
    s = (stride, stride)
    case = make_case(cpg, groups, dtype, True, 1500 + cpg + stride, N=2, H=5,
                     W=7 if stride == 1 else 6, stride=s)
    grad_x, report = dgrad(emulator, case, groups, stride=s)
    assert report == "path v3"
    assert grad_x.is_contiguous(memory_format=torch.channels_last)
    check_grad_x(grad_x, reference(*case, groups, s)[0], dtype)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no_relu"])
def test_dgrad_v3_grad_y_any_layout_batch_one(emulator, relu, stride):
    """grad_y packed into the workspace (channels_last_copy.cu) where it has neither 16-byte
    chunks nor contiguous rows ("pack grad_y"): channels_last starting 4 elements (8 bytes) past
    an aligned base, as a view can, and an NCHW view with gaps inside its rows; read directly
    where it is channels_last and aligned, or NCHW (by channel planes), also as a width slice
    (gaps between its rows); gated in v3's loader either way.
    Batch 1, 128 channels (two v3 tiles, so the loader's mask offset per tile), odd sizes; with
    and without the ReLU's mask; both strides."""
    s = (stride, stride)
    grad_y, mask, x, w, scale = make_case(8, 16, torch.float16, True, 1600 + stride, N=1,
                                          H=3 * stride, W=9, relu=relu, stride=s)
    ref = reference(grad_y, mask, x, w, scale, 16, s)[0]
    gaps = torch.randn(*grad_y.shape[:3], 2 * grad_y.shape[3], generator=seeded(1605))
    gaps = gaps.to(torch.float16)
    gaps[..., ::2] = grad_y
    rows = torch.randn(*grad_y.shape[:3], grad_y.shape[3] + 3, generator=seeded(1606))
    rows = rows.to(torch.float16)
    rows[..., 1:-2] = grad_y
    for layout, lead, path in ((grad_y.contiguous(), 0, "v3"), (rows[..., 1:-2], 0, "v3"),
                               (gaps[..., ::2], 0, "v3 pack grad_y"),
                               (grad_y, 4, "v3 pack grad_y"), (grad_y, 0, "v3")):
        grad_x, report = dgrad(emulator, (layout, mask, x, w, scale), 16, stride=s,
                               grad_y_lead_elems=lead)
        assert report == f"path {path}"
        check_grad_x(grad_x, ref, torch.float16)


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cpg", [8, 32])
def test_dgrad_v3_gated_bands_and_rounds(emulator, cpg, stride, channels_last):
    """The gated loader (by chunks, or NCHW by channel planes) over two bands of a 20 x 20 grid
    (the second starts at an odd staged row: at stride 2 between the spread gradients) and, at
    stride 1, more of the gradient's chunks than one round of loads (12 x 22 staged pixels),
    with 128 channels (two tiles: the mask's channel offset per tile), the narrow and the wide
    kernel."""
    groups = 128 // cpg
    s = (stride, stride)
    case = make_case(cpg, groups, torch.float16, channels_last, 1650 + cpg + stride, N=1, H=20,
                     W=20, stride=s)
    grad_x, report = dgrad(emulator, case, groups, stride=s)
    assert report == "path v3"
    check_grad_x(grad_x, reference(*case, groups, s)[0], torch.float16)


@pytest.mark.parametrize("stride", [1, 2])
def test_dgrad_v3_gated_channel_slice_of_grad_y(emulator, stride):
    """grad_y a channel slice of a wider channels_last tensor (192 channels per pixel): 16-byte
    chunks, so gated in the loader, through its pixel strides rather than C."""
    s = (stride, stride)
    grad_y, mask, x, w, scale = make_case(16, 8, torch.float16, True, 1660 + stride, N=2, H=6,
                                          W=7, stride=s)
    wide = torch.randn(grad_y.shape[0], 192, *grad_y.shape[2:], generator=seeded(1670)).half()
    wide = wide.contiguous(memory_format=torch.channels_last)
    wide[:, 64:] = grad_y
    view = wide[:, 64:]
    grad_x, report = dgrad(emulator, (view, mask, x, w, scale), 8, stride=s)
    assert report == "path v3"
    check_grad_x(grad_x, reference(grad_y, mask, x, w, scale, 8, s)[0], torch.float16)


def test_dgrad_v3_matches_the_direct_kernel_and_batch_zero(emulator):
    case = make_case(16, 4, torch.bfloat16, True, 1700, N=2, H=4, W=4)
    v3, report = dgrad(emulator, case, 4)
    assert report == "path v3"
    direct, report = dgrad(emulator, case, 4, allow_v3=False)
    assert report == "path direct"
    torch.testing.assert_close(v3.float(), direct.float(), **tolerance(torch.bfloat16))
    empty = make_case(16, 4, torch.bfloat16, True, 1701, N=0, H=4, W=4)
    grad_x, _ = dgrad(emulator, empty, 4)
    assert grad_x.shape == (0, 64, 4, 4)


@pytest.mark.parametrize("change", ["stride21", "fp32", "channels48", "dilation2", "sm75",
                                    "cpg_in_out"])
def test_dgrad_v3_only_where_it_applies(emulator, change):
    """Everything v3's forward does not take runs the direct kernel, and is right there."""
    cpg, groups, dtype, layout = 8, 8, torch.float16, True
    conv = dict(stride=(1, 1), dilation=(1, 1))
    if change == "stride21":
        conv["stride"] = (2, 1)
    if change == "fp32":
        dtype = torch.float32
    if change == "channels48":
        groups = 6
    if change == "dilation2":
        conv["dilation"] = (2, 2)
    cpg_out = 16 if change == "cpg_in_out" else None  # C_in 64, C_out 128
    case = make_case(cpg, groups, dtype, layout, 1800, N=1, H=5, W=6, cpg_out=cpg_out, **conv)
    grad_y, mask, x, w, scale = case
    grad_x, report = cuda_emulator.grouped_conv_dgrad(
        emulator, grad_y, mask, w, scale, list(x.shape), groups=groups, channels_last=layout,
        padding=conv["dilation"], device_major=7 if change == "sm75" else 9, **conv)
    assert report == "path direct"
    check_grad_x(grad_x, reference(*case, groups, **conv)[0], dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cpg", [4, 16, 64])
def test_dgrad_v3_nchw(emulator, cpg, stride, dtype):
    """An NCHW training step's dgrad on v3: grad_y read and gated by channel planes in v3's
    loader, the NCHW grad_x written by v3 itself by channel planes, no layout copy; odd sizes
    (5 x 7 pixels: a warp's pixels span rows), two images; and grad_y channels_last with an
    NCHW grad_x."""
    groups = 64 // cpg
    s = (stride, stride)
    case = make_case(cpg, groups, dtype, False, 1750 + cpg + stride, N=2, H=5, W=7, stride=s)
    grad_y, mask, x, w, scale = case
    ref = reference(*case, groups, s)[0]
    for gy, path in ((grad_y, "v3"),
                     (grad_y.contiguous(memory_format=torch.channels_last), "v3")):
        grad_x, report = cuda_emulator.grouped_conv_dgrad(
            emulator, gy, mask, w, scale, list(x.shape), groups=groups, channels_last=False,
            stride=s)
        assert report == f"path {path}"
        assert grad_x.is_contiguous()
        check_grad_x(grad_x, ref, dtype)


def test_dgrad_v3_nchw_bands_share_rows_of_the_packed_grad_y(emulator):
    """Stride 1, 17 x 17 pixels, grad_y a view with gaps inside its rows (packed): two of v3's
    bands per image, each reading its halo rows from the packed grad_y, one writing its NCHW
    grad_x rows by planes while the other reads: the packed copy must not overlap anything v3
    writes (the workspace: the packed grad_y, then the weights and v3's packed weights)."""
    case = make_case(16, 4, torch.float16, False, 1760, N=1, H=17, W=17)
    grad_y, mask, x, w, scale = case
    gaps = torch.randn(1, 64, 17, 34, generator=seeded(1761)).to(torch.float16)
    gaps[..., 1::2] = grad_y
    grad_y = gaps[..., 1::2]
    case = (grad_y, mask, x, w, scale)
    grad_x, report = cuda_emulator.grouped_conv_dgrad(
        emulator, grad_y, mask, w, scale, list(x.shape), groups=4, channels_last=False)
    assert report == "path v3 pack grad_y"
    check_grad_x(grad_x, reference(*case, 4)[0], torch.float16)


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("stride", [1, 2])
def test_dgrad_v3_non_finite_stays_in_its_group(emulator, stride, channels_last):
    """A NaN gradient the ReLU passed reaches its own group's grad_x channels only (v3 keeps a
    non-finite input in its group), at exactly aten's pixels (at stride 2 the zeros spread
    between the gradients carry nothing); an inf it blocked reaches nothing."""
    groups, cpg = 16, 4
    s = (stride, stride)
    grad_y, mask, x, w, scale = make_case(cpg, groups, torch.float16, channels_last, 1900, N=1,
                                          H=6 * stride, W=6 * stride, stride=s)
    passes = relu_mask.unpack(mask, grad_y.shape)
    passes[0, 5, 2, 3] = True
    passes[0, 41, 1, 1] = False
    mask = relu_mask.pack(passes)
    grad_y = grad_y.clone()
    grad_y[0, 5, 2, 3] = float("nan")   # group 1, passed
    grad_y[0, 41, 1, 1] = float("inf")  # group 10, blocked
    grad_x, report = dgrad(emulator, (grad_y, mask, x, w, scale), groups, stride=s)
    assert report == "path v3"
    nan_channels = grad_x.isnan().any(dim=(0, 2, 3))
    assert nan_channels.tolist() == [c // cpg == 1 for c in range(64)]
    # exactly the pixels aten's backward makes NaN (the 3x3 around the gradient's pixel)
    ref = reference(grad_y, mask, x, w, scale, groups, s)[0]
    assert torch.equal(grad_x.isnan(), ref.isnan())
    check_grad_x(grad_x.nan_to_num(0.0), ref.nan_to_num(0.0), torch.float16)


def test_dgrad_v3_scale_folded_into_the_weights(emulator):
    """fp16 gradients near the top of the range times a scale above 1: grad_y * scale would
    overflow fp16, w * scale does not. Finite, as the reference backend (folded weights) and the
    direct kernel are; and an inf scale makes NaN where aten's sums multiply it (0 * inf at a
    pixel the ReLU blocked)."""
    groups = 16
    grad_y, mask, x, w, scale = make_case(4, groups, torch.float16, True, 2000, N=1, H=4, W=5)
    grad_y = grad_y.clone()
    grad_y[0, :, 1, 2] = 40000.0
    scale = torch.full_like(scale, 1.9)
    grad_x, report = dgrad(emulator, (grad_y, mask, x, w, scale), groups)
    assert report == "path v3"
    ref = reference(grad_y, mask, x, w, scale, groups)[0]
    assert ref.abs().max() < 65504 and grad_x.isfinite().all()
    check_grad_x(grad_x, ref, torch.float16)
    scale[7] = float("inf")
    grad_x, _ = dgrad(emulator, (grad_y, mask, x, w, scale), groups)
    direct, report = dgrad(emulator, (grad_y, mask, x, w, scale), groups, allow_v3=False)
    assert report == "path direct"
    assert torch.equal(grad_x.isnan(), direct.isnan()) and grad_x.isnan().any()


# ---- wgrad on v3's machinery (csrc/kernels/grouped_conv_wgrad_v3.cu): stride 1 or 2,
# channels_last fp16/bf16 x and grad_y, C a multiple of 64. The outputs and the partial sums'
# workspace start as NaN.

def wgrad(binary, case, groups, **kwargs):
    grad_y, mask, x, w, scale = case
    return cuda_emulator.grouped_conv_wgrad(binary, grad_y, mask, x, w, scale, groups=groups,
                                            **kwargs)


def check_wgrad(got, ref, dtype):
    for g, r, name in zip(got, ref[1:], ("grad_w", "grad_scale", "grad_shift")):
        span = max(1.0, r.abs().max().item())
        torch.testing.assert_close(g.double() / span, r / span, **tolerance(dtype),
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cpg", [4, 8, 16, 32, 64])
def test_wgrad_v3_every_cpg_class(emulator, cpg, stride, dtype):
    """Every class at both strides; 5 x 7 images, so the band's last k16 step is partly past
    its pixels (they must add nothing, whatever x holds there)."""
    groups = 64 // cpg
    s = (stride, stride)
    case = make_case(cpg, groups, dtype, True, 2100 + cpg + stride, N=2, H=5, W=7, stride=s)
    got, report = wgrad(emulator, case, groups, stride=s)
    assert report.startswith("path v3 splits"), report
    check_wgrad(got, reference(*case, groups, s), dtype)


def test_wgrad_v3_bands_and_splits(emulator):
    """Two bands per image (12 x 11 pixels: 132 > 128 per band), 128 channels (two tiles),
    cpg 32 (two CTAs per tile); the plan's one split and 3 (ranges of whole units, one of two
    units and one of one) agree with float64, and a rerun is bitwise the same. (The emulator
    runs blocks one after another, so the rerun shows only that nothing reads the poisoned
    workspace; determinism on a GPU rests on the design: no atomics, a fixed order.)"""
    groups = 4
    case = make_case(32, groups, torch.float16, True, 2200, N=2, H=12, W=11)
    ref = reference(*case, groups)
    got, report = wgrad(emulator, case, groups)
    assert report.startswith("path v3 splits 1 "), report
    check_wgrad(got, ref, torch.float16)
    split, report = wgrad(emulator, case, groups, splits=3)
    assert report.startswith("path v3 splits 3 "), report
    check_wgrad(split, ref, torch.float16)
    again, _ = wgrad(emulator, case, groups, splits=3)
    assert all(torch.equal(a, b) for a, b in zip(again, split))


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no_relu"])
def test_wgrad_v3_batch_one_and_zero(emulator, relu):
    case = make_case(8, 8, torch.bfloat16, True, 2300, N=1, H=3, W=9, relu=relu)
    got, report = wgrad(emulator, case, 8)
    assert report.startswith("path v3"), report
    check_wgrad(got, reference(*case, 8), torch.bfloat16)
    empty = make_case(8, 8, torch.bfloat16, True, 2301, N=0, H=3, W=9, relu=relu)
    (gw, gs, gb), report = wgrad(emulator, empty, 8)
    assert report.startswith("path v3"), report
    for t in (gw, gs, gb):  # no pixel: every sum exactly 0
        assert torch.equal(t.float(), torch.zeros_like(t.float()))


@pytest.mark.parametrize("change", ["fp32", "channels48", "stride21", "dilation2", "sm75",
                                    "cpg_in_out"])
def test_wgrad_v3_only_where_it_applies(emulator, change):
    """Everything wgrad v3 does not take runs the direct kernel, and is right there."""
    cpg, groups, dtype = 8, 8, torch.float16
    conv = dict(stride=(1, 1), dilation=(1, 1))
    if change == "fp32":
        dtype = torch.float32
    if change == "channels48":
        groups = 6
    if change == "stride21":
        conv["stride"] = (2, 1)
    if change == "dilation2":
        conv["dilation"] = (2, 2)
    cpg_out = 16 if change == "cpg_in_out" else None
    grad_y, mask, x, w, scale = make_case(cpg, groups, dtype, True, 2400, N=1, H=5, W=6,
                                          cpg_out=cpg_out, **conv)
    got, report = cuda_emulator.grouped_conv_wgrad(
        emulator, grad_y, mask, x, w, scale, groups=groups, padding=conv["dilation"],
        device_major=7 if change == "sm75" else 9, **conv)
    assert report.startswith("path direct"), report
    check_wgrad(got, reference(grad_y, mask, x, w, scale, groups, **conv), dtype)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cpg", [4, 8, 16, 32, 64])
def test_wgrad_v3_reads_nchw_by_channel_planes(emulator, cpg, stride):
    """NCHW x and grad_y (an NCHW training step): v3 reads x's band and grad_y by 2-byte loads
    from channel planes (swizzled_band.cuh load_halo_rows_by_planes into the output-keyed tile,
    grouped_conv_wgrad_v3.cu load_gradient_by_planes), no layout copy. Every class at both
    strides; 5 x 7 images, so the band's last k16 step is partly past its pixels and a warp's
    pixels span several rows."""
    groups = 64 // cpg
    s = (stride, stride)
    case = make_case(cpg, groups, torch.float16, False, 2150 + cpg + stride, N=2, H=5, W=7,
                     stride=s)
    got, report = wgrad(emulator, case, groups, stride=s)
    assert re.fullmatch(r"path v3 splits \d+ threads \d+ element_chunks \d+", report), report
    check_wgrad(got, reference(*case, groups, s), torch.float16)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cpg", [4, 32])
def test_wgrad_v3_packs_only_operands_without_chunks_or_rows(emulator, cpg, stride):
    """Each operand on its own: NCHW beside channels_last, and an NCHW view with gaps between its
    rows (a width slice of a wider tensor), read by planes without a copy; views with gaps inside
    their rows (every other column) are packed channels_last into the workspace (after the
    partial sums; the workspace starts as NaN) before v3. Odd sizes: the copies' 32-pixel tiles
    end mid-row."""
    groups = 64 // cpg
    s = (stride, stride)
    grad_y, mask, x, w, scale = make_case(cpg, groups, torch.float16, True, 2450 + cpg + stride,
                                          N=2, H=5, W=7, stride=s)
    ref = reference(grad_y, mask, x, w, scale, groups, s)
    g = seeded(2460)
    wide = torch.randn(2, 64, 5, 10, generator=g).to(torch.float16)
    wide[..., 2:9] = x
    x_rows = wide[..., 2:9]
    x_gaps = torch.randn(2, 64, 5, 14, generator=g).to(torch.float16)
    x_gaps[..., ::2] = x
    x_gaps = x_gaps[..., ::2]
    gy_gaps = torch.randn(*grad_y.shape[:3], 2 * grad_y.shape[3], generator=g).to(torch.float16)
    gy_gaps[..., 1::2] = grad_y
    gy_gaps = gy_gaps[..., 1::2]
    for xs, gy, packs in ((x.contiguous(), grad_y, ""), (x, grad_y.contiguous(), ""),
                          (x_rows, grad_y.contiguous(), ""), (x_gaps, grad_y, " pack x"),
                          (x_gaps, gy_gaps, " pack x pack grad_y"),
                          (x.contiguous(), gy_gaps, " pack grad_y")):
        got, report = wgrad(emulator, (gy, mask, xs, w, scale), groups, stride=s)
        assert re.fullmatch(r"path v3 splits \d+ threads \d+ element_chunks \d+" + packs,
                            report), report
        check_wgrad(got, ref, torch.float16)


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("cpg", [4, 32])
def test_wgrad_v3_non_finite_where_aten_puts_it(emulator, cpg, channels_last):
    """A NaN gradient the ReLU passed (inside, and at a border pixel whose taps read the
    padding: 0 * NaN is NaN in aten's sums), an inf it blocked, a NaN input at a corner and one
    at the last pixel (the band's last k16 step reads past it): NaN exactly where aten's conv
    backward has it, in its own group only (cpg 4 computes the cross-group products and drops
    them), and equal elsewhere."""
    groups = 64 // cpg
    grad_y, mask, x, w, scale = make_case(cpg, groups, torch.float16, channels_last, 2500 + cpg,
                                          N=2, H=5, W=7)
    passes = relu_mask.unpack(mask, grad_y.shape)
    grad_y, x = grad_y.clone(), x.clone()
    for px, value, passed in (((0, 5, 2, 3), "nan", True), ((1, 17, 0, 6), "nan", True),
                              ((0, 41, 1, 1), "inf", False)):
        passes[px] = passed
        grad_y[px] = float(value)
    mask = relu_mask.pack(passes)
    x[1, 50, 4, 6] = float("nan")
    if cpg == 4:  # (at cpg 32 it would make both groups' grad_w NaN)
        x[0, 7, 0, 0] = float("nan")
    got, report = wgrad(emulator, (grad_y, mask, x, w, scale), groups)
    assert report.startswith("path v3") and "pack" not in report, report
    ref = reference(grad_y, mask, x, w, scale, groups)
    for g, r, name in zip(got, ref[1:], ("grad_w", "grad_scale", "grad_shift")):
        assert torch.equal(g.isnan(), r.isnan()), name
        assert g.isnan().any(), name
        finite = ~r.isnan()
        span = max(1.0, r[finite].abs().max().item())
        torch.testing.assert_close(g.double()[finite] / span, r[finite] / span,
                                   **tolerance(torch.float16), msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_racecheck_wgrad_v3(racecheck, channels_last):
    case = make_case(8, 8, torch.float16, channels_last, 2600, N=2, H=4, W=5, stride=(2, 2))
    got, report = wgrad(racecheck, case, 8, stride=(2, 2), splits=2)
    assert report.startswith("path v3") and "pack" not in report, report
    check_wgrad(got, reference(*case, 8, (2, 2)), torch.float16)


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_wgrad_v3_rows_wider_than_a_band_and_more_splits_than_units(emulator, channels_last):
    """Rows of 130 pixels: a band is one row (more than a band's 128 pixels), so each thread
    loads gp in several rounds (chunks, or NCHW's planes: 1152 items of 144 per chunk); 2 units
    over 5 splits: three CTAs without a unit add zeros."""
    case = make_case(8, 8, torch.float16, channels_last, 2700, N=1, H=2, W=130)
    ref = reference(*case, 8)
    for splits in (None, 5):
        got, report = wgrad(emulator, case, 8, splits=splits)
        assert report.startswith("path v3"), report
        check_wgrad(got, ref, torch.float16)


# ---- the layout copy before the backward's v3 paths (csrc/kernels/channels_last_copy.cu):
# a tensor of any strides -> its dense channels_last copy, 16-bit elements moved as bits.

def random_bits(shape, dtype, seed):
    """Every 16-bit pattern equally likely: NaNs with payloads, infinities, -0, subnormals."""
    bits = torch.randint(-2**15, 2**15, shape, generator=seeded(seed), dtype=torch.int32)
    return bits.to(torch.int16).view(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("C, max_blocks", [(8, 0), (72, 0), (136, 0), (72, 4)])
def test_channels_last_copy_any_strides(emulator, C, max_blocks, dtype):
    """Packed from NCHW, from a strided view (every other column of a channel slice of a wider
    tensor) and from channels_last. C 8 (a tile of one chunk), 72 and 136 (a partial second and
    third channel tile); 2 images of 5 x 13 pixels (three 32-pixel tiles, the last of one
    pixel, ending mid-row); a grid of a block per tile, and of 4 blocks for the 12 tiles of C
    72 (each walks 3: the loop, and the tile reused after the barrier). Bitwise."""
    shape = (2, C, 5, 13)
    values = random_bits(shape, dtype, 2700 + C)
    wide = random_bits((2, C + 16, 5, 26), dtype, 2701 + C)
    view = wide[:, 8:C + 8, :, ::2]
    view.copy_(values)
    for src in (values, view, values.contiguous(memory_format=torch.channels_last)):
        packed = cuda_emulator.channels_last_copy(emulator, src, max_blocks=max_blocks)
        assert packed.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(packed.view(torch.int16), values.view(torch.int16))


def test_channels_last_copy_refuses_what_it_cannot_copy(emulator):
    """C not a multiple of 8 (no whole 16-byte chunks), and a dense side off the 16-byte grid:
    the launch fails with an error, nothing is written."""
    values = random_bits((1, 12, 3, 3), torch.float16, 2800)
    with pytest.raises(cuda_emulator.EmulatorError, match="launch failed"):
        cuda_emulator.channels_last_copy(emulator, values)
    values = random_bits((1, 16, 3, 3), torch.float16, 2801)
    with pytest.raises(cuda_emulator.EmulatorError, match="launch failed"):
        cuda_emulator.channels_last_copy(emulator, values, dense_lead_bytes=8)


@pytest.mark.parametrize("max_blocks", [0, 5])
def test_racecheck_channels_last_copy(racecheck, max_blocks):
    """The tile is written by one thread mapping and read by another: the barrier between
    them; and with 5 blocks for 12 tiles, the barrier before a block's next tile rewrites it
    (the emulator runs a block's threads side by side, its blocks one after another)."""
    values = random_bits((2, 72, 5, 13), torch.float16, 2900)
    packed = cuda_emulator.channels_last_copy(racecheck, values, max_blocks=max_blocks)
    assert torch.equal(packed.view(torch.int16), values.view(torch.int16))

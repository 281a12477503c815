"""Triton conv v3 (resnext_kernels/backends/triton/grouped_conv_v3.py): every channels-per-group
class it takes, both strides, fp16 and bf16, against the float64 reference; non-finite inputs
stay in their group; the calls it refuses go to v2; its packed weights and their cache.

On the CPU these run through the Triton interpreter; on a GPU the compiled kernel (gpu-marked)."""

import importlib

import pytest
import torch
import torch.nn.functional as F

import resnext_kernels as rk
from conftest import tolerance
from resnext_kernels import backends
from resnext_kernels.backends.triton_plan import sub_blocks, triton_conv_path
from test_grouped_conv_bn_relu import make_case, run_and_check

launcher = importlib.import_module("resnext_kernels.backends.triton.grouped_conv_bn_relu")
v3 = importlib.import_module("resnext_kernels.backends.triton.grouped_conv_v3")


def _devices():
    params = []
    for device in ("cpu", "cuda"):
        marks = [pytest.mark.gpu] if device == "cuda" else []
        ok, reason = backends.backend_status("triton", device)
        if not ok:
            marks.append(pytest.mark.skip(reason=f"triton on {device}: {reason}"))
        params.append(pytest.param(device, id=device, marks=marks))
    return params


@pytest.fixture(params=_devices())
def device(request):
    return request.param


def v3_case(cpg, dtype, device, seed, N=2, H=7, W=9, channels_last=True):
    """64 channels (128 at cpg 64: two groups), so every class fills whole 64-channel tiles."""
    groups = max(2, 64 // cpg)
    return make_case(cpg, groups, dtype, device, channels_last, seed, N=N, H=H, W=W) + (groups,)


def path(x, w, groups, stride=1, padding=1, dilation=1):
    return triton_conv_path(x, w, stride, padding, dilation, groups)


@pytest.mark.parametrize("cpg", [1, 2, 4, 8, 16, 32, 64])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_v3_matches_conv_bn_relu(device, poison_outputs, cpg, stride, dtype):
    if device == "cuda" and cpg < 4:
        pytest.skip("cpg 1 and 2 are no ResNeXt class: the interpreter covers them, and each "
                    "class is a compile the GPU plan's test step would pay for")
    x, w, scale, shift, bn, groups = v3_case(cpg, dtype, device, 500 + cpg * 10 + stride)
    assert path(x, w, groups, stride) == "v3"
    run_and_check("triton", device, x, w, scale, shift, bn, poison_outputs, stride=stride,
                  groups=groups)


@pytest.mark.parametrize("N,H,W,stride,padding,dilation", [
    (1, 1, 1, 1, 1, 1),  # one pixel
    (3, 5, 3, 2, 1, 1),  # odd sizes, stride 2
    (0, 7, 9, 1, 1, 1),  # batch 0
    (1, 13, 11, 1, 2, 2),  # dilation 2
    (3, 11, 7, 1, 0, 1),  # no padding: H_out 9, W_out 5; 135 outputs, partial tiles
])
def test_v3_sizes_and_geometry(device, poison_outputs, N, H, W, stride, padding, dilation):
    x, w, scale, shift, bn, groups = v3_case(8, torch.float16, device, 600 + H, N=N, H=H, W=W)
    if N:  # (batch 0 launches nothing)
        assert path(x, w, groups, stride, padding, dilation) == "v3"
    run_and_check("triton", device, x, w, scale, shift, bn, poison_outputs, stride=stride,
                  padding=padding, dilation=dilation, groups=groups)


def test_v3_relu_off_and_strided_views(device, poison_outputs):
    """Without ReLU (negative outputs kept); a channels_last view with spatial strides and an
    image stride that is not H*W*C."""
    x, w, scale, shift, bn, groups = v3_case(4, torch.float16, device, 611, N=3, H=14, W=18)
    x_view = x[::2, :, 1::2, ::2]
    assert x_view.stride(1) == 1 and not x_view.is_contiguous(memory_format=torch.channels_last)
    assert path(x_view, w, groups) == "v3"
    y = run_and_check("triton", device, x_view, w, scale, shift, bn, poison_outputs,
                      groups=groups, relu=False)
    assert (y < 0).any()


@pytest.mark.parametrize("cpg", [1, 4, 8, 16, 32, 64])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")],
                         ids=["nan", "inf", "-inf"])
def test_v3_non_finite_input_stays_in_its_group(device, cpg, value):
    """nn.Conv2d: a non-finite input reaches only the outputs of its own group. v3's
    block-diagonal sub-blocks (cpg < 16, and 32) would multiply it by the packing zeros of the
    other groups (0 * inf = NaN) unless the exact path rewrites the tile."""
    check_non_finite(device, cpg, value, torch.float16, relu=False, seed=700 + cpg)


@pytest.mark.parametrize("cpg", [4, 32])
def test_v3_non_finite_bf16_with_relu(device, cpg):
    check_non_finite(device, cpg, float("inf"), torch.bfloat16, relu=True, seed=750 + cpg)


def check_non_finite(device, cpg, value, dtype, relu, seed, stride=1, padding=1, dilation=1):
    x, w, scale, shift, bn, groups = v3_case(cpg, dtype, device, seed)
    x[1, 5, 3, 4] = value  # channel 5: group 5 // cpg
    x[0, cpg + 1, 0, 8] = value  # another group, at the image's edge
    y = rk.grouped_conv_bn_relu(x, w, scale, shift, stride=stride, padding=padding,
                                dilation=dilation, groups=groups, relu=relu, backend="triton")
    ref = F.conv2d(x.double().cpu(), w.double().cpu(), None, stride, padding, dilation, groups)
    ref = ref * scale.double().cpu()[:, None, None] + shift.double().cpu()[:, None, None]
    if relu:
        ref = torch.relu(ref)
    y = y.double().cpu()
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isposinf(y), torch.isposinf(ref))
    assert torch.equal(torch.isneginf(y), torch.isneginf(ref))
    finite = torch.isfinite(ref)
    assert not finite.all()
    torch.testing.assert_close(y[finite], ref[finite], **tolerance(dtype))


def test_v3_asymmetric_geometry(device, poison_outputs):
    """Stride, padding and dilation that differ between height and width (a swapped pair
    would fail), on a strided view, at a packed and a one-group class."""
    for cpg in (4, 32):
        x, w, scale, shift, bn, groups = v3_case(cpg, torch.float16, device, 770 + cpg, N=2,
                                                 H=13, W=11)
        x = x[:, :, 1:, 2:]
        stride, padding, dilation = (2, 1), (0, 2), (1, 2)
        assert path(x, w, groups, stride, padding, dilation) == "v3"
        poison_outputs(1 << 20, device)
        y = rk.grouped_conv_bn_relu(x, w, scale, shift, stride=stride, padding=padding,
                                    dilation=dilation, groups=groups, backend="triton")
        ref = torch.relu(bn.double()(F.conv2d(x.double().cpu(), w.double().cpu(), None, stride,
                                              padding, dilation, groups)))
        torch.testing.assert_close(y.double().cpu(), ref, **tolerance(torch.float16))


def test_v3_tap_offsets_past_32_bits(device):
    """A view whose row stride is 2^30 elements with 2 rows of padding: the address of tap
    (0, 0) lies 2^31 elements before x and the tap offset 2 * 2^30 passes 2^31 on its own,
    though x spans 256 elements. 64-bit offsets must be chosen (review finding: the interpreter
    crashed reading 2^32 elements before x)."""
    g = torch.Generator().manual_seed(780)
    base = torch.randn(4 * 64, generator=g).half().to(device)
    x = base.as_strided((1, 64, 1, 4), (2**31, 1, 2**30, 64))
    w = (torch.randn(64, 16, 3, 3, generator=g) / 12).half().to(device)
    scale, shift = torch.ones(64, device=device), torch.zeros(64, device=device)
    assert path(x, w, 4, 1, (2, 0)) == "v3"
    y = rk.grouped_conv_bn_relu(x, w, scale, shift, padding=(2, 0), groups=4, relu=False,
                                backend="triton")
    ref = F.conv2d(x.double().cpu(), w.double().cpu(), None, 1, (2, 0), 1, 4)
    torch.testing.assert_close(y.double().cpu(), ref, **tolerance(torch.float16))


@pytest.mark.parametrize("what", ["nchw", "fp32", "channels", "cpg3", "unequal"])
def test_calls_v3_does_not_take_run_v2(device, poison_outputs, what):
    """v3 takes channels_last fp16/bf16 with C_in == C_out a multiple of 64 and power-of-two
    cpg up to 64; everything else is v2's, and still right."""
    dtype = torch.float32 if what == "fp32" else torch.float16
    cpg, groups, cpg_out = {"channels": (4, 8, None), "cpg3": (3, 64, None),
                            "unequal": (4, 16, 8)}.get(what, (4, 16, None))
    x, w, scale, shift, bn = make_case(cpg, groups, dtype, device, what != "nchw", 800,
                                       cpg_out=cpg_out)
    assert path(x, w, groups) == "v2"
    run_and_check("triton", device, x, w, scale, shift, bn, poison_outputs, groups=groups)


def test_v3_off_by_environment_agrees_with_v2(device, monkeypatch):
    """RESNEXT_KERNELS_TRITON_V3=0 sends v3's calls to v2 (the benchmark's comparison)."""
    x, w, scale, shift, _, groups = v3_case(8, torch.float16, device, 811)
    y3 = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=groups, backend="triton")
    monkeypatch.setenv("RESNEXT_KERNELS_TRITON_V3", "0")
    assert path(x, w, groups) == "v2"
    y2 = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=groups, backend="triton")
    torch.testing.assert_close(y3.float(), y2.float(), **tolerance(torch.float16))


@pytest.mark.parametrize("cpg", [1, 4, 8, 16, 32, 64])
def test_pack_weight_layout(cpg):
    """packed[tile, tap, sub, k, n] = w[co, k', kh, kw] where input channel k and output channel
    n of the sub-block share a group (k' = k's index in it), zero elsewhere: checked element by
    element against the definition, with strided (channels_last) weights."""
    C = 128
    w = torch.randn(C, cpg, 3, 3).to(memory_format=torch.channels_last)
    packed = v3.pack_weight(w, C // cpg, torch.float32)
    nsub, subw = sub_blocks(cpg)
    assert packed.shape == (C // 64, 9, nsub, subw, subw) and packed.is_contiguous()
    expected = torch.zeros_like(packed)
    for tile in range(C // 64):
        for sub in range(nsub):
            for k in range(subw):
                for n in range(subw):
                    if k // cpg != n // cpg:
                        continue
                    co = tile * 64 + sub * subw + n
                    expected[tile, :, sub, k, n] = w[co, k % cpg].reshape(9)
    assert torch.equal(packed, expected)


def test_direct_calls_reuse_the_pack_until_the_weight_changes(device):
    """Plain eager calls pack a weight once (the pack is keyed by the weight's version); an
    in-place update of the weight is seen at the next call."""
    x, w, scale, shift, bn, groups = v3_case(8, torch.float16, device, 911)
    launcher._PACKED.clear()
    packs = []
    real_pack = v3.pack_weight

    def counting_pack(*args):
        packs.append(1)
        return real_pack(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(v3, "pack_weight", counting_pack)
        with torch.no_grad():
            y1 = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=groups, backend="triton")
            y2 = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=groups, backend="triton")
            assert len(packs) == 1 and torch.equal(y1, y2)
            w.mul_(-1)
            y3 = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=groups, backend="triton")
            assert len(packs) == 2
    ref = run_reference(x, w, bn, groups)
    torch.testing.assert_close(y3.double().cpu(), ref, **tolerance(torch.float16))
    launcher._PACKED.clear()


def test_pack_cache_sees_data_swaps(device):
    """`w.data = ...` bumps no version: a view of the same storage (same address, new
    strides) and a new tensor that could take a freed storage's address must both be seen
    (review finding: both reused a stale pack)."""
    x, w, scale, shift, bn, groups = v3_case(16, torch.float16, device, 921, N=1, H=3, W=3)
    launcher._PACKED.clear()

    def check():
        y = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=groups, backend="triton")
        torch.testing.assert_close(y.double().cpu(), run_reference(x, w, bn, groups),
                                   **tolerance(torch.float16))

    with torch.no_grad():
        check()
        w.data = w.data.transpose(2, 3)
        check()
        for _ in range(3):
            w.data = torch.randn_like(w) / 12
            w.data = torch.randn_like(w) / 12
            check()
    launcher._PACKED.clear()


def run_reference(x, w, bn, groups):
    y = F.conv2d(x.double().cpu(), w.double().cpu(), None, 1, 1, 1, groups)
    return torch.relu(bn.double()(y))


@pytest.mark.parametrize("cpg", [4, 16, 32])
def test_v3_64bit_index_path(device, poison_outputs, monkeypatch, cpg):
    """The INDEX_64 specialisation (used past 2^31 elements), forced on small cases: a batched
    class, a one-GEMM class, and the exact path for a non-finite input."""
    monkeypatch.setattr(launcher, "INDEX_32_LIMIT", 0)
    x, w, scale, shift, bn, groups = v3_case(cpg, torch.bfloat16, device, 1001 + cpg)
    run_and_check("triton", device, x, w, scale, shift, bn, poison_outputs, stride=2,
                  groups=groups)
    if cpg != 16:
        check_non_finite(device, cpg, float("inf"), torch.float16, relu=False, seed=1002)


@pytest.mark.gpu
@pytest.mark.parametrize("config_index", range(4))
def test_v3_every_launch_config(poison_outputs, monkeypatch, config_index):
    """Each v3 autotune configuration of each sub-block class, forced in turn."""
    if not torch.cuda.is_available():
        pytest.skip("launch configurations exist on the GPU only")
    monkeypatch.setenv("RESNEXT_KERNELS_TRITON_AUTOTUNE", "0")
    for nsub, configs in launcher._V3_GPU_CONFIGS.items():
        if config_index >= len(configs):
            continue
        monkeypatch.setitem(launcher._V3_FIXED_GPU_CONFIG, nsub, configs[config_index])
    for cpg, stride, dtype in ((4, 1, torch.float16), (8, 2, torch.bfloat16),
                               (16, 1, torch.float16), (32, 2, torch.bfloat16),
                               (64, 1, torch.float16)):
        x, w, scale, shift, bn, groups = v3_case(cpg, dtype, "cuda", 1100 + cpg, N=3)
        run_and_check("triton", "cuda", x, w, scale, shift, bn, poison_outputs, stride=stride,
                      groups=groups)
        if cpg in (4, 32):  # the exact path after the fast path's stores, in this config
            check_non_finite("cuda", cpg, float("inf"), torch.float16, relu=True, seed=1101,
                             stride=stride)

"""grouped_conv_bn_relu: every backend against a float64 nn.Conv2d + BatchNorm + ReLU reference."""

import pytest
import torch
import torch.nn.functional as F

import resnext_kernels as rk
from conftest import DTYPES, channels_last_if, seeded, tolerance
from resnext_kernels.models.shapes import grouped_conv_shapes


def make_case(cpg_in, groups, dtype, device, channels_last, seed, N=2, H=7, W=9, cpg_out=None):
    """Random conv + eval-BN parameters (never zeros), scaled so outputs are O(1)."""
    cpg_out = cpg_out or cpg_in
    g = seeded(seed)
    C_in, C_out = cpg_in * groups, cpg_out * groups
    x = torch.randn(N, C_in, H, W, generator=g)
    weight = torch.randn(C_out, cpg_in, 3, 3, generator=g) / (3.0 * cpg_in**0.5)
    bn = torch.nn.BatchNorm2d(C_out).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(C_out, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(C_out, generator=g) * 0.5)
        bn.running_mean.copy_(torch.randn(C_out, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(C_out, generator=g) + 0.5)
    scale, shift = rk.fold_batchnorm(bn)
    x = channels_last_if(x.to(dtype), channels_last).to(device)
    weight = weight.to(dtype).to(device)
    return x, weight, scale.to(device), shift.to(device), bn


def reference(x, weight, bn, stride, padding, dilation, groups, relu):
    """nn.Conv2d + nn.BatchNorm2d (eval) + ReLU in float64 from the same inputs, on x's device
    (float64 rounding is far below every tolerance here), returned on the CPU. On a GPU the
    CPU's float64 grouped conv was most of the GPU test step: 1000 of its 1722 test-seconds at
    659b2c1, the real ResNeXt shapes (~1.9 s a test, every backend). Non-finite inputs are
    referenced on the CPU: cuDNN need not keep a NaN in its group."""
    finite = bool(torch.isfinite(x).all()) and bool(torch.isfinite(weight).all())
    device = x.device if finite else torch.device("cpu")
    x64 = x.double().to(device).contiguous()  # (NCHW: cuDNN's float64 need not take NHWC)
    y = F.conv2d(x64, weight.double().to(device), None, stride, padding, dilation, groups)
    y = F.batch_norm(y, *(t.double().to(device) for t in (bn.running_mean, bn.running_var)),
                     bn.weight.detach().double().to(device),
                     bn.bias.detach().double().to(device), False, 0.0, bn.eps)
    return (torch.relu(y) if relu else y).cpu()


def run_and_check(backend, device, x, weight, scale, shift, bn, poison, *, stride=1, padding=1,
                  dilation=1, groups, relu=True, tol_key=None):
    N, _, H, W = x.shape
    C_out = weight.shape[0]
    H_out = (H + 2 * padding - dilation * 2 - 1) // stride + 1
    W_out = (W + 2 * padding - dilation * 2 - 1) // stride + 1
    poison(N * C_out * H_out * W_out * x.element_size(), device)
    y = rk.grouped_conv_bn_relu(x, weight, scale, shift, stride=stride, padding=padding,
                                dilation=dilation, groups=groups, relu=relu, backend=backend)
    assert y.shape == (N, C_out, H_out, W_out)
    assert y.dtype == x.dtype and y.device == x.device
    expected_format = torch._prims_common.suggest_memory_format(x)
    assert y.is_contiguous(memory_format=expected_format), "output must keep x's memory format"
    ref = reference(x, weight, bn, stride, padding, dilation, groups, relu)
    torch.testing.assert_close(y.double().cpu(), ref, **tolerance(tol_key or x.dtype))
    return y


# Every channels-per-group class has its own tile path in the kernels; 3 is an odd one, and
# 128 takes several reduction steps per tap.
CPG_CLASSES = [1, 3, 4, 8, 16, 32, 64, 128]


@pytest.mark.parametrize("cpg", CPG_CLASSES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_conv_bn_relu(backend_device, poison_outputs, cpg, stride, channels_last, dtype):
    backend, device = backend_device
    groups = 4 if cpg <= 16 else 2
    seed = cpg * 1000 + stride * 100 + channels_last * 10 + DTYPES.index(dtype)
    x, w, scale, shift, bn = make_case(cpg, groups, dtype, device, channels_last, seed)
    run_and_check(backend, device, x, w, scale, shift, bn, poison_outputs, stride=stride,
                  groups=groups)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("dilation", [1, 2])
def test_relu_off_and_dilation(backend_device, poison_outputs, relu, dilation):
    backend, device = backend_device
    x, w, scale, shift, bn = make_case(8, 4, torch.float32, device, True, 11 + dilation, H=9, W=8)
    y = run_and_check(backend, device, x, w, scale, shift, bn, poison_outputs, padding=dilation,
                      dilation=dilation, groups=4, relu=relu)
    if not relu:
        assert (y < 0).any(), "without ReLU some outputs must be negative on random data"


@pytest.mark.parametrize("N", [0, 1])
def test_batch_zero_and_one(backend_device, poison_outputs, N):
    backend, device = backend_device
    x, w, scale, shift, bn = make_case(4, 4, torch.float16, device, True, 21 + N, N=N)
    run_and_check(backend, device, x, w, scale, shift, bn, poison_outputs, groups=4)


def test_odd_sizes_and_one_pixel(backend_device, poison_outputs):
    backend, device = backend_device
    for H, W, stride in [(1, 1, 1), (5, 3, 2), (13, 1, 2)]:
        x, w, scale, shift, bn = make_case(8, 2, torch.float32, device, False, 31 + H, H=H, W=W)
        run_and_check(backend, device, x, w, scale, shift, bn, poison_outputs, stride=stride,
                      groups=2)


def test_unequal_channels_per_group(backend_device, poison_outputs):
    """C_out != C_in: 2 input and 6 output channels per group."""
    backend, device = backend_device
    x, w, scale, shift, bn = make_case(2, 5, torch.float32, device, True, 41, cpg_out=6)
    run_and_check(backend, device, x, w, scale, shift, bn, poison_outputs, groups=5)


def test_non_contiguous_inputs(backend_device, poison_outputs):
    backend, device = backend_device
    x, w, scale, shift, bn = make_case(8, 4, torch.float32, device, False, 51, H=14, W=18)
    x_view = x[:, :, ::2, 1::2]  # strided spatial view
    w_view = w.transpose(2, 3).contiguous().transpose(2, 3)  # same values, permuted strides
    assert not x_view.is_contiguous() and not w_view.is_contiguous()
    run_and_check(backend, device, x_view, w_view, scale, shift, bn, poison_outputs, groups=4)


def test_scale_and_shift_in_input_dtype(backend_device):
    """scale/shift may come in x's dtype (a .half() model); they are applied in fp32."""
    backend, device = backend_device
    x, w, scale, shift, bn = make_case(4, 4, torch.float16, device, True, 61)
    y32 = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend=backend)
    y16 = rk.grouped_conv_bn_relu(x, w, scale.half(), shift.half(), groups=4, backend=backend)
    torch.testing.assert_close(y16.float(), y32.float(), **tolerance(torch.float16))


def test_deterministic(backend_device):
    backend, device = backend_device
    x, w, scale, shift, _ = make_case(8, 4, torch.float16, device, True, 71)
    a = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend=backend)
    b = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend=backend)
    assert torch.equal(a, b)


def test_nan_propagates_through_relu(backend_device):
    backend, device = backend_device
    x, w, scale, shift, _ = make_case(4, 4, torch.float32, device, False, 81)
    x[0, 0, 3, 3] = float("nan")
    y = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend=backend)
    assert torch.isnan(y[0, :4, 2:5, 2:5]).all(), "NaN must reach every output it feeds"
    assert not torch.isnan(y[1]).any()


def test_gradients_match_aten(backend_device):
    backend, device = backend_device
    x, w, scale, shift, _ = make_case(4, 4, torch.float32, device, True, 91)
    leaves = [t.clone().requires_grad_() for t in (x, w, scale, shift)]
    y = rk.grouped_conv_bn_relu(*leaves, groups=4, stride=2, backend=backend)
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, grad_out)
    ref_leaves = [t.clone().double().requires_grad_() for t in (x, w, scale, shift)]
    xr, wr, sr, br = ref_leaves
    ref = torch.relu(F.conv2d(xr, wr, None, 2, 1, 1, 4) * sr.view(-1, 1, 1) + br.view(-1, 1, 1))
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.double())
    for got, exp in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), exp, atol=1e-4, rtol=1e-4)


def test_output_survives_inplace_relu_in_backward(backend_device):
    """torchvision's Bottleneck applies an in-place ReLU to this op's output; backward must work."""
    backend, device = backend_device
    x, w, scale, shift, _ = make_case(4, 4, torch.float32, device, False, 101)
    x.requires_grad_()
    y = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend=backend)
    torch.relu_(y)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.gpu
def test_tf32_follows_cudnn_flag(backend_device):
    backend, device = backend_device
    if device != "cuda":
        pytest.skip("TF32 is a GPU setting")
    x, w, scale, shift, bn = make_case(32, 4, torch.float32, device, True, 111, H=14, W=14)
    torch.backends.cudnn.allow_tf32 = True
    y = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend=backend)
    ref = reference(x, w, bn, 1, 1, 1, 4, True)
    torch.testing.assert_close(y.double().cpu(), ref, **tolerance("tf32"))


# Every distinct grouped-conv shape of the ResNeXt models, read from their definitions: every
# channels-per-group class (4 to 64) at its real channel count, spatial size and stride.
REAL_SHAPES = sorted({(C_in, H, W, groups, stride)
                      for model in ("resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d")
                      for _, C_in, H, W, _, groups, stride, _ in grouped_conv_shapes(model)})
# the speed targets in both dtypes and both layouts; fp32 in the layout models use on GPUs
REAL_SHAPE_VARIANTS = [(torch.float16, True), (torch.bfloat16, True), (torch.float32, True),
                       (torch.float16, False)]


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("C,H,W,groups,stride", REAL_SHAPES,
                         ids=[f"C{c}-{h}x{w}-g{g}-s{s}" for c, h, w, g, s in REAL_SHAPES])
@pytest.mark.parametrize("dtype,channels_last", REAL_SHAPE_VARIANTS,
                         ids=[f"{str(d)[6:]}-{'nhwc' if cl else 'nchw'}"
                              for d, cl in REAL_SHAPE_VARIANTS])
def test_real_resnext_shapes(backend_device, poison_outputs, C, H, W, groups, stride, dtype,
                             channels_last):
    backend, device = backend_device
    if device != "cuda":
        pytest.skip("real shapes run on the GPU only")
    x, w, scale, shift, bn = make_case(C // groups, groups, dtype, device, channels_last,
                                       C + H + stride, H=H, W=W)
    run_and_check(backend, device, x, w, scale, shift, bn, poison_outputs, stride=stride,
                  groups=groups)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("channels_last,groups", [(False, 32), (True, 16)],
                         ids=["nchw", "nhwc-cpg4"])  # nhwc cpg 4: the CUDA v3 kernel
def test_64bit_offsets(backend_device, channels_last, groups):
    """More than 2^31 input elements: offsets must not wrap."""
    backend, device = backend_device
    if device != "cuda":
        pytest.skip("runs on the GPU only (tensors of 4.6 GB)")
    N, C, H, W = 4, 64, 3000, 3000  # 2.3e9 elements per tensor (4.6 GB in fp16): past 2^31
    g = seeded(7)
    x = torch.empty(N, C, H, W, dtype=torch.float16, device=device).normal_(generator=None)
    x = channels_last_if(x, channels_last)
    w = (torch.randn(C, C // groups, 3, 3, generator=g) / 4).half().to(device)
    scale = torch.rand(C, generator=g).to(device) + 0.5
    shift = torch.randn(C, generator=g).to(device)
    y = rk.grouped_conv_bn_relu(x, w, scale, shift, groups=groups, backend=backend)
    last = x[-1:, :, -8:, -8:]
    ref = torch.relu(F.conv2d(last.double(), w.double(), None, 1, 1, 1, groups)
                     * scale.double().view(-1, 1, 1) + shift.double().view(-1, 1, 1))
    # interior of the corner patch (its border sees padding that the full tensor does not)
    torch.testing.assert_close(y[-1:, :, -7:-1, -7:-1].double(), ref[:, :, 1:-1, 1:-1],
                               **tolerance(torch.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("cpg", [4, 8, 16, 32, 64])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_v3_and_v2_agree_on_the_gpu(poison_outputs, monkeypatch, cpg, stride, dtype):
    """The calls CUDA v3 takes (channels_last fp16/bf16, C a multiple of 64, cpg 4 to 64), run
    with v3 and with v2 (RESNEXT_KERNELS_CUDA_V3=0), both against the float64 reference: on the
    GPU, where the emulator's model of ldmatrix and mma.sync meets the hardware."""
    ok, reason = rk.backends.backend_status("cuda", "cuda")
    if not ok:
        pytest.skip(f"cuda on cuda: {reason}")
    groups = 128 // cpg
    x, w, scale, shift, bn = make_case(cpg, groups, dtype, "cuda", True, 4400 + cpg + stride,
                                       N=3, H=29, W=31)
    for v3 in ("1", "0"):
        monkeypatch.setenv("RESNEXT_KERNELS_CUDA_V3", v3)
        run_and_check("cuda", "cuda", x, w, scale, shift, bn, poison_outputs, stride=stride,
                      groups=groups)


def v3_grid_size(call, tmp_path):
    """The grid (x) of the v3 kernel that one call launched, from the profiler's trace: the
    glue's planner is observable only so."""
    import json
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    kernels = [e for e in json.loads(trace.read_text())["traceEvents"]
               if e.get("cat") == "kernel"]
    grids = [e["args"]["grid"] for e in kernels if "grouped_conv_bn_relu_v3" in e["name"]]
    assert len(grids) == 1, [(e["name"], e.get("args")) for e in kernels]
    grid = grids[0]  # Kineto writes [x, y, z]
    return int(grid[0] if isinstance(grid, list) else str(grid).strip("[]()").split(",")[0])


@pytest.mark.gpu
@pytest.mark.parametrize("cpg", [8, 32])
def test_cuda_v3_smaller_bands_on_the_gpu(poison_outputs, monkeypatch, tmp_path, cpg):
    """RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS (the benchmark's cuda_v3_band* providers): v3 with
    bands of at most 16, 64 and 128 output pixels, against float64; the grid grows as the bands
    shrink (29x31 outputs: 29, 15 and 8 bands per image, against 4 (cpg 8) or 5 (cpg 32, its
    weights in shared memory too) by default), so the variable reaches the planner; a value
    outside 16..256 is refused with the variable's name."""
    ok, reason = rk.backends.backend_status("cuda", "cuda")
    if not ok:
        pytest.skip(f"cuda on cuda: {reason}")
    groups = 128 // cpg
    for stride in (1, 2):
        x, w, scale, shift, bn = make_case(cpg, groups, torch.float16, "cuda", True,
                                           4500 + cpg + stride, N=3, H=29, W=31)
        for pixels in ("16", "64", "128"):
            monkeypatch.setenv("RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS", pixels)
            run_and_check("cuda", "cuda", x, w, scale, shift, bn, poison_outputs,
                          stride=stride, groups=groups)
    grids = {}
    for pixels in ("16", "64", "128", None):  # stride 1: W_out 31
        if pixels is None:
            monkeypatch.delenv("RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS")
        else:
            monkeypatch.setenv("RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS", pixels)
        grids[pixels] = v3_grid_size(lambda: rk.grouped_conv_bn_relu(
            x, w, scale, shift, groups=groups, backend="cuda"), tmp_path)
    tiles = 2 * 3  # 64-channel tiles x images
    assert grids == {"16": 29 * tiles, "64": 15 * tiles, "128": 8 * tiles,
                     None: (4 if cpg == 8 else 5) * tiles}
    for bad in ("300", "8", "64px"):
        monkeypatch.setenv("RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS", bad)
        with pytest.raises(RuntimeError, match="RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS"):
            rk.grouped_conv_bn_relu(x, w, scale, shift, groups=groups, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("config_index", range(8))
def test_triton_every_launch_config(poison_outputs, monkeypatch, config_index):
    """Each autotune configuration, forced in turn (the GPU plan's tests run one fixed one, with
    RESNEXT_KERNELS_TRITON_AUTOTUNE=0, and the benchmark lets autotuning choose), on every tile
    path, with partial tiles (N*H*W = 189 output rows at stride 1)."""
    if not torch.cuda.is_available():
        pytest.skip("launch configurations exist on the GPU only")
    import importlib
    mod = importlib.import_module("resnext_kernels.backends.triton.grouped_conv_bn_relu")
    if config_index >= len(mod._GPU_CONFIGS):
        pytest.skip(f"there are {len(mod._GPU_CONFIGS)} configurations")
    monkeypatch.setenv("RESNEXT_KERNELS_TRITON_AUTOTUNE", "0")
    monkeypatch.setattr(mod, "_FIXED_GPU_CONFIG", mod._GPU_CONFIGS[config_index])
    for cpg, stride, channels_last, dtype in ((4, 1, True, torch.float16), (8, 2, False, torch.bfloat16),
                                              (16, 1, True, torch.float16), (32, 2, True, torch.bfloat16),
                                              (64, 1, False, torch.float16), (3, 1, True, torch.float32)):
        x, w, scale, shift, bn = make_case(cpg, 4, dtype, "cuda", channels_last, 200 + cpg, N=3)
        run_and_check("triton", "cuda", x, w, scale, shift, bn, poison_outputs, stride=stride,
                      groups=4)


@pytest.mark.gpu
def test_triton_autotuning_holds_no_memory(monkeypatch):
    """Autotuning new shapes leaves no GPU memory held once their outputs are gone. Under
    compute-sanitizer on the H200 (2026-11-26) autotuning filled all 139 GiB (the failed
    allocation: Triton's 256 MiB benchmarking buffer), so each of these 3 new shapes x 8
    configurations would hold up to 256 MiB if that happens without the sanitizer too."""
    if not torch.cuda.is_available():
        pytest.skip("autotuning runs on the GPU only")
    import gc
    monkeypatch.setenv("RESNEXT_KERNELS_TRITON_AUTOTUNE", "1")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for H in (11, 13, 17):  # shapes no other test autotunes
        x, w, scale, shift, _ = make_case(8, 4, torch.float16, "cuda", True, 300 + H, N=1, H=H,
                                          W=H + 2)
        rk.grouped_conv_bn_relu(x, w, scale, shift, groups=4, backend="triton")
        del x, w, scale, shift
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - before
    gc.collect()
    after_gc = torch.cuda.memory_allocated() - before
    assert held < 64 * 2**20, (f"{held / 2**20:.0f} MiB held after autotuning 3 shapes "
                               f"({after_gc / 2**20:.0f} MiB after gc.collect())")


def test_triton_64bit_index_path(poison_outputs, monkeypatch):
    """The INDEX_64 specialisation (used past 2^31 elements), forced on a small case."""
    from resnext_kernels import backends
    if not backends.backend_status("triton", "cpu")[0] and not torch.cuda.is_available():
        pytest.skip("triton unavailable")
    import importlib
    mod = importlib.import_module("resnext_kernels.backends.triton.grouped_conv_bn_relu")
    monkeypatch.setattr(mod, "INDEX_32_LIMIT", 0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, w, scale, shift, bn = make_case(8, 4, torch.float16, device, True, 131)
    run_and_check("triton", device, x, w, scale, shift, bn, poison_outputs, stride=2, groups=4)

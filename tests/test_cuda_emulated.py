"""The CUDA kernels, run on the CPU by the host-side CUDA emulator (tests/cuda_emulator.py).

The same kernel sources that nvcc builds into resnext_kernels._C, compiled as C++ with ASan and
UBSan and run one OS thread per CUDA thread, against the float64 references of
test_grouped_conv_bn_relu.py and test_squeeze_excite.py, with poisoned (NaN) outputs, shared
memory and workspaces. The racecheck tests run a representative case of every path under
ThreadSanitizer (cuda_emulator.SANITIZERS). On a GPU the same cases run for real in those files (backend "cuda").

Skips when there is no C++ compiler, or on a machine with a GPU (where the real kernels run),
unless RESNEXT_KERNELS_REQUIRE_EMULATOR=1 (CI sets it).
"""

import os

import pytest
import torch

import cuda_emulator
from conftest import channels_last_if, seeded, tolerance
from resnext_kernels import relu_mask
from test_grouped_conv_bn_relu import make_case, reference
from test_squeeze_excite import make_case as make_se_case
from test_squeeze_excite import check_non_finite, non_finite_case
from test_squeeze_excite import reference as se_reference

# torch-independent (the kernels run as C++): CI runs these in one of its environments only
pytestmark = pytest.mark.emulator

HALF_TYPES = (torch.float16, torch.bfloat16)


@pytest.fixture(scope="module")
def emulator():
    required = os.environ.get("RESNEXT_KERNELS_REQUIRE_EMULATOR") == "1"
    if torch.cuda.is_available() and not required:
        pytest.skip("a GPU is here: the real kernels run in the backend tests instead")
    if cuda_emulator.compiler() is None:
        if required:
            pytest.fail("RESNEXT_KERNELS_REQUIRE_EMULATOR=1 but there is no C++ compiler")
        pytest.skip("no C++ compiler for the CUDA emulator")
    return cuda_emulator.build()


def conv_and_check(emulator, x, w, scale, shift, bn, *, groups, stride=1, padding=1,
                   dilation=1, relu=True, expect_path, allow_tf32=False, **kwargs):
    # the WMMA (v2) tests keep v2 on calls v3 would take (RESNEXT_KERNELS_CUDA_V3=0), so v2 stays
    # verified on its whole domain: it runs NCHW, fp32/TF32, cpg 1/2/32/64 and unaligned calls
    kwargs.setdefault("allow_v3", not expect_path.startswith("path wmma"))
    y, report = cuda_emulator.grouped_conv_bn_relu(
        emulator, x, w, scale, shift, stride=stride, padding=padding, dilation=dilation,
        groups=groups, relu=relu, allow_tf32=allow_tf32, **kwargs)
    assert report.startswith(expect_path), f"expected the {expect_path} path, ran: {report}"
    ref = reference(x, w, bn, stride, padding, dilation, groups, relu)
    tol_key = "tf32" if allow_tf32 and x.dtype == torch.float32 else x.dtype
    torch.testing.assert_close(y.double(), ref, **tolerance(tol_key))
    return y, report


# --- the emulator itself: each broken kernel must fail, the correct one must pass -------------

def test_emulator_runs_a_correct_kernel(emulator):
    assert cuda_emulator.selftest(emulator, "warp_sum").split() == ["496", "1520"]


@pytest.mark.parametrize("name,message", [
    ("divergent_syncthreads", "divergent barrier"),
    ("out_of_bounds_read", "heap-buffer-overflow"),
    ("shared_overflow", "heap-buffer-overflow"),
    ("too_much_shared_memory", "invalid argument"),
    # the sm_80 PTX stand-ins (csrc/emulation/ptx.h)
    ("ptx_gemm_f16_no_wait", "cp.async copies still in flight"),
    ("ptx_gemm_f16_global_destination", "destination is not inside the block's shared memory"),
    ("ptx_gemm_f16_misaligned_row", "ldmatrix: row address not 16-byte aligned"),
    ("ptx_gemm_f16_half_warp_mma", "different warp-collective matrix instructions"),
    ("misaligned_vector_store", "st.global.v4: destination not 16-byte aligned"),
    ("misaligned_vector_load", "ld.global.v4: source not 16-byte aligned"),
    ("misaligned_shared_store", "st.shared.v4: destination not 16-byte aligned"),
    ("global_shared_store", "st.shared.v4: the destination is not inside the block's shared memory"),
    ("misaligned_shared_load", "ld.shared.v4: source not 16-byte aligned"),
    ("global_shared_load", "ld.shared.v4: the source is not inside the block's shared memory"),
    # a register layout the kernel gets wrong gives wrong numbers, as on a GPU
    ("ptx_gemm_bf16_swapped_fragment", "wrong 183 of 256"),
])
def test_emulator_catches_broken_kernels(emulator, name, message):
    with pytest.raises(cuda_emulator.EmulatorError) as info:
        cuda_emulator.selftest(emulator, name)
    assert message in info.value.output


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("b_layout", ["", "_btrans"])
def test_ptx_stand_ins_follow_the_documented_register_layouts(emulator, dtype, b_layout):
    """cp.async -> ldmatrix (.x4 for A; .x2 or .x2.trans for B) -> mma.sync m16n8k16 and
    m16n8k8, accumulators stored by the PTX ISA's fragment layout, against an exact host
    reference: the emulator's layouts are the documented ones, so kernels written against
    them put the right element in each register on a GPU too."""
    assert cuda_emulator.selftest(emulator, f"ptx_gemm_{dtype}{b_layout}").split() == [
        "wrong", "0", "of", "256"]


# --- grouped conv + BN + ReLU: the tensor-core path -----------------------------------------

# cpg -> the channel slab the WMMA kernel uses (cpg < 16: 16 / cpg groups packed per slab).
WMMA_BLOCK_CHANNELS = {1: 16, 2: 16, 4: 16, 8: 16, 16: 16, 32: 32, 64: 64}


@pytest.mark.parametrize("cpg", sorted(WMMA_BLOCK_CHANNELS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
def test_wmma_matches_conv_bn_relu(emulator, cpg, stride, channels_last, dtype):
    bc = WMMA_BLOCK_CHANNELS[cpg]
    groups = 2 * bc // cpg  # two channel slabs
    seed = 7000 + cpg * 10 + stride + 100 * channels_last + 1000 * HALF_TYPES.index(dtype)
    x, w, scale, shift, bn = make_case(cpg, groups, dtype, "cpu", channels_last, seed,
                                       N=2, H=6, W=5)
    conv_and_check(emulator, x, w, scale, shift, bn, groups=groups, stride=stride,
                   expect_path=f"path wmma block_channels {bc}")


@pytest.mark.parametrize("cpg", [4, 32, 64])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_fp32_follows_allow_tf32(emulator, cpg, stride, channels_last):
    """fp32 with TF32 allowed takes the tensor-core path (TF32, K = 8); without, the direct
    kernel in full fp32 (checked against the fp32 row of the tolerance table)."""
    bc = WMMA_BLOCK_CHANNELS[cpg]
    groups = bc // cpg
    x, w, scale, shift, bn = make_case(cpg, groups, torch.float32, "cpu", channels_last,
                                       8050 + cpg + stride, N=1, H=5, W=6)
    conv_and_check(emulator, x, w, scale, shift, bn, groups=groups, stride=stride,
                   allow_tf32=True, expect_path=f"path wmma block_channels {bc}")
    conv_and_check(emulator, x, w, scale, shift, bn, groups=groups, stride=stride,
                   allow_tf32=False, expect_path="path direct")


@pytest.mark.parametrize("stride", [1, 2])
def test_wmma_several_tiles_and_partial_tiles(emulator, stride):
    """Outputs span 3 tiles along W (16 wide) and 3 along H (4 high), the last ones partial."""
    x, w, scale, shift, bn = make_case(4, 8, torch.float16, "cpu", True, 8100 + stride,
                                       N=1, H=11 * stride, W=35 * stride)
    conv_and_check(emulator, x, w, scale, shift, bn, groups=8, stride=stride,
                   expect_path="path wmma block_channels 16")


@pytest.mark.parametrize("relu", [True, False])
def test_wmma_relu_off_and_batch_one(emulator, relu):
    x, w, scale, shift, bn = make_case(8, 4, torch.bfloat16, "cpu", True, 8200 + relu, N=1)
    y, _ = conv_and_check(emulator, x, w, scale, shift, bn, groups=4, relu=relu,
                          expect_path="path wmma")
    if not relu:
        assert (y < 0).any()


def test_wmma_misaligned_and_strided_inputs(emulator):
    """A channels_last x that is not 16-byte aligned, and a strided view: the scalar-load path."""
    x, w, scale, shift, bn = make_case(16, 2, torch.float16, "cpu", True, 8300)
    conv_and_check(emulator, x, w, scale, shift, bn, groups=2, x_lead_elems=1,
                   expect_path="path wmma block_channels 16")
    big, w, scale, shift, bn = make_case(16, 2, torch.float16, "cpu", True, 8301, H=12, W=10)
    view = big[:, :, ::2, 1::2]
    assert not view.is_contiguous() and not view.is_contiguous(memory_format=torch.channels_last)
    conv_and_check(emulator, view, w, scale, shift, bn, groups=2,
                   expect_path="path wmma block_channels 16")


def test_wmma_weights_with_any_strides(emulator):
    x, w, scale, shift, bn = make_case(4, 8, torch.float16, "cpu", True, 8400)
    w_view = w.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels_last weights
    assert not w_view.is_contiguous()
    conv_and_check(emulator, x, w_view, scale, shift, bn, groups=8, expect_path="path wmma")


def test_wmma_nan_stays_within_its_slab(emulator):
    """A NaN input poisons the outputs it feeds; block-diagonal packing means the other groups
    of its 16-channel slab see 0 * NaN = NaN as well (documented), and nothing else does."""
    x, w, scale, shift, bn = make_case(4, 8, torch.float16, "cpu", True, 8500, N=2, H=7, W=7)
    x[0, 5, 3, 3] = float("nan")  # channel 5: group 1, slab 0 (channels 0-15)
    y, _ = cuda_emulator.grouped_conv_bn_relu(emulator, x, w, scale, shift, groups=8)
    ref = reference(x, w, bn, 1, 1, 1, 8, True)
    assert torch.isnan(y[ref.isnan()]).all(), "every output the reference makes NaN is NaN"
    assert torch.isnan(y[0, :16, 2:5, 2:5]).all()
    assert not torch.isnan(y[0, 16:]).any() and not torch.isnan(y[1]).any()
    assert not torch.isnan(y[0, :, 5:]).any()


# --- grouped conv + BN + ReLU: v3 (mma.sync, channels_last fp16/bf16, cpg 4 to 64) -----------

V3_CPG = (4, 8, 16, 32, 64)  # 32/64: the wide kernel (weights in shared memory)


def v3_cases():
    """(cpg, stride, dtype): every pair for the cpg 4/8/16 kernel; for the wide kernel (cpg
    32/64), whose emulation is the slowest, each cpg with both strides and both dtypes, each
    dtype with both strides (pairwise: dtype and stride are independent template parameters)."""
    cases = [(cpg, stride, dtype) for cpg in V3_CPG[:3] for stride in (1, 2)
             for dtype in HALF_TYPES]
    cases += [(32, 1, torch.float16), (32, 2, torch.bfloat16),
              (64, 1, torch.bfloat16), (64, 2, torch.float16)]
    return cases


@pytest.mark.parametrize("cpg,stride,dtype", v3_cases(),
                         ids=[f"cpg{c}-s{s}-{str(d)[6:]}" for c, s, d in v3_cases()])
def test_v3_matches_conv_bn_relu(emulator, cpg, stride, dtype):
    """Two 64-channel tiles, odd sizes; at stride 2 an odd input width (the last column's
    halo is padding). cpg 32/64: 7x13 output pixels, 6 m16 tiles, so two warps run pairs of
    tiles (m, m + 4: sharing B fragments) and two run single ones."""
    groups = 128 // cpg
    H, W = (7, 9) if stride == 1 else (9, 7)
    if cpg >= 32:
        H, W = (7, 13) if stride == 1 else (13, 25)
    seed = 12000 + cpg * 10 + stride + 1000 * HALF_TYPES.index(dtype)
    x, w, scale, shift, bn = make_case(cpg, groups, dtype, "cpu", True, seed, N=2, H=H, W=W)
    conv_and_check(emulator, x, w, scale, shift, bn, groups=groups, stride=stride,
                   expect_path="path v3")


@pytest.mark.parametrize("stride", [1, 2])
def test_v3_several_bands_and_batch_one(emulator, stride):
    """W_out 40: bands of 6 rows at most (256 pixels), so H_out 16 is bands of 6, 6 and a
    short last one of 4; each band's last m16 tile is partial (240 and 160 pixels)."""
    x, w, scale, shift, bn = make_case(8, 8, torch.float16, "cpu", True, 12100 + stride,
                                       N=1, H=16 * stride, W=40 * stride)
    conv_and_check(emulator, x, w, scale, shift, bn, groups=8, stride=stride,
                   expect_path="path v3")


@pytest.mark.parametrize("cpg,stride,band_pixels,rows", [
    (8, 1, 16, 1), (8, 2, 64, 3), (4, 1, 128, 6), (32, 2, 64, 3), (8, 1, 256, 11)])
def test_v3_smaller_bands(emulator, cpg, stride, band_pixels, rows):
    """RESNEXT_KERNELS_CUDA_V3_BAND_PIXELS (the GPU plan's band sweep): W_out 19, H_out 11.
    16 pixels is less than one row: bands of one row. 64: at most 3 rows, so 4 bands of 3, 3,
    3, 2. 128: at most 6, so 2 even bands of 6 and 5. 256: one band of all 11 rows (v3's own
    plan). Each checked against float64, poisoned output."""
    groups = 128 // cpg
    x, w, scale, shift, bn = make_case(cpg, groups, torch.float16, "cpu", True,
                                       12300 + band_pixels + cpg, N=2, H=11 * stride,
                                       W=19 * stride)
    _, report = conv_and_check(emulator, x, w, scale, shift, bn, groups=groups, stride=stride,
                               expect_path="path v3", v3_band_pixels=band_pixels)
    assert report.endswith(f"v3_band_rows {rows}"), report


@pytest.mark.parametrize("relu", [True, False])
def test_v3_relu_off(emulator, relu):
    x, w, scale, shift, bn = make_case(16, 4, torch.bfloat16, "cpu", True, 12200 + relu, N=1)
    y, _ = conv_and_check(emulator, x, w, scale, shift, bn, groups=4, relu=relu,
                          expect_path="path v3")
    if not relu:
        assert (y < 0).any()


@pytest.mark.parametrize("cpg", V3_CPG)
def test_v3_non_finite_inputs_stay_in_their_group(emulator, cpg):
    """NaN and +-inf reach exactly the outputs they reach in nn.Conv2d: at cpg 4 two groups
    share an MMA (block-diagonal weights), and each group's MMA sees the other's inputs as 0."""
    groups = 64 // cpg
    x, w, scale, shift, bn = make_case(cpg, groups, torch.float16, "cpu", True, 12300 + cpg,
                                       N=2, H=7, W=7)
    x[0, 5, 3, 3] = float("nan")   # group 1 at cpg 4 (paired with group 0), group 0 otherwise
    x[0, 2, 1, 5] = float("inf")
    x[1, 9, 0, 0] = float("-inf")
    y, report = cuda_emulator.grouped_conv_bn_relu(emulator, x, w, scale, shift, groups=groups)
    assert report.startswith("path v3")
    ref = reference(x, w, bn, 1, 1, 1, groups, True)
    assert torch.equal(y.isnan(), ref.isnan())
    assert torch.equal(y.isinf(), ref.isinf())
    finite = ref.isfinite()
    torch.testing.assert_close(y.double()[finite], ref[finite], **tolerance(torch.float16))


# --- the ReLU mask for the backward (params.h: GroupedConvParams::relu_mask) ---------------

def check_mask(emulator, x, w, scale, shift, bn, *, groups, stride=1, expect_path, relu=True,
               **kwargs):
    """The masked launch's y matches float64 and its mask is its own y's, bit for bit
    (relu_mask.from_output: 0 past the last pixel), whatever the 0xff bytes it started as."""
    kwargs.setdefault("allow_v3", not expect_path.startswith("path wmma"))
    y, mask, report = cuda_emulator.grouped_conv_bn_relu_masked(
        emulator, x, w, scale, shift, stride=stride, groups=groups, relu=relu, **kwargs)
    assert report.startswith(expect_path), report
    ref = reference(x, w, bn, stride, 1, 1, groups, relu)
    finite = ref.isfinite()
    torch.testing.assert_close(y.double()[finite], ref[finite], **tolerance(x.dtype))
    expected = relu_mask.from_output(y) if relu else torch.empty((0, y.shape[1]),
                                                                 dtype=torch.uint8)
    assert mask.shape == expected.shape
    assert torch.equal(mask, expected), (mask != expected).nonzero()[:8]
    return y, mask, report


@pytest.mark.parametrize("cpg,stride,dtype", v3_cases(),
                         ids=[f"cpg{c}-s{s}-{str(d)[6:]}" for c, s, d in v3_cases()])
def test_v3_epilogue_writes_the_mask(emulator, cpg, stride, dtype):
    """3 images of 7x5 output pixels (35: every image boundary splits a mask byte) in bands of
    3 rows (15 pixels; cpg 32/64: 4 rows, 20 pixels), so every band boundary splits a byte
    too: those bytes are merged from two units' bits by atomics."""
    groups = 128 // cpg
    seed = 12400 + cpg * 10 + stride + 1000 * HALF_TYPES.index(dtype)
    x, w, scale, shift, bn = make_case(cpg, groups, dtype, "cpu", True, seed, N=3, H=7 * stride,
                                       W=5 * stride)
    _, _, report = check_mask(emulator, x, w, scale, shift, bn, groups=groups, stride=stride,
                              expect_path="path v3", v3_band_pixels=16 if cpg < 32 else 32)
    assert report.endswith("v3_band_rows 3" if cpg < 32 else "v3_band_rows 4"), report


@pytest.mark.parametrize("band_pixels", [16, 64, 256])
def test_v3_mask_with_nan_outputs_and_one_band(emulator, band_pixels):
    """NaN outputs pass the gradient (bit 1), as torch's ReLU backward lets them; whole-image
    bands (256) and their last byte's bits past the last pixel (0)."""
    x, w, scale, shift, bn = make_case(8, 8, torch.float16, "cpu", True, 12500 + band_pixels,
                                       N=2, H=9, W=7)
    x[1, 3, 4, 4] = float("nan")
    y, mask, _ = check_mask(emulator, x, w, scale, shift, bn, groups=8, expect_path="path v3",
                            v3_band_pixels=band_pixels)
    assert y.isnan().any() and (2 * 9 * 7) % 8 != 0


@pytest.mark.parametrize("case", ["direct-fp32", "wmma-nchw", "wmma-cpg16", "relu-off"])
def test_mask_read_back_from_y_on_the_other_paths(emulator, case):
    """The direct and WMMA kernels' calls get the mask from one more pass over y."""
    dtype = torch.float32 if case == "direct-fp32" else torch.float16
    cpg, groups = (16, 4) if case in ("wmma-cpg16", "relu-off") else (4, 4)
    x, w, scale, shift, bn = make_case(cpg, groups, dtype, "cpu", case != "wmma-nchw",
                                       12600 + len(case), N=3, H=5, W=3)
    expect = "path direct" if case == "direct-fp32" else ("path v3" if case == "relu-off"
                                                          else "path wmma")
    check_mask(emulator, x, w, scale, shift, bn, groups=groups, expect_path=expect,
               relu=case != "relu-off", allow_v3=case == "relu-off")


def test_v3_leaves_other_calls_to_v2(emulator):
    """C not a multiple of 64, cpg 2: v2; fp32: the direct kernel (TF32 off)."""
    x, w, scale, shift, bn = make_case(8, 4, torch.bfloat16, "cpu", True, 12402)
    conv_and_check(emulator, x, w, scale, shift, bn, groups=4, expect_path="path wmma",
                   allow_v3=True)
    x, w, scale, shift, bn = make_case(2, 32, torch.float16, "cpu", True, 12403, N=1, H=4, W=4)
    conv_and_check(emulator, x, w, scale, shift, bn, groups=32, expect_path="path wmma",
                   allow_v3=True)
    x, w, scale, shift, bn = make_case(8, 8, torch.float32, "cpu", True, 12404, N=1)
    conv_and_check(emulator, x, w, scale, shift, bn, groups=8, expect_path="path direct",
                   allow_v3=True)


# --- v3 in NCHW: channel planes, and x packed where it has neither chunks nor rows ----------

def v3_nchw_cases():
    """(cpg, stride, dtype): every cpg at both strides, the dtypes alternating."""
    return [(cpg, stride, HALF_TYPES[(i + stride) % 2]) for i, cpg in enumerate(V3_CPG)
            for stride in (1, 2)]


@pytest.mark.parametrize("cpg,stride,dtype", v3_nchw_cases(),
                         ids=[f"cpg{c}-s{s}-{str(d)[6:]}" for c, s, d in v3_nchw_cases()])
def test_v3_reads_and_writes_nchw_by_channel_planes(emulator, cpg, stride, dtype):
    """NCHW x and y: v3 loads x's band by 2-byte loads from channel planes and writes y the same
    way (csrc/kernels/swizzled_band.cuh load_halo_rows_by_planes, grouped_conv_v3.cu
    store_band_by_planes), no layout copy and no workspace past the weights. Two 64-channel
    tiles, odd sizes (input rows of 9 and 7 pixels, so a warp's pixels span several rows and
    the stride-2 lane order meets partial groups of 16), y poisoned; the mask v3's epilogue
    writes is y's own, bit for bit."""
    groups = 128 // cpg
    H, W = (7, 9) if stride == 1 else (9, 7)
    seed = 12700 + cpg * 10 + stride
    x, w, scale, shift, bn = make_case(cpg, groups, dtype, "cpu", False, seed, N=2, H=H, W=W)
    _, _, report = check_mask(emulator, x, w, scale, shift, bn, groups=groups, stride=stride,
                              expect_path="path v3")
    weights = 128 * (9 * cpg + 8) * 2 if cpg >= 32 else 128 // max(cpg, 8) * 32 * (
        12 if cpg <= 8 else 36) * 4
    assert report == f"path v3 block_channels 0 workspace_bytes {weights}", report


@pytest.mark.parametrize("case", ["x-nhwc-y-nchw", "x-nchw-y-nhwc", "x-row-gaps", "x-channels",
                                  "x-off-grid", "x-view"])
def test_v3_packs_only_an_x_without_chunks_or_rows(emulator, case):
    """Each operand on its own: y NCHW behind a channels_last x and a channels_last y behind an
    NCHW x (planes, no copy); NCHW views with contiguous rows, every other row of a larger x and
    128 of 192 channels (planes, no copy); a channels_last x 2 bytes off the 16-byte grid and an
    NCHW view with gaps inside its rows (every other column): packed before v3."""
    channels_last = case in ("x-nhwc-y-nchw", "x-off-grid")
    x, w, scale, shift, bn = make_case(8, 16, torch.float16, "cpu", channels_last,
                                       12800 + len(case), N=2, H=10, W=14)
    kwargs = {}
    if case == "x-view":
        x = x[:, :, ::2, 1::2]
        kwargs["y_channels_last"] = True
    if case == "x-row-gaps":
        x = x[:, :, 1::2]
    if case == "x-channels":
        wider = make_case(8, 24, torch.float16, "cpu", False, 12830, N=2, H=10, W=14)[0]
        wider[:, 32:160] = x
        x = wider[:, 32:160]
    if case == "x-off-grid":
        kwargs["x_lead_elems"] = 1
    if case.endswith("-y-nchw") or case.endswith("-y-nhwc"):
        kwargs["y_channels_last"] = case.endswith("-y-nhwc")
    _, report = conv_and_check(emulator, x, w, scale, shift, bn, groups=16,
                               expect_path="path v3", **kwargs)
    packs = case in ("x-off-grid", "x-view")
    assert report.endswith(" pack x") == packs and report.count("pack") == packs, report


def test_v3_nchw_non_finite_inputs_stay_in_their_group(emulator):
    """The plane loader and store move bits: NaN and +-inf reach exactly the outputs they reach
    in nn.Conv2d."""
    x, w, scale, shift, bn = make_case(4, 16, torch.bfloat16, "cpu", False, 12900, N=2, H=7,
                                       W=7)
    x[0, 5, 3, 3] = float("nan")
    x[1, 9, 0, 0] = float("-inf")
    y, report = cuda_emulator.grouped_conv_bn_relu(emulator, x, w, scale, shift, groups=16)
    assert report.startswith("path v3") and "pack" not in report, report
    ref = reference(x, w, bn, 1, 1, 1, 16, True)
    assert torch.equal(y.isnan(), ref.isnan())
    assert torch.equal(y.isinf(), ref.isinf())
    finite = ref.isfinite()
    torch.testing.assert_close(y.double()[finite], ref[finite], **tolerance(torch.bfloat16))


PLAN_CASES = [  # (cpg, groups, dtype, channels_last, stride, H, W, x_lead_elems, allow_tf32)
    (4, 16, torch.float16, True, 1, 5, 6, 0, False), (4, 16, torch.float16, True, 1, 5, 6, 1, False),
    (8, 8, torch.bfloat16, True, 2, 5, 6, 0, False), (8, 8, torch.bfloat16, False, 2, 5, 6, 0, False),
    (16, 4, torch.float16, True, 1, 3, 300, 0, False), (16, 2, torch.float16, True, 1, 5, 6, 0, False),
    (32, 2, torch.float16, True, 1, 4, 4, 0, False), (2, 32, torch.float16, True, 1, 4, 4, 0, False),
    (64, 1, torch.bfloat16, True, 2, 5, 6, 0, False),
    (64, 1, torch.float16, True, 2, 3, 120, 0, False),  # fits without its 75 KB of weights only
    (8, 8, torch.float32, True, 1, 4, 4, 0, True), (8, 8, torch.float32, True, 1, 4, 4, 0, False),
    (3, 4, torch.float16, True, 1, 4, 4, 0, False), (16, 4, torch.bfloat16, True, 2, 3, 600, 0, False),
    (16, 4, torch.float16, False, 2, 3, 600, 0, False),  # NCHW: the band rule holds staged too
]


@pytest.mark.parametrize("case", PLAN_CASES, ids=[str(i) for i in range(len(PLAN_CASES))])
def test_python_mirror_of_the_cuda_planner(emulator, case):
    """resnext_kernels.backends.cuda_plan (what benchmarks record as a row's CUDA kernel)
    names the path the C++ planner takes, over each of its rules (the band-size rule: W in
    the hundreds)."""
    from resnext_kernels.backends.cuda_plan import cuda_conv_path

    cpg, groups, dtype, channels_last, stride, H, W, lead, tf32 = case
    x, w, scale, shift, bn = make_case(cpg, groups, dtype, "cpu", channels_last, 12500, N=1,
                                       H=H, W=W)
    for allow_v3 in (True, False):
        _, report = cuda_emulator.grouped_conv_bn_relu(
            emulator, x, w, scale, shift, stride=stride, groups=groups, x_lead_elems=lead,
            allow_tf32=tf32, allow_v3=allow_v3)
        expected = cuda_conv_path(x, w, (stride, stride), (1, 1), (1, 1), groups,
                                  device_major=9, allow_tf32=tf32, allow_v3=allow_v3)
        assert report.split()[1] == expected, (report, expected)


# --- the direct kernel: everything the tensor-core path does not take -----------------------

@pytest.mark.parametrize("case", [
    dict(cpg=3, groups=2, dtype=torch.float32, channels_last=False, stride=1),
    dict(cpg=4, groups=4, dtype=torch.float32, channels_last=True, stride=2),
    dict(cpg=16, groups=2, dtype=torch.float32, channels_last=True, stride=1),
    dict(cpg=8, groups=2, dtype=torch.float16, channels_last=False, stride=1, dilation=2),
    dict(cpg=128, groups=1, dtype=torch.bfloat16, channels_last=True, stride=1),
    dict(cpg=4, groups=3, dtype=torch.float16, channels_last=True, stride=1),  # C = 12
    dict(cpg=2, groups=5, dtype=torch.float32, channels_last=True, stride=1, cpg_out=6),
    dict(cpg=8, groups=4, dtype=torch.float16, channels_last=True, stride=3),
], ids=["fp32-cpg3", "fp32-nhwc-s2", "fp32-cpg16", "fp16-dil2", "bf16-cpg128",
        "fp16-C12", "fp32-unequal", "fp16-stride3"])
def test_direct_kernel(emulator, case):
    case = dict(case)
    dilation = case.pop("dilation", 1)
    stride = case.pop("stride")
    cpg_out = case.pop("cpg_out", None)
    x, w, scale, shift, bn = make_case(case["cpg"], case["groups"], case["dtype"], "cpu",
                                       case["channels_last"], 9000 + case["cpg"] + stride,
                                       N=2, H=7, W=6, cpg_out=cpg_out)
    conv_and_check(emulator, x, w, scale, shift, bn, groups=case["groups"], stride=stride,
                   padding=dilation, dilation=dilation, expect_path="path direct")


def test_direct_kernel_on_wmma_shapes_and_before_sm80(emulator):
    x, w, scale, shift, bn = make_case(8, 4, torch.bfloat16, "cpu", True, 9100)
    conv_and_check(emulator, x, w, scale, shift, bn, groups=4, force_direct=True,
                   expect_path="path direct")
    conv_and_check(emulator, x, w, scale, shift, bn, groups=4, device_major=7,
                   expect_path="path direct")


def test_direct_kernel_non_contiguous(emulator):
    x, w, scale, shift, bn = make_case(8, 4, torch.float32, "cpu", False, 9200, H=14, W=18)
    x_view = x[:, :, ::2, 1::2]
    w_view = w.transpose(2, 3).contiguous().transpose(2, 3)
    conv_and_check(emulator, x_view, w_view, scale, shift, bn, groups=4, expect_path="path direct")


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("groups", [2, 4], ids=["C32", "C64"])  # C64 fp16: the v3 path
def test_batch_zero_launches_nothing(emulator, dtype, groups, channels_last):
    x, w, scale, shift, bn = make_case(16, groups, dtype, "cpu", channels_last, 9300, N=0)
    y, _ = cuda_emulator.grouped_conv_bn_relu(emulator, x, w, scale, shift, groups=groups)
    assert y.shape == (0, 16 * groups, 7, 9)


# --- squeeze-and-excitation --------------------------------------------------------------

def se_check(emulator, u, w1, b1, w2, b2, res, relu):
    out = cuda_emulator.squeeze_excite(emulator, u, w1, b1, w2, b2, residual=res, relu=relu)
    torch.testing.assert_close(out.double(), se_reference(u, w1, b1, w2, b2, res, relu),
                               **tolerance(u.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, *HALF_TYPES], ids=str)
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("tail", ["plain", "residual_relu"])
def test_squeeze_excite(emulator, dtype, channels_last, tail):
    residual = tail == "residual_relu"
    seed = 9400 + 10 * channels_last + residual
    u, w1, b1, w2, b2, res = make_se_case(2, 40, 5, 6, 8, dtype, "cpu", channels_last, seed,
                                          residual=residual)
    se_check(emulator, u, w1, b1, w2, b2, res, relu=residual)


@pytest.mark.parametrize("N,C,H,W,R,bias", [
    (1, 37, 3, 11, 5, False),   # odd C and R, no biases
    (3, 16, 1, 1, 4, True),     # 1x1 spatial
    (1, 96, 9, 9, 24, True),    # several 32-channel squeeze blocks, H*W > warp
])
def test_squeeze_excite_shapes(emulator, N, C, H, W, R, bias):
    u, w1, b1, w2, b2, res = make_se_case(N, C, H, W, R, torch.float16, "cpu", True, 9500 + C,
                                          bias=bias, residual=True)
    se_check(emulator, u, w1, b1, w2, b2, res, relu=True)


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_squeeze_excite_several_scale_tiles(emulator, channels_last):
    """More than one tile of the scale kernel along both grid axes: C = 300 spans two
    256-channel tiles (channels_last) or ten 32-channel ones (NCHW), H*W = 289 pixels span
    19 16-pixel tiles or two 256-pixel ones, each with a partial last tile."""
    u, w1, b1, w2, b2, res = make_se_case(2, 300, 17, 17, 8, torch.float16, "cpu",
                                          channels_last, 9550, residual=True)
    se_check(emulator, u, w1, b1, w2, b2, res, relu=True)


@pytest.mark.parametrize("N,C,R", [
    (10, 70, 37),  # the excite's blocks: 8 images + 2, 32 rows + a partial warp (R 37, C 70)
    (17, 33, 66),  # three image blocks; R > C (K = 33 in the gate launch: one lane past 32)
    (9, 1100, 12),  # the hidden sum in three 512-channel splits, the last partial
])
def test_squeeze_excite_excite_blocks(emulator, N, C, R):
    """The batched excite launches: image blocks of 8 with a partial last one, row blocks of 32
    with a partial last warp (rows past J compute on zero weights and are never stored), and
    the hidden layer's partial sums over 512-channel splits of C."""
    u, w1, b1, w2, b2, res = make_se_case(N, C, 3, 2, R, torch.float32, "cpu", True, 9580 + N,
                                          residual=True)
    se_check(emulator, u, w1, b1, w2, b2, res, relu=True)


@pytest.mark.parametrize("case,expect", [
    ("nhwc", "chunked"),             # C 40: five 8-channel chunks per pixel
    ("nhwc_fp32", "chunked"),        # C 40: ten 4-channel chunks
    ("nhwc_many_chunks", "chunked"),  # C 2056 fp16: 257 chunks, two channel tiles of the scale
    ("nhwc_large_hw", "chunked"),    # 13 x 13 pixels: the squeeze's four-loads-at-once loop
    ("nhwc_fp32_large_hw", "chunked"),
    ("nhwc_odd_c", "elementwise"),   # C 36 fp16: not a whole number of 8-channel chunks
    ("nhwc_padded", "elementwise"),  # u's pixels 44 halves apart: chunks off 16-byte alignment
    ("nhwc_nchw_residual", "elementwise"),
    ("nchw", "elementwise"),
])
def test_squeeze_excite_paths(emulator, case, expect):
    """The squeeze and scale read and write 16-byte chunks where u, the residual and the output
    allow it, and fall back to an element per access otherwise; both against float64."""
    dtype = torch.float32 if case.startswith("nhwc_fp32") else torch.float16
    C = {"nhwc_many_chunks": 2056, "nhwc_odd_c": 36, "nhwc_large_hw": 16,
         "nhwc_fp32_large_hw": 8}.get(case, 40)
    H, W = {"nhwc_many_chunks": (3, 2), "nhwc_large_hw": (13, 13),
            "nhwc_fp32_large_hw": (12, 11)}.get(case, (5, 7))
    u, w1, b1, w2, b2, res = make_se_case(2, C, H, W, 8, dtype, "cpu", case != "nchw",
                                          9650 + C, residual=True)
    if case == "nhwc_padded":  # a view 4 halves into each pixel of a wider channels_last buffer
        big = torch.randn(2, H, W, C + 4, generator=seeded(9660)).to(dtype)
        big[..., 4:] = u.permute(0, 2, 3, 1)
        u = big[..., 4:].permute(0, 3, 1, 2)
    if case == "nhwc_nchw_residual":
        res = res.contiguous()
    out, path = cuda_emulator.squeeze_excite(emulator, u, w1, b1, w2, b2, residual=res, relu=True,
                                             with_path=True)
    assert path == f"path {expect}"
    torch.testing.assert_close(out.double(), se_reference(u, w1, b1, w2, b2, res, True),
                               **tolerance(dtype))


def test_squeeze_excite_non_finite_stays_in_its_image(emulator):
    """A NaN in image 9 of 17, with C 1040 (three splits of the hidden sum, two image blocks of
    the excite, chunked squeeze and scale): image 9's output is NaN, no other image's is."""
    u, w1, b1, w2, b2, res = make_se_case(17, 1040, 2, 2, 16, torch.bfloat16, "cpu", True, 9690,
                                          residual=True)
    u[9, 700, 1, 0] = float("nan")
    out = cuda_emulator.squeeze_excite(emulator, u, w1, b1, w2, b2, residual=res, relu=True)
    assert torch.isnan(out[9]).all()
    others = torch.cat([out[:9], out[10:]])
    assert not torch.isnan(others).any()
    torch.testing.assert_close(out.double(), se_reference(u, w1, b1, w2, b2, res, True),
                               equal_nan=True, **tolerance(torch.bfloat16))


def test_squeeze_excite_batch_zero(emulator):
    u, w1, b1, w2, b2, _ = make_se_case(0, 16, 3, 3, 4, torch.float16, "cpu", True, 9600)
    out = cuda_emulator.squeeze_excite(emulator, u, w1, b1, w2, b2)
    assert out.shape == u.shape


def test_squeeze_excite_strided_residual(emulator):
    u, w1, b1, w2, b2, _ = make_se_case(2, 32, 4, 4, 8, torch.bfloat16, "cpu", True, 9700)
    res = channels_last_if(torch.randn(2, 32, 8, 4, generator=seeded(9701)), False)
    res = res.to(torch.bfloat16)[:, :, ::2]  # NCHW-strided view next to a channels_last u
    se_check(emulator, u, w1, b1, w2, b2, res, relu=True)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF_TYPES], ids=str)
def test_squeeze_excite_non_finite(emulator, dtype):
    u, w1, b1, w2, b2, res = non_finite_case(dtype, "cpu")
    out = cuda_emulator.squeeze_excite(emulator, u, w1, b1, w2, b2, residual=res, relu=True)
    check_non_finite(out, u, w1, b1, w2, b2, res)


# --- racecheck: the same kernels under ThreadSanitizer -------------------------------------

@pytest.fixture(scope="module")
def racecheck(emulator):
    """The emulator built with ThreadSanitizer (see cuda_emulator.SANITIZERS)."""
    return cuda_emulator.build("racecheck")


def test_racecheck_catches_a_shared_memory_race(racecheck):
    assert cuda_emulator.selftest(racecheck, "warp_sum").split() == ["496", "1520"]
    with pytest.raises(cuda_emulator.EmulatorError) as info:
        cuda_emulator.selftest(racecheck, "shared_race")
    assert "data race" in info.value.output


@pytest.mark.parametrize("schedule", [None, cuda_emulator.COMPLETER_FIRST], ids=["os", "completer-first"])
def test_racecheck_tells_atomics_from_racing_read_modify_writes(racecheck, emulator, schedule):
    """atomicAnd / atomicOr (the v3 mask's merge of shared bytes): a known answer, no race
    reported; the same bits set by a plain |= race, and racecheck says so, whatever the
    schedule."""
    expected = [str(0xFFFFFFFF), str(0x0000FFFF)]
    assert cuda_emulator.selftest(emulator, "atomic_or", schedule).split() == expected
    assert cuda_emulator.selftest(racecheck, "atomic_or", schedule).split() == expected
    with pytest.raises(cuda_emulator.EmulatorError) as info:
        cuda_emulator.selftest(racecheck, "plain_or", schedule)
    assert "data race" in info.value.output


def test_racecheck_keeps_each_barrier_generation_apart(racecheck, emulator):
    """Two threads set their bits of one word after a __syncthreads. Under the completer-first
    schedule one of them writes and ends the kernel before the other leaves the barrier; when
    all barrier generations shared one TSan sync object, the late thread acquired the early one's
    end of kernel, TSan ordered the two writes, and the race went unreported (stop 36's CI run:
    plain_or passed racecheck once). A barrier's edges now stay within its generation."""
    assert cuda_emulator.selftest(emulator, "race_after_barrier",
                                  cuda_emulator.COMPLETER_FIRST).split() == ["3"]
    with pytest.raises(cuda_emulator.EmulatorError) as info:
        cuda_emulator.selftest(racecheck, "race_after_barrier", cuda_emulator.COMPLETER_FIRST)
    assert "data race" in info.value.output


def test_emulator_refuses_an_unknown_schedule(emulator):
    with pytest.raises(cuda_emulator.EmulatorError) as info:
        cuda_emulator.selftest(emulator, "warp_sum", {"CUDA_EMULATOR_SCHEDULE": "fastest"})
    assert "CUDA_EMULATOR_SCHEDULE" in info.value.output


def test_racecheck_catches_ldmatrix_of_copies_no_barrier_published(racecheck):
    """Each lane waits for its own cp.async copies but no barrier follows, so the ldmatrix rows
    other lanes copied are unordered reads: the warp-collective instruction itself orders no
    memory, in the emulator as in the PTX memory model."""
    assert cuda_emulator.selftest(racecheck, "ptx_gemm_f16").split()[1] == "0"
    with pytest.raises(cuda_emulator.EmulatorError) as info:
        cuda_emulator.selftest(racecheck, "ptx_gemm_f16_no_barrier")
    assert "data race" in info.value.output and "ldmatrix" in info.value.output


@pytest.mark.parametrize("cpg,stride,channels_last,dtype,allow_tf32", [
    (4, 1, True, torch.float16, False),     # packed, 16-channel slab, vector loads/stores
    (8, 2, False, torch.bfloat16, False),   # packed, NCHW scalar loads/stores
    (32, 2, True, torch.bfloat16, False),   # all 9 taps staged at once
    (64, 1, True, torch.float16, False),    # per-tap weight staging, 18 barriers
    (32, 1, False, torch.float32, True),    # TF32
    (3, 1, True, torch.float32, False),     # direct kernel
    (4, 1, True, torch.bfloat16, False),    # v3: paired groups, masked MMAs
    (8, 2, True, torch.float16, False),     # v3: two taps per m16n8k16
    (16, 1, True, torch.float16, False),    # v3: an m16n8k16 per tap and n-tile
    (32, 2, True, torch.float16, False),    # v3 wide: weights in shared memory
    (64, 1, True, torch.bfloat16, False),   # v3 wide
    (8, 2, False, torch.float16, False),    # v3 NCHW: channel planes in and out
], ids=["cpg4", "cpg8-nchw", "cpg32-s2", "cpg64", "tf32", "direct", "v3-cpg4", "v3-cpg8-s2",
        "v3-cpg16", "v3-cpg32-s2", "v3-cpg64", "v3-cpg8-s2-nchw"])
def test_racecheck_grouped_conv(racecheck, request, cpg, stride, channels_last, dtype, allow_tf32):
    groups = max(1, 16 // cpg) if cpg < 16 else 1
    if request.node.callspec.id.startswith("v3"):
        groups = 64 // cpg  # a whole 64-channel tile: v3
    x, w, scale, shift, bn = make_case(cpg, groups, dtype, "cpu", channels_last, 9800 + cpg,
                                       N=1, H=5, W=4)
    y, _ = cuda_emulator.grouped_conv_bn_relu(racecheck, x, w, scale, shift, stride=stride,
                                              groups=groups, allow_tf32=allow_tf32)
    ref = reference(x, w, bn, stride, 1, 1, groups, True)
    tol_key = "tf32" if allow_tf32 else dtype
    torch.testing.assert_close(y.double(), ref, **tolerance(tol_key))


@pytest.mark.parametrize("cpg", [8, 32])
def test_racecheck_v3_mask(racecheck, cpg):
    """The mask's staged reads after the epilogue's barrier, and its merged words."""
    groups = 64 // cpg
    x, w, scale, shift, bn = make_case(cpg, groups, torch.float16, "cpu", True, 9850 + cpg,
                                       N=2, H=5, W=3)
    check_mask(racecheck, x, w, scale, shift, bn, groups=groups, expect_path="path v3",
               v3_band_pixels=16)


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_racecheck_squeeze_excite(racecheck, channels_last):
    u, w1, b1, w2, b2, res = make_se_case(2, 40, 3, 5, 8, torch.float16, "cpu", channels_last,
                                          9900 + channels_last, residual=True)
    out = cuda_emulator.squeeze_excite(racecheck, u, w1, b1, w2, b2, residual=res, relu=True)
    torch.testing.assert_close(out.double(), se_reference(u, w1, b1, w2, b2, res, True),
                               **tolerance(torch.float16))

"""The CUDA emulator's access profiler (csrc/emulation/access_profile.h): known answers on small
kernels written to have them (csrc/emulation/selftest.cpp), block sampling, and the real kernels
still computing the right numbers in the profile build.

Runs wherever the emulator builds (a C++ compiler), GPU or not: the profile is a CPU tool.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

import cuda_emulator
from conftest import tolerance
from test_grouped_conv_bn_relu import make_case, reference
from test_squeeze_excite import make_case as make_se_case
from test_squeeze_excite import reference as se_reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import access_profile  # noqa: E402

# torch-independent (the kernels run as C++): CI runs these in one of its environments only
pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def profiler():
    if cuda_emulator.compiler() is None:
        if os.environ.get("RESNEXT_KERNELS_REQUIRE_EMULATOR") == "1":
            pytest.fail("RESNEXT_KERNELS_REQUIRE_EMULATOR=1 but there is no C++ compiler")
        pytest.skip("no C++ compiler for the CUDA emulator")
    return cuda_emulator.build("profile")


def selftest_profile(binary, name):
    _, launches = cuda_emulator.profile_launches(cuda_emulator.selftest, binary, name)
    assert len(launches) == 1, launches
    return launches[0]


def per_request(tally, cost="wavefronts"):
    return tally[cost] / tally["requests"]


def sites_of(launch, kind):
    return [s[kind] for s in launch["sites"] if kind in s]


def plane_loads(launch):
    """The tallies of a launch's 2-byte warp loads (at most 64 bytes a request): the NCHW
    planes' loads, a lane per pixel."""
    return [t for t in sites_of(launch, "global_load") if t["bytes"] <= 64 * t["requests"]]


def wide_shared_stores(launch):
    """The tallies of a launch's 16-byte warp-wide shared stores (over 256 bytes a request):
    the staged tiles' chunks."""
    return [t for t in sites_of(launch, "shared_store") if t["bytes"] > 256 * t["requests"]]


def test_coalesced_copy_is_4_sectors_per_request(profiler):
    p = selftest_profile(profiler, "profile_coalesced_copy")
    # 64 threads = 2 warps, one load and one store each, 32 floats = 128 bytes = 4 sectors
    assert p["global_load"]["requests"] == 2 and p["global_store"]["requests"] == 2
    assert per_request(p["global_load"], "sectors") == 4
    assert per_request(p["global_store"], "sectors") == 4
    assert p["global_load"]["bytes_used"] == 256
    assert p["shared_load"]["requests"] == 0 and p["barriers_per_block"] == 0


def test_strided_load_is_32_sectors_per_request(profiler):
    p = selftest_profile(profiler, "profile_strided_load")
    assert per_request(p["global_load"], "sectors") == 32  # every lane its own sector
    assert p["global_load"]["bytes_used"] == 256  # of 64 * 32 = 2048 bytes moved
    assert p["global_load_block_unique_sectors"] == 64
    assert per_request(p["global_store"], "sectors") == 4


@pytest.mark.parametrize("ways", [2, 8])
def test_bank_conflicts_cost_one_wavefront_per_way(profiler, ways):
    p = selftest_profile(profiler, f"profile_bank_conflict_{ways}way")
    assert per_request(p["shared_store"]) == ways and p["shared_store"]["ideal"] == 2
    # two load sites per warp: the strided one (`ways` wavefronts) and a broadcast (1)
    loads = sorted(per_request(s) for s in sites_of(p, "shared_load"))
    assert loads == [1, ways]
    assert p["barriers_per_block"] == 1


def test_16_byte_accesses_are_served_per_quarter_warp(profiler):
    p = selftest_profile(profiler, "profile_vector16")
    # 16 lanes x 16 bytes: two quarter-warp phases of 128 bytes, no conflict
    assert p["shared_store"]["requests"] == 1 and p["shared_store"]["wavefronts"] == 2
    assert p["shared_load"]["wavefronts"] == 2 and p["shared_load"]["ideal"] == 2
    assert per_request(p["global_load"], "sectors") == 8  # 256 bytes, 16-byte lanes


def test_st_and_ld_shared_16_are_one_request_of_16_bytes_per_lane(profiler):
    """ptx::st_shared_16 of words selected one by one (wgrad v3's gradient tile, v3's gated
    and plane loaders): one request, as the GPU's STS.128, where the host compiler's own stores
    of such a uint4 were smaller and more; ptx::ld_shared_16 of words then used one by one
    (v3's store into an NCHW y): one request, as LDS.128."""
    p = selftest_profile(profiler, "profile_shared_store16")
    assert p["shared_store"]["requests"] == 1 and p["shared_store"]["wavefronts"] == 2
    assert p["shared_store"]["bytes"] == 256
    assert p["shared_load"]["requests"] == 1 and p["shared_load"]["wavefronts"] == 2
    assert p["shared_load"]["bytes"] == 256


@pytest.mark.parametrize("ldm, wavefronts", [(16, 8), (24, 4)])
def test_ldmatrix_rows_32_bytes_apart_conflict_and_padding_fixes_it(profiler, ldm, wavefronts):
    p = selftest_profile(profiler, f"profile_ldmatrix_ldm{ldm}")
    assert p["ldmatrix"]["requests"] == 1  # one ldmatrix.x4 for a 16x16 fragment
    assert p["ldmatrix"]["wavefronts"] == wavefronts and p["ldmatrix"]["ideal"] == 4


@pytest.mark.parametrize("b_layout, b_wavefronts", [("", 4), ("_btrans", 2)])
def test_cp_async_ldmatrix_and_mma_stand_ins_record_what_they_issue(profiler, b_layout,
                                                                    b_wavefronts):
    p = selftest_profile(profiler, f"ptx_gemm_f16{b_layout}")
    # cp.async: A 32 lanes x 16 bytes (16 sectors), B 16 lanes (8); their shared writes are
    # conflict-free 16-byte stores: 4 and 2 quarter-warp wavefronts
    assert p["global_load"]["requests"] == 2 and p["global_load"]["sectors"] == 24
    assert p["shared_store"]["requests"] == 2 and p["shared_store"]["wavefronts"] == 6
    # ldmatrix: A .x4 with 32-byte rows (2-way conflicts: 8 wavefronts); B .x2 with 32-byte
    # rows (4), or .x2.trans of a [16][8] tile with 16-byte rows (2, conflict-free)
    ld = sorted(per_request(s) for s in sites_of(p, "ldmatrix"))
    assert ld == sorted([8, b_wavefronts])
    assert p["mma_per_block"] == 2  # one m16n8k16, one m16n8k8


@pytest.mark.parametrize("allow_v3, kernel", [(True, "v3"), (False, "wmma")])
def test_conv_kernel_in_the_profile_build_still_computes_the_conv(profiler, allow_v3, kernel):
    """The instrumented build runs the same kernel: all blocks, the right answer."""
    x, w, scale, shift, bn = make_case(4, 16, torch.float16, "cpu", True, 5, N=2, H=9, W=7)
    (y, path), launches = cuda_emulator.profile_launches(
        cuda_emulator.grouped_conv_bn_relu, profiler, x, w, scale, shift, groups=16,
        allow_v3=allow_v3)
    assert path.startswith(f"path {kernel}")
    torch.testing.assert_close(y.double(), reference(x, w, bn, 1, 1, 1, 16, True),
                               **tolerance(torch.float16))
    conv = launches[-1]
    assert len(launches) == 2 and conv["sampled_blocks"] == conv["blocks"]
    assert conv["ldmatrix"]["requests"] > 0 and conv["mma_per_block"] > 0
    for kind in ("global_load", "global_store"):
        assert 0 < conv[kind]["bytes_used"] <= 32 * conv[kind]["sectors"]


def test_se_kernels_in_the_profile_build_still_compute_se(profiler):
    u, w1, b1, w2, b2, res = make_se_case(2, 40, 5, 6, 8, torch.float32, "cpu", True, 7,
                                          residual=True)
    out, launches = cuda_emulator.profile_launches(
        cuda_emulator.squeeze_excite, profiler, u, w1, b1, w2, b2, residual=res, relu=True)
    torch.testing.assert_close(out.double(), se_reference(u, w1, b1, w2, b2, res, True),
                               **tolerance(torch.float32))
    assert len(launches) == 4  # squeeze, excite (hidden, gate), scale


def test_block_sampling_runs_the_first_last_and_evenly_spread_blocks(profiler):
    x, w, scale, shift, _ = make_case(4, 8, torch.float16, "cpu", True, 6, N=1, H=16, W=40)
    full = cuda_emulator.profile_launches(cuda_emulator.grouped_conv_bn_relu, profiler, x, w,
                                          scale, shift, groups=8)[1][-1]
    _, launches = cuda_emulator.profile_launches(
        cuda_emulator.grouped_conv_bn_relu, profiler, x, w, scale, shift, groups=8,
        sample_blocks=3)
    part = launches[-1]
    assert full["blocks"] == part["blocks"] > 3 and part["sampled_blocks"] == 3
    assert full["sampled_blocks"] == full["blocks"]
    # interior blocks are alike: per-request figures hold, counts scale with blocks run
    assert per_request(part["ldmatrix"]) == per_request(full["ldmatrix"])
    assert part["ldmatrix"]["requests"] * full["blocks"] == pytest.approx(
        full["ldmatrix"]["requests"] * 3, rel=0.5)


@pytest.mark.parametrize("channels_last", [True, False])
def test_batchnorm_train_moves_16_byte_vectors_coalesced(profiler, channels_last):
    """csrc/kernels/batchnorm_train.cu in both layouts: every z, y, grad_y and grad_z access of
    the statistics, normalize, sums and grad_z kernels is a 16-byte vector, a warp's request 16
    sectors, as few as its bytes need (channels_last: 4 pixels' 128-byte rows; NCHW: 8 planes'
    64-byte runs); the mask's are 8-byte words, the partials' fp32 rows 4-byte stores, the
    per-channel vectors 16-byte loads; the tile merges' shared accesses 2 wavefronts a 4-byte
    request at most (the merge's reads of its channel's column by 2 ways);
    the launches are the ones compiled_profile names, and the results stay right."""
    import compiled_profile
    import test_cuda_emulated_batchnorm_train as bn

    z, gamma, beta = bn.make_z((2, 64, 8, 16), torch.float16, channels_last, seed=71)
    (y, mask, mean, var, report), forward = cuda_emulator.profile_launches(
        cuda_emulator.batchnorm_train_forward, profiler, z, gamma, beta, bn.EPS, True)
    ref_y, _, _ = bn.reference_forward(z, gamma, beta, bn.EPS, True)
    torch.testing.assert_close(y.double(), ref_y, **tolerance(torch.float16))
    case = bn.make_backward_case((2, 64, 8, 16), torch.float16, channels_last, channels_last,
                                 True, seed=72)
    _, sums = cuda_emulator.profile_launches(cuda_emulator.batchnorm_train_backward_sums,
                                             profiler, *case, bn.EPS)
    grad_y, mask, z, _, _, _ = case
    coef = bn.reference_backward(*case, bn.EPS)[2].float()
    _, grad_z = cuda_emulator.profile_launches(cuda_emulator.batchnorm_train_grad_z, profiler,
                                               grad_y, mask, z, coef)
    for op, launches in (("bn_forward", forward), ("bn_backward_sums", sums),
                         ("bn_grad_z", grad_z)):
        names = compiled_profile.bn_train_launch_kernels(op, "fp16", len(launches))
        assert [l["grid"] for l in launches] == [
            l["grid"] for l in cuda_emulator.launch_shapes(
                profiler, op, N=2, C=64, H=8, W=16, dtype=torch.float16,
                channels_last=channels_last)[1]]
        for name, launch in zip(names, launches):
            if name.startswith("reduce_partials") or name == "coefficients_kernel":
                continue  # fp32 [rows, C] rows and vectors: 4-byte accesses
            for kind in ("global_load", "global_store"):
                for site in sites_of(launch, kind):
                    width = site["bytes"] / site["requests"] / 32
                    # 16: tensors; 8: the mask; 4: the partials' fp32 rows (stored by channel)
                    assert width in (16, 8) or (kind == "global_store" and width == 4
                                                and "partials" in name), (name, kind, site)
                    assert per_request(site, "sectors") <= {16: 16, 8: 8, 4: 4}[width], (
                        name, kind, site)
                    if site["bytes_used"] == site["bytes"]:  # a lane per address: coalesced
                        assert site["sectors"] == site["ideal"], (name, kind, site)
                    else:  # the per-channel vectors, 4 runs of lanes on one address: 2 halves
                        # of a channel chunk's 32-byte sector
                        assert site["sectors"] <= 2 * site["ideal"], (name, kind, site)
            for kind in ("shared_store", "shared_load"):
                tally = launch[kind]
                if tally["requests"]:
                    assert per_request(tally) <= 2, (name, kind, tally)


@pytest.mark.parametrize("rows_in_one,rows", [(2, [6, 3, 2, 1]), (3, [4, 2, 1]), (None, [1])])
def test_batchnorm_train_reduces_in_levels(profiler, rows_in_one, rows):
    """The statistics' 12 tile partials (a 96 x 32 image: 3072 pixels) reduced level by level,
    each level's blocks of rows the next level's rows, down to one (the grids' first axis;
    the second: 8 channels, one block), then the normalize."""
    import test_cuda_emulated_batchnorm_train as bn

    z, gamma, beta = bn.make_z((1, 8, 96, 32), torch.float32, False, seed=7)
    _, launches = cuda_emulator.profile_launches(
        cuda_emulator.batchnorm_train_forward, profiler, z, gamma, beta, bn.EPS, True,
        reduce_rows_in_one=rows_in_one)
    assert [launch["grid"][0] for launch in launches] == [12, *rows, 12]


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("stride", [1, 2])
def test_the_launches_are_the_ones_the_profile_names(profiler, layout, stride):
    """compiled_profile.cuda_launch_kernels names every launch the harness makes for a forward
    or backward call, in order (the profile zips names with launches: one missing would shift
    every name after it), at both strides and layouts (NCHW: the forward and dgrad's grad_x
    by channel planes, dgrad's and wgrad's operands read by planes: no layout copy)."""
    import compiled_profile

    for op in ("conv", "dgrad", "wgrad"):
        report, launches = cuda_emulator.launch_shapes(
            profiler, op, N=2, C=128, H=9, W=7, dtype=torch.float16,
            channels_last=layout == "nhwc", groups=32, stride=stride)
        names = compiled_profile.cuda_launch_kernels(op, report, "fp16", stride, 4)
        assert len(names) == len(launches), (report, names, launches)
        copies = [n for n in names if n.startswith("channels_last_copy")]
        # NCHW: every v3 kernel reads planes
        assert copies == [], (report, names)
        # the order too: the one launch with dynamic shared memory is the one named a conv
        # kernel (v3's band; dgrad's and wgrad's too); the forward's is its last, which the
        # profile's summary takes
        big = [i for i, launch in enumerate(launches) if launch["smem_bytes"] > 0]
        named = [i for i, n in enumerate(names)
                 if n.startswith(("grouped_conv_bn_relu_v3", "grouped_conv_wgrad_v3"))]
        assert big == named and len(big) == 1, (names, launches)
        if op == "conv":
            assert named == [len(launches) - 1], (names, launches)


@pytest.mark.parametrize("stride", [1, 2])
def test_v3_reads_and_writes_nchw_by_planes_coalesced_and_conflict_free(profiler, stride):
    """v3 on NCHW x and y (swizzled_band.cuh load_halo_rows_by_planes, grouped_conv_v3.cu
    store_band_by_planes): a warp's 2-byte loads and stores of one channel are 32 neighbouring
    pixels of its plane, 64 bytes (2 or 3 sectors: rows of 58 or 57 staged pixels do not start
    on sectors), and the loader's 16-byte shared stores, a quarter-warp's 8 pixels in 8 bank
    groups in the lane order of each stride, cost within 10% of the conflict-free wavefronts
    (the emulator pairs a lane's k-th store with the others' where a chunk's padding items
    store nothing)."""
    case = dict(op="conv", C=64, C_out=64, H=56, W=56, groups=16, cpg=4, stride=stride,
                dtype="fp16", layout="nchw")
    launches, _, path = access_profile.run_case(profiler, case, 4)
    assert path == "path v3 block_channels 0 workspace_bytes 12288", path
    conv = launches[-1]
    loads = plane_loads(conv)
    stores = [s["global_store"] for s in conv["sites"] if "global_store" in s]
    staged = wide_shared_stores(conv)
    assert len(loads) >= 1 and len(stores) >= 1 and len(staged) == 1, conv["sites"]
    for tally in loads + stores:
        assert 2 <= per_request(tally, "sectors") <= 3, tally
    assert staged[0]["wavefronts"] <= 1.10 * staged[0]["ideal"], staged[0]


@pytest.mark.parametrize("stride", [1, 2])
def test_wgrad_v3_reads_nchw_by_planes_coalesced(profiler, stride):
    """wgrad v3 on NCHW x and grad_y (load_halo_rows_by_planes into the output-keyed tile,
    load_gradient_by_planes): no layout copy before it; a warp's 2-byte loads of one channel are
    32 neighbouring pixels of a plane, at most 3 sectors (64 bytes off the sector grid, rows of
    58 or 57 staged pixels), and the 16-byte shared stores of both tiles stay within 30% of the
    conflict-free wavefronts (the output-keyed tile's keys repeat only where a quarter-warp's 8
    pixels wrap to the next staged row: 1.10x at stride 1, 1.27x at stride 2 on this case)."""
    case = dict(op="wgrad", C=64, C_out=64, H=56, W=56, groups=16, cpg=4, stride=stride,
                dtype="fp16", layout="nchw")
    launches, reports = access_profile.run_backward_case(profiler, case, 4)
    assert "pack" not in reports[1], reports
    wgrad = [launch for launch in launches if launch["smem_bytes"] > 0][-1]  # (then finalize)
    loads = plane_loads(wgrad)
    staged = wide_shared_stores(wgrad)
    assert len(loads) == 2 and len(staged) == 2, wgrad["sites"]  # x and gp
    for tally in loads:
        assert per_request(tally, "sectors") <= 3, tally
    for tally in staged:
        assert tally["wavefronts"] <= 1.30 * tally["ideal"], tally


@pytest.mark.parametrize("stride", [1, 2])
def test_dgrad_v3_gates_nchw_by_planes_coalesced(profiler, stride):
    """dgrad v3 on an NCHW grad_y (swizzled_band.cuh load_gated_halo_rows_by_planes): no layout
    copy before it; a warp's 2-byte loads of one channel plane at most 3 sectors; the gated
    tile's 16-byte stores conflict-free at stride 1 (spread 0: a quarter-warp's 8 pixels are
    consecutive) and at most 2-way at stride 2 (spread 1: the staged pixels of a band are 2
    apart, their swizzle keys of one parity, 1.86x on this case)."""
    case = dict(op="wgrad", C=64, C_out=64, H=56, W=56, groups=16, cpg=4, stride=stride,
                dtype="fp16", layout="nchw")
    launches, reports = access_profile.run_backward_case(profiler, case, 4)
    assert reports[0] == "path v3", reports
    dgrad = [launch for launch in launches if launch["smem_bytes"] > 0][0]  # (then wgrad's)
    loads = plane_loads(dgrad)
    # the 16-byte warp-wide stores: the gated pixels' and pass 1's zeros (conflict-free)
    staged = wide_shared_stores(dgrad)
    assert len(loads) == 1 and len(staged) == 2, dgrad["sites"]
    assert per_request(loads[0], "sectors") <= 3, loads[0]
    worst = max(t["wavefronts"] / t["ideal"] for t in staged)
    assert worst <= (1.0 if stride == 1 else 2.0), staged


def test_the_layout_copy_is_coalesced_and_free_of_bank_conflicts(profiler):
    """channels_last_copy.cu's tile: on the NCHW side a warp's 32 lanes read 32 consecutive
    2-byte pixels (2 sectors: 64 bytes of 64 used where the tile is 32-byte aligned), on the
    dense side 16-byte chunks (4 sectors per 8 lanes' 128-byte pixel); the shared tile's 32-bit
    words are conflict-free both ways."""
    values = torch.randn(1, 64, 8, 32).to(torch.float16)  # 256 pixels: 8 whole tiles
    _, launches = cuda_emulator.profile_launches(cuda_emulator.channels_last_copy, profiler,
                                                 values)
    (copy,) = launches
    assert per_request(copy["global_load"], "sectors") == 2
    assert per_request(copy["global_store"], "sectors") == 16  # 32 lanes x 16 bytes = 512 bytes
    for kind in ("shared_load", "shared_store"):
        assert per_request(copy[kind]) == 1, (kind, copy[kind])


# --- reusing stored profiles (access_profile.ProfileStore; scripts/kernel_profile.py) ---------

# a conv case as scripts/kernel_profile.py makes them (access_case), small: odd sizes, stride 2
SMALL_CASE = dict(op="conv", model="test", layer="small", C=64, C_out=64, H=9, W=7, groups=16,
                  cpg=4, stride=2, count=1, dtype="fp16", layout="nhwc", tf32=False)


def stored_only(fn):
    """A stand-in for fn (run_case or run_backward_case, whose name is the profile's kind) that
    fails if it runs."""
    def run(*args):
        raise AssertionError(f"a stored profile's case ran again ({fn.__name__})")
    run.__name__ = fn.__name__
    return run


@pytest.mark.parametrize("kind", ["run_case", "run_backward_case"])
def test_a_stored_profile_stands_in_for_running_its_case_again(profiler, tmp_path, kind):
    """The same case run twice gives the same profile (as stored: without the per-site code
    addresses, which ASLR moves), so a store of one run's profiles serves the next: the stored
    one is returned without running, a case that differs (here in its layout) runs, and a
    store saves only its own run's profiles."""
    fn = getattr(access_profile, kind)
    first = access_profile.ProfileStore(profiler)
    profile = first.get(fn, profiler, SMALL_CASE, 3)
    assert (first.ran, first.reused) == (1, 0)
    assert profile[0] and all("sites" not in launch for launch in profile[0])
    assert access_profile.portable(fn(profiler, SMALL_CASE, 3)) == profile
    first.save(tmp_path / "profiles.json")

    second = access_profile.ProfileStore(profiler, tmp_path / "profiles.json")
    assert second.get(stored_only(fn), profiler, SMALL_CASE, 3) == profile
    nchw = dict(SMALL_CASE, layout="nchw")
    other = second.get(fn, profiler, nchw, 3)
    assert (second.ran, second.reused) == (1, 1) and other != profile
    second.save(tmp_path / "again.json")
    third = access_profile.ProfileStore(profiler, tmp_path / "again.json")
    assert third.get(stored_only(fn), profiler, nchw, 3) == other
    assert third.get(stored_only(fn), profiler, SMALL_CASE, 3) == profile
    # the other kind of profile of the same case is not the stored one
    other_kind = (access_profile.run_backward_case if kind == "run_case" else
                  access_profile.run_case)
    with pytest.raises(AssertionError, match="ran again"):
        third.get(stored_only(other_kind), profiler, SMALL_CASE, 3)
    # only what this store's run used is saved: not the first run's profiles it never asked for
    third.save(tmp_path / "third.json")
    saved = json.loads((tmp_path / "third.json").read_text())["profiles"]
    assert len(saved) == 2


def copy_sources(root):
    for sub in ("emulation", "kernels"):
        shutil.copytree(cuda_emulator.REPO / "csrc" / sub, root / "csrc" / sub)
    return root


def test_the_build_digest_is_the_sources_not_the_checkouts_path(profiler, tmp_path,
                                                                monkeypatch):
    """cuda_emulator.build_digest names a build's directory and so keys the stored profiles:
    the same in two checkouts (CI tests a copy of the sources in a temporary directory), and
    different when a source, a nested include, the compiler's version or a build's flags
    differ."""
    a, b = copy_sources(tmp_path / "a"), copy_sources(tmp_path / "b")
    base = cuda_emulator.build_digest("profile", a)
    assert cuda_emulator.build_digest("profile", b) == base
    assert cuda_emulator.build_digest("profile") == base  # this checkout
    changed = []
    source = b / "csrc" / "kernels" / "grouped_conv_dgrad_v3.cu"
    source.write_text(source.read_text() + "\n// a comment\n")
    changed.append(cuda_emulator.build_digest("profile", b))
    nested = copy_sources(tmp_path / "c") / "csrc" / "kernels" / "detail" / "tile.cuh"
    nested.parent.mkdir()
    nested.write_text("#pragma once\n")
    changed.append(cuda_emulator.build_digest("profile", tmp_path / "c"))
    fake_cxx = tmp_path / "cxx"
    fake_cxx.write_text("#!/bin/sh\necho 'c++ (fake) 0.1'\n")
    fake_cxx.chmod(0o755)
    changed.append(cuda_emulator.build_digest("profile", a, str(fake_cxx)))
    changed.append(cuda_emulator.build_digest("memcheck", a))
    monkeypatch.setattr(cuda_emulator, "PROFILE_INSTRUMENTATION", ["-fsanitize=address"])
    changed.append(cuda_emulator.build_digest("profile", a))
    assert len({base, *changed}) == 1 + len(changed)
    assert profiler.parent.name == f"profile-{base[:16]}"


def test_a_stored_profiles_key_covers_every_input(profiler, tmp_path, monkeypatch):
    """A change to any input of a profile changes its key, so no stored profile stands in for
    one that would come out different: the emulator binary (named by build_digest), torch's
    version, the Python that drives the emulator (the modules actually imported), an emulator
    variable in the environment, and the case, its block count and the function that runs
    it."""
    from resnext_kernels import relu_mask

    drivers = {p.resolve() for p in access_profile.driver_sources()}
    assert {Path(m.__file__).resolve() for m in (cuda_emulator, access_profile, relu_mask)} <= drivers
    binary = tmp_path / "profile-0123456789abcdef" / "harness"
    driver = tmp_path / "driver.py"
    driver.write_text("version 1")
    monkeypatch.setattr(access_profile, "driver_sources", lambda: [driver])
    monkeypatch.delenv("CUDA_EMULATOR_SCHEDULE", raising=False)
    base = access_profile.inputs_digest(binary)
    assert access_profile.inputs_digest(binary) == base
    digests = [access_profile.inputs_digest(tmp_path / "profile-fedcba9876543210" / "harness")]
    driver.write_text("version 2")
    digests.append(access_profile.inputs_digest(binary))
    driver.write_text("version 1")
    with monkeypatch.context() as m:
        m.setattr(access_profile.torch, "__version__", "0.0.0")
        digests.append(access_profile.inputs_digest(binary))
    with monkeypatch.context() as m:
        m.setenv("CUDA_EMULATOR_SCHEDULE", "completer_first")
        digests.append(access_profile.inputs_digest(binary))
    assert access_profile.inputs_digest(binary) == base
    assert len({base, *digests}) == 1 + len(digests)

    key = access_profile.case_key(base, "run_case", SMALL_CASE, 3)
    keys = [access_profile.case_key(digests[0], "run_case", SMALL_CASE, 3),
            access_profile.case_key(base, "run_backward_case", SMALL_CASE, 3),
            access_profile.case_key(base, "run_case", SMALL_CASE, 4),
            access_profile.case_key(base, "run_case", dict(SMALL_CASE, layout="nchw"), 3),
            access_profile.case_key(base, "run_case", dict(SMALL_CASE, stride=1), 3)]
    assert access_profile.case_key(base, "run_case", dict(reversed(SMALL_CASE.items())), 3) == key
    assert len({key, *keys}) == 1 + len(keys)

"""backend="auto" per shape: the table builder (benchmarks/auto_table.py) and the lookup."""

import importlib.util
import json
import os

import pytest
import torch

import resnext_kernels as rk
from resnext_kernels import backends
from resnext_kernels.backends import auto_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _builder():
    spec = importlib.util.spec_from_file_location(
        "auto_table_builder", os.path.join(ROOT, "benchmarks", "auto_table.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(provider, p50, C=256, H=28, stride=1, dtype="float16", layout="nhwc", status="ok",
         weight_layout=None):
    row = dict(provider=provider, p50_ms=p50, status=status, dtype=dtype, layout=layout, C=C,
               C_out=C, groups=32, H=H, W=H, stride=stride, batch=128)
    if weight_layout:  # results written before grouped_conv.py recorded it have no such field
        row["weight_layout"] = weight_layout
    return row


def _results(rows, gpu="NVIDIA H100 80GB HBM3", arch="sm_90"):
    env = dict(gpu=gpu, gpu_capability=arch, git_commit="abc1234", date="2026-11-24")
    return dict(environment=env, rows=rows)


def test_builder_keeps_the_fastest_correct_choosable_provider():
    rows = [
        _row("reference", 0.30), _row("triton", 0.20), _row("cuda", 0.25),
        _row("cudnn_folded", 0.10),  # not something "auto" can run: ignored
        _row("reference", 0.40, H=14), _row("triton", 0.10, H=14, status="wrong: max rel err"),
        _row("cuda", 0.50, H=14),
        _row("triton", 0.1, H=7),  # no reference measured for this shape: no entry
    ]
    table = _builder().build_table(_results(rows), "benchmarks/results/x.json")
    by_h = {e["H"]: e for e in table["entries"]}
    assert set(by_h) == {28, 14}
    assert by_h[28]["backend"] == "triton"
    assert by_h[14]["backend"] == "reference", "a wrong result is never chosen"
    assert by_h[28]["p50_ms"] == {"cuda": 0.25, "reference": 0.3, "triton": 0.2}
    assert table["arch"] == "sm_90" and table["batch"] == [128]


def test_builder_refuses_cpu_results():
    results = _results([_row("reference", 1.0)], gpu=None, arch=None)
    with pytest.raises(ValueError, match="not a GPU run"):
        _builder().build_table(results, "x.json")


def test_tables_round_trip_through_lookup(tmp_path):
    rows = [_row("reference", 0.3), _row("cuda", 0.2), _row("reference", 0.3, layout="nchw"),
            _row("triton", 0.2, layout="nchw"),
            _row("reference", 0.1, weight_layout="nhwc"), _row("cuda", 0.2, weight_layout="nhwc")]
    table = _builder().build_table(_results(rows), "x.json")
    (tmp_path / "sm_90.json").write_text(json.dumps(table))
    tables = auto_table.load_tables(tmp_path)
    # rows without a weight_layout field were measured with contiguous weights
    key = auto_table.conv_key("sm_90", torch.float16, "nhwc", "nchw", 256, 256, 32, 28, 28,
                              (1, 1), (1, 1), (1, 1))
    assert auto_table.lookup(key, tables) == "cuda"
    nchw = key[:3] + ("nchw",) + key[4:]
    assert auto_table.lookup(nchw, tables) == "triton"
    channels_last_weights = key[:4] + ("nhwc",) + key[5:]
    assert auto_table.lookup(channels_last_weights, tables) == "reference"
    other_gpu = key[:1] + ("sm_80",) + key[2:]
    assert auto_table.lookup(other_gpu, tables) is None


def test_resolve_uses_a_table_entry_only_when_that_backend_is_usable(monkeypatch):
    key = auto_table.conv_key("sm_90", torch.float16, "nhwc", "nchw", 64, 64, 32, 8, 8, (1, 1),
                              (1, 1), (1, 1))
    cpu = torch.device("cpu")
    monkeypatch.setattr(auto_table, "_installed_tables", lambda: {key: "cuda"})
    assert backends.resolve("auto", cpu, key) == "reference", "cuda cannot run CPU tensors"
    monkeypatch.setattr(auto_table, "_installed_tables", lambda: {key: "triton"})
    expected = "triton" if backends.backend_status("triton", "cpu")[0] else "reference"
    assert backends.resolve("auto", cpu, key) == expected
    assert backends.resolve("auto", cpu, None) == "reference"
    assert backends.resolve("reference", cpu, key) == "reference", "explicit names win"


def _se_row(provider, p50, C=256, H=56, dtype="float16", layout="nhwc", status="ok"):
    return dict(provider=provider, p50_ms=p50, status=status, dtype=dtype, layout=layout, C=C,
                R=C // 16, H=H, W=H, batch=128, stage="layer1.0")


def test_se_builder_claims_a_kernel_only_where_it_beat_the_unfused_module(tmp_path):
    rows = [
        _se_row("eager", 0.70), _se_row("reference", 2.3), _se_row("triton", 0.31),
        _se_row("cuda", 0.57),
        # nothing beats eager here: no entry, so "auto" runs the default (aten) reference
        _se_row("eager", 0.12, C=2048, H=7), _se_row("reference", 0.37, C=2048, H=7),
        _se_row("triton", 0.19, C=2048, H=7),
        _se_row("eager", 0.40, C=512, H=28), _se_row("reference", 0.30, C=512, H=28),
        _se_row("triton", 0.10, C=512, H=28, status="wrong: max rel err"),
    ]
    table = _builder().build_table(_results(rows), "x.json")
    assert table["op"] == "squeeze_excite"
    by_c = {e["C"]: e for e in table["entries"]}
    assert set(by_c) == {256, 512}
    assert by_c[256]["backend"] == "triton"
    assert by_c[512]["backend"] == "reference", "a wrong result is never chosen"
    (tmp_path / "sm_90-squeeze_excite.json").write_text(json.dumps(table))
    tables = auto_table.load_tables(tmp_path)
    key = auto_table.se_key("sm_90", torch.float16, "nhwc", 256, 16, 56, 56, True, True)
    assert auto_table.lookup(key, tables) == "triton"
    alone = auto_table.se_key("sm_90", torch.float16, "nhwc", 256, 16, 56, 56, False, False)
    assert auto_table.lookup(alone, tables) is None, "measured as the bottleneck tail only"


def test_installed_tables_are_valid():
    """Whatever tables are committed load, and name a source results file that is committed."""
    for path in sorted(auto_table.TABLE_DIR.glob("*.json")):
        table = json.loads(path.read_text())
        assert os.path.exists(os.path.join(ROOT, table["source"])), table["source"]
        for entry in table["entries"]:
            assert entry["backend"] in auto_table.CHOOSABLE
    auto_table.load_tables()


@pytest.mark.gpu
def test_auto_on_gpu_runs_the_tabled_backend(monkeypatch):
    """On a GPU, an "auto" call whose shape has an entry runs that backend; the same call with
    channels_last weights has no entry and runs the device default."""
    x = torch.randn(2, 64, 8, 8, device="cuda", dtype=torch.float16)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 2, 3, 3, device="cuda", dtype=torch.float16)
    s, b = torch.ones(64, device="cuda"), torch.zeros(64, device="cuda")
    key = auto_table.conv_key(backends.gpu_arch(x.device), x.dtype, "nhwc", "nchw", 64, 64, 32,
                              8, 8, (1, 1), (1, 1), (1, 1))
    chosen = []
    real = backends.implementation
    monkeypatch.setattr(auto_table, "_installed_tables", lambda: {key: "triton"})
    monkeypatch.setattr(backends, "implementation",
                        lambda op, name, *direct: chosen.append(name) or real(op, name, *direct))
    rk.grouped_conv_bn_relu(x, w, s, b, groups=32)
    assert chosen == ["triton"]
    w_cl = w.contiguous(memory_format=torch.channels_last)
    rk.grouped_conv_bn_relu(x, w_cl, s, b, groups=32)
    assert chosen == ["triton", backends.resolve("auto", x.device, None)]


@pytest.mark.gpu
def test_se_auto_on_gpu_runs_the_tabled_backend(monkeypatch):
    u = torch.randn(2, 64, 8, 8, device="cuda", dtype=torch.float16)
    u = u.contiguous(memory_format=torch.channels_last)
    res = torch.randn_like(u)
    w1, w2 = torch.randn(4, 64, device="cuda") / 8, torch.randn(64, 4, device="cuda") / 2
    key = auto_table.se_key(backends.gpu_arch(u.device), u.dtype, "nhwc", 64, 4, 8, 8, True,
                            True)
    chosen = []
    real = backends.implementation
    monkeypatch.setattr(auto_table, "_installed_tables", lambda: {key: "triton"})
    monkeypatch.setattr(backends, "implementation",
                        lambda op, name, *direct: chosen.append(name) or real(op, name, *direct))
    rk.squeeze_excite(u, w1, None, w2, None, residual=res, relu=True)
    assert chosen == ["triton"]
    rk.squeeze_excite(u, w1, None, w2, None)  # the SE alone: no entry
    assert chosen == ["triton", backends.resolve("auto", u.device, None)]

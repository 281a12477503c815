"""Smoke tests: both benchmark scripts run in quick mode and write files that parse."""

import csv
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name, out_dir, *extra):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the benchmarks time real kernels, never the interpreter
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", name), "--quick", "--out", str(out_dir),
         *extra],
        capture_output=True, text=True, timeout=900, env=env, cwd=str(out_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def load_outputs(out_dir, kind):
    files = sorted(os.listdir(out_dir))
    js = [f for f in files if f.startswith(kind) and f.endswith(".json")]
    cs = [f for f in files if f.startswith(kind) and f.endswith(".csv")]
    assert len(js) == 1 and len(cs) == 1, files
    with open(os.path.join(out_dir, js[0])) as f:
        data = json.load(f)
    with open(os.path.join(out_dir, cs[0])) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data["rows"]) > 0
    for key in ("gpu", "torch", "triton", "git_commit", "date", "resnext_kernels_build"):
        assert key in data["environment"], key
    return data, rows


def test_grouped_conv_benchmark_quick(tmp_path):
    out = run_script("grouped_conv.py", tmp_path)
    data, rows = load_outputs(tmp_path, "grouped_conv")
    if data["environment"]["gpu"] is None:
        assert "GPU providers skipped" in out
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    assert ok, data["rows"]
    for r in ok:
        assert r["p20_ms"] <= r["p50_ms"] <= r["p80_ms"]
        assert 0 < r["pct_of_floor"] and r["max_rel_err"] < 0.1
    assert data["environment"]["copy_bandwidth_gbs"] > 0


def test_grouped_conv_benchmark_custom_shape(tmp_path):
    run_script("grouped_conv.py", tmp_path, "--shape", "64,9,9,16,2", "--reps", "3")
    data, _ = load_outputs(tmp_path, "grouped_conv")
    assert {(r["C"], r["H"], r["cpg"], r["stride"]) for r in data["rows"]} == {(64, 9, 4, 2)}


def test_model_benchmark_quick(tmp_path):
    run_script("models.py", tmp_path)
    data, _ = load_outputs(tmp_path, "models")
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    assert ok and all(r["images_per_s"] > 0 for r in ok), data["rows"]
    assert any(r["mode"].startswith("fused") for r in ok), "replace_modules mode must run"

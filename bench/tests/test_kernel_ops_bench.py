"""bench.kernel_ops on a CPU against a stub kernels.ops: the correctness gate, the in-place reset, the verdicts."""

import dataclasses
import json
import sys
import types

import pytest
import torch

from bench import common
from bench import kernel_ops as kb
from bench.tests import exit_code, options_without_flags

# Two row counts at small widths, bf16 and fp32; None: the CPU default of that setting.
SMALL = kb.Options(ops=kb.OPS, dtypes=("bf16", "fp32"),
                   variants=("cuda", "triton", "eager", "F.rms_norm", "flashinfer"), quick=None, m=("1", "4"),
                   hidden=("32",), intermediate=("48",), warmup=1, iters=3, eps=1e-6, compile_mode="default", seed=0,
                   plot=True)


def _norm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def _make_stub(calls):
    """kernels.ops with a correct "cuda" face, a wrong "triton" face and a torch reference."""

    def rms_norm(x, weight, eps=1e-6, backend=None):
        calls.append(("rms_norm", backend))
        out = _norm(x, weight, eps)
        return out * 1.1 if backend == "triton" else out

    def fused_add_rms_norm(x, residual, weight, eps=1e-6, backend=None):
        calls.append(("fused_add_rms_norm", backend))
        residual.add_(x)
        return _norm(residual, weight, eps)

    def silu_and_mul(gate_up, backend=None):
        calls.append(("silu_and_mul", backend))
        gate, up = gate_up.chunk(2, dim=-1)
        return torch.nn.functional.silu(gate) * up

    stub = types.ModuleType("kernels.ops")
    stub.rms_norm, stub.fused_add_rms_norm, stub.silu_and_mul = rms_norm, fused_add_rms_norm, silu_and_mul
    stub.available_backends = lambda device="cuda": ["cuda", "triton", "torch"]
    return stub


@pytest.fixture
def stub_ops(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "kernels.ops", _make_stub(calls))
    return calls


def test_bytes_moved():
    assert kb.bytes_moved("rms_norm", 4, 8, torch.bfloat16) == 2 * 4 * 8 * 2 + 8 * 2
    assert kb.bytes_moved("fused_add_rms_norm", 4, 8, torch.float32) == 4 * 4 * 8 * 4 + 8 * 4
    assert kb.bytes_moved("silu_and_mul", 4, 8, torch.float16) == 3 * 4 * 8 * 2


def test_wrong_variant_is_reported_and_never_timed(stub_ops):
    ops, note = kb.load_ops()
    assert note == ""
    variants = kb.build_variants("rms_norm", ["cuda", "triton", "eager", "F.rms_norm", "liger"], ops, note,
                                 1e-6, "cpu", "default", explicit=True)
    rows = kb.run_case("rms_norm", torch.bfloat16, 4, 64, variants, "cpu", copy_gbps=10.0,
                       warmup=1, iters=3, eps=1e-6, seed=0)
    by = {r["variant"]: r for r in rows}
    assert by["triton"]["status"].startswith("WRONG: rms_norm triton bf16 M=4 width=64 out")
    assert "p50_us" not in by["triton"]
    # The wrong face ran exactly once: the check, no warmup, no timing.
    assert stub_ops.count(("rms_norm", "triton")) == 1
    for name in ("cuda", "eager", "F.rms_norm"):
        assert by[name]["status"] == "ok" and by[name]["p10_us"] <= by[name]["p50_us"] <= by[name]["p90_us"]
        assert by[name]["gbps"] == pytest.approx(kb.bytes_moved("rms_norm", 4, 64, torch.bfloat16) / by[name]["p50_us"] / 1e3)
    assert by["liger"]["status"] == "skipped: CPU run"
    assert sum(r["best"] == "*" for r in rows) == 1
    assert by["cuda"]["ours_wins"] in (True, False)


def test_fused_add_resets_residual_each_iteration(stub_ops):
    ops, note = kb.load_ops()
    variants = kb.build_variants("fused_add_rms_norm", ["cuda"], ops, note, 1e-6, "cpu", "default", explicit=True)
    rows = kb.run_case("fused_add_rms_norm", torch.float32, 3, 16, variants, "cpu", copy_gbps=1.0,
                       warmup=2, iters=20, eps=1e-6, seed=1)
    assert rows[0]["status"] == "ok", rows[0]["status"]


def test_fused_add_without_in_place_update_is_wrong(monkeypatch, stub_ops):
    ops = sys.modules["kernels.ops"]
    monkeypatch.setattr(ops, "fused_add_rms_norm", lambda x, r, w, eps=1e-6, backend=None: _norm(r + x, w, eps))
    variants = kb.build_variants("fused_add_rms_norm", ["cuda"], ops, "", 1e-6, "cpu", "default", explicit=True)
    rows = kb.run_case("fused_add_rms_norm", torch.float32, 2, 8, variants, "cpu", 1.0, 1, 2, 1e-6, 0)
    assert rows[0]["status"].startswith("WRONG") and "residual" in rows[0]["status"]


def test_mark_best_and_verdict():
    rows = [
        {"variant": "cuda", "status": "ok", "p50_us": 2.0},
        {"variant": "triton", "status": "ok", "p50_us": 3.0},
        {"variant": "eager", "status": "ok", "p50_us": 5.0},
        {"variant": "flashinfer", "status": "not installed"},
    ]
    v = kb.mark_best(rows)
    assert rows[0]["best"] == "*" and v["ours_wins"] is True and v["speedup"] == pytest.approx(2.5)
    rows[2]["p50_us"] = 1.0
    v = kb.mark_best(rows)
    assert rows[2]["best"] == "*" and v["ours_wins"] is False and v["alt"]["variant"] == "eager"


def test_main_writes_results_then_exits_1_on_the_wrong_variant(stub_ops, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    assert exit_code(kb.run, SMALL) == 1
    captured = capsys.readouterr()
    out = captured.out
    assert "CPU run" in out and f"results: {tmp_path}" in out
    assert "WRONG" in out  # the stub's triton rms_norm
    assert "bench.kernel_ops: 4 WRONG or FAILED: rms_norm bf16 M=1 width=32 triton" in captured.err
    for name in ("kernels.csv", "kernels.json", "summary.json", "kernels_rms_norm.png", "kernels_silu_and_mul.png"):
        assert (tmp_path / name).exists(), name
    records = json.loads((tmp_path / "summary.json").read_text())
    names = {r["name"] for r in records}
    assert "kernels/copy_bandwidth" in names
    assert "kernels/rms_norm/bf16/M4x32/cuda" in names
    assert "kernels/rms_norm/bf16/M4x32/triton" not in names  # WRONG: no figure
    assert all(r["device"] == common.device_name() for r in records)


def test_main_exits_normally_when_every_variant_is_right(stub_ops, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    opts = dataclasses.replace(SMALL, ops=("rms_norm",), m=("2",), iters=2, variants=("cuda", "eager"),
                               dtypes=("fp32",), plot=False)
    assert exit_code(kb.run, opts) is None
    assert (tmp_path / "kernels.json").exists()


def test_every_option_is_a_flag():
    assert options_without_flags(kb) == []

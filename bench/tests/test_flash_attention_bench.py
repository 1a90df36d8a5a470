"""bench.flash_attention on a CPU: FLOP counting, the chunked reference check, the WRONG gate,
the "not installed" path and a whole CPU run writing its results."""

import dataclasses
import json
import math
import types

import pytest
import torch

from bench import common
from bench import flash_attention as fb
from bench.tests import exit_code, options_without_flags
from kernels.attention_ref import attention_ref, paged_decode_ref, paged_kv

# A CPU run of every sweep at two small sizes, head dim 16; None: the CPU default of that setting.
SMALL = fb.Options(quick=None, sweeps=fb.SWEEPS, seq_lens=("32", "64"), tokens=None, batches=("1", "2"),
                   batch_seq_len=32, kv_lens=("64",), decode_batches=("1", "2"), causal="both", variants=None,
                   dtype=None, head_dim=16, heads=None, kv_heads=None, page_size=16, warmup=1, iters=2,
                   max_check_scores=None, seed=0, plot=True, profile=False)


def _setup(**kw):
    base = dict(device="cpu", dtype=torch.float32, Hq=4, Hkv=2, D=16, masks=[True, False], warmup=1, iters=3,
                seed=0, max_check_scores=1 << 28, page_size=4, matmul_tflops=1e-2, copy_gbps=1.0)
    return fb.Setup(**{**base, **kw})


def test_flops_causal_is_half_of_noncausal():
    full = fb.attention_flops(2, 32, 1024, 1024, 128, causal=False)
    assert full == 4 * 2 * 32 * 1024 * 1024 * 128
    assert fb.attention_flops(2, 32, 1024, 1024, 128, causal=True) == full // 2
    assert fb.decode_kv_bytes(3, 8, 100, 128, torch.bfloat16) == 2 * 3 * 8 * 100 * 128 * 2


@pytest.mark.parametrize("causal", [True, False])
def test_chunked_reference_matches_whole(monkeypatch, causal):
    # Chunks of 3 query rows (keys sliced to what each chunk may see) must agree with one whole call.
    monkeypatch.setattr(fb, "CHUNK_SCORES", 2 * 3 * 10)
    x = fb.make_inputs(2, 4, 2, 10, 16, torch.float32, "cpu", seed=3)
    check = fb.ReferenceCheck(x["q"], x["k"], x["v"], causal, 0.25, max_scores=1 << 20)
    assert check.rows == 3 and not check.sampled
    errs = check.check(attention_ref(x["q"], x["k"], x["v"], causal, 0.25), "whole")
    assert errs["max_abs_err"] < 1e-5
    other = attention_ref(x["q"], x["k"], x["v"], not causal, 0.25)
    with pytest.raises(AssertionError, match="whole-mask"):
        check.check(other, "whole-mask")
    sampled = fb.ReferenceCheck(x["q"], x["k"], x["v"], causal, 0.25, max_scores=10)
    assert sampled.sampled and sampled.pairs == [(0, 0), (1, 1)]
    sampled.check(attention_ref(x["q"], x["k"], x["v"], causal, 0.25), "sampled")


def test_relative_rms_catches_what_small_outputs_hide():
    # Long non-causal rows average many values, so outputs (~0.03 here) sit far below the
    # element-wise tolerance: a 5% wrong normaliser passes it, the relative RMS error does not.
    x = fb.make_inputs(1, 2, 1, 2048, 64, torch.bfloat16, "cpu", seed=0)
    check = fb.ReferenceCheck(x["q"], x["k"], x["v"], False, 0.125, max_scores=1 << 28)
    good = attention_ref(x["q"].float(), x["k"].float(), x["v"].float(), False, 0.125)
    assert check.check(good.to(torch.bfloat16), "good")["rel_rms_err"] < 5e-3
    bad = (good * 1.05).to(torch.bfloat16)
    common.check_close(bad, good, fb.ATTN_TOL, what="element-wise")  # passes
    with pytest.raises(AssertionError, match="relative RMS"):
        check.check(bad, "scaled")


def test_wrong_variant_is_reported_and_never_timed(monkeypatch):
    calls = []
    real = fb.naive_attention

    def wrong(q, k, v, sm_scale, mask):
        calls.append(1)
        return real(q, k, v, sm_scale, None)  # ignores the causal mask

    monkeypatch.setattr(fb, "naive_attention", wrong)
    variants = fb.build_prefill_variants(["naive", "sdpa_math", "reference", "flex"], "cpu", explicit=False)
    rows = fb.run_prefill(_setup(), "seq", 32, 2, True, variants)
    by = {r["variant"]: r for r in rows}
    assert by["naive"]["status"].startswith("WRONG: naive fp32 mask=causal S=32 B=2"), by["naive"]["status"]
    assert "p50_us" not in by["naive"] and "tflops" not in by["naive"]
    assert len(calls) == 1  # the check only: no warmup, no timing
    for name in ("sdpa_math", "reference"):
        r = by[name]
        assert r["status"] == "ok" and r["p10_us"] <= r["p50_us"] <= r["p90_us"]
        assert r["tflops"] == pytest.approx(fb.attention_flops(2, 4, 32, 32, 16, True) / r["p50_us"] / 1e6)
    assert by["flex"]["status"].startswith("skipped: CPU run")
    assert sum(r["best"] == "*" for r in rows) == 1
    assert by["naive"]["ours_x"] is None  # ours did not run


def test_main_exits_1_on_a_wrong_variant_after_writing_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    real = fb.naive_attention
    monkeypatch.setattr(fb, "naive_attention", lambda q, k, v, sm_scale, mask: real(q, k, v, sm_scale, None))
    opts = dataclasses.replace(SMALL, sweeps=("seq",), seq_lens=("32",), causal="true", variants=("naive", "sdpa_math"),
                               plot=False)
    assert exit_code(fb.run, opts) == 1
    assert "bench.flash_attention: 1 WRONG or FAILED: naive sweep=seq mask=causal S=32" in capsys.readouterr().err
    rows = json.loads((tmp_path / "flash_attention.json").read_text())["rows"]  # written before the exit
    assert {r["variant"]: r["status"] for r in rows}["sdpa_math"] == "ok"


def test_not_installed_and_needs_gpu(monkeypatch):
    fake = types.ModuleType("flashinfer")
    fake.__version__ = "9.9"
    real_import = fb._import
    monkeypatch.setattr(fb, "_import", lambda name: fake if name == "flashinfer" else
                        None if name.startswith("flash_attn") else real_import(name))
    variants = fb.build_prefill_variants(["flash_attn", "fa4", "flashinfer"], "cpu", explicit=True)
    assert [(v.name, v.make, v.note) for v in variants] == [
        ("flash_attn", None, "not installed"), ("fa4", None, "not installed"),
        ("flashinfer", None, "needs a GPU (flashinfer 9.9 installed)")]
    rows = fb.run_prefill(_setup(), "seq", 8, 1, False, variants)
    assert [r["status"] for r in rows] == ["not installed", "not installed", "needs a GPU (flashinfer 9.9 installed)"]
    assert not any("p50_us" in r for r in rows)
    decode = fb.build_decode_variants(["flashinfer", "ours"], "cpu", explicit=False)
    assert decode[0].note.startswith("needs a GPU")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    rows = fb.run_decode(_setup(), 16, 2, decode)
    assert rows[1]["status"] == "needs a GPU or TRITON_INTERPRET=1"


def test_sdpa_no_kernel_is_skipped_not_failed():
    assert fb._status(RuntimeError("No available kernel. Aborting execution.")).startswith("skipped: SDPA")
    assert fb._status(AssertionError("x: bad")) == "WRONG: x: bad"
    assert fb._status(ValueError("nope")) == "FAILED: ValueError: nope"


def test_paged_cache_holds_the_same_tokens():
    x = fb.make_decode_inputs(3, 4, 2, 10, 16, torch.float32, "cpu", seed=1)
    k_paged, v_paged, table = paged_kv(x["k_cache"], x["v_cache"], 4, seed=1)
    assert k_paged.shape == (3 * 3, 4, 2, 16) and table.dtype == torch.int32
    want = attention_ref(x["q"][:, :, None], x["k_cache"], x["v_cache"])[:, :, 0]
    got = paged_decode_ref(x["q"], k_paged, v_paged, table, x["seq_lens"])
    torch.testing.assert_close(got, want)


def test_main_cpu_run_writes_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    fb.run(dataclasses.replace(SMALL, profile=True))
    out = capsys.readouterr().out
    assert "CPU run: CPU figures" in out and f"results: {tmp_path}" in out
    assert "GFLOP/s" in out and "WRONG" not in out and "FAILED" not in out
    assert "flash_attn: not installed" in out or "flash_attn: needs a GPU" in out
    assert "ours: needs a GPU or TRITON_INTERPRET=1" in out
    for name in ("flash_attention.csv", "flash_attention.json", "summary.json", "flash_attention_seq.png",
                 "flash_attention_batch.png", "flash_attention_decode.png", "flash_attention_profile_causal_S64.json"):
        assert (tmp_path / name).exists(), name
    records = {r["name"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    tag = "fp32-h4kv2d16/"
    assert f"flash_attention/{tag}naive/causal/S=64 GFLOP/s" in records
    assert f"flash_attention/{tag}sdpa_math/noncausal/S=32,B=2 GFLOP/s" in records
    assert f"flash_attention/{tag}decode/sdpa/L=64,B=2 GB/s" in records
    assert f"flash_attention/{tag}matmul_ceiling GFLOP/s" in records
    assert records[f"flash_attention/{tag}wrong_or_failed"]["value"] == 0
    rec = records[f"flash_attention/{tag}naive/causal/S=64 GFLOP/s"]
    assert rec["device"] == common.device_name() and rec["cpu_run"] is True
    assert rec["p10_us"] <= rec["p50_us"] <= rec["p90_us"]
    assert math.isclose(rec["value"], fb.attention_flops(2, 4, 64, 64, 16, True) / rec["p50_us"] / 1e3)
    assert not any("/ours/" in n for n in records)  # ours cannot run here


def test_every_option_is_a_flag():
    assert options_without_flags(fb) == []

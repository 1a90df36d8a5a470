"""bench.decode on a CPU: a whole run writes checked rows; a wrong variant is never timed."""

import dataclasses
import json

import pytest
import torch

from bench import decode as bd
from bench.tests import options_without_flags

# The CPU defaults (tiny preset, fp32, hf/eager/fused) on 8-token prompts, 6 new tokens.
SMALL = bd.Options(preset=None, n_layers=None, dtype=None, device="cpu", prompt_len=8, new_tokens=6,
                   batch_sizes=("1", "2"), variants=None, eager_batch_sizes=("1", "16"), compile_batch_sizes=("1",),
                   compile_mode="max-autotune-no-cudagraphs", coordinate_descent=True, seed=0)


def test_cpu_run_writes_checked_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    bd.run(SMALL)
    rows = json.loads((tmp_path / "decode.json").read_text())["rows"]
    got = {(r["variant"], r["batch"]) for r in rows}
    assert got == {(v, b) for v in ("hf", "eager", "fused") for b in (1, 2)}
    for r in rows:
        assert r["status"] == "ok" and r["tok_s"] > 0 and r["agreement"] == 1.0, r  # fp32: exact
        assert r["tie_gap"] <= 1e-4 and r["timed_tie_gap"] <= 1e-4  # fp32: parity.ties' band
    assert (tmp_path / "decode.png").stat().st_size > 0


def test_main_exits_1_on_a_wrong_variant_after_writing_results(tmp_path, monkeypatch, capsys):
    real = bd._generate

    def last_token_off_by_one(name, *args, **kwargs):  # a planted fault in the fused variant's output
        tokens, prefill_s, decode_s = real(name, *args, **kwargs)
        if name == "fused":
            tokens = tokens.clone()
            tokens[:, -1] = (tokens[:, -1] + 1) % 512
        return tokens, prefill_s, decode_s

    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(bd, "_generate", last_token_off_by_one)
    with pytest.raises(SystemExit) as exit_info:
        bd.run(dataclasses.replace(SMALL, batch_sizes=("1",), variants=("eager", "fused")))
    assert exit_info.value.code == 1
    assert "bench.decode: 1 WRONG or FAILED: fused@1" in capsys.readouterr().err
    rows = {r["variant"]: r for r in json.loads((tmp_path / "decode.json").read_text())["rows"]}
    assert rows["eager"]["status"] == "ok"
    assert rows["fused"]["status"].startswith("WRONG: fused bs1: sequence 0: position 5: token"), rows["fused"]


def test_wrong_variant_is_never_timed(monkeypatch):
    from decoding.fast import FastGenerator
    from model.random_weights import random_model

    model = random_model("tiny", seed=3)
    ref = bd.Reference(bd.build_hf(model, torch.float32, "cpu"))
    gen = FastGenerator(model, max_batch_size=1, max_seq_len=64, cuda_graph=False)
    real = gen.generate
    timed = []

    def broken(prompt, n, on_logits=None):  # a shifted logit: what a bad cache write looks like
        timed.append(n)
        return real(prompt, n, on_logits=None if on_logits is None else
                    (lambda i, lg: on_logits(i, lg + 0.5 * lg.abs().max())))

    monkeypatch.setattr(gen, "generate", broken)
    prompt = torch.randint(2, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    row = bd.run_variant("fused", model, gen, ref, prompt, 40, torch.float32, "cpu")
    assert row["status"].startswith("WRONG: fused bs1: logit error"), row
    assert "tok_s" not in row and timed == [32]  # the check run only


def test_every_option_is_a_flag():
    assert options_without_flags(bd) == []


def test_profile_steps_writes_a_trace_and_kernel_classes(tmp_path, monkeypatch, capsys):
    from bench import profiling
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    bd.run(dataclasses.replace(SMALL, batch_sizes=("1",), variants=("fused",), profile_steps=3))
    out = capsys.readouterr().out
    assert "profile: 3 batch-1 decode steps (fused eager, CPU): wall" in out
    assert (tmp_path / "decode_profile.json.gz").stat().st_size > 0
    # The kernel classes the GPU reading is built on (names as an H200 trace shows them).
    assert [profiling.kernel_class(n) for n in (
        "nvjet_sm90_tst_256x64_64x5_4x1_v_bz_TNT", "_decode_split_kernel", "void lab::rms_norm_kernel<bf16>",
        "void at::native::elementwise_kernel<128, 4>", "cublasLt::splitKreduce_kernel")] == [
        "gemm", "attention", "norm", "other", "gemm"]

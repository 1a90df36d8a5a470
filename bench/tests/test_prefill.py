"""bench.prefill on a CPU: a whole minimal run, the WRONG gate (never timed), the checks, bad input."""

import dataclasses
import json

import pytest
import torch

from bench import prefill as bp
from bench.tests import exit_code, options_without_flags

# Every experiment at its smallest: seconds on a CPU. None: the CPU default of that setting.
MINIMAL = bp.Options(experiments=None, preset="embedded", n_layers=None, device="cpu", dtype="fp32", prompt_len=8,
                     batch=3, batch_sizes=("1", "2"), gen_prompt_len=4, new_tokens=("2", "4"),
                     gen_prompt_lens=("4", "8"), gen_new_tokens=2, block_size=16, rtol=None, warmup=0, iters=2,
                     gen_iters=1, seed=0, plot=True)


def test_minimal_cpu_run_writes_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    bp.run(MINIMAL)
    out = capsys.readouterr().out
    assert "WRONG" not in out and "FAILED" not in out and "CPU run" in out
    for name in ("prefill.csv", "prefill.json", "summary.json", "prefill.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = json.loads((tmp_path / "prefill.json").read_text())["rows"]
    assert {r["experiment"] for r in rows} == set(bp.EXPERIMENTS)
    assert all(r["status"] == "ok" and r["p10_ms"] <= r["p50_ms"] <= r["p90_ms"] and r["p50_ms"] > 0 for r in rows)
    # kv_cache: N sweep (P=4: N=2, 4), P sweep (N=2: P=4, 8); no_cache and kv_cache each; fp32 tokens identical.
    kv = [r for r in rows if r["experiment"] == "kv_cache"]
    assert len(kv) == 8 and all(r["tokens_identical"] and r["ms_per_token"] > 0 for r in kv)
    both = [r["p50_ms"] for r in kv if r["config"] == "P4 N2"]  # in both sweeps: measured once
    assert len(both) == 4 and both[:2] == both[2:]
    mixed = {(r["shape"], r["variant"]): r for r in rows if r["experiment"] == "mixed"}
    assert set(mixed) == {(s, p) for s in ("uniform", "mixed") for p in bp.PATHS}
    assert mixed[("mixed", "padded")]["lens"] == "2 8 14"  # L/4 .. 7L/4, total 3 * 8
    assert mixed[("mixed", "padded")]["wasted_tokens"] == 3 * 14 - 24
    assert mixed[("uniform", "padded")]["wasted_tokens"] == 0 and mixed[("mixed", "packed")]["wasted_tokens"] == 0
    records = {r["name"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert records["prefill/ceiling matmul TFLOP/s"]["value"] > 0
    for name in ("kv_cache/P4 N2/no_cache ms per token", "kv_cache/P4 N2/kv_cache speedup",
                 "mixed/mixed B3 L8/engine tokens per s", "mixed/mixed B3 L8/padded wasted tokens",
                 "batching/B3 L8/single tokens per s", "batching/B3 L8/batched speedup",
                 "batch_size/L8 B2/batched TFLOP/s", "batch_size/L8 B2/batched % of ceiling"):
        assert records[f"prefill/{name}"]["value"] > 0, name
        assert records[f"prefill/{name}"]["dtype"] == "fp32"


def test_wrong_path_is_reported_and_never_timed():
    run = bp.make_run(iters=2, warmup=1)
    calls = []

    def swapped_rows(run_, prompts):
        fn, teardown = bp.padded_prefill(run_, prompts)

        def bad():
            calls.append(1)
            return fn().flip(0)  # each prompt gets another prompt's logits: a mixed-up batch

        return bad, teardown

    rows = bp.exp_batch_size(run, [1, 2], 8, ceiling=1.0)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    bad = bp.measure(run, swapped_rows, bp.make_prompts(run, [8, 8], salt=3), "swapped")
    assert bad["status"].startswith("WRONG: swapped: ") and "rtol=0.0001" in bad["status"], bad
    assert "p50_ms" not in bad and len(calls) == 1  # the check call only: no warmup, no timing
    assert run.model.max_seq_len == -1  # caches torn down after a wrong result too


def test_main_exits_1_on_a_wrong_path_after_writing_results(tmp_path, monkeypatch, capsys):
    real = bp.padded_prefill

    def swapped_rows(run_, prompts):
        fn, teardown = real(run_, prompts)
        return (lambda: fn().flip(0)), teardown  # each prompt gets another prompt's logits

    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(bp, "padded_prefill", swapped_rows)
    opts = dataclasses.replace(MINIMAL, experiments=("batch_size",), iters=1, plot=False)
    assert exit_code(bp.run, opts) == 1
    assert "bench.prefill: 1 WRONG or FAILED: batch_size L8 B2 batched" in capsys.readouterr().err
    rows = json.loads((tmp_path / "prefill.json").read_text())["rows"]  # written before the exit
    assert [r["status"] for r in rows][0] == "ok"  # B=1: flipping one row changes nothing


def test_engine_token_outside_the_tie_band_is_wrong():
    run = bp.make_run(iters=1, warmup=0, dtype=torch.bfloat16)
    prompts = bp.make_prompts(run, [8, 6], salt=5)

    def off_by_one(run_, prompts_):
        fn, teardown = bp.engine_prefill(run_, prompts_)

        def bad():
            tokens, steps = fn()
            return [(t + 1) % run_.config.vocab_size for t in tokens], steps

        return bad, teardown

    assert bp.measure(run, bp.engine_prefill, prompts, "engine", engine=True)["status"] == "ok"
    bad = bp.measure(run, off_by_one, prompts, "engine", engine=True)
    assert bad["status"].startswith("WRONG: engine (position = prompt): position 0") and "bfloat16" in bad["status"]


def test_checks_are_tight_in_fp32_and_catch_a_shifted_prompt():
    run = bp.make_run()
    prompts = bp.make_prompts(run, [12, 5, 9], salt=7)
    want = bp.reference_logits(run, prompts)
    for path in (bp.padded_prefill, bp.packed_prefill, bp.single_prefill):
        fn, teardown = path(run, prompts)
        try:
            with torch.inference_mode():
                assert bp.check_logits(fn(), want, 1e-4, path.__name__) < 1e-5
        finally:
            teardown()
    shifted = bp.reference_logits(run, [p[1:] for p in prompts])  # first token dropped: positions off by one
    with pytest.raises(AssertionError, match="rows outside rtol"):
        bp.check_logits(shifted, want, 5e-2, "shifted")
    err, same = bp.check_generation(run, torch.tensor([prompts[0]]), 6)
    assert same and err < 1e-5


def test_spread_lengths_keep_the_total():
    for batch, length in ((1, 7), (2, 8), (5, 33), (8, 64)):
        lens = bp.spread_lengths(batch, length)
        assert len(lens) == batch and sum(lens) == batch * length and min(lens) >= 1
        assert max(lens) <= 7 * length // 4 + 1


@pytest.mark.parametrize("bad, match", [
    (dict(prompt_len=200, experiments=("mixed",)), "below the model context of 256"),
    (dict(prompt_len=300, experiments=("batch_size",)), "exceeds the model context of 256"),
    (dict(gen_prompt_lens=("250",), gen_new_tokens=16, experiments=("kv_cache",)), "exceeds the model context"),
    (dict(experiments=("mixed", "nope")), "unknown nope"),
    (dict(preset="nope"), "--preset.*unknown preset 'nope'"),
    (dict(device="tpu"), "--device 'tpu'"),
    (dict(batch_sizes=("0", "2")), "--batch_sizes must be positive"),
])
def test_bad_input_is_one_clear_error(tmp_path, monkeypatch, bad, match):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    with pytest.raises(bp.PrefillError, match=match):
        bp.run(dataclasses.replace(MINIMAL, **bad))
    assert not (tmp_path / "prefill.json").exists()  # refused before anything ran


def test_every_option_is_a_flag():
    assert options_without_flags(bp) == []

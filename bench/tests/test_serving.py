"""bench.serving on a CPU: a whole tiny run writes its files with sane figures, a tight KV
preempts yet completes every request, a wrong engine stops the run before anything is
timed, bad flags are one-line errors."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import serving as sv

REPO = Path(__file__).absolute().parents[2]  # not resolved: Bazel runfiles are symlinks


def _options(**overrides) -> sv.Options:
    prompt = sv.LengthDist("lognormal", 16, 0.6, 2, 48)
    output = sv.LengthDist("lognormal", 12, 0.6, 2, 24)
    settings = dict(block_size=4, max_num_seqs=6, max_model_len=None, max_num_batched_tokens=None,
                    chunk_tokens=32, num_blocks=None, gpu_memory_fraction=None)
    settings.update(overrides.pop("settings", {}))
    kw = dict(device="cpu", dtype=torch.float32, preset=sv.EMBEDDED, n_layers=None, weights="random",
              checkpoint=None, policies=list(sv.POLICIES), num_requests=12, rate=math.inf, load=1.0,
              prompt=prompt, output=output, settings_partial=settings, check_requests=2, check_tokens=8, seed=0,
              plot=False)
    kw.update(overrides)
    return sv.Options(**kw)


def test_cpu_run_writes_results(tmp_path, capsys):
    # rate 0: the capacity is measured first; block 16 and 4 running requests, the binary's CPU sizes.
    sv.run(_options(rate=0.0, plot=True, settings={"block_size": 16, "max_num_seqs": 4}), out_dir=tmp_path)
    out = capsys.readouterr().out
    assert "CPU run" in out and "measured capacity" in out and "lognormal(median 16, sigma 0.6)" in out
    for name in ("serving.csv", "serving.json", "summary.json", "serving.png", "serving_requests.csv",
                 "serving_steps.csv", "serving_meta.json"):
        assert (tmp_path / name).exists(), name
    rows = {r["policy"]: r for r in json.loads((tmp_path / "serving.json").read_text())["rows"]}
    assert set(rows) == set(sv.POLICIES)
    for r in rows.values():
        assert r["completed"] == 12 and r["check"] == "ok"
        assert r["ttft_p50_ms"] > 0 and r["ttft_p99_ms"] >= r["ttft_p50_ms"]
        assert 0 < r["tpot_p50_ms"] <= r["tpot_p99_ms"] and r["e2e_p99_s"] >= r["e2e_p50_s"] > 0
        assert r["req_per_s"] > 0 and r["out_tok_per_s"] > r["req_per_s"]
        assert 0 <= r["kv_waste_mean"] <= 1 and 0 < r["kv_util_mean"] <= r["kv_util_peak"] <= 1
        assert r["preemptions"] == 0 and r["trace_num_requests"] == 12
    records = {r["name"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert records["serving/continuous vs static throughput"]["unit"] == "x"
    assert records["serving/chunked ttft p99 ms"]["value"] > 0 and records["serving/copy_bandwidth GB/s"]["value"] > 0
    with open(tmp_path / "serving_requests.csv") as f:
        reqs = list(csv.DictReader(f))
    assert len(reqs) == 3 * 12 and all(float(r["ttft_s"]) > 0 for r in reqs)
    meta = json.loads((tmp_path / "serving_meta.json").read_text())
    static = meta["checks"]["static"]
    assert meta["trace"]["capacity_rps"] > 0 and static["tokens_identical"] == static["tokens"] > 0  # fp32: exact


def test_tight_kv_preempts_and_every_request_completes():
    # 19 usable blocks of 4 tokens = 76 tokens (the longest request is 72): about two requests at a time.
    res = sv.run(_options(settings={"num_blocks": 20}), out_dir=None, log=lambda s: None)
    rows = {r["policy"]: r for r in res["rows"]}
    assert all(r["completed"] == 12 for r in rows.values())
    assert rows["continuous"]["preemptions"] > 0 and rows["continuous"]["kv_util_peak"] == 1.0
    for r in res["results"]:
        assert sorted(rec["request"] for rec in r.records) == list(range(12))
        assert all(rec["output_tokens"] == t.max_tokens for rec, t in zip(r.records, res["trace"]))
        # Waste is the unfilled tail of each request's last block: at most 3 of 4 slots per running request.
        for s in r.steps:
            assert 0 <= s.slots_filled <= s.blocks_used * 4
            assert s.blocks_used * 4 - s.slots_filled <= 3 * max(1, s.running)
    # Greedy outputs are the same under every policy (run() raises otherwise for fp32).
    assert res["results"][0].outputs == res["results"][2].outputs


def _corrupt_third_check_token(monkeypatch):
    """Plant a fault: the engine's third token of check request 1 is off by one (a bad cache write)."""
    from scheduler.runner import ModelRunner

    real = ModelRunner._sample
    calls = {"n": 0}

    def corrupt(self, sched, logits):
        out = real(self, sched, logits)
        if "check1" in out:
            calls["n"] += 1
            if calls["n"] == 3:
                out["check1"] = (out["check1"] + 1) % logits.shape[-1]
        return out

    monkeypatch.setattr(ModelRunner, "_sample", corrupt)


def test_wrong_engine_exits_1(monkeypatch, tmp_path, capsys):
    _corrupt_third_check_token(monkeypatch)
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(sv, "options_from_flags", lambda: _options(policies=["static"]))
    assert sv._main(["serving"]) == 1  # app.run exits with it
    assert "WRONG, nothing timed: static: check request 1" in capsys.readouterr().err


def test_wrong_engine_stops_before_anything_is_timed(monkeypatch, tmp_path):
    timed = []
    _corrupt_third_check_token(monkeypatch)
    monkeypatch.setattr(sv, "replay", lambda *a, **k: timed.append(1))
    monkeypatch.setattr(sv, "measure_capacity", lambda *a, **k: timed.append(1))
    with pytest.raises(sv.ParityError, match="static: check request 1 .* at output 2"):
        sv.run(_options(rate=0.0, output=sv.LengthDist("lognormal", 12, 0.6, 4, 24)), out_dir=tmp_path,
               log=lambda s: None)
    assert not timed and not list(tmp_path.iterdir())


def test_low_precision_gate_accepts_only_near_ties():
    case = sv.CheckCase([1, 2], 4, ref_tokens=[1, 1, 1, 1])
    logits = torch.zeros(4, 8)
    logits[:, 1] = 5.0  # teacher-forced, the reference prefers 1 everywhere
    logits[2, 3] = 4.9  # ... but at output 2 token 3 is within 5e-2 x 5 of it
    calls = []

    def fn(prompt, tokens):
        calls.append(list(tokens))
        return logits

    bf16, fp32 = torch.bfloat16, torch.float32
    got = sv.check_outputs([case], [[1, 1, 3, 1]], bf16, "chunked", fn)
    assert got["tokens_identical"] == 2 and got["near_ties"] == [(0, 2, pytest.approx(0.1 / 5))]
    assert calls == [[1, 1, 3, 1]]  # the engine's own tokens, teacher-forced
    with pytest.raises(sv.ParityError, match="at output 2: engine 3, reference 1; .* position 1: token 7 is 1 x"):
        sv.check_outputs([case], [[1, 1, 3, 7]], bf16, "chunked", fn)  # a second, far-off token
    with pytest.raises(sv.ParityError, match="at output 1: .*near-tie band of bfloat16"):
        sv.check_outputs([case], [[1, 3, 1, 1]], bf16, "chunked", fn)
    with pytest.raises(sv.ParityError, match="at output 2: engine 3, reference 1; engine"):
        sv.check_outputs([case], [[1, 1, 3, 1]], fp32, "static", fn)  # fp32: identical or wrong
    with pytest.raises(sv.ParityError, match="produced 3 tokens, want 4"):
        sv.check_outputs([case], [[1, 1, 1]], fp32, "static", fn)
    assert sv.check_outputs([case], [[1, 1, 1, 1]], fp32, "static", fn)["tokens_identical"] == 4


def test_trace_is_poisson_with_bounded_lengths():
    dist = sv.LengthDist("lognormal", 20, 0.8, 3, 50)
    trace = sv.build_trace(3000, 10.0, dist, sv.LengthDist("uniform", 0, 0, 5, 9), vocab=100, seed=3)
    gaps = [b.arrival_s - a.arrival_s for a, b in zip(trace, trace[1:])]
    assert trace[0].arrival_s == 0 and min(gaps) >= 0
    assert abs(sum(gaps) / len(gaps) - 0.1) < 0.01  # mean gap 1 / rate
    assert all(3 <= len(r.prompt_ids) <= 50 and 5 <= r.max_tokens <= 9 for r in trace)
    assert all(0 <= t < 100 for r in trace for t in r.prompt_ids)
    assert abs(sv.trace_stats(trace)["prompt_p50"] - 20) <= 2
    same = sv.build_trace(3000, 10.0, dist, sv.LengthDist("uniform", 0, 0, 5, 9), vocab=100, seed=3)
    assert same == trace
    assert [r.prompt_ids for r in sv.with_rate(trace, math.inf, 3)] == [r.prompt_ids for r in trace]
    assert all(r.arrival_s == 0 for r in sv.with_rate(trace, math.inf, 3))


@pytest.mark.parametrize("bad, msg", [
    (dict(policies=["static", "fifo"]), "--policies"),
    (dict(prompt=sv.LengthDist("lognormal", 16, 0.6, 2, 200), output=sv.LengthDist("lognormal", 12, 0.6, 2, 100)),
     "exceeds --max_model_len"),
    (dict(rate=-2.0), "--rate must be > 0"),
    (dict(prompt=sv.LengthDist("lognormal", 16, 0.6, 0, 48)), "--prompt_min/--prompt_max"),
    (dict(settings={"num_blocks": 3}), "cannot hold the longest request"),
    (dict(preset="nope"), "unknown preset"),
    (dict(settings={"admission_batch": 0}), "--admission_batch must be >= 1"),
    (dict(settings={"admission_batch": 99}), "exceeds --max_num_seqs"),
    (dict(settings={"chunked_admission_batch": 0}), "--chunked_admission_batch must be >= 1"),
    (dict(settings={"chunked_admission_batch": 99}), "--chunked_admission_batch 99 exceeds --max_num_seqs"),
    (dict(mixed_graphs="sometimes"), "--mixed_graphs: expected on, off or both"),
])
def test_usage_errors(tmp_path, bad, msg):
    with pytest.raises(sv.ServingUsageError, match=msg):  # building the options, or before anything runs
        sv.run(_options(check_requests=0, **bad), out_dir=tmp_path)


def test_cli_error_is_one_line(tmp_path):
    env = {"PYTHONPATH": str(REPO), "LAB_RESULTS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "bench.serving", "--policies=fifo"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["error: --policies: expected some of static, continuous, chunked, "
                                               "got fifo"]


def test_admission_batch_runs_every_request_with_fewer_admission_steps():
    base = sv.run(_options(policies=["continuous"]), out_dir=None, log=lambda s: None)
    grouped = sv.run(_options(policies=["continuous"], settings={"admission_batch": 3}), out_dir=None,
                     log=lambda s: None)
    assert grouped["rows"][0]["completed"] == 12
    assert grouped["results"][0].outputs == base["results"][0].outputs  # fp32 greedy: same tokens


def test_chunked_admission_batch_applies_to_chunked_only():
    s = sv.EngineSettings(block_size=16, max_num_seqs=8, max_model_len=64, max_num_batched_tokens=64,
                          chunk_tokens=32, admission_batch=4, chunked_admission_batch=1)
    assert s.kwargs("chunked")["admission_batch"] == 1 and s.kwargs("continuous")["admission_batch"] == 4
    assert sv.EngineSettings(16, 8, 64, 64, 32, admission_batch=4).kwargs("chunked")["admission_batch"] == 4


def test_profile_steps_tags_mixed_and_decode_steps(tmp_path):
    logs = []
    res = sv.run(_options(policies=["continuous"], profile_steps=12), out_dir=tmp_path, log=logs.append)
    prof = res["profile"]
    assert len(prof["mixed"]) + len(prof["decode"]) == 12
    assert prof["mixed"] and prof["decode"]  # 12 requests on 6 slots: admissions and plain decodes
    assert all(ms > 0 for ms in prof["mixed"] + prof["decode"])
    assert prof["trace"].exists() and prof["trace"].stat().st_size > 1000
    text = "\n".join(logs)
    assert "top ops by self host time" in text and "aten::" in text


def test_shared_prefix_trace_hits_the_prefix_cache_only_when_it_is_on():
    # 12 prompts behind one 32-token system prompt (8 blocks of 4): with the cache on, every request
    # admitted after the first full prefix was computed reuses its blocks; off, nothing is reused.
    # fp32 greedy: the outputs are the same tokens either way.
    logs = []
    res = sv.run(_options(policies=["continuous"], shared_prefix_tokens=32, prefix_caching="both",
                          settings={"max_model_len": 128}), out_dir=None, log=logs.append)
    on, off = res["rows"]
    assert (on["policy"], off["policy"]) == ("continuous", "continuous/no-prefix-cache")
    assert on["prefix_hit_pct"] > 20 and off["prefix_hit_pct"] == 0
    assert all(len(r.prompt_ids) > 32 and r.prompt_ids[:32] == res["trace"][0].prompt_ids[:32] for r in res["trace"])
    assert res["results"][0].outputs == res["results"][1].outputs
    assert any("prefix cache, continuous:" in line for line in logs)


def test_chunk_sizes_sweep_runs_chunked_once_per_budget():
    # Two budgets beside continuous: a row each, named by budget, the same fp32 greedy tokens, and the
    # report line naming the fastest budget against continuous.
    logs = []
    res = sv.run(_options(policies=["continuous", "chunked"], chunk_sizes=[16, 48, 16]), out_dir=None,
                 log=logs.append)
    assert [r["policy"] for r in res["rows"]] == ["continuous", "chunked/16", "chunked/48"]
    assert all(r["completed"] == 12 for r in res["rows"])
    assert res["results"][1].outputs == res["results"][0].outputs == res["results"][2].outputs
    steps = [len(r.steps) for r in res["results"][1:]]
    assert steps[0] > steps[1]  # a smaller budget spreads the prompts over more steps
    text = "\n".join(logs)
    assert "chunk budget sweep against continuous" in text and "fastest budget" in text
    with pytest.raises(sv.ServingUsageError, match="--chunk_sizes must be >= 1"):
        _options(chunk_sizes=[0])

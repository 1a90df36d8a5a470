"""No bad request breaks the engine: bad SamplingParams fail at construction naming the field,
a request that fails inside a step finishes alone with an error, aborts from a streaming
callback work, and a CPU engine's default KV budget is capped and said."""

import numpy as np
import pytest

import scheduler.runner as runner_module
from model.random_weights import random_model
from scheduler import LLM, SamplingParams
from scheduler.engine import DEFAULT_CPU_KV_BUDGET_BYTES
from scheduler.params import SamplingParamsError

NAN = float("nan")

# (kwargs, the field the message must name, the value as the message must show it)
BAD = [
    (dict(temperature=1e-40), "temperature", "1e-40"),
    (dict(temperature=-1.0), "temperature", "-1.0"),
    (dict(temperature=NAN), "temperature", "nan"),
    (dict(temperature=float("inf")), "temperature", "inf"),
    (dict(temperature="0.5"), "temperature", "'0.5'"),
    (dict(temperature=True), "temperature", "True"),
    (dict(top_k=True), "top_k", "True"),
    (dict(top_k=0), "top_k", "0"),
    (dict(top_k=-2), "top_k", "-2"),
    (dict(top_k=2.0), "top_k", "2.0"),
    (dict(top_p=0.0), "top_p", "0.0"),
    (dict(top_p=1.5), "top_p", "1.5"),
    (dict(top_p=NAN), "top_p", "nan"),
    (dict(top_p=False), "top_p", "False"),
    (dict(seed=2**64), "seed", str(2**64)),
    (dict(seed=2**63), "seed", str(2**63)),
    (dict(seed=-1), "seed", "-1"),
    (dict(seed=1.5), "seed", "1.5"),
    (dict(seed=True), "seed", "True"),
    (dict(seed="7"), "seed", "'7'"),
    (dict(max_tokens=0), "max_tokens", "0"),
    (dict(max_tokens=True), "max_tokens", "True"),
    (dict(max_tokens=2.0), "max_tokens", "2.0"),
    (dict(max_tokens=None), "max_tokens", "None"),
    (dict(stop=[1]), "stop[0]", "1"),
    (dict(stop=["ok", ""]), "stop[1]", "''"),
    (dict(stop=5), "stop", "5"),
    (dict(stop_token_ids=["a"]), "stop_token_ids[0]", "'a'"),
    (dict(stop_token_ids=[2, True]), "stop_token_ids[1]", "True"),
    (dict(stop_token_ids=[-1]), "stop_token_ids[0]", "-1"),
    (dict(stop_token_ids=5), "stop_token_ids", "5"),
    (dict(stop_token_ids=[1.0]), "stop_token_ids[0]", "1.0"),
    (dict(ignore_eos="yes"), "ignore_eos", "'yes'"),
]


@pytest.mark.parametrize("kwargs,name,shown", BAD, ids=[f"{n}={s}" for _, n, s in BAD])
def test_bad_sampling_params_fail_at_construction_naming_the_field(kwargs, name, shown):
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(temperature=kwargs.pop("temperature", 1.0), **kwargs)
    msg = str(info.value)
    assert msg.startswith(f"{name} must be") and shown in msg, msg
    assert isinstance(info.value, ValueError)  # LLM.generate's callers catch ValueError


def test_good_sampling_params_are_normalised():
    p = SamplingParams(temperature=1, top_k=-1, top_p=1, seed=np.int64(2**63 - 1), max_tokens=np.int32(3),
                       stop="x", stop_token_ids={4})
    assert (p.temperature, p.top_k, p.top_p, p.seed, p.max_tokens, p.stop, p.stop_token_ids) == (
        1.0, None, 1.0, 2**63 - 1, 3, ("x",), (4,))
    assert type(p.seed) is int and type(p.max_tokens) is int and type(p.temperature) is float
    assert SamplingParams(temperature=1e-5).temperature == 1e-5 and SamplingParams(temperature=0).temperature == 0


def _llm(**kw):
    return LLM(random_model("tiny", n_layers=2, vocab_size=128, seed=1), block_size=4, num_blocks=64, **kw)


def _assert_empty(llm):
    engine = llm.engine
    assert not engine.has_unfinished_requests() and engine.blocks_in_use() == 0 and not engine._live
    engine.pool.check_invariants()


def test_bad_prompts_and_params_fail_with_one_clear_error():
    llm = _llm()
    for prompt, params, match in (([1, 2.5], None, "list of int token ids"), ([1, True], None, "int token ids"),
                                  ([1, "2"], None, "int token ids"), (None, None, "int token ids"),
                                  ([1, 2], {"max_tokens": 2}, "sampling_params must be a SamplingParams or a list"),
                                  ([1, 2], [None, {}], "sampling params must be a SamplingParams, got dict")):
        with pytest.raises(ValueError, match=match):
            llm.generate([[3, 4], prompt], params)
        _assert_empty(llm)  # the good request before it was taken back
    with pytest.raises(ValueError, match="on_token must be callable"):
        llm.generate([1, 2], on_token="print")
    with pytest.raises(ValueError, match="prompts must be text, a list of token ids, or a list of either; got int"):
        llm.generate(5)
    assert llm.generate([np.int64(1), 2], SamplingParams(max_tokens=2))[0].token_ids


def _fail_temperature(monkeypatch, bad_temperature):
    """decoding.sample as the runner calls it, raising for one temperature."""
    real = runner_module.sample

    def sample(logits, temperature=0.0, *args, **kwargs):
        if temperature == bad_temperature:
            raise RuntimeError("planted sampling fault")
        return real(logits, temperature, *args, **kwargs)
    monkeypatch.setattr(runner_module, "sample", sample)
    real_batch = runner_module.sample_batch

    def sample_batch(logits, temperatures, *args):  # the batched call fails, then each row alone
        if (temperatures == bad_temperature).any():
            raise RuntimeError("planted sampling fault")
        return real_batch(logits, temperatures, *args)
    monkeypatch.setattr(runner_module, "sample_batch", sample_batch)


@pytest.mark.parametrize("policy", ["continuous", "chunked"])
def test_a_request_whose_sampling_raises_fails_alone(monkeypatch, policy):
    llm = _llm(policy=policy, max_num_batched_tokens=64)
    _fail_temperature(monkeypatch, 0.5)
    streamed = []
    params = [SamplingParams(max_tokens=5), SamplingParams(temperature=0.5, max_tokens=6),
              SamplingParams(temperature=1.0, seed=3, max_tokens=4), SamplingParams(temperature=0.7, max_tokens=7)]
    outs = llm.generate([[1, 2, 3], [4, 5, 6, 7], [8, 9], [10] * 5], params, on_token=streamed.append)
    assert [(o.finish_reason, len(o.token_ids)) for o in outs] == [
        ("length", 5), ("error", 0), ("length", 4), ("length", 7)]
    bad = outs[1]
    assert bad.finished and bad.error == "RuntimeError: planted sampling fault"
    assert [o.error for o in outs if o is not bad] == [None] * 3
    assert [o for o in streamed if o.request_id == bad.request_id] == [bad]  # its stream ends with the error
    _assert_empty(llm)
    assert llm.generate([1, 2, 3], SamplingParams(max_tokens=5))[0].token_ids == outs[0].token_ids


def test_a_failing_forward_fails_its_step_and_the_engine_goes_on(monkeypatch):
    llm = _llm(policy="continuous")
    calls = []
    real = runner_module.build_metadata

    def build_metadata(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second step: both requests' first decode
            raise RuntimeError("planted forward fault")
        return real(*args, **kwargs)
    monkeypatch.setattr(runner_module, "build_metadata", build_metadata)
    outs = llm.generate([[1, 2, 3], [4, 5]], SamplingParams(max_tokens=4))
    assert [(o.finish_reason, len(o.token_ids)) for o in outs] == [("error", 1), ("error", 1)]
    assert all("forward raised RuntimeError: planted forward fault" in o.error for o in outs)
    _assert_empty(llm)
    assert [len(o.token_ids) for o in llm.generate([[1, 2, 3], [4, 5]], SamplingParams(max_tokens=4))] == [4, 4]
    _assert_empty(llm)


def test_a_raising_callback_fails_its_request_alone():
    llm = _llm()
    rids = []

    def on_token(out):
        rids.append(out.request_id)
        if out.request_id == rids[0] and len(out.token_ids) == 2:
            raise KeyError("planted callback fault")
    outs = llm.generate([[1, 2, 3], [4, 5]], SamplingParams(max_tokens=5), on_token=on_token)
    assert [(o.finish_reason, len(o.token_ids)) for o in outs] == [("error", 2), ("length", 5)]
    assert "on_token callback raised KeyError" in outs[0].error
    _assert_empty(llm)


class _BrokenTokenizer:
    """Cannot decode anything: a stop-string check on it raises."""

    eos_id = None

    def decode(self, ids):
        raise ValueError("planted decode fault")


def test_a_request_whose_stop_string_check_raises_fails_alone():
    llm = LLM(random_model("tiny", n_layers=2, vocab_size=128, seed=1), _BrokenTokenizer(), block_size=4,
              num_blocks=64)
    outs = llm.generate([[1, 2, 3], [4, 5]], [SamplingParams(max_tokens=5, stop=["x"]), SamplingParams(max_tokens=5)])
    assert [(o.finish_reason, len(o.token_ids)) for o in outs] == [("error", 1), ("length", 5)]
    assert outs[0].error == "its output stage raised ValueError: planted decode fault"
    _assert_empty(llm)


def test_abort_from_a_streaming_callback():
    llm = _llm(max_num_seqs=2)
    engine = llm.engine

    def on_token(out):
        if out.request_id == "0" and len(out.token_ids) == 2:
            engine.abort_request("0")  # itself
            engine.abort_request("3")  # one still waiting (max_num_seqs=2)
        if out.request_id == "1" and len(out.token_ids) == 3:
            engine.abort_request("1")
    outs = llm.generate([[1, 2, 3], [4, 5], [6, 7, 8], [9, 10]], SamplingParams(max_tokens=6), on_token=on_token)
    assert [(o.request_id, o.finish_reason, len(o.token_ids)) for o in outs] == [
        ("0", "abort", 2), ("1", "abort", 3), ("2", "length", 6), ("3", "abort", 0)]
    _assert_empty(llm)


def test_cpu_default_kv_budget_is_capped_and_said(capsys):
    model = random_model("tiny", n_layers=2, vocab_size=128, seed=1, max_seq_len=131072)
    llm = LLM(model)  # uncapped: 64 requests x 131072 tokens x 512 bytes = 4 GiB
    cap = llm.engine.capacity
    assert cap.num_blocks * cap.bytes_per_block <= DEFAULT_CPU_KV_BUDGET_BYTES
    line = capsys.readouterr().err.strip()
    assert line == (f"LLMEngine: CPU KV budget capped at 256 MiB (max_num_seqs=64 requests of "
                    f"max_model_len=131072 tokens would need 4096 MiB) = {cap.num_tokens} tokens of KV "
                    f"({cap.num_blocks - 1} blocks of 16); pass kv_budget_bytes or num_blocks to choose")
    assert len(llm.generate([1, 2, 3], SamplingParams(max_tokens=3))[0].token_ids) == 3
    llm.engine.close()
    small = LLM(random_model("tiny", n_layers=2, vocab_size=128, seed=1))  # 256-token context: not capped
    assert "CPU KV budget 8.0 MiB (room for max_num_seqs=64 requests of max_model_len=256" in capsys.readouterr().err
    assert small.engine.capacity.num_tokens >= 64 * 256


def test_unseeded_sampling_rows_are_sampled_in_one_batched_call(monkeypatch):
    # top_k=1 makes sampling deterministic: the batched path must give greedy's tokens, row by row,
    # whatever temperature each row has, while a seeded row goes through its own generator.
    llm = _llm(policy="continuous")
    calls = []
    real_batch = runner_module.sample_batch
    monkeypatch.setattr(runner_module, "sample_batch", lambda *a: calls.append(len(a[0])) or real_batch(*a))
    prompts = [[1, 2, 3], [4, 5, 6, 7], [8, 9], [10] * 5]
    greedy = [o.token_ids for o in llm.generate(prompts, SamplingParams(max_tokens=6))]
    params = [SamplingParams(temperature=t, top_k=1, max_tokens=6) for t in (0.5, 1.0, 1.7)] + [
        SamplingParams(temperature=0.9, top_k=1, seed=5, max_tokens=6)]
    assert [o.token_ids for o in llm.generate(prompts, params)] == greedy
    assert calls and max(calls) == 3  # the three unseeded rows together, the seeded one alone
    _assert_empty(llm)


def test_a_step_output_is_a_snapshot_that_later_steps_do_not_change():
    # Outputs slice the request's append-only lists on first read (no per-step copy): an output
    # read after more steps must still show the tokens of its own step.
    from scheduler.engine import LLMEngine
    llm = _llm(policy="continuous")
    engine = llm.engine
    rid = engine.add_request([1, 2, 3], SamplingParams(max_tokens=6))
    firsts = [o for o in engine.step() if o.request_id == rid]  # not read yet
    while engine.has_unfinished_requests():
        last = [o for o in engine.step() if o.request_id == rid]
    assert len(firsts[0].token_ids) == 1 and len(firsts[0].token_latencies_s) == 0 and not firsts[0].finished
    assert len(last[0].token_ids) == 6 and last[0].token_ids[0] == firsts[0].token_ids[0]
    failed = last[0].replace(finish_reason="error", error="boom")
    assert (failed.finish_reason, failed.error, failed.token_ids) == ("error", "boom", last[0].token_ids)
    assert last[0].finish_reason == "length" and failed != last[0]
    assert isinstance(engine, LLMEngine)

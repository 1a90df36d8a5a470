"""Engine parity: LLM.generate under every policy is token-identical to single-request greedy
decoding (decoding.generate), with and without preemption, prefix sharing and cancellation.

Exactness: both sides run fp32 on CPU with the same SDPA and mask; batching changes only
the float summation order of the projections (GEMM rows blocked differently), so logits
differ by ~1e-6 relative and greedy tokens agree unless two logits tie that closely.
No tie has flipped on these seeds; a flip would show as a mismatch to investigate, not
a tolerance to widen.
"""

import pytest
import torch

from cache import KVCapacityError
from decoding.generate import ContextLengthError, generate
from model.weights import save_model
from parity.engine_cases import check_stop_token, make_tiny_model, random_requests
from scheduler import LLM, LLMEngine, SamplingParams

N_REQUESTS = 72
BLOCK = 4
TIGHT_BLOCKS = 24  # 23 usable blocks = 92 tokens: ~3 requests of the trace at a time


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(seed=0)


@pytest.fixture(scope="module")
def trace():
    return random_requests(N_REQUESTS, seed=1)


@pytest.fixture(scope="module")
def refs(model, trace):
    return [generate(model, p, n).new_ids[0] for p, n in trace]


def run(model, reqs, **kw):
    llm = LLM(model, block_size=BLOCK, **kw)
    try:
        outs = llm.generate([p for p, _ in reqs], [SamplingParams(max_tokens=n) for _, n in reqs])
    finally:
        llm.engine.runner.close()
    return llm.engine, outs


def assert_all_blocks_free(engine):
    engine.pool.check_invariants()
    assert engine.pool.num_free_blocks == engine.pool.num_usable_blocks


@pytest.mark.parametrize("policy", ["static", "continuous", "chunked"])
@pytest.mark.parametrize("kv", ["ample", "tight"])
def test_matches_single_request_greedy(model, trace, refs, policy, kv):
    kw = dict(policy=policy, max_num_seqs=32)
    kw["num_blocks"] = TIGHT_BLOCKS if kv == "tight" else 512
    if policy == "chunked":
        kw["max_num_batched_tokens"] = 48  # prompts up to 40 + outputs: recomputes get chunked
    engine, outs = run(model, trace, **kw)
    mismatches = [i for i, (o, r) in enumerate(zip(outs, refs)) if o.token_ids != r]
    assert not mismatches, f"{len(mismatches)} requests differ, first {mismatches[:5]}"
    assert all(o.finished and o.finish_reason == "length" for o in outs)
    if kv == "tight":
        assert engine.scheduler.num_preemptions > 0
        assert sum(o.num_preemptions for o in outs) == engine.scheduler.num_preemptions
    assert_all_blocks_free(engine)


def test_trace_ten_times_the_kv_completes(model, trace, refs):
    engine, outs = run(model, trace, policy="chunked", num_blocks=TIGHT_BLOCKS, max_num_batched_tokens=32)
    mean_tokens = sum(len(p) + n for p, n in trace) / len(trace)
    fits_at_once = engine.capacity.num_tokens / mean_tokens
    assert len(trace) >= 10 * fits_at_once, (len(trace), fits_at_once)
    assert [o.token_ids for o in outs] == refs
    assert_all_blocks_free(engine)


def test_prefix_shared_requests_match_unshared(model):
    g = torch.Generator().manual_seed(5)
    system = torch.randint(1, 512, (24,), generator=g).tolist()  # 6 full blocks
    reqs = [(system + torch.randint(1, 512, (int(k),), generator=g).tolist(), 12)
            for k in torch.randint(1, 20, (10,), generator=g)]
    reqs.append((list(system), 12))  # every block hits: the last token is recomputed (copy-on-write)
    refs = [generate(model, p, n).new_ids[0] for p, n in reqs]
    llm = LLM(model, block_size=BLOCK, policy="chunked", num_blocks=128)
    params = [SamplingParams(max_tokens=n) for _, n in reqs]
    first = llm.generate(reqs[0][0], params[0])  # computes and caches the system prompt
    rest = llm.generate([p for p, _ in reqs[1:]], params[1:])
    outs = first + rest
    assert [o.token_ids for o in outs] == refs
    assert all(o.num_prefix_hit_tokens >= 24 for o in rest[:-1])
    assert rest[-1].num_prefix_hit_tokens == 23
    assert llm.engine.pool.num_prefix_hits >= 6 * len(rest)
    assert_all_blocks_free(llm.engine)
    # The same requests with prefix caching off give the same tokens and no hits.
    engine, unshared = run(model, reqs, policy="chunked", num_blocks=128, enable_prefix_caching=False)
    assert [o.token_ids for o in unshared] == refs and engine.pool.num_prefix_hits == 0


def test_cancel_mid_stream_frees_blocks(model, trace, refs):
    engine = LLMEngine(model, block_size=BLOCK, policy="continuous", num_blocks=64)
    try:
        streamed = []
        victim = engine.add_request(trace[0][0], SamplingParams(max_tokens=24), on_token=streamed.append)
        waiting = engine.add_request(trace[1][0], SamplingParams(max_tokens=5))
        other = engine.add_request(trace[2][0], SamplingParams(max_tokens=trace[2][1]))
        while len(streamed) < 3:
            engine.step()
        held = engine.pool.num_usable_blocks - engine.pool.num_free_blocks
        assert held > 0
        out = engine.abort_request(victim)
        engine.abort_request(waiting)
        assert out.finished and out.finish_reason == "abort" and out.token_ids == refs[0][:3]
        finals = {}
        while engine.has_unfinished_requests():
            finals.update({o.request_id: o for o in engine.step() if o.finished})
        assert set(finals) == {other} and finals[other].token_ids == refs[2]
        assert len(streamed) == 3  # nothing streams after the cancel
        assert_all_blocks_free(engine)
    finally:
        engine.runner.close()


class LetterTokenizer:
    """id -> one letter, so stop strings are easy to write."""

    eos_id = None

    def encode(self, text, bos=True):
        return [ord(c) - ord("a") + 1 for c in text]

    def decode(self, ids):
        return "".join(chr(ord("a") + (i - 1) % 26) for i in ids)


def test_stop_token_ends_the_request(model, trace, refs):
    check_stop_token(model, trace[5][0], refs[5], BLOCK)


def test_stop_strings_streaming_and_timings(model, trace, refs):
    tok = LetterTokenizer()
    llm = LLM(model, tok, block_size=BLOCK, policy="chunked", num_blocks=128)
    ref = refs[5]
    assert len(ref) >= 6
    stop_str = tok.decode(ref[4:6])
    events = []
    outs = llm.generate([trace[5][0]] * 2, [
        SamplingParams(max_tokens=len(ref), stop=[stop_str]),
        SamplingParams(max_tokens=2)], on_token=events.append)
    b, c = outs
    text = tok.decode(ref)
    assert b.finish_reason == "stop" and b.text == text[:text.find(stop_str)]
    assert c.token_ids == ref[:2] and c.finish_reason == "length" and c.text == text[:2]
    for o in outs:
        assert o.ttft_s is not None and o.ttft_s > 0
        assert len(o.token_latencies_s) == len(o.token_ids) - 1 and all(t >= 0 for t in o.token_latencies_s)
        mine = [e for e in events if e.request_id == o.request_id]
        assert len(mine) == len(o.token_ids) and mine[-1].finished and not any(e.finished for e in mine[:-1])
        assert [len(e.token_ids) for e in mine] == list(range(1, len(o.token_ids) + 1))
    assert llm.generate("abc", SamplingParams(max_tokens=3))[0].text is not None


def test_seeded_sampling_matches_single_request(model, trace):
    params = dict(temperature=0.8, top_k=50, top_p=0.95)
    reqs = trace[:6]
    refs = [generate(model, p, n, seed=100 + i, **params).new_ids[0] for i, (p, n) in enumerate(reqs)]
    llm = LLM(model, block_size=BLOCK, policy="chunked", num_blocks=256)
    outs = llm.generate([p for p, _ in reqs], [SamplingParams(max_tokens=n, seed=100 + i, **params)
                                               for i, (_, n) in enumerate(reqs)])
    assert [o.token_ids for o in outs] == refs


def test_errors_are_clear_and_leave_nothing_behind(model):
    llm = LLM(model, block_size=BLOCK, policy="continuous", num_blocks=16)  # 60 tokens of KV
    with pytest.raises(ContextLengthError, match="exceeds the context"):
        llm.generate([1] * 300, SamplingParams(max_tokens=4))
    with pytest.raises(KVCapacityError, match="can never fit"):
        llm.generate([[1] * 10, [1] * 58], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="tokenizer"):
        llm.generate("hello")
    with pytest.raises(ValueError, match="prompt ids"):
        llm.generate([[600]])
    assert not llm.engine.has_unfinished_requests()
    assert_all_blocks_free(llm.engine)
    assert llm.generate([1, 2, 3], SamplingParams(max_tokens=2))[0].finished


def test_llm_loads_a_checkpoint_path(model, trace, refs, tmp_path):
    save_model(model, str(tmp_path))
    llm = LLM(tmp_path, block_size=BLOCK, num_blocks=64)
    assert llm.generate(trace[0][0], SamplingParams(max_tokens=trace[0][1]))[0].token_ids == refs[0]

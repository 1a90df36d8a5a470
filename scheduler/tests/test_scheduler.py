"""Scheduler policies from counters alone: a fake runner stands in for the model (no tensors)."""

import pytest

from cache import BlockPool
from scheduler import ModelRunnerOutput, Request, RequestStatus, SamplingParams, Scheduler, SchedulerConfig


def fake_execute(sched):
    """Every sampling request 'generates' token 7."""
    return ModelRunnerOutput({s.request_id: 7 for s in sched.scheduled if s.sample})


def make(policy, num_blocks=64, block_size=4, budget=16, max_num_seqs=8):
    return Scheduler(SchedulerConfig(policy, max_num_seqs, budget, max_model_len=256),
                     BlockPool(num_blocks, block_size))


def add(s, rid, n_prompt, max_tokens, first=1):
    req = Request(rid, list(range(first, first + n_prompt)), SamplingParams(max_tokens=max_tokens))
    s.add_request(req)
    return req


def step(s):
    out = s.schedule()
    s.update_from_output(out, fake_execute(out))
    s.pool.check_invariants()
    return out


def drain(s, limit=1000):
    steps = []
    while s.has_unfinished() and len(steps) < limit:
        steps.append(step(s))
    assert not s.has_unfinished(), "the scheduler stalled"
    return steps


def test_chunked_prefill_mixes_decodes_and_chunks_within_budget():
    s = make("chunked", budget=8)
    a = add(s, "a", 3, 4)
    step(s)  # a's whole prompt
    b = add(s, "b", 20, 2)
    out = step(s)
    sizes = {x.request_id: len(x.token_ids) for x in out.scheduled}
    assert sizes == {"a": 1, "b": 7} and out.num_batched_tokens == 8
    assert [x.sample for x in out.scheduled] == [True, False]  # b's partial prefill samples nothing
    assert b.num_computed_tokens == 7 and b.num_output_tokens == 0
    steps = drain(s)
    assert all(o.num_batched_tokens <= 8 for o in steps)
    assert a.output_token_ids == [7] * 4 and b.output_token_ids == [7] * 2
    assert s.pool.num_free_blocks == s.pool.num_usable_blocks


def test_continuous_admits_mid_flight_static_waits_for_the_batch():
    for policy, joins_at in (("continuous", 1), ("static", 5)):
        s = make(policy, budget=64)
        add(s, "a", 4, 5)
        step(s)
        b = add(s, "b", 4, 1)
        n = 0
        while b.status == RequestStatus.WAITING:
            step(s)
            n += 1
        assert n == joins_at, policy
        drain(s)


def test_continuous_does_not_split_prompts():
    s = make("continuous", budget=10)
    add(s, "a", 9, 3)
    step(s)
    add(s, "b", 10, 1, first=100)  # no prefix shared with a
    out = step(s)  # a decodes (1) and b's 10-token prompt does not fit the 9 left
    assert [x.request_id for x in out.scheduled] == ["a"]
    drain(s)


def test_preemption_by_recompute_drops_nothing():
    s = make("chunked", num_blocks=7, block_size=4, budget=32)  # 24 tokens of KV
    reqs = [add(s, str(i), 6, 10, first=10 * i) for i in range(4)]  # each needs 16 tokens eventually
    steps = drain(s)
    assert s.num_preemptions > 0 and any(o.preempted_request_ids for o in steps)
    assert all(r.status == RequestStatus.FINISHED_LENGTH and r.output_token_ids == [7] * 10 for r in reqs)
    assert s.pool.num_free_blocks == s.pool.num_usable_blocks
    victim = next(r for r in reqs if r.num_preemptions)
    # A recomputed request re-enters with prompt + outputs as known tokens; its own freed
    # blocks come back as prefix hits.
    assert victim.num_prefix_hit_tokens > 0


def test_abort_frees_blocks_and_tells_the_runner():
    s = make("continuous")
    a = add(s, "a", 10, 50)
    add(s, "b", 5, 50, first=100)
    step(s)
    step(s)
    used = s.pool.num_usable_blocks - s.pool.num_free_blocks
    assert used == 3 + 2
    s.abort_request("a")
    assert a.status == RequestStatus.FINISHED_ABORTED
    assert s.pool.num_usable_blocks - s.pool.num_free_blocks == 2
    out = step(s)
    assert out.finished_request_ids == ["a"] and [x.request_id for x in out.scheduled] == ["b"]
    s.abort_request("b")
    assert s.pool.num_free_blocks == s.pool.num_usable_blocks and not s.has_unfinished()
    assert s.abort_request("b") is None


def test_new_request_data_sent_once_and_counters():
    s = make("chunked", budget=4)
    r = add(s, "a", 6, 2)
    o1 = step(s)
    o2 = step(s)
    assert [n.request_id for n in o1.new_requests] == ["a"] and not o2.new_requests
    assert o1.scheduled[0].start_pos == 0 and o2.scheduled[0].start_pos == 4
    assert r.num_computed_tokens == 6 and r.num_tokens == 7


def test_config_and_params_validation():
    with pytest.raises(ValueError, match="policy"):
        SchedulerConfig("fifo")
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    assert SamplingParams(stop="x").stop == ("x",)


@pytest.mark.parametrize("policy", ["continuous", "chunked"])
def test_admission_batch_admits_groups_once_full_and_finishes_everything(policy):
    def admissions(batch):
        s = Scheduler(SchedulerConfig(policy, 4, 64, max_model_len=256, admission_batch=batch), BlockPool(256, 4))
        reqs = [add(s, f"r{i}", 3, 2 + (i * 7) % 11, first=1 + 10 * i) for i in range(20)]
        steps = drain(s)
        assert all(r.status == RequestStatus.FINISHED_LENGTH and len(r.output_token_ids) == r.params.max_tokens
                   for r in reqs)
        new_per_step = [len(o.new_requests) for o in steps if o.new_requests]
        return new_per_step

    one, two = admissions(1), admissions(2)
    assert sum(one) == sum(two) == 20
    assert max(two[1:]) >= 2 and len(two) < len(one)  # fewer, larger admissions once the engine was full
    assert all(n >= 2 for n in two[1:-1])  # while full, never one at a time (the last may be a lone straggler)
    with pytest.raises(ValueError, match="admission_batch"):
        SchedulerConfig(policy, 4, 64, admission_batch=5)


def test_graph_host_staging_writes_every_element():
    """DecodeGraphs' host staging (numpy views): real rows as given, padding rows null, nothing stale."""
    import random

    import numpy as np

    from scheduler.graphs import fill_host

    rng = random.Random(0)
    size, max_blocks, bs, null = 8, 12, 16, 0
    for r in (size, 5, 1):
        tables = [[rng.randrange(1, 500) for _ in range(rng.randint(1, max_blocks))] for _ in range(r)]
        positions = [rng.randrange(len(t) * bs) for t in tables]
        ids = [rng.randrange(1000) for _ in range(r)]
        slots = [t[p // bs] * bs + p % bs for t, p in zip(tables, positions)]
        lens = [p + 1 for p in positions]
        longs = np.full((3, size), -7, dtype=np.int64)  # poisoned: every element must be written
        tabs = np.full((size, max_blocks), -7, dtype=np.int32)
        lens_a = np.full(size, -7, dtype=np.int32)
        fill_host(longs, tabs, lens_a, ids, positions, slots, tables, lens, null, bs)
        want_tabs = np.full((size, max_blocks), null, dtype=np.int32)
        for i, t in enumerate(tables):
            want_tabs[i, :len(t)] = t
        pad = size - r
        assert longs[0].tolist() == ids + [0] * pad and longs[1].tolist() == positions + [0] * pad
        assert longs[2].tolist() == slots + [null * bs] * pad
        assert (tabs == want_tabs).all() and lens_a.tolist() == lens + [1] * pad


def test_engine_kv_usage_counts_a_shared_block_once_and_close_frees_the_kv():
    from model.random_weights import random_model
    from scheduler.engine import LLMEngine

    engine = LLMEngine(random_model("tiny", seed=0), policy="continuous", block_size=4, num_blocks=32,
                       cuda_graph=False, fuse_projections=False)
    engine.runner.execute = lambda sched: ModelRunnerOutput({s.request_id: 7 for s in sched.scheduled if s.sample})
    prefix = list(range(1, 9))  # two full blocks, cached after the first prefill
    engine.add_request(prefix + [20], SamplingParams(max_tokens=4, ignore_eos=True))
    engine.step()
    assert engine.kv_usage() == (3, 9)  # 9 computed tokens in blocks of 4, 4, 1: the unshared path
    engine.add_request(prefix + [30, 31], SamplingParams(max_tokens=4, ignore_eos=True))
    engine.step()
    # A: 10 tokens in 3 blocks; B: the 2 shared blocks (counted once) plus 2 tokens in its own.
    assert engine.kv_usage() == (4, 4 + 4 + 2 + 2)
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.blocks_in_use() == 0 and engine.kv_usage() == (0, 0)
    engine.close()
    assert not engine.paged_kv.k and not engine.paged_kv.v

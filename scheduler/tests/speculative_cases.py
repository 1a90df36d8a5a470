"""Shared by the engine speculation tests (CPU and GPU): a random trace, and running it through an engine."""

from __future__ import annotations

import torch

from scheduler import LLM, SamplingParams

BLOCK = 4
TIGHT_BLOCKS = 20  # 19 usable blocks = 76 tokens: a few requests at a time, preemptions


def make_trace() -> list[tuple[list[int], int, bool]]:
    """24 (prompt, max_tokens, speculates): a random phrase repeated, a random tail; every 4th plain."""
    g = torch.Generator().manual_seed(7)
    out = []
    for i in range(24):
        phrase = torch.randint(1, 512, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
        tail = torch.randint(1, 512, (int(torch.randint(0, 4, (1,), generator=g)),), generator=g).tolist()
        prompt = phrase * int(torch.randint(2, 5, (1,), generator=g)) + tail
        out.append((prompt, int(torch.randint(4, 25, (1,), generator=g)), i % 4 != 3))
    return out


def run(model, trace, speculative=None, temperature=0.0, check_blocks=True, **engine_kwargs):
    """The trace through one engine, stepped by hand; after every step (check_blocks) each running request
    holds exactly the blocks its computed tokens need (the rejected slots' blocks went back to the pool)."""
    llm = LLM(model, block_size=BLOCK, policy="chunked", num_blocks=TIGHT_BLOCKS, max_num_batched_tokens=40,
              max_num_seqs=8, speculative=speculative, **engine_kwargs)
    engine, final = llm.engine, {}
    try:
        ids = [engine.add_request(p, SamplingParams(max_tokens=n, speculative=s, temperature=temperature,
                                                    seed=i if temperature else None))
               for i, (p, n, s) in enumerate(trace)]
        while engine.has_unfinished_requests():
            final.update((o.request_id, o) for o in engine.step() if o.finished)
            kv = engine.scheduler.kv
            held = {r.request_id: (len(kv.block_ids(r.request_id)), kv.blocks_needed(r.num_computed_tokens))
                    for r in engine.scheduler.running}
            assert not check_blocks or all(a == b for a, b in held.values()), f"blocks held vs needed: {held}"
    finally:
        engine.runner.close()
    return engine, [final[rid].token_ids for rid in ids]


def assert_all_blocks_free(engine):
    """Every usable block is back in the free queue and the pool's invariants hold."""
    engine.pool.check_invariants()
    assert engine.pool.num_free_blocks == engine.pool.num_usable_blocks

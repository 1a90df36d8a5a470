"""The engine's piecewise mixed-step graphs (scheduler/mixed_graphs.py), simulated on the CPU.

Triton's interpreter runs the flash face (CI sets TRITON_INTERPRET=1 for this test); the pieces run
eagerly (simulate=True) but every static buffer, the padding to a token bucket, the logits rows and
the attention call between pieces are the replay's. A chunked trace through the simulated graphs
must give the eager engine's tokens exactly: the same kernels on the same rows (padding rows are
extra rows of the GEMMs, which leave each real row's arithmetic alone on the CPU). Planted fault:
padding rows that keep a previous step's cache slots overwrite real tokens' K/V, and the tokens
change. The GPU test (parity/test_engine_gpu.py) replays real graphs.
"""

import pytest
import torch

from kernels import _triton
from parity.engine_cases import make_tiny_model, random_requests
from scheduler import LLM, SamplingParams
from scheduler.mixed_graphs import MixedGraphs


def _llm():
    if _triton.run_device() != "cpu":
        pytest.skip("the simulated pieces are a CPU test (TRITON_INTERPRET=1); the GPU test replays graphs")
    model = make_tiny_model(seed=3, head_dim=64, n_heads=4, n_kv_heads=2, dim=128, n_layers=2).to(torch.bfloat16)
    return LLM(model, block_size=4, policy="chunked", attention="flash", max_num_seqs=6,
               max_num_batched_tokens=24, num_blocks=96)


def _generate(reqs, mixed: bool):
    llm = _llm()  # a fresh engine each run: a second run on one engine would hit its prefix cache
    engine = llm.engine
    runner = engine.runner
    runner.mixed = None
    used = []
    if mixed:
        runner.mixed = MixedGraphs(engine.model, runner.face, engine.paged_kv, 6, 24, buckets=(8, 16, 32),
                                   simulate=True)
        run = runner.mixed.run
        runner.mixed.run = lambda ids, meta, rows: used.append(ids.numel()) or run(ids, meta, rows)
    outs = llm.generate([p for p, _ in reqs], [SamplingParams(max_tokens=n) for _, n in reqs])
    engine.pool.check_invariants()
    assert engine.pool.num_free_blocks == engine.pool.num_usable_blocks
    tokens = [o.token_ids for o in outs]
    runner.close()
    return tokens, used, runner.mixed


def test_simulated_pieces_give_the_eager_tokens():
    reqs = random_requests(6, seed=7, max_prompt=30, max_new=6)
    eager, _, _ = _generate(reqs, mixed=False)
    pieced, used, graphs = _generate(reqs, mixed=True)
    assert graphs.buckets == (8, 16, 24)  # the step budget is the last bucket
    # Mixed steps of several sizes replayed, some padded (not a multiple of a bucket).
    assert len(used) >= 3 and any(n not in graphs.buckets for n in used), used
    assert pieced == eager


def test_padding_rows_that_keep_old_slots_corrupt_the_cache(monkeypatch):
    reqs = random_requests(6, seed=7, max_prompt=30, max_new=6)
    eager, _, _ = _generate(reqs, mixed=False)
    # Planted fault: padding rows keep the cache slots of the bucket's previous step.
    monkeypatch.setattr(MixedGraphs, "_pad", lambda self, b, n: None)
    pieced, used, _ = _generate(reqs, mixed=True)
    assert pieced != eager


def test_steps_beyond_the_buckets_run_eagerly():
    llm = _llm()
    engine = llm.engine
    graphs = MixedGraphs(engine.model, engine.runner.face, engine.paged_kv, 6, 24, buckets=(8, 16, 32), simulate=True)
    assert graphs.fits(24, 6) and not graphs.fits(25, 1) and not graphs.fits(8, 7)
    with pytest.raises(ValueError, match="mixed_cuda_graph=True needs the decode CUDA graphs"):
        LLM(make_tiny_model(seed=1), num_blocks=16, mixed_cuda_graph=True)
    engine.runner.close()

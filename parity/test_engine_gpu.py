"""GPU: the engine's CUDA-graph decode steps (bucketed, padded) give the eager engine's tokens.

bf16 on the GPU, where graphs run (they replay the flash-decode kernel). Sequences stay
short (< 64 tokens), so flash decode uses one KV split at every batch size and padding a
batch to its bucket changes no reduction: graph and eager steps are bit-identical, and
so are the tokens. Fused projections are on in both runs (the engine's GPU default).
"""

import pytest
import torch

from parity.engine_cases import make_tiny_model, random_requests
from scheduler import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _run(cuda_graph, policy, reqs):
    model = make_tiny_model(seed=3, head_dim=64, n_heads=4, n_kv_heads=2, dim=256).to("cuda", torch.bfloat16)
    llm = LLM(model, block_size=16, policy=policy, cuda_graph=cuda_graph, max_num_seqs=24,
              kv_budget_bytes=64 << 20)
    outs = llm.generate([p for p, _ in reqs], [SamplingParams(max_tokens=n) for _, n in reqs])
    engine = llm.engine
    engine.pool.check_invariants()
    assert engine.pool.num_free_blocks == engine.pool.num_usable_blocks
    graphs = engine.runner.graphs
    llm.engine.runner.close()
    return [o.token_ids for o in outs], graphs


@pytest.mark.parametrize("policy", ["continuous", "chunked"])
def test_graph_steps_match_eager_steps(policy):
    reqs = random_requests(40, seed=5, max_prompt=30, max_new=24)
    eager, none = _run(False, policy, reqs)
    graphed, graphs = _run(True, policy, reqs)
    assert none is None and graphs is not None and graphs._graphs  # graphs were captured and used
    assert len(graphs._graphs) >= 2  # several buckets as the batch grew and shrank
    assert graphed == eager
    assert all(len(t) == n for t, (_, n) in zip(graphed, reqs))


def test_cuda_graph_needs_flash_decode_dtype():
    model = make_tiny_model(seed=1).to("cuda")  # fp32
    with pytest.raises(ValueError, match="fp16/bf16"):
        LLM(model, cuda_graph=True, kv_budget_bytes=8 << 20)

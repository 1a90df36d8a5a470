"""GPU: engine speculation (scheduler/speculative.py: n-gram and draft model) on the paged cache.

fp32 (the SDPA gather face): n-gram and draft-model speculative and plain engine runs give the same
greedy tokens with preemption, as on CPU (test_speculative_engine.py). bf16 with the flash face and
decode CUDA graphs (the serving configuration): k + 1-wide verify rows run eagerly beside graphed
plain decode steps; a smoke check that every request completes, proposals are verified and accepted,
and the blocks return (bf16 rounding differs between a 1-row and a k + 1-row step, so token equality
is not asserted there).
"""

import pytest
import torch

from decoding.speculative import SpeculativeConfig
from parity.engine_cases import make_tiny_model
from scheduler import LLM, SamplingParams
from scheduler.tests.speculative_cases import assert_all_blocks_free, make_trace, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def trace():
    return make_trace()


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(seed=0).cuda()


def test_speculative_engine_equals_plain_engine_fp32(model, trace):
    _, plain = run(model, trace)
    engine, outs = run(model, trace, SpeculativeConfig("ngram", 3))
    bad = [i for i, (o, r) in enumerate(zip(outs, plain)) if o != r]
    assert not bad, f"{len(bad)} requests differ from the plain engine, first {bad[:5]}"
    assert engine.scheduler.proposer.accepted > 0 and engine.scheduler.num_preemptions > 0


def test_draft_model_engine_equals_plain_engine_fp32(model, trace):
    _, plain = run(model, trace)
    draft = make_tiny_model(seed=0).cuda()
    with torch.no_grad():  # the same weights, perturbed: proposals accepted often, not always
        g = torch.Generator(device="cuda").manual_seed(0)
        for p in draft.parameters():
            p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g, device="cuda"))
    engine, outs = run(model, trace, SpeculativeConfig("draft", 3), draft_model=draft)
    bad = [i for i, (o, r) in enumerate(zip(outs, plain)) if o != r]
    assert not bad, f"{len(bad)} requests differ from the plain engine, first {bad[:5]}"
    prop = engine.scheduler.proposer
    assert prop.accepted > 0 and prop.proposed > prop.accepted


def test_speculative_engine_with_flash_and_graphs_bf16(trace):
    net = make_tiny_model(seed=0, dim=256).to("cuda", torch.bfloat16)  # head_dim 64: the flash kernels'
    llm = LLM(net, block_size=16, num_blocks=64, max_num_seqs=8, speculative=SpeculativeConfig("ngram", 3))
    assert llm.engine.runner.graphs is not None and llm.engine.runner.face.name == "flash"
    outs = llm.generate([p for p, _, _ in trace], [SamplingParams(max_tokens=n, speculative=s) for _, n, s in trace])
    assert all(o.finish_reason == "length" and len(o.token_ids) == n for o, (_, n, _) in zip(outs, trace))
    prop = llm.engine.scheduler.proposer
    assert prop.proposed > 0 and prop.accepted > 0, (prop.proposed, prop.accepted)
    assert_all_blocks_free(llm.engine)
    llm.close()

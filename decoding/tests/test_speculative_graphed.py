"""The graphed speculative path (FastGenerator steps captured into graphs) equals plain greedy, on CPU.

decoding.cuda_graph.simulate_capture stands in for CUDA-graph capture with its semantics: warm-up
and capture calls really run the step (a model step writes its KV cache), outputs are static tensors
each replay overwrites, replays read the static inputs as they are at replay time. So the bug the
H200 found (bench/results/h200-2026-11-29-quant-spec/speculative/gpu_test_failure.txt: a step width
captured lazily after the prefill wrote token 0's K/V over the prompt's position 0, and the first
verify diverged at token index 1) fails here without a GPU: with FastGenerator.step_for's cache
restore removed, draft speculation differs at index 1 (seen; test_capture_keeps_the_cache pins it).
"""

from __future__ import annotations

import pytest
import torch

from decoding.cuda_graph import simulate_capture
from decoding.fast import FastGenerator
from decoding.generate import generate
from decoding.speculative import SpeculativeConfig, SpeculativeDecoder, divergence_report
from model.random_weights import random_model


def _pair():
    target = random_model("tiny", dtype=torch.float32, seed=3, vocab_size=64)
    draft = random_model("tiny", dtype=torch.float32, seed=3, vocab_size=64)
    with torch.no_grad():  # the same weights, perturbed: proposals accepted often, not always
        g = torch.Generator().manual_seed(1)
        for p in draft.parameters():
            p.mul_(1 + 0.02 * torch.randn(p.shape, generator=g))
    return target, draft


@pytest.mark.parametrize("method,k", [("draft", 4), ("ngram", 3)])
def test_simulated_graphs_speculative_equals_plain_greedy(method, k):
    target, draft = _pair()
    prompts = [[5, 9, 2, 33, 7, 1, 2, 3], [1, 2, 3, 1, 2, 3, 1, 2], [60, 61, 62]]
    refs = [generate(target, p, 24).new_ids[0] for p in prompts]
    # A fresh decoder: every step width is captured lazily, mid-generation, as on the GPU.
    dec = SpeculativeDecoder(target, draft if method == "draft" else None, max_seq_len=64, cuda_graph=True,
                             capture=simulate_capture)
    accepted = rejected = 0
    for p, ref in zip(prompts, refs):
        trace = []
        out = dec.generate(p, 24, SpeculativeConfig(method, k), trace=trace)
        assert out.new_ids[0] == ref, f"{method}: prompt {p} {divergence_report(trace, out.new_ids[0], ref)}"
        accepted += out.stats.accepted
        rejected += out.stats.proposed - out.stats.accepted
    assert accepted > 0 and rejected > 0  # both the accept and the reject path ran
    assert dec.target.step_for(1, 2).graph is not None  # verify steps replayed (simulated) graphs
    dec.close()


def test_capture_keeps_the_cache():
    """Capturing a step after the cache holds a prompt leaves every cached K/V as it was."""
    target, _ = _pair()
    gen = FastGenerator(target, 1, 32, cuda_graph=True, fuse=False, capture=simulate_capture)
    with torch.inference_mode():
        target(torch.tensor([[5, 9, 2, 33, 7, 1]]), torch.arange(6))
        cache = target.model.layers[0].self_attn.kv_cache
        before = cache.k_cache.clone(), cache.v_cache.clone()
        assert before[0][:, :, :6].abs().sum() > 0  # the prompt is there (not a comparison of zeros)
        for w in (1, 3, 5):
            gen.step_for(1, w)
        assert torch.equal(cache.k_cache, before[0]) and torch.equal(cache.v_cache, before[1])
    gen.close()


def _heads_traces(target, heads, prompts, **kw):
    """(new ids, proposals per cycle) of heads speculation over a fresh decoder built with kw."""
    dec = SpeculativeDecoder(target, heads=heads, max_seq_len=64, **kw)
    outs, props = [], []
    for p in prompts:
        trace = []
        outs.append(dec.generate(p, 24, SpeculativeConfig("heads", 3), trace=trace).new_ids[0])
        props.append([c.proposal for c in trace])
    dec.close()
    return outs, props


def test_simulated_graphs_heads_propose_as_eager_steps():
    """Heads read the hidden state that the (graphed) verify step copied out (decoding.heads.HiddenTap):
    graphed and eager runs propose the same tokens cycle by cycle, and both equal plain greedy."""
    from decoding.heads import MedusaHeads

    target, _ = _pair()
    heads = MedusaHeads(3, target.config.dim, 64)
    torch.nn.init.normal_(heads.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    prompts = [[5, 9, 2, 33, 7, 1, 2, 3], [1, 2, 3, 1, 2, 3, 1, 2], [60, 61, 62]]
    refs = [generate(target, p, 24).new_ids[0] for p in prompts]
    eager = _heads_traces(target, heads, prompts)
    graphed = _heads_traces(target, heads, prompts, cuda_graph=True, capture=simulate_capture)
    assert eager[0] == graphed[0] == refs
    assert eager[1] == graphed[1] and len({tuple(p) for ps in eager[1] for p in ps}) > 3  # not constant


def test_simulated_graphs_eagle_proposes_as_eager_steps():
    """The EAGLE head reads the features the (graphed) verify step copied out, every row of them
    (decoding.eagle): graphed and eager runs propose the same tokens cycle by cycle, both equal plain greedy."""
    from decoding.eagle import EagleHead, head_config

    target, _ = _pair()
    head = EagleHead(head_config(target.config))
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3, generator=torch.Generator().manual_seed(1))
    head = head.eval().requires_grad_(False)
    prompts = [[5, 9, 2, 33, 7, 1, 2, 3], [1, 2, 3, 1, 2, 3, 1, 2], [60, 61, 62]]
    refs = [generate(target, p, 24).new_ids[0] for p in prompts]

    def traces(**kw):
        dec = SpeculativeDecoder(target, eagle=head, max_seq_len=64, **kw)
        outs, props = [], []
        for p in prompts:
            trace = []
            outs.append(dec.generate(p, 24, SpeculativeConfig("eagle", 3), trace=trace).new_ids[0])
            props.append([c.proposal for c in trace])
        dec.close()
        return outs, props

    eager, graphed = traces(), traces(cuda_graph=True, capture=simulate_capture)
    assert eager[0] == graphed[0] == refs
    assert eager[1] == graphed[1] and len({tuple(p) for ps in eager[1] for p in ps}) > 3  # not constant

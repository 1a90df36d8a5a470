"""GPU: speculative decoding with CUDA-graphed draft and verify steps equals plain greedy (fp32).

Its CPU twin, decoding/tests/test_speculative_graphed.py, runs the same graphed path with simulated
capture (the lazily captured step that overwrote the prompt's position 0 failed both).
"""

import pytest
import torch

from decoding.generate import generate
from decoding.speculative import SpeculativeConfig, SpeculativeDecoder, divergence_report
from model.random_weights import random_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_graphed_speculative_equals_plain_greedy():
    target = random_model("tiny", device="cuda", dtype=torch.float32, seed=3, vocab_size=64)
    draft = random_model("tiny", device="cuda", dtype=torch.float32, seed=3, vocab_size=64)
    with torch.no_grad():  # the same weights, perturbed: proposals accepted often, not always
        g = torch.Generator(device="cuda").manual_seed(1)
        for p in draft.parameters():
            p.mul_(1 + 0.02 * torch.randn(p.shape, generator=g, device="cuda"))
    prompts = [[5, 9, 2, 33, 7, 1, 2, 3], [1, 2, 3, 1, 2, 3, 1, 2], [60, 61, 62]]
    refs = [generate(target, p, 24).new_ids[0] for p in prompts]
    accepted = rejected = 0
    for cfg in (SpeculativeConfig("draft", 4), SpeculativeConfig("ngram", 3)):
        # A fresh decoder per method: every width is captured on first use, after a prefill (the bug).
        dec = SpeculativeDecoder(target, draft if cfg.method == "draft" else None, max_seq_len=64, cuda_graph=True)
        for p, ref in zip(prompts, refs):
            trace = []
            out = dec.generate(p, 24, cfg, trace=trace)
            assert out.new_ids[0] == ref, f"{cfg.method}: prompt {p} {divergence_report(trace, out.new_ids[0], ref)}"
            accepted += out.stats.accepted
            rejected += out.stats.proposed - out.stats.accepted
        assert dec.target.step_for(1, 2).graph is not None  # the verify steps replay captured graphs
        dec.close()
    assert accepted > 0 and rejected > 0


def test_graphed_heads_propose_as_eager_steps():
    """Medusa heads read hidden states the captured verify graphs copy out (decoding.heads.HiddenTap: a
    hook whose copy is captured into each graph): graphed and eager runs propose the same tokens cycle by
    cycle and both equal plain greedy. A tap the graphs did not replay would hand stale states."""
    from decoding.heads import MedusaHeads

    target = random_model("tiny", device="cuda", dtype=torch.float32, seed=3, vocab_size=64)
    heads = MedusaHeads(3, target.config.dim, 64)
    torch.nn.init.normal_(heads.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    heads = heads.cuda()
    prompts = [[5, 9, 2, 33, 7, 1, 2, 3], [1, 2, 3, 1, 2, 3, 1, 2], [60, 61, 62]]
    refs = [generate(target, p, 24).new_ids[0] for p in prompts]
    runs = []
    for graphed in (False, True):
        dec = SpeculativeDecoder(target, heads=heads, max_seq_len=64, cuda_graph=graphed)
        outs, props = [], []
        for p in prompts:
            trace = []
            outs.append(dec.generate(p, 24, SpeculativeConfig("heads", 3), trace=trace).new_ids[0])
            props.append([c.proposal for c in trace])
        if graphed:
            assert dec.target.step_for(1, 4).graph is not None
        dec.close()
        runs.append((outs, props))
    assert runs[0][0] == runs[1][0] == refs
    assert runs[0][1] == runs[1][1] and len({tuple(p) for ps in runs[0][1] for p in ps}) > 3

"""Sampled n-gram speculation in the engine emits the target's distribution (chi-square).

A tiny random model with vocabulary 16 (parity/engine_cases.make_tiny_model). The prompt is the
model's own greedy continuation (32 tokens), so the n-gram proposer finds matches whose proposals the
model often agrees with: both the accept path and the residual path run. N identical requests of 4
tokens at temperature 0.8 go through the engine (prefix cache, batches of up to 256): t1 is sampled
after the prefill, then the next step verifies t1 plus up to 2 proposals. The exact marginals of t2
and t3 (sum over t1, t2 of p1 p2 p3, from 1 + 16 + 256 contexts in batched forwards) are compared with
the engine's counts by chi-square (parity/chi_square.py: bins with E < 5 merged, alpha 1e-4, the
Wilson-Hilferty bound). N = 3,000 requests (~15 s of CPU; decoding's test of the same verify_sampled
draws 40,000 through the rule itself, this one checks the engine's use of it: the rows it verifies,
the per-request temperature, the point-mass q, the accepted tokens' bookkeeping). Measured: X2 15.3
and 13.3 against a bound of 44.6 (df 15). Planted bug: accepting every proposal gives X2 207 and 414
with 1,000 requests.
"""

from __future__ import annotations

import pytest
import torch

import decoding.speculative as dspec
from decoding.generate import generate
from decoding.sampling import logits_to_probs
from decoding.speculative import SpeculativeConfig
from parity.chi_square import ALPHA, chi_square, critical_value
from parity.engine_cases import make_tiny_model
from scheduler import LLM, SamplingParams

V, N, TEMPERATURE = 16, 3000, 0.8


@pytest.fixture(scope="module")
def setup():
    model = make_tiny_model(seed=0, vocab_size=V)
    prompt = [3] + generate(model, [3], 31).new_ids[0]
    with torch.no_grad():
        probs = lambda ctx: logits_to_probs(model(ctx)[:, -1], TEMPERATURE, None, None).double()  # noqa: E731
        base = torch.tensor([prompt])
        p1 = probs(base)[0]  # (V,)
        t1 = torch.arange(V)[:, None]
        p2 = probs(torch.cat([base.expand(V, -1), t1], 1))  # (V, V): [t1, t2]
        pairs = torch.cartesian_prod(torch.arange(V), torch.arange(V))  # (V*V, 2): t1, t2
        p3 = probs(torch.cat([base.expand(V * V, -1), pairs], 1)).view(V, V, V)  # [t1, t2, t3]
    m2 = p1 @ p2  # marginal of t2
    m3 = torch.einsum("a,ab,abc->c", p1, p2, p3)  # marginal of t3
    return model, prompt, m2, m3


def draw(model, prompt, n, seed=0):
    """n requests of 4 tokens through a speculating engine; (counts of t2 (V,), of t3 (V,), proposer)."""
    llm = LLM(model, block_size=16, num_blocks=n // 2 + 64, max_num_seqs=256, max_num_batched_tokens=4096,
              speculative=SpeculativeConfig("ngram", 2))
    torch.manual_seed(seed)  # unseeded requests draw from the global generator
    try:
        outs = llm.generate([prompt] * n, SamplingParams(max_tokens=4, temperature=TEMPERATURE))
    finally:
        llm.close()
    toks = torch.tensor([o.token_ids for o in outs])  # (n, 4)
    return torch.bincount(toks[:, 1], minlength=V), torch.bincount(toks[:, 2], minlength=V), \
        llm.engine.scheduler.proposer


def test_sampled_engine_speculation_matches_the_target(setup):
    model, prompt, m2, m3 = setup
    c2, c3, prop = draw(model, prompt, N)
    # Both rules ran: proposals accepted (the accept and bonus path) and rejected (the residual path).
    assert 0.05 < prop.accepted / prop.proposed < 0.95, (prop.accepted, prop.proposed)  # measured 551 / 4,439
    assert prop.steps >= N // 2
    for name, counts, probs in (("t2", c2, m2), ("t3", c3, m3)):
        stat, df = chi_square([(counts, probs)])
        assert df >= 3, f"{name}: too few bins ({df + 1}) for the test to say anything"
        crit = critical_value(df)
        assert stat <= crit, f"{name}: chi-square {stat:.1f} > {crit:.1f} (df {df}, alpha {ALPHA})"


def test_always_accepting_fails(setup, monkeypatch):
    model, prompt, m2, m3 = setup
    monkeypatch.setattr(dspec, "_accept", lambda u, p, q: torch.ones_like(p, dtype=torch.bool))
    c2, c3, _ = draw(model, prompt, 1000)
    stats = [chi_square([(c, m)]) for c, m in ((c2, m2), (c3, m3))]
    assert any(stat > critical_value(df) for stat, df in stats), f"always accepting went unnoticed: {stats}"

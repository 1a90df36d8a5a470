"""Speculative decoding in the engine (scheduler/speculative.py): n-gram speculation on the paged cache
gives the plain engine's greedy tokens, token for token, on a random trace with preemption, with
requests that do not speculate in the same steps.

fp32 on CPU, the tiny random model of the engine parity tests (parity/engine_cases.py). Prompts repeat
a random phrase, so n-gram proposals are accepted often and rejected often (both paths run). Exactness
as in parity/test_engine.py: batching and the k + 1-wide verify rows change only the summation order.
Planted faults (test_planted_faults_change_the_outputs,
test_kept_rejected_blocks_fail_the_block_check): accepting one proposal too many, rolling back one
slot too few or one block too many, each changes the outputs of this trace; keeping the rejected
slots' blocks fails run()'s (speculative_cases.py) per-step check of the blocks each request holds.
"""

from __future__ import annotations

import pytest
import torch
import scheduler.speculative as spec_mod
from cache.kv_manager import KVCacheManager
from decoding.generate import generate
from decoding.speculative import SpeculativeConfig
from model.random_weights import perturbed_copy
from parity.engine_cases import make_tiny_model
from scheduler import LLM, SamplingParams
from scheduler.tests.speculative_cases import assert_all_blocks_free, make_trace, run


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(seed=0)


@pytest.fixture(scope="module")
def trace():
    return make_trace()


@pytest.fixture(scope="module")
def refs(model, trace):
    return [generate(model, p, n).new_ids[0] for p, n, _ in trace]


def test_speculative_engine_equals_plain_engine_with_preemption(model, trace, refs):
    plain_engine, plain = run(model, trace)
    engine, outs = run(model, trace, SpeculativeConfig("ngram", 3))
    assert plain == refs  # the plain engine is single-request greedy (parity/test_engine.py's claim)
    bad = [i for i, (o, r) in enumerate(zip(outs, refs)) if o != r]
    assert not bad, f"{len(bad)} requests differ from plain greedy, first {bad[:5]}: {outs[bad[0]]} vs {refs[bad[0]]}"
    prop = engine.scheduler.proposer
    assert prop.accepted > 0 and prop.proposed - prop.accepted > 0, (prop.proposed, prop.accepted)
    assert engine.scheduler.num_preemptions > 0  # the KV budget forced recomputes mid-speculation
    # Fewer steps than plain: accepted proposals are tokens without a step of their own.
    assert engine.scheduler.num_steps < plain_engine.scheduler.num_steps
    assert_all_blocks_free(engine)


def _accept_one_too_many(m):
    real = spec_mod.verify_greedy

    def verify(logits, draft):
        n, nxt = real(logits, draft)
        return (n + 1, int(logits[n + 1].argmax())) if n < draft.shape[0] else (n, nxt)
    m.setattr(spec_mod, "verify_greedy", verify)


def _count_a_rejected_slot(m):
    """Roll back one slot too few: the first rejected proposal's K/V counted as computed."""
    real = spec_mod.apply_verified

    def apply(scheduler, req, s, result):
        acc = result.accepted_token_ids.get(s.request_id)
        touched = real(scheduler, req, s, result)
        if touched and not req.status.finished and len(acc) < len(s.draft_token_ids):
            req.num_computed_tokens += 1
        return touched
    m.setattr("scheduler.scheduler.apply_verified", apply)


def _free_one_block_too_many(m):
    """Roll back one block too many: computed K/V handed back to the pool."""
    real = KVCacheManager.free_tail
    m.setattr(KVCacheManager, "free_tail", lambda self, rid, n: real(self, rid, max(0, n - self.block_size)))


def _keep_rejected_blocks(m):
    """No block rollback: the rejected slots' blocks stay with the request (run() checks the holdings)."""
    m.setattr(KVCacheManager, "free_tail", lambda self, rid, n: None)


@pytest.mark.parametrize("plant", [_accept_one_too_many, _count_a_rejected_slot, _free_one_block_too_many])
def test_planted_faults_change_the_outputs(model, trace, refs, monkeypatch, plant):
    """Each fault the equality above exists to catch changes this trace's outputs (9-12 of 24 requests
    differ; the block check is off here, it would catch the last two first)."""
    with monkeypatch.context() as m:
        plant(m)
        _, outs = run(model, trace, SpeculativeConfig("ngram", 3), check_blocks=False)
    assert outs != refs, f"{plant.__name__} went unnoticed"


def test_kept_rejected_blocks_fail_the_block_check(model, trace, monkeypatch):
    """Blocks not rolled back leave the outputs right (nothing reads them) but leak until the request ends."""
    _keep_rejected_blocks(monkeypatch)
    with pytest.raises(AssertionError, match="blocks held vs needed"):
        run(model, trace, SpeculativeConfig("ngram", 3))


def test_sampled_speculation_runs_and_frees(model, trace):
    """Sampling through the rejection rule (its distribution is decoding's chi-square test of the same
    verify_sampled): every request completes with in-vocabulary tokens and returns its blocks; a seed
    gives the same tokens twice."""
    engine, outs = run(model, trace, "ngram", temperature=0.8)
    assert all(len(o) == n and all(0 <= t < 512 for t in o) for o, (_, n, _) in zip(outs, trace))
    assert engine.scheduler.proposer.proposed > 0
    assert_all_blocks_free(engine)
    assert run(model, trace, "ngram", temperature=0.8)[1] == outs


def test_draft_model_speculation_equals_plain_greedy_with_preemption(model, trace, refs):
    """DraftProposer: a perturbed copy of the target drafts k = 3 (its own static cache per request)."""
    engine, outs = run(model, trace, SpeculativeConfig("draft", 3), draft_model=perturbed_copy(model, 0.3))
    bad = [i for i, (o, r) in enumerate(zip(outs, refs)) if o != r]
    assert not bad, f"{len(bad)} requests differ from plain greedy, first {bad[:5]}"
    prop = engine.scheduler.proposer
    assert prop.accepted > 0 and prop.proposed - prop.accepted > 0, (prop.proposed, prop.accepted)
    assert engine.scheduler.num_preemptions > 0
    assert_all_blocks_free(engine)
    assert len(prop._state) <= 8  # draft caches of finished requests are dropped: at most max_num_seqs held


def test_bad_speculative_arguments(model):
    with pytest.raises(ValueError, match="needs draft_model"):
        LLM(model, num_blocks=16, speculative="draft")
    with pytest.raises(ValueError, match="vocabulary"):
        LLM(model, num_blocks=16, speculative="draft", draft_model=make_tiny_model(seed=1, vocab_size=64))
    with pytest.raises(ValueError, match="without speculative"):
        LLM(model, num_blocks=16, draft_model=perturbed_copy(model, 0.3))
    with pytest.raises(ValueError, match="speculative method"):
        LLM(model, num_blocks=16, speculative="medusa")
    with pytest.raises(ValueError, match="speculative must be a bool"):
        SamplingParams(speculative=1)

"""EAGLE speculation (decoding/eagle.py, method "eagle"): greedy output == plain greedy token for token
(fp32) on Spec-Bench prompts with lab-small and its shipped head (models/lab-small-eagle), acceptance
above a bound the shipped head meets and a planted off-by-one in the token/feature alignment does not;
the sampling path runs seeded; a head that does not fit the target is one EagleError naming the file;
the training loss falls on a few steps."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import model
from data.spec_bench import TASKS, by_task, prompt_ids
from decoding import speculative
from decoding.eagle import EagleError, EagleHead, head_config, load_eagle, save_eagle
from decoding.speculative import SpeculativeConfig, SpeculativeDecoder
from model.loader import checkpoint_dir
from model.random_weights import random_model
from model.tokenizer import load_tokenizer

# The shipped head accepts 0.31 of its proposals on these prompts at k = 3 (measured; Spec-Bench is out
# of lab-small's domain, its card's held-out figures are higher); with the planted off-by-one below (each
# fed token one step behind its feature) 0.20 (measured when written). The bound sits between.
EAGLE_MIN_ACCEPTANCE = 0.26


@pytest.fixture(scope="module")
def runs():
    tok = load_tokenizer(checkpoint_dir("lab-small"))
    target = model.load("lab-small", dtype=torch.float32)
    groups = by_task(1)
    prompts = [prompt_ids(tok, q, 64) for t in TASKS for q in groups[t]]
    return target, load_eagle("lab-small-eagle", target), prompts


def _acceptance(target, head, prompts, k=3, n=24):
    dec = SpeculativeDecoder(target, eagle=head, max_seq_len=128)
    acc = prop = 0
    try:
        for ids in prompts:
            ref = dec.plain(ids, n).new_ids[0]
            out = dec.generate(ids, n, SpeculativeConfig("eagle", k))
            assert out.new_ids[0] == ref, ("eagle output differs from plain greedy", ids[:8])
            acc, prop = acc + out.stats.accepted, prop + out.stats.proposed
    finally:
        dec.close()
    return acc / prop


def test_eagle_equals_plain_greedy_and_is_accepted(runs):
    target, head, prompts = runs
    assert not _acceptance(target, head, prompts) < EAGLE_MIN_ACCEPTANCE


def test_eagle_token_off_by_one_is_caught(runs, monkeypatch):
    """Planted: the catch-up pairs feature h_{j-1} with token t_{j-1} instead of t_j (EAGLE's token "one
    step ahead" lost). The output stays plain greedy's (the target verifies) but acceptance collapses."""
    target, head, prompts = runs
    monkeypatch.setattr(speculative, "_eagle_catch_up", lambda seq, eagle_len: seq[eagle_len - 1:-1])
    assert _acceptance(target, head, prompts) < EAGLE_MIN_ACCEPTANCE


def test_sampling_runs_seeded_on_a_random_model():
    target = random_model("tiny", dtype=torch.float32, seed=0, max_seq_len=64)
    head = EagleHead(head_config(target.config)).eval().requires_grad_(False)
    dec = SpeculativeDecoder(target, eagle=head, max_seq_len=64)
    a = dec.generate([1, 2, 3], 30, SpeculativeConfig("eagle", 3), temperature=0.9, seed=7)
    b = dec.generate([1, 2, 3], 30, SpeculativeConfig("eagle", 3), temperature=0.9, seed=7)
    assert a.new_ids == b.new_ids and a.n_new == 30 and a.stats.proposed > 0
    g = dec.generate([1, 2, 3], 30, SpeculativeConfig("eagle", 2))
    assert g.new_ids == dec.plain([1, 2, 3], 30).new_ids
    dec.close()
    with pytest.raises(ValueError, match="needs an EAGLE head"):
        SpeculativeDecoder(target, max_seq_len=64).generate([1, 2], 4, SpeculativeConfig("eagle"))


def test_a_head_that_does_not_fit_is_one_error(tmp_path, runs):
    target = runs[0]
    src = checkpoint_dir("lab-small").replace("lab-small", "lab-small-eagle")
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "vocab_size": 100}))
    with pytest.raises(EagleError, match=r"config.json: a head for vocabulary 100"):
        load_eagle(str(bad), target)
    tiny = random_model("tiny", dtype=torch.float32, seed=0)
    save_eagle(EagleHead(head_config(tiny.config)), str(tmp_path), "tiny")
    with pytest.raises(EagleError, match="config.json"):
        load_eagle(str(tmp_path), target)
    with pytest.raises(EagleError, match="not found"):
        load_eagle(str(tmp_path / "missing"), target)
    os.remove(tmp_path / "eagle.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({**cfg}))
    with pytest.raises(EagleError, match="eagle.safetensors"):
        load_eagle(str(tmp_path), target)


def test_training_lowers_the_loss():
    """train.eagle's loss on a tiny random base: 30 Adam steps on one batch lower it (the feature and
    token terms both reach the head's parameters)."""
    from train.eagle import _hidden_and_logits, eagle_loss

    torch.manual_seed(0)
    base = random_model("tiny", dtype=torch.float32, seed=0).requires_grad_(False)
    head = EagleHead(head_config(base.config)).train()
    x = torch.randint(0, base.config.vocab_size, (2, 32))
    h = _hidden_and_logits(base, x, logits=False)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = eagle_loss(head, base, x, h, 1.0, 0.5, 2)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * first

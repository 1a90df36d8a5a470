"""The engine binds its paged attention face once at setup and plans once per step."""

import pytest

from model.random_weights import random_model
from scheduler import LLM, SamplingParams


def _model():
    return random_model("tiny", n_layers=2, vocab_size=128, seed=1)


def test_face_is_bound_once_and_bad_choices_fail_at_setup(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the CPU then has no flash kernels
    with pytest.raises(ValueError, match="attention=flash, but the flash kernels cannot run here"):
        LLM(_model(), attention="flash", num_blocks=16)
    monkeypatch.setenv("LAB_ATTENTION", "fast")
    with pytest.raises(ValueError, match="LAB_ATTENTION must be one of auto, sdpa, flash, got 'fast'"):
        LLM(_model(), num_blocks=16)
    monkeypatch.delenv("LAB_ATTENTION")
    llm = LLM(_model(), num_blocks=16)
    face = llm.engine.runner.face
    assert face.name == "sdpa" and all(layer.self_attn.attend is face for layer in llm.engine.model.model.layers)


def test_runner_plans_each_eager_step_once():
    llm = LLM(_model(), num_blocks=32, block_size=4, policy="chunked", max_num_batched_tokens=8)
    runner, plans = llm.engine.runner, []
    plan = runner.face.plan
    runner.face.plan = lambda meta: plans.append(meta) or plan(meta)
    steps = 0
    llm.engine.add_request([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], SamplingParams(max_tokens=3))
    llm.engine.add_request([5, 6, 7], SamplingParams(max_tokens=4))
    while llm.engine.has_unfinished_requests():
        llm.engine.step()
        steps += 1
    assert len(plans) == steps  # one plan per step, shared by every layer
    assert any(not m.decode_only for m in plans) and any(m.decode_only for m in plans)
    runner.close()

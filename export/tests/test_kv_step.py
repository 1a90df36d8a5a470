"""KVCacheStep (the graph every export compiles) against the model's own StaticKVCache path."""

import torch

from export.common import embedded_model
from export.kv_step import KVCacheStep, eager_greedy, empty_caches, greedy_with_step


def test_step_matches_eager_bit_for_bit():
    model = embedded_model()  # GQA: 4 query heads, 2 kv heads
    prompt, n, S = [256, 72, 105, 33, 5, 9, 200], 6, 20
    ref, ref_logits = eager_greedy(model, prompt, n)
    model.setup_caches(1, S)
    k, v = empty_caches(model, 1, S)
    with torch.no_grad():
        got, logits = greedy_with_step(KVCacheStep(model), prompt, n, k, v)
    assert got == ref
    for a, b in zip(logits, ref_logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_step_returns_written_caches():
    model = embedded_model()
    model.setup_caches(1, 8)
    k, v = empty_caches(model, 1, 8)
    with torch.no_grad():
        logits, k2, v2 = KVCacheStep(model)(torch.tensor([[1, 2, 3]]), torch.arange(3), k, v)
    assert logits.shape == (1, 3, 258) and k2.shape == k.shape == (4, 1, 2, 8, 16)
    assert (k == 0).all(), "inputs are not mutated"
    assert (k2[:, :, :, :3] != 0).any() and (k2[:, :, :, 3:] == 0).all()

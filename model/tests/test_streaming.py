"""Attention sinks (model/streaming.py): exact against recomputation where recomputation is exact.

- Within sinks + window tokens nothing is evicted: the streaming NLL equals one full forward's.
- With one layer, a token's K/V depend on that token alone (before RoPE), so after evictions the
  streaming logits must equal a fresh forward over [the sink tokens + the window tokens] at
  positions 0..cap-1 (StreamingLLM's re-positioning). A planted fault (keys kept at their
  original rotation instead of re-rotated at their new slot) fails this check.
"""

import pytest
import torch
import torch.nn.functional as F

from model import streaming
from model.random_weights import random_model

TOL = 1e-5  # fp32, same ops; measured max rel err ~1e-7


def tiny(n_layers):
    return random_model("tiny", seed=3, n_layers=n_layers, max_seq_len=64)


def ids(n, seed=0):
    return torch.randint(1, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_no_eviction_equals_full_forward():
    model, x = tiny(2), ids(20)
    with torch.no_grad():
        lp = F.log_softmax(model(torch.tensor([x]))[0], dim=-1)
    want = -lp[:-1].gather(1, torch.tensor(x[1:])[:, None]).mean().item()
    got = streaming.stream_nll(model, x, sinks=4, window=16, prefill=5)  # 20 tokens fit: no eviction
    assert abs(got["nll"] - want) <= TOL * abs(want), (got, want)


def _streamed_last_logits(model, x, sinks, window):
    caches = streaming.setup_sink_caches(model, sinks, window)
    cap = sinks + window
    with torch.no_grad():
        for t in range(len(x)):
            out = model(torch.tensor([[x[t]]]), streaming.slot_positions(caches[0].n, 1, cap))
    model.remove_caches()
    return out[0, -1]


def check_one_layer_equals_recompute(model):
    sinks, window, x = 3, 8, ids(30, seed=1)
    got = _streamed_last_logits(model, x, sinks, window)
    kept = x[:sinks] + x[-window:]
    with torch.no_grad():
        want = model(torch.tensor([kept]))[0, -1]
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err <= TOL, f"streamed vs recomputed logits rel err {err:.3g}"


def test_one_layer_streaming_equals_recompute_after_evictions():
    check_one_layer_equals_recompute(tiny(1))


def test_planted_fault_no_rerotation_is_caught(monkeypatch):
    model = tiny(1)
    check_one_layer_equals_recompute(model)
    def stale(self, input_pos, k, v):  # keys keep the rotation of the slot they were written at
        T = k.shape[2]
        drop = max(0, self.n + T - self.cap)
        if drop:
            s, n = self.sinks, self.n
            self.k_raw[:, :, s:n - drop] = self.k_raw[:, :, s + drop:n].clone()
            self.v[:, :, s:n - drop] = self.v[:, :, s + drop:n].clone()
            self.n -= drop
        self.k_raw[:, :, self.n:self.n + T], self.v[:, :, self.n:self.n + T] = k, v
        self.n += T
        return self.k_raw, self.v
    monkeypatch.setattr(streaming.SinkKVCache, "update", stale)
    with pytest.raises(AssertionError, match="rel err"):
        check_one_layer_equals_recompute(model)


def test_bad_sizes_are_one_error():
    with pytest.raises(ValueError, match="exceeds the model context"):
        streaming.setup_sink_caches(tiny(1), 4, 100)
    with pytest.raises(ValueError, match="window >= 1"):
        streaming.setup_sink_caches(tiny(1), 4, 0)

"""Decode steps over the StaticKVCache: the split-KV flash decode path against SDPA.

The model's one-token attention goes through kernels.flash_decode (model/decode_attention.py)
wherever Triton runs; LAB_ATTENTION=sdpa, read once by setup_caches, forces the masked SDPA path. Both run the same
random bf16/fp16 model from the same prefilled cache; the logits of several decode steps
must agree within 4e-2 of max|logit| for bf16 (8-bit mantissa, eps 7.8e-3: each path rounds
q, k, v and its output once, the kernel rounds its softmax weights to bf16 before P @ V, and
two layers compound it; 180 seeds measured at most 2.1e-2, about twice under the bound)
and 5e-3 for fp16 (eps 9.8e-4; 90 seeds at most 1.8e-3). The bf16/fp16 ratio of about 8
is their mantissa ratio: rounding, not a wrong kernel (which misses by O(1), as the
argmax-flip failure this test once had did). Both paths are fed the same
decode tokens: greedy inputs would let a near-tie argmax send them down different sequences.
Cache slots past the current position are poisoned, so reading them fails the test.
Runs on the GPU, or on the CPU through Triton's interpreter (CI sets TRITON_INTERPRET=1).
"""

import pytest
import torch

from kernels import _triton
from model.random_weights import random_model

TOL = {torch.float16: 5e-3, torch.bfloat16: 4e-2}


def _device():
    return _triton.run_device() or pytest.skip("needs a GPU or TRITON_INTERPRET=1")


def _decode_logits(model, prompt, tokens, max_seq_len):
    """Prefill prompt (B, T), then feed tokens (B, steps) one per step; logits (steps, B, V) in fp32.

    The decode inputs are fixed, not greedy: a near-tie argmax that flips between the two paths
    would feed them different tokens and compare unrelated logits.
    """
    B, T = prompt.shape
    model.setup_caches(max_batch_size=B, max_seq_len=max_seq_len)
    for layer in model.model.layers:  # poison every slot; prefill and decode overwrite what is read
        layer.self_attn.kv_cache.k_cache.fill_(1e3)
        layer.self_attn.kv_cache.v_cache.fill_(-1e3)
    with torch.inference_mode():
        logits = model(prompt, torch.arange(T, device=prompt.device))[:, -1]
        out = []
        for i in range(tokens.shape[1]):
            logits = model(tokens[:, i:i + 1], torch.tensor([T + i], device=prompt.device))[:, -1]
            out.append(logits.float())
    model.remove_caches()
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flash_decode_path_matches_sdpa(dtype, monkeypatch):
    device = _device()
    model = random_model("tiny", device=device, dtype=dtype, seed=0,
                         n_layers=2, dim=256, n_heads=4, n_kv_heads=2, head_dim=64)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (2, 11), generator=g).to(device)
    tokens = torch.randint(0, model.config.vocab_size, (2, 4), generator=g).to(device)
    got = _decode_logits(model, prompt, tokens, max_seq_len=64)
    monkeypatch.setenv("LAB_ATTENTION", "sdpa")
    want = _decode_logits(model, prompt, tokens, max_seq_len=64)
    assert torch.isfinite(got).all() and want.abs().max() > 0.1
    err = (got - want).abs().max() / want.abs().max()
    assert err <= TOL[dtype], f"{dtype}: flash decode vs SDPA logits differ by {err:.3g} of max|logit|"


def test_attention_is_chosen_once_at_setup(monkeypatch):
    from model.attention_backend import choose_attention, static_flash, static_sdpa

    cache = torch.zeros(1, 2, 8, 64, dtype=torch.bfloat16)
    if _triton.can_run(cache):
        assert choose_attention(None, cache, torch.bfloat16) == "flash"
    monkeypatch.setenv("LAB_ATTENTION", "sdpa")
    assert choose_attention(None, cache, torch.bfloat16) == "sdpa"
    assert choose_attention("auto", cache.float(), torch.float32) == "sdpa"  # fp32: SDPA
    assert choose_attention("auto", cache, torch.float32) == "sdpa"  # cache and activations differ
    with pytest.raises(ValueError, match="attention=flash, but the flash kernels cannot run here"):
        choose_attention("flash", cache.float(), torch.float32)
    model = random_model("tiny", n_layers=2)
    monkeypatch.setenv("LAB_ATTENTION", "spda")  # a typo: one error at setup, not at the first step
    with pytest.raises(ValueError, match="LAB_ATTENTION must be one of auto, sdpa, flash, got 'spda'"):
        model.setup_caches(1, 8)
    monkeypatch.delenv("LAB_ATTENTION")
    assert model.setup_caches(1, 8, attention="sdpa") == "sdpa"
    assert all(layer.self_attn.attend is static_sdpa for layer in model.model.layers)
    name = model.setup_caches(1, 8, attention="auto")
    want = static_flash if name == "flash" else static_sdpa
    assert all(layer.self_attn.attend is want for layer in model.model.layers)
    model.remove_caches()

"""kernels.rope_cache (RoPE on q, k fused with the KV-cache write) against the unfused path.

The kernel rounds as apply_rope does (three roundings in the activations' dtype), so the
rule is equality, not a tolerance: bit-exact for fp16 everywhere and for bf16 on the GPU.
Triton's interpreter truncates fp32 -> bf16 where the GPU rounds to nearest, so there bf16
may differ by one bf16 ulp of the value (2^-7 relative, 2^-8 of |x| + tiny absolute).
Caches are poisoned (1e4) before the write, so a slot written wrong or not at all shows.
Model level: the flash backends of a model with fused projections take this path; their
logits must equal the unfused path's exactly (fp16). Runs on the GPU, or on the CPU through
Triton's interpreter (BUILD sets TRITON_INTERPRET=1).
"""

import pytest
import torch

from kernels import _triton
from kernels.rope_cache import rope_cache, rope_cache_reference
from model.layers import signed_sin
from parity.tolerance import Tol, assert_close

# Interpreted bf16 only: a truncated intermediate (x * cos or swap * sin, |x| < 4.5 here) is off by
# up to one ulp of |x| (2^-5 at 4) and the sum may cancel, so the bound is absolute: 2^-4. A fault
# this test exists for (a position or slot off by one) is off by O(|x|).
INTERPRETED_BF16 = Tol(atol=2.0 ** -4, rtol=2.0 ** -7)


def _device():
    return _triton.run_device() or pytest.skip("needs a GPU or TRITON_INTERPRET=1")


def _check_equal(got, want, dtype, what):
    if dtype == torch.bfloat16 and _triton.interpreting():
        assert_close(got, want, INTERPRETED_BF16, what)
    else:
        bad = ~(got == want)  # NaN differs
        assert not bad.any(), f"{what}: {int(bad.sum())} elements differ, e.g. {got[bad][:3]} vs {want[bad][:3]}"


def _tables(positions, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    ang = torch.rand(64, D // 2, generator=g) * 50  # large angles: every rotation matters
    emb = torch.cat((ang, ang), dim=-1)[positions]
    return emb.cos().to(device, dtype), signed_sin(emb.sin()).to(device, dtype)


def _case(dtype, paged, Hq=4, Hkv=2, D=64, B=2, T=3, seed=0, cos_shift=0, slot_shift=0):
    """(got, want) of q and both caches; the shifts plant a fault in the kernel's inputs only."""
    device = _device()
    g = torch.Generator().manual_seed(seed)
    width = (Hq + 2 * Hkv) * D
    if paged:
        N, positions = 5, torch.tensor([3, 1, 2, 5, 0])
        slots = torch.tensor([3, 9, 10, 17, 0], device=device)
        shape = (6, 4, Hkv, D)
    else:
        N, positions = B * T, torch.tensor([5, 6, 7])
        shape = (B, Hkv, 16, D)
    wide = torch.randn(N, width + 16, generator=g).to(device, dtype)
    qkv = wide[:, 16:]  # strided rows: a view of a wider output, as a split would give
    cos, sin = _tables(positions, D, dtype, device)
    caches = [torch.full(shape, 1e4, dtype=dtype, device=device) for _ in range(4)]  # poison
    kw = ({"slot_mapping": slots} if paged else {"input_pos": positions.to(device)})
    want_q = rope_cache_reference(qkv, cos, sin, Hq, Hkv, caches[0], caches[1], **kw)
    if cos_shift:
        cos, sin = _tables(positions + cos_shift, D, dtype, device)
    if slot_shift:
        kw = {"slot_mapping": slots + slot_shift} if paged else {"input_pos": positions.to(device) + slot_shift}
    got_q = rope_cache(qkv, cos, sin, Hq, Hkv, caches[2], caches[3], **kw)
    return (got_q, caches[2], caches[3]), (want_q, caches[0], caches[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("paged", [False, True])
def test_kernel_equals_unfused(dtype, paged):
    got, want = _case(dtype, paged)
    assert want[0].abs().max() > 0.5 and not want[0].isnan().any()
    for g, w, name in zip(got, want, ("q", "k cache", "v cache")):
        _check_equal(g, w, dtype, f"{name}, {'paged' if paged else 'static'} {dtype}")


@pytest.mark.parametrize("fault", ["cos_shift", "slot_shift"])
@pytest.mark.parametrize("paged", [False, True])
def test_planted_faults_fail(fault, paged):
    """A position off by one (RoPE of the wrong token) or a slot off by one fails the check."""
    got, want = _case(torch.float16, paged, **{fault: 1})
    with pytest.raises(AssertionError):
        for g, w in zip(got, want):
            _check_equal(g, w, torch.float16, fault)


def test_model_takes_the_fused_path_and_matches(monkeypatch):
    """A fused-projection fp16 model over the static cache (flash backend): prefill + decode
    logits through rope_cache equal the unfused path's exactly, and rope_cache was called."""
    from model import attention_backend
    from model.random_weights import random_model

    device = _device()
    model = random_model("tiny", device=device, dtype=torch.float16, seed=0,
                         n_layers=2, dim=256, n_heads=4, n_kv_heads=2, head_dim=64)
    assert model.fuse_projections() == 4
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (2, 7), generator=g).to(device)
    steps = torch.randint(0, model.config.vocab_size, (2, 3), generator=g).to(device)

    def run():
        assert model.setup_caches(max_batch_size=2, max_seq_len=32, attention="flash") == "flash"
        with torch.inference_mode():
            out = [model(prompt, torch.arange(7, device=device))[:, -1]]
            for i in range(steps.shape[1]):
                out.append(model(steps[:, i:i + 1], torch.tensor([7 + i], device=device))[:, -1])
        model.remove_caches()
        return torch.stack(out).float()

    calls = []
    fused = attention_backend.static_flash.rope_cache
    monkeypatch.setattr(attention_backend.static_flash, "rope_cache",
                        lambda *a: calls.append(1) or fused(*a), raising=True)
    got = run()
    assert len(calls) == 2 * 4  # two layers, four forwards
    monkeypatch.delattr(attention_backend.static_flash, "rope_cache")
    want = run()
    assert torch.isfinite(want).all() and want.abs().max() > 0.1
    assert torch.equal(got, want), f"fused vs unfused logits differ by {(got - want).abs().max():.3g}"


def test_engine_paged_fused_path_matches(monkeypatch):
    """The engine (paged cache, flash face, chunked prefill so steps mix prefills and decodes)
    gives the same greedy tokens with the fused write as without it, and takes the fused path."""
    from model.paged_attention import FlashFace
    from model.random_weights import random_model
    from scheduler import LLM, SamplingParams

    device = _device()
    prompts = [[(7 * i + j) % 120 + 1 for j in range(n)] for i, n in enumerate((11, 5, 17))]

    def run():
        model = random_model("tiny", device=device, dtype=torch.float16, seed=2, n_layers=2, dim=256,
                             n_heads=4, n_kv_heads=2, head_dim=64, vocab_size=128)
        llm = LLM(model, attention="flash", num_blocks=32, block_size=4, policy="chunked",
                  max_num_batched_tokens=12, fuse_projections=True)
        outs = llm.generate(prompts, SamplingParams(max_tokens=6, temperature=0.0))
        llm.engine.runner.close()
        return [o.token_ids for o in outs]

    calls = []
    fused = FlashFace.rope_cache
    monkeypatch.setattr(FlashFace, "rope_cache", staticmethod(lambda *a: calls.append(1) or fused(*a)))
    got = run()
    assert calls, "the engine did not take the fused RoPE + cache write"
    monkeypatch.delattr(FlashFace, "rope_cache")
    want = run()
    assert len({t for out in want for t in out}) >= 4  # not a degenerate output
    assert got == want


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_engine_graphs_capture_the_inference_path(monkeypatch):
    """The decode graphs captured at engine start-up take the fused path (grad off in the capture):
    once they were captured with grad on and replayed the unfused training-form blocks."""
    from model.paged_attention import FlashFace
    from model.random_weights import random_model
    from scheduler import LLM

    calls = []
    fused = FlashFace.rope_cache
    monkeypatch.setattr(FlashFace, "rope_cache", staticmethod(lambda *a: calls.append(1) or fused(*a)))
    model = random_model("tiny", device="cuda", dtype=torch.bfloat16, seed=2, n_layers=2, dim=256,
                         n_heads=4, n_kv_heads=2, head_dim=64, vocab_size=128)
    assert torch.is_grad_enabled()
    llm = LLM(model, num_blocks=32, block_size=16, max_num_seqs=4, cuda_graph=True)
    assert calls, "the captured decode graphs do not use the fused RoPE + cache write"
    llm.engine.runner.close()

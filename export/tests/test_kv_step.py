"""KVCacheStep (the graph every export compiles) against the model's own StaticKVCache path.

The step is Transformer.forward with a FunctionalKVCache per layer, so on the same cache
length it must equal eager to the bit (fp32, same kernels, same order): atol 0.
"""

import torch

from export.aoti_package import export_programs
from export.checks import max_abs_diff
from export.kv_step import KVCacheStep, eager_greedy, empty_caches, greedy_with_step
from export.tests.models import PROMPT, assert_varied, varied_model
from model import attention_backend

N = 12
S = len(PROMPT) + N  # eager_greedy's cache length: the same SDPA width, so bit-identical


def _step_greedy(model):
    model.setup_caches(1, S)
    k, v = empty_caches(model, 1, S)
    with torch.no_grad():
        return greedy_with_step(KVCacheStep(model), PROMPT, N, k, v)


def test_step_matches_eager_bit_for_bit():
    model = varied_model()  # GQA: 4 query heads, 2 kv heads
    ref, ref_logits = eager_greedy(model, PROMPT, N)
    assert_varied(ref)
    got, logits = _step_greedy(model)
    assert got == ref
    assert max_abs_diff(logits, ref_logits) == 0.0


def test_step_after_fuse_projections_matches_fused_eager():
    """The old hand-written step read q/k/v_proj and broke once fuse_projections removed them."""
    model = varied_model()
    ref, ref_logits = eager_greedy(model, PROMPT, N)
    assert model.fuse_projections() == 8  # 4 layers x (qkv, gate_up)
    fused, fused_logits = eager_greedy(model, PROMPT, N)
    got, logits = _step_greedy(model)
    assert got == fused == ref
    assert max_abs_diff(logits, fused_logits) == 0.0
    # Fused vs unfused: one wider matmul. Measured 0.0 here; 1e-5 leaves room for a BLAS that
    # blocks the wider matrix differently (fp32 rounding, ~1e-6 at |logits| <= 2.8).
    assert max_abs_diff(fused_logits, ref_logits) <= 1e-5


def test_step_returns_written_caches_and_restores_the_model():
    model = varied_model()
    model.setup_caches(1, 8)
    static = [layer.self_attn.kv_cache for layer in model.model.layers]
    k, v = empty_caches(model, 1, 8)
    with torch.no_grad():
        logits, k2, v2 = KVCacheStep(model)(torch.tensor([[1, 2, 3]]), torch.arange(3), k, v)
    assert logits.shape == (1, 3, 258) and k2.shape == k.shape == (4, 1, 2, 8, 16)
    assert (k == 0).all() and (v == 0).all(), "inputs are not mutated"
    assert (k2[:, :, :, :3] != 0).all() and (k2[:, :, :, 3:] == 0).all()
    assert (v2[:, :, :, :3] != 0).all() and (v2[:, :, :, 3:] == 0).all()
    assert [layer.self_attn.kv_cache for layer in model.model.layers] == static
    assert all((c.k_cache == 0).all() for c in static), "the static caches were not written"


def test_export_keeps_sdpa_when_flash_decode_is_available(monkeypatch):
    """torch.export of the decode step (T = 1) must not take decode_attention's Python op,
    even where it would run (here: told so); the exported graph still equals eager."""
    model = varied_model()
    monkeypatch.setattr(attention_backend, "_flash_unavailable", lambda cache, dtype: "")
    programs = export_programs(model, S)
    monkeypatch.undo()
    assert all(layer.self_attn.attend is attention_backend.static_flash for layer in model.model.layers)
    assert "flash_decode" not in programs["decode"].graph_module.code
    ref, ref_logits = eager_greedy(model, PROMPT, N)
    k, v = empty_caches(model, 1, S)

    def step(ids, pos, k, v):
        return (programs["prefill"] if ids.shape[1] > 1 else programs["decode"]).module()(ids, pos, k, v)

    with torch.no_grad():
        got, logits = greedy_with_step(step, PROMPT, N, k, v)
    assert got == ref
    assert max_abs_diff(logits, ref_logits) <= 1e-5  # the same aten kernels: measured 0.0, as above

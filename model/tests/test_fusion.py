"""fuse_projections and the inference (fused add + norm) path compute what the plain blocks do."""

import torch

from model.config import ModelConfig
from model.llama import Transformer
from model.random_weights import randomize_


def _model(seed):
    torch.manual_seed(seed)
    config = ModelConfig.from_name("tiny").replace(vocab_size=300)
    return randomize_(Transformer(config), seed).eval()


def test_inference_path_matches_training_path():
    model = _model(0)
    x = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = model(x)  # residual path with fused add + norm
    slow = model(x)  # grad enabled: plain pre-norm blocks
    assert fast.abs().max() > 1.0
    # fp32, same operations in the same order: equal up to reassociation noise.
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)


def test_fused_projections_match_and_free_the_originals():
    model = _model(2)
    x = torch.randint(0, 300, (3, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
        n = model.fuse_projections()
        out = model(x)
    assert n == 2 * model.config.n_layers
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj is None and layer.mlp.gate_proj is None
    assert "model.layers.0.self_attn.qkv_proj.weight" in model.state_dict()
    # fp32: a concatenated matmul may block its reduction differently; 1e-5 of the logit scale.
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_autocast_inference_takes_the_plain_path():
    """Under bf16 autocast the residual would mix dtypes; eval (no grad) must still run."""
    model = _model(4)
    x = torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    ref = model(x).detach()
    assert torch.isfinite(out).all()
    # bf16 autocast against fp32: 8 mantissa bits over 2 layers, 5e-2 of the logit scale.
    assert (out.float() - ref).abs().max() <= 5e-2 * ref.abs().max()


def test_rope_form_is_bit_identical_to_rotate_half():
    """apply_rope's swap-halves form with the signed sin table equals HF's rotate_half form exactly."""
    from model.layers import apply_rope, precompute_rope, signed_sin

    config = ModelConfig.from_name("tiny")
    cos, sin = precompute_rope(config, 64)
    g = torch.Generator().manual_seed(0)
    pos = torch.randperm(64, generator=g)[:9]
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(2, 9, 3, config.head_dim, generator=g).to(dtype).transpose(1, 2)  # a strided view, as q/k are
        c, s = cos[pos].to(dtype), sin[pos].to(dtype)
        x1, x2 = x.chunk(2, dim=-1)
        want = x * c + torch.cat((-x2, x1), dim=-1) * s  # transformers' apply_rotary_pos_emb
        got = apply_rope(x, cos[pos], signed_sin(sin)[pos])
        assert got.dtype == dtype and torch.equal(got, want), dtype

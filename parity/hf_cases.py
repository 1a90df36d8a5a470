"""Shared cases of the Hugging Face parity tests (and of the planted-fault test): random tiny
HF checkpoints saved with save_pretrained, and the fp32 logits check of our loaded model.

Tolerances, with rel_err(a, b) = max|a - b| / max|b| (whole-model logits, not kernels):
- fp32: 1e-5. Both sides compute the same math in fp32; they may differ only in round-off
  from reassociated sums (matmul blocking, SDPA), ~1e-7 per op, compounding over 2-3 layers.
- bf16: 2e-2. bf16 keeps 8 significant bits (unit round-off 2^-8 ~ 4e-3); two
  implementations rounding at different points drift by a few units over layers.
Measured (2026-11-26, torch 2.13, transformers 5.24, CPU): 0.0 for every case of the fp32 logits
check at seeds 0..2 and for the bf16 check at seeds 6..8: today both sides run the same ops in the
same order. The architecture cases (2026-11-29, transformers 5.24): 0.0, except phi2 at 3.2e-7
(transformers' gelu_new is its own tanh formula; ours is F.gelu(approximate="tanh")). The
bounds leave room for a reordering; every planted fault in test_mutations.py that
goes through check_logits_fp32 misses by ~1 (1e5 times the bound).
"""

from pathlib import Path

import torch
import transformers

from model.weights import load_model
from model.random_weights import randomize_

FP32_TOL = 1e-5
BF16_TOL = 2e-2
N_NEW = 32

BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5,
            bos_token_id=1, eos_token_id=None, pad_token_id=0)
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32}

CASES = {
    "mha_untied": dict(num_key_value_heads=4, tie_word_embeddings=False),
    "gqa_tied": dict(num_key_value_heads=2, tie_word_embeddings=True),
    # Small original_max_position_embeddings so the llama3 scaling bends frequencies
    # that matter at these short lengths; explicit head_dim != hidden / heads.
    "gqa_llama3_rope": dict(num_key_value_heads=2, num_hidden_layers=3, head_dim=32,
                            rope_parameters={"rope_theta": 500000.0, **LLAMA3_SCALING}),
    "mqa_mistral": dict(num_key_value_heads=1, sliding_window=None, model_type="mistral"),
    # The other architectures (model/arch.py). A window of 7 (< the 24-40 token prompts) so the
    # sliding window changes the logits; Qwen2 with biases and tied embeddings; Phi-3's fused
    # qkv / gate_up tensors; Phi-2's parallel block, LayerNorm, GELU and half-rotary heads
    # (head_dim 16, rotary 8); Mixtral with 4 experts, top-2.
    "mistral_window": dict(num_key_value_heads=2, sliding_window=7, model_type="mistral"),
    "qwen2_tied": dict(num_key_value_heads=2, tie_word_embeddings=True, model_type="qwen2"),
    "phi3_fused": dict(num_key_value_heads=2, sliding_window=None, model_type="phi3"),
    # Phi-3 longrope within the original length (64 > the 44-token runs): short factors and the
    # attention factor sqrt(1 + ln 4 / ln 64) of max_position_embeddings 256 = 4 x 64.
    "phi3_longrope": dict(num_key_value_heads=2, sliding_window=None, model_type="phi3",
                          original_max_position_embeddings=64,
                          rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                           "original_max_position_embeddings": 64,
                                           "short_factor": [1.0, 1.3, 1.7, 2.2, 3.0, 4.1, 5.5, 7.0],
                                           "long_factor": [1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 18.0, 25.0]}),
    "phi2": dict(num_key_value_heads=4, partial_rotary_factor=0.5, layer_norm_eps=1e-5, model_type="phi"),
    "mixtral_top2": dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                         intermediate_size=96, sliding_window=None, model_type="mixtral"),
}
# The model classes of each model_type (transformers' own, built offline from a config object).
HF_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "phi": ("PhiConfig", "PhiForCausalLM"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
}
ARCH_CASES = ("mistral_window", "qwen2_tied", "phi3_fused", "phi3_longrope", "phi2", "mixtral_top2")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| in fp64."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def make_hf(case: str, seed: int = 0):
    """A random tiny HF causal LM for CASES[case], eval mode, fp32."""
    kw = {**BASE, **CASES[case]}
    model_type = kw.pop("model_type", "llama")
    cls_cfg, cls_model = (getattr(transformers, n) for n in HF_CLASSES[model_type])
    torch.manual_seed(seed)
    model = cls_model(cls_cfg(**kw)).eval()
    randomize_(model, seed)
    if kw.get("tie_word_embeddings"):
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def save_hf(hf, path: Path) -> Path:
    """save_pretrained as safetensors; returns the directory."""
    hf.save_pretrained(str(path), safe_serialization=True)
    assert (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists()
    return path


def random_prompt(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """Fresh random ids (B, T), avoiding pad id 0."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, length), generator=g)


def assert_not_degenerate(logits: torch.Tensor) -> None:
    """Never compare on zeros or on constant outputs."""
    assert logits.abs().max() > 1e-2, "logits are (near) zero; the comparison would be vacuous"
    assert logits.std() > 1e-2, "logits are constant; the comparison would be vacuous"


def cache_vs_full_err(model, ids: torch.Tensor, prefill: int = 16) -> float:
    """Relative error of prefill + one-token steps through the static cache against one full
    forward over ids (B, T); the full logits are checked non-degenerate first."""
    B, T = ids.shape
    with torch.no_grad():
        full = model(ids)  # (B, T, V)
        model.setup_caches(max_batch_size=B, max_seq_len=T + 24)
        try:
            steps = [model(ids[:, :prefill], torch.arange(prefill))]
            for t in range(prefill, T):
                steps.append(model(ids[:, t:t + 1], torch.tensor([t])))
        finally:
            model.remove_caches()
    assert_not_degenerate(full)
    return rel_err(torch.cat(steps, dim=1), full)


def check_logits_fp32(case: str, path: Path, seed: int = 0) -> float:
    """Asserts our model, loaded from a saved random HF checkpoint of CASES[case], gives HF's
    fp32 logits on a random batch (rel_err <= FP32_TOL); returns the error."""
    hf = make_hf(case, seed)
    ours = load_model(save_hf(hf, path), dtype=torch.float32)
    ids = random_prompt(2, 24, BASE["vocab_size"], seed=seed + 1)
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert_not_degenerate(ref)
    assert got.shape == ref.shape
    err = rel_err(got, ref)
    assert err <= FP32_TOL, f"{case}: logits rel err {err:.6g} > {FP32_TOL}"
    return err

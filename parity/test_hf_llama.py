"""Parity: our Transformer vs transformers' LlamaForCausalLM / MistralForCausalLM.

Tiny random HF models are saved with save_pretrained (safetensors) and loaded by
our load_model; logits, greedy generations, cached vs uncached decoding, bf16, and
a sharded save/load roundtrip are compared.

Tolerances, with rel_err(a, b) = max|a - b| / max|b|:
- fp32: 1e-5. Both sides compute the same math in fp32; they differ only in
  round-off from reassociated sums (matmul blocking, SDPA), ~1e-7 per op,
  compounding over 2-3 layers to well under 1e-5.
- bf16: 2e-2. bf16 keeps 8 mantissa bits (unit round-off 2^-8 ~ 4e-3); two
  implementations rounding at different points drift by a few units over layers.
"""

import json
from pathlib import Path

import pytest
import torch


transformers = pytest.importorskip("transformers")

from decoding.generate import generate
from model.weights import load_model, save_model
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
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| in fp64."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def make_hf(case: str, seed: int = 0):
    """A random tiny HF causal LM for CASES[case], eval mode, fp32."""
    kw = {**BASE, **CASES[case]}
    model_type = kw.pop("model_type", "llama")
    if model_type == "mistral":
        cls_cfg, cls_model = transformers.MistralConfig, transformers.MistralForCausalLM
    else:
        cls_cfg, cls_model = transformers.LlamaConfig, transformers.LlamaForCausalLM
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


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_fp32(case, tmp_path):
    hf = make_hf(case)
    ours = load_model(save_hf(hf, tmp_path), dtype=torch.float32)
    ids = random_prompt(2, 24, BASE["vocab_size"], seed=1)
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert_not_degenerate(ref)
    assert got.shape == ref.shape
    assert rel_err(got, ref) <= FP32_TOL


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_matches_hf_generate(case, tmp_path):
    hf = make_hf(case, seed=2)
    ours = load_model(save_hf(hf, tmp_path), dtype=torch.float32)
    prompt = random_prompt(1, 12, BASE["vocab_size"], seed=3)
    with torch.no_grad():
        ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=N_NEW,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
    ref_new = ref[0, prompt.shape[1]:].tolist()
    assert len(ref_new) == N_NEW
    assert len(set(ref_new)) > 4, f"HF generation is degenerate: {ref_new}"
    cached = generate(ours, prompt, N_NEW, use_cache=True)
    uncached = generate(ours, prompt, N_NEW, use_cache=False)
    assert cached.new_ids[0] == ref_new
    assert uncached.new_ids[0] == ref_new


@pytest.mark.parametrize("case", ["gqa_llama3_rope", "mha_untied"])
def test_cache_matches_full_forward(case, tmp_path):
    """Prefill + one-token decode steps through the static cache equal a full forward."""
    ours = load_model(save_hf(make_hf(case, seed=4), tmp_path), dtype=torch.float32)
    ids = random_prompt(2, 40, BASE["vocab_size"], seed=5)
    T0 = 16
    with torch.no_grad():
        full = ours(ids)  # (B, 40, V)
        ours.setup_caches(max_batch_size=2, max_seq_len=64)
        steps = [ours(ids[:, :T0], torch.arange(T0))]
        for t in range(T0, ids.shape[1]):
            steps.append(ours(ids[:, t:t + 1], torch.tensor([t])))
        ours.remove_caches()
    assert_not_degenerate(full)
    assert rel_err(torch.cat(steps, dim=1), full) <= FP32_TOL
    gen_c = generate(ours, ids, N_NEW, use_cache=True)
    gen_u = generate(ours, ids, N_NEW, use_cache=False)
    assert gen_c.new_ids == gen_u.new_ids


def test_logits_bf16(tmp_path):
    hf = make_hf("gqa_llama3_rope", seed=6)
    path = save_hf(hf, tmp_path)
    hf16 = transformers.LlamaForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).eval()
    ours = load_model(path, dtype=torch.bfloat16)
    assert ours.lm_head.weight.dtype == torch.bfloat16
    ids = random_prompt(2, 24, BASE["vocab_size"], seed=7)
    with torch.no_grad():
        ref, got = hf16(ids).logits, ours(ids)
    assert_not_degenerate(ref.float())
    assert got.dtype == torch.bfloat16
    assert rel_err(got, ref) <= BF16_TOL


def test_classic_config_spelling(tmp_path):
    """A config.json in the pre-transformers-5 spelling (rope_scaling 'type', torch_dtype)."""
    hf = make_hf("gqa_llama3_rope", seed=8)
    path = save_hf(hf, tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    rope["type"] = rope.pop("rope_type")
    cfg["rope_scaling"] = rope
    cfg["torch_dtype"] = cfg.pop("dtype")
    (path / "config.json").write_text(json.dumps(cfg))
    ours = load_model(path)
    assert ours.config.rope_scaling["original_max_position_embeddings"] == 32
    ids = random_prompt(1, 20, BASE["vocab_size"], seed=9)
    with torch.no_grad():
        ref, got = hf(ids).logits, ours(ids)
    assert_not_degenerate(ref)
    assert rel_err(got, ref) <= FP32_TOL


@pytest.mark.parametrize("case", ["gqa_tied", "gqa_llama3_rope"])
def test_sharded_roundtrip_loads_in_hf(case, tmp_path):
    hf = make_hf(case, seed=10)
    ours = load_model(save_hf(hf, tmp_path / "hf"), dtype=torch.float32)
    out = tmp_path / "ours"
    save_model(ours, out, max_shard_bytes=64 * 1024)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert all((out / s).exists() for s in shards)
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for k, t in ours.state_dict().items()
        if not (ours.config.tie_word_embeddings and k == "lm_head.weight"))
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    again = load_model(out)
    ids = random_prompt(2, 16, BASE["vocab_size"], seed=11)
    with torch.no_grad():
        ref, got, got2 = hf2(ids).logits, ours(ids), again(ids)
    assert_not_degenerate(ref)
    assert rel_err(got, ref) <= FP32_TOL
    assert torch.equal(got, got2)
    if ours.config.tie_word_embeddings:
        assert again.lm_head.weight is again.model.embed_tokens.weight

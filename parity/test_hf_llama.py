"""Parity: our Transformer vs transformers' LlamaForCausalLM / MistralForCausalLM.

Tiny random HF models are saved with save_pretrained (safetensors) and loaded by
our load_model; logits, greedy generations, cached vs uncached decoding, bf16, and
a sharded save/load roundtrip are compared.

Tolerances, rel_err and the random tiny checkpoints live in parity/hf_cases.py.
"""

import json

import pytest
import torch
import transformers

from decoding.generate import generate
from model.weights import load_model, save_model
from parity.hf_cases import (BASE, BF16_TOL, CASES, FP32_TOL, N_NEW, assert_not_degenerate, cache_vs_full_err,
                             check_logits_fp32, make_hf, random_prompt, rel_err, save_hf)


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_fp32(case, tmp_path):
    check_logits_fp32(case, tmp_path)


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
    assert cache_vs_full_err(ours, ids) <= FP32_TOL
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

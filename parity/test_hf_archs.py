"""Parity of the other architectures (Mistral with a sliding window, Qwen2, Phi-3, Phi-2, Mixtral)
beyond test_hf_llama's logits and greedy checks (which run every hf_cases.CASES entry): the static
cache equals a full forward, the engine (paged, continuous batching) is token-identical to
single-request decoding, the ONNX export passes export/checks.py's fp32 gate, and config.json
naming an unknown architecture is one clear error.

Cases, tolerances and the random tiny checkpoints: parity/hf_cases.py. Engine exactness as in
test_engine.py (fp32, same SDPA and masks; batching changes only summation order).
"""

import json
import math

import pytest
import torch

from decoding.generate import generate
from export import checks
from export.kv_step import eager_greedy
from export.onnx_step import export_onnx, ort_greedy, unavailable
from model.config import ConfigError, ModelConfig
from model.weights import load_model
from parity.engine_cases import random_requests
from parity.hf_cases import ARCH_CASES, BASE, FP32_TOL, cache_vs_full_err, make_hf, random_prompt, save_hf
from scheduler import LLM, SamplingParams


def load_case(case, tmp_path, seed):
    return load_model(save_hf(make_hf(case, seed=seed), tmp_path), dtype=torch.float32)


@pytest.mark.parametrize("case", ARCH_CASES)
def test_cache_matches_full_forward(case, tmp_path):
    """Prefill + one-token steps through the static cache equal one full forward (40 tokens,
    past the window of 7 for mistral_window), and cached greedy equals uncached."""
    ours = load_case(case, tmp_path, seed=4)
    ids = random_prompt(2, 40, BASE["vocab_size"], seed=5)
    err = cache_vs_full_err(ours, ids)
    assert err <= FP32_TOL, f"{case}: cached vs full rel err {err:.3g}"


@pytest.mark.parametrize("case", ARCH_CASES)
def test_engine_matches_single_request(case, tmp_path):
    """Continuous batching over the paged cache (block 4: windows cross blocks) == generate()."""
    ours = load_case(case, tmp_path, seed=12)
    reqs = random_requests(6, seed=13, max_prompt=20, max_new=16, vocab=BASE["vocab_size"])
    refs = [generate(ours, p, n).new_ids[0] for p, n in reqs]
    assert sum(len(set(r)) for r in refs) > 12, f"degenerate references {refs}"
    llm = LLM(ours, block_size=4, policy="continuous", num_blocks=128, max_num_seqs=4)
    try:
        outs = llm.generate([p for p, _ in reqs], [SamplingParams(max_tokens=n) for _, n in reqs])
    finally:
        llm.engine.runner.close()
    assert [o.token_ids for o in outs] == refs


@pytest.mark.parametrize("case", ARCH_CASES)
def test_onnx_export_parity(case, tmp_path):
    """The ONNX KV-cache step under onnxruntime: fp32 greedy tokens and logits as eager's."""
    why = unavailable(torch.float32, "cpu")
    if why:
        pytest.skip(why)
    # Seeds whose 12 greedy tokens vary (>= MIN_DISTINCT ids); mixtral's seed 14 repeats 4 ids.
    ours = load_case(case, tmp_path / "ckpt", seed=21 if case == "mixtral_top2" else 14)
    prompt = random_prompt(1, 10, BASE["vocab_size"], seed=15)[0].tolist()
    n, s = 12, 24
    ref, ref_logits = eager_greedy(ours, prompt, n)
    assert checks.distinct_tokens(ref) >= checks.MIN_DISTINCT, ref
    path = export_onnx(ours, str(tmp_path / "step.onnx"), s)
    got, logits = ort_greedy(path, ours.config, prompt, n, s)
    checks.check_fp32(f"onnxruntime {case}", got, ref, checks.max_abs_diff(logits, ref_logits))


def test_unknown_architecture_lists_supported(tmp_path):
    hf = make_hf("qwen2_tied", seed=0)
    path = save_hf(hf, tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config.json: unsupported architecture .*gpt2.*supported: llama "
                                          r"\(LlamaForCausalLM\), mistral.*qwen2.*phi3.*phi .*mixtral"):
        load_model(path)


def test_arch_fields_read_from_config(tmp_path):
    """What each architecture switches on, read from transformers' own config.json."""
    got = {}
    for case in ARCH_CASES:
        path = save_hf(make_hf(case, seed=0), tmp_path / case)
        got[case] = ModelConfig.from_hf_config(path)
    assert got["mistral_window"].sliding_window == 7
    assert got["qwen2_tied"].qkv_bias and got["qwen2_tied"].tie_word_embeddings
    p2 = got["phi2"]
    assert (p2.parallel_block, p2.norm_type, p2.gated_mlp, p2.out_bias, p2.rotary_dim) == (True, "layer", False,
                                                                                           True, 8)
    assert (got["mixtral_top2"].n_experts, got["mixtral_top2"].n_experts_per_tok) == (4, 2)
    assert got["phi3_fused"].arch == "phi3" and got["phi3_fused"].rope_scaling is None
    lr = got["phi3_longrope"].rope_scaling
    assert lr["rope_type"] == "longrope" and lr["original_max_position_embeddings"] == 64
    assert abs(lr["attention_factor"] - (1 + math.log(4) / math.log(64)) ** 0.5) < 1e-12

"""TensorRT-LLM checkpoint: schema (from TensorRT-LLM's convert.py), de-fuse roundtrip, W8A16
layout and error, tensor-parallel shards, and the binary's one-line errors."""

import json

import pytest
import torch
from torch import nn

from export.common import ExportError
from export.tests.cli import error_line, run_cli
from export.trt_llm_ckpt import (preprocess_int8_weight, read_checkpoint, to_hf_state,
                                 unpreprocess_int8_weight, validate_checkpoint, write_checkpoint)
from model.config import ModelConfig
from model.llama import Transformer

def make_model(tie=False, **overrides):
    """A small random model; the default shapes also satisfy the W8A16 layout at tp 1 and 2."""
    torch.manual_seed(0)
    cfg = dict(dim=128, intermediate_size=256, n_layers=2, vocab_size=301, tie_word_embeddings=tie)
    cfg.update(overrides)
    model = Transformer(ModelConfig.from_name("tiny").replace(**cfg))
    for name, p in model.named_parameters():
        if not name.endswith("norm.weight"):
            nn.init.normal_(p, std=0.02)
    return model.eval()


def test_schema_written_from_trtllm_source(tmp_path):
    """Names/shapes as tensorrt_llm/models/llama/convert.py writes them (tp 1, fp16)."""
    model = make_model(tie=True)
    write_checkpoint(model, tmp_path, torch.float16, revision="abc123")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architecture"] == "LlamaForCausalLM" and cfg["dtype"] == "float16"
    assert cfg["position_embedding_type"] == "rope_gpt_neox" and cfg["hidden_act"] == "silu"
    assert cfg["mapping"] == {"world_size": 1, "tp_size": 1, "pp_size": 1}
    assert cfg["quantization"] == {"quant_algo": None, "kv_cache_quant_algo": None}
    assert (cfg["head_size"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (32, 2, 301)
    assert cfg["tie_word_embeddings"] is True and cfg["rotary_scaling"] is None
    assert cfg["lab_export"]["git_revision"] == "abc123"
    from safetensors.torch import load_file

    t = load_file(tmp_path / "rank0.safetensors")
    h, d = 128, 32
    want = {
        "transformer.vocab_embedding.weight": (301, h),
        "transformer.ln_f.weight": (h,),
        "lm_head.weight": (301, h),  # written even when tied, as the converter does
        "transformer.layers.1.input_layernorm.weight": (h,),
        "transformer.layers.1.post_layernorm.weight": (h,),
        "transformer.layers.1.attention.qkv.weight": ((4 + 2 + 2) * d, h),
        "transformer.layers.1.attention.dense.weight": (h, 4 * d),
        "transformer.layers.1.mlp.fc.weight": (256, h),
        "transformer.layers.1.mlp.gate.weight": (256, h),
        "transformer.layers.1.mlp.proj.weight": (h, 256),
    }
    for name, shape in want.items():
        assert tuple(t[name].shape) == shape and t[name].dtype == torch.float16, name
    assert len(t) == 3 + 7 * 2
    sd = model.state_dict()
    # fc is HF gate_proj and gate is HF up_proj (convert.py's param_name_map).
    assert torch.equal(t["transformer.layers.1.mlp.fc.weight"], sd["model.layers.1.mlp.gate_proj.weight"].half())
    assert torch.equal(t["transformer.layers.1.mlp.gate.weight"], sd["model.layers.1.mlp.up_proj.weight"].half())
    qkv = torch.cat([sd[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"]).half()
    assert torch.equal(t["transformer.layers.1.attention.qkv.weight"], qkv)


def test_llama3_rope_scaling_in_config(tmp_path):
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_type": "llama3"}
    write_checkpoint(make_model(rope_scaling=scaling), tmp_path, torch.bfloat16)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["rotary_scaling"]["type"] == "llama3" and cfg["rotary_scaling"]["factor"] == 8.0


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_defuse_roundtrip_matches_hf_state(tmp_path, tp):
    """tp 4 > 2 kv heads exercises the kv-head duplication; vocab 301 the lm_head padding."""
    model = make_model()
    write_checkpoint(model, tmp_path, torch.float32, tp=tp)
    cfg, ranks = read_checkpoint(tmp_path)
    state = to_hf_state(cfg, ranks)
    ref = model.state_dict()
    assert state.keys() == ref.keys()
    for k in ref:
        assert torch.equal(state[k], ref[k]), k
    assert validate_checkpoint(tmp_path, model, [1, 2, 3])["logits_rel_err"] < 1e-6


def test_tp2_shards_concatenate_to_tp1(tmp_path):
    model = make_model()
    write_checkpoint(model, tmp_path / "tp1", torch.float16, tp=1)
    write_checkpoint(model, tmp_path / "tp2", torch.float16, tp=2)
    (_, (one,)), (_, two) = read_checkpoint(tmp_path / "tp1"), read_checkpoint(tmp_path / "tp2")
    p = "transformer.layers.0."
    for name, dim in [("attention.dense", 1), ("mlp.fc", 0), ("mlp.gate", 0), ("mlp.proj", 1)]:
        cat = torch.cat([r[p + name + ".weight"] for r in two], dim=dim)
        assert torch.equal(cat, one[p + name + ".weight"]), name
    # qkv: each rank holds its own q, k, v slices (q 2 heads, k 1, v 1 of 32 rows each).
    q, k, v = torch.split(one[p + "attention.qkv.weight"], [128, 64, 64])
    for r, t in enumerate(two):
        want = torch.cat([q[64 * r:64 * (r + 1)], k[32 * r:32 * (r + 1)], v[32 * r:32 * (r + 1)]])
        assert torch.equal(t[p + "attention.qkv.weight"], want)
    padded = torch.cat([r["lm_head.weight"] for r in two])
    assert padded.shape[0] == 302 and (padded[301] == 0).all()
    assert torch.equal(padded[:301], one["lm_head.weight"])
    for r in two:  # replicated
        assert torch.equal(r["transformer.vocab_embedding.weight"], one["transformer.vocab_embedding.weight"])


@pytest.mark.parametrize("sm", [80, 90, 100])
def test_int8_layout_is_a_permutation_and_inverts(sm):
    torch.manual_seed(0)
    q = torch.randint(-127, 128, (128, 40), dtype=torch.int8)  # (in, out)
    t = preprocess_int8_weight(q, sm)
    assert t.shape == q.shape and t.dtype == torch.int8
    assert torch.equal(unpreprocess_int8_weight(t, sm), q)
    biased = q if sm == 100 else (q.to(torch.int16) + 128).to(torch.uint8).view(torch.int8)
    assert torch.equal(t.flatten().sort().values, biased.flatten().sort().values)
    if sm == 100:  # SM100 keeps only the column-major transpose
        assert torch.equal(t.reshape(40, 128), q.t())


@pytest.mark.parametrize("tp", [1, 2])
def test_int8_dequantized_within_quantization_error(tmp_path, tp):
    model = make_model()
    write_checkpoint(model, tmp_path, torch.float16, tp=tp, quant="int8", sm=90)
    cfg, ranks = read_checkpoint(tmp_path)
    assert cfg["quantization"]["quant_algo"] == "W8A16"
    w = ranks[0]["transformer.layers.0.mlp.proj.weight"]
    s = ranks[0]["transformer.layers.0.mlp.proj.per_channel_scale"]
    assert w.dtype == torch.int8 and w.shape == (256 // tp, 128)  # (in per rank, out)
    assert s.dtype == torch.float16 and s.shape == (128,)
    state, ref = to_hf_state(cfg, ranks), model.state_dict()
    for k, v in ref.items():
        if k.endswith("proj.weight") and "layers" in k:
            # Half a quantization step (scale = row max / 127), plus the fp16 rounding of
            # the weight before quantizing (<= 2^-11 of |w| <= 127 steps); measured 0.54.
            step = v.abs().amax(1, keepdim=True) / 127
            assert ((state[k] - v).abs() <= step * (0.5 + 127 * 2**-11)).all(), k
        else:
            torch.testing.assert_close(state[k], v.half().float())
    assert validate_checkpoint(tmp_path, model, [5, 6, 7])["logits_rel_err"] < 3e-2


def test_errors():
    with pytest.raises(ExportError, match="intermediate_size=256 is not divisible by --tp_size=3"):
        write_checkpoint(make_model(n_heads=6, n_kv_heads=3, dim=192), "/tmp/unused", torch.float16, tp=3)
    with pytest.raises(ExportError, match="W8A16 layout"):
        write_checkpoint(make_model(intermediate_size=172), "/tmp/unused", torch.float16, quant="int8")
    with pytest.raises(ExportError, match="needs --dtype float16 or bfloat16"):
        write_checkpoint(make_model(), "/tmp/unused", torch.float32, quant="int8")


def test_binary_default_and_errors(tmp_path):
    proc = run_cli("trt_llm", "--output", str(tmp_path / "ckpt"), "--tp_size", "2")
    assert proc.returncode == 0, proc.stderr
    assert "2 rank(s)" in proc.stdout and "trtllm-build" in proc.stdout
    assert (tmp_path / "ckpt" / "rank1.safetensors").is_file()
    # The command: the embedded model exports as W8A16 out of the box.
    proc = run_cli("trt_llm", "--output", str(tmp_path / "int8"), "--quant", "int8")
    assert proc.returncode == 0, proc.stderr
    assert "quant_algo W8A16" in proc.stdout
    for args, msg in [(("--tp_size", "3"), "not divisible by --tp_size=3"),
                      (("--quant", "int8", "--dtype", "float32"), "needs --dtype float16 or bfloat16")]:
        line = error_line(run_cli("trt_llm", "--output", str(tmp_path / "bad"), *args))
        assert msg in line

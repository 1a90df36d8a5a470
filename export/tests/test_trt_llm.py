"""TensorRT-LLM checkpoint: names and shapes against a table read from TensorRT-LLM's own
converter (file and commit cited at TRTLLM_LLAMA), de-fuse roundtrip, W8A16 layout and error,
tensor-parallel shards, and the binary's one-line errors."""

import json

import pytest
import torch

from export.common import ExportError
from export.tests.cli import error_line, run_cli
from export.tests.models import trt_model as make_model
from export.trt_llm_ckpt import (expected_tensors, preprocess_int8_weight, read_checkpoint, to_hf_state,
                                 unpreprocess_int8_weight, validate_checkpoint, write_checkpoint)


# TensorRT-LLM's own Llama converter, the table below is read from:
#   NVIDIA/TensorRT-LLM tensorrt_llm/models/llama/convert.py at commit
#   0afa06ab2971a19a9809c66adc444c9280b16088, load_weights_from_hf_by_shard (HF name ->
#   TRT-LLM name, and the `split(param, tp_size, tp_rank, dim)` of each), with
#   QkvWeightHelper.split_qkv_weights (cat of rank slices of q, k, v; kv heads duplicated by
#   convert_utils.dup_kv_weight when num_kv_heads < tp_size) and the lm_head padding
#   (pad_vocab_size to a multiple of tp_size). W8A16: the weight passes through
#   symmetric_quantize_last_axis_of_batched_matrix(split_v.transpose()), so it is int8
#   (in, out per rank) beside a per_channel_scale (out per rank,).
# Columns: TRT-LLM name, HF source, TRT-LLM's split dim of the HF tensor (None: every rank
# holds it whole), W8A16-quantized, per-rank shape from (H hidden, D head, Q/KV heads,
# I intermediate, V vocab, tp).
TRTLLM_LLAMA = [
    ("transformer.vocab_embedding.weight", "model.embed_tokens.weight", None, False,
     lambda c: (c["V"], c["H"])),
    ("lm_head.weight", "lm_head.weight", 0, False,
     lambda c: (-(-c["V"] // c["tp"]), c["H"])),
    ("transformer.ln_f.weight", "model.norm.weight", None, False, lambda c: (c["H"],)),
    ("transformer.layers.{i}.input_layernorm.weight", "model.layers.{i}.input_layernorm.weight",
     None, False, lambda c: (c["H"],)),
    ("transformer.layers.{i}.post_layernorm.weight",
     "model.layers.{i}.post_attention_layernorm.weight", None, False, lambda c: (c["H"],)),
    ("transformer.layers.{i}.attention.qkv.weight", "model.layers.{i}.self_attn.{q,k,v}_proj.weight",
     0, True, lambda c: ((c["Q"] + 2 * max(c["KV"], c["tp"])) * c["D"] // c["tp"], c["H"])),
    ("transformer.layers.{i}.attention.dense.weight", "model.layers.{i}.self_attn.o_proj.weight",
     1, True, lambda c: (c["H"], c["Q"] * c["D"] // c["tp"])),
    ("transformer.layers.{i}.mlp.gate.weight", "model.layers.{i}.mlp.up_proj.weight", 0, True,
     lambda c: (c["I"] // c["tp"], c["H"])),
    ("transformer.layers.{i}.mlp.proj.weight", "model.layers.{i}.mlp.down_proj.weight", 1, True,
     lambda c: (c["H"], c["I"] // c["tp"])),
    ("transformer.layers.{i}.mlp.fc.weight", "model.layers.{i}.mlp.gate_proj.weight", 0, True,
     lambda c: (c["I"] // c["tp"], c["H"])),
]


def trtllm_table(model, tp: int, dtype, int8: bool) -> dict:
    """TRTLLM_LLAMA expanded for a model: name -> (shape, dtype, HF source, split dim)."""
    cfg = model.config
    c = dict(H=cfg.dim, D=cfg.head_dim, Q=cfg.n_heads, KV=cfg.n_kv_heads, I=cfg.intermediate_size,
             V=cfg.vocab_size, tp=tp)
    out = {}
    for name, src, dim, quantized, shape in TRTLLM_LLAMA:
        for i in (range(cfg.n_layers) if "{i}" in name else [None]):
            n, hf, sh = name.format(i=i), src.replace("{i}", str(i)), shape(c)
            if int8 and quantized:
                out[n] = ((sh[1], sh[0]), torch.int8, hf, dim)  # transposed
                out[n.replace(".weight", ".per_channel_scale")] = ((sh[0],), dtype, hf, None)
            else:
                out[n] = (sh, dtype, hf, dim)
    return out


@pytest.mark.parametrize("tp, quant", [(1, "none"), (2, "none"), (4, "none"), (1, "int8"), (2, "int8")])
def test_names_shapes_and_values_follow_trtllm_source(tmp_path, tp, quant):
    """Every rank file holds exactly TRT-LLM's names and shapes; float tensors equal TRT-LLM's
    split of the HF tensor named in the table (tp 4 > 2 kv heads: duplication; vocab 301: padding)."""
    from safetensors.torch import load_file

    model = make_model(tie=True)
    dtype = torch.float16
    write_checkpoint(model, tmp_path, dtype, tp=tp, quant=quant, sm=90)
    table = trtllm_table(model, tp, dtype, quant == "int8")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert {k: v[:2] for k, v in table.items()} == expected_tensors(cfg)  # our reader's schema too
    sd = model.state_dict()
    sd["lm_head.weight"] = torch.nn.functional.pad(sd["lm_head.weight"], (0, 0, 0, -301 % tp))
    for r in range(tp):
        t = load_file(tmp_path / f"rank{r}.safetensors")
        assert set(t) == set(table), set(t) ^ set(table)
        for name, (shape, dt, hf, dim) in table.items():
            assert (tuple(t[name].shape), t[name].dtype) == (shape, dt), name
            if dt == dtype and "{q,k,v}" not in hf and not name.endswith("per_channel_scale"):
                want = sd[hf] if dim is None else sd[hf].split(sd[hf].shape[dim] // tp, dim)[r]
                assert torch.equal(t[name], want.to(dtype)), name


def test_config_written_from_trtllm_source(tmp_path):
    """config.json keys and values (tensorrt_llm/models/llama/config.py LLaMAConfig)."""
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

    t, sd = load_file(tmp_path / "rank0.safetensors"), model.state_dict()
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


# Mistral and Qwen2 (export/trt_llm_ckpt.py cites the TensorRT-LLM files and commit): Llama's
# table, the architecture name, and for Qwen2 attn_bias + qkv.bias = cat of the rank slices of
# the q, k, v biases (kv biases duplicated when n_kv_heads < tp_size, as dup_kv_bias does).
@pytest.mark.parametrize("case, arch", [("qwen2_tied", "Qwen2ForCausalLM"), ("mistral_window", "MistralForCausalLM")])
@pytest.mark.parametrize("tp", [1, 4])
def test_mistral_and_qwen2_names_follow_trtllm_source(tmp_path, case, arch, tp):
    from safetensors.torch import load_file

    from model.weights import load_model
    from parity.hf_cases import make_hf, save_hf

    model = load_model(save_hf(make_hf(case, seed=0), tmp_path / "hf"), dtype=torch.float32)
    out = tmp_path / "trt"
    write_checkpoint(model, out, torch.float32, tp=tp)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == arch
    bias = case == "qwen2_tied"
    assert cfg["attn_bias"] is bias and (cfg.get("qwen_type") == "qwen2") is bias
    table = trtllm_table(model, tp, torch.float32, False)
    c = model.config
    qkv_out = (c.n_heads + 2 * max(c.n_kv_heads, tp)) * c.head_dim // tp
    if bias:
        table.update({f"transformer.layers.{i}.attention.qkv.bias": ((qkv_out,), torch.float32, None, 0)
                      for i in range(c.n_layers)})
    assert {k: v[:2] for k, v in table.items()} == expected_tensors(cfg)
    state = model.state_dict()
    for r in range(tp):
        got = load_file(str(out / f"rank{r}.safetensors"))
        assert set(got) == set(table)
        if bias:
            bq, bk, bv = (state[f"model.layers.1.self_attn.{n}_proj.bias"] for n in "qkv")
            if c.n_kv_heads < tp:  # each kv head's bias repeated tp // n_kv times, in head order
                d, rep = c.head_dim, tp // c.n_kv_heads
                bk, bv = (b.view(c.n_kv_heads, 1, d).expand(-1, rep, -1).reshape(-1) for b in (bk, bv))
            want = torch.cat([bq.chunk(tp)[r], bk.chunk(tp)[r], bv.chunk(tp)[r]])
            assert torch.equal(got["transformer.layers.1.attention.qkv.bias"], want)
    report = validate_checkpoint(str(out), model, [3, 17, 42, 99, 5, 250, 7, 8, 9, 10])
    assert report["logits_rel_err"] <= 1e-5


def test_other_architectures_are_refused(tmp_path):
    from model.weights import load_model
    from parity.hf_cases import make_hf, save_hf

    model = load_model(save_hf(make_hf("phi2", seed=0), tmp_path / "hf"))
    with pytest.raises(ExportError, match="no TensorRT-LLM checkpoint writer for phi"):
        write_checkpoint(model, tmp_path / "trt", torch.float32)

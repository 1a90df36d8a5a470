"""ModelConfig: presets, both Hugging Face config spellings, and clear errors."""

import json

import pytest


from model.config import PRESETS, ConfigError, ModelConfig

CLASSIC = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
}


def transformers5(cfg: dict) -> dict:
    """Rewrite a classic config dict in the transformers-5 spelling."""
    cfg = dict(cfg)
    rope = dict(cfg.pop("rope_scaling") or {"rope_type": "default"})
    rope["rope_theta"] = cfg.pop("rope_theta")
    cfg["rope_parameters"] = rope
    cfg["dtype"] = cfg.pop("torch_dtype")
    return cfg


def test_presets_have_published_shapes():
    c = ModelConfig.from_name("llama3.1-8b")
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim) == (4096, 32, 32, 8, 128)
    assert c.rope_scaling["factor"] == 8.0 and c.max_seq_len == 131072 and c.rope_theta == 500000.0
    assert ModelConfig.from_name("llama3-70b").intermediate_size == 28672
    assert ModelConfig.from_name("llama2-7b").n_kv_heads == 32
    assert ModelConfig.from_name("mistral-7b").n_kv_heads == 8
    tiny = ModelConfig.from_name("tiny")
    assert tiny.head_dim == tiny.dim // tiny.n_heads and tiny.n_heads % tiny.n_kv_heads == 0
    assert set(PRESETS) >= {"tiny", "llama2-7b", "llama3-8b", "llama3.1-8b", "llama3-70b", "mistral-7b"}


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'llama9'"):
        ModelConfig.from_name("llama9")


def test_both_spellings_agree(tmp_path):
    a = ModelConfig.from_hf_config(CLASSIC)
    b = ModelConfig.from_hf_config(transformers5(CLASSIC))
    assert a == b == ModelConfig.from_name("llama3.1-8b")
    assert a.torch_dtype == "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps(CLASSIC))
    assert ModelConfig.from_hf_config(tmp_path) == a  # a directory works too


def test_classic_type_key_and_default_rope():
    cfg = dict(CLASSIC, rope_scaling=dict(CLASSIC["rope_scaling"]))
    cfg["rope_scaling"]["type"] = cfg["rope_scaling"].pop("rope_type")
    assert ModelConfig.from_hf_config(cfg).rope_scaling["factor"] == 8.0
    plain = ModelConfig.from_hf_config(dict(CLASSIC, rope_scaling=None))
    assert plain.rope_scaling is None
    t5 = ModelConfig.from_hf_config(transformers5(dict(CLASSIC, rope_scaling=None)))
    assert t5 == plain and t5.rope_theta == 500000.0


def test_roundtrip_through_hf_dict():
    c = ModelConfig.from_name("llama3.1-8b")
    assert ModelConfig.from_hf_config(c.to_hf_config()) == c


def test_to_hf_config_loads_in_transformers():
    transformers = pytest.importorskip("transformers")
    c = ModelConfig.from_name("tiny").replace(rope_scaling=CLASSIC["rope_scaling"])
    hf = transformers.LlamaConfig.from_dict(c.to_hf_config())
    assert (hf.hidden_size, hf.num_key_value_heads, hf.head_dim) == (c.dim, c.n_kv_heads, c.head_dim)
    assert hf.rope_parameters["rope_type"] == "llama3"


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "unsupported architecture"),
    ({"architectures": ["Qwen2ForCausalLM"]}, "unsupported architecture"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope type 'yarn'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "unsupported rope type 'linear'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "lacks"),
    ({"num_key_value_heads": 5}, "multiple of n_kv_heads"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_errors_are_one_line(change, message):
    with pytest.raises(ConfigError, match=message) as e:
        ModelConfig.from_hf_config(dict(CLASSIC, **change))
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        ModelConfig.from_hf_config(tmp_path)


def test_replace_head_dim_keeps_full_rotary():
    """Overriding head_dim of a full-rotary preset keeps RoPE on every channel (was: the old width)."""
    from model.config import ModelConfig

    c = ModelConfig.from_name("tiny").replace(dim=256, n_heads=4, head_dim=64)
    assert c.head_dim == 64 and c.rotary_dim == 64
    assert ModelConfig.from_name("tiny").replace(dim=256).rotary_dim == 256 // ModelConfig.from_name("tiny").n_heads

"""load_model / save_model: roundtrip, tied embeddings, and one-line error messages."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file


from model.config import ConfigError, ModelConfig
from model.llama import Transformer
from model.weights import CheckpointError, load_model, save_model

CONFIG = ModelConfig.from_name("tiny").replace(n_layers=2, vocab_size=300)


def saved(tmp_path, config=CONFIG, **kw) -> Path:
    """Save a seeded random model; return its directory."""
    torch.manual_seed(0)
    save_model(Transformer(config), tmp_path, **kw)
    return tmp_path


def one_line(e) -> str:
    """The exception message, asserted to be one line."""
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_roundtrip_single_and_sharded(tmp_path):
    torch.manual_seed(0)
    model = Transformer(CONFIG)
    save_model(model, tmp_path / "one")
    save_model(model, tmp_path / "many", max_shard_bytes=50_000)
    assert (tmp_path / "one" / "model.safetensors").exists()
    assert len(list((tmp_path / "many").glob("model-*-of-*.safetensors"))) > 1
    ids = torch.randint(0, CONFIG.vocab_size, (1, 9))
    with torch.no_grad():
        ref = model(ids)
        for d in ("one", "many"):
            assert torch.equal(load_model(tmp_path / d)(ids), ref)


def test_tied_checkpoint_without_lm_head(tmp_path):
    path = saved(tmp_path, CONFIG.replace(tie_word_embeddings=True))
    assert "lm_head.weight" not in load_file(path / "model.safetensors")
    model = load_model(path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.device.type == "cpu"


def test_dtype_cast(tmp_path):
    model = load_model(saved(tmp_path), dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "nope")
    assert "checkpoint directory not found" in one_line(e) and "nope" in str(e.value)


def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    assert "no config.json" in one_line(e)


def test_no_safetensors_mentions_pickle(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG.to_hf_config()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    msg = one_line(e)
    assert "no model.safetensors" in msg and "pickle" in msg and "save_pretrained" in msg


def test_shape_mismatch_names_tensor(tmp_path):
    path = saved(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 200  # checkpoint has 192
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    msg = one_line(e)
    assert "model.layers.0.mlp.down_proj.weight" in msg and "(64, 200)" in msg and "(64, 192)" in msg


def test_missing_and_unexpected_tensors(tmp_path):
    path = saved(tmp_path)
    tensors = load_file(path / "model.safetensors")
    tensors.pop("model.norm.weight")
    tensors["model.extra.weight"] = torch.zeros(2)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="lacks 1 tensor.*model.norm.weight"):
        load_model(path)
    tensors["model.norm.weight"] = torch.ones(CONFIG.dim)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected tensor.*model.extra.weight"):
        load_model(path)


def test_unsupported_architecture(tmp_path):
    path = saved(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unsupported architecture.*supported: llama"):
        load_model(path)

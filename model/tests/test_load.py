"""model.load: every kind of source, the random-weights recipe, one-line errors; model.device."""

import pytest
import torch

import model
from decoding.generate import generate
from model.device import UsageError, dtype_name, parse_dtype, resolve_device, resolve_dtype
from model.weights import CheckpointError

EXPORT_PROMPT = [256, 72, 101, 108, 108, 111]  # export.common's default: BOS + "Hello"


def test_embedded_is_deterministic_and_not_degenerate():
    a, b = model.load("embedded"), model.load("embedded")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    tokens = generate(a, EXPORT_PROMPT, 16).new_ids[0]
    assert len(set(tokens)) >= 5, tokens  # the exports' parity checks need varied greedy output


def test_recipe_statistics():
    net = model.load("tiny", seed=1)
    norms = net.model.layers[0].input_layernorm.weight
    assert 0.5 <= norms.min() and norms.max() <= 1.5 and norms.std() > 0.1
    assert abs(net.model.embed_tokens.weight.std() - 0.1) < 0.01
    q = net.model.layers[0].self_attn.q_proj.weight
    assert abs(q.std() - q.shape[1] ** -0.5) < 0.2 * q.shape[1] ** -0.5


def test_preset_overrides_seed_dtype():
    a = model.load("tiny", dtype="bf16", n_layers=2, seed=3)
    assert a.config.n_layers == 2 and len(a.model.layers) == 2
    assert a.model.embed_tokens.weight.dtype == torch.bfloat16
    b = model.load("tiny", dtype=torch.bfloat16, n_layers=2, seed=4)
    assert not torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)


def test_shipped_and_user_path(tmp_path, monkeypatch):
    draft = model.load("lab-draft")
    model.save_model(draft, tmp_path / "ckpt")
    monkeypatch.setenv("BUILD_WORKING_DIRECTORY", str(tmp_path))  # `bazel run`: the user's folder
    again = model.load("ckpt")
    assert torch.equal(again.model.embed_tokens.weight, draft.model.embed_tokens.weight)


@pytest.mark.parametrize("source, kwargs, match", [
    ("no/such/dir", {}, "checkpoint directory not found"),
    ("lab-draft", {"n_layers": 1}, "random weights only"),
    ("tiny", {"n_layers": 0}, "n_layers must be a positive integer, got 0"),
    ("tiny", {"dtype": "int3"}, "unknown --dtype"),
    ("tiny", {"device": "tpu"}, "unknown --device"),
])
def test_one_line_errors(source, kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        model.load(source, **kwargs)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, (CheckpointError, UsageError, model.ConfigError))


def test_device_and_dtype_tables():
    assert parse_dtype("BF16") is torch.bfloat16 and parse_dtype("half") is torch.float16
    assert dtype_name(torch.bfloat16) == "bfloat16" and dtype_name(torch.bfloat16, short=True) == "bf16"
    assert resolve_dtype("auto", "cpu") is torch.float32 and resolve_dtype(None, "cuda") is torch.bfloat16
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UsageError, match="--weights_device"):
        resolve_device("gpu0", flag="--weights_device")

"""Bad checkpoints: each case raises one exact error class whose one-line message names the
file, tensor or field at fault (never a traceback from inside safetensors, json or tokenizers)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
from model.config import ConfigError
from model.tokenizer import TokenizerError, load_tokenizer
from model.weights import CheckpointError, save_model

LAB_SMALL_TOKENIZER = Path(__file__).absolute().parents[2] / "models/lab-small"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """The embedded model saved twice: one model.safetensors, and sharded with an index."""
    root = tmp_path_factory.mktemp("good")
    net = model.load("embedded")
    save_model(net, root / "single")
    save_model(net, root / "sharded", max_shard_bytes=40_000)
    return root


def _json(path, value):
    Path(path).write_text(value if isinstance(value, str) else json.dumps(value))


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    _json(d / "config.json", cfg)


def _edit_tensor(d, fn):
    f = d / "model.safetensors"
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f)


def _edit_index(d, fn):
    f = d / "model.safetensors.index.json"
    _json(f, fn(json.loads(f.read_text())))


def _nan(t):
    t["model.norm.weight"][3] = float("nan")


# (id, layout, mutate(dir), error class, regex the message must match; {d} is the directory)
CASES = [
    ("truncated safetensors", "single", lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:5000]), CheckpointError, r"cannot read {d}/model.safetensors as safetensors"),
    ("random-byte safetensors", "single", lambda d: (d / "model.safetensors").write_bytes(bytes(range(256)) * 8),
     CheckpointError, r"cannot read {d}/model.safetensors as safetensors"),
    ("NaN weight", "single", lambda d: _edit_tensor(d, _nan), CheckpointError,
     r"tensor model.norm.weight in {d}/model.safetensors has 1 non-finite"),
    ("int8 weight", "single", lambda d: _edit_tensor(d, lambda t: t.update(
        {"model.norm.weight": t["model.norm.weight"].to(torch.int8)})), CheckpointError,
     r"tensor model.norm.weight in {d}/model.safetensors has dtype I8; float weights are expected"),
    ("bool weight", "single", lambda d: _edit_tensor(d, lambda t: t.update(
        {"model.embed_tokens.weight": t["model.embed_tokens.weight"] > 0})), CheckpointError,
     r"tensor model.embed_tokens.weight in {d}/model.safetensors has dtype BOOL"),
    ("fp16 overflow", "single", lambda d: _edit_tensor(d, lambda t: t["model.norm.weight"].fill_(1e6)),
     "float16", r"tensor model.norm.weight .* non-finite .* in float16"),
    ("index outside the directory", "sharded", lambda d: _edit_index(d, lambda i: {
        **i, "weight_map": {**i["weight_map"], "model.norm.weight": "../../../../etc/passwd"}}), CheckpointError,
     r"{d}/model.safetensors.index.json maps model.norm.weight to '../../../../etc/passwd', not a file name"),
    ("index absolute path", "sharded", lambda d: _edit_index(d, lambda i: {
        **i, "weight_map": {**i["weight_map"], "model.norm.weight": "/etc/passwd"}}), CheckpointError,
     r"not a file name inside {d}"),
    ("index without weight_map", "sharded", lambda d: _edit_index(d, lambda i: {"metadata": {}}), CheckpointError,
     r"{d}/model.safetensors.index.json has no weight_map"),
    ("index not JSON", "sharded", lambda d: _json(d / "model.safetensors.index.json", "{\"weight_map\": "),
     CheckpointError, r"cannot read {d}/model.safetensors.index.json as JSON"),
    ("config null", "single", lambda d: _json(d / "config.json", "null"), ConfigError,
     r"{d}/config.json holds a JSON NoneType, expected an object"),
    ("config list", "single", lambda d: _json(d / "config.json", "[1, 2]"), ConfigError,
     r"{d}/config.json holds a JSON list"),
    ("config truncated", "single", lambda d: _json(d / "config.json", "{\"vocab_size\": 2"), ConfigError,
     r"cannot read {d}/config.json as JSON"),
    ("num_attention_heads 0", "single", lambda d: _edit_config(d, num_attention_heads=0), ConfigError,
     r"{d}/config.json: num_attention_heads must be a positive integer, got 0"),
    ("hidden_size string", "single", lambda d: _edit_config(d, hidden_size="64"), ConfigError,
     r"{d}/config.json: hidden_size must be a positive integer, got '64'"),
    ("num_hidden_layers bool", "single", lambda d: _edit_config(d, num_hidden_layers=True), ConfigError,
     r"num_hidden_layers must be a positive integer, got True"),
    ("rms_norm_eps negative", "single", lambda d: _edit_config(d, rms_norm_eps=-1e-5), ConfigError,
     r"{d}/config.json: rms_norm_eps must be a positive finite number"),
    ("rope_theta string", "single", lambda d: _edit_config(d, rope_theta="big"), ConfigError,
     r"rope_theta must be a positive finite number, got 'big'"),
    ("rope_parameters list", "single", lambda d: _edit_config(d, rope_parameters=[1]), ConfigError,
     r"rope_scaling/rope_parameters must be an object"),
    ("eos_token_id string", "single", lambda d: _edit_config(d, eos_token_id="</s>"), ConfigError,
     r"{d}/config.json: eos_token_id must be a non-negative integer"),
]


@pytest.mark.parametrize("layout, mutate, error, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_checkpoint_raises_one_clear_error(good, tmp_path, layout, mutate, error, pattern):
    d = tmp_path / "ckpt"
    shutil.copytree(good / layout, d)
    model.load(str(d))  # the control: the unmutated copy loads
    mutate(d)
    dtype = None
    if error == "float16":  # fits fp32, overflows the fp16 the user asked for
        error, dtype = CheckpointError, torch.float16
    with pytest.raises(error, match=pattern.format(d=d)) as info:
        model.load(str(d), dtype=dtype)
    assert "\n" not in str(info.value)


def _tokenizer_dir(tmp_path, **edits):
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copy(LAB_SMALL_TOKENIZER / "tokenizer.json", d)
    cfg = json.loads((LAB_SMALL_TOKENIZER / "tokenizer_config.json").read_text())
    cfg.update(edits)
    _json(d / "tokenizer_config.json", cfg)
    return d


TOKENIZER_CASES = [
    ("truncated tokenizer.json", lambda d: (d / "tokenizer.json").write_text(
        (d / "tokenizer.json").read_text()[:3000]), r"cannot read {d}/tokenizer.json as a tokenizer.json"),
    ("bos not in vocab", lambda d: _json(d / "tokenizer_config.json", {"bos_token": "<BOS>", "eos_token": "</s>"}),
     r"{d}/tokenizer_config.json: bos_token '<BOS>' is not in the vocabulary of {d}/tokenizer.json"),
    ("eos not in vocab", lambda d: _json(d / "tokenizer_config.json", {"eos_token": {"content": "<|eot|>"}}),
     r"eos_token '<\|eot\|>' is not in the vocabulary"),
    ("tokenizer_config list", lambda d: _json(d / "tokenizer_config.json", "[]"),
     r"{d}/tokenizer_config.json holds a JSON list"),
    ("unknown format", lambda d: ((d / "tokenizer.json").unlink(), (d / "tokenizer.model").write_bytes(b"\x00junk")),
     r"unknown tokenizer format: {d}/tokenizer.model"),
    ("bad tiktoken line", lambda d: ((d / "tokenizer.json").unlink(), (d / "tokenizer.model").write_bytes(b"IQ== 0\n!!! x\n")),
     r"cannot read {d}/tokenizer.model as a tiktoken BPE-ranks file"),
]


@pytest.mark.parametrize("mutate, pattern", [c[1:] for c in TOKENIZER_CASES], ids=[c[0] for c in TOKENIZER_CASES])
def test_bad_tokenizer_raises_tokenizer_error(tmp_path, mutate, pattern):
    d = _tokenizer_dir(tmp_path)
    assert load_tokenizer(d).bos_id is not None  # the control
    mutate(d)
    with pytest.raises(TokenizerError, match=pattern.format(d=d)):
        load_tokenizer(d)


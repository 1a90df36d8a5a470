"""Tokenizers: tokenizer.json, Llama 2 SentencePiece, Llama 3 tiktoken, and the byte fallback."""

import json
from pathlib import Path

import pytest


from model.tokenizer import ByteTokenizer, load_tokenizer

# absolute(), not resolve(): under Bazel the runfiles tree is symlinks, and the
# data files sit beside this test's runfiles path, not beside its source.
TOKENIZERS = Path(__file__).absolute().parents[2] / "third_party/tokenizers"
# Scripts, accents, CJK, RTL and emoji with skin-tone modifier and ZWJ sequence.
MULTILINGUAL = ("Grüße, naïve café — 日本語のテキスト, Привет, مرحبا, 👋🏽 👨‍👩‍👧 ok!"
                "\n\ttabs  and  spaces")

# name -> (directory, library, bos, eos, vocab size, "Hello world" ids without BOS)
REAL = {
    "llama2": ("llama2", "sentencepiece", 1, 2, 32000, [15043, 3186]),
    "llama3": ("llama3", "tiktoken", 128000, 128001, 128256, [9906, 1917]),
}


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    ids = tok.encode("héllo")
    assert ids[0] == tok.bos_id == 256 and max(ids[1:]) < 256
    assert tok.decode(ids + [tok.eos_id]) == "héllo"
    assert tok.encode("a", bos=False) == [97]


def test_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<s>": 0, "</s>": 1, "[UNK]": 2, "hello": 3, "world": 4}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}}))
    t = load_tokenizer(tmp_path)
    assert (t.bos_id, t.eos_id) == (0, 1)
    assert t.encode("hello world") == [0, 3, 4]
    assert t.encode("hello", bos=False) == [3]
    assert t.decode([0, 3, 4, 1]) == "hello world"


def _real(name, as_file=False):
    directory, library, *_ = REAL[name]
    pytest.importorskip(library)
    path = TOKENIZERS / directory
    return load_tokenizer(path / "tokenizer.model" if as_file else path)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_tokenizer_ids(name):
    _, _, bos, eos, vocab_size, hello = REAL[name]
    for t in (_real(name), _real(name, as_file=True)):
        assert (t.bos_id, t.eos_id, t.vocab_size) == (bos, eos, vocab_size)
        assert t.encode("Hello world", bos=False) == hello
        assert t.encode("Hello world") == [bos] + hello
        assert t.encode("Hello world", bos=True) == [bos] + hello


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_tokenizer_roundtrip(name):
    t = _real(name)
    ids = t.encode(MULTILINGUAL)
    assert ids[0] == t.bos_id and all(0 <= i < t.vocab_size for i in ids)
    assert t.decode(ids) == MULTILINGUAL
    assert t.decode(ids + [t.eos_id]) == MULTILINGUAL


@pytest.mark.parametrize("name", sorted(REAL))
def test_special_strings_in_text_stay_text(name):
    t = _real(name)
    text = "<s></s><|begin_of_text|><|end_of_text|><|eot_id|>"
    ids = t.encode(text, bos=False)
    assert t.bos_id not in ids and t.eos_id not in ids
    assert t.decode(ids) == text


def test_llama3_special_token_ids():
    t = _real("llama3")
    special = t.special_tokens
    assert len(special) == 256 and sorted(special.values()) == list(range(128000, 128256))
    assert special["<|start_header_id|>"] == 128006
    assert special["<|end_header_id|>"] == 128007
    assert special["<|eot_id|>"] == 128009
    assert special["<|reserved_special_token_0|>"] == 128002
    assert special["<|reserved_special_token_4|>"] == 128008
    assert special["<|reserved_special_token_250|>"] == 128255
    assert t.decode([128000, 9906, 128009, 1917, 128001]) == "Hello world"


def test_llama3_long_runs_roundtrip():
    t = _real("llama3")
    text = "a" * 60_000 + " " * 30_000 + "end"
    ids = t.encode(text, bos=False)
    assert t.decode(ids) == text


def test_unknown_format(tmp_path):
    for name, content in [("tokenizer.model", b"not a tokenizer\n"), ("tokenizer.model", b""),
                          ("vocab.bin", bytes(range(256)))]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="unknown tokenizer format"):
            load_tokenizer(tmp_path / name)


def test_missing_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "tokenizer.model")


def test_special_token_text_is_plain_text_in_every_format():
    """"<s>" typed by a user is text, never BOS/EOS, whatever the tokenizer format."""
    lab = Path(__file__).absolute().parents[2] / "models/lab-small"
    for path in [lab, TOKENIZERS / "llama2", TOKENIZERS / "llama3"]:
        tok = load_tokenizer(path)
        ids = tok.encode("a <s> b </s> <|begin_of_text|>", bos=False)
        assert tok.bos_id not in ids and tok.eos_id not in ids, (path, ids)
        assert tok.encode("<s>", bos=True).count(tok.bos_id) == 1, path

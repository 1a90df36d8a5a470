"""Tokenizers: tokenizer.json via `tokenizers`, and the byte-level fallback."""

import json

import pytest


from model.tokenizer import ByteTokenizer, load_tokenizer


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


def test_missing_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)

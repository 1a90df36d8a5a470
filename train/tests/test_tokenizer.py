"""The shipped byte-level BPE tokenizer: deterministic, BOS/EOS, loadable by ours and transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.tokenizer import load_tokenizer
from train.bpe import save_tokenizer, train_tokenizer

REPO = Path(__file__).absolute().parents[2]  # not resolved: Bazel runfiles are symlinks
SHIPPED = REPO / "data" / "tokenizer"


def test_training_is_deterministic_and_has_specials_first(tmp_path):
    texts = ["First Citizen:\nBefore we proceed any further, hear me speak.\n"] * 20 + ["The lobster is blue ."]
    a = save_tokenizer(train_tokenizer(texts, vocab_size=300), str(tmp_path / "a"))
    b = save_tokenizer(train_tokenizer(texts, vocab_size=300), str(tmp_path / "b"))
    assert Path(a).read_bytes() == Path(b).read_bytes()
    tok = load_tokenizer(a)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 300)
    text = "héllo wörld ✓ never seen"  # byte-level: anything round-trips
    assert tok.decode(tok.encode(text, bos=True)) == text
    with pytest.raises(ValueError, match="at least 258"):
        train_tokenizer(texts, vocab_size=100)


def test_shipped_tokenizer_is_the_one_the_train_split_gives():
    from data import corpus

    path = SHIPPED / "tokenizer.json"
    assert path.stat().st_size < 16 * 2**20
    retrained = train_tokenizer(corpus.load_split("train"), vocab_size=8192)
    assert json.loads(retrained.to_str()) == json.loads(path.read_text())


def test_shipped_tokenizer_loads_in_ours_and_transformers():
    transformers = pytest.importorskip("transformers")
    ours = load_tokenizer(str(SHIPPED))
    assert (ours.vocab_size, ours.bos_id, ours.eos_id) == (8192, 0, 1)
    theirs = transformers.PreTrainedTokenizerFast.from_pretrained(str(SHIPPED))
    text = "ROMEO:\nBut, soft! what light through yonder window breaks?"
    assert theirs(text)["input_ids"] == ours.encode(text, bos=True)
    assert theirs.bos_token_id == 0 and theirs.eos_token_id == 1
    assert theirs.decode(ours.encode(text, bos=False)) == text

"""The corpus the lab trains and evaluates its small models on, with a fixed split.

Files (copied byte for byte into data/, see DATA_CARD.md for origin and license):
  data/tinyshakespeare/input.txt   Tiny Shakespeare, 1,115,394 chars
  data/wikitext-2/valid.txt        WikiText-2 (tokenized version) validation, 60 articles
  data/wikitext-2/test.txt         WikiText-2 (tokenized version) test, 62 articles

Split rule (fixed; change it only with a new DATA_CARD entry, the trained models depend on it):
  train    = Tiny Shakespeare chars [0, cut), cut = the end of the first blank line ("\\n\\n")
             at or after char int(0.9 * len) (a speech boundary),
             + the first 54 of WikiText-2 valid's 60 articles.
  heldout  = Tiny Shakespeare chars [cut, end) + WikiText-2 valid's last 6 articles.
  wikitext2_test = all of WikiText-2 test; reserved for //bench:perplexity, never trained on.

An article starts at a level-1 heading line " = Title = " (not " = = Section = = ").
A split is a list of documents (str); `token_stream` encodes each document without
BOS and ends it with EOS, then concatenates them in order: the 1-D id stream that
training samples windows from and perplexity cuts into windows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DATA_DIR = Path(__file__).absolute().parent  # not resolved: Bazel runfiles are symlinks
SHAKESPEARE = "tinyshakespeare/input.txt"
WIKITEXT_VALID = "wikitext-2/valid.txt"
WIKITEXT_TEST = "wikitext-2/test.txt"
SPLITS = ("train", "heldout", "wikitext2_test")
# Fraction of each source that goes to train; the rest is held out.
TRAIN_FRACTION = 0.9
_ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


class CorpusError(ValueError):
    """A missing corpus file or unknown split; the message is one line saying what to do."""


def data_dir() -> Path:
    """The data/ folder: beside this file (source tree, runfiles or a pip-less checkout)."""
    override = os.environ.get("LAB_DATA_DIR")
    return Path(override) if override else DATA_DIR


def _read(rel: str) -> str:
    path = data_dir() / rel
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}; run from the repository root or "
                          "add //data:corpus to the target's deps")
    return path.read_text(encoding="utf-8")


def shakespeare_cut(text: str) -> int:
    """Char offset where Tiny Shakespeare's held-out part begins (after a blank line)."""
    start = int(TRAIN_FRACTION * len(text))
    blank = text.find("\n\n", start)
    return len(text) if blank < 0 else blank + 2


def wikitext_articles(text: str) -> list[str]:
    """Split a WikiText-2 file into articles, each starting at its " = Title = " line."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _ARTICLE_HEADING.match(line.rstrip("\n"))]
    if not starts:
        return [text]
    # The blank line before a heading belongs to the previous article (or is dropped at the top).
    articles = []
    for a, b in zip(starts, starts[1:] + [len(lines)]):
        articles.append("".join(lines[a:b]))
    return articles


def load_split(split: str) -> list[str]:
    """The documents of `split` ("train", "heldout" or "wikitext2_test"), in a fixed order."""
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "wikitext2_test":
        return wikitext_articles(_read(WIKITEXT_TEST))
    shakespeare = _read(SHAKESPEARE)
    cut = shakespeare_cut(shakespeare)
    articles = wikitext_articles(_read(WIKITEXT_VALID))
    n_train = int(round(TRAIN_FRACTION * len(articles)))
    if split == "train":
        return [shakespeare[:cut]] + articles[:n_train]
    return [shakespeare[cut:]] + articles[n_train:]


def split_text(split: str) -> str:
    """All documents of a split joined (for character counts and tokenizer training)."""
    return "".join(load_split(split))


def token_stream(tokenizer, split: str) -> list[int]:
    """Ids of `split`: each document encoded without BOS, followed by EOS, concatenated.

    tokenizer: anything with encode(text, bos=False) -> list[int] and eos_id
    (model.tokenizer.HFTokenizer).
    """
    ids: list[int] = []
    for doc in load_split(split):
        ids += tokenizer.encode(doc, bos=False)
        if tokenizer.eos_id is not None:
            ids.append(tokenizer.eos_id)
    return ids


def describe() -> str:
    """One paragraph stating the split, for model cards and perplexity protocols."""
    return ("train = Tiny Shakespeare first ~90% by chars (cut after a blank line) + WikiText-2 "
            "valid articles 1-54; heldout = Tiny Shakespeare last ~10% + WikiText-2 valid articles "
            "55-60; wikitext2_test = WikiText-2 test (tokenized version, 62 articles), never trained on")

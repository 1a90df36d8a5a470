"""Tokenizers: the three real checkpoint formats, and a byte-level fallback.

`load_tokenizer` reads a Hugging Face `tokenizer.json`, a SentencePiece
`tokenizer.model` (Llama 2) or a tiktoken BPE-ranks `tokenizer.model` (Llama 3),
telling them apart by content. Every tokenizer here exposes
encode(text, bos=...) -> list[int], decode(ids) -> str, bos_id, eos_id, vocab_size.
All three read encode's text as plain text: "<s>" or "<|eot_id|>" written in a
prompt never becomes a special id (only `bos=True` adds BOS). A file that cannot be
read raises TokenizerError naming it.
"""

from __future__ import annotations

import base64
import os
import re
from typing import Optional, Union

from model.config import read_json


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used; the message is one line naming the file."""


def _read(path: str, what: str, load):
    """load(), with any exception the tokenizer library raises turned into TokenizerError naming path."""
    try:
        return load()
    except TokenizerError:
        raise
    except Exception as e:  # the libraries raise bare Exception, RuntimeError, OSError, ValueError...
        raise TokenizerError(f"cannot read {path} as a {what}: {e}") from None


class HFTokenizer:
    """A `tokenizer.json` read with the `tokenizers` library (Llama 2/3, Mistral)."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        self.path = path
        self._tok = _read(path, "tokenizer.json", lambda: Tokenizer.from_file(path))
        self._tok.encode_special_tokens = True  # "<s>" in user text is text, as in the other formats
        self.bos_id, self.eos_id = _special_ids(self._tok, os.path.dirname(path))

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, int]:
        """The added special tokens, string -> id (what a chat template writes as text)."""
        return {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids of text, with one leading BOS when bos is True (never two)."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ids, special tokens dropped."""
        return self._tok.decode(list(ids), skip_special_tokens=True)


def _special_ids(tok, directory: str) -> tuple[Optional[int], Optional[int]]:
    """Find BOS/EOS ids from tokenizer_config.json, else from well-known token strings.

    A bos_token/eos_token that tokenizer_config.json names but the vocabulary lacks is a
    TokenizerError naming the token and the file (never a silent None).
    """
    bos = eos = None
    cfg_path = os.path.join(directory, "tokenizer_config.json")
    if os.path.isfile(cfg_path):
        cfg = read_json(cfg_path, TokenizerError)
        if not isinstance(cfg, dict):
            raise TokenizerError(f"{cfg_path} holds a JSON {type(cfg).__name__}, expected an object")
        bos, eos = (_token_str(cfg.get(k)) for k in ("bos_token", "eos_token"))
        for key, name in (("bos_token", bos), ("eos_token", eos)):
            if name is not None and (not isinstance(name, str) or tok.token_to_id(name) is None):
                raise TokenizerError(f"{cfg_path}: {key} {name!r} is not in the vocabulary of "
                                     f"{os.path.join(directory, 'tokenizer.json')}")
    bos = bos or next((t for t in ("<|begin_of_text|>", "<s>") if tok.token_to_id(t) is not None), None)
    eos = eos or next((t for t in ("<|end_of_text|>", "<|eot_id|>", "</s>")
                       if tok.token_to_id(t) is not None), None)
    return (tok.token_to_id(bos) if bos else None), (tok.token_to_id(eos) if eos else None)


def _token_str(value) -> Optional[str]:
    """tokenizer_config.json stores special tokens as a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, BOS = 256, EOS = 257 (vocab 258)."""

    bos_id = 256
    eos_id = 257
    vocab_size = 258

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """UTF-8 bytes of text, with a leading BOS when bos is True."""
        ids = list(text.encode("utf-8"))
        return [self.bos_id] + ids if bos else ids

    def decode(self, ids: list[int]) -> str:
        """Bytes back to text; specials dropped, invalid UTF-8 replaced."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    """A SentencePiece `tokenizer.model` (Llama 2: 32000 pieces, BOS 1, EOS 2)."""

    def __init__(self, path: str):
        import sentencepiece

        self.path = path
        self._sp = _read(path, "SentencePiece model", lambda: sentencepiece.SentencePieceProcessor(model_file=path))
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
        self.vocab_size = self._sp.get_piece_size()

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids of text, with a leading BOS when bos is True."""
        ids = self._sp.encode(text)
        return [self.bos_id] + ids if bos else ids

    def decode(self, ids: list[int]) -> str:
        """Text of ids; BOS/EOS and other control pieces decode to nothing."""
        return self._sp.decode(list(ids))


# Llama 3's pre-tokenizer split: contractions, letter runs, 1-3 digit groups,
# punctuation, newlines, other whitespace (the cl100k pattern Meta uses).
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Named special tokens at their offset past the base vocabulary; the other
# offsets below 256 are <|reserved_special_token_N|>, N counting up from 0.
LLAMA3_NAMED_SPECIALS = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 6: "<|start_header_id|>",
                         7: "<|end_header_id|>", 9: "<|eot_id|>"}
LLAMA3_NUM_SPECIALS = 256
# tiktoken slows badly on very long runs of (non-)whitespace; cut such runs here.
_MAX_RUN_CHARS = 25_000


class TiktokenTokenizer:
    """A tiktoken BPE-ranks `tokenizer.model` (Llama 3: 128000 ranks + 256 specials)."""

    def __init__(self, path: str):
        import tiktoken

        self.path = path
        ranks = _read(path, "tiktoken BPE-ranks file", lambda: _read_ranks(path))
        self.special_tokens = _llama3_specials(len(ranks))
        self._enc = tiktoken.Encoding(name=os.path.basename(path), pat_str=LLAMA3_SPLIT_PATTERN,
                                      mergeable_ranks=ranks, special_tokens=self.special_tokens)
        self.num_base_tokens = len(ranks)
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.vocab_size = self._enc.n_vocab

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids of text read as plain text (special-token strings stay text), BOS first when bos."""
        ids = [self.bos_id] if bos else []
        for piece in _cut_long_runs(text, _MAX_RUN_CHARS):
            ids.extend(self._enc.encode_ordinary(piece))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ids, special tokens dropped, invalid UTF-8 replaced."""
        return self._enc.decode([i for i in ids if 0 <= i < self.num_base_tokens])


def _read_ranks(path: str) -> dict[bytes, int]:
    """The {token bytes: rank} of a tiktoken file of `<base64 token> <rank>` lines."""
    with open(path, "rb") as f:
        rows = (line.split() for line in f if line.strip())
        return {base64.b64decode(tok, validate=True): int(rank) for tok, rank in rows}


def _llama3_specials(num_base: int) -> dict[str, int]:
    """Meta's 256 Llama 3 special tokens, numbered from num_base (128000 for the real file)."""
    names, reserved = {}, 0
    for offset in range(LLAMA3_NUM_SPECIALS):
        name = LLAMA3_NAMED_SPECIALS.get(offset)
        if name is None:
            name, reserved = f"<|reserved_special_token_{reserved}|>", reserved + 1
        names[name] = num_base + offset
    return names


def _cut_long_runs(text: str, limit: int):
    """Yield text in pieces so that no piece holds more than limit consecutive (non-)space chars."""
    start = 0
    for run in re.finditer(r"\s+|\S+", text):
        for cut in range(run.start() + limit, run.end(), limit):
            yield text[start:cut]
            start = cut
    yield text[start:]


Tokenizer = Union[HFTokenizer, SentencePieceTokenizer, TiktokenTokenizer]
_TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+=* [0-9]+\r?\n")


def detect_format(path: str) -> str:
    """The format of a tokenizer file, judged from its first bytes: json, sentencepiece or tiktoken."""
    with open(path, "rb") as f:
        head = f.read(256)
    if head.lstrip().startswith(b"{"):
        return "json"
    if _TIKTOKEN_LINE.match(head):
        return "tiktoken"
    # A SentencePiece ModelProto opens with field 1, a repeated piece message (tag 0x0A,
    # a one-byte length), whose own field 1 is the piece string (tag 0x0A again).
    if head[:1] == b"\x0a" and head[2:3] == b"\x0a":
        return "sentencepiece"
    raise TokenizerError(f"unknown tokenizer format: {path}; expected a tokenizer.json, "
                     "a SentencePiece model or a tiktoken BPE-ranks file")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def has_tokenizer(directory) -> bool:
    """True if `directory` holds a tokenizer.json or tokenizer.model."""
    return any(os.path.isfile(os.path.join(os.fspath(directory), n)) for n in TOKENIZER_FILES)


def load_tokenizer(path) -> Tokenizer:
    """Load a tokenizer from a file, or a directory with tokenizer.json or tokenizer.model.

    The format is read from the content, not the name; raises FileNotFoundError when
    nothing is there and ValueError for a file in no known format.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        found = [os.path.join(path, n) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(path, n))]
        if not found:
            raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in {path}")
        path = found[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"tokenizer file not found: {path}; expected a tokenizer.json or tokenizer.model")
    kind = detect_format(path)
    if kind == "json":
        return HFTokenizer(path)
    return SentencePieceTokenizer(path) if kind == "sentencepiece" else TiktokenTokenizer(path)

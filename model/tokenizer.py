"""Tokenizers: Hugging Face `tokenizer.json` files, and a byte-level fallback.

Both expose encode(text, bos=...) -> list[int], decode(ids) -> str, bos_id, eos_id.
"""

from __future__ import annotations

import json
import os
from typing import Optional


class HFTokenizer:
    """A `tokenizer.json` read with the `tokenizers` library (Llama 2/3, Mistral)."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        self.path = path
        self._tok = Tokenizer.from_file(path)
        self.bos_id, self.eos_id = _special_ids(self._tok, os.path.dirname(path))

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

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
    """Find BOS/EOS ids from tokenizer_config.json, else from well-known token strings."""
    bos = eos = None
    cfg_path = os.path.join(directory, "tokenizer_config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
        bos, eos = (_token_str(cfg.get(k)) for k in ("bos_token", "eos_token"))
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


def load_tokenizer(path: str) -> HFTokenizer:
    """Load tokenizer.json from a file path or a directory holding one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file not found: {path}; expected a tokenizer.json")
    return HFTokenizer(path)

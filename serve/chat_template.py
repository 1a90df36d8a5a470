"""Chat templates: messages -> prompt token ids (and the extra stop ids a chat turn ends on).

Chosen once per checkpoint by `load_chat_template`:
- a `chat_template` in the checkpoint's tokenizer_config.json: rendered with jinja2's
  sandboxed environment (no attribute access to Python internals, no file system);
- a Llama 3 tokenizer (tiktoken ranks with <|start_header_id|> ...): Meta's Llama 3 format;
- otherwise the plain template of the lab models: "User: ...\n\nAssistant:".

The rendered text may name special tokens ("<|eot_id|>", "<s>"); they become their ids,
the rest is encoded as plain text (the lab's tokenizers never read specials from text).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Optional

from model.config import read_json

ROLES = ("system", "user", "assistant", "tool")


class ChatTemplateError(ValueError):
    """A template that cannot render these messages; the message says why."""


@dataclass
class ChatTemplate:
    """render(messages) -> prompt ids; stop_token_ids end an assistant turn."""

    name: str  # "llama3", "plain" or "tokenizer_config.json"
    tokenizer: object
    jinja_source: Optional[str] = None
    stop_token_ids: tuple[int, ...] = ()
    specials: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self._split = (re.compile("(" + "|".join(re.escape(s) for s in sorted(self.specials, key=len, reverse=True))
                                  + ")") if self.specials else None)
        self._jinja = None
        if self.jinja_source is not None:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            try:
                self._jinja = env.from_string(self.jinja_source)
            except TemplateError as e:
                raise ChatTemplateError(f"the chat_template of tokenizer_config.json does not parse: {e}") from None

    def render_text(self, messages: list[dict]) -> str:
        """The prompt as text, specials written out, ending where the assistant's reply starts."""
        if self._jinja is not None:
            from jinja2.exceptions import TemplateError

            tok = self.tokenizer
            names = {v: k for k, v in self.specials.items()}
            try:
                return self._jinja.render(messages=messages, add_generation_prompt=True,
                                          bos_token=names.get(getattr(tok, "bos_id", None), ""),
                                          eos_token=names.get(getattr(tok, "eos_id", None), ""))
            except TemplateError as e:
                raise ChatTemplateError(f"the chat template cannot render these messages: {e}") from None
        if self.name == "llama3":
            parts = ["<|begin_of_text|>"]
            for m in messages:
                parts.append(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>")
            parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
            return "".join(parts)
        turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join(turns) + "\n\nAssistant:"

    def render(self, messages: list[dict]) -> list[int]:
        """Prompt ids: specials named in the text become their ids, the rest plain text.
        The plain template starts with BOS like a completion prompt."""
        text = self.render_text(messages)
        tok = self.tokenizer
        if self._jinja is None and self.name == "plain":
            return tok.encode(text, bos=True)
        ids: list[int] = []
        pieces = self._split.split(text) if self._split else [text]
        for piece in pieces:
            if piece in self.specials:
                ids.append(self.specials[piece])
            elif piece:
                ids.extend(tok.encode(piece, bos=False))
        return ids


def _raise(message: str):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def load_chat_template(tokenizer, checkpoint_dir: Optional[str]) -> ChatTemplate:
    """The template for this tokenizer / checkpoint (see the module docstring)."""
    specials = dict(getattr(tokenizer, "special_tokens", None) or {})
    source = None
    cfg_path = os.path.join(checkpoint_dir, "tokenizer_config.json") if checkpoint_dir else None
    if cfg_path and os.path.isfile(cfg_path):
        cfg = read_json(cfg_path, ChatTemplateError)
        source = cfg.get("chat_template") if isinstance(cfg, dict) else None
        if isinstance(source, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default") or next(iter(named.values()), None)
        if source is not None and not isinstance(source, str):
            raise ChatTemplateError(f"{cfg_path}: chat_template must be a string, got {type(source).__name__}")
    eot = specials.get("<|eot_id|>")
    stops = (eot,) if eot is not None else ()
    if source is not None:
        return ChatTemplate("tokenizer_config.json", tokenizer, source, stops, specials)
    if "<|start_header_id|>" in specials and eot is not None:
        return ChatTemplate("llama3", tokenizer, None, stops, specials)
    return ChatTemplate("plain", tokenizer, None, (), specials)

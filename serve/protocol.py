"""OpenAI request bodies -> engine requests, and engine outputs -> OpenAI response bodies.

Every check raises APIError (status, message, param); the app turns it into OpenAI's error
body {"error": {"message", "type", "param", "code"}}. Parameters the engine does not
implement (penalties, echo, best_of > n, logit_bias) are refused, never silently ignored.
Extensions, as vLLM spells them: top_k (-1 = all), ignore_eos, return_token_ids.
n > 1 with a seed: choice i samples with seed + i (so each choice equals LLM.generate with
that seed).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

from scheduler import RequestOutput, SamplingParams
from scheduler.params import MAX_LOGPROBS, SEED_LIMIT

MAX_N = 16  # choices per request
MAX_STOP = 4  # stop strings (OpenAI's limit)


class APIError(Exception):
    """An OpenAI-style error: HTTP status, message, the offending parameter, an error code."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict[str, Any]:
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                429: "rate_limit_error"}.get(self.status, "internal_server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param, code)


# ---------------------------------------------------------------------------- field checks
def _get(body: dict, name: str, kind, default=None, *, nullable: bool = True):
    """body[name] checked against `kind` (bool is never an int); missing or null -> default."""
    v = body.get(name, default)
    if v is None:
        if not nullable and name in body:
            raise bad(f"'{name}' must not be null", name)
        return default
    ok = (isinstance(v, bool) if kind is bool else
          isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else
          isinstance(v, int) and not isinstance(v, bool) if kind is int else isinstance(v, kind))
    if not ok:
        want = {bool: "a boolean", float: "a number", int: "an integer", str: "a string", list: "an array",
                dict: "an object"}[kind]
        raise bad(f"'{name}' must be {want}, got {v!r}", name)
    return float(v) if kind is float else v


def _range(name: str, v, lo, hi, lo_open: bool = False) -> None:
    if v is None:
        return
    if not (math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi):
        raise bad(f"'{name}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}", name)


@dataclass
class Parsed:
    """What a request asks for: engine prompts (ids), one SamplingParams per choice, and flags."""

    model: str
    prompts: list[list[int]]
    params: list[SamplingParams]  # one per choice, prompt-major: prompt p choice j at p * n + j
    n: int
    stream: bool
    include_usage: bool
    logprobs: Optional[int]
    return_token_ids: bool


def sampling(body: dict, *, max_tokens_default: Optional[int], prompt_lens: list[int], max_model_len: int,
             logprobs: Optional[int], extra_stop_ids: tuple[int, ...] = ()) -> tuple[list[SamplingParams], int]:
    """The per-choice SamplingParams of a completions/chat body, and n. Context check with numbers."""
    n = _get(body, "n", int, 1)
    _range("n", n, 1, MAX_N)
    temperature = _get(body, "temperature", float, 1.0)
    _range("temperature", temperature, 0.0, 2.0)
    top_p = _get(body, "top_p", float, 1.0)
    _range("top_p", top_p, 0.0, 1.0, lo_open=True)
    top_k = _get(body, "top_k", int, -1)
    if top_k != -1 and top_k < 1:
        raise bad(f"'top_k' must be -1 (all tokens) or >= 1, got {top_k}", "top_k")
    seed = _get(body, "seed", int)
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise bad(f"'seed' must be in [0, 2**63), got {seed}", "seed")
    for name in ("presence_penalty", "frequency_penalty"):
        if _get(body, name, float, 0.0) != 0.0:
            raise bad(f"'{name}' is not supported by this server (only 0)", name)
    if body.get("logit_bias"):
        raise bad("'logit_bias' is not supported by this server", "logit_bias")
    best_of = _get(body, "best_of", int)
    if best_of is not None and best_of != n:
        raise bad(f"'best_of' other than n is not supported (got best_of {best_of}, n {n})", "best_of")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP:
        raise bad(f"'stop' must be a non-empty string or a list of at most {MAX_STOP} non-empty strings, got "
                  f"{body.get('stop')!r}", "stop")
    ignore_eos = _get(body, "ignore_eos", bool, False)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _get(body, name, int)
    if max_tokens is not None and max_tokens < 1:
        raise bad(f"'{name}' must be >= 1, got {max_tokens}", name)
    longest = max(prompt_lens)
    if longest >= max_model_len:
        raise bad(f"This model's maximum context length is {max_model_len} tokens. However, your prompt has "
                  f"{longest} tokens; no room is left for the completion.", "messages" if "messages" in body
                  else "prompt", "context_length_exceeded")
    if max_tokens is None:
        max_tokens = max_tokens_default if max_tokens_default is not None else max_model_len - longest
    if longest + max_tokens > max_model_len:
        raise bad(f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                  f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} in the completion). "
                  f"Please reduce the length of the prompt or the completion.", name, "context_length_exceeded")
    params = []
    for j in range(n):
        params.append(SamplingParams(
            temperature=temperature, top_p=None if top_p == 1.0 else top_p, top_k=None if top_k == -1 else top_k,
            seed=None if seed is None else (seed + j) % SEED_LIMIT, max_tokens=max_tokens, stop=tuple(stop),
            stop_token_ids=extra_stop_ids, ignore_eos=ignore_eos, logprobs=logprobs))
    return params, n


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = _get(body, "stream", bool, False)
    opts = _get(body, "stream_options", dict, {})
    include_usage = bool(opts.get("include_usage", False))
    if opts and not stream:
        raise bad("'stream_options' is only allowed with stream: true", "stream_options")
    return stream, include_usage


def parse_completion(body: dict, tokenizer, vocab_size: int, max_model_len: int) -> Parsed:
    """/v1/completions: prompt is text, a list of texts, token ids, or a list of token-id lists."""
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_id(t) for t in prompt)):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise bad("'prompt' must be a non-empty string, a list of strings, a list of token ids or a list of such "
                  "lists", "prompt")
    prompts = []
    for p in prompt:
        if isinstance(p, str):
            if not p:
                raise bad("'prompt' must not be empty", "prompt")
            prompts.append(tokenizer.encode(p, bos=True))
        elif isinstance(p, list) and p and all(_is_id(t) for t in p):
            if not all(0 <= t < vocab_size for t in p):
                raise bad(f"prompt token ids must be in [0, {vocab_size})", "prompt")
            prompts.append(list(p))
        else:
            raise bad(f"each prompt must be a non-empty string or a non-empty list of token ids, got {p!r:.80}",
                      "prompt")
    if _get(body, "echo", bool, False):
        raise bad("'echo' is not supported by this server", "echo")
    if body.get("suffix"):
        raise bad("'suffix' is not supported by this server", "suffix")
    logprobs = _get(body, "logprobs", int)
    _range("logprobs", logprobs, 0, MAX_LOGPROBS)
    params, n = sampling(body, max_tokens_default=16, prompt_lens=[len(p) for p in prompts],
                         max_model_len=max_model_len, logprobs=logprobs)
    stream, usage = _stream_flags(body)
    return Parsed(body["model"], prompts, [p for _ in prompts for p in params], n, stream, usage, logprobs,
                  _get(body, "return_token_ids", bool, False))


def parse_chat(body: dict, template, max_model_len: int) -> Parsed:
    """/v1/chat/completions: messages through the chat template."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty array of {role, content} objects", "messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool", "developer"):
            raise bad(f"messages[{i}] must be an object with a role of system, user, assistant or tool, got {m!r:.80}",
                      f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}]
            if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                       for c in content):
                raise bad(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            content = "".join(c["text"] for c in content)
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content must be a string, got {content!r:.80}", f"messages[{i}].content")
        role = "system" if m["role"] == "developer" else m["role"]
        clean.append({"role": role, "content": content})
    from serve.chat_template import ChatTemplateError

    try:
        ids = template.render(clean)
    except ChatTemplateError as e:
        raise bad(str(e), "messages") from None
    logprobs = None
    if _get(body, "logprobs", bool, False):
        logprobs = _get(body, "top_logprobs", int, 0)
        _range("top_logprobs", logprobs, 0, MAX_LOGPROBS)
    elif body.get("top_logprobs") is not None:
        raise bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    params, n = sampling(body, max_tokens_default=None, prompt_lens=[len(ids)], max_model_len=max_model_len,
                         logprobs=logprobs, extra_stop_ids=template.stop_token_ids)
    stream, usage = _stream_flags(body)
    return Parsed(body["model"], [ids], params, n, stream, usage, logprobs,
                  _get(body, "return_token_ids", bool, False))


def _is_id(t) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


# ---------------------------------------------------------------------------- responses
def finish_reason(out: RequestOutput) -> Optional[str]:
    return out.finish_reason if out.finish_reason in ("stop", "length") else None


class TextStream:
    """The text of one choice as it grows: deltas that never take back what was sent.

    A trailing U+FFFD (a character whose bytes are not all generated yet) is held back, and
    with stop strings the last (longest stop - 1) characters too, until the request ends
    (a stop string's first characters are never sent before it is known not to match).
    """

    def __init__(self, stop: tuple[str, ...]):
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.sent = ""

    def delta(self, out: RequestOutput) -> str:
        text = out.text or ""
        if not out.finished:
            text = text[:len(text) - self.hold] if self.hold else text
            text = text.rstrip("\ufffd")
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        d, self.sent = text[len(self.sent):], text
        return d


def usage(prompt_lens: list[int], outs: list[RequestOutput]) -> dict[str, int]:
    p = sum(prompt_lens)
    c = sum(len(o.token_ids) for o in outs)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion_logprobs(tokenizer, out: RequestOutput, start: int = 0, offset0: int = 0) -> dict[str, Any]:
    """The completions API's logprobs object for tokens [start:] of out."""
    toks, lps, tops, offsets = [], [], [], []
    off = offset0
    for tid, (lp, top) in zip(out.token_ids[start:], (out.logprobs or [])[start:]):
        s = tokenizer.decode([tid])
        toks.append(s)
        lps.append(lp)
        tops.append({tokenizer.decode([i]): v for i, v in top} if top else None)
        offsets.append(off)
        off += len(s)
    return {"tokens": toks, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(tokenizer, out: RequestOutput, start: int = 0) -> dict[str, Any]:
    """The chat API's logprobs object ({"content": [...]}) for tokens [start:] of out."""
    def entry(tid, lp):
        s = tokenizer.decode([tid])
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    content = []
    for tid, (lp, top) in zip(out.token_ids[start:], (out.logprobs or [])[start:]):
        content.append({**entry(tid, lp), "top_logprobs": [entry(i, v) for i, v in top]})
    return {"content": content}


def now_s() -> int:
    return int(time.time())

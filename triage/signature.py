"""Failure signatures: the same failure at other paths, shapes, addresses and sizes gets one signature.

normalize_text() replaces what varies between occurrences with placeholders:
  paths          /home/u/x/model/llama.py, C:\\x\\y.py      -> <path>/llama.py (basename kept)
  addresses      0x7f3a2c001e40                           -> <addr>
  line numbers   "line 412", "llama.py:412", ":412:"       -> line <n>, llama.py:<n>
  sizes          "2.00 GiB", "512 MiB", "123456 bytes"     -> <size>
  shapes         [4, 64], (2, 8, 128), torch.Size([3, 5]), 4x64  -> <shape>
  dtypes         torch.float16, bf16, c10::BFloat16, int64 -> <dtype>
  other numbers  123, 1e-05, 0.25                          -> <num>
  uuids / hashes / hex digests                             -> <hex>
The exception type and the innermost frames (function names and file basenames) stay:
they are what two occurrences of one bug share. signature() hashes that normalized core.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping

INNER_FRAMES = 3  # the innermost frames kept in the signature: where it raised
MAX_TEXT = 2000  # normalized message characters that enter the signature

_DTYPES = (r"(?:torch\.)?(?:float(?:16|32|64)|bfloat16|half|double|int(?:8|16|32|64)|uint8|bool|"
           r"complex(?:64|128)|float8_e4m3fn|float8_e5m2)\b|c10::(?:BFloat16|Half|Float8_\w+)|"
           r"\b(?:bf16|fp16|fp32|fp8|f16|f32|i64|i32)\b|\bFloat\b|\bHalf\b|\bBFloat16\b|\bLong\b")
_SUBS = [
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<hex>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<addr>"),
    (re.compile(r"\b[0-9a-f]{16,}\b"), "<hex>"),
    # Paths: keep the basename (it names the module); drop the directories.
    (re.compile(r"(?:[A-Za-z]:\\|\\\\)(?:[^\\\s'\"]+\\)+([^\\\s'\":]+)"), r"<path>/\1"),
    (re.compile(r"(?:(?<=\s)|(?<=^)|(?<=[\"'(=]))(?:~|\.{1,2})?/(?:[^/\s'\"():,]+/)*([^/\s'\"():,]+)"),
     r"<path>/\1"),
    (re.compile(r"\bline \d+"), "line <n>"),
    (re.compile(r"(\.\w{1,4}):\d+(?::\d+)?"), r"\1:<n>"),
    (re.compile(r"\d+(?:\.\d+)?\s*(?:[KMGTP]i?B|bytes?)\b"), "<size>"),
    (re.compile(r"torch\.Size\(\[[^\]]*\]\)"), "<shape>"),
    (re.compile(r"\[\s*-?\d+(?:\s*,\s*-?\d+)+\s*\]"), "<shape>"),
    (re.compile(r"\(\s*-?\d+(?:\s*,\s*-?\d+)+\s*,?\s*\)"), "<shape>"),
    (re.compile(r"\b\d+(?:x\d+)+\b"), "<shape>"),
    (re.compile(_DTYPES), "<dtype>"),
    (re.compile(r"(?<![\w<])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?\b", re.I), "<num>"),
    (re.compile(r"[ \t]+"), " "),
]
_FRAME_RE = re.compile(r"^(?P<file>.*?):(?P<line>\d+) in (?P<func>[\w<>.]+)")
_TOKEN_RE = re.compile(r"<\w+>|[A-Za-z_][A-Za-z0-9_]*")


def normalize_text(text: str) -> str:
    """`text` with paths, addresses, line numbers, sizes, shapes, dtypes and numbers as placeholders."""
    out = text or ""
    for rx, repl in _SUBS:
        out = rx.sub(repl, out)
    return out.strip()


def frame_names(traceback_lines: list[str], n: int = INNER_FRAMES) -> list[str]:
    """The innermost `n` frames as "basename:func" (export.failures writes "file:line in func: code")."""
    out = []
    for line in (traceback_lines or [])[-n:]:
        m = _FRAME_RE.match(line)
        if m:
            base = re.split(r"[\\/]", m.group("file"))[-1]
            out.append(f"{base}:{m.group('func')}")
    return out


def error_of(record: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    """(type, message, traceback lines) of a failure-log record (schema 1)."""
    exc = record.get("exception") or {}
    etype = str(exc.get("type") or record.get("kind") or "Error")
    message = str(exc.get("message") or record.get("message") or "")
    chain = exc.get("chain") or []
    if chain:  # the root cause's words often name the problem better than the wrapper's
        message += "\n" + "\n".join(f"{c.get('type')}: {c.get('message')}" for c in chain)
    return etype, message, list(exc.get("traceback") or [])


def short_type(etype: str) -> str:
    """The class name without its module ("torch._dynamo.exc.Unsupported" -> "Unsupported")."""
    return etype.rsplit(".", 1)[-1]


def describe(record: Mapping[str, Any]) -> tuple[str, str]:
    """(signature, normalized text) of a record, normalizing its message once.

    normalized: "Type: message" (the first MAX_TEXT normalized characters) then the innermost
    frames, one per line. signature: 16 hex digits of the hash of the type, the first non-blank
    normalized message line and the frames.
    """
    etype, message, tb = error_of(record)
    norm = normalize_text(message[:2 * MAX_TEXT])  # the head names the problem; graphs dumped after it don't
    frames = frame_names(tb)
    first = next((ln for ln in norm.splitlines() if ln.strip()), "")
    core = "\n".join([short_type(etype), first[:MAX_TEXT], *frames])
    return (hashlib.sha1(core.encode("utf-8")).hexdigest()[:16],
            "\n".join([f"{short_type(etype)}: {norm[:MAX_TEXT]}", *frames]))


def normalized(record: Mapping[str, Any]) -> str:
    """The normalized failure text (see describe)."""
    return describe(record)[1]


def signature(record: Mapping[str, Any]) -> str:
    """The failure's signature (see describe)."""
    return describe(record)[0]


_SPLIT_RE = re.compile(r"_|(?<=[a-z])(?=[A-Z])")
_NEEDS_SPLIT = re.compile(r"_|[a-z][A-Z]")


def tokens(text: str) -> list[str]:
    """Lower-cased words and placeholders of normalized text; snake/camel parts split too."""
    out = []
    for tok in _TOKEN_RE.findall(text):
        out.append(tok.lower())
        if _NEEDS_SPLIT.search(tok):
            parts = [p for p in _SPLIT_RE.split(tok) if p]
            if len(parts) > 1:
                out.extend(p.lower() for p in parts)
    return out

"""When a sequence stops: the one stop-token / length rule, and the windowed stop-string search.

Used by the generate loop (decoding/generate.py, and so FastGenerator) and by the engine
(scheduler.Scheduler.update_from_output for tokens and length, LLMEngine for stop strings).
"""

from __future__ import annotations

from typing import Callable, Collection, Optional, Sequence

STOP = "stop"  # a stop token (kept in the output) or a stop string
LENGTH = "length"  # max_tokens new tokens


def stop_reason(token: int, num_output: int, max_tokens: int, stop_token_ids: Collection[int]) -> Optional[str]:
    """Why a sequence ends after emitting `token` as its num_output-th new token: STOP when it is a
    stop token, else LENGTH when num_output reached max_tokens, else None (go on)."""
    if token in stop_token_ids:
        return STOP
    if num_output >= max_tokens:
        return LENGTH
    return None


# Decoding a token suffix garbles at most its first few characters: up to 3 orphaned UTF-8
# continuation bytes (one U+FFFD each) or a dropped leading space (SentencePiece); after
# them the text is an exact suffix of the whole decode (UTF-8 resynchronises).
_GARBLE = 4


def stop_string_hit(decode: Callable[[list[int]], str], ids: list[int], stops: Sequence[str]) -> bool:
    """True if a stop string occurs in decode(ids), called once per new token (the last of ids).

    Any earlier match was caught at its own token, so only one ending in the newest token's
    text matters: decode a window of the last tokens holding at least max(len(stop)) + 8
    characters before the newest one, and search it past its possibly garbled start.
    Decodes O(longest stop) tokens per call instead of the whole output (O(n) per token).
    """
    need = max(map(len, stops)) + 2 * _GARBLE  # garble at the start and an unfinished last char
    w = 2 * need + 2
    while w < len(ids) and len(decode(ids[-w:-1])) < need:
        w *= 2
    if w >= len(ids):
        text = decode(ids)
        return any(s in text for s in stops)
    tail = decode(ids[-w:])[_GARBLE:]
    return any(s in tail for s in stops)

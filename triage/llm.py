"""Ask an OpenAI-compatible chat endpoint (ours or hosted) about a new failure, only when configured.

Configured by URL and key together (--llm_url/--llm_key or $LAB_TRIAGE_LLM_URL and
$LAB_TRIAGE_LLM_KEY, model by $LAB_TRIAGE_LLM_MODEL); without both, nothing leaves the
machine. The request carries the normalized failure (paths, addresses and sizes already
replaced) and the most similar past cases with their fixes; the answer comes back as a
suggestion with its provenance (endpoint, model, time, the prompt's sha1).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional

SYSTEM = ("You help engineers fix failures in a PyTorch / Triton / CUDA / Bazel workspace. Given a "
          "normalized error and similar past cases, answer with the most likely cause and one concrete fix, "
          "in at most 5 sentences.")


@dataclass(frozen=True)
class Endpoint:
    """Where to ask: base URL (".../v1"), bearer key, model name, timeout in seconds."""

    url: str
    key: str
    model: str = "default"
    timeout: float = 30.0


def from_env(url: Optional[str] = None, key: Optional[str] = None, model: Optional[str] = None) -> Optional[Endpoint]:
    """The configured endpoint (flags over environment), or None unless both URL and key are set."""
    url = url or os.environ.get("LAB_TRIAGE_LLM_URL")
    key = key or os.environ.get("LAB_TRIAGE_LLM_KEY")
    if not (url and key):
        return None
    return Endpoint(url.rstrip("/"), key, model or os.environ.get("LAB_TRIAGE_LLM_MODEL") or "default")


def prompt(normalized: str, similar: list[dict]) -> str:
    """The user message: the normalized failure, then up to 3 similar past cases and their fixes."""
    parts = ["Failure (normalized):", normalized]
    for case in similar[:3]:
        parts += ["", f"Similar past case (similarity {case.get('similarity', 0):.2f}):",
                  case.get("normalized", ""), f"Fix that was recorded: {case.get('text', '')}"]
    return "\n".join(parts)


def ask(endpoint: Endpoint, normalized: str, similar: list[dict]) -> dict:
    """POST /chat/completions; returns {"text", "provenance"}; raises RuntimeError on any failure."""
    user = prompt(normalized, similar)
    body = json.dumps({"model": endpoint.model, "temperature": 0,
                       "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]})
    req = urllib.request.Request(f"{endpoint.url}/chat/completions", data=body.encode("utf-8"), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {endpoint.key}"})
    try:
        with urllib.request.urlopen(req, timeout=endpoint.timeout) as resp:
            answer = json.loads(resp.read().decode("utf-8"))
        text = answer["choices"][0]["message"]["content"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise RuntimeError(f"LLM endpoint {endpoint.url}: no usable answer ({type(e).__name__}: {e})") from None
    return {"text": str(text).strip(),
            "provenance": {"endpoint": endpoint.url, "model": answer.get("model", endpoint.model),
                           "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "prompt_sha1": hashlib.sha1(user.encode("utf-8")).hexdigest(),
                           "similar_cases": [c.get("fix_id") for c in similar[:3]]}}

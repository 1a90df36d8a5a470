"""The knowledge base shipped in the repo: triage/kb/*.yaml, curated cause / fix / source entries.

Each entry: id, area, title, patterns (regexes searched in the raw "Type: message" text,
case-insensitive), cause, fix, source (a public link where the error text and its fix are
documented). A pattern hit is a match; otherwise TF-IDF over title + cause + the patterns'
words, above KB_THRESHOLD. KB suggestions are offered as "kb", never as a known fix.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Optional

import yaml

from triage.signature import normalize_text
from triage.similarity import Index

KB_DIR = Path(__file__).resolve().parent / "kb"
KB_THRESHOLD = 0.35
REQUIRED = ("id", "area", "title", "patterns", "cause", "fix", "source")


class KBError(Exception):
    """A knowledge-base file that is not a list of complete entries."""


def load(kb_dir: Optional[Path] = None) -> list[dict[str, Any]]:
    """Every entry of every *.yaml in `kb_dir` (default: the shipped one), checked."""
    out, seen = [], set()
    for path in sorted(Path(kb_dir or KB_DIR).glob("*.yaml")):
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        if not isinstance(entries, list):
            raise KBError(f"{path}: expected a list of entries")
        for i, e in enumerate(entries):
            missing = [k for k in REQUIRED if not e.get(k)]
            if missing:
                raise KBError(f"{path}: entry {i} lacks {', '.join(missing)}")
            if e["id"] in seen:
                raise KBError(f"{path}: duplicate id {e['id']}")
            seen.add(e["id"])
            try:
                e["_res"] = [re.compile(p, re.I) for p in e["patterns"]]
            except re.error as err:
                raise KBError(f"{path}: entry {e['id']}: bad pattern ({err})") from None
            e["_file"] = path.name
            out.append(e)
    return out


@functools.lru_cache(maxsize=4)
def _shipped() -> tuple[list[dict[str, Any]], Index]:
    entries = load()
    index = Index((e["id"], normalize_text(" ".join([e["title"], e["cause"], *e["patterns"]])))
                  for e in entries)
    return entries, index


def public(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry without its compiled patterns."""
    return {k: v for k, v in entry.items() if not k.startswith("_")}


def search(raw_text: str, normalized_text: str, k: int = 3) -> list[dict[str, Any]]:
    """Entries whose pattern occurs in `raw_text` (score 1), then TF-IDF matches above KB_THRESHOLD."""
    entries, index = _shipped()
    hits = [{**public(e), "score": 1.0, "match": "pattern"} for e in entries
            if any(rx.search(raw_text) for rx in e["_res"])]
    if len(hits) < k:
        by_id = {e["id"]: e for e in entries}
        have = {h["id"] for h in hits}
        for key, score in index.query(normalized_text, k=k):
            if score >= KB_THRESHOLD and key not in have:
                hits.append({**public(by_id[key]), "score": round(score, 4), "match": "similar"})
    return hits[:k]

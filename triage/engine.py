"""Suggest: known fixes first (exact signature, then TF-IDF above the threshold, ranked by the
Wilson lower bound of worked/tried), then the shipped knowledge base, then (only if configured)
an OpenAI-compatible endpoint; otherwise the failure stays open. Feedback changes the ranking.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Mapping, Optional

from triage import kb, llm
from triage import signature as sig
from triage.similarity import THRESHOLD, Index, wilson_lower
from triage.store import Store

MAX_FIXES = 5
# How stale the in-memory fixes may be for writes made by other processes (the CLI, another
# server on the same database): their fixes and outcomes show up within this many seconds.
# Writes through this Triage object are seen at once.
REFRESH_S = 1.0


def raw_text(record: Mapping[str, Any]) -> str:
    """"Type: message" plus the chain, un-normalized (what knowledge-base patterns search)."""
    etype, message, _ = sig.error_of(record)
    return f"{etype}: {message}"


def score(similarity: float, worked: int, tried: int) -> float:
    """How a candidate fix ranks: its match similarity, scaled by the Wilson lower bound of its outcomes.

    An exact match (1.0) of a fix that never worked still ranks above nothing; among fixes of one
    signature the outcomes decide.
    """
    return similarity * (0.5 + 0.5 * wilson_lower(worked, tried))


class Triage:
    """A store plus an in-memory snapshot of its fixes (with outcome counts) and their TF-IDF index.

    The snapshot is rebuilt when this object records a fix or an outcome, and when the database's
    fixes/outcomes changed (checked at most every REFRESH_S seconds), so a suggest with a known
    fix reads no row from the database.
    """

    def __init__(self, store: Store, endpoint: Optional[llm.Endpoint] = None, threshold: float = THRESHOLD):
        self.store = store
        self.endpoint = endpoint
        self.threshold = threshold
        self._index: Optional[Index] = None
        self._by_sig: dict[str, list[dict]] = {}
        self._key = None
        self._checked = 0.0
        self._dirty = True
        self._lock = threading.Lock()

    def _snapshot(self) -> tuple[Index, dict[str, list[dict]]]:
        """(index of fixed signatures, {signature: fixes}) as of at most REFRESH_S ago."""
        with self._lock:
            now = time.monotonic()
            if self._dirty or now - self._checked >= REFRESH_S:
                key = self.store.fixes_version()
                self._checked, self._dirty = now, False
                if key != self._key or self._index is None:
                    by_sig: dict[str, list[dict]] = {}
                    for fix in self.store.all_fixes():
                        by_sig.setdefault(fix["signature"], []).append(fix)
                    self._index = Index(self.store.fixed_signatures())
                    self._by_sig, self._key = by_sig, key
            return self._index, self._by_sig

    def _changed(self) -> None:
        with self._lock:
            self._dirty = True

    def _similar(self, normalized: str) -> list[tuple[str, float]]:
        """(signature, cosine) of fixed signatures above the threshold, best first."""
        index, _ = self._snapshot()
        return [(s, c) for s, c in index.query(normalized, k=10) if c >= self.threshold]

    def known_fixes(self, signature: str, normalized: str) -> list[dict]:
        """Candidate fixes, best first: exact signature matches at similarity 1, then similar ones."""
        sims = {signature: 1.0}
        for s, c in self._similar(normalized):
            sims.setdefault(s, min(c, 0.999))  # a similar signature never ties an exact one
        _, by_sig = self._snapshot()
        out = []
        for fix in (f for s in sims for f in by_sig.get(s, ())):
            similarity = sims[fix["signature"]]
            out.append({"fix_id": fix["id"], "text": fix["text"], "origin": fix["origin"],
                        "provenance": fix["provenance"],
                        "match": "exact" if fix["signature"] == signature else "similar",
                        "similarity": round(similarity, 4), "worked": fix["worked"], "tried": fix["tried"],
                        "wilson": round(wilson_lower(fix["worked"], fix["tried"]), 4),
                        "score": round(score(similarity, fix["worked"], fix["tried"]), 4),
                        "normalized": fix["normalized"]})
        out.sort(key=lambda f: (-f["score"], -f["similarity"], f["fix_id"]))
        return out[:MAX_FIXES]

    def suggest(self, record: Mapping[str, Any], failure_id: Optional[int] = None, ask_llm: bool = True,
                described: Optional[tuple[str, str]] = None) -> dict:
        """What is known about `record`: status known / kb / llm / open, and the suggestions.

        described: (signature, normalized) when the caller has them already (ingest does).
        """
        signature, normalized = described or sig.describe(record)
        fixes = self.known_fixes(signature, normalized)
        kb_hits = [] if fixes else kb.search(raw_text(record), normalized)
        out: dict[str, Any] = {"failure_id": failure_id, "signature": signature, "normalized": normalized,
                               "fixes": fixes, "kb": kb_hits, "llm": None}
        if fixes:
            out["status"] = "known"
        elif kb_hits:
            out["status"] = "kb"
        elif self.endpoint is not None and ask_llm:
            similar = [{**f, "similarity": c} for s, c in self._similar_any(normalized)
                       for f in self.store.fixes_for([s])[:1]]
            try:
                answer = llm.ask(self.endpoint, normalized, similar)
            except RuntimeError as e:
                out["llm"] = {"error": str(e)}
                out["status"] = "open"
            else:
                fix = self.store.add_fix(signature, normalized, answer["text"], origin=f"llm:{self.endpoint.model}",
                                         provenance=answer["provenance"])
                self._changed()
                out["llm"] = {"fix_id": fix["id"], **answer}
                out["status"] = "llm"
        else:
            out["status"] = "open"
        if failure_id is not None:
            self.store.set_status(failure_id, "known" if out["status"] == "known" else "open")
        return out

    def _similar_any(self, normalized: str) -> list[tuple[str, float]]:
        """Most similar fixed signatures whatever their score (context for the LLM prompt)."""
        index, _ = self._snapshot()
        return index.query(normalized, k=3)

    def ingest(self, record: Mapping[str, Any], source: str = "api", ask_llm: bool = True) -> dict:
        """Store `record` (with the status its suggestions give it) and return them (with failure_id)."""
        described = sig.describe(record)
        try:
            out = self.suggest(record, ask_llm=ask_llm, described=described)
        except Exception:
            self.store.insert_failure(record, source, "open", described)  # the record is kept whatever happens
            raise
        status = "known" if out["status"] == "known" else "open"
        fid, inserted = self.store.insert_failure(record, source, status, described)
        if not inserted:  # the same record again: its row takes this answer's status, as before
            self.store.set_status(fid, status)
        out["failure_id"] = fid
        return out

    def feedback(self, failure_id: Optional[int] = None, fix_id: Optional[int] = None,
                 worked: Optional[bool] = None, my_fix: Optional[str] = None, note: str = "",
                 kb_id: Optional[str] = None) -> dict:
        """"worked" / "did not work" on a fix, or "my fix was ..." for a failure (recorded as worked).

        kb_id: the user says a knowledge-base entry's fix worked (or not) for this failure: the
        entry becomes a fix of the failure's signature (origin "kb:<id>") carrying that outcome.
        """
        if my_fix is not None or kb_id is not None:
            if failure_id is None:
                raise ValueError("a fix of your own (or a KB entry) needs the failure it fixed (failure_id)")
            failure = self.store.failure(failure_id)
            if failure is None:
                raise KeyError(f"no failure with id {failure_id}")
            if kb_id is not None:
                entry = next((e for e in kb.load() if e["id"] == kb_id), None)
                if entry is None:
                    raise KeyError(f"no knowledge-base entry {kb_id}")
                text, origin, prov = entry["fix"], f"kb:{kb_id}", {"source": entry["source"]}
            else:
                text, origin, prov = my_fix, "user", {}
            if not text or not text.strip():
                raise ValueError("the fix text is empty")
            fix = self.store.add_fix(failure["signature"], failure["normalized"], text.strip(), origin=origin,
                                     provenance=prov, failure_uid=failure["uid"])
            fix_id = fix["id"]
            worked = True if worked is None else worked
        if fix_id is None or worked is None:
            raise ValueError("feedback needs a fix_id and worked true/false, or my_fix with a failure_id")
        try:
            outcome = self.store.add_outcome(fix_id, bool(worked), note, failure_id=failure_id)
        finally:
            self._changed()
        if failure_id is not None and worked:
            self.store.set_status(failure_id, "resolved")
        return {"outcome_id": outcome["id"], "fix": self.store.fix(fix_id)}

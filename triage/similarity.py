"""TF-IDF cosine similarity over normalized failure text, and the Wilson lower bound that ranks fixes.

Cosine of sublinear-tf, smoothed-idf vectors lies in [0, 1], so one threshold means the
same thing whatever the corpus size (BM25 scores do not): below THRESHOLD nothing counts
as known. The threshold was set on the evaluation set (triage/eval): see docs/triage.md.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Iterable, Sequence

from triage.signature import tokens

THRESHOLD = 0.5


@functools.lru_cache(maxsize=1024)
def _counts(text: str) -> Counter:
    """Token counts of `text` (cached: one suggest queries the fix index and the knowledge base)."""
    return Counter(tokens(text))


class Index:
    """An in-memory TF-IDF index of (key, text) documents; rebuilt when documents change."""

    def __init__(self, docs: Iterable[tuple[object, str]] = ()):
        self.keys: list[object] = []
        tfs: list[Counter] = []
        for key, text in docs:
            self.keys.append(key)
            tfs.append(Counter(tokens(text)))
        df: Counter = Counter()
        for tf in tfs:
            df.update(tf.keys())
        self._n = len(tfs)
        self._idf = {t: math.log((1 + self._n) / (1 + d)) + 1.0 for t, d in df.items()}
        self._postings: dict[str, list[tuple[int, float]]] = {}  # token -> [(doc, weight)]: only shared words cost
        for i, tf in enumerate(tfs):
            for t, w in self._vector(tf).items():
                self._postings.setdefault(t, []).append((i, w))

    def _vector(self, tf: Counter) -> dict[str, float]:
        idf_unknown = math.log(1 + self._n) + 1.0  # a word no document has: rare, weighty
        vec = {t: (1.0 + math.log(c)) * self._idf.get(t, idf_unknown) for t, c in tf.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        return {t: v / norm for t, v in vec.items()}

    def query(self, text: str, k: int = 5) -> list[tuple[object, float]]:
        """The `k` most similar documents as (key, cosine), best first (cosine > 0 only)."""
        scores: dict[int, float] = {}
        for t, qw in self._vector(_counts(text)).items():
            for i, w in self._postings.get(t, ()):
                scores[i] = scores.get(i, 0.0) + qw * w
        best = sorted(scores.items(), key=lambda kv: -kv[1])[:k]
        return [(self.keys[i], s) for i, s in best if s > 0]


def wilson_lower(worked: int, tried: int, z: float = 1.96) -> float:
    """Lower bound of the Wilson score interval of worked/tried (95% by default); 0 when untried."""
    if tried <= 0:
        return 0.0
    p = worked / tried
    denom = 1 + z * z / tried
    centre = p + z * z / (2 * tried)
    margin = z * math.sqrt(p * (1 - p) / tried + z * z / (4 * tried * tried))
    return max(0.0, (centre - margin) / denom)


def best(items: Sequence, key) -> list:
    """`items` sorted by `key` descending (stable)."""
    return sorted(items, key=key, reverse=True)

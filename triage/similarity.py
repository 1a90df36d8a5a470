"""TF-IDF cosine similarity over normalized failure text, and the Wilson lower bound that ranks fixes.

Cosine of sublinear-tf, smoothed-idf vectors lies in [0, 1], so one threshold means the
same thing whatever the corpus size (BM25 scores do not): below THRESHOLD nothing counts
as known. The threshold was set on the evaluation set (triage/eval): see docs/triage.md.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

from triage.signature import tokens

THRESHOLD = 0.5


class Index:
    """An in-memory TF-IDF index of (key, text) documents; rebuilt when documents change."""

    def __init__(self, docs: Iterable[tuple[object, str]] = ()):
        self.keys: list[object] = []
        self._tfs: list[Counter] = []
        for key, text in docs:
            self.keys.append(key)
            self._tfs.append(Counter(tokens(text)))
        df: Counter = Counter()
        for tf in self._tfs:
            df.update(tf.keys())
        n = len(self._tfs)
        self._idf = {t: math.log((1 + n) / (1 + d)) + 1.0 for t, d in df.items()}
        self._vecs = [self._vector(tf) for tf in self._tfs]

    def _vector(self, tf: Counter) -> dict[str, float]:
        idf_unknown = math.log(1 + len(self._tfs)) + 1.0  # a word no document has: rare, weighty
        vec = {t: (1.0 + math.log(c)) * self._idf.get(t, idf_unknown) for t, c in tf.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        return {t: v / norm for t, v in vec.items()}

    def query(self, text: str, k: int = 5) -> list[tuple[object, float]]:
        """The `k` most similar documents as (key, cosine), best first (cosine > 0 only)."""
        q = self._vector(Counter(tokens(text)))
        scored = []
        for key, vec in zip(self.keys, self._vecs):
            small, big = (q, vec) if len(q) < len(vec) else (vec, q)
            s = sum(v * big.get(t, 0.0) for t, v in small.items())
            if s > 0:
                scored.append((key, s))
        scored.sort(key=lambda kv: -kv[1])
        return scored[:k]


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

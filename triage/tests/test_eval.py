"""The evaluation gates on the committed set: top-1 >= 90% after one fix per class, false known fix <= 5%."""

import collections

from triage.eval.evaluate import MAX_FALSE_KNOWN, MIN_ACCURACY, UNRELATED, evaluate, load_set


def test_set_is_large_real_and_split_by_class():
    cases = load_set()
    assert len(cases) >= 60
    by_class = collections.Counter(c["class"] for c in cases)
    assert all(n >= 3 for cls, n in by_class.items() if cls not in UNRELATED), by_class
    public = [c for c in cases if c["origin"] != "lab"]
    assert public and all(c["origin"].startswith("https://github.com/") for c in public)
    assert sum(c["origin"] == "lab" for c in cases) >= 60


def test_gates_hold_and_can_fail():
    cases = load_set()
    result = evaluate(cases)
    assert result["accuracy"] >= MIN_ACCURACY, result["rows"]
    assert result["false_known_rate"] <= MAX_FALSE_KNOWN, result["rows"]
    # Planted: no similarity threshold. Unrelated failures then get someone else's fix.
    loose = evaluate(cases, threshold=0.1)
    assert not loose["false_known_rate"] <= MAX_FALSE_KNOWN

"""pytest plugin: a failing parity comparison becomes one record in the failure log.

Enable with `-p triage.pytest_plugin` (tools/testing/pytest_main.py adds it when triage is
importable; `lab_py_test` depends on it). It records a failed test when its failure is a
comparison of `parity/tolerance.py` (the Closeness text "FAIL: N of M elements out of bound",
whose numbers it parses: worst index, got, ref, bound, ratio, bad/total, and the compared
tensors' shape and dtypes) or when the test lives under parity/. Each record also lists the
tensors in the failing test's frames (name: shape, dtype), the inputs at hand. Nothing else is
recorded. Set LAB_TRIAGE_PYTEST=0 to turn it off.
"""

from __future__ import annotations

import os
import re

import pytest

_CLOSENESS = re.compile(
    r"(?P<what>[^\n]*?): FAIL: (?P<bad>\d+) of (?P<numel>\d+) elements out of bound(?: \((?P<nonfinite>\d+) NaN/Inf\))?; "
    r"worst at (?P<index>\([^)]*\)): got (?P<got>\S+), ref (?P<ref>\S+), \|diff\| (?P<diff>\S+) vs bound "
    r"(?P<bound>\S+) \((?P<ratio>\S+) of it\)"
    r"(?:; inputs (?P<shape>\([^)]*\)) got (?P<got_dtype>\w+), ref (?P<ref_dtype>\w+))?")
MAX_TENSORS = 16


def comparison_numbers(text: str) -> dict | None:
    """The numbers of a failed tolerance.compare in `text` (Closeness.__str__), or None."""
    m = _CLOSENESS.search(text or "")
    if not m:
        return None
    out: dict = {"what": m.group("what").strip().lstrip("E ").strip(), "index": m.group("index")}
    if m.group("shape"):
        out["shape"] = [int(x) for x in re.findall(r"\d+", m.group("shape"))]
        out["got_dtype"], out["ref_dtype"] = m.group("got_dtype"), m.group("ref_dtype")
    for key in ("bad", "numel", "nonfinite"):
        out[key] = int(m.group(key)) if m.group(key) else 0
    for key in ("got", "ref", "diff", "bound", "ratio"):
        try:
            out[key] = float(m.group(key))
        except ValueError:
            out[key] = m.group(key)
    return out


def frame_tensors(traceback) -> dict:
    """{"frame:name": {"shape", "dtype"}} of the torch tensors local to the failing test's frames
    (innermost first, at most MAX_TENSORS): the inputs' shapes and dtypes where the test held them."""
    import sys

    torch = sys.modules.get("torch")
    out: dict = {}
    if torch is None:
        return out
    for entry in reversed(list(traceback)):
        for name, value in entry.frame.f_locals.items():
            if isinstance(value, torch.Tensor) and len(out) < MAX_TENSORS:
                out[f"{entry.name}:{name}"] = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """After a failed call phase, record a parity comparison failure (never fails the run itself)."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("LAB_TRIAGE_PYTEST") == "0" or not report.failed or call.excinfo is None:
        return
    try:
        exc = call.excinfo.value
        message = str(exc)
        numbers = comparison_numbers(message) or comparison_numbers(str(report.longrepr))
        if numbers is None and not item.nodeid.startswith("parity/"):
            return
        from export.failures import record_event

        frames = [f"{e.path}:{e.lineno + 1} in {e.name}: {str(e.statement).strip()[:200]}"
                  for e in call.excinfo.traceback[-12:]]
        etype = type(exc).__name__ if type(exc).__module__ == "builtins" else \
            f"{type(exc).__module__}.{type(exc).__qualname__}"
        record_event(f"pytest {item.nodeid}", "parity", etype, message, traceback_lines=frames,
                     context={"test": item.nodeid, "numbers": numbers,
                              "inputs": frame_tensors(call.excinfo.traceback)},
                     argv=["pytest", item.nodeid])
    except Exception:  # noqa: BLE001 - logging must never change a test's result
        pass

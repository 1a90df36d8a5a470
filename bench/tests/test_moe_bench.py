"""bench/moe.py at a tiny shape through Triton's interpreter: rows checked, timed, written; a wrong
variant exits 1; every option is a flag."""

from __future__ import annotations

import json

import pytest

from bench import moe as bmoe
from bench.tests import options_without_flags
from kernels import _triton

needs_triton = pytest.mark.skipif(_triton.run_device() is None, reason="needs a GPU or TRITON_INTERPRET=1")


def tiny_opts(**kw):
    opts = dict(tokens=("1", "5"), experts=4, top_k=2, hidden=64, inter=96, dtype="fp32", device="cpu",
                warmup=1, iters=2, plot=False)
    opts.update(kw)
    return bmoe.Options(**opts)


@needs_triton
def test_tiny_run_writes_checked_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    assert bmoe.run(tiny_opts()) == 0
    rows = json.loads((tmp_path / "moe.json").read_text())["rows"]
    assert [(r["tokens"], r["variant"], r["status"]) for r in rows] == [
        (1, "loop", "ok"), (1, "fused", "ok"), (5, "loop", "ok"), (5, "fused", "ok")]
    assert rows[0]["weight_bytes"] == 2 * 3 * 64 * 96 * 4  # one token: its 2 experts, fp32


@needs_triton
def test_a_wrong_variant_exits_1(tmp_path, monkeypatch):
    import kernels.fused_moe as fm

    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    real = fm.fused_moe
    monkeypatch.setattr(fm, "fused_moe", lambda *a: real(*a) * 1.01)
    with pytest.raises(SystemExit) as e:
        bmoe.run(tiny_opts(tokens=("3",)))
    assert e.value.code == 1
    assert json.loads((tmp_path / "moe.json").read_text())["rows"][1]["status"].startswith("WRONG")


def test_bad_flags_are_one_error(capsys):
    assert bmoe.run(tiny_opts(top_k=5)) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_every_option_is_a_flag():
    assert options_without_flags(bmoe) == []

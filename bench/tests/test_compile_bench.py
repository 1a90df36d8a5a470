"""bench.compile on a CPU: the WRONG gate (never timed), variant selection, a whole eager + default run."""

import dataclasses
import json

import pytest
import torch

from bench import compile as bc
from bench.tests import exit_code, options_without_flags

# A quick CPU run: the embedded model, eager and default, a 4-token prompt in a 16-token cache.
QUICK = bc.Options(variants=("eager", "default"), checkpoint=None, dtype="fp32", device="cpu", prefill_len=4,
                   cache_len=16, warmup=1, iters=2, seed=0, plot=False, work_dir=None)


def _case(tmp_path):
    return bc.make_case(None, "cpu", torch.float32, prefill_len=4, cache_len=16, seed=0, work_dir=str(tmp_path))


def test_wrong_variant_is_reported_and_never_timed(tmp_path, monkeypatch):
    case = _case(tmp_path)
    calls = []

    def wrong_builder(c):
        built = _wrong_builder(c)
        step = built.steps["decode"]

        def counted(*args):
            calls.append(1)
            return step(*args)

        return bc.Built({p: counted for p in bc.PHASES}, built.seconds)

    monkeypatch.setitem(bc.BUILDERS, "default", wrong_builder)
    rows = bc.run_all(case, ["eager", "default"], warmup=1, iters=2)
    by = {(r["variant"], r["phase"]): r for r in rows}
    for phase in bc.PHASES:
        bad = by[("default", phase)]
        assert bad["status"].startswith("WRONG: default "), bad["status"]
        assert "p50_us" not in bad and "speedup" not in bad
        good = by[("eager", phase)]
        assert good["status"] == "ok" and good["p10_us"] <= good["p50_us"] <= good["p90_us"]
        assert good["max_abs_err"] == 0.0
    assert len(calls) == 2  # the check of each phase only: no warmup, no timing
    names = {r["name"] for r in bc.summary_records(rows, {"decode": 1, "prefill": 4})}
    assert "compile/decode/eager p50 us" in names and "compile/decode/default p50 us" not in names
    assert "compile/decode/default status" in names and "compile/decode/default compile s" in names


def _wrong_builder(c):
    """A "compiled" step whose logits are off by 1e-2: what a bad mask or cache write looks like."""
    eager = bc.build_eager(c).steps["decode"]

    def step(*args):
        logits, k, v = eager(*args)
        return logits + 1e-2, k, v

    return bc.Built({p: step for p in bc.PHASES}, {"compile decode": 0.5})


def test_main_exits_1_on_a_wrong_variant_after_writing_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    monkeypatch.setitem(bc.BUILDERS, "default", _wrong_builder)
    assert exit_code(bc.run, QUICK) == 1
    assert "bench.compile: 1 WRONG or FAILED: default" in capsys.readouterr().err
    rows = json.loads((tmp_path / "compile.json").read_text())["rows"]  # written before the exit
    assert {r["variant"] for r in rows if r["status"] == "ok"} == {"eager"}


def test_failed_build_is_a_row_not_a_crash(tmp_path, monkeypatch):
    def broken(c):
        raise RuntimeError("Unsupported: aten.foo\nmore")

    monkeypatch.setitem(bc.BUILDERS, "aoti", broken)
    rows = bc.run_variant(_case(tmp_path), "aoti", warmup=1, iters=2)
    assert [r["status"] for r in rows] == ["FAILED: RuntimeError: Unsupported: aten.foo"] * 2


def test_variant_selection():
    run, skipped = bc.select_variants(None, "cpu", torch.float32)
    assert run == list(bc.DEFAULT_CPU)
    assert dict(skipped)["max-autotune"].startswith("slow to compile on a CPU")
    run, skipped = bc.select_variants(["default", "onnxruntime"], "cpu", torch.bfloat16)
    assert run == ["eager", "default"] and "fp32" in dict(skipped)["onnxruntime"]


def test_main_cpu_run_writes_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    bc.run(dataclasses.replace(QUICK, iters=3, plot=True))
    out = capsys.readouterr().out
    assert "WRONG" not in out and "FAILED" not in out
    for name in ("compile.csv", "compile.json", "summary.json", "compile.png"):
        assert (tmp_path / name).exists(), name
    records = {r["name"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    for phase in bc.PHASES:
        for variant in ("eager", "default"):
            for q in ("p10", "p50", "p90"):
                assert records[f"compile/{phase}/{variant} {q} us"]["value"] > 0
        assert records[f"compile/{phase}/default compile s"]["unit"] == "s"
    assert records["compile/prefill/default p50 us"]["tokens"] == 4
    rows = json.loads((tmp_path / "compile.json").read_text())["rows"]
    assert {(r["variant"], r["phase"], r["status"]) for r in rows} == {
        (v, p, "ok") for v in ("eager", "default") for p in bc.PHASES}


@pytest.mark.parametrize("bad", [dict(prefill_len=16, cache_len=16), dict(variants=("eager", "nope"))])
def test_usage_errors(tmp_path, monkeypatch, bad):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    with pytest.raises(Exception, match="prefill_len|unknown"):  # both refused before any variant is built
        bc.run(dataclasses.replace(QUICK, **bad))


def test_every_option_is_a_flag():
    assert options_without_flags(bc) == []

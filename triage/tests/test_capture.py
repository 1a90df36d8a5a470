"""Capture into the one failure log: bench WRONG gates, the parity pytest plugin, Bazel BEP; the CLI on top."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from triage import bep, cli

FIXTURE = Path(__file__).with_name("data") / "build_events.json"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_FAILURES_LOG", str(tmp_path / "failures.jsonl"))
    monkeypatch.setenv("LAB_TRIAGE_DB", str(tmp_path / "triage.db"))
    monkeypatch.delenv("LAB_TRIAGE_LLM_URL", raising=False)
    return tmp_path


def _log(tmp_path):
    return [json.loads(x) for x in (tmp_path / "failures.jsonl").read_text().splitlines()]


def _bep_copy(tmp_path):
    test_log = tmp_path / "test.log"
    test_log.write_text("E   AssertionError: store round trip lost 1 row\nFAILED triage/tests/test_store.py::test_x\n")
    out = tmp_path / "bep.json"
    out.write_text(FIXTURE.read_text().replace("file://TESTLOG", f"file://{test_log}"))
    return out


def test_bench_wrong_gate_appends_a_record(env):
    from bench import common

    with pytest.raises(SystemExit):
        common.exit_on_failures("bench.decode", ["eager@4", "graphs@16"])
    with pytest.raises(SystemExit):
        common.exit_on_failures("bench.kernel_ops", ["rms_norm float16 M=4 width=64 triton"])
    with pytest.raises(SystemExit):
        common.exit_on_failures("bench.decode", ["eager@4"], inputs=[{"batch": 4, "dtype": "bfloat16"}])
    r, k, d = _log(env)
    assert r["binary"] == "bench.decode" and r["kind"] == "wrong" and r["schema"] == 1
    assert r["exception"]["type"] == "BenchWrong" and r["context"]["variants"] == ["eager@4", "graphs@16"]
    assert r["git"] and r["versions"]["python"]
    assert k["context"]["inputs"] == {"rms_norm float16 M=4 width=64 triton": {
        "dtypes": ["float16"], "sizes": {"M": 4, "width": 64}}}, "the inputs a variant's name carries"
    assert d["context"]["inputs"] == {"eager@4": {"batch": 4, "dtype": "bfloat16"}}, "the caller's own"


def test_bep_parse(tmp_path):
    found = bep.failures(_bep_copy(tmp_path))
    assert [f["type"] for f in found] == ["BazelActionFailed.Genrule", "BazelTest.FAILED"]
    assert "__hfma2" in found[0]["message"] and found[0]["context"]["target"] == "//kernels:rms_norm_cu"
    assert "lost 1 row" in found[1]["message"]
    assert found[1]["context"]["git"].startswith("4bc57f4") and found[1]["context"]["bazel_command"] == "test"
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": {}}\nnot json\n')
    with pytest.raises(bep.BEPError, match="bad.json:2"):
        bep.failures(bad)


def test_cli_ingest_bep_suggest_feedback_export_import(env, capsys):
    assert cli.main(["ingest", "--bep", str(_bep_copy(env))]) == 0
    assert [r["kind"] for r in _log(env)] == ["build", "test"], "BEP failures land in the one failure log"
    assert cli.main(["feedback", "--failure", "1", "--my_fix", "guard __hfma2 with __CUDA_ARCH__ >= 530"]) == 0
    assert cli.main(["--json", "suggest", "--failure", "1"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert result["status"] == "known" and result["fixes"][0]["text"].startswith("guard __hfma2")
    assert cli.main(["feedback", "--fix", "1", "--did_not_work", "--note", "sm_52 still fails"]) == 0
    assert cli.main(["export", "--out", str(env / "dump.jsonl")]) == 0
    rows = (env / "dump.jsonl").read_text().splitlines()
    assert len(rows) == 2 + 1 + 2
    assert cli.main(["--db", str(env / "other.db"), "import", "--in", str(env / "dump.jsonl")]) == 0
    assert "5 rows imported" in capsys.readouterr().out
    assert cli.main(["ingest"]) == 0, "the default log is $LAB_FAILURES_LOG"


def test_cli_bad_input_is_one_line(env, capsys):
    assert cli.main(["ingest", "--bep", str(env / "missing.json")]) == 2
    assert cli.main(["suggest"]) == 2
    assert cli.main(["suggest", "--failure", "99"]) == 2
    assert cli.main(["feedback", "--fix", "99", "--worked"]) == 2
    assert cli.main(["--llm_url", "http://127.0.0.1:1"] + ["suggest", "--text", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("error: ") for line in err), err
    assert "missing.json" in err[0]


def test_pytest_plugin_records_failed_parity_comparison(env):
    test = env / "test_planted.py"
    test.write_text(
        "import torch\nfrom parity.tolerance import Tol, assert_close\n"
        "def test_planted():\n    ref = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))\n"
        "    got = ref.half(); got[:, 1] = 0  # planted: a zeroed column\n"
        "    assert_close(got, ref, Tol(1e-5, 1e-5), what='rms_norm')\n"
        "def test_unrelated():\n    assert 1 == 2\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                           "triage.pytest_plugin", str(test)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:]
    (r,) = _log(env)  # the unrelated failure outside parity/ is not recorded
    assert r["kind"] == "parity" and r["binary"].endswith("test_planted.py::test_planted")
    nums = r["context"]["numbers"]
    assert nums["what"] == "rms_norm" and nums["bad"] >= 1 and nums["numel"] == 32 and nums["ratio"] > 1
    assert (nums["shape"], nums["got_dtype"], nums["ref_dtype"]) == ([4, 8], "float16", "float32")
    assert r["context"]["inputs"]["test_planted:got"] == {"shape": [4, 8], "dtype": "float16"}
    assert r["context"]["inputs"]["test_planted:ref"] == {"shape": [4, 8], "dtype": "float32"}


def test_ingest_binary_flags_and_list(env, capsys):
    from triage import ingest

    assert ingest.to_cli_argv(["--bep", "b.json", "--db", "x.db"]) == ["--db", "x.db", "ingest", "--bep", "b.json"]
    assert cli.main(ingest.to_cli_argv(["--bep", str(_bep_copy(env))])) == 0
    assert cli.main(["list", "--status", "open"]) == 0
    out = capsys.readouterr().out
    assert "bazel //kernels:rms_norm_cu" in out and "bazel //triage:test_store" in out


def test_pytest_main_enables_the_plugin():
    """The runner every lab_py_test runs (in its runfiles) loads the plugin when triage is importable."""
    text = (ROOT / "tools" / "testing" / "pytest_main.py").read_text()
    assert '"-p", "triage.pytest_plugin"' in text

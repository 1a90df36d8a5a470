"""AOTInductor packages of prefill/decode: greedy tokens identical to eager (fp32, CPU).

One case only: compiling the two packages takes ~45 s on 2 idle CPU cores (measured;
~115 s when the cores are shared). Tolerances: export/checks.py.
"""

from export import aoti_package, checks
from export.aoti_package import AOTIRunner, compile_packages, probe_load
from export.kv_step import eager_greedy
from export.tests.cli import error_line, run_cli
from export.tests.models import PROMPT, assert_varied, varied_model


def test_aoti_greedy_identical_to_eager(tmp_path):
    model = varied_model()
    n, S = 12, 32
    ref, ref_logits = eager_greedy(model, PROMPT, n)
    assert_varied(ref)
    built = compile_packages(model, str(tmp_path), S)
    assert set(built["paths"]) == {"prefill", "decode"}
    assert probe_load(str(tmp_path)) is None  # both load in a child process
    got, logits = AOTIRunner(str(tmp_path)).generate(model.config, PROMPT, n, S)
    checks.check_fp32("aoti", got, ref, checks.max_abs_diff(logits, ref_logits))


def test_binary_rejects_bad_lengths():
    assert "exceeds --max_seq_len" in error_line(run_cli("aoti", "--max_new_tokens", "100"))


def test_probe_names_the_signal_of_a_crashing_load(tmp_path, monkeypatch):
    monkeypatch.setattr(aoti_package, "PROBE_CODE", "import os; os.kill(os.getpid(), 11)")  # what the H200 does
    assert probe_load(str(tmp_path)) == "aoti_load_package crashed (SIGSEGV, signal 11) in a child process"
    monkeypatch.setattr(aoti_package, "PROBE_CODE", "raise SystemExit('no such package')")
    assert probe_load(str(tmp_path)) == "aoti_load_package failed in a child process (exit 1): no such package"

"""ONNX export of the KV-cache step: onnxruntime fp32 parity, INT8 within its tolerance, the binary.

Tolerances and their measurements: export/checks.py (the binary applies the same gates).
"""

from export import checks
from export.kv_step import eager_greedy, eager_step
from export.onnx_step import export_onnx, ort_forced, ort_greedy, quantize_onnx_int8
from export.tests.cli import error_line, run_cli
from export.tests.models import PROMPT, assert_varied, varied_model

N, S = 16, 24


def test_onnxruntime_fp32_and_int8_parity(tmp_path):
    model = varied_model()
    ref, ref_logits = eager_greedy(model, PROMPT, N)
    assert_varied(ref)
    fp32 = export_onnx(model, str(tmp_path / "step.onnx"), S)
    got, logits = ort_greedy(fp32, model.config, PROMPT, N, S)
    checks.check_fp32("onnxruntime", got, ref, checks.max_abs_diff(logits, ref_logits))
    int8 = quantize_onnx_int8(fp32, str(tmp_path / "step_int8.onnx"))
    want = checks.forced_logits(eager_step(model, S), PROMPT, ref, None, None)
    rel, top1 = checks.forced_agreement(ort_forced(int8, model.config, PROMPT, ref, S), want)
    checks.check_int8("onnxruntime", rel, top1)


def test_binary(tmp_path):
    proc = run_cli("onnx_export", "--output", str(tmp_path), "--max_new_tokens", "4", "--max_seq_len", "16")
    assert proc.returncode == 0, proc.stderr
    assert "tokens identical" in proc.stdout and (tmp_path / "step_int8.onnx").is_file()
    assert "exceeds --max_seq_len" in error_line(run_cli("onnx_export", "--max_new_tokens", "100"))

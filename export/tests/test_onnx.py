"""ONNX export of the KV-cache step: onnxruntime fp32 parity, INT8 within its tolerance, the binary."""

from export.common import embedded_model
from export.kv_step import eager_greedy
from export.onnx_step import export_onnx, ort_greedy, quantize_onnx_int8
from export.tests.cli import error_line, run_cli

PROMPT, N, S = [256, 72, 101, 108, 108, 111], 8, 24


def test_onnxruntime_fp32_and_int8_parity(tmp_path):
    model = embedded_model()
    ref, ref_logits = eager_greedy(model, PROMPT, N)
    fp32 = export_onnx(model, str(tmp_path / "step.onnx"), S)
    got, logits = ort_greedy(fp32, model.config, PROMPT, N, S)
    assert got == ref
    # fp32: same math, other kernels: measured max |diff| ~4e-7 on logits of size ~1.
    assert max(float((a - b).abs().max()) for a, b in zip(logits, ref_logits)) < 1e-4
    int8 = quantize_onnx_int8(fp32, str(tmp_path / "step_int8.onnx"))
    got8, logits8 = ort_greedy(int8, model.config, PROMPT, N, S)
    # int8 weights + dynamic int8 activations: measured 22-24% relative logits error (see
    # export/onnx.py), compared up to the first greedy difference (later contexts differ).
    prefix = next((i for i, (a, b) in enumerate(zip(got8, ref)) if a != b), N)
    assert prefix >= 2, (got8, ref)
    assert max(float((a - b).norm() / b.norm()) for a, b in zip(logits8[:prefix + 1], ref_logits)) < 0.35


def test_binary(tmp_path):
    proc = run_cli("onnx", "--output", str(tmp_path), "--max_new_tokens", "4", "--max_seq_len", "16")
    assert proc.returncode == 0, proc.stderr
    assert "tokens identical" in proc.stdout and (tmp_path / "step_int8.onnx").is_file()
    assert "must fit --max_seq_len" in error_line(run_cli("onnx", "--max_new_tokens", "100"))

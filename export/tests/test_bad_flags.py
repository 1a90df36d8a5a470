"""Export binaries: bad flags are one `error:` line naming the flag, before any export work;
every parity gate fails on a NaN error (gates are written `not err <= tol`)."""

import math

import pytest
import torch

from export import checks
from export.common import ExportError
from export.tests.cli import error_line, run_cli

NAN = float("nan")

# (binary, flags, text the one error line must hold)
BAD_FLAGS = [
    ("aoti", ["--prompt_ids", "1,x,3"], "--prompt_ids must be comma-separated integers >= 0"),
    ("aoti", ["--prompt_ids", "5"], "--prompt_ids needs at least 2 id(s)"),
    ("aoti", ["--max_new_tokens", "0"], "--max_new_tokens must be >= 1, got 0"),
    ("onnx_export", ["--prompt_ids", "1,-2"], "--prompt_ids must be comma-separated integers >= 0"),
    ("onnx_export", ["--prompt_ids", ","], "--prompt_ids needs at least 1 id(s)"),
    ("onnx_export", ["--max_new_tokens", "0"], "--max_new_tokens must be >= 1, got 0"),
    ("onnx_export", ["--max_seq_len", "-1"], "--max_seq_len must be >= 1"),
    ("onnx_export", ["--prompt_ids", "1,99999"], "--prompt_ids must be < vocab_size 258"),
    ("onnx_export", ["--output", "/etc/hostname"], "--output /etc/hostname exists and is not a directory"),
    ("trt_llm", ["--tp_size", "0"], "--tp_size must be >= 1, got 0"),
    ("trt_llm", ["--parity_tokens", "0"], "--parity_tokens must be >= 1, got 0"),
    ("torch_trt", ["--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
]


@pytest.mark.parametrize("binary, args, message", BAD_FLAGS, ids=[f"{b}{a}" for b, a, _ in BAD_FLAGS])
def test_bad_flag_is_one_line(tmp_path, binary, args, message):
    out = [] if "--output" in args or binary == "torch_trt" else ["--output", str(tmp_path / "out")]
    line = error_line(run_cli(binary, *out, *args, timeout=120))
    assert message in line
    assert not (tmp_path / "out").exists()  # refused before any export work


def test_fp32_gate_fails_on_nan():
    checks.check_fp32("x", [1, 2], [1, 2], 0.0)  # the control passes
    with pytest.raises(ExportError, match="nan"):
        checks.check_fp32("x", [1, 2], [1, 2], NAN)
    assert math.isnan(checks.max_abs_diff([torch.tensor([NAN, 0.0])], [torch.zeros(2)]))


def test_int8_gate_fails_on_nan():
    checks.check_int8("x", 0.0, 1.0)
    for rel, top1 in [(NAN, 1.0), (0.0, NAN)]:
        with pytest.raises(ExportError, match="int8 too far"):
            checks.check_int8("x", rel, top1)


def test_trt_llm_checkpoint_gate_fails_on_nan(tmp_path):
    from export.tests.models import trt_model as make_model
    from export.trt_llm_ckpt import validate_checkpoint, write_checkpoint

    model = make_model()
    write_checkpoint(model, str(tmp_path), torch.float32)
    assert validate_checkpoint(str(tmp_path), model, [5, 6, 7])["logits_rel_err"] <= 1e-5  # control
    with torch.no_grad():
        model.model.norm.weight[0] = NAN  # the source's logits (and so the error) become NaN
    with pytest.raises(ExportError, match="differ from the source by nan"):
        validate_checkpoint(str(tmp_path), model, [5, 6, 7])

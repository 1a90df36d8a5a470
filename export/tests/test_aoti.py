"""AOTInductor packages of prefill/decode: greedy tokens identical to eager (fp32, CPU).

One case only: compiling the two packages takes ~45 s on 2 CPU cores (measured).
"""

import torch

from export.aoti_package import AOTIRunner, compile_packages
from export.common import embedded_model
from export.kv_step import eager_greedy
from export.tests.cli import error_line, run_cli


def test_aoti_greedy_identical_to_eager(tmp_path):
    model = embedded_model()
    prompt, n, S = [256, 72, 101, 108, 108, 111], 10, 32
    ref, ref_logits = eager_greedy(model, prompt, n)
    built = compile_packages(model, str(tmp_path), S)
    assert set(built["paths"]) == {"prefill", "decode"}
    got, logits = AOTIRunner(str(tmp_path)).generate(model.config, prompt, n, S)
    assert got == ref
    for a, b in zip(logits, ref_logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_binary_rejects_bad_lengths():
    assert "exceeds --max_seq_len" in error_line(run_cli("aoti", "--max_new_tokens", "100"))

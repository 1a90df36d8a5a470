"""Export the KV-cache decoder step to ONNX, run it in onnxruntime (fp32 and INT8), check vs eager.

    python3 -m export.onnx                      # embedded tiny model
    python3 -m export.onnx --checkpoint DIR --max_seq_len 256

Writes <output>/step.onnx and step_int8.onnx (export/onnx_step.py for the graph's
inputs and outputs). Parity: fp32 ORT greedy tokens identical to eager and per-step
logits within FP32_ATOL; INT8 (quantize_dynamic) logits within INT8_RTOL of eager's
up to the first greedy difference, and at least INT8_MIN_PREFIX leading tokens identical.
"""

from __future__ import annotations

import os
import sys

# Bazel runs this file as a script, which puts export/ first on sys.path; there this
# file would shadow the `onnx` package (onnxruntime.quantization imports it). Drop it.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import time  # noqa: E402

from absl import flags  # noqa: E402

from export import common, failures  # noqa: E402  (first of ours: generate's builder before our flags)

FLAGS = flags.FLAGS
common.define_step_flags("/tmp/lab_onnx", "Directory for step.onnx and step_int8.onnx.")

# fp32 ORT vs eager fp32: same math, different kernels and summation order; measured
# max |diff| 4e-7 on logits of magnitude ~1 (tiny model).
FP32_ATOL = 1e-4
# INT8: per-channel int8 weights (~0.4% of row max) plus per-call int8 activations
# (1/255 of each tensor's range) compound over the layers: measured 22-24% relative
# logits error on the embedded model (its random layers each change the residual by
# O(1); the old 0.02-init model hid this at 2%); 35% still catches a broken graph (>50%).
# Compared while both runs have seen the same tokens: up to the first greedy difference.
INT8_RTOL = 0.35
# Leading greedy tokens that must match eager's (measured: 3 on the embedded model).
INT8_MIN_PREFIX = 2


@failures.capture("export.onnx", dtype="float32", quant="none+int8")
def main(argv) -> int:
    from export.kv_step import eager_greedy
    from export.onnx_step import export_onnx, file_mb, ort_greedy, quantize_onnx_int8

    prompt = [int(t) for t in FLAGS.prompt_ids.split(",") if t.strip()]
    if not prompt or len(prompt) + FLAGS.max_new_tokens > FLAGS.max_seq_len:
        raise common.ExportError(f"prompt ({len(prompt)} ids) + --max_new_tokens "
                                 f"({FLAGS.max_new_tokens}) must fit --max_seq_len {FLAGS.max_seq_len}")
    model = common.load_source_model(FLAGS.checkpoint)
    if max(prompt) >= model.config.vocab_size:
        raise common.ExportError(f"prompt ids must be < vocab_size {model.config.vocab_size}")
    os.makedirs(FLAGS.output, exist_ok=True)
    ref, ref_logits = eager_greedy(model, prompt, FLAGS.max_new_tokens)
    fp32 = os.path.join(FLAGS.output, "step.onnx")
    int8 = os.path.join(FLAGS.output, "step_int8.onnx")
    t0 = time.perf_counter()
    export_onnx(model, fp32, FLAGS.max_seq_len)
    export_s = time.perf_counter() - t0
    quantize_onnx_int8(fp32, int8)
    args = (model.config, prompt, FLAGS.max_new_tokens, FLAGS.max_seq_len)
    t0 = time.perf_counter()
    got, got_logits = ort_greedy(fp32, *args)
    tps = FLAGS.max_new_tokens / (time.perf_counter() - t0)
    got8, logits8 = ort_greedy(int8, *args)
    err = max(float((a - b).abs().max()) for a, b in zip(got_logits, ref_logits))
    prefix8 = next((i for i, (a, b) in enumerate(zip(got8, ref)) if a != b), len(ref))
    rel8 = max(float((a - b).norm() / b.norm()) for a, b in zip(logits8[:prefix8 + 1], ref_logits))
    print(f"exported in {export_s:.1f} s: {fp32} ({file_mb(fp32):.2f} MB), {int8} ({file_mb(int8):.2f} MB)")
    print(f"fp32: max |logits - eager| {err:.2e} (tol {FP32_ATOL:.0e}), tokens "
          f"{'identical' if got == ref else 'DIFFER'}, {tps:.1f} tokens/s (onnxruntime CPU)")
    print(f"int8: max rel logits err {rel8:.2e} (tol {INT8_RTOL}), first {prefix8} of {len(ref)} greedy "
          f"tokens identical (min {INT8_MIN_PREFIX})")
    if got != ref or err > FP32_ATOL:
        raise common.ExportError(f"onnxruntime fp32 differs from eager: tokens {got} vs {ref}, "
                                 f"max |diff| {err:.2e}")
    if rel8 > INT8_RTOL or prefix8 < min(INT8_MIN_PREFIX, len(ref)):
        raise common.ExportError(f"onnxruntime int8 too far from eager: rel err {rel8:.2e}, "
                                 f"first {prefix8} tokens identical")
    return 0


if __name__ == "__main__":
    common.run_main(main)

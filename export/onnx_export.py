"""Export the KV-cache decoder step to ONNX, run it in onnxruntime (fp32 and INT8), check vs eager.

    python3 -m export.onnx_export                      # embedded tiny model
    python3 -m export.onnx_export --checkpoint DIR --max_seq_len 256
    tools/bazel run //export:onnx                      # the same binary under Bazel

Writes <output>/step.onnx and step_int8.onnx (export/onnx_step.py for the graph's
inputs and outputs). Parity (export/checks.py, tolerances and their measurements there):
fp32 ORT greedy tokens identical to eager and per-step logits within FP32_ATOL; INT8
(quantize_dynamic) teacher-forced logits within INT8_MAX_REL of eager's and top-1
agreement >= INT8_MIN_TOP1. (Named onnx_export, not onnx: a script named onnx.py would
hide the `onnx` package that onnxruntime.quantization imports.)
"""

from __future__ import annotations

import os
import time

from absl import flags

from export import checks, common, failures  # first of ours: generate's builder before our flags

FLAGS = flags.FLAGS
common.define_step_flags("/tmp/lab_onnx", "Directory for step.onnx and step_int8.onnx.")


@failures.capture("export.onnx_export", dtype="float32", quant="none+int8")
def main(argv) -> int:
    """Export, run both graphs in onnxruntime, print the figures, raise ExportError on a failed gate."""
    from export.kv_step import eager_greedy, eager_step
    from export.onnx_step import export_onnx, file_mb, ort_forced, ort_greedy, quantize_onnx_int8

    prompt = common.step_flags()
    common.prepare_output(FLAGS.output, "export.onnx_export", FLAGS.checkpoint, FLAGS.overwrite, create=False)
    model = common.load_source_model(FLAGS.checkpoint)
    common.check_prompt_vocab(prompt, model)
    out = common.prepare_output(FLAGS.output, "export.onnx_export", FLAGS.checkpoint, FLAGS.overwrite)
    ref, ref_logits = eager_greedy(model, prompt, FLAGS.max_new_tokens)
    ref_forced = checks.forced_logits(eager_step(model, FLAGS.max_seq_len), prompt, ref, None, None)
    fp32 = os.path.join(out, "step.onnx")
    int8 = os.path.join(out, "step_int8.onnx")
    t0 = time.perf_counter()
    export_onnx(model, fp32, FLAGS.max_seq_len)
    export_s = time.perf_counter() - t0
    quantize_onnx_int8(fp32, int8)
    args = (model.config, prompt, FLAGS.max_new_tokens, FLAGS.max_seq_len)
    t0 = time.perf_counter()
    got, got_logits = ort_greedy(fp32, *args)
    tps = FLAGS.max_new_tokens / (time.perf_counter() - t0)
    err = checks.max_abs_diff(got_logits, ref_logits)
    rel8, top1 = checks.forced_agreement(
        ort_forced(int8, model.config, prompt, ref, FLAGS.max_seq_len), ref_forced)
    print(f"exported in {export_s:.1f} s: {fp32} ({file_mb(fp32):.2f} MB), {int8} ({file_mb(int8):.2f} MB)")
    distinct = checks.distinct_tokens(ref)
    weak = f" (< {checks.MIN_DISTINCT}: agreement is weak evidence)" if distinct < checks.MIN_DISTINCT else ""
    print(f"reference: {distinct} distinct of {len(ref)} greedy tokens{weak}")
    print(f"fp32: max |logits - eager| {err:.2e} (tol {checks.FP32_ATOL:.0e}), tokens "
          f"{'identical' if got == ref else 'DIFFER'}, {tps:.1f} tokens/s (onnxruntime CPU)")
    print(f"int8 (teacher-forced): max rel logits err {rel8:.3f} (tol {checks.INT8_MAX_REL}), top-1 "
          f"agreement {top1:.0%} (min {checks.INT8_MIN_TOP1:.0%})")
    checks.check_fp32("onnxruntime", got, ref, err)
    checks.check_int8("onnxruntime", rel8, top1)
    return 0


if __name__ == "__main__":
    common.run_main(main)

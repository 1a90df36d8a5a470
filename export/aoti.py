"""AOTInductor-compile the prefill and decode steps, generate greedily from them, check vs eager.

    python3 -m export.aoti                       # embedded tiny model, CPU fp32
    python3 -m export.aoti --checkpoint DIR --max_seq_len 256 --max_new_tokens 32

Writes <output>/prefill.pt2 and decode.pt2 (export/aoti_package.py), loads them with
torch._inductor.aoti_load_package, generates greedily and requires the tokens to equal
eager's (our model with its StaticKVCache) exactly and logits within export/checks.py
FP32_ATOL; prints the compile time and the
compiled decode tokens/s.
"""

from __future__ import annotations

import time

from absl import flags

from export import checks, common, failures

FLAGS = flags.FLAGS
common.define_step_flags("/tmp/lab_aoti", "Directory for prefill.pt2/decode.pt2.")


@failures.capture("export.aoti", dtype="float32", quant="none")
def main(argv) -> int:
    from export.aoti_package import AOTIRunner, compile_packages
    from export.kv_step import eager_greedy

    prompt = common.step_flags(min_prompt=2)  # prefill is the T >= 2 program
    common.prepare_output(FLAGS.output, "export.aoti", FLAGS.checkpoint, FLAGS.overwrite, create=False)
    model = common.load_source_model(FLAGS.checkpoint)
    if FLAGS.max_seq_len > model.config.max_seq_len:
        raise common.ExportError(f"--max_seq_len {FLAGS.max_seq_len} exceeds the model context "
                                 f"{model.config.max_seq_len}")
    common.check_prompt_vocab(prompt, model)
    out = common.prepare_output(FLAGS.output, "export.aoti", FLAGS.checkpoint, FLAGS.overwrite)
    ref, ref_logits = eager_greedy(model, prompt, FLAGS.max_new_tokens)
    built = compile_packages(model, out, FLAGS.max_seq_len)
    runner = AOTIRunner(out)
    t0 = time.perf_counter()
    got, got_logits = runner.generate(model.config, prompt, FLAGS.max_new_tokens, FLAGS.max_seq_len)
    gen_s = time.perf_counter() - t0
    err = checks.max_abs_diff(got_logits, ref_logits)
    t = built["times"]
    print(f"export {t['export_s']:.1f} s, compile prefill {t['compile_prefill_s']:.1f} s, decode "
          f"{t['compile_decode_s']:.1f} s -> {out}")
    print(f"aoti greedy {got}; {FLAGS.max_new_tokens / gen_s:.1f} tokens/s; max |logits - eager| "
          f"{err:.2e}")
    checks.check_fp32("AOTI", got, ref, err)
    print(f"parity: {len(got)} greedy tokens identical to eager ({checks.distinct_tokens(ref)} distinct), "
          f"logits within {checks.FP32_ATOL:.0e} (fp32, cpu)")
    return 0


if __name__ == "__main__":
    common.run_main(main)

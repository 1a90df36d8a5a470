"""Write a TensorRT-LLM checkpoint of our Llama, validate it, and (with trtllm-build) check the engine.

    python3 -m export.trt_llm                                  # embedded tiny model, fp16, tp 1
    python3 -m export.trt_llm --checkpoint ~/Llama-3.2-1B --dtype bfloat16 --tp_size 2
    python3 -m export.trt_llm --checkpoint DIR --quant int8 --sm 90   # W8A16 for H100/H200
    python3 -m quant.cli --checkpoint lab-small --method gptq --group_size 128 --output Q
    python3 -m export.trt_llm --checkpoint Q --quant w4a16_gptq       # also w4a16_awq, fp8, w8a8_sq

Always: write config.json + rank{r}.safetensors (names and layouts: export/trt_llm_ckpt.py),
read them back against the schema, de-fuse them into HF tensors and run our model on
those: logits must match the source model within the dtype's rounding (int8: the
quantization error). With `trtllm-build` on PATH (tp_size 1): build an engine and
compare its greedy tokens with ours. Without it: one line saying so, exit 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from absl import flags

from export import checks, common, failures

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "HF-layout checkpoint directory. Default None: the embedded "
                    "tiny model of model/embedded.py, so the binary runs anywhere.")
flags.DEFINE_string("output", "/tmp/lab_trt_llm_ckpt", "Output directory, relative to where you ran the "
                    "command; a non-empty folder this binary did not write is refused (see --overwrite). "
                    "Default under /tmp so a run never writes into the source tree.")
common.define_overwrite_flag()
flags.DEFINE_enum("quant", "none", ["none", "int8", "w4a16_gptq", "w4a16_awq", "fp8", "w8a8_sq"],
                  "none; int8 = W8A16 weight-only per output channel (quantized here); w4a16_gptq, "
                  "w4a16_awq, fp8, w8a8_sq = TensorRT-LLM's W4A16_GPTQ, W4A16_AWQ, FP8, "
                  "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN, written from a --checkpoint that quant/ "
                  "quantized with gptq / awq / fp8 / smoothquant. Default none: exact weights.")
flags.DEFINE_integer("calib_samples", 8, "--quant fp8: calibration windows (train split, tokenizer of "
                     "--checkpoint) for the static activation scales. Default 8.")
flags.DEFINE_enum("dtype", "float16", ["float16", "bfloat16", "float32"], "Weight/activation dtype "
                  "of the engine. Default float16: what TensorRT-LLM's Llama examples use.")
flags.DEFINE_integer("tp_size", 1, "Tensor-parallel ranks (one rank{r}.safetensors each). Default 1.")
flags.DEFINE_integer("sm", 90, "SM version of the GPU that will build the engine, for the W8A16 "
                     "int8 layout (80 A100, 89 L40S, 90 H100/H200, 100 B200). Default 90: our H100s.")
flags.DEFINE_integer("parity_tokens", 16, "Greedy tokens compared against eager. Default 16.")

PROMPT = [1, 15, 27, 4, 99, 7, 42, 3]


def engine_parity(out_dir: str, source, n_tokens: int) -> str:
    """Build with trtllm-build and compare greedy tokens; returns one status line.

    Untested here (no TensorRT-LLM on the CPU box): the GPU run is its test.
    """
    import torch

    from export.kv_step import eager_greedy

    if shutil.which("trtllm-build") is None:
        return "trtllm-build not on PATH: checkpoint written and validated; engine not built"
    if FLAGS.tp_size > 1:
        return "tp_size > 1: build with `trtllm-build` under mpirun; engine parity not run here"
    engine_dir = os.path.join(out_dir, "engine")
    seq = len(PROMPT) + n_tokens
    cmd = ["trtllm-build", "--checkpoint_dir", out_dir, "--output_dir", engine_dir,
           "--max_batch_size", "1", "--max_input_len", str(len(PROMPT)), "--max_seq_len", str(seq)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise common.ExportError(f"trtllm-build failed ({proc.returncode}): "
                                 f"{proc.stderr.strip().splitlines()[-1:]}")
    build_s = time.perf_counter() - t0
    from tensorrt_llm.runtime import ModelRunner

    runner = ModelRunner.from_dir(engine_dir)
    out = runner.generate([torch.tensor(PROMPT, dtype=torch.int32)], max_new_tokens=n_tokens,
                          end_id=source.config.vocab_size, pad_id=0, top_k=1, return_dict=True)
    trt = out["output_ids"][0][0][len(PROMPT):seq].tolist()
    ref, _ = eager_greedy(source, PROMPT, n_tokens)  # the export reference loop (export/kv_step.py)
    agree = sum(a == b for a, b in zip(trt, ref)) / n_tokens
    line = (f"engine built in {build_s:.1f} s; greedy agreement with eager {agree:.0%} ({n_tokens} tokens, "
            f"{checks.distinct_tokens(ref)} distinct in the reference; < {checks.MIN_DISTINCT} is weak evidence)")
    if FLAGS.quant == "none" and trt[:4] != ref[:4]:
        raise common.ExportError(line + f": first tokens differ, trt {trt[:4]} vs eager {ref[:4]}")
    return line


def fp8_calibration(checkpoint: str, n: int):
    """(n, 256) train-split ids (quant.calibrate) for FP8's static activation scales; ExportError without a tokenizer."""
    from model.loader import checkpoint_dir
    from model.tokenizer import load_tokenizer
    from quant.calibrate import calibration_ids

    try:
        tok = load_tokenizer(checkpoint_dir(checkpoint))
    except Exception as e:  # noqa: BLE001 - any failure is the same missing input
        raise common.ExportError(f"--quant fp8 calibrates activation scales on the train split with the "
                                 f"tokenizer of --checkpoint {checkpoint}, which failed: {e}") from None
    return calibration_ids(tok, n_samples=n, seqlen=256)


@failures.capture("export.trt_llm")
def main(argv) -> int:
    from export.trt_llm_ckpt import validate_checkpoint, write_checkpoint

    dtype = common.parse_dtype(FLAGS.dtype)
    for name in ("tp_size", "parity_tokens"):
        if getattr(FLAGS, name) < 1:
            raise common.ExportError(f"--{name} must be >= 1, got {getattr(FLAGS, name)}")
    common.prepare_output(FLAGS.output, "export.trt_llm", FLAGS.checkpoint, FLAGS.overwrite, create=False)
    source = common.load_source_model(FLAGS.checkpoint)  # fp32 reference
    out = common.prepare_output(FLAGS.output, "export.trt_llm", FLAGS.checkpoint, FLAGS.overwrite)
    calib = None
    if FLAGS.quant == "fp8" and getattr(source, "quantization", None):
        calib = fp8_calibration(FLAGS.checkpoint, FLAGS.calib_samples)
    t0 = time.perf_counter()
    cfg = write_checkpoint(source, out, dtype, tp=FLAGS.tp_size, quant=FLAGS.quant,
                           sm=FLAGS.sm, revision=common.git_revision(), calib=calib)
    write_s = time.perf_counter() - t0
    report = validate_checkpoint(out, source, PROMPT)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".safetensors"))
    print(f"wrote {out}: {cfg['mapping']['tp_size']} rank(s), {cfg['dtype']}, quant_algo "
          f"{cfg['quantization']['quant_algo']}, {size / 1e6:.2f} MB in {write_s:.2f} s; "
          f"logits rel err {report['logits_rel_err']:.2e} (tol {report['tolerance']:.0e})")
    print(engine_parity(out, source, FLAGS.parity_tokens))
    return 0


if __name__ == "__main__":
    common.run_main(main)

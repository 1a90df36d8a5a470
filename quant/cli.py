"""Quantize a checkpoint and write a loadable quantized checkpoint.

    tools/bazel run //quant:quantize -- --checkpoint lab-small --method gptq --bits 4 --group_size 128 --output DIR
    python3 -m quant.cli --checkpoint lab-small --method smoothquant --alpha 0.5 --output DIR
    python3 -m quant.cli --method rtn --group_size -1 --sym --act_bits 4 --kv_bits 4 --rotation cayley --output DIR

Calibration windows come from the training split (data.corpus "train"), never WikiText-2 test.
The output is a GPTQ-layout (rtn/gptq weight-only), AWQ-GEMM (awq) or lab-layout checkpoint
(quant/quantize.py) with the tokenizer copied beside it; `model.load(DIR)`, `LLM(DIR)` and
//model:generate read it. Bad flags or paths: one `error:` line, exit 2.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "lab-small", "Model to quantize: lab-small, lab-draft or an HF-layout "
                    "directory (relative to where you ran the command). Default lab-small.")
flags.DEFINE_string("method", "gptq", "rtn, gptq, awq, smoothquant, fp8 or int8_weight_only. Default gptq.")
flags.DEFINE_string("output", None, "Output directory (new, empty, or an earlier output of this tool). Required.")
flags.DEFINE_boolean("overwrite", False, "Empty a non-empty --output this tool did not write. Default off.")
flags.DEFINE_integer("bits", 4, "Weight bits for rtn/gptq (2, 4, 8). Default 4 (W4A16).")
flags.DEFINE_integer("group_size", 128, "Input columns per scale for rtn/gptq/awq; -1 = one per row. Default 128.")
flags.DEFINE_boolean("sym", False, "Symmetric weights (zero point at mid-range). Default off: asymmetric.")
flags.DEFINE_boolean("act_order", False, "GPTQ desc_act: quantize columns by decreasing Hessian diagonal.")
flags.DEFINE_integer("act_bits", None, "rtn/gptq activation bits (8 or 4, per token); default None: weight-only.")
flags.DEFINE_boolean("rotate", False, "rtn/gptq: QuaRot rotations (R1, R2, online Hadamard R4) first.")
flags.DEFINE_enum("rotation", None, ["hadamard", "cayley"], "rtn/gptq rotations: hadamard (QuaRot, as --rotate) "
                  "or cayley (SpinQuant: R1/R2 learned by Cayley SGD on the calibration windows). Default none.")
flags.DEFINE_integer("rotate_steps", 10, "--rotation cayley: Cayley SGD steps (2 windows each). Default 10.")
flags.DEFINE_float("rotate_lr", 1.0, "--rotation cayley: step size (capped at 1/||A|| per step). Default 1.0.")
flags.DEFINE_string("rotate_objective", "auto", "--rotation cayley: what the learned loss rounds: rtn (weights on "
                    "the RTN grid, activations, KV), act (activations and KV only) or auto (act for gptq with "
                    "--act_bits/--kv_bits, SpinQuant's recipe; else rtn). Default auto.")
flags.DEFINE_integer("kv_bits", None, "rtn/gptq: store K/V as an int8 / int4 cache would (8 or 4, per token "
                     "per head); default None: float K/V.")
flags.DEFINE_float("alpha", 0.5, "SmoothQuant migration strength. Default 0.5 (the paper's for Llama-like models).")
flags.DEFINE_boolean("fp8_per_row", False, "fp8: one scale per output row (default: one per tensor).")
flags.DEFINE_string("fp8_act", None, "fp8 activations: per_tensor or per_token (dynamic); default None: weight-only.")
flags.DEFINE_integer("calib_samples", 16, "Calibration windows from the train split. Default 16.")
flags.DEFINE_integer("calib_len", 512, "Tokens per calibration window. Default 512 (the lab models' context).")


def method_options(method: str) -> dict:
    """The flags that apply to `method`, as quant.quantize keyword options."""
    if method in ("rtn", "gptq"):
        o = dict(bits=FLAGS.bits, group_size=FLAGS.group_size, sym=FLAGS.sym, act_bits=FLAGS.act_bits,
                 rotate=FLAGS.rotation or FLAGS.rotate, kv_bits=FLAGS.kv_bits)
        if FLAGS.rotation == "cayley":
            o.update(rotate_steps=FLAGS.rotate_steps, rotate_lr=FLAGS.rotate_lr,
                     rotate_objective=FLAGS.rotate_objective)
        return {**o, "act_order": FLAGS.act_order} if method == "gptq" else o
    if method == "awq":
        return dict(bits=FLAGS.bits, group_size=FLAGS.group_size)
    if method == "smoothquant":
        return dict(alpha=FLAGS.alpha)
    if method == "fp8":
        return dict(per_row=FLAGS.fp8_per_row, act=FLAGS.fp8_act)
    return {}


def main(argv) -> int:
    """The binary: check flags and paths, quantize, save, reload as a check; 0 or 2."""
    del argv
    import model as lab_model
    from model.loader import checkpoint_dir
    from model.output_dir import check_output_dir
    from model.tokenizer import load_tokenizer
    from quant import METHODS, QuantizationError, load_quantized, quantize, save_quantized
    from quant.calibrate import calibration_ids
    from quant.quantize import resolve_options

    try:
        if not FLAGS.output:
            raise ValueError("--output is required (a new or empty directory)")
        if FLAGS.method not in METHODS:
            raise ValueError(f"--method {FLAGS.method!r} is unknown; choose one of {sorted(METHODS)}")
        opts = method_options(FLAGS.method)
        resolve_options(FLAGS.method, opts)
        src = checkpoint_dir(FLAGS.checkpoint)
        if src is None:
            raise ValueError(f"--checkpoint {FLAGS.checkpoint} has random weights; give lab-small, lab-draft or a directory")
        out = check_output_dir(FLAGS.output, writer="model.save_model", overwrite=FLAGS.overwrite,
                               inputs={"--checkpoint": src})
        tokenizer = load_tokenizer(src)
        model = lab_model.load(src, dtype="float32")
    except (OSError, ValueError) as e:  # QuantizationError, CheckpointError, OutputDirError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    calib = None
    if METHODS[FLAGS.method].calibrated or opts.get("rotate") == "cayley":
        calib = calibration_ids(tokenizer, FLAGS.calib_samples, min(FLAGS.calib_len, model.config.max_seq_len))
    t0 = time.perf_counter()
    try:
        quantize(model, FLAGS.method, calib, progress=True, **opts)
    except QuantizationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    q_s = time.perf_counter() - t0
    fmt = save_quantized(model, out, overwrite=FLAGS.overwrite, flag="--output")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(out, name))
    reloaded = load_quantized(out)  # the written checkpoint must load
    n = sum(1 for _ in reloaded.modules())
    print(f"quantized {src} with {FLAGS.method} {opts} in {q_s:.1f} s; wrote {out} ({fmt} layout, {n} modules reload)")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))

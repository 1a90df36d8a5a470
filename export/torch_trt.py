"""Torch-TensorRT: torch.export + torch_tensorrt.dynamo.compile of the decode step, checked vs eager.

    python3 -m export.torch_trt                 # needs a GPU and torch_tensorrt

Without torch_tensorrt (or without CUDA) it prints one line saying so and exits 0.
The compiled graph is export/kv_step.py's KVCacheStep (caches as inputs/outputs, a
static cache length), so no TensorRT-side state is needed between calls.

Known accuracy traps (why `--dtype float16` is not the default and what to watch):
- RMSNorm in fp16: mean(x^2) overflows/underflows in half precision; our RMSNorm
  upcasts to fp32, but TensorRT may fuse and run it in fp16 unless the layer is
  pinned to fp32 (torch_tensorrt's `use_fp32_acc`, or keep the norm out of the
  low-precision set).
- RoPE in fp16: cos/sin of large positions lose digits (position * inv_freq needs
  fp32), and rotate-half in fp16 drifts; our tables are built in fp32 and must stay
  fp32 inputs to the engine.
- Softmax/attention accumulation in fp16 and `enabled_precisions={fp16}` letting
  TensorRT pick fp16 for every layer: compile with fp32 first (the parity check
  below), then lower precision and compare tokens, not bits.
"""

from __future__ import annotations

from absl import flags

from export import checks, common, failures

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "HF-layout checkpoint directory. Default None: the embedded "
                    "tiny model of model/embedded.py.")
flags.DEFINE_enum("dtype", "float32", ["float32", "float16"], "Precision TensorRT may use. "
                  "Default float32: the parity reference (see the accuracy traps above).")
flags.DEFINE_integer("max_seq_len", 64, "KV cache length in tokens (static). Default 64.")
flags.DEFINE_integer("max_new_tokens", 16, "Greedy tokens compared with eager. Default 16.")

PROMPT = [256, 72, 101, 108, 108, 111]
# TensorRT fp32 (TF32 off) vs eager: kernel/summation-order differences. Not measured (no
# GPU with torch_tensorrt has run this yet); 10x export/checks.py's FP32_ATOL, whose
# measurements were CPU kernels; the first GPU run must record the figure here.
FP32_ATOL = 1e-3


@failures.capture("export.torch_trt", quant="none")
def main(argv) -> int:
    if FLAGS.max_new_tokens < 1 or len(PROMPT) + FLAGS.max_new_tokens > FLAGS.max_seq_len:
        raise common.ExportError(f"--max_new_tokens must be >= 1 and prompt ({len(PROMPT)}) + --max_new_tokens "
                                 f"must fit --max_seq_len {FLAGS.max_seq_len}")
    try:
        import torch_tensorrt
    except ImportError:
        print("torch_tensorrt is not installed: nothing compiled (pip install torch-tensorrt on a GPU box)")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("torch_tensorrt needs a CUDA GPU and none is visible: nothing compiled")
        return 0
    from export.kv_step import KVCacheStep, eager_greedy, empty_caches

    n, S = FLAGS.max_new_tokens, FLAGS.max_seq_len
    model = common.load_source_model(FLAGS.checkpoint, device="cuda")
    ref, ref_logits = eager_greedy(model, PROMPT, n)
    model.setup_caches(1, S)
    step = KVCacheStep(model).eval()
    k, v = empty_caches(model, 1, S)
    k, v = k.cuda(), v.cuda()
    args = (torch.zeros(1, 1, dtype=torch.long, device="cuda"), torch.tensor([0], device="cuda"), k, v)
    with torch.no_grad():
        ep = torch.export.export(step, args)  # the decode step (T = 1); prefill feeds tokens one by one
        precisions = {torch.float32} if FLAGS.dtype == "float32" else {torch.float16, torch.float32}
        trt = torch_tensorrt.dynamo.compile(ep, inputs=list(args), enabled_precisions=precisions)
        got, logits = _decode(trt, PROMPT, n, k, v)
    err = checks.max_abs_diff([a.cpu() for a in logits], ref_logits)
    print(f"torch_tensorrt {torch_tensorrt.__version__} {FLAGS.dtype}: tokens "
          f"{'identical' if got == ref else 'differ'} ({checks.distinct_tokens(ref)} distinct in the "
          f"reference), max |logits - eager| {err:.2e}")
    if FLAGS.dtype == "float32" and (got != ref or not err <= FP32_ATOL):
        raise common.ExportError(f"TensorRT fp32 differs from eager: {got} vs {ref}, {err:.2e}")
    return 0


def _decode(trt, prompt, n, k, v):
    """Greedy through the T = 1 engine: the prompt one token at a time, then n new tokens."""
    import torch

    out, logits_out = [], []
    for pos, tok in enumerate(prompt + [None] * (n - 1)):
        tok = tok if tok is not None else out[-1]
        logits, k, v = trt(torch.tensor([[tok]], device="cuda"), torch.tensor([pos], device="cuda"), k, v)
        if pos >= len(prompt) - 1:
            logits_out.append(logits[0, -1].float())
            out.append(int(logits[0, -1].argmax()))
    return out, logits_out


if __name__ == "__main__":
    common.run_main(main)

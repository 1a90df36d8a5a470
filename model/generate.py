"""Generate text from a checkpoint (default: the shipped lab-small model) and print tokens/s.

    python3 -m model.generate --prompt "ROMEO:" --max_new_tokens 64
    python3 -m model.generate --checkpoint /path/to/Llama-3.2-1B --device cuda --json

Without --checkpoint it runs `lab-small` (models/lab-small: 12.6M parameters trained
on Tiny Shakespeare + WikiText-2, see its MODEL_CARD.md) in seconds on a laptop CPU.
`--checkpoint lab-draft` names the shipped draft model; `--checkpoint embedded` the tiny
random byte-level model the tests use (its text is noise, its numbers are real).
"""

from __future__ import annotations

import json
import re
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "lab-small", "HF-layout directory (config.json + safetensors), or a "
                    "shipped model: lab-small (default), lab-draft, or embedded (tiny random, byte vocab).")
flags.DEFINE_string("prompt", "ROMEO:", "Prompt text (ignored when --prompt_ids is given).")
flags.DEFINE_string("prompt_ids", None, "Comma-separated token ids, e.g. 1,2,3; bypasses the tokenizer.")
flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate. Default 64: a few lines, a steady tokens/s.")
flags.DEFINE_float("temperature", 0.0, "Sampling temperature; default 0 = greedy, reproducible.")
flags.DEFINE_integer("top_k", None, "Keep only the k most likely tokens (default None: all).")
flags.DEFINE_float("top_p", None, "Nucleus sampling mass in (0, 1] (default None: off).")
flags.DEFINE_integer("seed", 0, "Sampling seed (torch.Generator); default 0 for reproducible runs.")
flags.DEFINE_string("device", "auto", "cpu, cuda, cuda:N or auto (cuda when available, else cpu).")
flags.DEFINE_string("dtype", "auto", "float32, bfloat16, float16 or auto (float32 on cpu, bfloat16 on cuda).")
flags.DEFINE_bool("json", False, "Print one JSON object instead of text and a stats line.")

DTYPE_NAMES = ("float32", "bfloat16", "float16")


class UsageError(ValueError):
    """A bad flag value; reported as one line, exit code 2."""


def resolve_device(name: str):
    """Return a torch.device for cpu/cuda/cuda:N/auto, or raise UsageError."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UsageError(f"unknown --device {name!r}; expected cpu, cuda, cuda:N or auto")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name} requested but CUDA is not available; use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(name)


def resolve_dtype(name: str, device):
    """Return a torch dtype for the --dtype flag, or raise UsageError."""
    import torch

    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    if name not in DTYPE_NAMES:
        raise UsageError(f"unknown --dtype {name!r}; expected one of {', '.join(DTYPE_NAMES)} or auto")
    return getattr(torch, name)


def _parse_ids(text: str) -> list[int]:
    """Parse '1,2,3' into [1, 2, 3]."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--prompt_ids must be comma-separated integers, got {text!r}") from None


def run(argv) -> dict:
    """Do the work of main; return the result record (raises on bad input)."""
    from model.embedded import SHIPPED_MODELS, build_embedded_model, shipped_model_dir
    from decoding.generate import generate
    from model.tokenizer import ByteTokenizer, has_tokenizer, load_tokenizer
    from model.weights import load_model

    if FLAGS.max_new_tokens < 1:
        raise UsageError(f"--max_new_tokens must be >= 1, got {FLAGS.max_new_tokens}")
    device = resolve_device(FLAGS.device)
    dtype = resolve_dtype(FLAGS.dtype, device)
    checkpoint = FLAGS.checkpoint or "lab-small"
    if checkpoint == "embedded":
        model = build_embedded_model().to(device=device, dtype=dtype)
        tokenizer = ByteTokenizer()
    else:
        if checkpoint in SHIPPED_MODELS:
            checkpoint = str(shipped_model_dir(checkpoint))
        model = load_model(checkpoint, device=device, dtype=dtype)
        tokenizer = load_tokenizer(checkpoint) if has_tokenizer(checkpoint) else (
            ByteTokenizer() if model.config.vocab_size >= ByteTokenizer.vocab_size else None)
    if FLAGS.prompt_ids is not None:
        prompt_ids = _parse_ids(FLAGS.prompt_ids)
    elif tokenizer is None:
        raise UsageError("the checkpoint has no tokenizer.json or tokenizer.model; pass --prompt_ids")
    else:
        prompt_ids = tokenizer.encode(FLAGS.prompt, bos=True)
    vocab = model.config.vocab_size
    if not prompt_ids or min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
        raise UsageError(f"prompt ids must be a non-empty list in [0, {vocab}), got {prompt_ids[:8]}")
    eos = tokenizer.eos_id if tokenizer is not None else None
    result = generate(model, prompt_ids, FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                      top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed, eos_id=eos)
    out_ids = result.new_ids[0]
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "checkpoint": FLAGS.checkpoint or "lab-small",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "prompt_ids": prompt_ids,
        "output_ids": out_ids,
        "text": tokenizer.decode(out_ids) if tokenizer is not None else None,
        "n_new_tokens": result.n_new,
        "prefill_s": result.prefill_s,
        "decode_s": result.decode_s,
        "tokens_per_s": result.tokens_per_s,
        # Each decode step reads every weight once: a lower bound on bandwidth used.
        "weight_bandwidth_gb_s": model_bytes * result.tokens_per_s / 1e9,
    }


def main(argv) -> int:
    """Entry point for absl: print the generation and its speed; exit 2 with one line on error."""
    from decoding.generate import ContextLengthError
    from model.config import ConfigError
    from model.weights import CheckpointError

    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; pass flags only", file=sys.stderr)
        return 2
    try:
        rec = run(argv)
    except (UsageError, ConfigError, CheckpointError, ContextLengthError, FileNotFoundError,
            ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if FLAGS.json:
        print(json.dumps(rec))
    else:
        if rec["text"] is None:
            print(rec["output_ids"])
        else:  # the prompt, then its continuation, as a reader expects
            print((FLAGS.prompt if FLAGS.prompt_ids is None else "") + rec["text"])
        print(f"[{rec['checkpoint']} on {rec['device']} {rec['dtype']}] {rec['n_new_tokens']} tokens, "
              f"prefill {rec['prefill_s'] * 1e3:.1f} ms, decode {rec['tokens_per_s']:.1f} tokens/s, "
              f"{rec['weight_bandwidth_gb_s']:.2f} GB/s of weights", file=sys.stderr)
    return 0


if __name__ == "__main__":
    app.run(main)

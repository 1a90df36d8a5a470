"""Train a small Llama (model/) on the lab corpus (data/) and write an HF checkpoint + model card.

    python3 -m train.train --preset lab-small --device cuda --amp --compile --out_dir runs/lab-small
    python3 -m train.train --preset micro --max_steps 20 --batch_size 4 --seq_len 64   # CPU smoke run

Batches are random windows of seq_len + 1 tokens of the train stream (data.corpus),
drawn from a generator seeded by (seed, step, micro-batch): a resumed run sees
exactly the batches the uninterrupted run would have. AdamW (decay on matrices
only), linear warmup then cosine decay to lr * min_lr_ratio, gradient clipping.
Every optimization is a flag: --amp (bf16 autocast), --compile (torch.compile of
the forward + loss), --checkpoint_activations, --grad_accum.

Output folder (--out_dir):
  last/  HF model directory + optimizer.safetensors + trainer_state.json (resume point)
  best/  HF model directory with the lowest held-out loss seen (--keep_best)
  MODEL_CARD.md (also copied into last/ and best/)
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags

from train.loop import TrainConfig, TrainingError, train

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "lab-small", "Model shape: lab-small (~12.6M params), lab-draft (~1.4M), "
                    "micro (CPU tests). Default lab-small: the model the evals use.")
flags.DEFINE_integer("dim", None, "Override the preset's hidden size (default None: the preset's).")
flags.DEFINE_integer("n_layers", None, "Override the preset's layer count (default None: the preset's).")
flags.DEFINE_integer("n_heads", None, "Override the preset's query heads (default None: the preset's).")
flags.DEFINE_integer("n_kv_heads", None, "Override the preset's KV heads (default None: the preset's).")
flags.DEFINE_integer("intermediate_size", None, "Override the SwiGLU width (default None: the preset's).")
flags.DEFINE_string("tokenizer_dir", None, "Folder with tokenizer.json (relative to where you ran the "
                    "command). Default None: data/tokenizer of the repo, shared by every lab model.")
flags.DEFINE_string("out_dir", None, "Output folder (relative to where you ran the command). Default None: "
                    "runs/<preset> in the repo. A non-empty folder this binary did not create is refused.")
flags.DEFINE_bool("overwrite", False, "Empty a non-empty --out_dir (someone else's folder, or a resumable "
                  "run) and start afresh there. Default off: refuse, so no file is lost.")
flags.DEFINE_integer("seq_len", 512, "Tokens per training window, also the model's max_seq_len. "
                     "Default 512: ~1,900 chars, several Shakespeare speeches per window.")
flags.DEFINE_integer("batch_size", 32, "Windows per micro-batch. Default 32: 16K tokens per step at seq_len 512.")
flags.DEFINE_integer("grad_accum", 1, "Micro-batches per optimizer step (default 1: no accumulation).")
flags.DEFINE_integer("max_steps", 2000, "Optimizer steps; the cosine schedule ends here. Default 2000.")
flags.DEFINE_integer("stop_at_step", 0, "Stop (saving last/) at this step without changing the "
                     "schedule, to split a run across sessions; default 0 = run to --max_steps.")
flags.DEFINE_float("max_minutes", 0.0, "Stop early (saving, writing the card) after this many minutes "
                   "of training; default 0 = no time limit.")
flags.DEFINE_float("lr", 1e-3, "Peak learning rate. Default 1e-3: usual for ~10M-parameter models.")
flags.DEFINE_float("min_lr_ratio", 0.1, "Final lr = lr * this (default 0.1, as in Chinchilla).")
flags.DEFINE_integer("warmup_steps", 100, "Linear warmup steps (default 100).")
flags.DEFINE_float("weight_decay", 0.1, "AdamW decay on 2-D weights only (default 0.1).")
flags.DEFINE_float("beta2", 0.95, "AdamW beta2 (default 0.95: steadier than 0.999 at small batch).")
flags.DEFINE_float("grad_clip", 1.0, "Clip the global gradient L2 norm to this; 0 = off (default 1.0).")
flags.DEFINE_bool("amp", False, "bf16 autocast for forward/backward, fp32 master weights "
                  "(default off so CPU runs are exact; use on GPU).")
flags.DEFINE_bool("compile", False, "torch.compile the forward + loss (default off: compile time "
                  "dominates short runs; its first step is timed separately).")
flags.DEFINE_bool("checkpoint_activations", False, "Recompute each block in backward instead of "
                  "storing its activations (default off: these models fit easily).")
flags.DEFINE_integer("eval_every", 200, "Held-out eval every this many steps, and at the end (default 200).")
flags.DEFINE_integer("eval_tokens", 0, "Held-out tokens per eval, 0 = the whole held-out split "
                     "(default 0; ~71K tokens).")
flags.DEFINE_integer("save_every", 500, "Save last/ every this many steps, and at the end (default 500).")
flags.DEFINE_bool("keep_best", True, "Save best/ whenever the held-out loss improves (default on: "
                  "the corpus is small and long runs overfit).")
flags.DEFINE_float("max_shard_mb", 15, "Largest safetensors file in MiB (default 15: repo files stay < 16 MiB).")
flags.DEFINE_bool("resume", False, "Continue from <out_dir>/last (default off: start fresh).")
flags.DEFINE_integer("seed", 0, "Seed for init and batch sampling (default 0: reproducible).")
flags.DEFINE_string("device", "auto", "cpu, cuda, cuda:N or auto (cuda when available).")
flags.DEFINE_integer("log_every", 10, "Progress-bar loss/tokens-per-s refresh interval in steps (default 10).")
flags.DEFINE_bool("progress", True, "Show the tqdm progress bar (default on; --noprogress for log files).")
flags.DEFINE_integer("inject_nan_step", -1, "Testing: make the loss NaN at this step to exercise "
                     "the NaN/inf stop (default -1: never).")


def config_from_flags() -> TrainConfig:
    """TrainConfig of the flags; paths the user typed made absolute against where the command ran."""
    from model.loader import user_path

    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(TrainConfig) if f.name in FLAGS}
    # Unset: TrainConfig's repo-relative defaults (loop.repo_path); typed: the user's folder.
    values["out_dir"] = (user_path(values["out_dir"]) if values.get("out_dir")
                         else os.path.join("runs", FLAGS.preset))
    if values.get("tokenizer_dir"):
        values["tokenizer_dir"] = user_path(values["tokenizer_dir"])
    else:
        values.pop("tokenizer_dir", None)
    return TrainConfig(**values)


def main(argv):
    del argv
    try:
        summary = train(config_from_flags())
    except (TrainingError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done: {summary['steps']} steps, {summary['tokens_seen']:,} tokens, held-out loss "
          f"{summary['final_heldout_loss']:.4f} (ppl {summary['final_heldout_ppl']:.2f}), "
          f"{summary['train_seconds']:.1f} s on {summary['device']}")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))

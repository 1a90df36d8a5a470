"""Distill a draft model from a target (KL to the target's next-token distribution) and write it with a card.

    python3 -m train.distill --out_dir models/lab-draft-distilled --overwrite   # the shipped one (~12 min CPU)
    python3 -m train.distill --max_steps 5 --eval_tokens 2048 --out_dir /tmp/d  # smoke run

The student starts from --student (default the shipped lab-draft, trained on the corpus alone) and
learns KL(p_teacher || p_student) at every position of random train-split windows (train.loop's
batches, warmup + cosine schedule and AdamW with decay on matrices), so its greedy proposals agree
with the teacher's argmax more often: that agreement is a draft's acceptance. The teacher is frozen.
Held-out: top-1 agreement with the teacher's argmax and the student's own loss, before and after.
"""

from __future__ import annotations

import os
import shutil
import sys

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The binary's flags (defined only when run as the binary: the library imports without them)."""
    flags.DEFINE_string("teacher", "lab-small", "Target model to distill (frozen); default lab-small.")
    flags.DEFINE_string("student", "lab-draft", "Starting weights of the draft (same tokenizer); default lab-draft.")
    flags.DEFINE_integer("seq_len", 256, "Tokens per training window (default 256).")
    flags.DEFINE_integer("batch_size", 4, "Windows per step (default 4: 1,024 tokens a step).")
    flags.DEFINE_integer("max_steps", 400, "Optimizer steps; the cosine schedule ends here (default 400).")
    flags.DEFINE_integer("stop_at_step", 0, "Stop at this step without changing the schedule (default 0 = run to "
                         "--max_steps): the card's command repeats a run --max_minutes cut short, step for step.")
    flags.DEFINE_float("max_minutes", 12.0, "Stop early after this many minutes (default 12: the shared CPU budget); "
                       "0 = no limit. The card records the steps actually run.")
    flags.DEFINE_float("lr", 5e-4, "Peak learning rate (default 5e-4: fine-tuning an already trained draft).")
    flags.DEFINE_integer("warmup_steps", 20, "Linear warmup steps (default 20).")
    flags.DEFINE_integer("eval_tokens", 16384, "Held-out tokens scored before and after (default 16384).")
    flags.DEFINE_string("out_dir", None, "Output folder (relative to where you ran the command). Required. A "
                        "non-empty folder this binary did not create is refused.")
    flags.DEFINE_bool("overwrite", False, "Empty a non-empty --out_dir first (default off: refuse).")
    flags.DEFINE_integer("seed", 0, "Seed of the batch sampling (default 0: reproducible).")
    flags.DEFINE_string("device", "auto", "cpu, cuda, cuda:N or auto (cuda when available).")

OPTION_NAMES = ("teacher", "student", "seq_len", "batch_size", "max_steps", "max_minutes", "stop_at_step", "lr",
                "warmup_steps", "eval_tokens", "out_dir", "overwrite", "seed", "device")


def distill_loss(student_logits, teacher_logits):
    """Mean over positions of KL(p_teacher || p_student), in fp32."""
    import torch.nn.functional as F

    V = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, V), -1)
    t = F.log_softmax(teacher_logits.float().reshape(-1, V), -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def evaluate(student, teacher, stream, seq_len: int, max_tokens: int, device) -> dict:
    """Held-out: student's top-1 agreement with the teacher's argmax, its loss and KL to the teacher."""
    import torch
    import torch.nn.functional as F

    n_windows = max(1, min((len(stream) - 1) // seq_len, max_tokens // seq_len))
    agree = n = 0
    loss = kl = 0.0
    with torch.no_grad():
        for j in range(n_windows):
            row = stream[j * seq_len:j * seq_len + seq_len + 1].to(device=device, dtype=torch.long)
            x, y = row[None, :-1], row[1:]
            s, t = student(x)[0].float(), teacher(x)[0].float()
            agree += int((s.argmax(-1) == t.argmax(-1)).sum())
            n += len(y)
            loss += float(F.cross_entropy(s, y, reduction="sum"))
            kl += float(distill_loss(s, t)) * len(y)
    return {"tokens": n, "top1_agreement_with_teacher": agree / n, "heldout_loss": loss / n, "kl_to_teacher": kl / n}


def distill(opts: dict) -> dict:
    """Train per opts (the flags as a dict); write the student (HF layout), card and summary into out_dir."""
    import torch

    import model as lab_model
    from model.loader import checkpoint_dir
    from model.output_dir import MARKER, prepare_output_dir
    from model.tokenizer import load_tokenizer
    from model.weights import save_model
    from train.bpe import copy_tokenizer
    from train.loop import (TrainConfig, _streams, fit_steps, make_optimizer, resolve_device, run_record,
                            write_summary_and_card)

    os.environ["LAB_KERNEL_BACKEND"] = "torch"  # the fused inference kernels have no backward
    device = resolve_device(opts["device"])
    out_dir = prepare_output_dir(opts["out_dir"], writer="train.distill", flag="--out_dir",
                                 overwrite=opts["overwrite"])
    teacher = lab_model.load(opts["teacher"], dtype=torch.float32, device=device).requires_grad_(False)
    student = lab_model.load(opts["student"], dtype=torch.float32, device=device)
    if student.config.vocab_size != teacher.config.vocab_size:
        raise ValueError(f"--student {opts['student']} has {student.config.vocab_size} ids, --teacher "
                         f"{teacher.config.vocab_size}; they must share a tokenizer")
    tok_dir = checkpoint_dir(opts["student"])
    train_ids, heldout_ids = _streams(load_tokenizer(tok_dir).path)
    cfg = TrainConfig(seq_len=opts["seq_len"], batch_size=opts["batch_size"], max_steps=opts["max_steps"],
                      lr=opts["lr"], warmup_steps=opts["warmup_steps"], seed=opts["seed"])
    before = evaluate(student, teacher, heldout_ids, cfg.seq_len, opts["eval_tokens"], device)
    student.train().requires_grad_(True)
    optimizer = make_optimizer(student, cfg)

    def loss_fn(x):
        with torch.no_grad():
            t_logits = teacher(x)
        return distill_loss(student(x), t_logits)

    step, losses, train_s = fit_steps(student.parameters(), optimizer, cfg, train_ids, device, loss_fn, opts,
                                      what="distillation loss")
    student.eval()
    after = evaluate(student, teacher, heldout_ids, cfg.seq_len, opts["eval_tokens"], device)
    tmp = os.path.join(out_dir, ".saving")  # save_model marks its own folder: write there, move the files up
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(student, tmp)
    copy_tokenizer(tok_dir, tmp, student.config.max_seq_len)
    for name in os.listdir(tmp):
        if name != MARKER:
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    shutil.rmtree(tmp)
    summary = run_record(step, cfg, train_s, device, opts, teacher=opts["teacher"], student_init=opts["student"],
                         params=sum(p.numel() for p in student.parameters()), heldout_before=before,
                         heldout_after=after)
    write_summary_and_card(out_dir, summary, card_text(summary, out_dir))
    return summary


def card_text(s: dict, out_dir: str) -> str:
    """MODEL_CARD.md: how the draft was distilled and its held-out agreement with the teacher."""
    from data import corpus

    b, a, f = s["heldout_before"], s["heldout_after"], s["flags"]
    from train.loop import repo_relative, reproducible_flags

    f = reproducible_flags(f, s["steps"])
    cmd = "python3 -m train.distill " + " ".join(f"--{k}={repo_relative(v) if k == 'out_dir' else v}"
                                                 for k, v in f.items() if k != "overwrite")
    text = f"""# Model card: {os.path.basename(out_dir.rstrip('/'))} ({s['params']:,} parameters)

A speculative-decoding draft for `{s['teacher']}`: `{s['student_init']}`'s shape and weights, then
distilled from `{s['teacher']}` (KL(p_teacher || p_student) at every position) by
`python3 -m train.distill`. Research artefact of the lab; not for any real use.

## Training
- teacher: `{s['teacher']}`, frozen; student initialised from `{s['student_init']}`
- data: random windows of {f['seq_len']} tokens of the train split of the lab corpus ({corpus.describe()});
  never WikiText-2 test
- steps: {s['steps']} of {f['max_steps']} (stopped by --max_minutes or --stop_at_step when fewer; the command
  below repeats it step for step), {s['tokens_seen']:,} tokens,
  {s['train_seconds']:.0f} s on {s['device']} ({s['threads']} threads, shared machine), torch {s['torch']}, {s['date']}
- command: `{cmd}` (also `tools/bazel run //train:distill -- ...`)

## Held-out ({a['tokens']:,} tokens of the held-out split, windows of {f['seq_len']})

| | top-1 agreement with the teacher's argmax | loss vs corpus | KL to teacher |
| --- | --- | --- | --- |
| `{s['student_init']}` (before) | {b['top1_agreement_with_teacher']:.3f} | {b['heldout_loss']:.3f} | \
{b['kl_to_teacher']:.3f} |
| distilled (this model) | {a['top1_agreement_with_teacher']:.3f} | {a['heldout_loss']:.3f} | {a['kl_to_teacher']:.3f} |

Agreement with the teacher's argmax given the true prefix is what greedy speculative acceptance
needs; the measured acceptance on Spec-Bench is in the README's speculative section.
Files: HF layout (config.json, model.safetensors fp32, tokenizer), train_summary.json.
"""
    return text


def main(argv):
    del argv
    if not FLAGS.out_dir:
        print("error: --out_dir is required (e.g. --out_dir models/lab-draft-distilled)", file=sys.stderr)
        return 1
    from model.loader import CheckpointError, user_path
    from model.output_dir import OutputDirError

    opts = {k: FLAGS[k].value for k in OPTION_NAMES}
    opts["out_dir"] = user_path(opts["out_dir"])
    try:
        s = distill(opts)
    except (OutputDirError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    before, after = s["heldout_before"], s["heldout_after"]
    print(f"done: {s['steps']} steps in {s['train_seconds']:.0f} s; held-out top-1 agreement with the teacher "
          f"{before['top1_agreement_with_teacher']:.3f} -> {after['top1_agreement_with_teacher']:.3f}")
    return 0


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))

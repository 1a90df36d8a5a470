"""Train Medusa-style heads (decoding/heads.py) on a frozen lab model and write them with a card.

    python3 -m train.heads --out_dir models/lab-small-medusa --overwrite     # the shipped heads (~12 min CPU)
    python3 -m train.heads --max_steps 5 --eval_tokens 2048 --out_dir /tmp/h # smoke run

Batches are train.loop's: random windows of the train split (data.corpus), seeded by (seed, step), with
train.loop's warmup + cosine schedule. The base runs without gradients; its lm_head input h_t (after
the final norm) feeds the heads. Head i at position t learns the base's own next-token distribution
at position t + i + 1 (self-distillation, as Medusa-2 trains its heads: KL(p_base || p_head), because
a proposal is accepted when it equals the base's argmax, not the corpus token), weighted 0.8^i as in
Medusa. Held-out: per-head top-1 agreement with the base's argmax there (the acceptance a chain of
correct earlier tokens would see) and top-1 accuracy against the corpus token, on the held-out split.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The binary's flags (defined only when run as the binary: the library imports without them)."""
    flags.DEFINE_string("checkpoint", "lab-small", "Base model (frozen): a shipped name or an HF folder. "
                        "Default lab-small.")
    flags.DEFINE_integer("num_heads", 4, "Heads K: proposals per verify up to K (default 4: Medusa's usual 4-5).")
    flags.DEFINE_integer("seq_len", 128, "Tokens per training window (default 128: short, so CPU steps are fast).")
    flags.DEFINE_integer("batch_size", 8, "Windows per step (default 8: 1,024 tokens a step at seq_len 128).")
    flags.DEFINE_integer("max_steps", 300, "Optimizer steps; the cosine schedule ends here (default 300).")
    flags.DEFINE_integer("stop_at_step", 0, "Stop at this step without changing the schedule (default 0 = run to "
                         "--max_steps): the card's command repeats a run --max_minutes cut short, step for step.")
    flags.DEFINE_float("max_minutes", 12.0, "Stop early after this many minutes of training (default 12: the "
                       "shared 2-core CPU budget); 0 = no limit. The card records the steps actually run.")
    flags.DEFINE_float("lr", 3e-3, "Peak learning rate (default 3e-3: only the small heads learn).")
    flags.DEFINE_integer("warmup_steps", 20, "Linear warmup steps (default 20).")
    flags.DEFINE_float("weight_decay", 0.0, "AdamW weight decay (default 0: the heads start at zero).")
    flags.DEFINE_integer("eval_tokens", 16384, "Held-out tokens scored at the end (default 16384).")
    flags.DEFINE_string("out_dir", None, "Output folder (relative to where you ran the command). Required. A "
                        "non-empty folder this binary did not create is refused.")
    flags.DEFINE_bool("overwrite", False, "Empty a non-empty --out_dir first (default off: refuse).")
    flags.DEFINE_integer("seed", 0, "Seed of the batch sampling (default 0: reproducible).")
    flags.DEFINE_string("device", "auto", "cpu, cuda, cuda:N or auto (cuda when available).")


def _hidden_and_logits(model, x):
    """(h (B, T, dim), logits (B, T, V)) of the frozen base: h is lm_head's input."""
    import torch

    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return seen[0].detach(), logits.float()


def head_loss(heads, model, h, base_logits, decay: float = 0.8):
    """Sum over heads i of decay^i * KL(p_base(t + i + 1) || p_head_i(t)), mean over positions."""
    import torch.nn.functional as F

    T = h.shape[1]
    logits = heads.logits(h, model.lm_head).float()  # (B, T, K, V)
    total = 0.0
    for i in range(heads.num_heads):
        n = T - i - 1
        if n <= 0:
            break
        teacher = F.log_softmax(base_logits[:, i + 1:], -1)
        student = F.log_softmax(logits[:, :n, i], -1)
        total = total + decay ** i * F.kl_div(student, teacher, log_target=True, reduction="batchmean") / n
    return total


def evaluate(heads, model, stream, seq_len: int, max_tokens: int, device) -> dict:
    """Per-head top-1 agreement with the base's argmax and accuracy against the corpus, held out."""
    import torch

    K = heads.num_heads
    agree, correct, count = [0] * K, [0] * (K + 1), [0] * (K + 1)
    n_windows = max(1, min((len(stream) - 1) // seq_len, max_tokens // seq_len))
    with torch.no_grad():
        for j in range(n_windows):
            row = stream[j * seq_len:j * seq_len + seq_len + 1].to(device=device, dtype=torch.long)
            x, y = row[None, :-1], row[1:]
            h, base = _hidden_and_logits(model, x)
            best = base[0].argmax(-1)  # (T,)
            pred = heads.logits(h[0], model.lm_head).argmax(-1)  # (T, K)
            correct[0] += int((best == y).sum())
            count[0] += len(y)
            for i in range(K):
                n = seq_len - i - 1
                agree[i] += int((pred[:n, i] == best[i + 1:]).sum())
                correct[i + 1] += int((pred[:n, i] == y[i + 1:]).sum())
                count[i + 1] += n
    return {"windows": n_windows, "tokens": n_windows * seq_len,
            "base_top1_vs_corpus": correct[0] / count[0],
            "head_top1_vs_base_argmax": [agree[i] / count[i + 1] for i in range(K)],
            "head_top1_vs_corpus": [correct[i + 1] / count[i + 1] for i in range(K)]}


def train_heads(opts: dict) -> dict:
    """Train per opts (the flags as a dict); write heads, config, card and summary into out_dir."""
    import torch

    import model as lab_model
    from decoding.heads import MedusaHeads, save_heads
    from model.output_dir import prepare_output_dir
    from model.tokenizer import load_tokenizer
    from model.loader import checkpoint_dir
    from train.loop import TrainConfig, _streams, fit_steps, resolve_device, run_record, write_summary_and_card

    os.environ["LAB_KERNEL_BACKEND"] = "torch"
    device = resolve_device(opts["device"])
    out_dir = prepare_output_dir(opts["out_dir"], writer="train.heads", flag="--out_dir",
                                 overwrite=opts["overwrite"])
    torch.manual_seed(opts["seed"])
    base = lab_model.load(opts["checkpoint"], dtype=torch.float32, device=device).requires_grad_(False)
    tok = load_tokenizer(checkpoint_dir(opts["checkpoint"]))
    train_ids, heldout_ids = _streams(tok.path)
    cfg = TrainConfig(seq_len=opts["seq_len"], batch_size=opts["batch_size"], max_steps=opts["max_steps"],
                      lr=opts["lr"], warmup_steps=opts["warmup_steps"], seed=opts["seed"])
    heads = MedusaHeads(opts["num_heads"], base.config.dim, base.config.vocab_size).to(device)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=opts["weight_decay"])
    before = evaluate(heads, base, heldout_ids, cfg.seq_len, opts["eval_tokens"], device)
    step, losses, train_s = fit_steps(heads.parameters(), optimizer, cfg, train_ids, device,
                                      lambda x: head_loss(heads, base, *_hidden_and_logits(base, x)), opts,
                                      what="head loss")
    after = evaluate(heads, base, heldout_ids, cfg.seq_len, opts["eval_tokens"], device)
    summary = run_record(step, cfg, train_s, device, opts, base_model=opts["checkpoint"], num_heads=heads.num_heads,
                         final_loss_mean_last20=sum(losses[-20:]) / max(1, len(losses[-20:])),
                         heldout_before=before, heldout_after=after)
    save_heads(heads, out_dir, opts["checkpoint"], {"trained_steps": step})
    write_summary_and_card(out_dir, summary, card_text(summary))
    return summary


def card_text(s: dict) -> str:
    """MODEL_CARD.md: how the heads were trained and their held-out accuracy per head."""
    from data import corpus

    a, b = s["heldout_after"], s["heldout_before"]
    rows = "\n".join(f"| {i} | t + {i + 2} | {b['head_top1_vs_base_argmax'][i]:.3f} | "
                     f"{a['head_top1_vs_base_argmax'][i]:.3f} | {a['head_top1_vs_corpus'][i]:.3f} |"
                     for i in range(s["num_heads"]))
    f = s["flags"]
    from train.loop import repo_relative, reproducible_flags

    f = reproducible_flags(f, s["steps"])
    cmd = "python3 -m train.heads " + " ".join(f"--{k}={repo_relative(v) if k == 'out_dir' else v}"
                                               for k, v in f.items() if k != "overwrite")
    text = f"""# Medusa heads for {s['base_model']} ({s['num_heads']} heads)

Speculative-decoding heads (decoding/heads.py; `--speculative heads`): head i maps the base's final
hidden state at position t to the token at t + i + 2 through a residual SiLU block
(h + SiLU(W_i h + b_i), W_i (dim x dim) zero-initialised) and the base's own lm_head (shared, frozen;
Medusa-1's head with the projection shared). Research artefact of the lab; not for any real use.

## Training
- base model: `{s['base_model']}`, frozen (no gradient); only the heads' W_i, b_i learn
- loss: sum over heads of 0.8^i * KL(p_base(t + i + 1) || p_head_i(t)) (self-distillation: a proposal
  is accepted when it equals the base's argmax)
- data: random windows of the train split of the lab corpus ({corpus.describe()}); never WikiText-2 test
- steps: {s['steps']} of {f['max_steps']} (stopped by --max_minutes or --stop_at_step when fewer; the command
  below repeats it step for step), {s['tokens_seen']:,} tokens,
  {s['train_seconds']:.0f} s on {s['device']} ({s['threads']} threads, shared machine), torch {s['torch']}, {s['date']}
- command: `{cmd}` (also `tools/bazel run //train:heads -- ...`)

## Held-out top-1 ({a['tokens']:,} tokens of the held-out split, windows of {f['seq_len']})
Base top-1 accuracy against the corpus: {a['base_top1_vs_corpus']:.3f}.
"agrees with base" = head i's argmax at t equals the base's argmax at t + i + 1 given the true prefix
(what speculative acceptance needs); "vs corpus" = equals the corpus token at t + i + 2.

| head | predicts | agrees with base, untrained (W = 0) | agrees with base, trained | vs corpus, trained |
| --- | --- | --- | --- | --- |
{rows}

Files: heads.safetensors (fp32: weight (K, dim, dim), bias (K, dim)), config.json, train_summary.json.
"""
    return text


def main(argv):
    del argv
    if not FLAGS.out_dir:
        print("error: --out_dir is required (e.g. --out_dir models/lab-small-medusa)", file=sys.stderr)
        return 1
    from model.loader import user_path
    from model.output_dir import OutputDirError

    opts = {k: FLAGS[k].value for k in ("checkpoint", "num_heads", "seq_len", "batch_size", "max_steps",
                                        "max_minutes", "stop_at_step", "lr", "warmup_steps", "weight_decay", "eval_tokens",
                                        "out_dir", "overwrite", "seed", "device")}
    opts["out_dir"] = user_path(opts["out_dir"])
    if opts["num_heads"] < 1 or opts["seq_len"] < opts["num_heads"] + 2:
        print("error: --num_heads >= 1 and --seq_len >= num_heads + 2 required", file=sys.stderr)
        return 1
    try:
        s = train_heads(opts)
    except (OutputDirError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done: {s['steps']} steps in {s['train_seconds']:.0f} s; held-out head top-1 agreement with the "
          f"base: {', '.join(f'{x:.3f}' for x in s['heldout_after']['head_top1_vs_base_argmax'])}")
    return 0


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))

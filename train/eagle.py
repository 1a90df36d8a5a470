"""Train an EAGLE-style draft head (decoding/eagle.py) on a frozen lab model and write it with a card.

    python3 -m train.eagle --out_dir models/lab-small-eagle --overwrite        # the shipped head (~5 min CPU)
    python3 -m train.eagle --max_steps 5 --gen_prompts 8 --eval_prompts 2 --out_dir /tmp/e   # smoke run

Self-distillation (as EAGLE and Medusa-2 train): the base first writes its own continuations of
--gen_prompts windows of the train split (greedy, a --sample_fraction of them sampled at
--temperature; batched, static cache), so the head learns on the text the base itself produces at
decode time. Training batches are train.loop's seeded windows of that stream and its schedule
(train.loop.fit_steps). Per position j the head reads the base's feature h_{j-1} (lm_head's input)
and token t_j and is trained towards h_j: smooth L1 on the feature plus KL(p_base || p_head) on the
tokens (a proposal is accepted when it equals the base's argmax). A second, unrolled pass feeds the
head its own predicted features (EAGLE-3's "training-time test", simplified: every key of that pass
is predicted too), weighted --unroll_weight, so drafting k tokens on its own features stays close.
Held-out: teacher-forced top-1 agreement with the base on the held-out split, and the acceptance per
draft position of real greedy speculative decoding (decoding.speculative, k = --eval_k) on held-out
prompts: position i's rate = P(proposal i accepted | proposals < i accepted).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The binary's flags (defined only when run as the binary: the library imports without them)."""
    flags.DEFINE_string("checkpoint", "lab-small", "Base model (frozen): a shipped name or an HF folder.")
    flags.DEFINE_integer("gen_prompts", 128, "Train-split prompts the base continues (default 128).")
    flags.DEFINE_integer("prompt_len", 64, "Tokens per generation prompt (default 64).")
    flags.DEFINE_integer("gen_tokens", 128, "Tokens the base generates per prompt (default 128).")
    flags.DEFINE_integer("gen_batch", 64, "Prompts generated at once (default 64).")
    flags.DEFINE_float("sample_fraction", 0.25, "Share of the prompts continued by sampling, not greedily "
                       "(default 0.25).")
    flags.DEFINE_float("temperature", 0.7, "Temperature of the sampled continuations (default 0.7).")
    flags.DEFINE_integer("intermediate_size", 0, "The head layer's MLP width (default 0: the target's).")
    flags.DEFINE_integer("seq_len", 128, "Tokens per training window (default 128).")
    flags.DEFINE_integer("batch_size", 8, "Windows per step (default 8).")
    flags.DEFINE_integer("max_steps", 300, "Optimizer steps; the cosine schedule ends here (default 300).")
    flags.DEFINE_integer("stop_at_step", 0, "Stop at this step without changing the schedule (default 0 = run to "
                         "--max_steps): the card's command repeats a run --max_minutes cut short, step for step.")
    flags.DEFINE_float("max_minutes", 5.0, "Stop early after this many minutes of training (default 5); 0 = none.")
    flags.DEFINE_float("lr", 2e-3, "Peak learning rate (default 2e-3).")
    flags.DEFINE_integer("warmup_steps", 20, "Linear warmup steps (default 20).")
    flags.DEFINE_float("reg_weight", 1.0, "Weight of the smooth-L1 feature loss (default 1).")
    flags.DEFINE_float("unroll_weight", 0.5, "Weight of the pass on the head's own features (default 0.5; 0 = off).")
    flags.DEFINE_integer("cls_stride", 4, "The token (KL) loss on every this-many-th position (default 4: the "
                         "vocabulary-wide softmax dominates a CPU step); the feature loss is on all.")
    flags.DEFINE_integer("eval_tokens", 8192, "Held-out tokens for the teacher-forced agreement (default 8192).")
    flags.DEFINE_integer("eval_prompts", 12, "Held-out prompts decoded speculatively for per-position "
                         "acceptance (default 12).")
    flags.DEFINE_integer("eval_k", 5, "Draft length of that evaluation (default 5).")
    flags.DEFINE_string("out_dir", None, "Output folder (relative to where you ran the command). Required. A "
                        "non-empty folder this binary did not create is refused.")
    flags.DEFINE_bool("overwrite", False, "Empty a non-empty --out_dir first (default off: refuse).")
    flags.DEFINE_integer("seed", 0, "Seed of the prompts, sampling and batches (default 0: reproducible).")
    flags.DEFINE_string("device", "auto", "cpu, cuda, cuda:N or auto (cuda when available).")


def self_distill_stream(base, train_ids, opts: dict, device):
    """The base's own continuations of seeded train-split windows, concatenated: (ids (N,) int32, the
    base's features h (N, dim) of each, computed row by row once, so training steps never run the base)."""
    import torch
    from tqdm import tqdm

    from decoding.fast import FastGenerator

    g = torch.Generator().manual_seed(opts["seed"])
    P, L, B = opts["gen_prompts"], opts["prompt_len"], opts["gen_batch"]
    starts = torch.randint(0, len(train_ids) - L - 1, (P,), generator=g).tolist()
    n_sampled = int(round(P * opts["sample_fraction"]))
    gen = FastGenerator(base, B, L + opts["gen_tokens"], cuda_graph=False, fuse=False)
    rows, feats = [], []
    try:
        for i in tqdm(range(0, P, B), desc="base continuations", unit="batch"):
            prompt = torch.stack([train_ids[s:s + L] for s in starts[i:i + B]]).to(device=device, dtype=torch.long)
            sampled = i >= P - n_sampled
            out = gen.generate(prompt, opts["gen_tokens"], temperature=opts["temperature"] if sampled else 0.0,
                               seed=opts["seed"] + i if sampled else None)
            rows.append(out.tokens.cpu())
    finally:
        gen.close()
    for r in rows:
        feats.append(_hidden_and_logits(base, r.to(device), logits=False).reshape(-1, base.config.dim).cpu())
    return torch.cat([r.reshape(-1) for r in rows]).to(torch.int32), torch.cat(feats)


def _hidden_and_logits(model, x, logits: bool = True):
    """The frozen base's lm_head input h (B, T, dim) and, if asked, its logits (B, T, V) in fp32."""
    import torch

    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        handle.remove()
    return (seen[0].detach(), out.float()) if logits else seen[0].detach()


def eagle_loss(head, base, x, h, reg_weight: float = 1.0, unroll_weight: float = 0.5, cls_stride: int = 1):
    """Teacher-forced (true h_{j-1}) and, weighted unroll_weight, unrolled (the head's own predicted
    h_{j-1}) passes over tokens x (B, T) with the base's features h (B, T, dim):
    reg_weight * smoothL1(f_j, h_j) + KL(p_base(j) || p_head(j)), mean over positions. The base's
    logits are lm_head(h): its features are all the teacher needs."""
    import torch
    import torch.nn.functional as F

    T = x.shape[1]
    pos = torch.arange(T - 1, device=x.device)

    def term(f, h_tgt, offset):
        # the vocabulary-wide KL on every cls_stride-th position only: on a CPU the (T, V) projections
        # and softmaxes cost several times the head's own layer; the feature loss covers every position
        f_c = f[:, offset::cls_stride]
        student = F.log_softmax(head.logits(base, f_c).float(), -1).flatten(0, 1)
        with torch.no_grad():
            teacher = F.log_softmax(head.logits(base, h_tgt[:, offset::cls_stride]).float(), -1).flatten(0, 1)
        kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        return kl + reg_weight * F.smooth_l1_loss(f.float(), h_tgt.float())

    f1 = head.features(base, h[:, :-1], x[:, 1:], pos)  # predicts h_1..h_{T-1}
    loss = term(f1, h[:, 1:], 0)
    if unroll_weight > 0:
        f2 = head.features(base, f1[:, :-1], x[:, 2:], pos[:-1])  # h_{j-1} predicted, predicts h_2..h_{T-1}
        loss = loss + unroll_weight * term(f2, h[:, 2:], 1 % cls_stride)
    return loss


def teacher_forced(head, base, stream, seq_len: int, max_tokens: int, device) -> dict:
    """Held-out top-1 agreement of the head (true features in) with the base's argmax, and the base's
    own top-1 accuracy against the corpus."""
    import torch

    agree = count = correct = 0
    n_windows = max(1, min((len(stream) - 1) // seq_len, max_tokens // seq_len))
    with torch.no_grad():
        for j in range(n_windows):
            x = stream[j * seq_len:(j + 1) * seq_len + 1].to(device=device, dtype=torch.long)[None]
            h, logits = _hidden_and_logits(base, x[:, :-1])
            best = logits[0].argmax(-1)
            f = head.features(base, h[:, :-1], x[:, 1:-1], torch.arange(seq_len - 1, device=device))
            agree += int((head.logits(base, f[0]).argmax(-1) == best[1:]).sum())
            count += seq_len - 1
            correct += int((best == x[0, 1:]).sum())
    return {"windows": n_windows, "tokens": n_windows * seq_len, "agree_with_base": agree / count,
            "base_top1_vs_corpus": correct / (n_windows * seq_len)}


def acceptance_by_position(head, base, stream, opts: dict, device) -> dict:
    """Real greedy speculative decoding (method eagle, k = eval_k) of held-out prompts: per draft
    position i, P(accepted | proposals before it accepted); acceptance, tau; outputs == plain greedy."""
    import torch

    from decoding.speculative import SpeculativeConfig, SpeculativeDecoder

    k, n_new, L = opts["eval_k"], 64, opts["prompt_len"]
    head.eval()
    dec = SpeculativeDecoder(base, eagle=head, max_seq_len=L + n_new + k + 2)
    reached, accepted = [0] * k, [0] * k
    tot_acc = tot_prop = cycles = 0
    same = True
    try:
        step = max(1, (len(stream) - L - 1) // max(1, opts["eval_prompts"]))
        for p in range(opts["eval_prompts"]):
            ids = stream[p * step:p * step + L].tolist()
            trace = []
            out = dec.generate(ids, n_new, SpeculativeConfig("eagle", k), trace=trace)
            same &= out.new_ids == dec.plain(ids, n_new).new_ids
            for c in trace:
                for i in range(len(c.proposal)):
                    if i <= c.accepted:
                        reached[i] += 1
                        accepted[i] += int(i < c.accepted)
            tot_acc += out.stats.accepted
            tot_prop += out.stats.proposed
            cycles += out.stats.cycles
    finally:
        dec.close()
    del torch
    return {"prompts": opts["eval_prompts"], "k": k, "new_tokens": n_new, "equals_plain_greedy": bool(same),
            "acceptance_by_position": [a / r if r else float("nan") for a, r in zip(accepted, reached)],
            "acceptance": tot_acc / max(1, tot_prop), "tau": (tot_acc + cycles) / max(1, cycles)}


def train_eagle(opts: dict) -> dict:
    """Train per opts (the flags as a dict); write the head, config, card and summary into out_dir."""
    import torch

    import model as lab_model
    from decoding.eagle import EagleHead, head_config, save_eagle
    from model.loader import checkpoint_dir
    from model.output_dir import prepare_output_dir
    from model.tokenizer import load_tokenizer
    from train.loop import TrainConfig, _streams, fit_steps, resolve_device, run_record, write_summary_and_card

    os.environ["LAB_KERNEL_BACKEND"] = "torch"
    torch.use_deterministic_algorithms(True)
    device = resolve_device(opts["device"])
    out_dir = prepare_output_dir(opts["out_dir"], writer="train.eagle", flag="--out_dir",
                                 overwrite=opts["overwrite"])
    torch.manual_seed(opts["seed"])
    base = lab_model.load(opts["checkpoint"], dtype=torch.float32, device=device).requires_grad_(False)
    tok = load_tokenizer(checkpoint_dir(opts["checkpoint"]))
    train_ids, heldout_ids = _streams(tok.path)
    t0 = time.perf_counter()
    stream, feats = self_distill_stream(base, train_ids, opts, device)
    gen_s = time.perf_counter() - t0
    cfg = TrainConfig(seq_len=opts["seq_len"], batch_size=opts["batch_size"], max_steps=opts["max_steps"],
                      lr=opts["lr"], warmup_steps=opts["warmup_steps"], seed=opts["seed"])
    head = EagleHead(head_config(base.config, opts["intermediate_size"] or None)).to(device).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=0.0)
    # fit_steps draws windows of a stream: here of the indices 0..N-1, which pick tokens and features alike
    index = torch.arange(len(stream), dtype=torch.int64)
    stream_d, feats_d = stream.to(device=device, dtype=torch.long), feats.to(device)
    step, losses, train_s = fit_steps(
        head.parameters(), optimizer, cfg, index, device,
        lambda i: eagle_loss(head, base, stream_d[i], feats_d[i], opts["reg_weight"], opts["unroll_weight"],
                             opts["cls_stride"]),
        opts, what="eagle loss")
    head.eval()
    tf = teacher_forced(head, base, heldout_ids, cfg.seq_len, opts["eval_tokens"], device)
    spec = acceptance_by_position(head, base, heldout_ids, opts, device)
    n_params = sum(p.numel() for p in head.parameters())
    summary = run_record(step, cfg, train_s, device, opts, base_model=opts["checkpoint"], params=n_params,
                         self_distill_tokens=len(stream), generation_seconds=gen_s,
                         final_loss_mean_last20=sum(losses[-20:]) / max(1, len(losses[-20:])),
                         heldout_teacher_forced=tf, heldout_speculative=spec)
    save_eagle(head, out_dir, opts["checkpoint"], {"trained_steps": step})
    write_summary_and_card(out_dir, summary, card_text(summary))
    return summary


def card_text(s: dict) -> str:
    """MODEL_CARD.md: how the head was made, the command, held-out agreement per draft position."""
    from data import corpus
    from train.loop import repo_relative, reproducible_flags

    f = reproducible_flags(s["flags"], s["steps"])
    cmd = "python3 -m train.eagle " + " ".join(f"--{k}={repo_relative(v) if k == 'out_dir' else v}"
                                               for k, v in f.items() if k != "overwrite")
    sp, tf = s["heldout_speculative"], s["heldout_teacher_forced"]
    rows = "\n".join(f"| {i + 1} | {a:.3f} |" for i, a in enumerate(sp["acceptance_by_position"]))
    text = f"""# EAGLE draft head for {s['base_model']}

Speculative-decoding draft head (decoding/eagle.py; `--speculative eagle`): one decoder layer of the
base's shape reads fc(concat(embed(t_j), h_(j-1))) (h = the base's lm_head input, after its final
norm), ends with the base's final norm, and predicts h_j; the base's own lm_head (frozen, shared)
gives the token. {s['params']:,} parameters, stored fp16. Research artefact of the lab; not for any real use.

## How it was made
- base model: `{s['base_model']}`, frozen; its embedding, final norm and lm_head are shared, not stored
- data (self-distillation): the base's own continuations ({f['gen_tokens']} tokens each, greedy; a
  {f['sample_fraction']} share sampled at temperature {f['temperature']}) of {f['gen_prompts']} seeded
  {f['prompt_len']}-token windows of the train split of the lab corpus ({corpus.describe()}):
  {s['self_distill_tokens']:,} tokens, generated in {s['generation_seconds']:.0f} s; never WikiText-2 test
- loss: {f['reg_weight']} * smoothL1(feature) + KL(p_base || p_head) (the KL on every {f['cls_stride']}th position), plus {f['unroll_weight']} x the same on a
  pass that feeds the head its own predicted features
- steps: {s['steps']} of {f['max_steps']} ({s['tokens_seen']:,} tokens; stopped by --max_minutes or --stop_at_step
  when fewer, the command below repeats it step for step), {s['train_seconds']:.0f} s on {s['device']}
  ({s['threads']} threads, shared machine), torch {s['torch']}, {s['date']}, deterministic algorithms
- command: `{cmd}` (also `tools/bazel run //train:eagle -- ...`)

## Held-out agreement
Teacher-forced ({tf['tokens']:,} tokens of the held-out split, the true feature h_(j-1) in): top-1
agreement with the base's argmax {tf['agree_with_base']:.3f} (the base's own top-1 vs the corpus
{tf['base_top1_vs_corpus']:.3f}).

Real greedy speculative decoding (decoding.speculative, method eagle, k = {sp['k']}) of {sp['prompts']}
held-out-split prompts, {sp['new_tokens']} new tokens each: acceptance {sp['acceptance']:.3f}, tau (tokens per
verify) {sp['tau']:.2f}, output equal to plain greedy: {sp['equals_plain_greedy']}. Per draft position,
P(proposal i accepted | the proposals before it accepted):

| draft position | acceptance |
| --- | --- |
{rows}

Files: eagle.safetensors (fc.*, layer.*; fp16), config.json, train_summary.json.
"""
    return text


def main(argv):
    del argv
    if not FLAGS.out_dir:
        print("error: --out_dir is required (e.g. --out_dir models/lab-small-eagle)", file=sys.stderr)
        return 1
    from model.loader import user_path
    from model.output_dir import OutputDirError

    names = ("checkpoint", "gen_prompts", "prompt_len", "gen_tokens", "gen_batch", "sample_fraction", "temperature",
             "intermediate_size", "seq_len", "batch_size", "max_steps", "stop_at_step", "max_minutes", "lr",
             "warmup_steps", "reg_weight", "unroll_weight", "cls_stride", "eval_tokens", "eval_prompts", "eval_k", "out_dir",
             "overwrite", "seed", "device")
    opts = {k: FLAGS[k].value for k in names}
    opts["out_dir"] = user_path(opts["out_dir"])
    if opts["seq_len"] < 3 or opts["gen_prompts"] < 1 or not 0.0 <= opts["sample_fraction"] <= 1.0:
        print("error: --seq_len >= 3, --gen_prompts >= 1 and --sample_fraction in [0, 1] required", file=sys.stderr)
        return 1
    if opts["gen_prompts"] * (opts["prompt_len"] + opts["gen_tokens"]) <= opts["seq_len"] + 1:
        print("error: --gen_prompts x (--prompt_len + --gen_tokens) must exceed --seq_len + 1", file=sys.stderr)
        return 1
    try:
        s = train_eagle(opts)
    except (OutputDirError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sp = s["heldout_speculative"]
    print(f"done: {s['steps']} steps in {s['train_seconds']:.0f} s; held-out acceptance per draft position: "
          f"{', '.join(f'{x:.3f}' for x in sp['acceptance_by_position'])} (tau {sp['tau']:.2f})")
    return 0


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))

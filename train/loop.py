"""The training loop behind python3 -m train.train (flags live there; plain data here).

Batches are random windows of seq_len + 1 tokens of the train stream (data.corpus),
drawn from a generator seeded by (seed, step, micro-batch): a resumed run sees
exactly the batches the uninterrupted run would have. AdamW (decay on matrices
only), linear warmup then cosine decay to lr * min_lr_ratio, gradient clipping,
optional bf16 autocast, torch.compile and activation checkpointing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Optional


class TrainingError(RuntimeError):
    """Training cannot go on; the message is one line naming the step and what to try."""


@dataclass
class TrainConfig:
    """Every knob of a run (the flags, as plain data so tests can build one)."""
    preset: str = "lab-small"
    dim: Optional[int] = None
    n_layers: Optional[int] = None
    n_heads: Optional[int] = None
    n_kv_heads: Optional[int] = None
    intermediate_size: Optional[int] = None
    tokenizer_dir: str = "data/tokenizer"
    out_dir: str = "runs/lab-small"
    seq_len: int = 512
    batch_size: int = 32
    grad_accum: int = 1
    max_steps: int = 2000
    stop_at_step: int = 0
    max_minutes: float = 0.0
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.95
    grad_clip: float = 1.0
    amp: bool = False
    compile: bool = False
    checkpoint_activations: bool = False
    eval_every: int = 200
    eval_tokens: int = 0
    save_every: int = 500
    keep_best: bool = True
    max_shard_mb: float = 15.0
    resume: bool = False
    overwrite: bool = False  # empty a non-empty --out_dir (else refused) before a fresh start
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    inject_nan_step: int = -1
    progress: bool = True  # tqdm bar (tests turn it off)


def repo_path(path: str) -> str:
    """Absolute path: relative ones are taken from the repository root under `bazel run`.

    For TrainConfig's defaults (the repo's tokenizer, runs/); paths the user typed go through
    model.loader.user_path at the flag boundary (train/train.py), so they arrive absolute.
    """
    if os.path.isabs(path):
        return path
    return os.path.join(os.environ.get("BUILD_WORKSPACE_DIRECTORY", os.getcwd()), path)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def init_weights(model, seed: int) -> None:
    """GPT-2 style init: normal(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layers), norms 1."""
    import torch

    torch.manual_seed(seed)
    residual_std = 0.02 / math.sqrt(2 * model.config.n_layers)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            torch.nn.init.ones_(p)
        elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
            torch.nn.init.normal_(p, mean=0.0, std=residual_std)
        else:
            torch.nn.init.normal_(p, mean=0.0, std=0.02)


def make_optimizer(model, cfg: TrainConfig):
    """AdamW with weight decay on matrices only (not norms); fused on CUDA."""
    import torch

    decay = [p for _, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), eps=1e-8, fused=fused)


def enable_activation_checkpointing(model) -> None:
    """Recompute every block's forward during backward (torch.utils.checkpoint, non-reentrant).

    The block's own forward is wrapped on the instance, so module names and
    state-dict keys stay the HF ones (a wrapper module would add a prefix).
    """
    from torch.utils.checkpoint import checkpoint

    for block in model.model.layers:
        inner = block.forward

        def forward(*args, _inner=inner):
            return checkpoint(_inner, *args, use_reentrant=False)

        block.forward = forward


def get_batch(stream, step: int, micro: int, cfg: TrainConfig, device):
    """(x, y) of shape (batch_size, seq_len): random windows, seeded by (seed, step, micro)."""
    import torch

    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1_009 + micro)
    starts = torch.randint(0, len(stream) - cfg.seq_len - 1, (cfg.batch_size,), generator=g)
    rows = torch.stack([stream[s:s + cfg.seq_len + 1] for s in starts.tolist()])  # (B, T + 1)
    rows = rows.to(device=device, dtype=torch.long, non_blocking=True)
    return rows[:, :-1], rows[:, 1:]


def loss_of(model, x, y):
    """Mean next-token cross-entropy over (B, T), computed in fp32."""
    import torch.nn.functional as F

    logits = model(x)  # (B, T, vocab)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def evaluate(model, stream, seq_len: int, max_tokens: int, device, amp: bool, batch_size: int) -> float:
    """Mean held-out loss over non-overlapping windows of seq_len + 1 tokens (seq_len scored each)."""
    import torch

    n_windows = (len(stream) - 1) // seq_len
    if max_tokens:
        n_windows = min(n_windows, max(1, max_tokens // seq_len))
    if n_windows == 0:
        raise TrainingError(f"held-out split has {len(stream)} tokens, fewer than one window of {seq_len + 1}")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for i in range(0, n_windows, batch_size):
            idx = range(i, min(i + batch_size, n_windows))
            rows = torch.stack([stream[j * seq_len:j * seq_len + seq_len + 1] for j in idx])
            rows = rows.to(device=device, dtype=torch.long)
            loss = loss_of(model, rows[:, :-1], rows[:, 1:])
            total += float(loss) * len(idx)
            count += len(idx)
    model.train(was_training)
    return total / count


def resolve_device(name: str):
    """torch.device for cpu/cuda/cuda:N/auto (model.device.resolve_device), or a TrainingError line."""
    from model.device import UsageError, resolve_device as resolve

    try:
        return resolve(name)
    except UsageError as e:
        raise TrainingError(str(e)) from None


def device_label(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@functools.lru_cache(maxsize=4)
def _streams(tokenizer_json: str):
    """(train ids, held-out ids) as int32 tensors; cached: encoding the corpus takes ~1 s."""
    import torch

    from data import corpus
    from model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_json)
    return (torch.tensor(corpus.token_stream(tokenizer, "train"), dtype=torch.int32),
            torch.tensor(corpus.token_stream(tokenizer, "heldout"), dtype=torch.int32))


def train(cfg: TrainConfig) -> dict:
    """Run training per cfg; return the summary (also written to MODEL_CARD.md and last/)."""
    import torch
    from tqdm import tqdm

    from model.llama import Transformer
    from model.tokenizer import load_tokenizer
    from train import checkpoint, presets
    from train.bpe import copy_tokenizer

    # kernels.ops' CUDA/Triton RMSNorm and SiLU have no backward; the PyTorch reference does.
    os.environ["LAB_KERNEL_BACKEND"] = "torch"
    device = resolve_device(cfg.device)
    if cfg.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError("--amp needs bf16 support on this GPU; drop --amp")
    if cfg.seq_len < 2 or cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.max_steps < 1:
        raise TrainingError("--seq_len >= 2, --batch_size >= 1, --grad_accum >= 1 and --max_steps >= 1 required")
    out_dir = repo_path(cfg.out_dir)
    last_dir, best_dir = os.path.join(out_dir, "last"), os.path.join(out_dir, "best")
    tok_dir = repo_path(cfg.tokenizer_dir)
    _prepare_out_dir(cfg, out_dir, last_dir, tok_dir)
    tokenizer = load_tokenizer(tok_dir)
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise TrainingError(f"tokenizer in {tok_dir} lacks BOS/EOS; train one with python3 -m train.tokenizer")

    train_ids, heldout_ids = _streams(tokenizer.path)
    if len(train_ids) <= cfg.seq_len + 1:
        raise TrainingError(f"train split has {len(train_ids)} tokens, too few for --seq_len {cfg.seq_len}")

    config = presets.build_config(cfg.preset, tokenizer.vocab_size, cfg.seq_len, tokenizer.bos_id,
                                  tokenizer.eos_id, dim=cfg.dim, n_layers=cfg.n_layers,
                                  n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
                                  intermediate_size=cfg.intermediate_size)
    max_shard = int(cfg.max_shard_mb * 2**20)
    state = {"step": 0, "tokens_seen": 0, "train_seconds": 0.0, "best_eval_loss": None,
             "best_step": None, "evals": []}
    if cfg.resume:
        model, optimizer, saved = checkpoint.load_train_state(
            last_dir, lambda m: make_optimizer(m, cfg), device)
        if model.config.to_hf_config() != config.to_hf_config():
            raise TrainingError(f"{last_dir} holds a different model shape than --preset {cfg.preset} "
                                "and its overrides; resume with the same flags")
        state.update({k: saved[k] for k in state if k in saved})
    else:
        model = Transformer(config)
        init_weights(model, cfg.seed)
        model.to(device).train()
        optimizer = make_optimizer(model, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    if cfg.checkpoint_activations:
        enable_activation_checkpointing(model)
    model.setup_rope(cfg.seq_len, device)  # built before compile so tracing never sees the lazy path
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_loss = torch.compile(loss_of) if cfg.compile else loss_of

    def save(path: str, with_optimizer: bool) -> None:
        def write(tmp: str) -> None:
            if with_optimizer:
                checkpoint.write_train_state(tmp, model, optimizer, {**state, "flags": dataclasses.asdict(cfg)},
                                             max_shard_bytes=max_shard)
            else:
                from model.weights import save_model
                save_model(model, tmp, max_shard_bytes=max_shard)
            copy_tokenizer(tok_dir, tmp, cfg.seq_len)
        checkpoint.replace_dir(path, write)  # a crash leaves the old save or this one, whole

    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum
    flops_token = presets.flops_per_token(config, cfg.seq_len)
    start_step = state["step"]
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc=f"train {cfg.preset}", unit="step",
               disable=not cfg.progress, dynamic_ncols=True)
    train_loss = float("nan")
    compile_seconds = None
    window_t0, window_tokens = time.perf_counter(), 0
    run_t0 = time.perf_counter()
    time_base = state["train_seconds"]
    step = start_step
    while step < cfg.max_steps:
        if cfg.stop_at_step and step >= cfg.stop_at_step:
            bar.write(f"--stop_at_step {cfg.stop_at_step} reached; stopping (resume with --resume)")
            break
        if cfg.max_minutes and (time.perf_counter() - run_t0) > cfg.max_minutes * 60:
            bar.write(f"--max_minutes {cfg.max_minutes} reached at step {step}; stopping")
            break
        t_step = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x, y = get_batch(train_ids, step, micro, cfg, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                loss = step_loss(model, x, y)
            if step == cfg.inject_nan_step:
                loss = loss * float("nan")
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        loss_value = float(loss_sum) / cfg.grad_accum  # one sync per step: the NaN check needs it
        if not math.isfinite(loss_value):
            bar.close()
            raise TrainingError(f"non-finite training loss ({loss_value}) at step {step}; last good "
                                f"checkpoint: {last_dir} (step {state['step']}); lower --lr or check --amp")
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if not torch.isfinite(norm):
                bar.close()
                raise TrainingError(f"non-finite gradient norm at step {step}; last good checkpoint: "
                                    f"{last_dir} (step {state['step']}); lower --lr or check --amp")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        train_loss = loss_value
        state["tokens_seen"] += tokens_per_step
        if compile_seconds is None and cfg.compile:
            compile_seconds = time.perf_counter() - t_step  # first step: tracing + codegen
            window_t0, window_tokens = time.perf_counter(), 0
        else:
            window_tokens += tokens_per_step
        state["step"] = step
        state["train_seconds"] = time_base + time.perf_counter() - run_t0
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - window_t0
            tok_s = window_tokens / elapsed if elapsed > 0 and window_tokens else 0.0
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tok_s:,.0f}",
                            tflops=f"{tok_s * flops_token / 1e12:.1f}", lr=f"{lr_at(step - 1, cfg):.2e}")
            state["last_tokens_per_s"] = tok_s
            window_t0, window_tokens = time.perf_counter(), 0
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            eval_loss = evaluate(model, heldout_ids, cfg.seq_len, cfg.eval_tokens, device, cfg.amp,
                                 cfg.batch_size)
            state["evals"].append({"step": step, "train_loss": train_loss, "heldout_loss": eval_loss})
            bar.write(f"step {step}: train loss {train_loss:.4f}, held-out loss {eval_loss:.4f} "
                      f"(ppl {math.exp(eval_loss):.2f})")
            if state["best_eval_loss"] is None or eval_loss < state["best_eval_loss"]:
                state["best_eval_loss"], state["best_step"] = eval_loss, step
                if cfg.keep_best:
                    save(best_dir, with_optimizer=False)
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            save(last_dir, with_optimizer=True)
    bar.close()

    final_eval = evaluate(model, heldout_ids, cfg.seq_len, cfg.eval_tokens, device, cfg.amp, cfg.batch_size)
    if state["step"] != (state["evals"][-1]["step"] if state["evals"] else None):
        state["evals"].append({"step": state["step"], "train_loss": train_loss, "heldout_loss": final_eval})
    save(last_dir, with_optimizer=True)
    summary = {
        "preset": cfg.preset,
        "params": n_params,
        "model_config": config.to_hf_config(),
        "tokenizer": os.path.relpath(tok_dir, repo_path(".")) + "/tokenizer.json",
        "vocab_size": tokenizer.vocab_size,
        "train_tokens_in_split": len(train_ids),
        "heldout_tokens_in_split": len(heldout_ids),
        "steps": state["step"],
        "tokens_seen": state["tokens_seen"],
        "epochs": state["tokens_seen"] / len(train_ids),
        "train_seconds": state["train_seconds"],
        "compile_seconds": compile_seconds,
        "tokens_per_s": state.get("last_tokens_per_s"),
        "flops_per_token": flops_token,
        "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None),
        "device": device_label(device),
        "torch": torch.__version__,
        "final_train_loss": train_loss,
        "final_heldout_loss": final_eval,
        "final_heldout_ppl": math.exp(final_eval),
        "best_heldout_loss": state["best_eval_loss"],
        "best_step": state["best_step"],
        "evals": state["evals"],
        "flags": dataclasses.asdict(cfg),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_model_card(out_dir, summary, [last_dir] + ([best_dir] if os.path.isdir(best_dir) else []))
    return summary


def _prepare_out_dir(cfg: TrainConfig, out_dir: str, last_dir: str, tok_dir: str) -> None:
    """Check --out_dir before any work: a fresh start takes only a new, empty or earlier-run folder,
    and never one holding a resumable run unless --overwrite; --resume reads it as it is."""
    from model.output_dir import prepare_output_dir
    from train import checkpoint

    if cfg.resume:
        if cfg.overwrite:
            raise TrainingError("--resume and --overwrite contradict each other; pass one")
        return
    checkpoint.settle(last_dir)
    if not cfg.overwrite and os.path.isfile(os.path.join(last_dir, checkpoint.STATE_FILE)):
        raise TrainingError(f"--out_dir {out_dir} holds a run that can be resumed ({last_dir}); pass --resume "
                            "to continue it or --overwrite to start afresh there")
    prepare_output_dir(out_dir, writer="train.train", flag="--out_dir", overwrite=cfg.overwrite,
                       inputs={"--tokenizer_dir": tok_dir})


def write_model_card(out_dir: str, s: dict, copies: list[str]) -> str:
    """MODEL_CARD.md in out_dir (and copied into each checkpoint folder); summary.json beside it."""
    from data import corpus

    flags_line = " ".join(f"--{k}={v}" for k, v in s["flags"].items()
                          if k not in ("progress",) and v is not None)
    best = (f"{s['best_heldout_loss']:.4f} (ppl {math.exp(s['best_heldout_loss']):.2f}) at step {s['best_step']}"
            if s["best_heldout_loss"] is not None else "none (no eval ran)")
    c = s["model_config"]
    tok_s = f"{s['tokens_per_s']:,.0f}" if s["tokens_per_s"] else "n/a"
    text = f"""# Model card: {s['preset']} ({s['params']:,} parameters)

A small Llama-architecture causal LM trained from scratch by `python3 -m train.train` on {s['date']}.
Random-init research model for the lab's evals and demos; not for any real use.

## Shape
hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']} query heads /
{c['num_key_value_heads']} KV heads (head_dim {c['head_dim']}), SwiGLU {c['intermediate_size']},
vocab {c['vocab_size']}, context {c['max_position_embeddings']}, tied embeddings, RoPE theta {c['rope_theta'] if 'rope_theta' in c else c['rope_parameters']['rope_theta']}.

## Data
{corpus.describe()}. See data/DATA_CARD.md for sources and licenses.
Train split: {s['train_tokens_in_split']:,} tokens; held-out split: {s['heldout_tokens_in_split']:,} tokens.

## Tokenizer
`{s['tokenizer']}`: byte-level BPE, {s['vocab_size']} ids, BOS `<s>` = 0, EOS `</s>` = 1.

## Training
- steps: {s['steps']:,}; tokens seen: {s['tokens_seen']:,} ({s['epochs']:.1f} epochs of the train split)
- wall time (training loop): {s['train_seconds']:.1f} s; compile (first step): {f"{s['compile_seconds']:.1f} s" if s['compile_seconds'] is not None else 'n/a'}
- throughput (last window): {tok_s} tokens/s; {s['flops_per_token'] / 1e6:.1f} MFLOP/token
- peak GPU memory allocated: {f"{s['peak_memory_gib']:.2f} GiB" if s.get('peak_memory_gib') is not None else 'n/a (CPU run)'}
- device: {s['device']}; torch {s['torch']}
- flags: `{flags_line}`

## Results
- final train loss (last step's batch): {s['final_train_loss']:.4f}
- final held-out loss: {s['final_heldout_loss']:.4f}, perplexity {s['final_heldout_ppl']:.2f}
  (token-level, non-overlapping windows of {c['max_position_embeddings']} predicted tokens)
- best held-out loss: {best}{' (saved in best/)' if s['flags']['keep_best'] else ''}
"""
    path = os.path.join(out_dir, "MODEL_CARD.md")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(s, f, indent=2, default=str)
        f.write("\n")
    for d in copies:
        shutil.copyfile(path, os.path.join(d, "MODEL_CARD.md"))
    return path


def fit_steps(params, optimizer, cfg: TrainConfig, stream, device, loss_fn, opts: dict,
              what: str = "loss") -> tuple[int, list[float], float]:
    """The step loop of the small trainers (train.heads, train.distill): cfg's lr schedule, the seeded
    batches of `stream`, loss_fn(x) -> scalar, grad-norm clip 1.0, opts' --stop_at_step / --max_minutes
    cuts, a line every 20 steps. Returns (steps, per-step losses, seconds)."""
    import torch

    params = list(params)
    t0, losses, step = time.perf_counter(), [], 0
    while step < cfg.max_steps:
        if opts.get("stop_at_step") and step >= opts["stop_at_step"]:
            break
        if opts.get("max_minutes") and time.perf_counter() - t0 > opts["max_minutes"] * 60:
            print(f"--max_minutes {opts['max_minutes']} reached at step {step}; stopping")
            break
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, cfg)
        x, _ = get_batch(stream, step, 0, cfg, device)
        loss = loss_fn(x)
        if not math.isfinite(float(loss.detach())):
            raise ValueError(f"non-finite {what} at step {step}; lower --lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        step += 1
        if step % 20 == 0:
            print(f"step {step}: {what} {sum(losses[-20:]) / 20:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return step, losses, time.perf_counter() - t0


def reproducible_flags(f: dict, steps: int) -> dict:
    """The flags that repeat a run step for step: a --max_minutes cut becomes --stop_at_step."""
    if steps < f["max_steps"] and not f.get("stop_at_step"):
        return {**f, "max_minutes": 0.0, "stop_at_step": steps}
    return f


def repo_relative(path: str) -> str:
    """path relative to the repository root when it lies inside it (a card's reproducible command)."""
    rel = os.path.relpath(path, repo_path("."))
    return path if rel.startswith("..") else rel


def run_record(step: int, cfg: TrainConfig, train_s: float, device, opts: dict, **fields) -> dict:
    """The train_summary.json of a small trainer (heads, distill, eagle): its own fields first, then the
    ones they share (steps, tokens seen, seconds, device, threads, torch, flags, date)."""
    import torch

    return {**fields, "steps": step, "tokens_seen": step * cfg.batch_size * cfg.seq_len, "train_seconds": train_s,
            "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__, "flags": opts,
            "date": time.strftime("%Y-%m-%d")}


def write_summary_and_card(out_dir: str, summary: dict, card: str) -> None:
    """train_summary.json and MODEL_CARD.md (the text `card`) in out_dir, each written atomically."""
    for name, text in (("train_summary.json", json.dumps(summary, indent=2) + "\n"), ("MODEL_CARD.md", card)):
        path = os.path.join(out_dir, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)

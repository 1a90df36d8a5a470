"""Token-level perplexity of a checkpoint on the lab's held-out split and on WikiText-2 test.

    python3 -m bench.perplexity --checkpoint runs/lab-small/best --window 512
    python3 -m bench.perplexity --checkpoint /path/to/hf-dir --splits wikitext2_test --device cuda

Protocol (printed beside every number): the split's documents are encoded with the
checkpoint's own tokenizer.json (no BOS, EOS after each document: data.corpus's
token_stream) and cut into fixed, non-overlapping windows of --window tokens; a
trailing partial window is dropped. Each window is scored on its own (no context
carried over): its first token is context only, the other window - 1 tokens are
scored, unless --bos prepends BOS so all window tokens are scored.
Perplexity = exp(total NLL / tokens scored); a NaN or infinite one (results still written)
makes the run exit 1. WikiText-2 here is the word-level
tokenized version (<unk>, @-@): the numbers are not comparable with published
wikitext-2-raw perplexities.

Streaming rows (--sinks S, S >= 0; model/streaming.py): over the first --stream_tokens tokens
of each split, every token after the first is scored from a cache of the previous tokens:
  full context     the protocol above with windows of the model's context (disjoint chunks)
  window only      a rolling window of the last N + S tokens, keys re-positioned in the cache
  window + sinks   the first S tokens kept (attention sinks) + the last N tokens
(N = --window, equal cache sizes for the last two), one token at a time, fp32.
    python3 -m bench.perplexity --checkpoint lab-small --splits wikitext2_test --window 60 --sinks 4
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

from absl import app

from bench import common

# Flags other bench modules define too (--checkpoint, --device, --batch_size, ...): defined once
# per process, so pytest can import the bench modules side by side (bench.common.define_flag).
_define = common.define_flag
_define("string", "checkpoint", None, "HF-layout directory (config.json + safetensors + tokenizer.json): "
        "ours (runs/<preset>/best, lab-small, lab-draft) or any Llama/Mistral one; a relative path "
        "is from where you ran the command. Required.")
_define("string", "tokenizer", None, "tokenizer.json path or folder; default None: the checkpoint's own.")
_define("list", "splits", ["heldout", "wikitext2_test"], "Corpus splits to score (data.corpus.SPLITS). "
        "Default: the held-out split and WikiText-2 test (never trained on).")
_define("integer", "window", 512, "Tokens per scoring window (default 512: the lab models' context).")
_define("integer", "batch_size", 8, "Windows per forward pass (default 8: bounded memory, any model).")
_define("integer", "max_windows", 0, "Score at most this many windows per split; 0 = all (default).")
_define("boolean", "bos", False, "Prepend BOS to each window so every window token is scored "
        "(default off: matches how the lab models were trained, without BOS).")
_define("integer", "sinks", -1, "Attention sinks for the streaming rows (model/streaming.py); -1 (default): "
        "no streaming rows, the disjoint-window protocol only.")
_define("integer", "stream_tokens", 4096, "Tokens of each split the streaming rows score (default 4096: "
        "8 contexts of the lab models, about a minute per row on a CPU).")
_define("string", "device", "auto", "cpu, cuda, cuda:N or auto (cuda when available).")
_define("string", "weights_dtype", "float32", "float32, bfloat16 or float16 for the weights (default float32: "
        "exact log-probabilities).")


@dataclass(frozen=True)
class Options:
    """One run, as the flags above give it (main reads them once; tests build one directly)."""

    checkpoint: str | None
    tokenizer: str | None
    splits: tuple[str, ...]
    window: int
    batch_size: int
    max_windows: int
    bos: bool
    device: str | None
    weights_dtype: str
    sinks: int = -1
    stream_tokens: int = 4096


def perplexity(model, token_ids, window: int, device="cpu", batch_size: int = 8,
               bos_id=None, max_windows: int = 0, progress: bool = False) -> dict:
    """Perplexity of `model` over non-overlapping windows of `window` tokens of `token_ids`.

    model: a callable taking input_ids (B, T) long and returning logits (B, T, V), or an
    object with `.logits` (transformers). token_ids: a 1-D sequence of ints.
    Without bos_id each window scores its last window - 1 tokens; with bos_id the input
    is [BOS] + window[:-1] and all `window` tokens are scored. Windows never overlap and
    the trailing partial window is dropped.
    Returns {"perplexity", "nll", "tokens_scored", "windows", "window", "tokens_total"}.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    ids = torch.as_tensor(list(token_ids) if not torch.is_tensor(token_ids) else token_ids, dtype=torch.long)
    n_windows = len(ids) // window
    if max_windows:
        n_windows = min(n_windows, max_windows)
    if n_windows == 0:
        raise ValueError(f"{len(ids)} tokens are fewer than one window of {window}")
    windows = ids[:n_windows * window].view(n_windows, window)  # (N, window), disjoint rows
    nll, scored = 0.0, 0
    with torch.no_grad():
        for i in tqdm(range(0, n_windows, batch_size), desc="perplexity", unit="batch",
                      disable=not progress, leave=False):
            rows = windows[i:i + batch_size].to(device)  # (b, window)
            if bos_id is not None:
                bos = torch.full((rows.shape[0], 1), bos_id, dtype=torch.long, device=device)
                inputs, targets = torch.cat([bos, rows[:, :-1]], dim=1), rows  # (b, window) each
            else:
                inputs, targets = rows[:, :-1], rows[:, 1:]  # (b, window - 1) each
            out = model(inputs)
            logits = getattr(out, "logits", out)  # (b, T, V)
            token_nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                        targets.reshape(-1), reduction="none")  # (b * T,)
            nll += float(token_nll.double().sum())  # fp64 sum: 300K tokens stay exact
            scored += targets.numel()
    return {"perplexity": math.exp(nll / scored), "nll": nll / scored, "tokens_scored": scored,
            "windows": n_windows, "window": window, "tokens_total": len(ids)}


def protocol(result: dict, split: str, tokenizer_path: str, bos: bool) -> str:
    """One line saying what a perplexity figure means."""
    return (f"split={split}, tokenizer={tokenizer_path}, {result['windows']} non-overlapping windows "
            f"of {result['window']} tokens ({result['tokens_scored']:,} of {result['tokens_total']:,} "
            f"tokens scored, {'BOS prepended' if bos else 'first token of each window is context'}), "
            "token-level, no context carried across windows")


def stream_rows(model, ids: list[int], opts: Options, split: str, name: str, device: str, rows: list,
                summary: list) -> None:
    """The three streaming rows (module docstring) of one split, appended to rows and summary."""
    from model.streaming import stream_nll

    n, s, ctx = opts.window, opts.sinks, min(model.config.max_seq_len, len(ids))
    full = perplexity(model, ids, ctx, device, opts.batch_size)
    variants = [("full context", f"disjoint windows of {ctx} (the model context)", full),
                ("window only", f"rolling window of {n + s}", stream_nll(model, ids, 0, n + s)),
                ("window + sinks", f"{s} sinks + rolling window of {n}", stream_nll(model, ids, s, n))]
    for variant, what, r in variants:
        proto = f"split={split}, first {len(ids):,} tokens, {r['tokens_scored']:,} scored, {what}"
        print(f"{split} {variant}: perplexity {r['perplexity']:.3f} (NLL {r['nll']:.4f})  [{proto}]")
        rows.append({"checkpoint": name, "split": split, "variant": variant, "window": n, "sinks": s,
                     "perplexity": r["perplexity"], "nll": r["nll"], "tokens_scored": r["tokens_scored"],
                     "protocol": proto})
        summary.append({"name": f"perplexity/{name}/{split}/stream{len(ids)}/{variant.replace(' ', '_')}/w{n}s{s}",
                         "value": r["perplexity"], "unit": "perplexity", "protocol": proto})


def main(argv: list[str]) -> int:
    """The binary: the flags, read once into Options, then run; returns the exit status."""
    del argv
    return run(common.options_from_flags(Options))


def run(opts: Options) -> int:
    """Score every split, write the results; 0, or 2 after one `error: ...` line for bad input, or 1
    (results written) when a perplexity is not finite."""
    os.environ.setdefault("LAB_KERNEL_BACKEND", "torch")  # exact fp32 reference ops for scoring
    import model as lab_model
    from data import corpus
    from model.device import resolve_device
    from model.loader import checkpoint_dir, user_path
    from model.tokenizer import load_tokenizer

    if not opts.checkpoint:
        print("error: --checkpoint is required (an HF-layout directory with tokenizer.json)", file=sys.stderr)
        return 2
    for flag, value, least in (("--window", opts.window, 2), ("--batch_size", opts.batch_size, 1),
                               ("--max_windows", opts.max_windows, 0), ("--sinks", opts.sinks, -1),
                               ("--stream_tokens", opts.stream_tokens, 2)):
        if value < least:  # checked before any loading: one line, not a traceback from the scoring loop
            print(f"error: {flag} must be at least {least}, got {value}", file=sys.stderr)
            return 2
    root = common.repo_root()
    try:
        device = str(resolve_device(opts.device))
        ckpt = checkpoint_dir(opts.checkpoint)
        if ckpt is None:
            raise ValueError(f"--checkpoint {opts.checkpoint} has random weights; perplexity needs a trained "
                             "checkpoint (a directory, lab-small or lab-draft)")
        tokenizer = load_tokenizer(user_path(opts.tokenizer) if opts.tokenizer else ckpt)
        model = lab_model.load(ckpt, dtype=opts.weights_dtype, device=device)
        bad = [s for s in opts.splits if s not in corpus.SPLITS]
        if bad:
            raise ValueError(f"unknown split(s) {bad}; choose from {', '.join(corpus.SPLITS)}")
        if opts.window + max(opts.sinks, 0) > model.config.max_seq_len:
            raise ValueError(f"--window {opts.window} (+ --sinks) exceeds the model context {model.config.max_seq_len}")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bos_id = tokenizer.bos_id if opts.bos else None
    if opts.bos and bos_id is None:
        print("error: --bos given but the tokenizer has no BOS token", file=sys.stderr)
        return 2
    name = os.path.basename(os.path.normpath(ckpt))
    rows, summary = [], []
    for split in opts.splits:
        ids = corpus.token_stream(tokenizer, split)
        if opts.sinks >= 0:
            stream_rows(model, ids[:opts.stream_tokens], opts, split, name, device, rows, summary)
            continue
        r = perplexity(model, ids, opts.window, device, opts.batch_size, bos_id, opts.max_windows,
                       progress=True)
        tok_name = os.path.relpath(tokenizer.path, root)
        proto = protocol(r, split, tokenizer.path if tok_name.startswith("..") else tok_name, opts.bos)
        print(f"{split}: perplexity {r['perplexity']:.3f} (NLL {r['nll']:.4f} nats/token)  [{proto}]")
        rows.append({"checkpoint": ckpt, "split": split, **r, "dtype": opts.weights_dtype, "protocol": proto})
        summary.append({"name": f"perplexity/{name}/{split}/w{opts.window}", "value": r["perplexity"],
                        "unit": "perplexity", "protocol": proto, "checkpoint": ckpt,
                        "tokens_scored": r["tokens_scored"]})
    out = common.results_dir("perplexity", device)
    paths = common.write_results(out, "perplexity", rows, summary,
                                 command=common.command_line("perplexity"), device=common.device_name(device))
    print(f"wrote {paths['json']} and {paths['summary']}")
    bad = [r["split"] for r in rows if not math.isfinite(r["perplexity"])]
    if bad:  # NaN/Inf logits: a broken checkpoint or dtype, not a figure
        print(f"bench.perplexity: perplexity is not finite on {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))

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
import sys
from dataclasses import dataclass
from typing import Optional

import torch
from absl import app, flags

from model.device import UsageError, parse_ids


@dataclass(frozen=True)
class Options:
    """What one run does; the defaults are the flags' defaults (tests build one directly)."""

    checkpoint: str = "lab-small"  # shipped: seconds on a laptop CPU, real text
    prompt: str = "ROMEO:"
    prompt_ids: Optional[str] = None  # "1,2,3": bypasses the tokenizer
    max_new_tokens: int = 64  # a few lines, a steady tokens/s
    temperature: float = 0.0  # greedy: reproducible
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: int = 0  # sampling seed
    device: str = "auto"
    dtype: str = "auto"
    json: bool = False
    speculative: str = "none"  # none, draft, ngram, heads or eagle (decoding.speculative)
    num_speculative_tokens: int = 4
    draft_checkpoint: str = "lab-draft"  # the draft model of --speculative draft
    heads_checkpoint: str = "lab-small-medusa"  # the Medusa heads of --speculative heads (decoding/heads.py)
    eagle_checkpoint: str = "lab-small-eagle"  # the EAGLE head of --speculative eagle (decoding/eagle.py)
    tp: int = 1  # tensor-parallel ranks (model/tp.py); >1 spawns them unless run under torchrun


FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", Options.checkpoint, "HF-layout directory (config.json + safetensors), a shipped "
                    "model: lab-small (default), lab-draft, embedded (tiny random, byte vocab), or a model.config "
                    "preset (random weights).")
flags.DEFINE_string("prompt", Options.prompt, "Prompt text (ignored when --prompt_ids is given).")
flags.DEFINE_string("prompt_ids", Options.prompt_ids, "Comma-separated token ids, e.g. 1,2,3; bypasses the "
                    "tokenizer.")
flags.DEFINE_integer("max_new_tokens", Options.max_new_tokens, "Tokens to generate. Default 64: a few lines, a "
                     "steady tokens/s.")
flags.DEFINE_float("temperature", Options.temperature, "Sampling temperature; default 0 = greedy, reproducible.")
flags.DEFINE_integer("top_k", Options.top_k, "Keep only the k most likely tokens (default None: all).")
flags.DEFINE_float("top_p", Options.top_p, "Nucleus sampling mass in (0, 1] (default None: off).")
flags.DEFINE_integer("seed", Options.seed, "Sampling seed (torch.Generator); default 0 for reproducible runs.")
flags.DEFINE_string("device", Options.device, "cpu, cuda, cuda:N or auto (cuda when available, else cpu).")
flags.DEFINE_string("dtype", Options.dtype, "float32, bfloat16, float16 (or bf16, fp16, fp32) or auto (float32 "
                    "on cpu, bfloat16 on cuda).")
flags.DEFINE_bool("json", Options.json, "Print one JSON object instead of text and a stats line.")
flags.DEFINE_enum("speculative", Options.speculative, ["none", "draft", "ngram", "heads", "eagle"],
                  "Speculative decoding (decoding.speculative): draft = a draft model proposes, ngram = prompt "
                  "lookup, heads = Medusa heads on the target (--heads_checkpoint), eagle = an EAGLE draft head "
                  "(--eagle_checkpoint); the output "
                  "equals plain decoding's (greedy) or its distribution (sampling). Default none.")
flags.DEFINE_integer("num_speculative_tokens", Options.num_speculative_tokens, "Tokens proposed per target "
                     "forward, 1-32 (default 4).")
flags.DEFINE_string("draft_checkpoint", Options.draft_checkpoint, "Draft model of --speculative draft (same "
                    "vocabulary as --checkpoint); default the shipped lab-draft.")
flags.DEFINE_string("heads_checkpoint", Options.heads_checkpoint, "Heads folder of --speculative heads (trained "
                    "for --checkpoint by //train:heads); default the shipped lab-small-medusa (heads of lab-small).")
flags.DEFINE_string("eagle_checkpoint", Options.eagle_checkpoint, "EAGLE head folder of --speculative eagle "
                    "(trained for --checkpoint by //train:eagle); default the shipped lab-small-eagle (lab-small's).")
flags.DEFINE_integer("tp", Options.tp, "Tensor-parallel ranks (default 1). >1 starts that many processes itself (NCCL "
                     "with one GPU each, else gloo on the CPU); under torchrun each process is one rank.")


def options_from_flags() -> Options:
    """The Options the parsed flags describe."""
    return Options(**{f: getattr(FLAGS, f) for f in Options.__dataclass_fields__})


def check_options(opts: Options) -> None:
    """Raise UsageError naming the flag for a value that cannot run (before any model is loaded)."""
    from decoding.sampling import check_sampling

    if opts.tp < 1:
        raise UsageError(f"--tp must be >= 1, got {opts.tp}")
    if opts.max_new_tokens < 1:
        raise UsageError(f"--max_new_tokens must be >= 1, got {opts.max_new_tokens}")
    if opts.speculative not in ("none", "draft", "ngram", "heads", "eagle"):
        raise UsageError(f"--speculative must be none, draft, ngram, heads or eagle, got {opts.speculative!r}")
    if opts.speculative != "none" and opts.tp > 1:
        raise UsageError("--speculative runs on one process; it cannot be combined with --tp > 1")
    if opts.speculative != "none" and not 1 <= opts.num_speculative_tokens <= 32:
        raise UsageError(f"--num_speculative_tokens must be in [1, 32], got {opts.num_speculative_tokens}")
    try:
        check_sampling(opts.temperature, opts.top_k, opts.top_p)
    except ValueError as e:
        raise UsageError(f"--{e}") from None
    try:
        if opts.prompt_ids is None:
            opts.prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"--prompt is not valid UTF-8 text: {opts.prompt!r}") from None


def pick_tokenizer(path: Optional[str], vocab_size: int, needed: bool = True):
    """The tokenizer of checkpoint dir `path` (None: random weights), the byte tokenizer, or None.

    A checkpoint without tokenizer files falls back to the byte tokenizer only when its vocab is
    the byte tokenizer's (258), with a warning on stderr; any other vocab is a UsageError when a
    tokenizer is `needed` (text prompt), else None (ids in, ids out).
    """
    from model.tokenizer import ByteTokenizer, has_tokenizer, load_tokenizer

    if path and has_tokenizer(path):
        return load_tokenizer(path)
    fits = vocab_size >= ByteTokenizer.vocab_size
    if path is None:  # random weights: text is noise anyway; bytes when they fit
        return ByteTokenizer() if fits else None
    if vocab_size != ByteTokenizer.vocab_size:
        if not needed:
            return None
        raise UsageError(f"{path} has no tokenizer.json or tokenizer.model and its vocab ({vocab_size}) is not the "
                         f"byte tokenizer's ({ByteTokenizer.vocab_size}); add the tokenizer files or pass --prompt_ids")
    print(f"warning: {path} has no tokenizer files; using the byte tokenizer (its vocab size matches)",
          file=sys.stderr)
    return ByteTokenizer()


def run(opts: Options, rank=None) -> dict:
    """Do the work of main; return the result record (raises on bad input).

    rank: this process's model.parallel.RankContext when --tp > 1 (it loads only its slices)."""
    import model
    from decoding.generate import generate
    from model.device import dtype_name, resolve_device, resolve_dtype
    from model.loader import checkpoint_dir

    check_options(opts)
    device = resolve_device(opts.device) if rank is None else rank.device
    dtype = resolve_dtype(opts.dtype, device)
    checkpoint = opts.checkpoint or "lab-small"
    torch.manual_seed(opts.seed)  # the same on every rank: unseeded paths sample alike
    net = model.load(checkpoint, dtype=dtype, device=device, tp=rank)
    path = checkpoint_dir(checkpoint)
    tokenizer = pick_tokenizer(path, net.config.vocab_size, needed=opts.prompt_ids is None)
    if opts.prompt_ids is not None:
        prompt_ids = parse_ids(opts.prompt_ids)
    elif tokenizer is None:
        raise UsageError(f"{checkpoint}: vocab {net.config.vocab_size} is smaller than the byte tokenizer's; "
                         "pass --prompt_ids")
    else:
        prompt_ids = tokenizer.encode(opts.prompt, bos=True)
    vocab = net.config.vocab_size
    if not prompt_ids or min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
        raise UsageError(f"prompt ids must be a non-empty list in [0, {vocab}), got {prompt_ids[:8]}")
    eos = tokenizer.eos_id if tokenizer is not None else None
    spec = None
    if opts.speculative != "none":
        from decoding.speculative import SpeculativeConfig, generate_speculative

        draft = model.load(opts.draft_checkpoint, dtype=dtype, device=device) if opts.speculative == "draft" else None
        if draft is not None and draft.config.vocab_size != vocab:
            raise UsageError(f"--draft_checkpoint {opts.draft_checkpoint}: vocab {draft.config.vocab_size} differs "
                             f"from --checkpoint's {vocab}; the draft must share the target's tokenizer")
        heads = None
        if opts.speculative == "heads":
            from decoding.heads import HeadsError, load_heads

            try:
                heads = load_heads(opts.heads_checkpoint, net)
            except HeadsError as e:
                raise UsageError(f"--heads_checkpoint: {e}") from None
            if opts.num_speculative_tokens > heads.num_heads:
                raise UsageError(f"--num_speculative_tokens {opts.num_speculative_tokens} exceeds the "
                                 f"{heads.num_heads} heads in --heads_checkpoint {opts.heads_checkpoint}")
        eagle = None
        if opts.speculative == "eagle":
            from decoding.eagle import EagleError, load_eagle

            try:
                eagle = load_eagle(opts.eagle_checkpoint, net)
            except EagleError as e:
                raise UsageError(f"--eagle_checkpoint: {e}") from None
        result = generate_speculative(net, prompt_ids, opts.max_new_tokens,
                                      SpeculativeConfig(opts.speculative, opts.num_speculative_tokens), draft,
                                      temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p,
                                      seed=opts.seed, eos_id=eos, heads=heads, eagle=eagle)
        s = result.stats
        spec = {"method": opts.speculative, "num_speculative_tokens": opts.num_speculative_tokens,
                # None (not NaN: --json stays valid JSON) when nothing was proposed / verified
                "acceptance_rate": s.acceptance_rate if s.proposed else None,
                "mean_accepted_length": s.mean_accepted_length if s.cycles else None,
                "target_forwards": s.target_forwards, "draft_forwards": s.draft_forwards}
    else:
        result = generate(net, prompt_ids, opts.max_new_tokens, temperature=opts.temperature,
                          top_k=opts.top_k, top_p=opts.top_p, seed=opts.seed, eos_id=eos)
    out_ids = result.new_ids[0]
    model_bytes = sum(p.numel() * p.element_size() for p in net.parameters()) * opts.tp  # all ranks' weights
    return {
        "checkpoint": checkpoint,
        "device": str(device),
        "tp": opts.tp,
        "dtype": dtype_name(dtype),
        "prompt_ids": prompt_ids,
        "output_ids": out_ids,
        "text": tokenizer.decode(out_ids) if tokenizer is not None else None,
        "n_new_tokens": result.n_new,
        "prefill_s": result.prefill_s,
        "decode_s": result.decode_s,
        "tokens_per_s": result.tokens_per_s,
        # Each decode step reads every weight once: a lower bound on bandwidth used.
        "weight_bandwidth_gb_s": model_bytes * result.tokens_per_s / 1e9,
        "speculative": spec,
    }


def _rank_run(rank, opts: Options) -> dict:
    """One spawned rank of --tp: run() on its slices."""
    return run(opts, rank)


def run_ranks_or_one(opts: Options) -> Optional[dict]:
    """run() in one process (--tp 1), in --tp spawned ranks (rank 0's record), or as this torchrun rank
    (None on ranks other than 0)."""
    if opts.tp == 1:
        return run(opts)
    from model.parallel import init_from_env, run_ranks, under_torchrun
    from model.tp import check_tp_source

    check_options(opts)
    if under_torchrun():
        import torch.distributed as dist

        rank = init_from_env(opts.device)
        if rank.world != opts.tp:
            raise UsageError(f"--tp {opts.tp} but torchrun started {rank.world} ranks")
        try:
            rec = run(opts, rank)
        finally:
            dist.destroy_process_group()
        return rec if rank.is_driver else None
    check_tp_source(opts.checkpoint or "lab-small", opts.tp)
    return run_ranks(_rank_run, opts.tp, args=(opts,), device=opts.device)[0]


def main(argv) -> int:
    """Entry point for absl: print the generation and its speed; exit 2 with one line on error."""
    from decoding.generate import ContextLengthError, NonFiniteLogitsError
    from model.config import ConfigError
    from model.parallel import RankError
    from model.weights import CheckpointError

    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; pass flags only", file=sys.stderr)
        return 2
    opts = options_from_flags()
    try:
        rec = run_ranks_or_one(opts)
    except (UsageError, ConfigError, CheckpointError, ContextLengthError, NonFiniteLogitsError,
            FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RankError as e:  # a rank's failure: its first line (the traceback went to that rank's record)
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    if rec is None:  # a torchrun rank other than 0: rank 0 prints
        return 0
    if opts.json:
        print(json.dumps(rec))
    else:
        if rec["text"] is None:
            print(rec["output_ids"])
        else:  # the prompt, then its continuation, as a reader expects
            print((opts.prompt if opts.prompt_ids is None else "") + rec["text"])
        print(f"[{rec['checkpoint']} on {rec['device']} {rec['dtype']}] {rec['n_new_tokens']} tokens, "
              f"prefill {rec['prefill_s'] * 1e3:.1f} ms, decode {rec['tokens_per_s']:.1f} tokens/s, "
              f"{rec['weight_bandwidth_gb_s']:.2f} GB/s of weights", file=sys.stderr)
        if rec["speculative"]:
            sp = rec["speculative"]
            acc, tau = sp["acceptance_rate"], sp["mean_accepted_length"]
            print(f"[speculative {sp['method']}, k={sp['num_speculative_tokens']}] acceptance "
                  f"{'-' if acc is None else f'{acc:.2f}'}, {'-' if tau is None else f'{tau:.2f}'} tokens per "
                  f"target forward, {sp['target_forwards']} target forwards", file=sys.stderr)
    return 0


if __name__ == "__main__":
    app.run(main)

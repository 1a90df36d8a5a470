"""Decode throughput against the memory roofline, ours against Hugging Face in the same run.

    python3 -m bench.decode                          # GPU: Llama-3-8B shape, random bf16 weights
    python3 -m bench.decode --batch_sizes 1 --variants graph,hf
    bazel run //bench:decode                         # CPU: the tiny shape, a small sweep

Variants (each over prompt_len prompt tokens, then new_tokens greedy tokens, no early stop):
  hf       transformers LlamaForCausalLM.generate with its static cache (same weights)
  eager    our model, decoding.generate (StaticKVCache, one launch per op)
  fused    decoding.fast.FastGenerator without CUDA graphs: fused qkv / gate_up, fused add+RMSNorm
  graph    the same with a CUDA graph per batch size (GPU only)
  compile  the same with the decode step torch.compile'd before capture (--compile_mode)
Decode tok/s counts every generated token after the first (batch x (new_tokens - 1) / decode time).
The roofline is the measured device copy bandwidth over the bytes a step must read: every
weight once (the embedding table only one row per token) plus the KV written so far.

Every variant is checked before it is timed: on a 32-token run, teacher-forced through the
reference model (HF, no cache, whole sequence), every generated token must be the reference's
argmax or a near tie (parity.ties: bf16 random weights leave many near ties among 128K logits;
the share of positions where the reference picks the same token is reported as agreement),
and for fused/graph/compile the first steps' logits must match the reference's within the
same band of parity.ties, as max|logit - reference logit| / max|reference logit| (the error its
table measures). A variant that fails is reported WRONG and never timed; the timed run's own
tokens must then pass the same near-tie check (bf16 runs of different lengths need not be
bit-identical: cache sizes change reductions). A WRONG or FAILED variant makes the run exit 1
once its results are written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from absl import app

from bench import common
from parity.ties import TIE_BAND, check_near_ties

VARIANTS = ("hf", "eager", "fused", "graph", "compile")
_define = common.define_flag
_define("string", "preset", None, "Model shape (model/config.py). Default: llama3-8b on a GPU, tiny on a CPU.")
_define("integer", "n_layers", None, "Override the preset's layer count (default None: the preset's).")
_define("string", "dtype", None, "bf16, fp16 or fp32 (default bf16 on a GPU, fp32 on a CPU).")
_define("string", "device", "auto", "cuda, cpu or auto.")
_define("integer", "prompt_len", 128, "Prompt tokens per sequence (default 128, as the issue's goal).")
_define("integer", "new_tokens", None, "Tokens generated per sequence (default 256 on a GPU, 24 on a CPU).")
_define("list", "batch_sizes", None, "Batch sizes (default 1,2,4,8,16,32,64 on a GPU, 1,4 on a CPU).")
_define("list", "variants", None, f"Subset of {', '.join(VARIANTS)} (default: all that run here).")
_define("list", "eager_batch_sizes", ["1", "16"], "GPU batch sizes for the slow eager and fused "
                  "variants (default 1,16; a CPU runs them at every batch size).")
_define("list", "compile_batch_sizes", ["1"], "Batch sizes for compile (each compiles anew; default 1).")
_define("string", "compile_mode", "max-autotune-no-cudagraphs", "torch.compile mode for the compile variant.")
_define("boolean", "coordinate_descent", True, "Inductor coordinate-descent tuning for the compile variant "
                  "(as gpt-fast sets it; default on).")
_define("integer", "seed", 0, "Seed for weights and prompts.")
_define("integer", "profile_steps", 0, "After the variants, profile this many batch-1 decode steps of the graph "
        "variant (fused on a CPU) with torch.profiler: device time per step by kernel class (gemm, attention, "
        "norm, other) against the step's wall time, top kernels, and decode_profile.json.gz. 0: no profile.")
_define("list", "tp", ["1"], "Tensor-parallel sizes (default 1). Each size > 1 runs the graph variant on that many "
                  "spawned ranks, one GPU each (model/tp.py, NCCL inside the graphs), checked like the others; "
                  "on a CPU the fused variant over gloo (a harness check, not a speed-up).")


@dataclass(frozen=True)
class Options:
    """One run, as the flags above give it (main reads them once; tests build one directly).
    None picks the device's default, as each flag's help says."""

    preset: str | None
    n_layers: int | None
    dtype: str | None
    device: str | None
    prompt_len: int
    new_tokens: int | None
    batch_sizes: tuple[str, ...] | None
    variants: tuple[str, ...] | None
    eager_batch_sizes: tuple[str, ...] | None
    compile_batch_sizes: tuple[str, ...] | None
    compile_mode: str
    coordinate_descent: bool
    seed: int
    profile_steps: int = 0
    tp: tuple[str, ...] = ("1",)

LOGIT_STEPS = 8  # first decode steps whose logits are compared with the reference


def weight_bytes_per_token(model) -> int:
    """Bytes every decode step reads: each parameter once, the embedding table only one row."""
    total = common.weight_bytes(model)
    emb = model.model.embed_tokens.weight
    if not model.config.tie_word_embeddings:  # a tied table is read in full by lm_head
        total -= (emb.shape[0] - 1) * emb.shape[1] * emb.element_size()
    return total


def kv_bytes_per_step(config, batch: int, positions: float, dtype: torch.dtype) -> float:
    """KV bytes a step needs (keys and values at `positions` cached positions, all layers)."""
    elt = torch.tensor([], dtype=dtype).element_size()
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * positions * batch * elt


def build_hf(model, dtype, device):
    """transformers' LlamaForCausalLM holding the very same weight tensors as ours."""
    import transformers

    cfg = transformers.LlamaConfig(**model.config.to_hf_config())
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate in the target dtype (8B in fp32 would be 32 GB)
    try:
        with torch.device(device):
            hf = transformers.LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False, assign=True)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise RuntimeError(f"HF model keys differ: missing {missing[:4]}, unexpected {unexpected[:4]}")
    hf.tie_weights()
    return hf.eval()


class Reference:
    """Teacher-forced checks of a run against the reference model (no cache, whole sequence)."""

    def __init__(self, hf):
        self.hf = hf

    @torch.inference_mode()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf(tokens).logits  # (B, L, V)

    def check(self, tokens: torch.Tensor, prompt_len: int, dtype: torch.dtype, what: str,
              step_logits: list | None = None) -> dict[str, Any]:
        """Raise AssertionError unless every generated token is the reference's argmax or a near tie
        (parity.ties) and, when given, the first steps' logits are within the same band of max|logit|.
        Returns the agreement (share of argmax picks), the largest tie gap and the logit error."""
        ref = self.logits(tokens)  # (B, L, V)
        rows = ref[:, prompt_len - 1:-1]  # the reference's logits for each generated token
        agreement = float((rows.argmax(-1) == tokens[:, prompt_len:]).float().mean())
        gap = max(check_near_ties(rows[b], tokens[b, prompt_len:].tolist(), dtype, f"{what}: sequence {b}")
                  for b in range(tokens.shape[0]))
        out = {"agreement": agreement, "tie_gap": gap}
        if step_logits:
            errs = []
            for i, lg in enumerate(step_logits):
                r = ref[:, prompt_len - 1 + i].float()
                errs.append(float((lg.float() - r).abs().max() / r.abs().max()))
            out["logit_rel_err"] = err = max(errs)
            if not err <= TIE_BAND[dtype]:  # the band bounds two correct runs' logit error (parity/ties.py)
                raise AssertionError(f"{what}: logit error {err:.2e} > {TIE_BAND[dtype]:g}")
        return out


def time_hf(hf, prompt, new_tokens: int, device) -> tuple[torch.Tensor, float, float]:
    """HF generate with its static cache: (tokens, prefill s, decode s), decode from a 1-token run."""
    kw = dict(do_sample=False, cache_implementation="static", eos_token_id=None, pad_token_id=0,
              attention_mask=torch.ones_like(prompt))

    def run(n):
        common.sync(device)
        t0 = time.perf_counter()
        out = hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kw)
        common.sync(device)
        return out, time.perf_counter() - t0

    run(2)  # warm up (static cache allocation, kernels)
    _, t1 = run(1)
    out, tn = run(new_tokens)
    return out, t1, max(tn - t1, 1e-9)



def _generate(name: str, model, gen, ref: Reference, prompt, n: int, device, on_logits=None):
    """One run of a variant: (tokens (B, T + n), prefill s, decode s)."""
    from decoding.generate import generate

    if name == "hf":
        return time_hf(ref.hf, prompt, n, device)
    if name == "eager":
        r = generate(model, prompt, n)
    else:
        r = gen.generate(prompt, n, on_logits=on_logits)
    return r.tokens, r.prefill_s, r.decode_s


def run_variant(name: str, model, gen, ref: Reference, prompt, new_tokens: int, dtype, device) -> dict[str, Any]:
    """Check a short run against the reference; only if it passes, time the full run, then check its tokens."""
    B, T = prompt.shape
    row: dict[str, Any] = {"variant": name, "batch": B}
    step_logits: list = []
    n_check = min(new_tokens, 32)
    hook = None if name in ("hf", "eager") else (
        lambda i, lg: step_logits.append(lg.clone()) if i < LOGIT_STEPS else None)
    try:
        if gen is not None:
            gen.step_for(B)  # capture (and compile) outside any timing
            row["capture_s"] = gen.capture_s.get(B)
        checked, _, _ = _generate(name, model, gen, ref, prompt, n_check, device, hook)
        row.update(ref.check(checked, T, dtype, f"{name} bs{B}", step_logits or None))  # raises: never timed
        tokens, prefill_s, decode_s = _generate(name, model, gen, ref, prompt, new_tokens, device)
        timed = ref.check(tokens, T, dtype, f"{name} bs{B} timed run")  # the timed output itself
        row.update(timed_agreement=timed["agreement"], timed_tie_gap=timed["tie_gap"])
    except Exception as e:  # noqa: BLE001 - a failing variant is reported, the others go on
        row["status"] = common.failure_status(e, 300)
        return row
    row["status"] = "ok"
    row.update(prefill_ms=prefill_s * 1e3, decode_s=decode_s, tok_s=B * (new_tokens - 1) / decode_s,
               ms_per_step=decode_s / (new_tokens - 1) * 1e3)
    return row


def tp_rank(ctx, preset: str, dtype, n_layers, seed: int, prompts: dict, new_tokens: int, max_len: int) -> dict:
    """One tensor-parallel rank of the graph variant: its slices of the same random model, a graphed
    FastGenerator, per batch a 32-token checked run (first steps' logits kept) and the timed run."""
    import model as lab_model
    from decoding.fast import FastGenerator
    from model.loader import random_config

    from kernels import custom_allreduce
    from model.tp import set_all_reduce

    net = lab_model.load(random_config(preset), dtype=dtype, device=ctx.device, seed=seed, n_layers=n_layers, tp=ctx)
    torch.cuda.empty_cache()  # the whole random model it was cut from is gone
    out = {}
    comms = {"nccl": None}
    if ctx.device.type == "cuda" and custom_allreduce.available():  # decode-sized all-reduces over peer buffers; NCCL above 1 MiB
        comms["custom"] = lambda: custom_allreduce.small_message_all_reduce(
            custom_allreduce.PeerAllReduce(None, 1 << 20, ctx.device))
    for comm, make in comms.items():
        try:
            set_all_reduce(net, make() if make else None)
        except Exception as e:  # noqa: BLE001 - reported as that variant's FAILED rows
            out[comm] = common.failure_status(e, 300)
            continue
        gen = FastGenerator(net, max_batch_size=max(prompts), max_seq_len=max_len,
                            cuda_graph=ctx.device.type == "cuda")  # CPU (gloo): the fused path, a harness check
        out[comm] = {}
        for b, prompt in prompts.items():
            prompt = prompt.to(ctx.device)
            gen.step_for(b)
            logits: list = []
            checked = gen.generate(prompt, min(new_tokens, 32), on_logits=lambda i, lg: logits.append(
                lg.float().cpu()) if i < LOGIT_STEPS else None)
            timed = gen.generate(prompt, new_tokens)
            out[comm][b] = {"checked": checked.tokens.cpu(), "logits": logits, "tokens": timed.tokens.cpu(),
                            "prefill_s": timed.prefill_s, "decode_s": timed.decode_s,
                            "capture_s": gen.capture_s.get(b)}
        gen.close()
    return out


def tp_rows(tp: int, opts: Options, preset: str, dtype, prompts: dict, new_tokens: int, max_len: int,
            ref: Reference, device) -> list[dict[str, Any]]:
    """Rows of the graph variant on tp ranks, each checked against the reference like run_variant's."""
    from model.parallel import run_ranks

    base = "graph" if common.is_cuda(device) else "fused"  # what a rank runs: graphs need a GPU
    try:
        got = run_ranks(tp_rank, tp, args=(preset, dtype, opts.n_layers, opts.seed, {b: p.cpu() for b, p in
                                                                                     prompts.items()},
                                           new_tokens, max_len), device=str(device))[0]
    except Exception as e:  # noqa: BLE001 - reported as a FAILED row per batch size
        return [{"variant": f"{base}_tp{tp}", "batch": b, "tp": tp, "status": common.failure_status(e, 300)}
                for b in prompts]
    rows = []
    for comm, runs in got.items():
        name = f"{base}_tp{tp}" + ("" if comm == "nccl" else f"_{comm}")
        if isinstance(runs, str):  # the communicator could not be set up
            rows += [{"variant": name, "batch": b, "tp": tp, "status": runs} for b in prompts]
        else:
            rows += _tp_checked_rows(name, tp, runs, prompts, new_tokens, dtype, ref, device)
    return rows


def _tp_checked_rows(name: str, tp: int, runs: dict, prompts: dict, new_tokens: int, dtype, ref: Reference,
                     device) -> list[dict[str, Any]]:
    """One row per batch size of a tensor-parallel variant's runs, each checked against the reference."""
    rows = []
    for b, r in runs.items():
        row: dict[str, Any] = {"variant": name, "batch": b, "tp": tp, "capture_s": r["capture_s"]}
        T = prompts[b].shape[1]
        try:  # the ranks timed before this check ran; a run that fails it keeps no figure
            row.update(ref.check(r["checked"].to(device), T, dtype, f"{name} bs{b}",
                                 [lg.to(device) for lg in r["logits"]]))
            timed = ref.check(r["tokens"].to(device), T, dtype, f"{name} bs{b} timed run")
            row.update(timed_agreement=timed["agreement"], timed_tie_gap=timed["tie_gap"])
        except Exception as e:  # noqa: BLE001
            row["status"] = common.failure_status(e, 300)
            rows.append(row)
            continue
        row["status"] = "ok"
        row.update(prefill_ms=r["prefill_s"] * 1e3, decode_s=r["decode_s"], tok_s=b * (new_tokens - 1) / r["decode_s"],
                   ms_per_step=r["decode_s"] / (new_tokens - 1) * 1e3)
        rows.append(row)
    return rows


def main(argv: list[str]) -> None:
    """The binary: the flags, read once into Options, then run."""
    del argv
    run(common.options_from_flags(Options))


def run(opts: Options) -> None:
    """The whole benchmark: check and time every variant, write the results, then exit 1 if any
    variant was WRONG or FAILED (bench.common.exit_on_failures)."""
    import model as lab_model
    from decoding.fast import FastGenerator
    from model.config import ConfigError
    from model.loader import random_config

    device, dtype = common.device_and_dtype(opts.device, opts.dtype)
    cuda = common.is_cuda(device)
    preset = opts.preset or ("llama3-8b" if cuda else "tiny")
    new_tokens = opts.new_tokens or (256 if cuda else 24)
    batch_sizes = common.int_list(opts.batch_sizes, [1, 2, 4, 8, 16, 32, 64] if cuda else [1, 4])
    names = list(opts.variants or VARIANTS)
    for n in names:
        if n not in VARIANTS:
            raise app.UsageError(f"--variants: unknown {n!r}; expected some of {', '.join(VARIANTS)}")
    if not cuda:
        names = [n for n in names if n not in ("graph", "compile")]  # CUDA graphs need a GPU
        print("CPU run: graph and compile variants need a GPU; the fused variant runs without graphs")
    if new_tokens < 2 or opts.prompt_len < 1:
        raise app.UsageError("--new_tokens >= 2 and --prompt_len >= 1 required")
    max_len = opts.prompt_len + new_tokens
    tps = sorted({int(t) for t in opts.tp})
    if any(t < 1 for t in tps):
        raise app.UsageError(f"--tp: sizes must be >= 1, got {opts.tp}")

    dev_name = common.device_name(device)
    copy_gbs = common.measure_copy_bandwidth(device)
    try:
        model = lab_model.load(random_config(preset), dtype=dtype, device=device, seed=opts.seed,
                               n_layers=opts.n_layers)
    except ConfigError as e:
        raise app.UsageError(f"--preset/--n_layers: {e}") from None
    config = model.config
    if max_len > config.max_seq_len:
        raise app.UsageError(f"--prompt_len + --new_tokens = {max_len} exceeds the {preset} context "
                             f"{config.max_seq_len}")
    w_bytes = weight_bytes_per_token(model)
    print(f"decode on {dev_name}, {common.today()}, torch {torch.__version__}: {preset}"
          f"{' n_layers=' + str(opts.n_layers) if opts.n_layers else ''} random weights "
          f"{common.dtype_name(dtype)}, {w_bytes / 1e9:.2f} GB read per step, prompt {opts.prompt_len}, "
          f"{new_tokens} new tokens; copy bandwidth {copy_gbs:,.0f} GB/s", flush=True)
    try:
        hf = build_hf(model, dtype, device)
    except ImportError:
        raise SystemExit("error: bench.decode checks against transformers; pip install transformers")
    ref = Reference(hf)
    g = torch.Generator().manual_seed(opts.seed + 1)
    prompts = {b: torch.randint(2, config.vocab_size, (b, opts.prompt_len), generator=g).to(device)
               for b in batch_sizes}
    eager_bs = set(common.int_list(opts.eager_batch_sizes, [1, 16]))
    compile_bs = set(common.int_list(opts.compile_batch_sizes, [1]))

    rows: list[dict[str, Any]] = []

    def record(row):
        b = row["batch"]
        row.setdefault("tp", 1)
        kv = kv_bytes_per_step(config, b, opts.prompt_len + new_tokens / 2, dtype)
        row["roofline_tok_s"] = row["tp"] * b * copy_gbs * 1e9 / (w_bytes + kv)  # tp GPUs each read 1/tp
        if row.get("tok_s"):
            row["pct_roofline"] = 100 * row["tok_s"] / row["roofline_tok_s"]
            row["achieved_gbs"] = row["tok_s"] / b * (w_bytes + kv) / 1e9
        rows.append(row)
        print("  " + ", ".join(f"{k}={common.fmt(v)}" for k, v in row.items()), flush=True)

    # hf and eager use the unfused weights; graph and compile fuse them (HF keeps its own copies).
    for name in [n for n in ("hf", "eager") if n in names]:
        for b in batch_sizes:
            if name == "eager" and cuda and b not in eager_bs:
                continue
            record(run_variant(name, model, None, ref, prompts[b], new_tokens, dtype, device))
    if opts.coordinate_descent:
        import torch._inductor.config as inductor_config
        inductor_config.coordinate_descent_tuning = True
    for name in [n for n in ("fused", "graph", "compile") if n in names]:
        gen = FastGenerator(model, max_batch_size=max(batch_sizes), max_seq_len=max_len,
                            cuda_graph=name != "fused",
                            compile_mode=opts.compile_mode if name == "compile" else None)
        for b in batch_sizes:
            if (name == "compile" and b not in compile_bs) or (name == "fused" and cuda and b not in eager_bs):
                continue
            record(run_variant(name, model, gen, ref, prompts[b], new_tokens, dtype, device))
        gen.close()
        if name == "compile":
            torch._dynamo.reset()
    for tp in [t for t in tps if t > 1]:
        for row in tp_rows(tp, opts, preset, dtype, prompts, new_tokens, max_len, ref, device):
            record(row)

    out_dir = common.results_dir("decode", device)
    profile = None
    if opts.profile_steps > 0:
        profile = profile_decode(model, prompts[min(batch_sizes)][:1], opts.profile_steps, cuda, max_len, out_dir)

    ok = [r for r in rows if r["status"] == "ok"]
    summary = [{"name": f"decode/{preset}/{r['variant']}/bs{r['batch']}/tok_s", "value": r["tok_s"],
                "unit": "tok/s"} for r in ok]
    for r in ok:  # tensor-parallel speed-up over the one-device graph (CPU: fused) variant at the same batch
        one = next((o for o in ok if o["variant"] == ("graph" if cuda else "fused") and o["batch"] == r["batch"]),
                   None)
        if r["tp"] > 1 and one:
            r["speedup_vs_tp1"] = r["tok_s"] / one["tok_s"]
            summary.append({"name": f"decode/{preset}/{r['variant']}/bs{r['batch']}/speedup_vs_tp1",
                            "value": r["speedup_vs_tp1"], "unit": "x"})
    summary.append({"name": "decode/copy_bandwidth", "value": copy_gbs, "unit": "GB/s"})
    for b in batch_sizes:
        ours = [r for r in ok if r["batch"] == b and r["variant"] != "hf"]
        hf_row = next((r for r in ok if r["batch"] == b and r["variant"] == "hf"), None)
        if ours:
            best = max(ours, key=lambda r: r["tok_s"])
            summary.append({"name": f"decode/{preset}/best_ours/bs{b}/pct_roofline",
                            "value": best["pct_roofline"], "unit": "%", "variant": best["variant"]})
            if hf_row:
                summary.append({"name": f"decode/{preset}/best_ours_vs_hf/bs{b}",
                                "value": best["tok_s"] / hf_row["tok_s"], "unit": "x", "variant": best["variant"]})
    cols = ["variant", "tp", "batch", "status", "tok_s", "speedup_vs_tp1", "ms_per_step", "pct_roofline", "achieved_gbs", "prefill_ms",
            "agreement", "timed_agreement", "logit_rel_err", "capture_s"]
    title = (f"bench.decode: {preset} {common.dtype_name(dtype)} on {dev_name}, {common.today()} "
             f"(roofline: {copy_gbs:,.0f} GB/s copy over {w_bytes / 1e9:.2f} GB weights + KV)")
    common.print_table(rows, cols, title=title)
    if profile:
        summary += [{"name": f"decode/{preset}/profile/bs1/{r['class']}_us_per_step", "value": r["us_per_step"],
                     "unit": "us"} for r in profile["classes"]]
        summary.append({"name": f"decode/{preset}/profile/bs1/wall_ms_per_step", "value": profile["wall_ms"],
                        "unit": "ms"})
    paths = common.write_results(out_dir, "decode", rows, summary, command=common.command_line("decode"),
                                 device=dev_name)
    series = {}
    base = "graph" if cuda else "fused"
    names = names + [v for t in tps if t > 1 for v in (f"{base}_tp{t}", f"{base}_tp{t}_custom")]
    for name in names:
        pts = sorted((r["batch"], r["tok_s"]) for r in ok if r["variant"] == name)
        if pts:
            series[name] = ([p[0] for p in pts], [p[1] for p in pts])
    roof = sorted({(r["batch"], r["roofline_tok_s"]) for r in rows})
    series["roofline"] = ([p[0] for p in roof], [p[1] for p in roof])
    pct = {name: ([r["batch"] for r in ok if r["variant"] == name],
                  [r["pct_roofline"] for r in ok if r["variant"] == name]) for name in names}
    common.plot_panels(out_dir / "decode.png", [
        {"title": "decode tokens/s (all sequences)", "series": series, "xlabel": "batch", "ylabel": "tok/s",
         "logx": True, "logy": True},
        {"title": "% of the copy-bandwidth roofline", "series": pct, "xlabel": "batch", "ylabel": "%",
         "logx": True}], title=title)
    print("wrote " + ", ".join(str(p) for p in paths.values()) + f", {out_dir / 'decode.png'}")
    common.exit_on_failures("bench.decode", [f"{r['variant']}@{r['batch']}" for r in rows
                                             if common.is_failure(r["status"])])


def profile_decode(model, prompt, steps: int, cuda: bool, max_len: int, out_dir) -> dict[str, Any]:
    """Profile `steps` batch-1 decode steps (graph replays on a GPU, the fused eager step on a CPU):
    print device time per kernel class against the step's wall time (the rest is launch gaps and
    host work) and the top kernels; write decode_profile.json.gz. Returns the figures."""
    import time

    from torch.profiler import ProfilerActivity, profile

    from bench import profiling
    from decoding.fast import FastGenerator

    gen = FastGenerator(model, max_batch_size=1, max_seq_len=max_len, cuda_graph=cuda)
    try:
        step = gen.step_for(1)
        with torch.inference_mode():
            gen.generate(prompt, 2)  # fills the cache past the prompt; the steps below read it
            ids = prompt[:, -1]
            pos = prompt.shape[1]
            for _ in range(3):
                step(ids, pos)
            common.sync(prompt.device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step(ids, pos)
            common.sync(prompt.device)
            wall_ms = (time.perf_counter() - t0) / steps * 1e3
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=activities) as prof:
                for _ in range(steps):
                    step(ids, pos)
                common.sync(prompt.device)
    finally:
        gen.close()
    classes = profiling.kernel_classes(prof, steps) if cuda else []
    device_us = sum(r["us_per_step"] for r in classes)
    print(f"profile: {steps} batch-1 decode steps ({'graph replay' if cuda else 'fused eager, CPU'}): wall "
          f"{wall_ms:.3f} ms per step" + (f", kernels {device_us / 1e3:.3f} ms ({100 * device_us / 1e3 / wall_ms:.1f}%"
                                         f" of the wall; the rest is gaps between kernels and host work)"
                                         if cuda else ""))
    for r in classes:
        print(f"  {r['class']:<10} {r['us_per_step']:9.1f} us/step  {r['share_pct']:5.1f}% of kernel time  "
              f"{r['kernels_per_step']:.0f} kernels")
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=60))
    trace = profiling.save_trace(prof, out_dir, "decode_profile")
    print(f"profile: Chrome trace {trace}")
    return {"wall_ms": wall_ms, "classes": classes, "trace": trace}


if __name__ == "__main__":
    app.run(main)

"""Measure each training optimization's effect on tokens/s and peak memory.

    python3 -m bench.train_ablation --device cuda --steps 60           # on the GPU
    python3 -m bench.train_ablation --preset micro --steps 4 --seq_len 64 --batch_size 4   # CPU smoke

Runs the same preset for --steps optimizer steps under each variant (fp32 eager,
bf16 autocast, + torch.compile, + activation checkpointing, gradient accumulation
at the same tokens per step) and writes train_ablation.{csv,json,png} and a
markdown table under bench/results/<device>-<date>/. Tokens/s is the last
--log_every window, so compile time is excluded (it is reported on its own).
Every run also checks its loss went down: a variant that does not learn fails.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile

from absl import app

from bench import common
from train.loop import TrainConfig, train

# Flags other bench modules define too (--preset, --device, --batch_size, ...): defined once per
# process, so pytest can import the bench modules side by side (bench.common.define_flag).
_define = common.define_flag
_define("string", "preset", "lab-small", "Model preset to train under every variant (default lab-small).")
_define("integer", "steps", 60, "Optimizer steps per variant (default 60; tok/s is the last 20-step window).")
_define("integer", "seq_len", 512, "Tokens per window (default 512, as the shipped models).")
_define("integer", "batch_size", 32, "Windows per step (default 32); the grad_accum variant uses batch/4 x 4.")
_define("string", "device", "auto", "cpu, cuda or auto.")
_define("list", "variants", None, "Subset of variants to run (default all): " + ", ".join(
    ["fp32", "amp", "amp+compile", "amp+compile+ckpt", "amp+compile+accum4"]))


@dataclasses.dataclass(frozen=True)
class Options:
    """One run, as the flags above give it (main reads them once; tests build one directly)."""

    preset: str
    steps: int
    seq_len: int
    batch_size: int
    device: str
    variants: tuple[str, ...] | None

VARIANTS = {
    "fp32": dict(),
    "amp": dict(amp=True),
    "amp+compile": dict(amp=True, compile=True),
    "amp+compile+ckpt": dict(amp=True, compile=True, checkpoint_activations=True),
    "amp+compile+accum4": dict(amp=True, compile=True, grad_accum=4),
}


def run_variant(name: str, base: TrainConfig) -> dict:
    """Train one variant in a scratch folder; return its row (tok/s, peak GiB, losses)."""
    over = dict(VARIANTS[name])
    if "grad_accum" in over:
        over["batch_size"] = max(1, base.batch_size // over["grad_accum"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(base, out_dir=tmp, keep_best=False, **over)
        s = train(cfg)
    first = s["evals"][0]["heldout_loss"] if s["evals"] else None
    return {"variant": name, "amp": cfg.amp, "compile": cfg.compile,
            "checkpoint_activations": cfg.checkpoint_activations, "batch_size": cfg.batch_size,
            "grad_accum": cfg.grad_accum, "tokens_per_step": cfg.batch_size * cfg.seq_len * cfg.grad_accum,
            "tokens_per_s": s["tokens_per_s"], "peak_memory_gib": s["peak_memory_gib"],
            "compile_seconds": s["compile_seconds"], "first_eval_loss": first,
            "final_train_loss": s["final_train_loss"], "final_heldout_loss": s["final_heldout_loss"],
            "device": s["device"]}


def main(argv: list[str]) -> None:
    """The binary: the flags, read once into Options, then run."""
    del argv
    run(common.options_from_flags(Options))


def run(opts: Options) -> None:
    """Train every variant, check it learned (else exit with one `error: ...` line), write the rows."""
    names = list(opts.variants or VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown --variants {unknown}; choose from {list(VARIANTS)}")
    log_every = max(1, opts.steps // 3)
    base = TrainConfig(preset=opts.preset, seq_len=opts.seq_len, batch_size=opts.batch_size,
                       max_steps=opts.steps, warmup_steps=max(1, opts.steps // 5),
                       eval_every=max(1, opts.steps // 3), eval_tokens=16 * opts.seq_len,
                       save_every=10**9, log_every=log_every, device=opts.device, progress=False)
    rows = []
    for name in names:
        print(f"== {name}", flush=True)
        row = run_variant(name, base)
        if not (row["final_heldout_loss"] < row["first_eval_loss"] or opts.steps < 6):
            sys.exit(f"error: variant {name} did not learn (held-out loss {row['first_eval_loss']:.3f} -> "
                     f"{row['final_heldout_loss']:.3f}); its timing is not reported")
        rows.append(row)
    ref = rows[0]
    for r in rows:
        r["speedup_vs_first"] = r["tokens_per_s"] / ref["tokens_per_s"] if ref["tokens_per_s"] else None
    device = rows[0]["device"]
    out = common.results_dir("train_ablation", device="cuda" if "cuda" in opts.device or
                             (opts.device == "auto" and common.has_cuda()) else "cpu")
    cols = ["variant", "batch_size", "grad_accum", "tokens_per_s", "speedup_vs_first", "peak_memory_gib",
            "compile_seconds", "final_heldout_loss"]
    common.print_table(rows, cols)
    cmd = common.command_line("train_ablation")
    summary = [{"name": f"train_ablation/{opts.preset}/{r['variant']}/tokens_per_s", "value": r["tokens_per_s"],
                "unit": "tok/s"} for r in rows]
    common.write_results(out, "train_ablation", rows, summary, command=cmd, device=device)
    xs = list(range(len(rows)))
    common.plot_panels(out / "train_ablation.png", [
        {"title": f"{opts.preset}: tokens/s per variant (x = {', '.join(r['variant'] for r in rows)})",
         "series": {"tokens/s": (xs, [r["tokens_per_s"] for r in rows])}, "xlabel": "variant", "ylabel": "tok/s"},
        {"title": "peak GPU memory", "series": {"GiB": (xs, [r["peak_memory_gib"] for r in rows])},
         "xlabel": "variant", "ylabel": "GiB"}], title=f"train ablation on {device}")
    print(f"wrote {out}/train_ablation.csv, .json, .png")


if __name__ == "__main__":
    app.run(main)

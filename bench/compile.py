"""Eager against torch.compile, AOTInductor and ONNX Runtime on one decoder step, prefill and decode.

Question: what does each way of compiling the model buy per step (decode: one token
against a static KV cache; prefill: a prompt of --prefill_len tokens), and what does
it cost up front (export / compile seconds, reported apart from step latency)?

  python3 -m bench.compile                                   # embedded tiny model
  bazel run //bench:compile -- --variants=eager,default,max-autotune --prefill_len=512
  bazel run //bench:compile -- --checkpoint ~/Llama-3.2-1B --dtype bf16

The step is export/kv_step.py's KVCacheStep (the graph AOTI and ONNX export): ids
(1, T), input_pos (T,), k/v caches (n_layers, 1, n_kv_heads, S, head_dim) in, logits
and the written caches out (functional: each call returns new cache tensors, so every
variant pays the same cache copy). Decode reads a cache that eager's prefill filled.

Variants, each checked against eager's logits (prefill and decode) before it is timed;
one that disagrees is reported WRONG and never timed, and a WRONG or FAILED variant makes
the run exit 1 once its results are written (a variant skipped here is not a failure):
  eager            KVCacheStep in plain PyTorch: the baseline
  default          torch.compile(step, fullgraph=True, dynamic=False)
  reduce-overhead  the same with CUDA graphs (on a CPU no graphs: inductor code only)
  max-autotune     the same, autotuning matmul/conv templates (slow to compile)
  aoti             AOTInductor packages of export/aoti_package.py (prefill.pt2 with a
                   dynamic T, decode.pt2), loaded with aoti_load_package
  onnxruntime      export/onnx_step.py's graph in onnxruntime's CPU provider (fp32, CPU)
Compile time: torch.compile's is the first call of each phase (dynamo + inductor);
AOTI's is torch.export plus the package compile of each phase; ONNX's is the export
plus the session build. Caches of inductor (~/.cache or /tmp/torchinductor_$USER)
make a repeated run's compile faster: the first run on a machine is the cold figure.

Tolerance (check_close, |got - want| <= rtol * (1 + |want|) on logits): fp32 1e-4,
since compiled kernels fuse and reorder reductions (matmul blocking, decomposed
SDPA) and the few-ulp differences compound over the layers, yet a wrong mask,
position or cache write moves logits by 1e-2 or more; bf16 2e-2, since bf16 keeps 8
mantissa bits (0.4% per rounding) and inductor keeps fp32 between fused ops where
eager rounds to bf16 after each one. fp16 1e-2 (11 bits).

Timing (bench.common.time_fn): CUDA events around one call after an L2 flush on a
GPU, perf_counter on a CPU; p10/p50/p90 over --iters calls after --warmup calls.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from absl import app

from bench import common

VARIANTS = ("eager", "default", "reduce-overhead", "max-autotune", "aoti", "onnxruntime")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# max-autotune benchmarks many kernel configurations per matmul: minutes on 2 CPU cores.
DEFAULT_CPU = ("eager", "default", "reduce-overhead", "aoti", "onnxruntime")
PHASES = ("decode", "prefill")

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}  # why: module docstring

# Flags other bench modules define too (bench.kernels, bench.flash_attention,
# bench.perplexity), with the same meaning: defined once per process, so pytest can
# import every bench module side by side. All of ours allow override, so a module
# imported later may redefine any of them without a DuplicateFlagError.
_define = common.define_flag


_define("list", "variants", None, "Variants to run (default: all on a GPU; on a CPU " + ", ".join(DEFAULT_CPU)
        + ", since max-autotune takes minutes there). Of: " + ", ".join(VARIANTS))
_define("string", "checkpoint", None, "HF-layout checkpoint directory, or a model.load name (lab-small, a "
        "preset). Default None: the embedded tiny model (model/embedded.py), so the benchmark runs anywhere.")
_define("string", "dtype", None, "Element type: bf16, fp16, fp32. Default bf16 on a GPU (what Llama runs in), fp32 on "
        "a CPU (CPU bf16 matmuls are slow emulations; onnxruntime runs fp32 only).")
_define("string", "device", None, "cuda, cuda:N or cpu. Default (or auto) cuda when a GPU is visible, else cpu.")
_define("integer", "prefill_len", None, "Prompt length of the prefill step, tokens. Default 512 on a GPU (a typical "
        "chat prompt), 16 on a CPU (seconds, not minutes).")
_define("integer", "cache_len", None, "Static KV cache length S, tokens (baked into every compiled graph). Default "
        "2048 on a GPU (prompt plus a long answer), 64 on a CPU; at most the model context.")
_define("integer", "warmup", None, "Untimed calls per variant and phase after the checked call, count. Default 10 "
        "on a GPU (clocks settle), 3 on a CPU.")
_define("integer", "iters", None, "Timed calls per variant and phase, count. Default 50 on a GPU (stable p10/p90), "
        "20 on a CPU.")
_define("integer", "seed", 0, "Seed of the prompt ids.")
_define("boolean", "plot", True, "Write compile.png (p50 bars with p10-p90 whiskers per phase, compile seconds).")
_define("string", "work_dir", None, "Where AOTI packages and the ONNX file go. Default: a fresh temporary folder, "
        "removed at exit.")


@dataclass(frozen=True)
class Options:
    """One run, as the flags above give it (main reads them once; tests build one directly).
    None picks the device's default, as each flag's help says."""

    variants: tuple[str, ...] | None
    checkpoint: str | None
    dtype: str | None
    device: str | None
    prefill_len: int | None
    cache_len: int | None
    warmup: int | None
    iters: int | None
    seed: int
    plot: bool
    work_dir: str | None


# ----------------------------------------------------------------------------
# The step, its inputs, the variants
# ----------------------------------------------------------------------------


@dataclass
class Case:
    """The model, the two phases' inputs and eager's outputs (the reference)."""

    model: torch.nn.Module
    device: str
    dtype: torch.dtype
    prefill_len: int
    cache_len: int
    work_dir: str
    inputs: dict[str, tuple] = field(default_factory=dict)  # phase -> (ids, pos, k, v)
    reference: dict[str, torch.Tensor] = field(default_factory=dict)  # phase -> logits (fp32, CPU)


@dataclass
class Built:
    """A variant ready to run: phase -> step callable, and its up-front seconds by stage."""

    steps: dict[str, Callable]
    seconds: dict[str, float]  # e.g. {"export": 3.1, "compile decode": 20.5, "compile prefill": 22.0}
    note: str = ""


def make_case(checkpoint: str | None, device: str, dtype: torch.dtype, prefill_len: int | None,
              cache_len: int | None, seed: int, work_dir: str) -> Case:
    """Load the model, build both phases' inputs and run eager once on each (the reference).

    prefill_len / cache_len None: the device's default (GPU 512 / 2048, CPU 16 / 64), within
    the model's context (the embedded model's is 256)."""
    import model as lab_model
    from export.kv_step import KVCacheStep, empty_caches

    try:
        model = lab_model.load(checkpoint or "embedded", dtype=dtype, device=device)
    except ValueError as e:  # CheckpointError, ConfigError: one line
        raise app.UsageError(f"--checkpoint: {e}") from None
    if cache_len is None or prefill_len is None:  # defaults, bounded by this model's context
        cpu = not common.is_cuda(device)
        cache_len = cache_len or min(64 if cpu else 2048, model.config.max_seq_len)
        prefill_len = prefill_len or min(16 if cpu else 512, cache_len // 2)
    if cache_len > model.config.max_seq_len:
        raise app.UsageError(f"--cache_len {cache_len} exceeds the model context {model.config.max_seq_len}")
    if not 2 <= prefill_len < cache_len:
        raise app.UsageError(f"--prefill_len must be in [2, --cache_len): got {prefill_len}, cache_len {cache_len}")
    model.setup_caches(1, cache_len)
    case = Case(model, device, dtype, prefill_len, cache_len, work_dir)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, prefill_len), generator=g).to(device)
    k, v = empty_caches(model, 1, cache_len)
    k, v = k.to(device), v.to(device)
    case.inputs["prefill"] = (ids, torch.arange(prefill_len, device=device), k, v)
    step = KVCacheStep(model).eval()
    with torch.no_grad():
        logits, k1, v1 = step(*case.inputs["prefill"])
        nxt = logits[:, -1:].argmax(-1)  # (1, 1): the greedy next token
        case.inputs["decode"] = (nxt, torch.tensor([prefill_len], device=device), k1, v1)
        case.reference["prefill"] = logits.float().cpu()
        case.reference["decode"] = step(*case.inputs["decode"])[0].float().cpu()
    return case



def build_eager(case: Case) -> Built:
    from export.kv_step import KVCacheStep

    step = KVCacheStep(case.model).eval()
    return Built({p: step for p in PHASES}, {})


def build_torch_compile(case: Case, mode: str) -> Built:
    """torch.compile(mode); the first call of each phase compiles its graph and is timed."""
    from export.kv_step import KVCacheStep

    torch._dynamo.reset()  # no graphs of an earlier variant: this one's compile is its own
    compiled = torch.compile(KVCacheStep(case.model).eval(), mode=mode, fullgraph=True, dynamic=False)
    cuda_graphs = mode == "reduce-overhead" and common.is_cuda(case.device)

    def call(*args):
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # outputs of the last replay may be overwritten
        return compiled(*args)

    seconds = {}
    with torch.no_grad():
        for phase in PHASES:
            t0 = time.perf_counter()
            call(*case.inputs[phase])
            common.sync(case.device)
            seconds[f"compile {phase}"] = time.perf_counter() - t0
    note = "no CUDA graphs on a CPU" if mode == "reduce-overhead" and not cuda_graphs else ""
    return Built({p: call for p in PHASES}, seconds, note)


def build_aoti(case: Case) -> Built:
    """export/aoti_package.py's two packages on the case's device (its compile is timed there). On
    CUDA they are first loaded in a child process (probe_load): a load that crashes there is this
    variant's FAILED row, and the other variants still run."""
    from export.aoti_package import AOTIRunner, compile_packages, probe_load

    out_dir = os.path.join(case.work_dir, "aoti")
    t = compile_packages(case.model, out_dir, case.cache_len)["times"]
    if common.is_cuda(case.device):  # a crashing load (the H200's torch 2.11) would take the benchmark with it
        why = probe_load(out_dir)
        if why:
            raise RuntimeError(why)
    runner = AOTIRunner(out_dir)
    seconds = {"export": t["export_s"], "compile decode": t["compile_decode_s"],
               "compile prefill": t["compile_prefill_s"]}
    return Built({"prefill": runner.prefill, "decode": runner.decode}, seconds)


def build_onnxruntime(case: Case) -> Built:
    """export/onnx_step.py's graph in an onnxruntime session, each phase's inputs bound once."""
    from export.onnx_step import OrtStep, export_onnx

    path = os.path.join(case.work_dir, "step.onnx")
    t0 = time.perf_counter()
    export_onnx(case.model, path, case.cache_len)
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ort_step = OrtStep(path)
    session_s = time.perf_counter() - t0
    return Built({p: ort_step.bind(*case.inputs[p]) for p in PHASES}, {"export": export_s, "session": session_s})


# name -> builder(case) -> Built. Tests replace entries.
BUILDERS: dict[str, Callable[[Case], Built]] = {
    "eager": build_eager,
    **{mode: (lambda case, mode=mode: build_torch_compile(case, mode)) for mode in COMPILE_MODES},
    "aoti": build_aoti,
    "onnxruntime": build_onnxruntime,
}


def unavailable(name: str, device: str, dtype: torch.dtype) -> str | None:
    """Why `name` cannot run here (None when it can)."""
    if name not in VARIANTS:
        return f"unknown variant (expected one of {', '.join(VARIANTS)})"
    if name == "onnxruntime":
        from export.onnx_step import unavailable as onnx_unavailable

        return onnx_unavailable(dtype, device)
    return None


def select_variants(requested: list[str] | None, device: str, dtype: torch.dtype) -> tuple[list[str], list[tuple[str, str]]]:
    """(variants to run, [(variant, why skipped)]); eager always runs first: it is the baseline."""
    cpu = not common.is_cuda(device)
    names = list(requested) if requested else list(DEFAULT_CPU if cpu else VARIANTS)
    skipped = []
    if not requested and cpu:
        skipped += [(n, "slow to compile on a CPU: name it in --variants to run it") for n in VARIANTS
                    if n not in names]
    run = []
    for name in names:
        why = unavailable(name, device, dtype)
        if why:
            skipped.append((name, why))
        elif name not in run:
            run.append(name)
    if "eager" not in run:
        run.insert(0, "eager")
    else:
        run.remove("eager")
        run.insert(0, "eager")
    return run, skipped


# ----------------------------------------------------------------------------
# Check, then time
# ----------------------------------------------------------------------------


def _logits(out: Any) -> torch.Tensor:
    logits = out[0] if isinstance(out, (tuple, list)) else out
    return torch.as_tensor(logits).detach()


def run_variant(case: Case, name: str, warmup: int, iters: int) -> list[dict[str, Any]]:
    """Rows of `name` (one per phase): built, checked on both phases, then timed if both agree."""
    base = {"variant": name, "dtype": common.dtype_name(case.dtype), "device": case.device}
    try:
        built = BUILDERS[name](case)
    except Exception as e:  # noqa: BLE001 - a variant that fails to build is a result, not a crash
        return [{**base, "phase": p, "status": common.failure_status(e, 230)} for p in PHASES]
    seconds = {k: round(v, 3) for k, v in built.seconds.items()}
    rows, errors = [], {}
    with torch.no_grad():
        for phase in PHASES:
            got = _logits(built.steps[phase](*case.inputs[phase])).to(torch.float32).cpu()
            common.sync(case.device)
            want = case.reference[phase]
            err = float((got - want).abs().max()) if got.shape == want.shape else float("nan")
            try:
                common.check_close(got.to(case.dtype), want, TOL, what=f"{name} {phase} logits")
                errors[phase] = (err, None)
            except AssertionError as e:
                errors[phase] = (err, str(e))
        wrong = [msg for _, msg in errors.values() if msg]
        for phase in PHASES:
            row = {**base, "phase": phase, "max_abs_err": errors[phase][0],
                   "compile_s": seconds.get(f"compile {phase}"),
                   "setup": ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items())}
            if wrong:
                row["status"] = "WRONG: " + "; ".join(wrong)  # never timed
            else:
                row["status"] = "ok" + (f" ({built.note})" if built.note else "")
                step, args = built.steps[phase], case.inputs[phase]
                t = common.time_fn(lambda: step(*args), case.device, warmup=warmup, iters=iters)
                row.update({"p10_us": t["p10"], "p50_us": t["p50"], "p90_us": t["p90"]})
            rows.append(row)
    for row in rows:
        row["seconds"] = seconds
    return rows


def run_all(case: Case, names: list[str], warmup: int, iters: int) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        t0 = time.perf_counter()
        rows += run_variant(case, name, warmup, iters)
        print(f"  done {name} ({time.perf_counter() - t0:.1f} s)", flush=True)
    eager = {r["phase"]: r.get("p50_us") for r in rows if r["variant"] == "eager"}
    for r in rows:
        if r.get("p50_us") and eager.get(r["phase"]):
            r["speedup"] = eager[r["phase"]] / r["p50_us"]
    return rows


def summary_records(rows: list[dict[str, Any]], tokens: dict[str, int]) -> list[dict[str, Any]]:
    """"compile/<phase>/<variant> p50 us" (p10, p90 too), "compile/<phase>/<variant> compile s",
    "compile/<variant> export s" (and "session s" for onnxruntime)."""
    out = []
    done = set()
    for r in rows:
        v, phase = r["variant"], r["phase"]
        extra = {"dtype": r["dtype"], "tokens": tokens[phase]}
        if "p50_us" in r:
            for q in ("p10", "p50", "p90"):
                out.append({"name": f"compile/{phase}/{v} {q} us", "value": r[f"{q}_us"], "unit": "us", **extra})
        elif not r["status"].startswith("ok"):
            out.append({"name": f"compile/{phase}/{v} status", "value": r["status"], "unit": "", **extra})
        if r.get("compile_s") is not None:
            out.append({"name": f"compile/{phase}/{v} compile s", "value": r["compile_s"], "unit": "s", **extra})
        for stage, sec in r.get("seconds", {}).items():
            if not stage.startswith("compile ") and (v, stage) not in done:
                done.add((v, stage))
                out.append({"name": f"compile/{v} {stage} s", "value": sec, "unit": "s", "dtype": r["dtype"]})
    return out


def plot(path: Path, rows: list[dict[str, Any]], title: str) -> Path:
    """Three panels: decode and prefill p50 bars (p10-p90 whiskers), up-front seconds stacked by stage."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for ax, phase in zip(axes, PHASES):
        by = {r["variant"]: r for r in rows if r["phase"] == phase}
        ys = [by[n].get("p50_us") or 0.0 for n in names]
        lo = [max(0.0, y - (by[n].get("p10_us") or y)) for n, y in zip(names, ys)]
        hi = [max(0.0, (by[n].get("p90_us") or y) - y) for n, y in zip(names, ys)]
        ax.bar(names, ys, yerr=[lo, hi], capsize=3, color="tab:blue")
        for i, n in enumerate(names):
            if "p50_us" not in by[n]:
                ax.annotate(by[n]["status"].split(":")[0], (i, 0), ha="center", va="bottom", fontsize=7, color="red")
        ax.set_title(f"{phase} step latency, p50 (p10-p90)", fontsize=9)
        ax.set_ylabel("us")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    ax = axes[2]
    stages = list(dict.fromkeys(s for r in rows for s in r.get("seconds", {})))
    bottom = [0.0] * len(names)
    secs = {r["variant"]: r.get("seconds", {}) for r in rows}
    for stage in stages:
        vals = [secs[n].get(stage, 0.0) for n in names]
        ax.bar(names, vals, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title("export / compile time (one-off)", fontsize=9)
    ax.set_ylabel("s")
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    if stages:
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


COLUMNS = [("variant", "variant"), ("phase", "phase"), ("status", "status"), ("p10_us", "p10 us"),
           ("p50_us", "p50 us"), ("p90_us", "p90 us"), ("speedup", "vs eager"), ("compile_s", "compile s"),
           ("max_abs_err", "max|err|"), ("setup", "up-front")]


def main(argv: list[str]) -> None:
    """The binary: the flags, read once into Options, then run."""
    del argv
    run(common.options_from_flags(Options))


def run(opts: Options) -> None:
    """The whole benchmark: check and time every variant, write the results, then exit 1 if any
    variant was WRONG or FAILED (bench.common.exit_on_failures)."""
    device, dtype = common.device_and_dtype(opts.device, opts.dtype)
    cpu = not common.is_cuda(device)
    warmup = opts.warmup if opts.warmup is not None else (3 if cpu else 10)
    iters = opts.iters if opts.iters is not None else (20 if cpu else 50)
    for name in opts.variants or []:
        if name not in VARIANTS:
            raise app.UsageError(f"--variants: unknown {name!r}; expected some of {', '.join(VARIANTS)}")
    names, skipped = select_variants(opts.variants, device, dtype)

    dev_name = common.device_name(device)
    out_dir = common.results_dir("compile", device)
    for name, why in skipped:
        print(f"skipped {name}: {why}")
    with tempfile.TemporaryDirectory(prefix="lab_bench_compile_") as tmp:
        work_dir = opts.work_dir or tmp
        case = make_case(opts.checkpoint, device, dtype, opts.prefill_len, opts.cache_len, opts.seed, work_dir)
        prefill_len, cache_len = case.prefill_len, case.cache_len
        print(f"compile on {dev_name}, {common.today()}, torch {torch.__version__}; "
              f"{opts.checkpoint or 'embedded tiny model'}, {common.dtype_name(dtype)}, "
              f"prefill {prefill_len} tokens, decode 1 token at position {prefill_len}, cache {cache_len}")
        rows = run_all(case, names, warmup, iters)
    rows += [{"variant": n, "phase": p, "dtype": common.dtype_name(dtype), "device": device,
              "status": f"skipped: {why}"} for n, why in skipped for p in PHASES]
    rows.sort(key=lambda r: (PHASES.index(r["phase"]), r["variant"] != "eager"))
    title = f"bench.compile: {opts.checkpoint or 'embedded'} {common.dtype_name(dtype)} on {dev_name}, {common.today()}"
    common.print_table(rows, COLUMNS, title=title)
    tokens = {"decode": 1, "prefill": prefill_len}
    csv_rows = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    paths = common.write_results(out_dir, "compile", csv_rows, summary_records(rows, tokens),
                                 command=common.command_line("compile"), device=dev_name)
    if opts.plot:
        paths["png"] = plot(out_dir / "compile.png", [r for r in rows if not r["status"].startswith("skipped")],
                            title)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    common.exit_on_failures("bench.compile", sorted({r["variant"] for r in rows if common.is_failure(r["status"])}))


if __name__ == "__main__":
    app.run(main)

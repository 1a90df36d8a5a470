"""RMSNorm, fused add + RMSNorm and SiLU-and-mul: ours against every alternative installed.

Question: how close do our kernels (`kernels.ops`, CUDA and Triton faces) come to the
copy bandwidth, from decode (a few rows) to prefill (tens of thousands), and does
anything installed beat them?

  python3 -m bench.kernel_ops                    # GPU: full sweep; CPU: --quick
  bazel run //bench:kernels -- --ops=rms_norm --dtypes=bf16,fp16 --m=1,8192

(The file is kernel_ops.py, not kernels.py: a script's folder comes first on sys.path, where a
bench/kernels.py would hide the `kernels` package. The Bazel target keeps the name `kernels`.)

Variants, all checked against an fp32 reference before they are timed (a variant
that disagrees is reported WRONG and never timed; the run then exits 1 after writing its results):
  cuda, triton   ours: kernels.ops.<op>(..., backend=...), if available_backends() has it
  eager          kernels.ops.<op>(..., backend="torch"), the plain PyTorch reference
  compile        torch.compile(eager), dynamic=False, compiled per shape (time shown apart)
  F.rms_norm     torch.nn.functional.rms_norm (norms only)
  liger          Liger-Kernel's Triton kernels, if importable
  flashinfer     FlashInfer's CUDA kernels, if importable

Bytes moved per call (the GB/s numerator), E = element size:
  rms_norm            M*H*E read + M*H*E written + H*E weight
  fused_add_rms_norm  2*M*H*E read (x, residual) + 2*M*H*E written (residual, out) + H*E
  silu_and_mul        2*M*I*E read + M*I*E written
Roofline: a 1 GiB device-to-device copy measured in the same run (read + write).

Timing (bench.common.time_fn): CUDA events around one call, a 256 MB L2 flush
before each, p10/p50/p90 over --iters calls. fused_add_rms_norm updates its
residual in place, so each iteration first restores x and residual from pristine
copies (untimed, before the flush). Decode shapes (M <= GRAPH_MAX_M rows) on a GPU
are timed as a CUDA-graph replay of the call (bench.common.time_cuda_graph), every
variant alike: a few-microsecond kernel otherwise times the host's launch path
(Python, the Triton launcher) rather than the GPU, and a decoder runs them inside a
graphed step. The eager-call p50 is kept beside it (eager_p50_us).
"""

from __future__ import annotations

import functools
import importlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from absl import app

from bench import common

OPS = ("rms_norm", "fused_add_rms_norm", "silu_and_mul")
VARIANTS = ("cuda", "triton", "eager", "compile", "F.rms_norm", "liger", "flashinfer")
OURS = ("cuda", "triton")
NORMS = ("rms_norm", "fused_add_rms_norm")

GRAPH_MAX_M = 64  # rows up to which a GPU case is timed from a CUDA graph (decode shapes)

# Full sweep: decode batches (1..64 rows) and prefill chunks (8K..32K tokens), at the
# hidden sizes of Llama-3 8B (4096) and 70B (8192) and the 8B MLP width (14336).
FULL = {"m": (1, 4, 16, 64, 8192, 16384, 32768), "hidden": (4096, 8192), "intermediate": (14336,)}
# --quick on a GPU: one decode, one small and one real prefill size; seconds, not minutes.
QUICK_GPU = {"m": (1, 64, 8192), "hidden": (4096,), "intermediate": (14336,)}
# --quick on a CPU (the default there): a smoke test of the harness, not a measurement.
QUICK_CPU = {"m": (1, 4, 16, 64), "hidden": (512,), "intermediate": (1024,)}

# Flags bench.flash_attention and other bench modules define too, with the same meaning: defined
# once per process, so pytest can import the bench modules side by side (bench.common.define_flag).
_define = common.define_flag
_define("list", "ops", list(OPS), "Ops to benchmark (default: all three).")
_define("list", "dtypes", ["bf16"], "Element types: bf16, fp16, fp32. bf16 by default: what Llama checkpoints run in.")
_define("list", "variants", None, "Variants to run (default: all; on a CPU eager and compile only). One of: "
        + ", ".join(VARIANTS))
_define("boolean", "quick", None, "Few small shapes (default: on for a CPU, where this is a harness smoke test; off "
        "on a GPU).")
_define("list", "m", None, "Rows (tokens), count. Default 1,4,16,64 (decode) and 8192,16384,32768 (prefill).")
_define("list", "hidden", None, "Hidden sizes of the norms, elements. Default 4096,8192 (Llama-3 8B and 70B).")
_define("list", "intermediate", None, "MLP width I of silu_and_mul (input 2*I), elements. Default 14336 (Llama-3 8B).")
_define("integer", "warmup", None, "Untimed calls per variant, count. Default 10 on a GPU (clocks and caches settle), "
        "2 on a CPU.")
_define("integer", "iters", None, "Timed calls per variant, count. Default 50 on a GPU (stable p10/p90), 10 on a CPU.")
_define("float", "eps", 1e-6, "RMSNorm epsilon. 1e-6: kernels.ops' default; Llama-2/3 checkpoints use 1e-5 at the "
        "same cost.")
_define("string", "compile_mode", "default", "torch.compile mode of the compile variant; 'default' is what most users "
        "run.")
_define("integer", "seed", 0, "Seed of the random inputs.")
_define("boolean", "plot", True, "Write kernels_<op>.png (GB/s vs rows, copy bandwidth dashed).")


@dataclass(frozen=True)
class Options:
    """One run, as the flags above give it (main reads them once; tests build one directly).
    None picks the device's default, as each flag's help says."""

    ops: tuple[str, ...]
    dtypes: tuple[str, ...]
    variants: tuple[str, ...] | None
    quick: bool | None
    m: tuple[str, ...] | None
    hidden: tuple[str, ...] | None
    intermediate: tuple[str, ...] | None
    warmup: int | None
    iters: int | None
    eps: float
    compile_mode: str
    seed: int
    plot: bool


# ----------------------------------------------------------------------------
# The math, in fp32: what every variant is checked against
# ----------------------------------------------------------------------------


def reference_fp32(op: str, inputs: dict[str, torch.Tensor], eps: float) -> tuple[torch.Tensor, ...]:
    """fp32 results: rms_norm -> (out,), fused_add_rms_norm -> (out, new residual), silu -> (out,).

    The references beside the kernels (kernels/rms_norm.py, kernels/silu_and_mul.py: the math
    their docstrings state, what kernels.ops' torch backend runs) on fp32 copies of the inputs,
    so every rounding they do is an fp32 one.
    """
    from kernels.rms_norm import fused_add_rms_norm_reference, rms_norm_reference
    from kernels.silu_and_mul import silu_and_mul_reference

    f32 = {k: v.to(torch.float32, copy=True) for k, v in inputs.items()}  # copies: the fused add is in place
    if op == "rms_norm":
        return (rms_norm_reference(f32["x"], f32["weight"], eps),)
    if op == "fused_add_rms_norm":
        out = fused_add_rms_norm_reference(f32["x"], f32["residual"], f32["weight"], eps)
        return out, f32["residual"]
    if op == "silu_and_mul":
        return (silu_and_mul_reference(f32["gate_up"]),)
    raise ValueError(op)


def bytes_moved(op: str, m: int, width: int, dtype: torch.dtype) -> int:
    e = torch.empty((), dtype=dtype).element_size()
    if op == "rms_norm":
        return 2 * m * width * e + width * e
    if op == "fused_add_rms_norm":
        return 4 * m * width * e + width * e
    if op == "silu_and_mul":
        return 3 * m * width * e
    raise ValueError(op)


def make_inputs(op: str, m: int, width: int, dtype: torch.dtype, device: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)

    if op == "silu_and_mul":
        return {"gate_up": randn(m, 2 * width)}  # (M, 2I): gate then up
    inputs = {"x": randn(m, width), "weight": (1 + 0.1 * randn(width).float()).to(dtype)}
    if op == "fused_add_rms_norm":
        inputs["residual"] = randn(m, width)
    return inputs


# ----------------------------------------------------------------------------
# Variants: each is fn(work) -> tuple of outputs in reference_fp32's order
# ----------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    fn: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, ...]] | None
    note: str = ""  # why fn is None, or where the implementation came from
    compiled: bool = False


def load_ops() -> tuple[Any, str]:
    """kernels.ops, or (None, why not: a FAILED status for every variant that needs it)."""
    try:
        return importlib.import_module("kernels.ops"), ""
    except Exception as e:  # noqa: BLE001 - reported per variant, so the other variants still run
        return None, f"FAILED: kernels.ops not importable ({type(e).__name__}: {e})"


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _adapt(op: str, impl: Callable, eps: float) -> Callable[[dict], tuple]:
    """Wrap an implementation with kernels.ops' signature into fn(work) -> outputs."""
    if op == "rms_norm":
        return lambda w: (impl(w["x"], w["weight"], eps),)
    if op == "fused_add_rms_norm":
        return lambda w: (impl(w["x"], w["residual"], w["weight"], eps), w["residual"])
    return lambda w: (impl(w["gate_up"]),)


def build_variants(op: str, names: list[str], ops: Any, ops_note: str, eps: float, device: str,
                   compile_mode: str, explicit: bool = False) -> list[Variant]:
    """The variants of `op` named in `names`; those that cannot run here carry a note.

    On a CPU only eager and compile run unless the names were given `explicit`ly
    (the Triton interpreter and the GPU libraries are too slow or absent there).
    """
    out = []
    cpu = not common.is_cuda(device)
    backends = list(ops.available_backends(device)) if ops is not None else []
    for name in names:
        if cpu and not explicit and name not in ("eager", "compile"):
            if name != "F.rms_norm" or op in NORMS:
                out.append(Variant(name, None, "skipped: CPU run"))
            continue
        if name in OURS + ("eager", "compile") and ops is None:
            out.append(Variant(name, None, ops_note))
        elif name in OURS:
            if name not in backends:
                out.append(Variant(name, None, f"skipped: backend {name!r} not in available_backends() {backends}"))
            else:
                out.append(Variant(name, _adapt(op, functools.partial(getattr(ops, op), backend=name), eps)))
        elif name == "eager":
            out.append(Variant(name, _adapt(op, functools.partial(getattr(ops, op), backend="torch"), eps)))
        elif name == "compile":
            eager_impl = functools.partial(getattr(ops, op), backend="torch")
            out.append(Variant(name, _adapt(op, torch.compile(eager_impl, dynamic=False, mode=compile_mode), eps),
                               compiled=True))
        elif name == "F.rms_norm":
            if op not in NORMS:
                continue  # not an alternative for silu_and_mul
            out.append(Variant(name, _torch_rms_norm(op, eps)))
        elif name == "liger":
            out.append(_liger(op, eps, cpu))
        elif name == "flashinfer":
            out.append(_flashinfer(op, eps, cpu))
        else:
            raise ValueError(f"unknown variant {name!r}; expected one of {VARIANTS}")
    return out


def _torch_rms_norm(op: str, eps: float) -> Callable:
    def norm(x, w):
        return F.rms_norm(x, (x.shape[-1],), w, eps)

    if op == "rms_norm":
        return lambda w: (norm(w["x"], w["weight"]),)
    return lambda w: (norm(w["residual"].add_(w["x"]), w["weight"]), w["residual"])


def _liger(op: str, eps: float, cpu: bool) -> Variant:
    if cpu:
        return Variant("liger", None, "skipped: CPU run")
    if op == "rms_norm":
        mod = _import("liger_kernel.ops.rms_norm")
        if mod is None:
            return Variant("liger", None, "not installed")
        # (X, W, eps, offset, casting_mode, in_place): Llama casting, as HF computes it.
        return Variant("liger", lambda w: (mod.LigerRMSNormFunction.apply(w["x"], w["weight"], eps, 0.0, "llama", False),))
    if op == "fused_add_rms_norm":
        if _import("liger_kernel") is None:
            return Variant("liger", None, "not installed")
        mod = _import("liger_kernel.ops.fused_add_rms_norm")
        if mod is None:
            return Variant("liger", None, "installed version has no fused_add_rms_norm")
        # Returns (out, residual + x) without touching residual.
        return Variant(
            "liger",
            lambda w: mod.LigerFusedAddRMSNormFunction.apply(w["x"], w["residual"], w["weight"], eps, 0.0, "llama", False),
        )
    mod = _import("liger_kernel.ops.swiglu")
    if mod is None:
        return Variant("liger", None, "not installed")
    # Liger takes gate and up as two contiguous tensors (as its MLP produces them);
    # same bytes moved. Split views would be read with the wrong row stride.
    return Variant("liger", lambda w: (mod.LigerSiLUMulFunction.apply(w["gate"], w["up"]),),
                   "gate and up as separate tensors")


def _flashinfer(op: str, eps: float, cpu: bool) -> Variant:
    if cpu:
        return Variant("flashinfer", None, "skipped: CPU run")
    if op in NORMS:
        mod = _import("flashinfer.norm")
        if mod is None:
            return Variant("flashinfer", None, "not installed")
        if op == "rms_norm":
            return Variant("flashinfer", lambda w: (mod.rmsnorm(w["x"], w["weight"], eps),))

        def fused(w):
            # In place on both: residual += x, then x <- rms_norm(residual).
            mod.fused_add_rmsnorm(w["x"], w["residual"], w["weight"], eps)
            return w["x"], w["residual"]

        return Variant("flashinfer", fused)
    mod = _import("flashinfer.activation")
    if mod is None:
        return Variant("flashinfer", None, "not installed")
    return Variant("flashinfer", lambda w: (mod.silu_and_mul(w["gate_up"]),))


# ----------------------------------------------------------------------------
# One shape: check, then time, every variant
# ----------------------------------------------------------------------------


def run_case(op: str, dtype: torch.dtype, m: int, width: int, variants: list[Variant], device: str,
             copy_gbps: float, warmup: int, iters: int, eps: float, seed: int) -> list[dict]:
    """Rows for one (op, dtype, M, width): status, times and GB/s of each variant."""
    inputs = make_inputs(op, m, width, dtype, device, seed)
    if op == "silu_and_mul":
        gate, up = inputs["gate_up"].chunk(2, dim=-1)
        inputs["gate"], inputs["up"] = gate.contiguous(), up.contiguous()  # for Liger
    want = reference_fp32(op, inputs, eps)
    nbytes = bytes_moved(op, m, width, dtype)
    what = ("out", "residual")
    rows = []
    for v in variants:
        row = {"op": op, "dtype": common.dtype_name(dtype), "M": m, "width": width, "variant": v.name,
               "bytes": nbytes, "status": "ok", "note": v.note}
        rows.append(row)
        if v.fn is None:
            row["status"], row["note"] = v.note, ""
            continue
        if v.compiled:
            torch._dynamo.reset()  # a fresh compile per shape, timed on its own
        work = {k: t.clone() for k, t in inputs.items()}
        try:
            t0 = time.perf_counter()
            got = v.fn(work)
            if common.is_cuda(device):
                torch.cuda.synchronize()
            if v.compiled:
                row["compile_s"] = time.perf_counter() - t0
            label = f"{op} {v.name} {common.dtype_name(dtype)} M={m} width={width}"
            for name, g, w in zip(what, got, want):
                common.check_close(g, w, what=f"{label} {name}")
            del got

            def before(work=work):
                work["x"].copy_(inputs["x"])
                work["residual"].copy_(inputs["residual"])

            t = common.time_fn(lambda: v.fn(work), device, warmup=warmup, iters=iters, flush_l2=True,
                               before=before if op == "fused_add_rms_norm" else None)
            if m <= GRAPH_MAX_M and common.is_cuda(device):
                if op == "fused_add_rms_norm":
                    before()  # the replays' residual adds accumulate: start from the pristine inputs
                row["eager_p50_us"], row["timing"] = t["p50"], "cuda graph"
                t = common.time_cuda_graph(lambda: v.fn(work), warmup=warmup, iters=iters, device=device)
        except Exception as e:  # noqa: BLE001 - one broken variant must not end the sweep
            row["status"] = common.failure_status(e, 300)
            continue
        finally:
            del work
        gbps = nbytes / (t["p50"] * 1e-6) / 1e9
        row.update({"p10_us": t["p10"], "p50_us": t["p50"], "p90_us": t["p90"], "gbps": gbps,
                    "pct_copy": 100 * gbps / copy_gbps})
    mark_best(rows)
    return rows


def mark_best(rows: list[dict]) -> dict:
    """Mark the fastest ok variant (best='*') and whether ours beat every alternative."""
    ok = [r for r in rows if r["status"] == "ok"]
    for r in rows:
        r["best"] = ""
    verdict = {"best": None, "ours": None, "alt": None, "ours_wins": None, "speedup": None}
    if not ok:
        return verdict
    best = min(ok, key=lambda r: r["p50_us"])
    best["best"] = "*"
    ours = [r for r in ok if r["variant"] in OURS]
    alts = [r for r in ok if r["variant"] not in OURS]
    verdict["best"] = best
    if ours and alts:
        o = min(ours, key=lambda r: r["p50_us"])
        a = min(alts, key=lambda r: r["p50_us"])
        verdict.update(ours=o, alt=a, ours_wins=o["p50_us"] < a["p50_us"], speedup=a["p50_us"] / o["p50_us"])
    for r in rows:
        r["ours_wins"] = verdict["ours_wins"]
    return verdict


# ----------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------


def _cell(r: dict) -> str:
    if r["status"] != "ok":
        return r["status"].split(":")[0]  # WRONG / FAILED
    return f"{common.fmt(r['gbps'])} ({common.fmt(r['p50_us'])}us){r['best']}"


def report(rows: list[dict], copy_gbps: float, cpu: bool) -> list[dict]:
    """Print one pivot per (op, dtype) and the ours-vs-alternatives table; return verdict rows."""
    verdicts = []
    keys = sorted({(r["op"], r["dtype"]) for r in rows}, key=lambda k: (OPS.index(k[0]), k[1]))
    for op, dt in keys:
        sel = [r for r in rows if r["op"] == op and r["dtype"] == dt]
        # Variants skipped or not installed get no column; the notes below list them.
        variants = list(dict.fromkeys(r["variant"] for r in sel if common.attempted(r["status"])))
        shapes = list(dict.fromkeys((r["width"], r["M"]) for r in sel))
        pivot = []
        for width, m in shapes:
            cell_rows = {r["variant"]: r for r in sel if r["width"] == width and r["M"] == m}
            line = {"width": width, "M": m}
            line.update({v: _cell(cell_rows[v]) for v in variants if v in cell_rows})
            best = next((r for r in cell_rows.values() if r["best"]), None)
            line["best %copy"] = best["pct_copy"] if best else None
            pivot.append(line)
            verdict = mark_best(list(cell_rows.values()))
            verdicts.append({
                "op": op, "dtype": dt, "width": width, "M": m,
                "best": verdict["best"]["variant"] if verdict["best"] else None,
                "best_gbps": verdict["best"]["gbps"] if verdict["best"] else None,
                "ours": verdict["ours"]["variant"] if verdict["ours"] else None,
                "ours_gbps": verdict["ours"]["gbps"] if verdict["ours"] else None,
                "fastest_alt": verdict["alt"]["variant"] if verdict["alt"] else None,
                "alt_gbps": verdict["alt"]["gbps"] if verdict["alt"] else None,
                "speedup": verdict["speedup"],
                "ours_wins": verdict["ours_wins"],
            })
        width_name = "I" if op == "silu_and_mul" else "H"
        common.print_table(
            pivot, [("width", width_name), "M"] + variants + ["best %copy"],
            title=f"\n{op} {dt}{'  [CPU run]' if cpu else ''}: GB/s (p50 us), * fastest; copy roofline {copy_gbps:,.0f} GB/s"
                  + ("" if cpu else f"; M <= {GRAPH_MAX_M} timed as CUDA-graph replays"),
        )
    common.print_table(
        verdicts,
        ["op", "dtype", "width", "M", "best", ("best_gbps", "best GB/s"), "ours", ("ours_gbps", "ours GB/s"),
         ("fastest_alt", "fastest alt"), ("alt_gbps", "alt GB/s"), ("speedup", "ours x"), ("ours_wins", "ours wins")],
        title="\nOurs vs every alternative (speedup = alt p50 / ours p50; blank: nothing of ours ran)",
    )
    notes: dict[tuple[str, str], list[str]] = {}  # (variant, why) -> ops
    for r in rows:
        note = r["note"] if common.attempted(r["status"]) else r["status"]
        if note:
            ops = notes.setdefault((r["variant"], note), [])
            if r["op"] not in ops:
                ops.append(r["op"])
    problems = [r for r in rows if common.is_failure(r["status"])]
    if notes:
        print("\nNotes:")
        for (variant, note), ops in notes.items():
            print(f"  {variant} ({', '.join(ops)}): {note}")
    if problems:
        print("\nWRONG or FAILED (not timed):")
        for r in problems:
            print(f"  {r['op']} {r['dtype']} M={r['M']} width={r['width']} {r['variant']}: {r['status']}")
    return verdicts


def plot(out_dir, rows: list[dict], copy_gbps: float, title: str) -> list:
    paths = []
    for op in OPS:
        sel = [r for r in rows if r["op"] == op]
        if not sel:
            continue
        panels = []
        for dt, width in dict.fromkeys((r["dtype"], r["width"]) for r in sel):
            series = {}
            for v in dict.fromkeys(r["variant"] for r in sel):
                pts = [r for r in sel if r["dtype"] == dt and r["width"] == width and r["variant"] == v and r["status"] == "ok"]
                if pts:
                    series[v] = ([r["M"] for r in pts], [r["gbps"] for r in pts])
            panels.append({"title": f"{op} {dt} {'I' if op == 'silu_and_mul' else 'H'}={width}", "xlabel": "M (rows)",
                           "ylabel": "GB/s (p50)", "logx": True, "logy": True, "series": series,
                           "hlines": {f"copy {copy_gbps:,.0f} GB/s": copy_gbps}})
        paths.append(common.plot_panels(out_dir / f"kernels_{op}.png", panels, title=f"{op}: {title}"))
    return paths


def main(argv: list[str]) -> None:
    """The binary: the flags, read once into Options, then run."""
    del argv
    run(common.options_from_flags(Options))


def run(opts: Options) -> None:
    """The whole benchmark: check and time every variant of every case, write the results, then
    exit 1 if any variant was WRONG or FAILED (bench.common.exit_on_failures)."""
    device, cpu, quick, preset, warmup, iters = common.sweep_setup(opts.quick, opts.warmup, opts.iters,
                                                                   QUICK_CPU, QUICK_GPU, FULL)
    ms = common.int_list(opts.m, preset["m"])
    hidden = common.int_list(opts.hidden, preset["hidden"])
    inter = common.int_list(opts.intermediate, preset["intermediate"])
    names = list(opts.variants or VARIANTS)
    for op in opts.ops:
        if op not in OPS:
            raise app.UsageError(f"--ops: unknown op {op!r}; expected {OPS}")
    dtypes = [common.parse_dtype(d) for d in opts.dtypes]

    name = common.device_name()
    out_dir = common.results_dir("kernels")
    print(f"kernels on {name}, {common.today()}, torch {torch.__version__}")
    if cpu:
        print("CPU run: " + ("small shapes, " if quick else "") + ("the named variants" if opts.variants else "eager and compile only")
              + "; a smoke test of the harness, not a kernel measurement.")
    copy_gbps = common.measure_copy_bandwidth(device)
    print(f"copy bandwidth (read + write of a {'1 GiB' if not cpu else '64 MiB'} copy): {copy_gbps:,.0f} GB/s")

    ops, ops_note = load_ops()
    if ops is None:
        print(f"{ops_note}; ours, eager and compile are not run")
    rows = []
    for op in opts.ops:
        variants = build_variants(op, names, ops, ops_note, opts.eps, device, opts.compile_mode,
                                  explicit=bool(opts.variants))
        widths = inter if op == "silu_and_mul" else hidden
        for dtype in dtypes:
            for width in widths:
                for m in ms:
                    rows += run_case(op, dtype, m, width, variants, device, copy_gbps, warmup, iters, opts.eps, opts.seed)
                    print(f"  done {op} {common.dtype_name(dtype)} width={width} M={m}", flush=True)

    verdicts = report(rows, copy_gbps, cpu)
    summary = [{"name": "kernels/copy_bandwidth", "value": copy_gbps, "unit": "GB/s"}]
    for r in rows:
        if r["status"] == "ok":
            summary.append({
                "name": f"kernels/{r['op']}/{r['dtype']}/M{r['M']}x{r['width']}/{r['variant']}",
                "value": r["gbps"], "unit": "GB/s", "p10_us": r["p10_us"], "p50_us": r["p50_us"],
                "p90_us": r["p90_us"], "pct_of_copy": r["pct_copy"], "cpu_run": cpu,
            })
    for op, dt in dict.fromkeys((v["op"], v["dtype"]) for v in verdicts):
        judged = [v for v in verdicts if v["op"] == op and v["dtype"] == dt and v["ours_wins"] is not None]
        if judged:
            summary.append({"name": f"kernels/{op}/{dt}/ours_wins", "value": sum(v["ours_wins"] for v in judged),
                            "unit": f"shapes of {len(judged)}", "cpu_run": cpu})
    paths = common.write_results(out_dir, "kernels", rows, summary)
    pngs = plot(out_dir, rows, copy_gbps, f"{name}, {common.today()}" + (" (CPU run)" if cpu else "")) if opts.plot else []
    print(f"\nresults: {out_dir}  ({', '.join(p.name for p in list(paths.values()) + pngs)})")
    common.exit_on_failures("bench.kernel_ops", [f"{r['op']} {r['dtype']} M={r['M']} width={r['width']} {r['variant']}"
                                                 for r in rows if common.is_failure(r["status"])])


if __name__ == "__main__":
    app.run(main)

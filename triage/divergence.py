"""`tools/bazel run //triage:divergence -- --a ours --b hf|quantized|compiled|onnx --checkpoint DIR`:
where two implementations part.

Both models run the same seeded random ids; forward hooks on the modules the two share by name
(our attribute names follow the HF checkpoint layout) capture, per layer: norm1
(input_layernorm), q, k, v (the projections), attention (the attention context entering o_proj:
RoPE, mask, softmax scale), attn_out, norm2, mlp, the layer output; plus embed, final_norm and
logits. Each point's error is rel_err = max|a - b| / max|b| (parity/hf_cases.rel_err), judged
against the stated tolerance: fp32 1e-5 (parity/hf_cases.FP32_TOL: both sides compute the same
math, only reassociated sums differ), --b quantized 5e-2 (INT8 per-channel weights: ~2^-8 relative
weight error per matmul, a few matmuls deep). The first point beyond it is where they part; rules
on which op that is (and on position 0, which RoPE, the causal mask and the softmax scale cannot
change) name the likely cause: eps, dtype/accumulation, RoPE variant, mask/positions, scale,
weight tying, MLP activation. The table prints, the error-by-layer plot is written, and the
report goes to the triage database (and, when they part, one record to the failure log).

--b compiled and --b onnx compare at the same per-op granularity: a copy of our model is wrapped
(Tapped) so that the same hooks put every point into the wrapper's outputs, and that wrapper is
compiled whole by torch.compile(fullgraph=True, Inductor by default: dynamo traces the hooks, so
each point is an output of the one compiled graph) or exported by torch.onnx (export/onnx_step.py
export_module) and run in onnxruntime's CPU provider. The taps make each point a graph output the
compiler must materialize; the kernels between them are the compiler's own (fusions inside an op
remain), so a parting found here is the compiler's. Tolerance: fp32 1e-5 as for hf (the same math,
other kernels; measured <= 1e-6 on the tiny test model for both).

Our model runs its training-form forward (grad mode on, weights frozen) so every block and norm
is a module call the hooks see; the inference form's fused add+RMSNorm is the same arithmetic.
transformers is the reference here, as in parity/: a diagnostic, never a runtime dependency.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch

POINTS = ("norm1", "q", "k", "v", "attention", "attn_out", "norm2", "mlp", "layer")
QUANT_TOL = 5e-2


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def capture(model: torch.nn.Module, root: str, n_layers: int) -> tuple[dict[str, torch.Tensor], list]:
    """Register the hooks on `model` (modules under `root`, "model" for both layouts); returns (store, handles)."""
    got: dict[str, torch.Tensor] = {}
    handles = []
    mods = dict(model.named_modules())

    def out_hook(key):
        def hook(_m, _inp, out):
            got[key] = _first(out).detach().float().clone()
        return hook

    def in_hook(key):
        def hook(_m, inp):
            got[key] = _first(inp).detach().float().clone()
        return hook

    def add(name, key, pre=False):
        m = mods.get(name)
        if m is not None:
            handles.append(m.register_forward_pre_hook(in_hook(key)) if pre else
                           m.register_forward_hook(out_hook(key)))

    add(f"{root}.embed_tokens", "embed")
    for i in range(n_layers):
        p = f"{root}.layers.{i}"
        add(f"{p}.input_layernorm", f"layers.{i}.norm1")
        for x in ("q", "k", "v"):
            add(f"{p}.self_attn.{x}_proj", f"layers.{i}.{x}")
        add(f"{p}.self_attn.o_proj", f"layers.{i}.attention", pre=True)
        add(f"{p}.self_attn", f"layers.{i}.attn_out")
        add(f"{p}.post_attention_layernorm", f"layers.{i}.norm2")
        add(f"{p}.mlp", f"layers.{i}.mlp")
        add(p, f"layers.{i}.layer")
    add(f"{root}.norm", "final_norm")
    add("lm_head", "logits")
    return got, handles


class Tapped(torch.nn.Module):
    """`model` whose forward returns every captured point, in `keys` order (for compile and export)."""

    def __init__(self, model: torch.nn.Module, n_layers: int, ids: torch.Tensor):
        super().__init__()
        self.model = model
        self.got, self.handles = capture(model, "model", n_layers)
        self.eval()
        self(ids, probe=True)

    def forward(self, ids: torch.Tensor, probe: bool = False):
        """ids (B, T) -> tuple of the points' tensors (fp32), training form as in compare."""
        self.got.clear()
        with torch.enable_grad():
            self.model(ids)
        if probe:
            self.keys = list(self.got)
        return tuple(self.got[k] for k in self.keys)


class Runner:
    """The `b` side that is not a hookable module: `runner(ids) -> {point: tensor}`."""

    def __init__(self, keys: list[str], fn, what: str):
        self.keys, self.fn, self.what = keys, fn, what

    def __call__(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.keys, (torch.as_tensor(t).float() for t in self.fn(ids))))


def compiled_runner(model: torch.nn.Module, n_layers: int, ids: torch.Tensor, backend: str = "inductor") -> Runner:
    """`model` (a copy; frozen) tapped and compiled whole with torch.compile(fullgraph=True)."""
    tapped = Tapped(model, n_layers, ids)
    fn = torch.compile(tapped, backend=backend, fullgraph=True, dynamic=False)
    return Runner(tapped.keys, lambda x: fn(x), f"torch.compile(backend={backend})")


def onnx_runner(model: torch.nn.Module, n_layers: int, ids: torch.Tensor, path: str) -> Runner:
    """`model` tapped, exported to ONNX at `path` (ids' shape, static) and run in onnxruntime CPU."""
    from export.onnx_step import export_module, unavailable

    why = unavailable(torch.float32, "cpu")
    if why:
        raise ValueError(f"--b onnx: {why}")
    import onnxruntime as ort

    import warnings

    tapped = Tapped(model, n_layers, ids)
    with warnings.catch_warnings():  # the taps are plain attributes by design: they become outputs
        warnings.filterwarnings("ignore", message="The tensor attributes")
        export_module(tapped, (ids,), path, ["input_ids"], tapped.keys)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(x):
        if x.shape != ids.shape:
            raise ValueError(f"the ONNX graph was exported for ids {tuple(ids.shape)}, got {tuple(x.shape)}")
        return [torch.from_numpy(o) for o in session.run(tapped.keys, {"input_ids": x.numpy()})]

    return Runner(tapped.keys, run, "onnxruntime CPU")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| in fp64 (parity/hf_cases' measure; NaN in a gives NaN)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def compare(a: torch.nn.Module, b: torch.nn.Module, ids: torch.Tensor, n_layers: int, tol: float) -> dict:
    """Run both on `ids`, compare every shared point; returns the table, first parting and classification."""
    got_a, ha = capture(a, "model", n_layers)
    got_b, hb = capture(b, "model", n_layers) if isinstance(b, torch.nn.Module) else ({}, [])
    try:
        with torch.enable_grad():  # ours: the plain pre-norm blocks, every norm a module call
            a(ids)
        if isinstance(b, Runner):
            got_b = b(ids)
        else:
            with torch.no_grad():
                b(ids)
    finally:
        for h in ha + hb:
            h.remove()
    order = ["embed"] + [f"layers.{i}.{p}" for i in range(n_layers) for p in POINTS] + ["final_norm", "logits"]
    rows = []
    for key in order:
        if key not in got_a or key not in got_b:
            continue
        x, y = got_a[key], got_b[key]
        if x.shape != y.shape:
            y = y.reshape(x.shape) if x.numel() == y.numel() else y
        if x.shape != y.shape:
            rows.append({"point": key, "rel_err": float("inf"), "pos0_err": float("inf"), "ok": False,
                         "note": f"shape {tuple(x.shape)} vs {tuple(y.shape)}"})
            continue
        err = rel_err(x, y)
        pos0 = rel_err(x[:, :1], y[:, :1]) if x.dim() >= 3 else err
        rows.append({"point": key, "rel_err": err, "pos0_err": pos0, "ok": err <= tol, "note": ""})
    first = next((r for r in rows if not r["ok"]), None)
    return {"rows": rows, "first": first, "tol": tol, "classification": classify(rows, first, tol)}


def classify(rows: list[dict], first: Optional[dict], tol: float) -> dict:
    """Rule-based cause of the first parting: {"class", "why"}."""
    if first is None:
        return {"class": "none", "why": f"every point within rel_err {tol:g}"}
    op = first["point"].rsplit(".", 1)[-1]
    errs = [r["rel_err"] for r in rows if r["point"].endswith(".layer")]
    drift = (first["rel_err"] < 20 * tol and len(errs) >= 2
             and all(b >= a * 0.5 for a, b in zip(errs, errs[1:])))
    if first["rel_err"] != first["rel_err"] or first["rel_err"] == float("inf"):
        return {"class": "nan_or_shape", "why": f"{first['point']}: non-finite values or a shape mismatch"}
    if drift and op not in ("embed", "logits"):
        return {"class": "dtype_or_accumulation", "why": "small errors growing layer by layer: precision or "
                "summation order (bf16 vs fp32 accumulation), not a wrong formula"}
    if op == "embed":
        return {"class": "weights", "why": "embeddings differ: another checkpoint, vocab offset or tokenizer ids"}
    if op in ("norm1", "norm2", "final_norm"):
        return {"class": "eps", "why": f"{first['point']} parts while its input agrees: RMSNorm eps, the fp32 "
                "upcast, or a (1 + weight) offset"}
    if op in ("q", "k", "v"):
        return {"class": "weights", "why": "a projection parts right after an agreeing norm: its weights (q/k "
                "permuted for another RoPE layout, transposed, or a fused qkv split at other sizes)"}
    if op == "attention":
        if first["pos0_err"] <= tol:
            return {"class": "rope_mask_or_scale", "why": "q, k, v agree and position 0 agrees (RoPE, the causal "
                    "mask and the softmax scale cannot change it): RoPE variant (theta, scaling, half vs "
                    "interleaved rotation), mask or position ids, or the softmax scale"}
        return {"class": "attention_heads", "why": "q, k, v agree but position 0 differs too: GQA head mapping "
                "or the value path"}
    if op == "attn_out":
        return {"class": "weights", "why": "the attention context agrees, o_proj's output does not: o_proj weights"}
    if op == "mlp":
        return {"class": "mlp", "why": "the MLP parts after an agreeing norm: activation (SiLU vs GELU), gate and "
                "up swapped, or its weights"}
    if op == "layer":
        return {"class": "residual", "why": "every sub-op agrees but the block output does not: a residual add"}
    if op == "logits":
        return {"class": "weight_tying", "why": "the final norm agrees, the logits do not: lm_head weights or "
                "tie_word_embeddings"}
    return {"class": "unknown", "why": first["point"]}


def plot(result: dict, path: Path, title: str) -> Path:
    """Error by point (log scale) with the tolerance line (bench.common.plot_panels)."""
    from bench.common import plot_panels

    rows = result["rows"]
    xs = list(range(len(rows)))
    series = {"rel_err": (xs, [max(r["rel_err"], 1e-12) if r["rel_err"] == r["rel_err"] else None for r in rows])}
    layer_rows = [(i, r) for i, r in enumerate(rows) if r["point"].endswith(".layer")]
    series["layer output"] = ([i for i, _ in layer_rows], [max(r["rel_err"], 1e-12) for _, r in layer_rows])
    return plot_panels(path, [{"title": title, "series": series, "xlabel": "point (embed, per layer: norm1 q k v "
                               "attention attn_out norm2 mlp layer, final_norm, logits)", "ylabel": "rel err",
                               "logy": True, "hlines": {f"tol {result['tol']:g}": result["tol"]}}], ncols=1)


def build_pair(checkpoint: str, b: str, seed: int):
    """(ours, other, n_layers, vocab) for --b hf | quantized, both fp32 eval models; for --b compiled |
    onnx `other` is a frozen copy of ours (main wraps it with compiled_runner / onnx_runner)."""
    from model.loader import load

    ours = load(checkpoint, dtype="float32").eval()
    for p in ours.parameters():
        p.requires_grad_(False)
    if b == "hf":
        import transformers

        other = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, torch_dtype=torch.float32).eval()
    elif b == "quantized":
        from quant.quantize import quantize

        other = quantize(copy.deepcopy(ours))
    elif b in ("compiled", "onnx"):
        other = copy.deepcopy(ours)
    else:
        raise ValueError(f"--b {b}: expected hf, quantized, compiled or onnx")
    cfg = ours.config
    return ours, other, cfg.n_layers, cfg.vocab_size


def print_table(result: dict) -> None:
    """The per-point table, then the verdict."""
    print(f"{'point':<24} {'rel_err':>10} {'pos0_err':>10}  ok")
    for r in result["rows"]:
        print(f"{r['point']:<24} {r['rel_err']:>10.3g} {r['pos0_err']:>10.3g}  {'yes' if r['ok'] else 'NO'} {r['note']}")
    f, c = result["first"], result["classification"]
    if f is None:
        print(f"no parting: {c['why']}")
    else:
        print(f"first parting: {f['point']} (rel_err {f['rel_err']:.3g} > tol {result['tol']:g}); "
              f"class {c['class']}: {c['why']}")


def main(argv=None) -> int:
    """Parse flags, compare, print, plot, log."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", default="ours", choices=["ours"])
    p.add_argument("--b", default="hf", choices=["hf", "quantized", "compiled", "onnx"])
    p.add_argument("--compile_backend", default="inductor", help="torch.compile backend for --b compiled")
    p.add_argument("--checkpoint", required=True, help="HF-layout checkpoint directory (or a shipped name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq_len", type=int, default=24)
    p.add_argument("--tol", type=float, help="rel_err bound (default: 1e-5 for hf, compiled, onnx; 5e-2 for "
                   "quantized)")
    p.add_argument("--plot", default="divergence.png", help="PNG path (relative to where you run the command)")
    p.add_argument("--db", help="triage database for the report (default $LAB_TRIAGE_DB or ~/.cache/lab/triage.db)")
    a = p.parse_args(argv)
    from triage.cli import db_url, user_path

    try:
        from model.config import ConfigError
        from model.weights import CheckpointError

        ckpt = a.checkpoint if "/" not in a.checkpoint and not Path(a.checkpoint).exists() else str(user_path(a.checkpoint))
        ours, other, n_layers, vocab = build_pair(ckpt, a.b, a.seed)
    except (ConfigError, CheckpointError, ValueError, OSError) as e:
        print(f"error: --checkpoint {a.checkpoint}: {e}", file=sys.stderr)
        return 2
    from parity.hf_cases import FP32_TOL, random_prompt

    tol = a.tol if a.tol is not None else (QUANT_TOL if a.b == "quantized" else FP32_TOL)
    ids = random_prompt(a.batch, a.seq_len, vocab, seed=a.seed)
    if a.b == "compiled":
        other = compiled_runner(other, n_layers, ids, a.compile_backend)
    elif a.b == "onnx":
        import tempfile

        with tempfile.TemporaryDirectory(prefix="lab_divergence_") as tmp:
            try:
                other = onnx_runner(other, n_layers, ids, str(Path(tmp) / "tapped.onnx"))
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
    result = compare(ours, other, ids, n_layers, tol)
    print_table(result)
    png = plot(result, user_path(a.plot), f"ours vs {a.b}: {a.checkpoint}")
    print(f"plot: {png}")
    from triage.store import StoreError, open_store

    body = {"a": a.a, "b": a.b, "checkpoint": a.checkpoint, "seed": a.seed, "tol": tol, **result}
    try:
        rid = open_store(db_url(a.db)).add_report("divergence", json.loads(json.dumps(body, default=str)))
        print(f"report {rid} stored")
    except StoreError as e:
        print(f"report not stored ({e})")
    if result["first"] is not None:
        from export.failures import record_event

        record_event("triage.divergence", "divergence", f"Divergence.{result['classification']['class']}",
                     f"ours vs {a.b} part at {result['first']['point']} (rel_err {result['first']['rel_err']:.3g} "
                     f"> {tol:g}): {result['classification']['why']}",
                     context={"checkpoint": a.checkpoint, "b": a.b, "first": result["first"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

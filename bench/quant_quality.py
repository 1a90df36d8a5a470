"""What each quantization method costs in quality: perplexity, KL and top-1 agreement vs weight bytes.

    python3 -m bench.quant_quality                               # lab-small and lab-draft, every variant
    python3 -m bench.quant_quality --models lab-draft --variants rtn_w4_g128,gptq_w4_g128

For each model and variant (VARIANTS: method x bits x group size, quant.quantize): quantize a
fresh fp32 copy with calibration windows from the train split (quant.calibrate), then score
WikiText-2 test and the held-out split with bench.perplexity's protocol (its `perplexity`
function: the same non-overlapping windows, first token of each window is context), and on
those same windows the KL divergence KL(p_fp32 || p_quant) of next-token distributions and
the top-1 agreement with the unquantized model. weight_MB counts the decoder's Linear weights
as deployed (packed codes + scales + zeros; unquantized = bf16, 2 bytes a weight); the
embedding and LM head (never quantized here) are left out.
Rotations x low-bit activations and KV: W4A8 / W4A4 per-row RTN, plain, QuaRot (random
Hadamard) and SpinQuant (R1/R2 learned by Cayley SGD, --rotate_steps on the calibration
windows), each also with an int8 / int4 KV cache (kv8 / kv4: cache/kv_quant.py).
Gates: the fp32 row must have KL < 1e-6 and top-1 = 1 (the harness compares like with like);
every perplexity finite. Claims checked and reported (exit 1 if false): GPTQ W4A16 g128 has
lower KL than RTN W4A16 g128, and QuaRot-rotated RTN W4A4 (with and without int4 KV) lower KL
than plain RTN W4A4, as is SpinQuant's; under either rotation GPTQ beats RTN at W4A16 g128, W4A8,
W4A4 and W4A4 + int4 KV. Reported, not gated (COMPARISONS): SpinQuant vs QuaRot (RTN and GPTQ),
GPTQ on the RTN-learned rotation (*_rtnobj) vs the default activation-only objective.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

from absl import app

from bench import common

_define = common.define_flag
_define("list", "models", ["lab-small", "lab-draft"], "Checkpoints: shipped names or HF-layout directories.")
_define("list", "variants", [], "Variant labels to run (VARIANTS); default all.")
_define("integer", "window", 512, "Tokens per scoring window (default 512: the lab models' context).")
_define("integer", "max_windows", 8, "Windows scored per split (default 8 = 4K tokens: ~20 variants x 2 "
        "models in ~15 minutes on a shared CPU; 0 = all).")
_define("integer", "calib_samples", 8, "Calibration windows from the train split (default 8).")
_define("integer", "calib_len", 512, "Tokens per calibration window (default 512).")
_define("boolean", "quantize_lm_head", False, "Also score each quantized variant with its LM head quantized "
        "(rows VARIANT+lm_head: quant.quantize(lm_head=True), a tied head untied first). Default off.")
_define("string", "device", "cpu", "cpu or cuda (default cpu: the table is a quality table, not a speed one).")
_define("integer", "rotate_steps", 10, "Cayley SGD steps of the spinquant_* variants (2 calibration windows "
        "each; default 10: ~1 minute a variant for lab-small on a shared CPU).")

# label -> (method, options); None = the unquantized fp32 model itself.
VARIANTS = {
    "fp32": None,
    "int8_weight_only": ("int8_weight_only", {}),
    "rtn_w8_g128": ("rtn", dict(bits=8, group_size=128)),
    "gptq_w8_g128": ("gptq", dict(bits=8, group_size=128)),
    "rtn_w4_g128": ("rtn", dict(bits=4, group_size=128)),
    "gptq_w4_g128": ("gptq", dict(bits=4, group_size=128)),
    "gptq_w4_g128_actorder": ("gptq", dict(bits=4, group_size=128, act_order=True)),
    "gptq_w4_g128_sym": ("gptq", dict(bits=4, group_size=128, sym=True)),
    "rtn_w4_g64": ("rtn", dict(bits=4, group_size=64)),
    "gptq_w4_g64": ("gptq", dict(bits=4, group_size=64)),
    "awq_w4_g128": ("awq", dict(bits=4, group_size=128)),
    "smoothquant_w8a8": ("smoothquant", dict(alpha=0.5)),
    "fp8_w8a16_tensor": ("fp8", dict(per_row=False, act=None)),
    "fp8_w8a16_row": ("fp8", dict(per_row=True, act=None)),  # the decode bench's fp8_weight_only
    "fp8_w8a8_tensor": ("fp8", dict(per_row=False, act="per_tensor")),
    "fp8_w8a8_row": ("fp8", dict(per_row=True, act="per_token")),
    "rtn_w4a4": ("rtn", dict(bits=4, group_size=-1, sym=True, act_bits=4)),
    "quarot_rtn_w4a4": ("rtn", dict(bits=4, group_size=-1, sym=True, act_bits=4, rotate=True)),
    "quarot_gptq_w4a4": ("gptq", dict(bits=4, group_size=-1, sym=True, act_bits=4, rotate=True)),
    "quarot_gptq_w4_g128": ("gptq", dict(bits=4, group_size=128, rotate=True)),
}
_ROT = {"": {}, "quarot_": dict(rotate="hadamard"), "spinquant_": dict(rotate="cayley")}
_W4A16_G128 = dict(bits=4, group_size=128)  # weight-only rows: asymmetric g128, as rtn_w4_g128 / gptq_w4_g128
for _method in ("rtn", "gptq"):
    for _prefix, _r in _ROT.items():
        VARIANTS.setdefault(f"{_prefix}{_method}_w4_g128", (_method, dict(_W4A16_G128, **_r)))
        for _a, _kv in ((8, None), (8, 8), (4, None), (4, 4)):  # W4A8, W4A8 + int8 KV, W4A4, W4A4 + int4 KV
            _label = f"{_prefix}{_method}_w4a{_a}" + (f"_kv{_kv}" if _kv else "")
            VARIANTS.setdefault(_label, (_method, dict(bits=4, group_size=-1, sym=True, act_bits=_a, **_r,
                                                       **(dict(kv_bits=_kv) if _kv else {}))))
for _s, _a, _kv in (("w4a8", 8, None), ("w4a4", 4, None), ("w4a4_kv4", 4, 4)):  # GPTQ on RTN-learned rotations
    VARIANTS[f"spinquant_gptq_{_s}_rtnobj"] = ("gptq", dict(bits=4, group_size=-1, sym=True, act_bits=_a,
                                                            rotate="cayley", rotate_objective="rtn",
                                                            **(dict(kv_bits=_kv) if _kv else {})))
CLAIMS = (("gptq_w4_g128", "rtn_w4_g128"), ("quarot_rtn_w4a4", "rtn_w4a4"), ("quarot_rtn_w4a4_kv4", "rtn_w4a4_kv4"),
          ("spinquant_rtn_w4a4", "rtn_w4a4"), ("spinquant_rtn_w4a4_kv4", "rtn_w4a4_kv4"))
# GPTQ beats RTN under the same rotation (QuaRot / SpinQuant papers): measured KL ratio 0.46-0.91 on both models
# and both splits, top-1 higher in all 16 pairs (bench/results/quant-quality-cpu-2026-11-30-gptq-rot/INDEX.md).
CLAIMS += tuple((f"{_p}gptq_{_s}", f"{_p}rtn_{_s}") for _p in ("quarot_", "spinquant_")
                for _s in ("w4_g128", "w4a8", "w4a4", "w4a4_kv4"))
COMPARISONS = (("spinquant_rtn_w4a4", "quarot_rtn_w4a4"), ("spinquant_rtn_w4a4_kv4", "quarot_rtn_w4a4_kv4"),
               ("spinquant_rtn_w4a8", "quarot_rtn_w4a8"), ("spinquant_rtn_w4a8_kv8", "quarot_rtn_w4a8_kv8"))
# SpinQuant vs QuaRot with GPTQ, and the rotation objective: reported (within 4% either way at 5 Cayley steps).
COMPARISONS += tuple((f"spinquant_gptq_{_s}", f"quarot_gptq_{_s}") for _s in ("w4_g128", "w4a8", "w4a4", "w4a4_kv4"))
COMPARISONS += tuple(p for _s in ("w4a8", "w4a4", "w4a4_kv4") for p in (
    (f"spinquant_gptq_{_s}_rtnobj", f"spinquant_gptq_{_s}"), (f"spinquant_gptq_{_s}_rtnobj", f"spinquant_rtn_{_s}")))


@dataclass(frozen=True)
class Options:
    """One run, as the flags give it (tests build one directly)."""

    models: tuple[str, ...]
    variants: tuple[str, ...]
    window: int
    max_windows: int
    calib_samples: int
    calib_len: int
    device: str
    rotate_steps: int = 10
    quantize_lm_head: bool = False


class Scored:
    """A callable model for bench.perplexity that also accumulates KL and top-1 agreement vs `ref`.

    cache: a list shared by every variant of one (model, split): the reference log-probs of the
    i-th batch, computed on first use (perplexity() feeds the same batches in the same order).
    """

    def __init__(self, model, ref, cache: list):
        self.model, self.ref, self.cache, self.i = model, ref, cache, 0
        self.kl, self.agree, self.n = 0.0, 0, 0

    def __call__(self, inputs):
        import torch
        import torch.nn.functional as F

        logits = self.model(inputs)  # (b, T, V)
        if self.i == len(self.cache):
            self.cache.append((inputs.clone(), F.log_softmax(self.ref(inputs).float(), -1)))
        ref_inputs, lp = self.cache[self.i]
        assert torch.equal(ref_inputs, inputs), "batches arrived in a different order than the cached ones"
        self.i += 1
        lq = F.log_softmax(logits.float(), -1)
        self.kl += float((lp.exp() * (lp - lq)).sum(-1).double().sum())
        self.agree += int((lp.argmax(-1) == lq.argmax(-1)).sum())
        self.n += inputs.numel()
        return logits


def linear_bytes(model) -> int:
    """Bytes of the decoder's Linear weights as deployed (module docstring)."""
    from torch import nn

    from quant import Int8WeightOnlyLinear

    total = 0
    for name, m in model.model.layers.named_modules():
        if hasattr(m, "weight_bytes"):
            total += m.weight_bytes()
        elif isinstance(m, Int8WeightOnlyLinear):
            total += m.weight.numel() + m.weight_scale.numel() * 4
        elif type(m) is nn.Linear:
            total += m.weight.numel() * 2
    return total


def main(argv: list[str]) -> int:
    """The binary: flags -> Options -> run."""
    del argv
    return run(common.options_from_flags(Options))


def run(opts: Options) -> int:
    """Score every model x variant, write the table, CSV/JSON, summary.json and plot; 0, 1 or 2."""
    os.environ.setdefault("LAB_KERNEL_BACKEND", "torch")  # exact fp32 reference ops for scoring
    import torch

    import model as lab_model
    from bench.perplexity import perplexity, protocol
    from data import corpus
    from model.loader import checkpoint_dir
    from model.tokenizer import load_tokenizer
    from quant import quantize
    from quant.calibrate import calibration_ids

    variants = list(opts.variants) or list(VARIANTS)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        print(f"error: unknown --variants {bad}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if "fp32" not in variants:
        variants.insert(0, "fp32")
    rows, failures = [], []
    for name in opts.models:
        try:
            ckpt = checkpoint_dir(name)
            if ckpt is None:
                raise ValueError(f"--models {name} has random weights; give a trained checkpoint")
            tok = load_tokenizer(ckpt)
            ref = lab_model.load(ckpt, dtype="float32", device=opts.device)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        streams = {s: corpus.token_stream(tok, s) for s in ("wikitext2_test", "heldout")}
        calib = calibration_ids(tok, opts.calib_samples, min(opts.calib_len, ref.config.max_seq_len))
        label = os.path.basename(os.path.normpath(ckpt))
        ref_cache: dict[str, list] = {s: [] for s in streams}
        runs = [(v, False) for v in variants]
        if opts.quantize_lm_head:  # each quantized variant again, its LM head quantized too
            runs += [(v, True) for v in variants if VARIANTS[v] is not None]
        for v0, head in runs:
            v = v0 + "+lm_head" if head else v0
            t0 = time.perf_counter()
            m = lab_model.load(ckpt, dtype="float32", device=opts.device)
            method, o = VARIANTS[v0] or ("none", {})
            if VARIANTS[v0] is not None:
                if o.get("rotate") == "cayley":
                    o = {**o, "rotate_steps": opts.rotate_steps}
                try:
                    quantize(m, method, calib, lm_head=head, **o)
                except Exception as e:  # a failing variant is reported, the others still run
                    failures.append(f"{label}/{v}")
                    print(f"{label} {v}: FAILED {common.failure_status(e)}", flush=True)
                    continue
            q_s = time.perf_counter() - t0
            row = {"model": label, "variant": v, "method": VARIANTS[v0][0] if VARIANTS[v0] else "none",
                   "lm_head": "quantized" if head else "float",
                   "options": o, "quantize_s": round(q_s, 1),
                   "weight_MB": linear_bytes(m) / 1e6}
            spin = (getattr(m, "rotation", None) or {}).get("report")
            if spin:  # SpinQuant: the quantized calibration loss at the Hadamard start and after Cayley SGD
                row.update(calib_loss_start=spin["loss_start"], calib_loss_end=spin["loss_end"],
                           calib_objective=spin.get("objective"))
            for split, ids in streams.items():
                scored = Scored(m, ref, ref_cache[split])
                with torch.no_grad():
                    r = perplexity(scored, ids, opts.window, opts.device, 8, None, opts.max_windows)
                short = "wt2" if split == "wikitext2_test" else "heldout"
                row[f"{short}_ppl"] = r["perplexity"]
                row[f"{short}_kl"] = scored.kl / scored.n
                row[f"{short}_top1"] = scored.agree / scored.n
                row[f"{short}_protocol"] = protocol(r, split, "tokenizer.json of " + label, False)
            rows.append(row)
            if spin:
                print(f"{label:10s} {v:24s} calibration loss ({spin.get('objective')}) {spin['loss_start']:.4f} "
                      f"at the Hadamard start -> {spin['loss_end']:.4f} after {len(spin['losses'])} Cayley steps",
                      flush=True)
            print(f"{label:10s} {v:24s} wt2 ppl {row['wt2_ppl']:8.3f} KL {row['wt2_kl']:.5f} top1 "
                  f"{row['wt2_top1']:.3f} | heldout ppl {row['heldout_ppl']:8.3f} | {row['weight_MB']:.3f} MB "
                  f"({q_s:.0f} s)", flush=True)
            if not all(math.isfinite(row[k]) for k in ("wt2_ppl", "heldout_ppl")):
                failures.append(f"{label}/{v} (non-finite perplexity)")
            if v0 == "fp32" and not (row["wt2_kl"] < 1e-6 and row["wt2_top1"] == 1.0):
                failures.append(f"{label}/fp32 (KL vs itself {row['wt2_kl']:.2e}: the harness is broken)")
    claims = check_claims(rows)
    for c in claims:
        print(f"claim {c['model']}: {c['claim']}: {'PASS' if c['ok'] else 'FAIL'} ({c['detail']})")
        if not c["ok"]:
            failures.append(f"{c['model']}: {c['claim']}")
    for c in check_claims(rows, COMPARISONS):
        print(f"reported {c['model']}: {c['claim']}: {'yes' if c['ok'] else 'no'} ({c['detail']})")
        claims.append({**c, "gated": False})
    write(rows, claims, opts)
    common.exit_on_failures("quant_quality", failures)
    return 0


def check_claims(rows: list[dict], pairs=CLAIMS) -> list[dict]:
    """For each model with both rows: better has lower WikiText-2 KL than worse (and the perplexities)."""
    out = []
    by = {(r["model"], r["variant"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        for better, worse in pairs:
            a, b = by.get((model, better)), by.get((model, worse))
            if a and b:
                out.append({"model": model, "claim": f"{better} beats {worse} (WikiText-2 KL)",
                            "ok": a["wt2_kl"] < b["wt2_kl"],
                            "detail": f"KL {a['wt2_kl']:.5f} vs {b['wt2_kl']:.5f}, ppl {a['wt2_ppl']:.3f} vs "
                                      f"{b['wt2_ppl']:.3f}"})
    return out


def write(rows: list[dict], claims: list[dict], opts: Options) -> None:
    """Table, CSV/JSON, summary.json records and the quality-vs-bytes plot."""
    cols = ["model", "variant", ("weight_MB", "weight MB"), ("wt2_ppl", "WT2 ppl"), ("wt2_kl", "WT2 KL"),
            ("wt2_top1", "WT2 top1"), ("heldout_ppl", "heldout ppl"), ("heldout_kl", "heldout KL"),
            ("quantize_s", "quant s")]
    common.print_table(rows, cols, title="quant_quality (KL = KL(fp32 || quantized) per token)")
    out = common.results_dir("quant_quality", opts.device)
    summary = []
    for r in rows:
        for key, unit in (("wt2_ppl", "perplexity"), ("wt2_kl", "nats/token"), ("wt2_top1", "fraction"),
                          ("heldout_ppl", "perplexity"), ("weight_MB", "MB")):
            summary.append({"name": f"quant_quality/{r['model']}/{r['variant']}/{key}", "value": r[key],
                            "unit": unit, "protocol": r["wt2_protocol"]})
    for c in claims:
        kind = "claim" if c.get("gated", True) else "reported"
        summary.append({"name": f"quant_quality/{c['model']}/{kind}/{c['claim'].split(' (')[0].replace(' ', '_')}",
                        "value": 1.0 if c["ok"] else 0.0, "unit": "pass", "detail": c["detail"]})
    paths = common.write_results(out, "quant_quality", rows, summary, command=common.command_line("quant_quality"),
                                 device=common.device_name(opts.device))
    panels = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for key, what in (("wt2_ppl", "perplexity"), ("wt2_kl", "KL(fp32 || quantized), nats/token")):
            series = {}
            for r in rows:
                if r["model"] == model:
                    fam = r["variant"].split("_")[0]
                    xs, ys = series.setdefault(fam, ([], []))
                    xs.append(r["weight_MB"])
                    ys.append(r[key] if r[key] > 0 else None)  # fp32's KL of 0 has no place on a log axis
            for xs_ys in series.values():  # sorted by bytes so a family's points join left to right
                pts = sorted(zip(*xs_ys), key=lambda p: (p[0], p[1] or 0))
                xs_ys[0][:], xs_ys[1][:] = [p[0] for p in pts], [p[1] for p in pts]
            panels.append({"title": f"{model}: WikiText-2 {what.split(',')[0]} vs decoder Linear bytes",
                           "series": series, "xlabel": "weight MB", "ylabel": what, "logy": True})
    png = common.plot_panels(out / "quant_quality.png", panels, title="quantization quality vs weight bytes")
    print(f"wrote {paths['json']}, {paths['summary']} and {png}")


if __name__ == "__main__":
    sys.exit(app.run(main))
